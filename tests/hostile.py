"""Hostile text for the pure stages' property tests: the adversarial generators that
scripts/bench_segmenter.py --worst measures (long runs of each punctuation class and of each
mark, their mixes, quote and bracket runs, digits with dots, URL-, email- and markdown-like runs,
alternations of any two classes), as hypothesis strategies. The script measures their cost; the
tests check what the stages make of them. No timing in tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from hypothesis import strategies as st


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_segmenter.py"
    spec = importlib.util.spec_from_file_location("bench_segmenter_generators", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench()
# Each class of characters, and each special mark on its own.
_CHAR_CLASSES = [*BENCH.CLASSES.values(), *BENCH.MARKS]
_named = st.tuples(st.sampled_from(sorted(BENCH.HOSTILE)), st.integers(1, 450)).map(
    lambda case: BENCH.HOSTILE[case[0]](case[1])
)
_run = st.sampled_from(_CHAR_CLASSES).flatmap(
    lambda chars: st.text(alphabet=chars, min_size=1, max_size=250)
)
_alternation = st.tuples(
    st.sampled_from(_CHAR_CLASSES), st.sampled_from(_CHAR_CLASSES), st.integers(2, 250)
).map(lambda case: BENCH.alternate(*case))


def hostile_text(ordinary: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Up to six hostile pieces, with `ordinary` text between some of them."""
    return st.lists(st.one_of(_named, _run, _alternation, ordinary), min_size=1, max_size=6).map(
        "".join
    )

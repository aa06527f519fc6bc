"""llama.cpp (llama-cpp-python), inside the LLM worker process: owns one GGUF model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The self-check's prompt: long enough (>= 64 tokens) that llama.cpp evaluates it as a batch,
# through the matrix kernels a CPU-specific build would use (where a wrong build dies).
SELF_CHECK_PROMPT = (
    "Read this and answer with one word. The quick brown fox jumps over the lazy dog while the "
    "sun sets behind the hills, the river runs toward the sea, children laugh in the park, an "
    "old man feeds the pigeons, a train whistles in the distance, and somewhere a radio plays a "
    "song about summer nights, open roads and friends who never forget each other. Which animal "
    "jumps?"
)
SELF_CHECK_MIN_TOKENS = 64
# DRY's sequence breakers (llama.cpp's defaults): a repeated run is not followed across them.
DRY_SEQUENCE_BREAKERS = ["\n", ":", '"', "*"]


class LlamaEngine:
    """Inside the LLM worker: owns one llama.cpp model; runs one generation at a time."""

    def __init__(
        self,
        model_path: str,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        system_prompt: str | None = None,
    ) -> None:
        started = time.perf_counter()
        self.model_path = Path(model_path)
        self.system_prompt = system_prompt
        self._llama = _llama_with_dry()(
            model_path=model_path, n_ctx=n_ctx, n_threads=n_threads, verbose=False
        )
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        import llama_cpp

        return {
            "model": self.model_path.name,
            "load_seconds": round(self.load_seconds, 3),
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        }

    def count_tokens(self, text: str) -> int:
        """Tokens of a message's text as the chat template embeds it (special tokens in the
        text count as plain text, which is never fewer)."""
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=False))

    def self_check(self) -> None:
        """Evaluate a prompt of 64+ tokens and generate one token (a wrong build dies here),
        through the chat path real requests take (its template is compiled once, here)."""
        tokens = self._llama.tokenize(SELF_CHECK_PROMPT.encode())
        if len(tokens) < SELF_CHECK_MIN_TOKENS:
            raise RuntimeError(f"self-check prompt is only {len(tokens)} tokens")
        self._llama.create_chat_completion(
            messages=[{"role": "user", "content": SELF_CHECK_PROMPT}], max_tokens=1, temperature=0
        )
        self._llama.reset()
        if self.system_prompt:
            # Every conversation starts with the system prompt, and llama.cpp reuses the cache
            # of the longest prefix an answer shares with the last one: read it now, and the
            # first answer reads only its own words (~300 ms sooner on a slow 2-core machine).
            self._llama.create_chat_completion(
                messages=[{"role": "system", "content": self.system_prompt}],
                max_tokens=1,
                temperature=0,
            )

    def run(
        self, request: dict[str, Any], emit: Callable[[dict[str, Any]], None], cancelled: Any
    ) -> None:
        if "count" in request:  # the server fits a conversation into n_ctx (llm/context.py)
            emit({"tokens": [self.count_tokens(text) for text in request["count"]]})
            return
        sampling = request.get("sampling") or {"temperature": request.get("temperature", 0.7)}
        llama = self._llama
        llama.last_n_tokens_size = int(sampling.get("penalty_last_n", 64))
        dry = float(sampling.get("dry_multiplier", 0.0))
        llama.dry = (
            (
                dry,
                float(sampling.get("dry_base", 1.75)),
                int(sampling.get("dry_allowed_length", 2)),
                int(sampling.get("dry_penalty_last_n", 512)),
            )
            if dry > 0
            else None
        )
        stream = llama.create_chat_completion(
            messages=request["messages"],
            stream=True,
            max_tokens=int(request.get("max_tokens", 256)),
            temperature=float(sampling.get("temperature", 0.7)),
            top_k=int(sampling.get("top_k", 40)),
            top_p=float(sampling.get("top_p", 0.95)),
            min_p=float(sampling.get("min_p", 0.05)),
            repeat_penalty=float(sampling.get("repeat_penalty", 1.0)),
            presence_penalty=float(sampling.get("presence_penalty", 0.0)),
            frequency_penalty=float(sampling.get("frequency_penalty", 0.0)),
        )
        for chunk in stream:
            if cancelled():
                break
            choice = chunk["choices"][0]
            text = choice["delta"].get("content")
            if text:
                emit({"text": text})
            if choice.get("finish_reason") == "length":  # cut by max_tokens, not finished
                emit({"text": "", "finish_reason": "length"})


def _llama_with_dry() -> type:
    """llama_cpp.Llama whose sampler chain has llama.cpp's DRY sampler when `dry` is set.

    llama-cpp-python 0.3.36 builds the chain in `Llama._init_sampler` without DRY (its
    create_chat_completion has no DRY parameters), though `LlamaSampler.add_dry` exists. This
    builds the same chain with DRY right after the penalties, where llama.cpp's own sampler
    order puts it; anything else (mirostat, a grammar, greedy) uses the library's chain."""
    from llama_cpp import Llama  # only the worker process loads llama.cpp
    from llama_cpp import _internals as internals

    class DryLlama(Llama):  # type: ignore[misc]
        dry: tuple[float, float, int, int] | None = None

        def _init_sampler(self, **kwargs: Any) -> Any:
            plain = (
                kwargs.get("mirostat_mode", 0) == 0
                and kwargs.get("logits_processor") is None
                and kwargs.get("grammar") is None
                and kwargs.get("temp", 0.8) > 0
            )
            if self.dry is None or not plain:
                return super()._init_sampler(**kwargs)
            sampler = internals.LlamaSampler()
            sampler.add_penalties(
                n_vocab=self._n_vocab,
                penalty_last_n=self.last_n_tokens_size,
                penalty_repeat=kwargs.get("repeat_penalty", 1.0),
                penalty_freq=kwargs.get("frequency_penalty", 0.0),
                penalty_present=kwargs.get("presence_penalty", 0.0),
            )
            sampler.add_dry(self._model, *self.dry, DRY_SEQUENCE_BREAKERS)
            sampler.add_top_k(kwargs.get("top_k", 40))
            sampler.add_typical(kwargs.get("typical_p", 1.0), 1)
            sampler.add_top_p(kwargs.get("top_p", 0.95), 1)
            sampler.add_min_p(kwargs.get("min_p", 0.05), 1)
            sampler.add_temp(kwargs["temp"])
            sampler.add_dist(self._seed)
            return sampler

    return DryLlama

"""Cost of the intelligent buffer per character, fed as an LLM feeds it (small deltas).

python scripts/bench_segmenter.py [--chars 200000] [--delta 4]
python scripts/bench_segmenter.py --worst     hostile input: is the cost still linear?

--worst feeds long runs that once made the segmenter quadratic (sentence marks, spaces, quotes,
closers, dashes, apostrophes...) one character at a time, at 1,000 and 8,000 characters, and one
long delta at 40,000 and 320,000; it prints µs per character for each and the ratio of the two
times (linear: about 8; quadratic: 64). It exits 1 if any ratio exceeds 24.
"""

from __future__ import annotations

import argparse
import json
import time

from voicechat.segmenter import Segmenter
from voicechat.speech_text import SpeechTextFilter

SAMPLE = (
    "The Moon is Earth's only natural satellite, about 384,400 km away. It formed about "
    "4.5 billion years ago, e.g. from debris of a giant impact! Dr. Smith says: visit "
    "nasa.gov/moon for more... Really? Yes. 달은 지구의 유일한 자연 위성입니다. 月は美しい。"
    "Its surface has maria, craters and highlands; the far side was first seen in 1959.\n"
)


def bench(make, chars: int, delta: int, repeat: int = 5) -> float:
    text = (SAMPLE * (chars // len(SAMPLE) + 1))[:chars]
    deltas = [text[i : i + delta] for i in range(0, len(text), delta)]
    best = float("inf")
    for _ in range(repeat):
        feed, flush = make()
        start = time.perf_counter()
        for piece in deltas:
            feed(piece)
        flush()
        best = min(best, time.perf_counter() - start)
    return best / len(text) * 1e6


# Hostile inputs: each a function of the length n.
LONG_RUNS = {
    "sentence marks": lambda n: "Hi" + "!" * n,
    "spaces after a sentence end": lambda n: "Hi." + " " * n + "x",
    "quotes after a sentence end": lambda n: "Hi." + '"' * n + " x",
    "closing quotes and marks": lambda n: "!\"?'”』" * (n // 6),
    "opening quotes": lambda n: '"‘「『' * (n // 4),
    "closers after a clause mark": lambda n: "a" * 150 + "," + ")" * n,
    "dashes": lambda n: "—" * n,
    "apostrophes": lambda n: "don't " * (n // 6),
    "quoted speech": lambda n: '"Hi!" he said. 「はい。」と言った。' * (n // 30),
    "digits with dots": lambda n: "1." * (n // 2),
}
ONE_DELTA = {"words": lambda n: "word " * (n // 5), "no spaces": lambda n: "的" * n}
MAX_RATIO = 24


def seconds(text: str, per_character: bool, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        seg = Segmenter()
        start = time.perf_counter()
        if per_character:
            for ch in text:
                seg.feed(ch)
        else:
            seg.feed(text)
        seg.flush()
        best = min(best, time.perf_counter() - start)
    return best


def worst_case() -> int:
    rows = []
    for name, make in LONG_RUNS.items():
        rows.append((name, "per character", make(1000), make(8000), True))
    for name, make in ONE_DELTA.items():
        rows.append((name, "one delta", make(40_000), make(320_000), False))
    failed = 0
    print(f"{'input':32s} {'fed':14s} {'us/char small':>13s} {'us/char large':>13s} {'ratio':>6s}")
    for name, fed, small, large, per_character in rows:
        t_small, t_large = seconds(small, per_character), seconds(large, per_character)
        ratio = t_large / t_small
        failed += ratio > MAX_RATIO
        print(
            f"{name:32s} {fed:14s} {1e6 * t_small / len(small):13.3f} "
            f"{1e6 * t_large / len(large):13.3f} {ratio:6.1f}"
        )
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--delta", type=int, default=4, help="characters per delta")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worst", action="store_true", help="hostile input, linearity check")
    args = parser.parse_args()
    if args.worst:
        raise SystemExit(worst_case())

    def segmenter():
        seg = Segmenter()
        return seg.feed, seg.flush

    def speech_filter():
        flt = SpeechTextFilter()
        return flt.feed, flt.flush

    def both():
        seg, flt = Segmenter(), SpeechTextFilter()
        return (lambda d: seg.feed(flt.feed(d))), (lambda: seg.feed(flt.flush()) + seg.flush())

    results = {
        "segmenter_us_per_char": bench(segmenter, args.chars, args.delta),
        "speech_filter_us_per_char": bench(speech_filter, args.chars, args.delta),
        "filter_plus_segmenter_us_per_char": bench(both, args.chars, args.delta),
    }
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    else:
        print(f"{args.chars} characters in deltas of {args.delta} (best of 5):")
        for name, value in results.items():
            print(f"  {name:36s} {value:6.3f} us")


if __name__ == "__main__":
    main()

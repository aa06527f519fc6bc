"""Cost of the intelligent buffer per character, fed as an LLM feeds it (small deltas).

python scripts/bench_segmenter.py [--chars 200000] [--delta 4]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--delta", type=int, default=4, help="characters per delta")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

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

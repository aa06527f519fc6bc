"""Whisper's encoder window: what a shorter one saves in time and costs in words heard.

    python scripts/bench_stt_window.py [--windows 30,20,10] [--json]

Whisper tiny.en (the embedded recognizer, `voicechat.engines.whisper.WhisperEngine`, in this
process) transcribes each sentence on each of `--windows` seconds alone (the audio padded with
silence; 30 is the model's own), and as the code does (`transcribe`: the short window, kept
when Whisper is sure of it, else the 30 s one; "code" below). The sentences are bench_speech's
WER set, its voice questions and the phrases the tests and bench_conversation say, each said by
Piper (en_US-joe-medium) and by espeak-ng (en-us), in six renderings: 0 or 300 ms of silence
before, 64 or 300 ms after (the speculative transcript's cut and a longer one), light noise
(-50 dBFS), and a round trip through 48 kHz at 70 % level (as a browser microphone delivers).
Reported per voice and window: mean WER against the text said, how many transcripts differ from
the 30 s window's, how many are worse and better than it (per-sentence WER), the decode time
p50 and, for the code, how many turns the 30 s window redid; then every transcript that got
worse. Run time ~6 min on 2 slow cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_speech, which adds the repo

from bench_speech import VOICE_QUESTIONS, WER_SENTENCES, espeak_clips, word_error_rate

import voicechat.engines.whisper as whisper
from tests.conversation_fixtures import INTERRUPTIONS, LONG_QUESTIONS
from tests.speech_fixtures import spoken_pcm

RATE = 16000
SPOKEN_IN_TESTS = [
    "Stop. Tell me about Germany instead.",
    "And of Germany?",
    "What is the capital of France and how old is it?",
    "Hello, how are you today?",
    "I need a name for my new puppy.",
]


def renderings(clip: np.ndarray, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    import soxr

    audio = clip.astype(np.float32) / 32768

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * RATE), np.float32)

    for before in (0.0, 0.3):
        for after in (0.064, 0.3):
            yield (
                f"{before:.1f}s+{after:.3f}s",
                np.concatenate([silence(before), audio, silence(after)]),
            )
    noisy = audio + rng.normal(0, 10 ** (-50 / 20), audio.size).astype(np.float32)
    yield "noise", np.concatenate([silence(0.3), noisy, silence(0.1)])
    browser = soxr.resample(soxr.resample(audio, RATE, 48000) * 0.7, 48000, RATE)
    yield "48 kHz", np.concatenate([silence(0.3), browser.astype(np.float32), silence(0.1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", default="30,20,10", help="seconds, comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    windows: list[int | str] = [int(w) for w in args.windows.split(",")]
    if 30 not in windows:
        windows.insert(0, 30)  # the reference
    windows.append("code")

    texts = list(
        dict.fromkeys(
            WER_SENTENCES + VOICE_QUESTIONS + LONG_QUESTIONS + INTERRUPTIONS + SPOKEN_IN_TESTS
        )
    )
    voices = {
        "piper": [spoken_pcm(text, varied=True) for text in texts],
        "espeak": asyncio.run(espeak_clips(texts)),
    }
    engine = whisper.WhisperEngine("tiny.en", "en")
    decoded_on: list[int] = []  # the windows the code's transcribe() decoded on
    one_window = engine._transcribe_window

    def counted(audio: np.ndarray, language: str, window_s: int) -> whisper.Heard | None:
        decoded_on.append(window_s)
        return one_window(audio, language, window_s)

    def heard_on(audio: np.ndarray, window: int | str) -> str:
        if window == "code":
            return engine.transcribe(audio, "en", lambda: False)[0]
        heard = one_window(audio, "en", int(window))
        if heard is None:  # it looped: the code takes faster-whisper's full path then
            return engine._transcribe_full(audio, "en", lambda: False)[0]
        return heard.text

    engine._transcribe_window = counted  # type: ignore[method-assign]
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    for voice, clips in voices.items():
        for text, clip in zip(texts, clips, strict=True):
            for rendering, audio in renderings(clip, rng):
                row: dict[str, Any] = {"voice": voice, "text": text, "rendering": rendering}
                for window in windows:
                    decoded_on.clear()
                    started = time.perf_counter()
                    heard = heard_on(audio, window)
                    row[f"heard_{window}"] = heard
                    row[f"ms_{window}"] = round(1000 * (time.perf_counter() - started), 1)
                    row[f"wer_{window}"] = word_error_rate(text, heard)
                    if window == "code":
                        row["redone"] = whisper.WINDOW_S in decoded_on[1:]
                rows.append(row)

    summary = []
    for voice in voices:
        subset = [row for row in rows if row["voice"] == voice]
        for window in windows:
            summary.append(
                {
                    "voice": voice,
                    "window_s": window,
                    "n": len(subset),
                    "wer_mean": round(statistics.mean(r[f"wer_{window}"] for r in subset), 4),
                    "differ": sum(
                        r[f"heard_{window}"].strip().lower() != r["heard_30"].strip().lower()
                        for r in subset
                    ),
                    "worse": sum(r[f"wer_{window}"] > r["wer_30"] for r in subset),
                    "better": sum(r[f"wer_{window}"] < r["wer_30"] for r in subset),
                    "decode_ms_p50": statistics.median(r[f"ms_{window}"] for r in subset),
                    "redone_30s": sum(r["redone"] for r in subset) if window == "code" else None,
                }
            )
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=1))
        return
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{len(texts)} sentences x 6 renderings per voice; load average {load}")
    for line in summary:
        redone = line["redone_30s"]
        print(
            f"{line['voice']:6} window {line['window_s']:>4}: WER {100 * line['wer_mean']:.1f} %, "
            f"differ from 30 s {line['differ']}/{line['n']}, worse {line['worse']}, "
            f"better {line['better']}; decode p50 {line['decode_ms_p50']:.0f} ms"
            + ("" if redone is None else f"; redone on 30 s {redone}/{line['n']}")
        )
    for row in rows:
        for window in windows:
            if row[f"wer_{window}"] > row["wer_30"]:
                print(
                    f"  worse at {window}: {row['voice']} {row['rendering']}: "
                    f"{row['heard_30']!r} -> {row[f'heard_{window}']!r}"
                )


if __name__ == "__main__":
    main()

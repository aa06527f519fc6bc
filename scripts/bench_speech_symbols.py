"""What symbols cost the embedded voice (issue 24, defect 7), before and after the speech path.

espeak-ng, Piper's phonemizer, reads a symbol it has no word for by its Unicode name or code
("symbol two six zero five", "braille dots one two three", "Myanmar vowel sign aa"), and Piper's
memory grows with the length of what it speaks. This prints:

  --chars   phonemes a character costs, per Unicode category: raw (as espeak-ng reads it) and
            after the speech-text filter and the TTS router (what Piper is sent now); ~1 min
  --piper   a hostile 420-character message through a real Piper worker: seconds of audio per
            unit and in all, and the worker's resident memory before and after, for the old path
            (no symbol filter, no router, no phoneme bound, no memory limit) and the current one

    python scripts/bench_speech_symbols.py --piper [--chars]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import unicodedata
from pathlib import Path

# A message of 420 characters made of what spelled-out symbols look like in the wild: enclosed
# ideographs, braille, Myanmar signs, math operators, enclosed digits, box drawing.
HOSTILE_MESSAGE = (
    "Congratulations ㊗㊗㊗ on the news! ⠓⠑⠇⠇⠕ ⠺⠕⠗⠇⠙ ⠿⠿⠿⠿ ကါါ ၊ ၌ ⓐ ⓑ ① ② "
    "so x ≤ y ≥ z ≠ w ± v ≈ u ⊂ t ⊃ s ∀ r ∃ q ∴ p ∵ o ≡ n ⊕ m ⊗ l ┌─┐ ║█║ ╚═╝ "
    "㊙㊚㊛ ⠁⠃⠉⠙⠑⠋⠛⠓⠊⠚ ါါါါ and ≤ ≥ ≠ ± ≈ ∑ ∏ √ ∞ ∫ ∮ ≪ ≫ ⊆ ⊇ ∉ ∌ ⊄ ⊅ "
)
HOSTILE_MESSAGE = (HOSTILE_MESSAGE * 3)[:420]


def rss_mb(pid: int | None) -> float:
    from voicechat.workers.supervisor import resident_bytes

    size = resident_bytes(pid) if pid is not None else None
    return (size or 0) / 2**20


def units_of(text: str, *, filtered: bool) -> list[str]:
    from voicechat.segmenter import Segmenter
    from voicechat.speech_text import SpeechTextFilter

    speech, segmenter = SpeechTextFilter(), Segmenter()
    if filtered:
        text = speech.feed(text) + speech.flush()
    return segmenter.feed(text) + segmenter.flush()


def char_costs() -> None:
    import piper
    from piper.phonemize_espeak import EspeakPhonemizer

    from voicechat.speech_text import to_speech_text
    from voicechat.tts.router import speakable

    phonemizer = EspeakPhonemizer(str(Path(piper.__file__).parent / "espeak-ng-data"))

    def cost(text: str) -> int:
        phonemes = phonemizer.phonemize("en-us", f"a {text} a") if text.strip() else []
        return sum(len(sentence) for sentence in phonemes) - base

    base = 0
    base = cost(" ")
    raw: dict[str, list[int]] = collections.defaultdict(list)
    now: dict[str, list[int]] = collections.defaultdict(list)
    for code in range(0x20, 0x20000):
        char = chr(code)
        category = unicodedata.category(char)
        if category[0] in "CZ" or category[0] == "L":  # letters go to their script's voice
            continue
        raw[category].append(cost(char))
        now[category].append(cost(speakable(to_speech_text(char)) or " "))
    print("category  chars  raw: median max >10    now: median max >10")
    for category in sorted(raw):
        before, after = sorted(raw[category]), sorted(now[category])
        print(
            f"{category:8} {len(before):6}  {before[len(before) // 2]:10} {before[-1]:3}"
            f" {sum(n > 10 for n in before):4}  {after[len(after) // 2]:10} {after[-1]:3}"
            f" {sum(n > 10 for n in after):4}"
        )


async def through_piper(*, old: bool) -> None:
    from voicechat.tts.base import TTSError
    from voicechat.tts.piper import default_voice_path
    from voicechat.tts.router import ScriptRouter
    from voicechat.tts.worker_voice import WorkerVoice
    from voicechat.workers import Worker
    from voicechat.workers.embedded import piper_worker

    if old:
        settings = {"model_path": str(default_voice_path()), "max_phonemes": 10**9}
        worker = Worker("piper", settings, label="Piper (old path)")
    else:
        worker = piper_worker(default_voice_path())
    await worker.start()
    try:
        voice = WorkerVoice(worker, "piper")
        tts = voice if old else ScriptRouter(voice, {})
        pid = worker.pid
        before = peak = rss_mb(pid)
        seconds, skipped = [], 0
        for unit in units_of(HOSTILE_MESSAGE, filtered=not old):
            audio = 0.0
            try:
                async for pcm in tts.synthesize(unit):
                    audio += pcm.samples / pcm.sample_rate
            except TTSError:
                skipped += 1  # a unit in a script no voice speaks
            seconds.append(audio)
            peak = max(peak, rss_mb(pid))  # 0 once a restart has replaced it
        await worker.wait_ready()
        after = rss_mb(worker.pid)
        name = "old path" if old else "now     "
        print(
            f"{name}: {len(seconds)} units ({skipped} skipped), {sum(seconds):6.1f} s of audio"
            f" (longest unit {max(seconds):5.1f} s); Piper RSS {before:5.0f} MB before, up to"
            f" {peak:5.0f} MB, {after:5.0f} MB after (restarts: {worker.restarts})"
        )
    finally:
        await worker.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", action="store_true")
    parser.add_argument("--piper", action="store_true")
    args = parser.parse_args()
    if not (args.chars or args.piper):
        parser.error("choose --chars, --piper or both")
    print(f"hostile message: {len(HOSTILE_MESSAGE)} characters")
    if args.piper:
        asyncio.run(through_piper(old=True))
        asyncio.run(through_piper(old=False))
    if args.chars:
        char_costs()


if __name__ == "__main__":
    sys.exit(main())

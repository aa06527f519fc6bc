"""Test speech, made offline: questions spoken by the embedded Piper voice, silence, padding,
and the word error rate to judge a transcript by.

Piper runs in the test process (`piper.PiperVoice.load`, once per process), not in the server's
voice worker, so the speech a test sends does not depend on the server under test.
"""

from __future__ import annotations

import functools
import re
import wave
from pathlib import Path
from typing import Any

import numpy as np

SPEECH_RATE = 16000

# Short questions Whisper tiny.en hears without ambiguity when Piper's joe voice says them, with
# the server's decoding (greedy) and whatever silence the VAD leaves around them: checked with
# 0-300 ms before, 0-800 ms after, and the last 50 ms cut. ("What color is the sky on a clear
# day?" failed that: "this guy"; "... fruits that are red" came back "read".) What is spoken
# is the reference text.
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Tell me a short joke about cats.",
    "Why is the sky blue?",
    "Name three fruits that grow on trees.",
]


@functools.cache
def _voice() -> Any:
    from piper import PiperVoice

    from voicechat.tts.piper import default_voice_path

    return PiperVoice.load(str(default_voice_path()))


def spoken_pcm(text: str, rate: int = SPEECH_RATE, *, varied: bool = False) -> np.ndarray:
    """`text` said by Piper's en_US-joe-medium voice: int16 mono samples at `rate`.

    The same samples every time, unless `varied`: Piper's voice draws random noise for its
    sound and timing, so each rendering differs, and Whisper tiny.en mishears a few of them
    ("I need a name for my new" came back "... my news" in 1 of 40). A test would fail now and
    then by chance; the benchmarks that measure over renderings ask for `varied` ones."""
    import soxr
    from piper import SynthesisConfig

    voice = _voice()
    config = None if varied else SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, config))
    samples = np.frombuffer(pcm, "<i2")
    assert samples.size, f"Piper said nothing for {text!r}"
    source_rate = int(voice.config.sample_rate)
    if source_rate != rate:
        samples = soxr.resample(samples, source_rate, rate)
    return samples.astype(np.int16)


def pad(pcm: np.ndarray, before_s: float, after_s: float, rate: int = SPEECH_RATE) -> np.ndarray:
    """`pcm` (samples, or frames x channels) with digital silence before and after it."""
    before, after = round(before_s * rate), round(after_s * rate)
    widths = [(before, after)] + [(0, 0)] * (pcm.ndim - 1)
    return np.pad(pcm, widths)


def write_wav(path: Path, samples: np.ndarray, rate: int = SPEECH_RATE) -> Path:
    """A PCM16 WAV file of int16 `samples`: shape (frames,) for mono, (frames, channels)."""
    frames = samples.reshape(len(samples), 1) if samples.ndim == 1 else samples
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.astype("<i2").tobytes())
    return path


def spoken_wav(
    text: str,
    path: Path,
    rate: int = SPEECH_RATE,
    *,
    before_s: float = 0.3,
    after_s: float = 0.3,
) -> Path:
    """`text` spoken into a mono PCM16 WAV file at `rate`, with a little silence around it
    (as a recording has)."""
    return write_wav(path, pad(spoken_pcm(text, rate), before_s, after_s, rate), rate)


def silence_wav(path: Path, seconds: float = 2.0, rate: int = SPEECH_RATE) -> Path:
    """Digital silence in a mono PCM16 WAV file."""
    return write_wav(path, np.zeros(round(seconds * rate), np.int16), rate)


def spoken_questions(folder: Path) -> list[tuple[str, Path]]:
    """QUESTIONS, each as (reference text, a 16 kHz mono WAV file of it in `folder`)."""
    return [
        (text, spoken_wav(text, folder / f"question{index}.wav"))
        for index, text in enumerate(QUESTIONS)
    ]


# --- word error rate --------------------------------------------------------------------------

NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}


def normalize(text: str) -> list[str]:
    """Words to compare: lower case, no punctuation (an apostrophe inside a word stays),
    number words as digits ("twenty-one", "twenty one" and "21" are all "21")."""
    text = text.lower().replace("-", " ").replace("\u2019", "'")
    out: list[str] = []
    tens = False  # the last word was "twenty", "thirty", ...: a unit may follow
    for word in re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text):
        value = NUMBER_WORDS.get(word)
        if value is None:
            out.append(word)
        elif tens and 1 <= value <= 9:
            out[-1] = str(int(out[-1]) + value)
        else:
            out.append(str(value))
        tens = value is not None and value >= 20 and value % 10 == 0
    return out


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance in words: substitutions, deletions and insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(
                min(
                    previous[j] + 1,  # a reference word deleted
                    current[j - 1] + 1,  # a word inserted
                    previous[j - 1] + (ref_word != hyp_word),  # substituted, or the same
                )
            )
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word edits needed to turn the reference into the hypothesis, per reference word."""
    ref = normalize(reference)
    if not ref:
        raise ValueError("the reference has no words")
    return edit_distance(ref, normalize(hypothesis)) / len(ref)


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """Word error rate over many (reference, hypothesis) pairs: all edits over all words."""
    edits = words = 0
    for reference, hypothesis in pairs:
        ref = normalize(reference)
        edits += edit_distance(ref, normalize(hypothesis))
        words += len(ref)
    if not words:
        raise ValueError("the references have no words")
    return edits / words

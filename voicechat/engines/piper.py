"""Piper (`piper-tts`, onnxruntime), inside the voice worker process: owns one voice.

Each piece Piper yields (one per sentence inside the unit) goes back to the server at once.

One unit's speech is bounded before it is made: its phonemes (espeak-ng's, which Piper speaks at
about 20 a second) are counted first, and a unit over `max_phonemes` is cut at the last word that
fits. A unit's words normally make about 1.1 phonemes a character (a 200-character unit: ~220),
but espeak-ng reads a symbol it has no word for by its Unicode name or code ("symbol two six zero
five"), so 80 such characters made 67 s of audio, and Piper's memory grows with the length of
what it speaks (about 20 MB a second of audio, kept by onnxruntime afterwards).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SELF_CHECK_TEXT = "Voice check."
MAX_UNIT_PHONEMES = 400  # about 20 s of speech: twice the longest unit of plain words

log = logging.getLogger(__name__)


class PiperEngine:
    """Inside the voice worker: one Piper voice; synthesises one unit at a time."""

    def __init__(
        self, model_path: str, length_scale: float = 1.0, max_phonemes: int = MAX_UNIT_PHONEMES
    ) -> None:
        from piper import PiperVoice, SynthesisConfig  # only the worker loads onnxruntime

        started = time.perf_counter()
        self.model_path = Path(model_path)
        self._voice: Any = PiperVoice.load(model_path)
        self.load_seconds = time.perf_counter() - started
        self.sample_rate: int = self._voice.config.sample_rate
        self._config = SynthesisConfig(length_scale=length_scale)
        self.max_phonemes = max_phonemes

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_path.name,
            "sample_rate": self.sample_rate,
            "load_seconds": round(self.load_seconds, 3),
        }

    def self_check(self) -> None:
        pieces = self._voice.synthesize(SELF_CHECK_TEXT, self._config)
        if not any(chunk.audio_int16_bytes for chunk in pieces):
            raise RuntimeError("Piper produced no audio for a test sentence")

    def run(
        self,
        request: dict[str, Any],
        emit: Callable[[dict[str, Any]], None],
        cancelled: Callable[[], bool],
    ) -> None:
        for chunk in self._voice.synthesize(self.bounded(request["text"]), self._config):
            if cancelled():
                return
            emit({"pcm": chunk.audio_int16_bytes, "rate": self.sample_rate})

    def phonemes(self, text: str) -> int:
        return sum(len(sentence) for sentence in self._voice.phonemize(text))

    def bounded(self, text: str) -> str:
        """`text`, or its longest start of whole words within `max_phonemes` (a binary search
        over word ends: each step phonemizes, which takes about 1 ms, not synthesises)."""
        if self.phonemes(text) <= self.max_phonemes:
            return text
        # Cut after a word; text without spaces (Chinese, a run of symbols) after a character.
        ends = [i for i, char in enumerate(text) if char.isspace()] or list(range(1, len(text)))
        low, high = 0, len(ends)  # ends[:low] fit; ends[high:] do not
        while low < high:
            middle = (low + high) // 2
            if self.phonemes(text[: ends[middle]]) <= self.max_phonemes:
                low = middle + 1
            else:
                high = middle
        cut = text[: ends[low - 1]] if low else ""
        log.warning(
            "a unit of %d characters would be over %d phonemes; speaking its first %d",
            len(text),
            self.max_phonemes,
            len(cut),
        )
        return cut

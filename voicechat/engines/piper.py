"""Piper (`piper-tts`, onnxruntime), inside the voice worker process: owns one voice.

Each piece Piper yields (one per sentence inside the unit) goes back to the server at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SELF_CHECK_TEXT = "Voice check."


class PiperEngine:
    """Inside the voice worker: one Piper voice; synthesises one unit at a time."""

    def __init__(self, model_path: str, length_scale: float = 1.0) -> None:
        from piper import PiperVoice, SynthesisConfig  # only the worker loads onnxruntime

        started = time.perf_counter()
        self.model_path = Path(model_path)
        self._voice: Any = PiperVoice.load(model_path)
        self.load_seconds = time.perf_counter() - started
        self.sample_rate: int = self._voice.config.sample_rate
        self._config = SynthesisConfig(length_scale=length_scale)

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
        for chunk in self._voice.synthesize(request["text"], self._config):
            if cancelled():
                return
            emit({"pcm": chunk.audio_int16_bytes, "rate": self.sample_rate})

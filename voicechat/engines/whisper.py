"""Whisper (faster-whisper on CTranslate2, int8), inside the speech-recognition worker process.

One request is one finished turn: 16 kHz PCM16 in, its text out. Decoding is greedy (beam 1)
without timestamps: on two cores that is what keeps a 3 s question near 0.6 s
(../docs/performance.md). The weights come from pip packages and are checked by sha256 before
CTranslate2 reads them (`voicechat.speech.models`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from voicechat.speech.models import load_files

SELF_CHECK_SECONDS = 1.0
SAMPLE_RATE = 16000
# Whisper's encoder always reads a 30 s window (the audio padded with silence): most of the
# time of a 3 s question. A window a little longer than the audio gives the same words ~40 %
# sooner (scripts/bench_speech.py wer, docs/performance.md): the trick whisper.cpp calls
# audio_ctx. Never shorter than this, so a short "yes" still has context.
MIN_WINDOW_S = 8


def encoder_window_s(audio_s: float) -> int:
    """The encoder's window for `audio_s` of audio: the audio and a second more, 8-30 s."""
    return max(MIN_WINDOW_S, min(30, math.ceil(audio_s) + 1))


class WhisperEngine:
    """Inside the STT worker: one Whisper model; transcribes one turn at a time."""

    def __init__(self, model: str, language: str | None = None, threads: int = 0) -> None:
        from faster_whisper import WhisperModel  # only the worker loads CTranslate2

        started = time.perf_counter()
        self.model_name = model
        self.language = language
        files = load_files(model)  # raises ModelFileError on a missing package or a bad sha256
        self._model: Any = WhisperModel(
            model,
            device="cpu",
            compute_type="int8",
            cpu_threads=threads or min(2, os.cpu_count() or 1),
            files=files,
        )
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "language": self.language,
            "load_seconds": round(self.load_seconds, 3),
        }

    def self_check(self) -> None:
        # A real inference on one second of quiet noise: it proves the model decodes.
        noise = np.random.default_rng(0).normal(0, 0.001, 16000 * int(SELF_CHECK_SECONDS))
        self.transcribe(noise.astype(np.float32), self.language, lambda: False)

    def transcribe(
        self, audio: np.ndarray, language: str | None, cancelled: Callable[[], bool]
    ) -> tuple[str, str]:
        segments, info = self._model.transcribe(
            audio,
            language=language or self.language,
            chunk_length=encoder_window_s(len(audio) / SAMPLE_RATE),
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # our VAD already cut the turn
        )
        parts = []
        for segment in segments:  # decoding happens while iterating: a cancel stops it here
            if cancelled():
                break
            parts.append(segment.text)
        return "".join(parts).strip(), str(info.language)

    def run(
        self,
        request: dict[str, Any],
        emit: Callable[[dict[str, Any]], None],
        cancelled: Callable[[], bool],
    ) -> None:
        started = time.perf_counter()
        pcm = np.frombuffer(request["pcm"], dtype="<i2").astype(np.float32) / 32768.0
        text, language = self.transcribe(pcm, request.get("language"), cancelled)
        if cancelled():
            return
        emit(
            {
                "text": text,
                "language": language,
                "seconds": round(time.perf_counter() - started, 4),
            }
        )

"""Silero VAD (its ONNX file on onnxruntime), inside the VAD worker process: every session's
voice-activity detection.

One model serves every audio stream; each stream keeps only its recurrent state (2x128 floats),
the last 64 samples as context, and the samples of an unfinished 32 ms window. A request
carries a stream's new audio and returns one speech probability per complete window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicechat.speech.models import silero_vad_path

RATE = 16000
WINDOW = 512  # samples: 32 ms, the window the model is made for at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees before each new one
MAX_STREAMS = 10_000  # streams not closed (a bug) cannot grow the worker without bound


@dataclass
class _Stream:
    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class SileroEngine:
    """Inside the VAD worker: speech probabilities per 32 ms window, per stream."""

    def __init__(self) -> None:
        import onnxruntime  # only the worker loads it

        started = time.perf_counter()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # 0.1 ms a window: threads would cost more than help
        options.inter_op_num_threads = 1
        self._session: Any = onnxruntime.InferenceSession(
            str(silero_vad_path()), options, providers=["CPUExecutionProvider"]
        )
        self._rate = np.array(RATE, dtype=np.int64)
        self._streams: dict[str, _Stream] = {}
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        return {"model": "silero_vad.onnx", "load_seconds": round(self.load_seconds, 3)}

    def self_check(self) -> None:
        t = np.arange(RATE) / RATE
        tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        probabilities = self.probabilities("self-check", tone)
        self._streams.pop("self-check", None)
        if len(probabilities) != RATE // WINDOW or not all(0 <= p <= 1 for p in probabilities):
            raise RuntimeError(f"Silero VAD gave {probabilities!r} for a test tone")

    def probabilities(self, stream_id: str, audio: np.ndarray) -> list[float]:
        stream = self._streams.pop(stream_id, None) or _Stream()
        self._streams[stream_id] = stream  # most recently used last
        while len(self._streams) > MAX_STREAMS:
            self._streams.pop(next(iter(self._streams)))
        samples = np.concatenate([stream.pending, audio])
        whole = len(samples) // WINDOW * WINDOW
        result = []
        for start in range(0, whole, WINDOW):
            window = samples[start : start + WINDOW]
            model_input = np.concatenate([stream.context, window])[np.newaxis, :]
            output, stream.state = self._session.run(
                None, {"input": model_input, "state": stream.state, "sr": self._rate}
            )
            stream.context = window[-CONTEXT:]
            result.append(round(float(output[0][0]), 4))
        stream.pending = samples[whole:]
        return result

    def run(
        self,
        request: dict[str, Any],
        emit: Callable[[dict[str, Any]], None],
        cancelled: Callable[[], bool],
    ) -> None:
        stream_id = str(request["stream"])
        if request.get("close"):
            self._streams.pop(stream_id, None)
            return
        audio = np.frombuffer(request["pcm"], dtype="<i2").astype(np.float32) / 32768.0
        emit({"probabilities": self.probabilities(stream_id, audio)})

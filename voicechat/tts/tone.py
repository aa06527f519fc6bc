"""A deterministic synthetic voice for tests, benchmarks and demos (not a real TTS).

Each unit becomes a soft tone whose length follows the text (`ms_per_char`), after a simulated
server delay of `latency_ms` plus `rtf` times the audio's duration (a real-time factor, as real
engines take longer for longer text), so timelines are known exactly.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import AsyncGenerator

import numpy as np

from voicechat.tts.base import Pcm


@functools.lru_cache(maxsize=512)  # benchmarks replay the same units: compute each tone once
def tone_pcm(text: str, sample_rate: int, ms_per_char: float = 60.0) -> bytes:
    """The exact samples the tone voice produces for `text` (tests compare against this)."""
    duration_ms = max(200.0, ms_per_char * len(text))
    count = int(sample_rate * duration_ms / 1000)
    pitch = 180 + zlib.crc32(text.encode()) % 200
    t = np.arange(count) / sample_rate
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) * 50)  # 20 ms fade in/out: no clicks
    wave = 0.3 * np.sin(2 * np.pi * pitch * t) * envelope
    return (wave * 32767).astype("<i2").tobytes()


class ToneTTS:
    """Synthetic TTS: deterministic audio, simulated latency, optional streaming pieces."""

    name = "tone"

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        sample_rate: int = 22050,
        ms_per_char: float = 60.0,
        pieces: int = 1,
        rtf: float = 0.0,
    ) -> None:
        self.latency_ms = latency_ms
        self.rtf = rtf
        self.sample_rate = sample_rate
        self.ms_per_char = ms_per_char
        self.pieces = max(1, pieces)

    def delay_s(self, text: str) -> float:
        """The simulated synthesis time for `text`."""
        duration_s = max(0.2, self.ms_per_char * len(text) / 1000)
        return self.latency_ms / 1000 + self.rtf * duration_s

    async def synthesize(self, text: str) -> AsyncGenerator[Pcm, None]:
        delay = self.delay_s(text)
        if delay > 0:
            await asyncio.sleep(delay)  # the simulated server time
        data = tone_pcm(text, self.sample_rate, self.ms_per_char)
        step = -(-len(data) // self.pieces // 2) * 2  # whole samples per piece
        for start in range(0, len(data), step):
            yield Pcm(data[start : start + step], self.sample_rate)

    async def aclose(self) -> None:
        return None

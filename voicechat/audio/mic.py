"""The microphone: PortAudio capture in, 20 ms PCM16 frames at 16 kHz out, with a level meter.

The server takes speech input as PCM16 little-endian mono at 16,000 Hz (docs/protocol.md). A
`sounddevice.InputStream` records at 16 kHz when the device accepts it, else at the device's own
rate, and libsoxr resamples to 16 kHz. The PortAudio callback does nothing that can block: it
copies its block and hands it to the asyncio loop (`call_soon_threadsafe`). On the loop, `Framer`
resamples and cuts the audio into frames, `LevelMeter` measures them, and the frames wait in a
bounded buffer for the consumer; when the consumer falls behind, the oldest frames are dropped
and counted. `Framer`, `LevelMeter` and `meter_bar` are pure and testable without a device.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import soxr

from voicechat.audio.devices import list_devices
from voicechat.protocol import INPUT_RATE

RATE = INPUT_RATE  # what the server takes: PCM16 mono 16 kHz
FRAME_MS = 20
MAX_BUFFERED_MS = 1000  # frames the consumer has not taken yet; older ones are dropped
FLOOR_DB = -90.0  # the level of digital silence, instead of -inf
PEAK_HOLD_S = 0.5  # the meter holds a peak this long…
PEAK_DECAY_DB_S = 30.0  # …then lets it fall this fast
METER_GLYPHS = "▁▂▃▅▇"
METER_STEPS_DB = (-60.0, -48.0, -36.0, -24.0, -12.0)  # the level at which each glyph lights


class MicUnavailable(Exception):
    """No usable input device, or no PortAudio (one line for the user)."""


class Framer:
    """int16 blocks at `source_rate` in, frames of `frame_ms` at 16 kHz out (PCM16 LE bytes).

    One streaming soxr resampler for the whole recording, so block boundaries are seamless;
    the samples that do not fill a frame yet wait for the next block.
    """

    def __init__(self, source_rate: int, frame_ms: int = FRAME_MS) -> None:
        self.source_rate = source_rate
        self.frame_bytes = RATE * frame_ms // 1000 * 2
        self._resampler = (
            soxr.ResampleStream(source_rate, RATE, 1, dtype="int16")
            if source_rate != RATE
            else None
        )
        self._pending = bytearray()

    def push(self, block: np.ndarray) -> list[bytes]:
        """Add one block of int16 samples; return every frame now complete."""
        samples = block.astype(np.int16, copy=False)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        self._pending += samples.astype("<i2", copy=False).tobytes()
        size = self.frame_bytes
        count = len(self._pending) // size
        frames = [bytes(self._pending[i * size : (i + 1) * size]) for i in range(count)]
        del self._pending[: count * size]
        return frames


def rms_dbfs(frame: np.ndarray) -> float:
    """The RMS level of int16 samples in dB relative to full scale (a full-scale sine: -3 dB)."""
    if not len(frame):
        return FLOOR_DB
    rms = math.sqrt(float(np.mean(np.square(frame.astype(np.float64)))))
    return max(FLOOR_DB, 20 * math.log10(rms / 32768)) if rms else FLOOR_DB


class LevelMeter:
    """The live input level (RMS dBFS of the last frame) and a peak that holds, then falls."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.level_db = FLOOR_DB
        self._peak_db = FLOOR_DB
        self._peak_at = 0.0

    def update(self, frame: np.ndarray) -> None:
        self.level_db = rms_dbfs(frame)
        if self.level_db >= self.peak_db:
            self._peak_db = self.level_db
            self._peak_at = self._clock()

    @property
    def peak_db(self) -> float:
        """The highest recent level: held for PEAK_HOLD_S, then falling at PEAK_DECAY_DB_S."""
        falling_s = self._clock() - self._peak_at - PEAK_HOLD_S
        if falling_s <= 0:
            return self._peak_db
        return max(FLOOR_DB, self._peak_db - PEAK_DECAY_DB_S * falling_s)


def meter_bar(level_db: float) -> str:
    """`▁▂▃▅▇` lit up to `level_db`, `·` for the glyphs above it (silence: `·····`)."""
    return "".join(
        glyph if level_db >= step else "·"
        for glyph, step in zip(METER_GLYPHS, METER_STEPS_DB, strict=True)
    )


def _sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # libportaudio2 missing
        raise MicUnavailable(
            f"PortAudio is not installed: `apt-get install libportaudio2` ({exc})"
        ) from None
    return sd


def input_rate(device: int | str | None) -> int:
    """16 kHz if the input device takes it, else its default rate; MicUnavailable if none."""
    sd = _sounddevice()
    try:
        info = sd.query_devices(device, "input")
    except (sd.PortAudioError, ValueError) as exc:
        where = "" if device is None else f" at {device!r}"
        raise MicUnavailable(f"no microphone found{where} (PortAudio: {exc})") from None
    try:
        sd.check_input_settings(device, channels=1, dtype="int16", samplerate=RATE)
    except (sd.PortAudioError, ValueError):
        return int(info["default_samplerate"])
    return RATE


def list_input_devices() -> list[dict[str, Any]]:
    """The input devices PortAudio sees (voicechat.audio.devices); MicUnavailable without
    PortAudio."""
    _sounddevice()
    return list_devices("input")


class Microphone:
    """Records one input device for its lifetime; `frames()` yields 16 kHz PCM16 frames.

    `device`: an index or name, None for the default input. `sample_rate`: the capture rate
    (default: 16 kHz if the device takes it, else its own rate). Raises MicUnavailable when
    there is no such input or PortAudio is missing. `start()` runs in the asyncio loop that
    will read the frames.
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sample_rate: int | None = None,
        frame_ms: int = FRAME_MS,
        max_buffered_ms: int = MAX_BUFFERED_MS,
    ) -> None:
        self.device = device
        self.sample_rate = sample_rate or input_rate(device)
        self.frame_ms = frame_ms
        self.meter = LevelMeter()
        self.dropped_frames = 0  # taken from the buffer unread: the consumer fell behind
        self.overflows = 0  # blocks PortAudio itself lost (reported by the callback)
        self.frames_captured = 0
        self._framer = Framer(self.sample_rate, frame_ms)
        self._buffer: deque[bytes] = deque()
        self._max_frames = max(1, max_buffered_ms // frame_ms)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._stream: Any = None
        self._closed = False

    @property
    def level_db(self) -> float:
        return self.meter.level_db

    @property
    def peak_db(self) -> float:
        return self.meter.peak_db

    def start(self) -> None:
        """Open and start the input stream (call it from the loop that reads the frames)."""
        sd = _sounddevice()
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        try:
            self._stream = sd.InputStream(
                samplerate=self.sample_rate,
                blocksize=self.sample_rate * self.frame_ms // 1000,
                device=self.device,
                channels=1,
                dtype="int16",
                latency="low",
                callback=self._callback,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            self.close()
            where = "the default microphone" if self.device is None else f"{self.device!r}"
            raise MicUnavailable(f"{where} cannot be opened (PortAudio: {exc})") from None

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: copy the block and hand it over; never wait for anything."""
        if status.input_overflow:
            self.overflows += 1
        loop = self._loop
        if loop is None or self._closed:
            return
        try:
            loop.call_soon_threadsafe(self.receive, indata[:, 0].copy())
        except RuntimeError:  # the loop has closed; close() is on its way
            pass

    def receive(self, block: np.ndarray) -> None:
        """On the loop: resample and frame one captured block, measure it, buffer the frames."""
        if self._closed:
            return
        for frame in self._framer.push(block):
            self.meter.update(np.frombuffer(frame, dtype="<i2"))
            self.frames_captured += 1
            self._buffer.append(frame)
            if len(self._buffer) > self._max_frames:
                self._buffer.popleft()
                self.dropped_frames += 1
        if self._buffer and self._ready is not None:
            self._ready.set()

    def read_nowait(self) -> list[bytes]:
        """Every buffered frame, oldest first."""
        frames = list(self._buffer)
        self._buffer.clear()
        return frames

    async def frames(self) -> AsyncIterator[bytes]:
        """Frames as they are captured, until `close()`."""
        if self._ready is None:
            raise RuntimeError("call start() first")
        while not self._closed:
            while self._buffer:
                yield self._buffer.popleft()
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self._closed = True
        if self._ready is not None:
            self._ready.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def __enter__(self) -> Microphone:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

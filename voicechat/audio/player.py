"""The gapless player: WAV chunks in, one continuous stream of samples out.

Every chunk is decoded, resampled to the output's rate (libsoxr, one streaming resampler per
source rate, so chunk boundaries are seamless) and appended to one `PlaybackQueue`. A single
output pulls from that queue for as long as the player lives: a `sounddevice.OutputStream`
callback on a real device, or `NullOutput` (a thread paced like a sound card) when there is none.
The stream is never reopened per chunk. Silence is written only before the first chunk, after the
last one, or on a real underrun, which is counted. `flush()` (Esc, barge-in) keeps a few
milliseconds of what was playing, fades them to zero, and drops the rest: no click. `pause()`
(the server heard the user start a sound over the answer) holds the read position: silence goes
out, every sample stays queued, new chunks queue behind them, and `resume()` plays on from the
very next sample; both ramp the volume over a few milliseconds so the hold does not click.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import soxr

from voicechat.audio.devices import list_devices
from voicechat.audio.wav import decode_wav

FADE_MS = 5  # long enough to avoid a click, short enough to feel instant
BLOCK_MS = 20  # how much audio one callback asks for
MAX_QUEUED_S = 600  # a bound on memory: ten minutes of audio not yet played


class AudioUnavailable(Exception):
    """No usable output device (one line for the user)."""


@dataclass
class _Marker:
    """Where a chunk starts in the output stream, and what it belongs to."""

    position: int  # output frame at which the chunk's first sample plays
    label: Hashable
    arrived_at: float
    to_idle_queue: bool  # nothing was queued: its latency is the player's, not a backlog's


@dataclass
class PlaybackStats:
    """What the player measured.

    `latencies_ms`: from the arrival of a chunk that found nothing queued (the first of an answer,
    or one after an underrun) to its first sample reaching the device's output (DAC time).
    Chunks that arrive while others still play wait behind them by design and are not counted.
    """

    samples_played: int = 0  # output frames of audio handed to the device (not silence)
    underruns: int = 0  # times the queue ran dry while audio was still expected
    dropped_samples: int = 0  # beyond MAX_QUEUED_S, or flushed by a cancel
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "samples_played": self.samples_played,
            "underruns": self.underruns,
            "dropped_samples": self.dropped_samples,
            "arrival_to_sound_ms_p50": round(ordered[len(ordered) // 2], 1) if ordered else None,
            "arrival_to_sound_ms_max": round(ordered[-1], 1) if ordered else None,
        }


class PlaybackQueue:
    """Thread-safe int16 sample queue read by the output callback, with underrun accounting.

    `expecting` is True from the first chunk of an answer until `finish()`: running dry in that
    window is an underrun; running dry after it is just the end of the answer.
    """

    def __init__(self, sample_rate: int, *, tap: Callable[[np.ndarray], None] | None = None):
        self.sample_rate = sample_rate
        self.stats = PlaybackStats()
        self.output_latency_s = 0.0  # set by the output once the device reports it
        self._tap = tap  # receives every block handed to the device (tests, captures)
        self._lock = threading.Lock()
        self._blocks: deque[np.ndarray] = deque()
        self._queued = 0  # frames in _blocks
        self._consumed = 0  # output frames handed out so far, silence included
        self._starved = False  # the queue ran dry while audio was expected
        self._markers: deque[_Marker] = deque()
        self._current: Hashable | None = None
        self._expecting = False
        self._drained = threading.Event()
        self._drained.set()
        self.muted = False
        self._paused = False
        # The hold's volume ramp, in frames: FADE frames is full volume, 0 is held (silent).
        # A pause takes the next frames at a falling gain, a resume the next ones at a rising
        # one: no sample is skipped or repeated, the seam just does not click.
        self._fade_frames = max(1, int(sample_rate * FADE_MS / 1000))
        self._gain = self._fade_frames

    def push(self, samples: np.ndarray, label: Hashable | None = None) -> None:
        """Append int16 samples at the output rate; `label` marks where they start."""
        with self._lock:
            if label is not None:
                idle = not self._queued and not self._paused  # a held chunk waits by design
                marker = _Marker(self._tail_position(), label, time.monotonic(), idle)
                self._markers.append(marker)
            room = MAX_QUEUED_S * self.sample_rate - self._queued
            if len(samples) > room:
                self.stats.dropped_samples += len(samples) - max(0, room)
                samples = samples[: max(0, room)]
            if len(samples):
                self._blocks.append(samples)
                self._queued += len(samples)
            self._expecting = True
            self._drained.clear()

    def _tail_position(self) -> int:
        """The output frame at which a sample pushed now will play."""
        return self._consumed + self._queued

    def finish(self) -> None:
        """No more audio is coming for now: the queue may run dry without an underrun."""
        with self._lock:
            self._expecting = False
            self._starved = False
            if not self._queued:
                self._drained.set()

    def pause(self) -> None:
        """Hold playback where it is: silence out, everything queued (and pushed) is kept."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        """Play on from the exact sample where the hold began."""
        with self._lock:
            self._paused = False
            self._starved = False  # the time held was no underrun

    @property
    def paused(self) -> bool:
        return self._paused

    def flush(self, fade_ms: float = FADE_MS) -> None:
        """Stop at once: keep `fade_ms` of what plays next, faded to zero, drop the rest.

        Also ends a hold: what was held is dropped (it is silent already, so nothing is kept
        to fade), and the next answer plays at full volume."""
        with self._lock:
            level = self._gain / self._fade_frames  # below 1 while held or fading back in
            fade_frames = int(self.sample_rate * fade_ms / 1000 * level)
            head = self._take(min(fade_frames, self._queued))
            self.stats.dropped_samples += self._queued
            self._blocks.clear()
            self._queued = 0
            if len(head):
                ramp = np.linspace(level, 0.0, len(head), endpoint=False)
                self._blocks.append((head * ramp).astype(np.int16))
                self._queued = len(head)
            self._paused = False
            self._gain = self._fade_frames
            self._markers.clear()
            self._current = None  # the faded tail belongs to nothing the UI should highlight
            self._expecting = False
            self._starved = False
            if not self._queued:
                self._drained.set()

    def _take(self, frames: int) -> np.ndarray:
        """Remove and return up to `frames` queued frames (lock held)."""
        parts: list[np.ndarray] = []
        needed = frames
        while needed and self._blocks:
            block = self._blocks[0]
            if len(block) <= needed:
                parts.append(self._blocks.popleft())
                needed -= len(block)
            else:
                parts.append(block[:needed])
                self._blocks[0] = block[needed:]
                needed = 0
        self._queued -= frames - needed
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_into(self, out: np.ndarray) -> None:
        """Fill `out` (int16, one channel) from the queue; called by the output every block."""
        frames = len(out)
        with self._lock:
            if self._paused:
                audio = self._read_held(frames)
            else:
                audio = self._take(min(frames, self._queued))
                if self._gain < self._fade_frames and len(audio):  # fading back in
                    count = min(len(audio), self._fade_frames - self._gain)
                    gains = (self._gain + 1 + np.arange(count)) / self._fade_frames
                    audio = audio.copy()
                    audio[:count] = (audio[:count] * gains).astype(np.int16)
                    self._gain += count
            start = self._consumed
            # Held silence is not on the stream's clock: the markers of what is held keep
            # their positions, and the count of samples played (what was heard) stands still.
            self._consumed += len(audio) if self._paused else frames
            self.stats.samples_played += len(audio)
            if self._paused:
                pass  # silence by request: no underrun
            elif len(audio) < frames and self._expecting:
                if not self._starved:  # count each time the queue runs dry, not each block
                    self.stats.underruns += 1
                self._starved = True
            elif len(audio):
                self._starved = False
            now = time.monotonic()
            end = start + (len(audio) if self._paused else frames)
            while self._markers and self._markers[0].position < end:
                marker = self._markers.popleft()
                ahead_s = max(0, marker.position - start) / self.sample_rate
                if marker.to_idle_queue:
                    delay_s = now - marker.arrived_at + ahead_s + self.output_latency_s
                    self.stats.latencies_ms.append(1000 * delay_s)
                self._current = marker.label
            if not self._queued and not self._expecting:
                self._drained.set()
        if self.muted:
            out[:] = 0
        else:
            out[: len(audio)] = audio
            out[len(audio) :] = 0
        if self._tap is not None:
            self._tap(out.copy())

    def _read_held(self, frames: int) -> np.ndarray:
        """While paused: what is left of the fade-out ramp, then nothing (lock held)."""
        if not self._queued:
            self._gain = 0  # nothing was cut off: the next audio fades in from silence
        audio = self._take(min(frames, self._gain, self._queued))
        if len(audio):
            gains = (self._gain - np.arange(len(audio))) / self._fade_frames
            audio = (audio * gains).astype(np.int16)
            self._gain -= len(audio)
        return audio

    @property
    def now_playing(self) -> Hashable | None:
        """The label of the chunk being heard (None when nothing plays)."""
        with self._lock:
            return self._current if (self._queued or self._expecting) else None

    @property
    def busy(self) -> bool:
        return not self._drained.is_set()

    def wait_drained(self, timeout: float | None = None) -> bool:
        return self._drained.wait(timeout)


class Output(Protocol):
    """Something that calls `queue.read_into` for as long as it runs."""

    latency_s: float

    def start(self) -> None: ...
    def close(self) -> None: ...


class NullOutput:
    """Plays into nothing, paced like a sound card (or as fast as possible with `realtime=False`).

    For headless machines and for `--device null`: the same queue code runs, so highlighting,
    underruns and `ask --play`'s figures behave as with a real device.
    """

    def __init__(self, queue: PlaybackQueue, *, realtime: bool = True) -> None:
        self.queue = queue
        self.realtime = realtime
        self.latency_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="voicechat-null-audio", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        frames = self.queue.sample_rate * BLOCK_MS // 1000
        block = np.zeros(frames, dtype=np.int16)
        due = time.monotonic()
        while not self._stop.is_set():
            self.queue.read_into(block)
            if self.realtime:
                due += frames / self.queue.sample_rate
                self._stop.wait(max(0.0, due - time.monotonic()))
            elif not self.queue.busy:
                self._stop.wait(0.005)  # idle: nothing to consume

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class DeviceOutput:
    """A `sounddevice.OutputStream` whose callback reads the queue; opened once."""

    def __init__(self, queue: PlaybackQueue, device: int | str | None) -> None:
        import sounddevice as sd

        self.queue = queue
        self._underflows = 0
        try:
            self._stream = sd.OutputStream(
                samplerate=queue.sample_rate,
                blocksize=queue.sample_rate * BLOCK_MS // 1000,
                device=device,
                channels=1,
                dtype="int16",
                callback=self._callback,
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise AudioUnavailable(
                f"the audio output {device or '(default)'} cannot be opened (PortAudio: {exc})"
            ) from None
        self.latency_s = float(self._stream.latency)
        queue.output_latency_s = self.latency_s

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self.queue.read_into(outdata[:, 0])

    def start(self) -> None:
        self._stream.start()

    def close(self) -> None:
        self._stream.close()


def output_sample_rate(device: int | str | None) -> int:
    """The device's default rate; AudioUnavailable when there is no output device at all."""
    try:
        import sounddevice as sd
    except OSError as exc:  # libportaudio2 missing
        raise AudioUnavailable(
            f"PortAudio is not installed: `apt-get install libportaudio2` ({exc})"
        ) from None
    try:
        info = sd.query_devices(device, "output")
    except (sd.PortAudioError, ValueError) as exc:
        what = "no audio output device found" if device is None else f"no audio output {device!r}"
        raise AudioUnavailable(f"{what} (PortAudio: {exc})") from None
    return int(info["default_samplerate"])


def list_output_devices() -> list[dict[str, Any]]:
    """The output devices PortAudio sees (voicechat.audio.devices)."""
    return list_devices("output")


class AudioPlayer:
    """Decode, resample and queue WAV chunks; play them through one output for its lifetime.

    `device`: a sounddevice device (index or name), None for the default, or "null" for the paced
    null sink. `sample_rate`: the output rate (default: the device's own).
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sample_rate: int | None = None,
        tap: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.device = device
        self.is_null = device == "null"
        rate = sample_rate or (48000 if self.is_null else output_sample_rate(device))
        self.queue = PlaybackQueue(rate, tap=tap)
        self._resampler: soxr.ResampleStream | None = None
        self._source_rate: int | None = None
        self._output: Output = (
            NullOutput(self.queue) if self.is_null else DeviceOutput(self.queue, device)
        )
        self._lock = threading.Lock()  # the resampler state is used from the caller's thread

    @property
    def sample_rate(self) -> int:
        return self.queue.sample_rate

    @property
    def stats(self) -> PlaybackStats:
        return self.queue.stats

    @property
    def now_playing(self) -> Hashable | None:
        return self.queue.now_playing

    @property
    def muted(self) -> bool:
        return self.queue.muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self.queue.muted = value

    def __enter__(self) -> AudioPlayer:
        self._output.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._output.close()

    def enqueue_wav(self, wav: bytes, label: Hashable | None = None) -> None:
        """Queue one WAV chunk (raises WavError if it is not 16-bit mono)."""
        pcm, rate = decode_wav(wav)
        self.enqueue_pcm(np.frombuffer(pcm, dtype="<i2"), rate, label)

    def enqueue_pcm(self, samples: np.ndarray, rate: int, label: Hashable | None = None) -> None:
        with self._lock:
            if rate == self.sample_rate:
                self._end_resampler()
                self.queue.push(samples.astype(np.int16, copy=False), label)
                return
            if rate != self._source_rate:
                self._end_resampler()
                self._resampler = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="int16")
                self._source_rate = rate
            assert self._resampler is not None
            self.queue.push(self._resampler.resample_chunk(samples.astype(np.int16)), label)

    def _end_resampler(self) -> None:
        """Play what the resampler still holds (its filter delay) and forget it."""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            self.queue.push(tail)
        self._resampler = None
        self._source_rate = None

    def finish(self) -> None:
        """The answer is complete: play out everything, then silence is not an underrun."""
        with self._lock:
            self._end_resampler()
        self.queue.finish()

    def pause(self) -> None:
        """Hold playback exactly where it is (`response.audio.paused`); chunks keep queueing."""
        self.queue.pause()

    def resume(self) -> None:
        """Play on from where `pause()` held it (`response.audio.resumed`)."""
        self.queue.resume()

    @property
    def paused(self) -> bool:
        return self.queue.paused

    def flush(self) -> None:
        """Stop what plays now with a short fade (Esc, barge-in); also ends a pause."""
        with self._lock:
            self._resampler = None
            self._source_rate = None
            self.queue.flush()

    async def wait_drained(self) -> None:
        """Until everything queued has been handed to the device (after `finish()`)."""
        while not await asyncio.to_thread(self.queue.wait_drained, 0.5):
            pass
        await asyncio.sleep(self._output.latency_s)  # the device's own buffer plays out

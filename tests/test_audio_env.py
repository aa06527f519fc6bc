"""The headless audio outputs really play: ALSA null (fast) and a PulseAudio null sink (paced)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .audio_env import SINK_RATE, MonitorRecording, alsa_pcm_type
from .conftest import WAIT_S

BLOCK = 480  # 10 ms at 48 kHz


def _tone(frames: int, rate: int = SINK_RATE) -> np.ndarray:
    """A 440 Hz sine at half scale, (frames, 1) float32: a known, non-silent signal."""
    t = np.arange(frames) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(-1, 1)


class _Feeder:
    """An OutputStream callback that plays `signal` block by block, then stops the stream."""

    def __init__(self, signal: np.ndarray) -> None:
        self.signal = signal
        self.position = 0
        self.block_sizes: list[int] = []
        self.statuses: list[str] = []
        self.done = threading.Event()  # set by the stream's finished_callback

    def callback(self, outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        import sounddevice as sd

        self.block_sizes.append(frames)
        if status:
            self.statuses.append(str(status))
        chunk = self.signal[self.position : self.position + frames]
        outdata[: len(chunk)] = chunk
        outdata[len(chunk) :] = 0
        self.position += len(chunk)
        if self.position >= len(self.signal):
            raise sd.CallbackStop

    def play(self, device: str, blocksize: int = BLOCK) -> dict[str, Any]:
        """Play the whole signal; return what the stream reported while open."""
        import sounddevice as sd

        with sd.OutputStream(
            device=device,
            samplerate=SINK_RATE,
            channels=1,
            dtype="float32",
            blocksize=blocksize,
            callback=self.callback,
            finished_callback=self.done.set,
        ) as stream:
            assert self.done.wait(WAIT_S), f"stream on {device!r} never finished"
            return {"samplerate": stream.samplerate, "latency": stream.latency}


def test_devices_reach_the_intended_alsa_plugins(
    null_audio_device: str, paced_audio_device: str
) -> None:
    import sounddevice as sd

    names = {d["name"] for d in sd.query_devices()}
    assert {null_audio_device, paced_audio_device} <= names
    assert alsa_pcm_type(null_audio_device) == "NULL"
    assert alsa_pcm_type(paced_audio_device) == "IOPLUG"  # the pulse plugin


def test_null_device_consumes_every_frame_given(null_audio_device: str) -> None:
    signal = _tone(200 * BLOCK)  # 2 s of audio, consumed without waiting for a clock
    feeder = _Feeder(signal)
    played = feeder.play(null_audio_device)
    assert feeder.position == len(signal)
    assert feeder.block_sizes == [BLOCK] * 200
    assert feeder.statuses == []
    assert played["samplerate"] == SINK_RATE


def test_paced_device_plays_through_pulseaudio(
    paced_audio_device: str, paced_audio_monitor: Callable[..., MonitorRecording]
) -> None:
    signal = _tone(SINK_RATE // 2)  # 0.5 s: takes about that long, which is not asserted
    feeder = _Feeder(signal)
    with paced_audio_monitor() as recording:
        played = feeder.play(paced_audio_device)
    assert feeder.position == len(signal)
    assert set(feeder.block_sizes) == {BLOCK}
    assert played["samplerate"] == SINK_RATE
    assert played["latency"] > 0
    heard = recording.samples()
    assert len(heard) > 0
    assert np.abs(heard).max() > 0.1  # the tone came out of the sink, not silence

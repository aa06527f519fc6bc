"""Pytest fixtures for real PortAudio output without a sound card (see tests/audio_env.py).

`audio_env` sets the session up once: ALSA configuration, PulseAudio daemon, environment,
PortAudio re-initialised. The device fixtures skip only when a Debian package is missing;
a daemon that is installed but does not start fails the tests that need it. The daemon dies with
the test process, even a killed one that never reaches the teardown (tests/process_guard.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .audio_env import (
    NULL_DEVICE,
    PACED_DEVICE,
    SINK_RATE,
    MonitorRecording,
    PulseDaemon,
    alsa_pcm_type,
    portaudio_missing,
    pulse_missing,
    reinitialize_portaudio,
    start_pulse,
    write_alsa_config,
)

__all__ = [
    "AudioEnv",
    "audio_env",
    "null_audio_device",
    "paced_audio_device",
    "paced_audio_monitor",
]


@dataclass(frozen=True)
class AudioEnv:
    """What the session's audio set-up gave: per output, a device name or why there is none."""

    directory: Path
    null_device: str | None = None
    null_skip: str | None = None
    paced_device: str | None = None
    paced_skip: str | None = None  # a package is missing
    paced_error: str | None = None  # installed, but it did not work
    pulse_log: Path | None = None  # the daemon's log, to read when a paced test fails


def _check_device(name: str, alsa_type: str) -> None:
    """PortAudio lists `name` once, as an output, and ALSA routes it to the expected plugin."""
    import sounddevice as sd

    info = sd.query_devices(name, "output")  # raises if missing or ambiguous
    if info["name"] != name:
        raise RuntimeError(f"device {name!r} resolves to {info['name']!r}")
    found = alsa_pcm_type(name)
    if found != alsa_type:
        raise RuntimeError(f"ALSA pcm {name!r} is {found}, expected {alsa_type}")


@pytest.fixture(scope="session")
def audio_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AudioEnv]:
    """Set up both outputs for the whole session; undo the environment and stop the daemon."""
    directory = tmp_path_factory.mktemp("audio")
    null_skip = portaudio_missing()
    if null_skip:
        yield AudioEnv(directory, null_skip=null_skip, paced_skip=null_skip)
        return
    paced_skip = pulse_missing()
    paced_error: str | None = None
    daemon: PulseDaemon | None = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALSA_CONFIG_PATH", str(write_alsa_config(directory / "alsa")))
        try:
            if not paced_skip:
                try:
                    daemon = start_pulse(directory / "pulse")
                    for key, value in daemon.client_env.items():
                        patch.setenv(key, value)
                except (OSError, RuntimeError) as error:
                    paced_error = f"PulseAudio did not start: {error}"
            reinitialize_portaudio()
            _check_device(NULL_DEVICE, "NULL")
            if daemon is not None:
                try:
                    _check_device(PACED_DEVICE, "IOPLUG")
                except (OSError, RuntimeError, ValueError) as error:
                    paced_error = f"{error}\n--- pulseaudio log ---\n{daemon.log()}"
            yield AudioEnv(
                directory=directory,
                null_device=NULL_DEVICE,
                paced_device=None if paced_skip or paced_error else PACED_DEVICE,
                paced_skip=paced_skip,
                paced_error=paced_error,
                pulse_log=daemon.log_path if daemon else None,
            )
        finally:
            if daemon is not None:
                daemon.stop()


@pytest.fixture(scope="session")
def null_audio_device(audio_env: AudioEnv) -> str:
    """A PortAudio output name (ALSA null plugin) that consumes audio as fast as it is given."""
    if audio_env.null_device is None:
        pytest.skip(audio_env.null_skip or "no null audio device")
    return audio_env.null_device


@pytest.fixture(scope="session")
def paced_audio_device(audio_env: AudioEnv) -> str:
    """A PortAudio output name (PulseAudio null sink) that consumes audio in real time."""
    if audio_env.paced_skip:
        pytest.skip(audio_env.paced_skip)
    if audio_env.paced_device is None:
        pytest.fail(audio_env.paced_error or "no paced audio device")
    return audio_env.paced_device


@pytest.fixture
def paced_audio_monitor(paced_audio_device: str) -> Callable[..., MonitorRecording]:
    """A factory: `with paced_audio_monitor() as rec: ...` records what the paced device plays.

    Arguments: samplerate (default SINK_RATE), channels (default 1).
    """

    def record(samplerate: int = SINK_RATE, channels: int = 1) -> MonitorRecording:
        return MonitorRecording(samplerate=samplerate, channels=channels)

    return record

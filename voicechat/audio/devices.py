"""The audio devices PortAudio sees, for `--list-devices` and `voicechat doctor`."""

from __future__ import annotations

from typing import Any, Literal


def list_devices(direction: Literal["input", "output"]) -> list[dict[str, Any]]:
    """Index, name, host API, channels, default rate and whether it is the default device.
    Raises OSError when PortAudio (libportaudio2) is not installed."""
    import sounddevice as sd

    channels = f"max_{direction}_channels"
    default = sd.default.device[0 if direction == "input" else 1]
    apis = sd.query_hostapis()
    return [
        {
            "index": index,
            "name": info["name"],
            "hostapi": apis[info["hostapi"]]["name"],
            "channels": info[channels],
            "sample_rate": int(info["default_samplerate"]),
            "default": index == default,
        }
        for index, info in enumerate(sd.query_devices())
        if info[channels] > 0
    ]


def describe(device: dict[str, Any]) -> str:
    """One line of `--list-devices`: `*   3  name  (ALSA, 2 ch, 48000 Hz)`."""
    mark = "*" if device["default"] else " "
    return (
        f"{mark} {device['index']:>3}  {device['name']}  ({device['hostapi']}, "
        f"{device['channels']} ch, {device['sample_rate']} Hz)"
    )

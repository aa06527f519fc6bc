"""espeak-ng voices for the scripts the embedded Piper voice cannot speak (Korean, Japanese,
Chinese), from the library and data shipped in the PyPI package `espeakng-loader`.

`EspeakEngine` runs inside its own worker process (voicechat.workers): libespeak-ng keeps global
state, is not thread-safe, and is native code that can crash; there it serves one unit at a time.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: samples come back through the callback
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
# (voice, text) the self-check speaks: one voice of each script the router sends here.
SELF_CHECK = ("ko", "안녕하세요.")


class EspeakEngine:
    """Inside the espeak worker: the one libespeak-ng instance, any of its voices."""

    def __init__(self) -> None:
        import espeakng_loader

        self._pieces: list[bytes] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the library uses it
        self._lib: Any = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        rate = self._lib.espeak_Initialize(_SYNCHRONOUS, 0, data_parent.encode(), 0)
        if rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._lib.espeak_SetSynthCallback(self._callback)
        self.sample_rate = int(rate)

    def info(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate}

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._pieces.append(ctypes.string_at(wav, count * 2))
        return 0

    def speak(self, text: str, voice: str) -> bytes:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self._pieces = []
        data = text.encode()
        if self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None) != 0:
            raise RuntimeError("espeak_Synth failed")
        return b"".join(self._pieces)

    def self_check(self) -> None:
        if not self.speak(SELF_CHECK[1], SELF_CHECK[0]):
            raise RuntimeError("espeak-ng produced no audio for a test sentence")

    def run(
        self,
        request: dict[str, Any],
        emit: Callable[[dict[str, Any]], None],
        cancelled: Callable[[], bool],
    ) -> None:
        emit({"pcm": self.speak(request["text"], request["voice"]), "rate": self.sample_rate})

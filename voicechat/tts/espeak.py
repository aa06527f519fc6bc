"""espeak-ng voices for the scripts the embedded Piper voice cannot speak (Korean, Japanese,
Chinese), from the library and data shipped in the PyPI package `espeakng-loader`.

libespeak-ng keeps global state and is not thread-safe: one worker thread owns it, and every
synthesis runs there, one at a time.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from voicechat.tts.base import Pcm, TTSError

_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: samples come back through the callback
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakEngine:
    """The one espeak-ng library instance; `voice(name)` gives a TTSEngine for one voice."""

    def __init__(self) -> None:
        import espeakng_loader

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._pieces: list[bytes] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the library uses it
        self._lib: Any = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        self.sample_rate = int(self._executor.submit(self._init, data_parent.encode()).result())

    def _init(self, data_parent: bytes) -> int:
        rate = self._lib.espeak_Initialize(_SYNCHRONOUS, 0, data_parent, 0)
        if rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._lib.espeak_SetSynthCallback(self._callback)
        return int(rate)

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._pieces.append(ctypes.string_at(wav, count * 2))
        return 0

    def _speak(self, text: str, voice: str) -> bytes:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self._pieces = []
        data = text.encode()
        if self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None) != 0:
            raise RuntimeError("espeak_Synth failed")
        return b"".join(self._pieces)

    async def speak(self, text: str, voice: str) -> Pcm:
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self._executor, self._speak, text, voice)
        except RuntimeError as exc:
            raise TTSError(f"espeak-ng: {exc}") from exc
        return Pcm(data, self.sample_rate)

    def voice(self, name: str) -> EspeakVoice:
        return EspeakVoice(self, name)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class EspeakVoice:
    """One espeak-ng voice (e.g. "ko") behind the TTSEngine interface."""

    def __init__(self, engine: EspeakEngine, voice: str) -> None:
        self.engine = engine
        self.voice = voice
        self.name = f"espeak-ng:{voice}"

    async def synthesize(self, text: str) -> AsyncGenerator[Pcm, None]:
        yield await self.engine.speak(text, self.voice)

    async def aclose(self) -> None:
        self.engine.close()

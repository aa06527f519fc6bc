"""The real speech-input engines for tests: Silero VAD and Whisper tiny.en in worker processes.

`async with speech_input() as speech:` starts both (about 1.5 s) and stops them after; pass
`speech=speech` to conftest.running_server. A test module shares one pair through a
module-scoped fixture on a module-scoped event loop (see tests/test_speech_server.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np

from voicechat.client.connection import ChatConnection
from voicechat.speech import SpeechInput
from voicechat.speech.models import default_language
from voicechat.speech.stt import WhisperSTT
from voicechat.speech.vad import SileroVAD
from voicechat.workers.embedded import vad_worker, whisper_worker


@asynccontextmanager
async def speech_input(model: str = "tiny.en") -> AsyncIterator[SpeechInput]:
    language = default_language(model)
    vad, whisper = vad_worker(), whisper_worker(model, language)
    try:
        await asyncio.gather(vad.start(), whisper.start())
        yield SpeechInput(SileroVAD(vad), WhisperSTT(whisper, model), language)
    finally:
        await asyncio.gather(vad.aclose(), whisper.aclose())


FRAME_SAMPLES = 1600  # 100 ms per input_audio.append

# What a spoken turn looks like on the wire, up to its answer (server_vad mode).
VOICE_TURN = [
    "input_audio.speech_started",
    "input_audio.speech_stopped",
    "input_audio.committed",
    "input_audio.transcript",
    "response.created",
]


async def send_audio(connection: ChatConnection, samples: np.ndarray) -> None:
    """16 kHz samples as input_audio.append frames of 100 ms, as fast as the socket takes."""
    pcm = samples.astype("<i2").tobytes()
    for start in range(0, len(pcm), FRAME_SAMPLES * 2):
        await connection.append_audio(pcm[start : start + FRAME_SAMPLES * 2])

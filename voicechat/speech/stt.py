"""Speech-to-text back ends: the embedded Whisper worker, or an OpenAI-compatible server.

Both take one finished turn (PCM16 mono 16 kHz) and return its text. A failure is `STTError`;
the session reports it (`stt_failed`) and keeps listening. `concurrency` is how many requests
the server's scheduler (scheduler.py) keeps in flight to the engine at once.
"""

from __future__ import annotations

import io
import wave
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import httpx

from voicechat.protocol import INPUT_RATE
from voicechat.workers import Worker, WorkerError

RATE = INPUT_RATE


class STTError(Exception):
    """A turn could not be transcribed; the message is shown to the client."""


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None


class SpeechToText(Protocol):
    name: str
    concurrency: int  # requests in flight at once (the scheduler holds the rest)

    async def transcribe(self, pcm16: bytes, language: str | None) -> Transcript: ...

    async def aclose(self) -> None: ...


class WhisperSTT:
    """Whisper in its worker process (`voicechat/engines/whisper.py`)."""

    concurrency = 1  # the worker transcribes one turn at a time: more would wait in its pipe

    def __init__(self, worker: Worker, model: str) -> None:
        self.worker = worker
        self.name = f"whisper:{model}"

    async def transcribe(self, pcm16: bytes, language: str | None) -> Transcript:
        request: dict[str, object] = {"pcm": pcm16}
        if language:
            request["language"] = language
        try:
            async with aclosing(self.worker.stream(request)) as replies:
                async for reply in replies:
                    return Transcript(str(reply["text"]), reply.get("language"))
        except WorkerError as exc:
            raise STTError(str(exc)) from None
        raise STTError("the recognizer returned nothing")

    async def aclose(self) -> None:
        """The worker belongs to config.Backends, which closes it."""


def wav_bytes(pcm16: bytes, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16)
    return buffer.getvalue()


class OpenAISTT:
    """`POST {base_url}/audio/transcriptions` (multipart, a WAV file), as OpenAI, vLLM,
    LocalAI or faster-whisper-server answer it: `{"text": ...}`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        concurrency: int = 4,
    ) -> None:
        self.url = base_url.rstrip("/") + "/audio/transcriptions"
        self.concurrency = concurrency  # uploads at once; a GPU server takes several
        self.model = model
        self.name = f"openai:{model}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def transcribe(self, pcm16: bytes, language: str | None) -> Transcript:
        data = {"model": self.model, "response_format": "json"}
        if language:
            data["language"] = language
        files = {"file": ("turn.wav", wav_bytes(pcm16), "audio/wav")}
        try:
            response = await self._client.post(self.url, data=data, files=files)
        except httpx.TimeoutException:
            timeout = self._client.timeout.read
            raise STTError(
                f"transcription server at {self.url} did not answer within {timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise STTError(f"transcription server at {self.url}: {exc!r}") from None
        if response.status_code != 200:
            raise STTError(
                f"transcription server answered HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError):
            raise STTError(f"transcription server sent no text: {response.text[:200]!r}") from None
        if not isinstance(text, str):
            raise STTError("transcription server sent a 'text' that is not a string")
        return Transcript(text.strip(), language)

    async def aclose(self) -> None:
        await self._client.aclose()

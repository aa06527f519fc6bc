"""Shared test helpers: real servers on loopback, test doubles named as such."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver

from voicechat.audio.wav import decode_wav
from voicechat.client.connection import ChatConnection
from voicechat.llm import ChatBackend
from voicechat.llm.graph import build_chat_graph
from voicechat.llm.scripted import ScriptedChatModel, parse_script
from voicechat.server import VoiceChatServer
from voicechat.settings import PipelineSettings, ServerConfig
from voicechat.tts.base import Pcm, TTSEngine, TTSError
from voicechat.tts.tone import ToneTTS

from .audio_fixtures import (  # noqa: F401  (fixtures: pytest finds them by name here)
    audio_env,
    null_audio_device,
    paced_audio_device,
    paced_audio_monitor,
)

WAIT_S = 20.0  # upper bound for any single wait in a test: a hang fails instead of blocking CI
# Pipeline settings for a scripted answer that repeats a template or runs long on purpose, in a
# test about something else: the loop guard and the speech budget (voicechat/loop_guard.py)
# would end it early.
WHOLE_ANSWERS = {"loop_guard": False, "max_speech_s": 0}


def scripted_backend(items: list[Any], **kwargs: Any) -> ChatBackend:
    model = ScriptedChatModel(items=parse_script(items))
    graph = build_chat_graph(model, checkpointer=InMemorySaver(), **kwargs)
    return ChatBackend(graph=graph, name="scripted")


class GatedChatModel(ScriptedChatModel):
    """Test double: streams its script, then waits for `gate` before the final item."""

    gate: Any = None  # asyncio.Event

    async def _astream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):  # type: ignore[override]
        from langchain_core.messages import AIMessageChunk
        from langchain_core.outputs import ChatGenerationChunk

        for item in self.items[:-1]:
            yield ChatGenerationChunk(message=AIMessageChunk(content=item.text))
        await self.gate.wait()
        yield ChatGenerationChunk(message=AIMessageChunk(content=self.items[-1].text))


def gated_backend(items: list[str], gate: asyncio.Event) -> ChatBackend:
    model = GatedChatModel(items=parse_script(items), gate=gate)
    return ChatBackend(graph=build_chat_graph(model, checkpointer=InMemorySaver()), name="gated")


class FailingToneTTS(ToneTTS):
    """Test double: the tone voice, but any unit containing `marker` raises TTSError."""

    name = "failing-tone"

    def __init__(self, marker: str = "FAIL", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = marker

    async def synthesize(self, text: str):  # type: ignore[override]
        if self.marker in text:
            raise TTSError("synthetic failure")
        async for pcm in super().synthesize(text):
            yield pcm


class BlockingTTS:
    """Test double: yields one piece per unit, then blocks until cancelled; counts both."""

    name = "blocking"

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self._progress = asyncio.Condition()

    async def wait_started(self, count: int) -> None:
        async with asyncio.timeout(WAIT_S), self._progress:
            await self._progress.wait_for(lambda: self.started >= count)

    async def synthesize(self, text: str):
        self.started += 1
        async with self._progress:
            self._progress.notify_all()
        try:
            yield Pcm(b"\x01\x00" * 100, 16000)
            await asyncio.Event().wait()
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def aclose(self) -> None:
        return None


@asynccontextmanager
async def running_server(
    backend: ChatBackend, tts: TTSEngine | None = None, **config: Any
) -> AsyncIterator[VoiceChatServer]:
    pipeline = PipelineSettings(**config.pop("pipeline", {}))
    speech = config.pop("speech", None)  # a SpeechInput (tests/speech_server.py), or None
    workers = config.pop("workers", None)  # worker processes for /healthz, by name
    server = VoiceChatServer(
        backend,
        tts or ToneTTS(),
        ServerConfig(**{"port": 0, **config}, pipeline=pipeline),
        workers=workers,
        speech=speech,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


async def collect_answer(connection: ChatConnection, text: str) -> list[dict[str, Any]]:
    """Send `text`; return every event up to and including its response.done."""
    await connection.send_user_message(text)
    return await read_answer(connection)


async def read_answer(connection: ChatConnection) -> list[dict[str, Any]]:
    """Every event up to and including the next response.done."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        async for event in connection.events():
            events.append(event)
            if event["type"] == "response.done":
                return events
    raise AssertionError("unreachable")


async def read_until(connection: ChatConnection, kind: str) -> dict[str, Any]:
    """Read events until one of type `kind` arrives; return it."""
    async with asyncio.timeout(WAIT_S):
        while (event := await connection.next_event())["type"] != kind:
            pass
    return event


def audio_by_segment(events: list[dict[str, Any]]) -> dict[int, bytes]:
    """The decoded PCM of every segment, joined in arrival order."""
    pcm: dict[int, bytes] = {}
    for event in events:
        if event["type"] == "audio.chunk":
            data, _ = decode_wav(base64.b64decode(event["audio"]))
            pcm[event["segment"]] = pcm.get(event["segment"], b"") + data
    return pcm

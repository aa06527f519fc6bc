"""Spoken turns over `WS /v1/realtime` with the official `openai` SDK, heard by the real engines
in their worker processes (Silero VAD and Whisper tiny.en, tests/speech_server.py), and once the
embedded models end to end. Every server event is validated against the SDK's pydantic models
(tests/test_realtime.py's Recorder). The LLM is scripted and the voice the tone voice except in
the last test; the speech is Piper's, made in the test process and sent as the clients send a
microphone: PCM16 at 24 kHz in 100 ms appends.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from voicechat.settings import InputAudioSettings
from voicechat.speech import SpeechInput

from .conftest import WAIT_S, gated_backend, running_server, scripted_backend
from .speech_fixtures import pad, spoken_pcm
from .speech_server import speech_input
from .test_realtime import RESPONSE_ORDER, Recorder, collapse, pcm_of, realtime, user_item

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE = 24000
CHUNK_BYTES = RATE // 10 * 2  # 100 ms of PCM16
QUESTION = "What is the capital of France?"
ANSWER = [
    "The capital of France is Paris. ",
    "It is a large city on the river Seine, with many museums and old bridges. ",
    "Millions of people visit it every year.",
]
ROOMY = InputAudioSettings(burst_s=30.0)  # a test may send more than 5 s of audio at once
# A spoken turn, up to its answer (server VAD).
SPOKEN_TURN = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.done",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech() -> AsyncIterator[SpeechInput]:
    async with speech_input() as engines:
        yield engines


async def append(connection: Any, samples: np.ndarray) -> None:
    """24 kHz samples as input_audio_buffer.append events of 100 ms, as fast as they go."""
    pcm = samples.astype("<i2").tobytes()
    for start in range(0, len(pcm), CHUNK_BYTES):
        chunk = base64.b64encode(pcm[start : start + CHUNK_BYTES]).decode("ascii")
        await connection.input_audio_buffer.append(audio=chunk)


def of(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(e for e in events if e["type"] == kind)


async def until_all(rec: Recorder, *kinds: str) -> list[dict[str, Any]]:
    """Every event until one of each of `kinds` has come, in whatever order they come."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while not set(kinds) <= {e["type"] for e in events}:
            events.append(await rec.next())
    return events


async def test_a_spoken_turn_in_order_then_its_answer(speech: SpeechInput) -> None:
    question = pad(spoken_pcm(QUESTION, RATE), 1.0, 1.2, RATE)
    async with (
        running_server(scripted_backend(ANSWER), speech=speech, input_audio=ROOMY) as server,
        realtime(server) as (conn, rec),
    ):
        detection = {"type": "server_vad", "silence_duration_ms": 500}
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
        )
        updated = (await rec.until("session.updated"))[-1]["session"]
        assert updated["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
        await append(conn, question)
        events = await rec.until("response.done")
    kinds = [e["type"] for e in events]
    assert kinds[: len(SPOKEN_TURN)] == SPOKEN_TURN
    assert collapse(kinds[len(SPOKEN_TURN) :]) == RESPONSE_ORDER
    item_id = events[0]["item_id"]
    started, stopped, committed, added, transcribed, done = events[: len(SPOKEN_TURN)]
    assert stopped["item_id"] == committed["item_id"] == transcribed["item_id"] == item_id
    assert added["item"]["id"] == done["item"]["id"] == item_id
    assert added["item"]["role"] == "user" and added["item"]["content"][0]["type"] == "input_audio"
    # The audio clock: the speech begins after the second of silence sent before it.
    assert 900 <= started["audio_start_ms"] <= 1300
    assert stopped["audio_end_ms"] > started["audio_start_ms"] + 1000
    assert "capital of" in transcribed["transcript"].lower()  # (tiny.en: "France", "friends")
    assert transcribed["usage"]["type"] == "duration" and transcribed["usage"]["seconds"] > 1.0
    assert done["item"]["content"][0]["transcript"] == transcribed["transcript"]
    answer = events[len(SPOKEN_TURN) :]
    assert answer[-1]["response"]["status"] == "completed"
    assert np.abs(np.frombuffer(pcm_of(answer), "<i2")).max() > 1000


async def test_without_turn_detection_a_commit_stores_the_turn_and_waits(
    speech: SpeechInput,
) -> None:
    async with (
        running_server(scripted_backend(ANSWER), speech=speech, input_audio=ROOMY) as server,
        realtime(server) as (conn, rec),
    ):
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        updated = (await rec.until("session.updated"))[-1]["session"]
        assert updated["audio"]["input"]["turn_detection"] is None
        await append(conn, pad(spoken_pcm(QUESTION, RATE), 0.3, 0.3, RATE))
        await conn.input_audio_buffer.commit()
        turn = await rec.until("conversation.item.done")
        item_id = of(turn, "input_audio_buffer.committed")["item_id"]
        # The client answers when it wants: the first response is the one it asks for (had the
        # server answered by itself, that response would have come first, without the metadata,
        # and this request would be refused while it ran).
        await conn.response.create(response={"metadata": {"asked": "yes"}})
        answer = await rec.until("response.done")
        session = next(iter(server.sessions))
        state = await server.backend.graph.aget_state(
            {"configurable": {"thread_id": session.thread_id}}
        )
    kinds = [e["type"] for e in turn]
    assert "input_audio_buffer.speech_started" not in kinds
    assert kinds == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.done",
    ]
    transcript = of(turn, "conversation.item.input_audio_transcription.completed")["transcript"]
    assert "france" in transcript.lower()
    assert collapse([e["type"] for e in answer]) == RESPONSE_ORDER
    assert answer[0]["response"]["metadata"] == {"asked": "yes"}
    assert answer[-1]["response"]["status"] == "completed"
    stored = state.values["messages"]
    assert (stored[0].id, stored[0].content) == (item_id, transcript)  # answered from this turn
    assert len(stored) == 2


async def test_speech_over_an_answer_cancels_it_and_truncate_keeps_what_was_heard(
    speech: SpeechInput,
) -> None:
    """Barge-in as the clients do it: speech_started, then at once truncate the playing item
    to what was played (before that response's response.done has arrived)."""
    gate = asyncio.Event()  # the answer's last words wait for it: the answer stays in flight
    interruption = pad(spoken_pcm("Stop. Tell me about Germany instead.", RATE), 0.3, 1.2, RATE)
    async with (
        running_server(
            gated_backend([*ANSWER, " The end."], gate), speech=speech, input_audio=ROOMY
        ) as server,
        realtime(server) as (conn, rec),
    ):
        await conn.conversation.item.create(item=user_item("Tell me about Paris."))
        await conn.response.create()
        first = await rec.until("response.output_audio.delta")
        created = of(first, "response.created")["response"]["id"]
        item_id = of(first, "response.output_item.added")["item"]["id"]
        await append(conn, interruption)
        await rec.until("input_audio_buffer.speech_started")
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=10)
        await conn.conversation.item.retrieve(item_id=item_id)
        seen = await until_all(
            rec,
            "response.done",
            "conversation.item.truncated",
            "conversation.item.retrieved",
            "conversation.item.input_audio_transcription.completed",
        )
        gate.set()
        reply = await rec.until("response.done")
    done = of(seen, "response.done")["response"]
    assert done["id"] == created and done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    truncated = of(seen, "conversation.item.truncated")
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, 10)
    after = seen + reply
    ended = after.index(of(seen, "response.done"))
    assert not [e for e in after[ended:] if e.get("response_id") == created]  # nothing after
    assert "error" not in [e["type"] for e in after]
    # What the user heard of it (10 ms: its first unit) is the answer that stays.
    retrieved = of(seen, "conversation.item.retrieved")["item"]
    assert retrieved["content"][0]["transcript"] == ANSWER[0].strip()
    heard = of(seen, "conversation.item.input_audio_transcription.completed")["transcript"]
    assert "germany" in heard.lower()
    assert reply[-1]["response"]["status"] == "completed" and reply[-1]["response"]["id"] != created


async def test_the_embedded_models_answer_a_typed_question_with_speech() -> None:
    """The real SmolLM2 (llama worker) and Piper voice, as `voicechat serve` runs them."""
    from voicechat.config import open_backends
    from voicechat.settings import BackendOptions

    async with AsyncExitStack() as stack:
        backends = await open_backends(BackendOptions(max_tokens=48, stt="none"), stack)
        async with running_server(backends.chat, backends.tts) as server:
            async with realtime(server) as (conn, rec):
                await conn.conversation.item.create(item=user_item(QUESTION))
                await rec.until("conversation.item.done")
                await conn.response.create()
                answer: list[dict[str, Any]] = []
                async with asyncio.timeout(120):  # the local model on a slow machine, under load
                    while not answer or answer[-1]["type"] != "response.done":
                        answer.append(await rec.next())
            health = server.health()
    assert health["llm"].startswith("local:") and health["tts"] == "piper"
    assert collapse([e["type"] for e in answer]) == RESPONSE_ORDER
    done = answer[-1]["response"]
    assert done["status"] in ("completed", "incomplete")  # incomplete: cut at max_tokens
    transcript = done["output"][0]["content"][0]["transcript"]
    assert transcript.strip()
    samples = np.frombuffer(pcm_of(answer), "<i2")
    assert len(samples) > RATE // 2  # at least half a second of real speech, at 24 kHz
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 300

"""`WS /v1/realtime` driven by the official `openai` SDK's realtime client, against a real server
on loopback. Every server event is validated against the SDK's own pydantic models (what
openai-agents does with each event), and the order of events is the one the strict clients need
(../shared/REALTIME_API.md). The LLM is scripted and the voice the tone voice (fakes, so each
answer is known), except where a test says otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from voicechat.audio import g711

from .conftest import WAIT_S, BlockingTTS, running_server, scripted_backend

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
ANSWER = ["Hello there. ", "I am a scripted answer, ", "spoken by a tone."]
ANSWER_TEXT = "".join(ANSWER)
# A typed turn's answer, event by event (deltas collapsed), as LiveKit and openai-agents need it.
RESPONSE_ORDER = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio_transcript.delta",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


def collapse(types: list[str]) -> list[str]:
    """The event types in order, runs of deltas as one (deltas of audio and transcript
    alternate: each unit's transcript comes with its first audio)."""
    out: list[str] = []
    for kind in types:
        if kind.endswith(".delta") and any(kind == seen for seen in out[-2:]):
            continue
        out.append(kind)
    return out


class Recorder:
    """Reads raw events from the SDK's connection and validates each with the SDK's models."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.events: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        raw = await self.connection.recv_bytes()
        event = json.loads(raw)
        SERVER_EVENT.validate_python(event)  # raises if a strict client would drop it
        assert event["event_id"], event
        self.events.append(event)
        return event

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Every event up to and including the next of type `kind`."""
        start = len(self.events)
        async with asyncio.timeout(WAIT_S):
            while (await self.next())["type"] != kind:
                pass
        return self.events[start:]


@asynccontextmanager
async def realtime(server: Any, **connect: Any) -> AsyncIterator[tuple[Any, Recorder]]:
    client = AsyncOpenAI(api_key="sk-local", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    async with client.realtime.connect(model="gpt-realtime", **connect) as connection:
        recorder = Recorder(connection)
        created = await recorder.next()
        assert created["type"] == "session.created"
        yield connection, recorder
    await client.close()


def user_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    """A typed user message, as conversation.item.create carries it."""
    item: dict[str, Any] = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    if item_id is not None:
        item["id"] = item_id
    return item


def pcm_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )


async def test_session_created_says_24khz_pcm_and_the_model() -> None:
    async with running_server(scripted_backend(ANSWER)) as server, realtime(server) as (_, rec):
        session = rec.events[0]["session"]
        assert session["type"] == "realtime"
        assert session["model"] == "gpt-realtime"
        assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}


async def test_a_typed_turn_is_answered_with_raw_pcm_and_its_transcript() -> None:
    async with running_server(scripted_backend(ANSWER)) as server, realtime(server) as (conn, rec):
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        assert (await rec.until("session.updated"))[-1]["session"]["instructions"] == "Be brief."
        await conn.conversation.item.create(item=user_item("Say hello.", "item_question"))
        added = await rec.until("conversation.item.done")
        assert added[0]["type"] == "conversation.item.added"
        assert added[0]["item"]["id"] == "item_question"  # the client's id, echoed
        await conn.response.create(response={"metadata": {"client_event_id": "abc"}})
        answer = await rec.until("response.done")
        assert collapse([e["type"] for e in answer]) == RESPONSE_ORDER
        created, done = answer[0], answer[-1]
        assert created["response"]["metadata"] == {"client_event_id": "abc"}
        assert done["response"]["status"] == "completed"
        transcript = "".join(
            e["delta"] for e in answer if e["type"] == "response.output_audio_transcript.delta"
        )
        assert transcript.split() == ANSWER_TEXT.split()
        assert done["response"]["output"][0]["content"][0]["transcript"] == transcript
        pcm = pcm_of(answer)
        assert len(pcm) % 2 == 0
        samples = np.frombuffer(pcm, dtype="<i2")
        assert np.abs(samples).max() > 1000
        # The tone voice speaks at 22050 Hz, 60 ms a character: at 24 kHz the client gets
        # 24000 samples a second of it (a resampler may shift a few samples per unit).
        units = [
            e["delta"].strip()
            for e in answer
            if e["type"] == "response.output_audio_transcript.delta"
        ]
        expected = sum(int(24000 * max(200.0, 60.0 * len(unit)) / 1000) for unit in units)
        assert abs(len(samples) - expected) <= 8 * len(units)


async def test_an_item_alone_is_not_answered() -> None:
    async with running_server(scripted_backend(ANSWER)) as server, realtime(server) as (conn, rec):
        await conn.conversation.item.create(item=user_item("Hi"))
        await rec.until("conversation.item.done")
        await conn.conversation.item.retrieve(item_id=rec.events[-1]["item"]["id"])
        retrieved = (await rec.until("conversation.item.retrieved"))[-1]
        assert retrieved["item"]["content"][0]["text"] == "Hi"
        assert not any(e["type"].startswith("response.") for e in rec.events)
        assert server.responses_in_flight() == 0


async def test_text_only_responses_have_no_audio() -> None:
    async with running_server(scripted_backend(ANSWER)) as server, realtime(server) as (conn, rec):
        await conn.conversation.item.create(item=user_item("Hi"))
        await conn.response.create(response={"output_modalities": ["text"]})
        answer = await rec.until("response.done")
        kinds = {e["type"] for e in answer}
        assert "response.output_audio.delta" not in kinds
        text = "".join(e["delta"] for e in answer if e["type"] == "response.output_text.delta")
        assert text == ANSWER_TEXT
        assert answer[-1]["response"]["output_modalities"] == ["text"]


async def test_cancel_ends_the_response_and_nothing_of_it_follows() -> None:
    tts = BlockingTTS()  # each unit sends one piece, then blocks until cancelled
    async with (
        running_server(scripted_backend(ANSWER), tts) as server,
        realtime(server) as (conn, rec),
    ):
        await conn.conversation.item.create(item=user_item("Hi"))
        await conn.response.create()
        await rec.until("response.output_audio_transcript.delta")
        await conn.response.cancel()
        rest = await rec.until("response.done")
        assert rest[-1]["response"]["status"] == "cancelled"
        assert rest[-1]["response"]["status_details"]["reason"] == "client_cancelled"
        # Nothing of it after response.done, and a cancel with nothing in flight is quiet:
        await conn.response.cancel()
        await conn.conversation.item.retrieve(item_id=rest[-1]["response"]["output"][0]["id"])
        after = await rec.until("conversation.item.retrieved")
        assert [e["type"] for e in after] == ["conversation.item.retrieved"]
        assert tts.cancelled >= 1


async def test_a_second_response_create_while_one_runs_gets_the_tolerated_error() -> None:
    tts = BlockingTTS()
    async with (
        running_server(scripted_backend(ANSWER), tts) as server,
        realtime(server) as (conn, rec),
    ):
        await conn.conversation.item.create(item=user_item("Hi"))
        await conn.response.create()
        await rec.until("response.created")
        await conn.response.create()
        error = (await rec.until("error"))[-1]
        assert error["error"]["code"] == "conversation_already_has_active_response"
        await conn.response.cancel()
        assert (await rec.until("response.done"))[-1]["response"]["status"] == "cancelled"


async def test_truncate_in_flight_stops_the_answer_and_keeps_what_was_heard() -> None:
    tts = BlockingTTS()
    async with (
        running_server(scripted_backend(ANSWER), tts) as server,
        realtime(server) as (conn, rec),
    ):
        await conn.conversation.item.create(item=user_item("Hi"))
        await conn.response.create()
        first = await rec.until("response.output_audio_transcript.delta")
        item_id = next(e for e in first if e["type"] == "response.output_item.added")["item"]["id"]
        # As clients do right after speech_started: before the response's response.done.
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=1)
        rest = await rec.until("conversation.item.truncated")
        kinds = [e["type"] for e in rest]
        assert "response.done" in kinds
        assert (
            next(e for e in rest if e["type"] == "response.done")["response"]["status"]
            == "cancelled"
        )
        assert rest[-1]["audio_end_ms"] == 1 and rest[-1]["item_id"] == item_id
        await conn.conversation.item.retrieve(item_id=item_id)
        item = (await rec.until("conversation.item.retrieved"))[-1]["item"]
        assert item["content"][0]["transcript"] == "Hello there."  # the unit that had begun
        session = next(iter(server.sessions))
        await session.history_stored()
        state = await server.backend.graph.aget_state(
            {"configurable": {"thread_id": session.thread_id}}
        )
        assert state.values["messages"][-1].content == "Hello there."  # what was heard


async def test_delete_takes_an_item_out_of_the_history() -> None:
    async with running_server(scripted_backend(ANSWER)) as server, realtime(server) as (conn, rec):
        for text in ("First", "Second"):
            await conn.conversation.item.create(item=user_item(text, f"item_{text}"))
            await rec.until("conversation.item.done")
        await conn.conversation.item.delete(item_id="item_First")
        await rec.until("conversation.item.deleted")
        session = next(iter(server.sessions))
        state = await server.backend.graph.aget_state(
            {"configurable": {"thread_id": session.thread_id}}
        )
        assert [m.content for m in state.values["messages"]] == ["Second"]
        await conn.conversation.item.retrieve(item_id="item_First")
        assert (await rec.until("error"))[-1]["error"]["code"] == "item_not_found"


async def test_g711_output_is_8khz_mu_law() -> None:
    async with running_server(scripted_backend(ANSWER)) as server, realtime(server) as (conn, rec):
        await conn.session.update(
            session={"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}}
        )
        updated = (await rec.until("session.updated"))[-1]
        assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        await conn.conversation.item.create(item=user_item("Hi"))
        await conn.response.create()
        answer = await rec.until("response.done")
        ulaw = pcm_of(answer)
        pcm = np.frombuffer(g711.ulaw_to_pcm16(ulaw), dtype="<i2")
        assert np.abs(pcm).max() > 1000  # a tone, not silence, survived the 8 kHz mu-law trip


async def test_bad_events_get_an_error_and_the_session_goes_on() -> None:
    async with running_server(scripted_backend(ANSWER)) as server, realtime(server) as (conn, rec):
        await conn.send({"type": "no.such.event"})  # type: ignore[arg-type]
        assert (await rec.until("error"))[-1]["error"]["code"] == "invalid_event"
        await conn.input_audio_buffer.append(audio="not base64!")
        assert (await rec.until("error"))[-1]["error"]["param"] == "audio"
        await conn.conversation.item.create(item=user_item("Hi"))
        await conn.response.create()
        assert (await rec.until("response.done"))[-1]["response"]["status"] == "completed"


async def test_token_by_bearer_header_and_by_browser_subprotocol() -> None:
    import websockets

    token = "s3cret-token"
    async with running_server(scripted_backend(ANSWER), token=token) as server:
        client = AsyncOpenAI(api_key=token, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
        async with client.realtime.connect(model="m") as conn:
            assert (await conn.recv()).type == "session.created"
        await client.close()
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=m"
        subprotocols = ["realtime", f"openai-insecure-api-key.{token}"]
        async with websockets.connect(url, subprotocols=subprotocols) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"
        async with websockets.connect(url) as ws:  # no token: closed at once, 1008
            with pytest.raises(websockets.ConnectionClosed) as refused:
                await ws.recv()
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 1008


async def test_a_failing_command_is_an_error_and_the_session_goes_on(monkeypatch: Any) -> None:
    from voicechat.session import Session

    async def broken(self: Any, message: Any) -> None:
        raise RuntimeError("the checkpointer is down")

    async with running_server(scripted_backend(ANSWER)) as server, realtime(server) as (conn, rec):
        with monkeypatch.context() as patch:
            patch.setattr(Session, "add_message", broken)
            await conn.conversation.item.create(item=user_item("Hi"))
            error = (await rec.until("error"))[-1]["error"]
        assert error["type"] == "server_error" and "checkpointer is down" in error["message"]
        await conn.conversation.item.create(item=user_item("Hi"))
        await conn.response.create()
        assert (await rec.until("response.done"))[-1]["response"]["status"] == "completed"

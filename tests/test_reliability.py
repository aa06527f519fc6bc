"""Limits, auth, faults and isolation against a real server on loopback (issue: reliability).

Nothing here measures time: waits are bounded by WAIT_S and poll a condition.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.checkpoint.memory import InMemorySaver
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import (
    WAIT_S,
    WHOLE_ANSWERS,
    BlockingTTS,
    audio_by_segment,
    collect_answer,
    gated_backend,
    read_until,
    running_server,
    scripted_backend,
)
from tests.fish_double import FishDouble, pcm_for_text, refused_url
from voicechat.client.ask import ask
from voicechat.client.connection import ChatConnection, ServerUnavailable
from voicechat.llm import ChatBackend
from voicechat.llm.graph import build_chat_graph
from voicechat.server import VoiceChatServer, presented_token
from voicechat.settings import exposure_problem
from voicechat.tts.base import TTSError
from voicechat.tts.fish import FishSpeechTTS
from voicechat.tts.tone import ToneTTS

TOKEN = "s3cret-token-for-tests-0123456789"
SCRIPT = ["The moon is bright.", " Owls hunt at night.", " Then the sun comes up."]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` on the event loop until it holds; fail after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - server state has no event to await
            await asyncio.sleep(0.01)
    assert condition(), what


class EchoChatModel(BaseChatModel):
    """Test double: answers "You said <the user's words>. Noted." one word per delta."""

    @property
    def _llm_type(self) -> str:
        return "echo-test-double"

    def _reply(self, messages: list[BaseMessage]) -> str:
        return f"You said {messages[-1].content}. Noted."

    def _generate(self, messages: list[BaseMessage], *args: Any, **kw: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._reply(messages)))])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        words = self._reply(messages).split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(0)  # let other sessions run between tokens
            yield ChatGenerationChunk(message=AIMessageChunk(content=(" " if index else "") + word))


def echo_backend() -> ChatBackend:
    graph = build_chat_graph(EchoChatModel(), checkpointer=InMemorySaver())
    return ChatBackend(graph=graph, name="echo")


LONG_ANSWER = "".join(f" This is sentence number {i} of a very long answer." for i in range(300))


class TalkForeverChatModel(EchoChatModel):
    """Test double: "talk forever" gets a 300-sentence answer; anything else, the echo."""

    def _reply(self, messages: list[BaseMessage]) -> str:
        if "forever" in str(messages[-1].content):
            return LONG_ANSWER.strip()
        return super()._reply(messages)


async def healthz(server: VoiceChatServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/healthz")
    return response.json()


# --- malformed input -------------------------------------------------------------------------


def junk_frames(count: int, seed: int = 7) -> list[str | bytes]:
    """Malformed, wrong-typed, binary and oversized frames, reproducibly random."""
    rng = random.Random(seed)
    makers: list[Callable[[], str | bytes]] = [
        lambda: "".join(rng.choice('{}[]",:ab1 \\') for _ in range(rng.randint(0, 40))),
        lambda: bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))),  # binary
        lambda: b"\xff\xfe\xfd" + bytes(rng.randrange(128, 256) for _ in range(8)),  # not UTF-8
        lambda: json.dumps(rng.choice([None, 1, 2.5, "x", [], [1, 2], True])),
        lambda: json.dumps({"type": rng.choice([None, 5, [], {}, "nope", "user.messages"])}),
        lambda: json.dumps({"type": "user.message", "text": rng.choice([None, 3, [], {}, "  "])}),
        lambda: json.dumps({"type": "user.message", "text": "x" * rng.randint(101, 5000)}),
        lambda: json.dumps(
            {"type": "user.message", "text": "hi", "id": rng.choice([1, "i" * 300])}
        ),
        lambda: json.dumps({"type": "session.resume", "session_id": rng.choice([None, "", 7])}),
        lambda: "[" * rng.randint(1000, 5000),  # deep nesting
    ]
    return [rng.choice(makers)() for _ in range(count)]


async def test_thousands_of_bad_frames_then_a_normal_conversation() -> None:
    frames = junk_frames(3000)
    limits = {"max_text_chars": 100, "messages_per_minute": 10**6, "message_burst": 10**6}
    async with running_server(scripted_backend(SCRIPT), **limits) as server:
        async with ChatConnection(server.url) as conn:
            for frame in frames:
                await conn.ws.send(frame)
            codes: dict[str, int] = {}
            async with asyncio.timeout(WAIT_S):
                for _ in frames:
                    event = await conn.next_event()
                    assert event["type"] == "error" and "response_id" not in event
                    codes[event["code"]] = codes.get(event["code"], 0) + 1
            assert sum(codes.values()) == len(frames)  # one error per bad frame, nothing else
            assert set(codes) <= {"bad_json", "bad_message", "unknown_type", "too_large"}
            events = await collect_answer(conn, "after all that, the moon?")
            assert events[-1]["status"] == "completed"
            assert events[-1]["text"] == "".join(SCRIPT)
        assert (await healthz(server))["responses_in_flight"] == 0


async def test_a_text_frame_that_is_not_utf8_closes_1007_and_the_server_goes_on() -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        async with connect(server.url) as ws:
            await ws.recv()
            await ws.send(b"\xff\xfe not utf-8", text=True)
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(WAIT_S):
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        async with ChatConnection(server.url) as conn:
            assert (await collect_answer(conn, "hello"))[-1]["status"] == "completed"


async def test_too_many_messages_are_rate_limited_and_the_connection_stays() -> None:
    async with running_server(
        scripted_backend(SCRIPT), messages_per_minute=1, message_burst=3
    ) as server:
        async with ChatConnection(server.url) as conn:
            for _ in range(6):
                await conn.ws.send("not json")
            async with asyncio.timeout(WAIT_S):
                codes = [(await conn.next_event())["code"] for _ in range(6)]
            assert codes == ["bad_json"] * 3 + ["rate_limited"] * 3
            assert conn.ws.state.name == "OPEN"


async def test_over_max_connections_the_handshake_gets_503() -> None:
    async with running_server(scripted_backend(SCRIPT), max_connections=2) as server:
        async with ChatConnection(server.url), ChatConnection(server.url) as second:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url):
                    pass
            assert refused.value.response.status_code == 503
            await second.ws.close()
            await until(lambda: len(server.sessions) == 1, "the second session to end")
            async with ChatConnection(server.url) as third:
                assert third.session["type"] == "session.created"
        assert server.refused["full"] == 1


async def test_an_idle_connection_is_closed_with_a_reason() -> None:
    async with running_server(scripted_backend(SCRIPT), idle_timeout_s=0.2) as server:
        async with ChatConnection(server.url) as conn:
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(WAIT_S):
                    await conn.ws.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle timeout")
        assert server.refused["idle"] == 1


async def test_an_answer_stops_at_the_token_limit() -> None:
    words = [f" word{i}." for i in range(50)]
    async with running_server(scripted_backend(words), pipeline={"max_answer_tokens": 5}) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "talk a lot")
            config = {"configurable": {"thread_id": conn.session["session_id"]}}
            state = await server.backend.graph.aget_state(config)
    done = events[-1]
    assert done["status"] == "completed" and done["truncated"] == "max_tokens"
    assert done["text"] == "".join(words[:5])
    assert state.values["messages"][-1].content == done["text"]  # the history has what was said


async def test_an_answer_stops_at_the_audio_limit() -> None:
    sentences = [f" Sentence number {i} is here." for i in range(20)]
    limits = {**WHOLE_ANSWERS, "max_answer_audio_s": 3.0}  # the audio limit, not the guard's
    async with running_server(scripted_backend(sentences), ToneTTS(), pipeline=limits) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "talk a lot")
    done = events[-1]
    assert done["truncated"] == "max_audio"
    assert 0 < done["metrics"]["audio_ms"] <= 3000
    sent = sum(e["samples"] for e in events if e["type"] == "audio.chunk")
    assert sent / 22050 <= 3.0


# --- auth and origins --------------------------------------------------------------------------


async def test_without_the_token_the_connection_is_closed_1008() -> None:
    async with running_server(scripted_backend(SCRIPT), token=TOKEN) as server:
        for headers in (None, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
            async with connect(server.url, additional_headers=headers) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    async with asyncio.timeout(WAIT_S):
                        await ws.recv()  # no session.created: closed at once
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                    1008,
                    "authentication required",
                )
        assert server.refused["auth"] == 3
        with pytest.raises(ServerUnavailable, match="authentication required"):
            async with ChatConnection(server.url):
                pass


async def test_the_token_is_accepted_as_bearer_or_as_a_browser_subprotocol() -> None:
    async with running_server(scripted_backend(SCRIPT), token=TOKEN) as server:
        async with ChatConnection(server.url, token=TOKEN) as conn:
            assert (await collect_answer(conn, "hi"))[-1]["status"] == "completed"
        offered = ["voicechat.v1", f"voicechat.token.{TOKEN}"]
        async with connect(server.url, subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "voicechat.v1"  # the token is never echoed back
            assert TOKEN not in str(ws.response.headers)
            assert json.loads(await ws.recv())["type"] == "session.created"
        out: list[str] = []

        class Sink:
            def write(self, text: str) -> None:
                out.append(text)

            def flush(self) -> None:
                pass

        code = await ask("hi", server_url=server.url, token=TOKEN, stdout=Sink(), stderr=Sink())  # type: ignore[arg-type]
        assert code == 0 and "The moon is bright." in "".join(out)


async def test_tokens_and_messages_stay_out_of_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    secret_text = "my bank PIN is 4321"
    async with running_server(scripted_backend(SCRIPT), token=TOKEN) as server:
        async with connect(server.url, additional_headers={"Authorization": "Bearer nope-nope"}):
            pass
        async with ChatConnection(server.url, token=TOKEN) as conn:
            await collect_answer(conn, secret_text)
    logged = caplog.text
    assert "refused" in logged  # the refusal itself is logged ...
    assert TOKEN not in logged and "nope-nope" not in logged and secret_text not in logged


async def test_browser_origins_must_be_allowed() -> None:
    allowed = "https://chat.example.org"
    async with running_server(scripted_backend(SCRIPT), allow_origins=(allowed,)) as server:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, origin="https://evil.example.com"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with connect(server.url, origin=allowed) as ws:  # type: ignore[arg-type]
            assert json.loads(await ws.recv())["type"] == "session.created"
        async with ChatConnection(server.url) as conn:  # no Origin: not a browser
            assert conn.session["type"] == "session.created"


def test_a_public_address_needs_a_token_or_insecure() -> None:
    assert exposure_problem("127.0.0.1", None, False) is None
    assert exposure_problem("::1", None, False) is None
    assert "without a token" in (exposure_problem("0.0.0.0", None, False) or "")
    assert exposure_problem("0.0.0.0", TOKEN, False) is None
    assert exposure_problem("0.0.0.0", None, True) is None


def test_the_token_is_read_from_bearer_or_subprotocol_only() -> None:
    from websockets.datastructures import Headers

    assert presented_token(Headers({"Authorization": "Bearer abc"})) == "abc"
    assert presented_token(Headers({"Authorization": "Basic abc"})) is None
    assert (
        presented_token(Headers({"Sec-WebSocket-Protocol": "voicechat.v1, voicechat.token.xyz"}))
        == "xyz"
    )
    assert presented_token(Headers()) is None


# --- faults, disconnects, isolation ------------------------------------------------------------


async def test_100_disconnects_mid_answer_leave_nothing_in_flight() -> None:
    gate = asyncio.Event()  # never set: every answer is still in flight when its client leaves
    tts = BlockingTTS()
    backend = gated_backend(["One here.", " Two here.", " never"], gate)
    async with running_server(backend, tts) as server:
        before = asyncio.all_tasks()
        for index in range(100):
            conn = ChatConnection(server.url)
            await conn.__aenter__()
            await conn.send_user_message(f"question {index}")
            await read_until(conn, "audio.chunk")
            if index % 2:
                await conn.ws.close()  # a polite goodbye
            else:
                conn.ws.transport.abort()  # the network just goes away
        await until(lambda: not server.sessions, "every session to end")
        health = await healthz(server)
        assert (health["sessions"], health["responses_in_flight"]) == (0, 0)
        assert tts.cancelled == tts.started  # every TTS request ended
        await until(
            lambda: not [t for t in asyncio.all_tasks() - before if not t.done()],
            "every task of those sessions to end",
        )


async def test_200_clients_5_turns_each_with_contiguous_seq_and_no_cross_talk() -> None:
    async def client(number: int) -> int:
        async with ChatConnection(server.url) as conn:
            for turn in range(5):
                words = f"client {number} turn {turn}"
                events = await collect_answer(conn, words)
                response_id = events[0]["response_id"]
                assert all(event.get("response_id") == response_id for event in events)
                text = "".join(e["text"] for e in events if e["type"] == "text.delta")
                assert text == f"You said {words}. Noted." == events[-1]["text"]
                seqs = [e["seq"] for e in events if e["type"] == "audio.chunk"]
                assert seqs == list(range(len(seqs))) and seqs
                spoken = [e["text"] for e in events if e["type"] == "audio.chunk" and e["text"]]
                assert " ".join(spoken) == text
        return 5

    tts = ToneTTS(ms_per_char=5)  # small audio: this test is about isolation, not sound
    async with running_server(echo_backend(), tts) as server:
        turns = await asyncio.gather(*(client(number) for number in range(200)))
        assert sum(turns) == 1000
        await until(lambda: not server.sessions, "every session to end")
        assert server.responses_in_flight() == 0


async def test_a_slow_reader_is_disconnected_and_does_not_stall_others() -> None:
    limits = {"outbound_frames": 4, "slow_client_timeout_s": 2.0}
    graph = build_chat_graph(TalkForeverChatModel(), checkpointer=InMemorySaver())
    backend = ChatBackend(graph=graph, name="talk-forever")
    async with running_server(backend, ToneTTS(), pipeline=WHOLE_ANSWERS, **limits) as server:
        async with connect(server.url, max_queue=1) as slow:  # reads one frame, then stops
            await slow.send(json.dumps({"type": "user.message", "text": "talk forever"}))
            await until(
                lambda: any(s._outbound.full() for s in server.sessions), "the slow queue to fill"
            )
            (stalled,) = server.sessions
            async with ChatConnection(server.url) as other:  # meanwhile, others are served
                answer = await collect_answer(other, "quick one?")
                # ... while the slow client still holds its session: it has not been dropped yet,
                # so nothing the other client got waited for that.
                assert server.refused["slow"] == 0 and stalled in server.sessions
                assert stalled._outbound.full()
                assert answer[-1]["status"] == "completed"
                assert answer[-1]["text"] == "You said quick one?. Noted."
                assert [e["seq"] for e in answer if e["type"] == "audio.chunk"]
            await until(lambda: server.refused["slow"] == 1, "the slow client to be dropped")
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(WAIT_S):
                    while True:
                        await slow.recv()  # catch up: the frames, then the close frame
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert "too slow" in closed.value.rcvd.reason
        await until(lambda: not server.sessions, "the slow session to end")
        assert server.responses_in_flight() == 0


FAULT_SCRIPT = ["The moon is bright.", " Owls hunt at night.", " Then", " the sun comes up."]
FAULT_UNITS = ["The moon is bright.", "Owls hunt at night.", "Then the sun comes up."]
FAULT_REASONS = {
    "500": "HTTP 500",
    "garbage": "unusable audio",
    "truncated": "RemoteProtocolError",
    "slow": "Timeout",
    "refused": "ConnectError",
}


@pytest.mark.parametrize("fault", ["500", "garbage", "truncated", "slow", "refused"])
async def test_each_fish_fault_loses_only_its_units_and_the_answer_goes_on(fault: str) -> None:
    """One unit of three meets the fault; the two others are spoken whole; one error is sent.

    The double fails only the unit with "Owls" in it (the middle one); for "refused" it goes
    down once the first two units are spoken, so only the last unit finds nobody listening.
    """
    gate = asyncio.Event()  # the LLM's last delta waits for it
    with FishDouble() as fish:
        timeout, streaming = 30.0, True
        fish.fault_marker, lost = "Owls", 1
        if fault == "500":
            fish.fail_status = 500
        elif fault == "garbage":
            fish.garbage, streaming = True, False
        elif fault == "truncated":
            fish.truncate_after_bytes = 1000
        elif fault == "slow":
            fish.first_byte_delay_s, timeout = WAIT_S, 0.5
        elif fault == "refused":
            lost = 2
        if fault != "refused":
            gate.set()
        tts = FishSpeechTTS(fish.url, timeout_s=timeout, streaming=streaming)
        async with running_server(gated_backend(FAULT_SCRIPT, gate), tts) as server:
            async with ChatConnection(server.url) as conn:
                await conn.send_user_message("go")
                events: list[dict[str, Any]] = []

                async def read_while(condition: Callable[[], bool]) -> None:
                    async with asyncio.timeout(WAIT_S):
                        while condition():
                            events.append(await conn.next_event())

                if fault == "refused":  # units 0 and 1 are spoken, then Fish Speech goes away
                    spoken = len(pcm_for_text(FAULT_UNITS[1]))
                    await read_while(lambda: len(audio_by_segment(events).get(1, b"")) < spoken)
                    # All its audio came, but the double may still be ending the response.
                    await until(lambda: fish.in_flight() == 0, "Fish Speech to end unit 1")
                    fish.stop()
                    gate.set()
                await read_while(lambda: not events or events[-1]["type"] != "response.done")
        await tts.aclose()

    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["tts_failed"]  # one unit lost, one error
    assert errors[0]["message"].startswith(f"speech unit {lost} lost")
    assert FAULT_REASONS[fault] in errors[0]["message"]
    kept = [index for index in range(len(FAULT_UNITS)) if index != lost]
    audio = audio_by_segment(events)
    assert sorted(audio) == kept
    assert all(audio[index] == pcm_for_text(FAULT_UNITS[index]) for index in kept)  # whole
    chunks = [e for e in events if e["type"] == "audio.chunk"]
    assert [c["text"] for c in chunks if c["text"]] == [FAULT_UNITS[i] for i in kept]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    asked = sorted(r.body["text"] for r in fish.requests if r.path == "/v1/tts")
    assert asked == sorted(FAULT_UNITS[: 2 if fault == "refused" else 3])  # no unit asked twice
    assert events[-1]["status"] == "completed"
    assert events[-1]["text"] == "".join(FAULT_SCRIPT)


async def test_a_failing_fish_server_is_rested_not_hammered() -> None:
    sentences = [f" Unit {i} is here." for i in range(12)]
    with FishDouble() as fish:
        fish.fail_status = 500
        tts = FishSpeechTTS(fish.url)
        whole = running_server(scripted_backend(sentences), tts, pipeline=WHOLE_ANSWERS)
        async with whole as server:
            async with ChatConnection(server.url) as conn:
                events = await collect_answer(conn, "go")
        errors = [e["message"] for e in events if e["type"] == "error"]
        assert len(errors) == 12  # every unit is reported ...
        # ... but after 3 failures no request reaches the server (one more may already be in
        # flight: two units synthesise at once).
        assert len(fish.requests) <= 3 + 1
        assert sum("resting" in message for message in errors) == 12 - len(fish.requests)


async def test_in_process_memory_keeps_only_the_most_recent_conversations() -> None:
    from voicechat.llm.memory import BoundedMemorySaver

    saver = BoundedMemorySaver(max_conversations=2)
    graph = build_chat_graph(EchoChatModel(), checkpointer=saver)
    async with running_server(ChatBackend(graph=graph, name="echo")) as server:
        ids = []
        for number in range(3):
            async with ChatConnection(server.url) as conn:
                await collect_answer(conn, f"conversation {number}")
                ids.append(conn.session["session_id"])
        assert saver.conversations == 2
        async with ChatConnection(server.url) as conn:
            await conn.send({"type": "session.resume", "session_id": ids[0]})
            assert (await read_until(conn, "error"))["code"] == "unknown_session"  # forgotten
            await conn.send({"type": "session.resume", "session_id": ids[2]})
            assert (await read_until(conn, "session.resumed"))["messages"] == 2  # kept


async def test_requests_in_flight_when_fish_goes_down_count_as_one_outage() -> None:
    tts = FishSpeechTTS(refused_url())

    async def one(text: str) -> None:
        with pytest.raises(TTSError):
            async for _ in tts.synthesize(text):
                pass

    try:
        await asyncio.gather(*(one(f"unit {i}") for i in range(8)))
        url = tts.urls[0]
        assert tts._failures[url] == 3  # the rest failed while it was already resting
    finally:
        await tts.aclose()

"""Protocol v1 over a real WebSocket on loopback: scripted LLM, tone TTS and test doubles."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voicechat.client.connection import ChatConnection, ConnectionLost
from voicechat.segmenter import Segmenter
from voicechat.tts.tone import ToneTTS, tone_pcm

from .conftest import (
    WAIT_S,
    WHOLE_ANSWERS,
    BlockingTTS,
    FailingToneTTS,
    audio_by_segment,
    collect_answer,
    gated_backend,
    read_until,
    running_server,
    scripted_backend,
)

SCRIPT = ["The moon", " is bright", " tonight, and", " the sky is clear.", " Look up", "! Bye."]
FULL_TEXT = "".join(SCRIPT)


def _of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


async def test_a_whole_answer_streams_text_then_ordered_sample_exact_audio() -> None:
    tts = ToneTTS(pieces=3)  # several pieces per unit, like a streaming TTS
    async with running_server(scripted_backend(SCRIPT), tts) as server:
        async with ChatConnection(server.url) as conn:
            assert conn.session["protocol"] == "voicechat.v1"
            assert (conn.session["llm"], conn.session["tts"]) == ("scripted", "tone")
            await conn.send_user_message("Tell me about the moon", message_id="m1")
            events: list[dict[str, Any]] = []
            async with asyncio.timeout(WAIT_S):
                async for event in conn.events():
                    events.append(event)
                    if event["type"] == "response.done":
                        break

    created, done = events[0], events[-1]
    assert created["type"] == "response.created" and created["in_reply_to"] == "m1"
    rid = created["response_id"]
    assert all(event["response_id"] == rid for event in events)
    assert "".join(e["text"] for e in _of_type(events, "text.delta")) == FULL_TEXT
    chunks = _of_type(events, "audio.chunk")
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    seg = Segmenter()
    expected_units = seg.feed(FULL_TEXT) + seg.flush()
    assert [c["text"] for c in chunks if c["text"]] == expected_units
    assert [c["segment"] for c in chunks] == sorted(c["segment"] for c in chunks)
    pcm = audio_by_segment(events)
    assert [pcm[i] for i in range(len(expected_units))] == [
        tone_pcm(unit, tts.sample_rate) for unit in expected_units
    ]
    assert all(c["samples"] <= c["sample_rate"] for c in chunks)  # at most ~1 s per frame
    assert done["status"] == "completed" and done["text"] == FULL_TEXT
    metrics = done["metrics"]
    assert metrics["segments"] == len(expected_units)
    assert metrics["first_text_ms"] <= metrics["first_audio_ms"] <= metrics["total_ms"]
    total_samples = sum(c["samples"] for c in chunks)
    assert metrics["audio_ms"] == pytest.approx(1000 * total_samples / tts.sample_rate, abs=0.5)


async def test_first_audio_leaves_before_the_llm_has_finished() -> None:
    gate = asyncio.Event()  # the LLM's last token waits until the test has heard audio
    backend = gated_backend(["First sentence here.", " Second one", " ends now."], gate)
    async with running_server(backend) as server, ChatConnection(server.url) as conn:
        await conn.send_user_message("go")
        seen: list[str] = []
        async with asyncio.timeout(WAIT_S):
            async for event in conn.events():
                seen.append(event["type"])
                if event["type"] == "audio.chunk" and not gate.is_set():
                    assert event["text"] == "First sentence here."
                    gate.set()
                if event["type"] == "response.done":
                    break
        assert seen.index("audio.chunk") < seen.index("response.done")
        assert event["status"] == "completed"


async def test_barge_in_cancels_the_old_answer_and_nothing_of_it_follows_its_done() -> None:
    gate = asyncio.Event()  # never set: the first answer would never finish on its own
    backend = gated_backend(["Hello there.", " Still talking", " forever."], gate)
    async with running_server(backend) as server, ChatConnection(server.url) as conn:
        await conn.send_user_message("first")
        async with asyncio.timeout(WAIT_S):
            created = await conn.next_event()
            while (event := await conn.next_event())["type"] != "audio.chunk":
                pass
        old = created["response_id"]
        await conn.send_user_message("second")
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT_S):
            while (event := await conn.next_event())["type"] != "response.created":
                events.append(event)
            new = event["response_id"]
            gate.set()
            while (event := await conn.next_event())["type"] != "response.done":
                assert event.get("response_id") == new
        dones = _of_type(events, "response.done")
        assert len(dones) == 1 and dones[0]["response_id"] == old
        assert dones[0]["status"] == "cancelled"
        assert events[-1] is dones[0]  # the old done is the last frame of the old answer
        assert event["status"] == "completed" and event["response_id"] == new
        # the cancelled answer stays in the history as what was said (its spoken unit, not the
        # text generated after it), turns alternate
        state = await backend.graph.aget_state(
            {"configurable": {"thread_id": conn.session["session_id"]}}
        )
        kinds = [m.type for m in state.values["messages"]]
        assert kinds == ["human", "ai", "human", "ai"]
        assert state.values["messages"][1].content == "Hello there."


async def test_cancel_stops_the_answer_and_closes_every_tts_request() -> None:
    tts = BlockingTTS()
    gate = asyncio.Event()
    backend = gated_backend(["One sentence.", " Two sentence.", " Three", "."], gate)
    async with running_server(backend, tts) as server, ChatConnection(server.url) as conn:
        await conn.cancel()  # nothing in flight: ignored, no error
        await conn.send_user_message("go")
        async with asyncio.timeout(WAIT_S):
            await read_until(conn, "audio.chunk")
            await tts.wait_started(2)  # both TTS slots busy
            await conn.cancel()
            while (event := await conn.next_event())["type"] != "response.done":
                assert event["type"] == "audio.chunk"
        assert event["status"] == "cancelled"
        assert tts.cancelled == tts.started == 2
        assert server.responses_in_flight() == 0


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"type": "user.message"}', "bad_message"),
        ('{"type": "user.message", "text": 5}', "bad_message"),
        ('{"type": "user.message", "text": "   "}', "bad_message"),
        ('{"type": "user.message", "text": "hi", "id": 7}', "bad_message"),
        ('{"text": "hi"}', "bad_message"),
        ('{"type": "launch.rockets"}', "unknown_type"),
        (b"\x00\x01binary", "bad_message"),
        (json.dumps({"type": "user.message", "text": "x" * 101}), "too_large"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_usable(
    frame: str | bytes, code: str
) -> None:
    async with running_server(scripted_backend(["Fine."]), max_text_chars=100) as server:
        async with ChatConnection(server.url) as conn:
            await conn.ws.send(frame)
            async with asyncio.timeout(WAIT_S):
                error = await conn.next_event()
            assert error["type"] == "error" and error["code"] == code
            assert "response_id" not in error
            events = await collect_answer(conn, "still there?")
            assert events[-1]["status"] == "completed"


async def test_a_frame_over_the_size_limit_closes_with_1009() -> None:
    async with running_server(scripted_backend(["Fine."]), max_frame_bytes=2048) as server:
        async with connect(server.url) as ws:
            await ws.recv()  # session.created
            await ws.send(json.dumps({"type": "user.message", "text": "x" * 5000}))
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(WAIT_S):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_a_failed_tts_unit_is_reported_and_the_answer_goes_on() -> None:
    script = ["Good start here.", " This FAIL unit.", " Good end."]
    async with running_server(scripted_backend(script), FailingToneTTS()) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "go")
    errors = _of_type(events, "error")
    assert [e["code"] for e in errors] == ["tts_failed"]
    assert errors[0]["response_id"] == events[0]["response_id"]
    chunks = _of_type(events, "audio.chunk")
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert sorted({c["segment"] for c in chunks}) == [0, 2]  # a gap in segment, never in seq
    assert events[-1]["status"] == "completed"
    assert events[-1]["metrics"]["segments"] == 3


async def test_an_llm_failing_mid_stream_fails_the_answer_and_the_session_goes_on() -> None:
    backend = scripted_backend(["Part one.", " Part", {"error": "model crashed"}])
    async with running_server(backend) as server, ChatConnection(server.url) as conn:
        events = await collect_answer(conn, "go")
        assert [e["code"] for e in _of_type(events, "error")] == ["llm_failed"]
        assert "model crashed" in _of_type(events, "error")[0]["message"]
        assert events[-1]["status"] == "failed"
        assert events[-1]["text"] == "Part one. Part"
        again = await collect_answer(conn, "again")
        assert again[-1]["type"] == "response.done"
        assert server.responses_in_flight() == 0


async def test_a_client_gone_mid_answer_leaves_no_task_behind() -> None:
    tts = BlockingTTS()
    gate = asyncio.Event()
    backend = gated_backend(["One here.", " Two here.", " Three", " never"], gate)
    async with running_server(backend, tts) as server:
        before = asyncio.all_tasks()
        for _ in range(5):
            conn = ChatConnection(server.url)
            await conn.__aenter__()
            await conn.send_user_message("go")
            async with asyncio.timeout(WAIT_S):
                await read_until(conn, "audio.chunk")
            await conn.ws.close()
        async with asyncio.timeout(WAIT_S):
            await server.wait_until_idle()
        assert server.responses_in_flight() == 0
        assert tts.cancelled == tts.started
        leftovers = asyncio.all_tasks() - before
        assert not [t for t in leftovers if not t.done()]


async def test_shutdown_ends_answers_in_flight_with_their_done_and_closes_1001() -> None:
    gate = asyncio.Event()
    backend = gated_backend(["Talking now.", " And", " never done"], gate)
    async with running_server(backend) as server:
        conn = ChatConnection(server.url)
        await conn.__aenter__()
        await conn.send_user_message("go")
        async with asyncio.timeout(WAIT_S):
            await read_until(conn, "audio.chunk")
            stopping = asyncio.create_task(server.shutdown())  # the client keeps reading
            event = await read_until(conn, "response.done")
            assert event["status"] == "cancelled"
            with pytest.raises(ConnectionLost) as closed:
                await conn.next_event()
            await stopping
        assert "1001" in str(closed.value)


class SlowToStopTTS(BlockingTTS):
    """Test double: blocks like BlockingTTS, and once cancelled takes until `release` to stop
    (a worker process finishing its sentence)."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = asyncio.Event()
        self.release = asyncio.Event()

    async def synthesize(self, text: str):
        try:
            async for piece in super().synthesize(text):
                yield piece
        except asyncio.CancelledError:
            self.stopping.set()
            await self.release.wait()
            raise


async def test_a_client_leaving_as_the_server_shuts_down_does_not_hold_the_shutdown() -> None:
    """The session ends on its own (the client left) while the shutdown flushes it: the flush
    ends with the session's writer instead of waiting out the grace time (`talk` took 5 s to
    quit while an answer played)."""
    tts = SlowToStopTTS()
    backend = gated_backend(["Talking now.", " And", " never done"], asyncio.Event())
    async with running_server(backend, tts, shutdown_grace_s=3600) as server:
        conn = ChatConnection(server.url)
        await conn.__aenter__()
        await conn.send_user_message("go")
        async with asyncio.timeout(WAIT_S):
            await read_until(conn, "audio.chunk")
            (session,) = server.sessions
            stop_answer, shutdown_stops_it = session._stop_answer, asyncio.Event()

            async def noted_stop_answer(**kwargs: Any) -> None:
                shutdown_stops_it.set()
                await stop_answer(**kwargs)

            session._stop_answer = noted_stop_answer  # type: ignore[method-assign]
            await conn.ws.close()  # the client leaves; its answer is slow to stop
            await tts.stopping.wait()
            stopping = asyncio.create_task(server.shutdown())
            await shutdown_stops_it.wait()  # the shutdown waits for that answer too
            tts.release.set()
            await stopping  # before the fix: waited the grace time (here an hour)
        assert not server.sessions


async def test_healthz_reports_sessions_and_other_paths_are_404() -> None:
    async with running_server(scripted_backend(["Hi."])) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with ChatConnection(server.url), httpx.AsyncClient() as http:
            health = await http.get(f"{base}/healthz")
            missing = await http.get(f"{base}/nope")
        assert health.status_code == 200
        assert health.headers["content-type"] == "application/json"
        assert health.json()["status"] == "ok"
        assert health.json()["sessions"] == 1
        assert health.json()["responses_in_flight"] == 0
        assert missing.status_code == 404


async def test_a_huge_delta_is_cut_in_slices_with_the_event_loop_free_between() -> None:
    """One 40,000-character delta (a user graph's whole answer at once) must not hold the
    event loop for the whole filter + segmenter pass: other tasks run between its slices."""
    timeline: list[str] = []
    answer_done = asyncio.Event()

    async def ticker() -> None:
        while not answer_done.is_set():
            timeline.append("tick")
            await asyncio.sleep(0)

    backend = scripted_backend(["Hello there friend. " * 2000])
    settings = {
        "trace": lambda event, _at, _details: timeline.append(event),
        **WHOLE_ANSWERS,  # 2,000 sentences said again and again: all of them spoken
    }
    async with running_server(backend, pipeline=settings) as server:
        async with ChatConnection(server.url) as conn:
            ticking = asyncio.create_task(ticker())
            events = await collect_answer(conn, "go")
            answer_done.set()
            await ticking
    assert events[-1]["status"] == "completed"
    cuts = [i for i, event in enumerate(timeline) if event == "unit"]
    assert len(cuts) > 100
    between = timeline[cuts[0] : cuts[-1]]
    assert between.count("tick") >= 40_000 // 2048 - 1, "the loop was held for the whole delta"

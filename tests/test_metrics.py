"""GET /metrics on a real server on loopback: Prometheus' text format, read back with the
library's own parser. The scripted LLM and the tone voice (fast fakes) make the typed answers;
the spoken turn uses the real Silero VAD and Whisper tiny.en, the engine-worker test a real
worker process. `serve --workers N` (the sums over processes) is in tests/test_serve_workers.py.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voicechat.client.connection import ChatConnection, ServerUnavailable
from voicechat.metrics import ServerMetrics
from voicechat.server import VoiceChatServer
from voicechat.settings import ServerConfig
from voicechat.tts.tone import ToneTTS
from voicechat.workers.embedded import vad_worker

from .conftest import (
    WAIT_S,
    collect_answer,
    gated_backend,
    read_answer,
    read_until,
    running_server,
    scripted_backend,
)
from .speech_fixtures import pad, spoken_pcm
from .speech_server import send_audio, speech_input
from .test_protocol_edges import http_exchange, req, until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by (name, labels): a format error fails here."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_S)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def restarted(worker: dict[str, object]) -> bool:
    return worker["restarts"] == 1 and worker["state"] == "ready"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_a_typed_answer_moves_the_answer_counter_and_the_first_audio_histogram() -> None:
    async with (
        running_server(scripted_backend(["Hello there. How are you today?"])) as server,
        ChatConnection(server.url) as connection,
    ):
        before = await scrape(server.port)
        assert value(before, "voicechat_sessions") == 1
        assert value(before, "voicechat_answers_total", status="completed") == 0
        events = await collect_answer(connection, "Hi")
        assert events[-1]["status"] == "completed"
        after = await scrape(server.port)
    assert value(after, "voicechat_answers_total", status="completed") == 1
    assert value(after, "voicechat_answers_total", status="cancelled") == 0
    assert value(after, "voicechat_first_audio_seconds_count") == 1
    reported = events[-1]["metrics"]["first_audio_ms"] / 1000  # the same figure as response.done
    assert value(after, "voicechat_first_audio_seconds_sum") == pytest.approx(reported, abs=1e-3)
    assert value(after, "voicechat_first_audio_seconds_bucket", le="+Inf") == 1
    assert value(after, "voicechat_voice_to_voice_seconds_count") == 0  # it was typed
    assert value(after, "voicechat_responses_in_flight") == 0
    assert value(after, "voicechat_server_processes") == 1


async def test_a_cancelled_answer_is_counted_as_cancelled() -> None:
    gate = asyncio.Event()  # never set: the answer waits until it is cancelled
    async with (
        running_server(gated_backend(["One. ", "Never."], gate)) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.send_user_message("Go.")
        await read_until(connection, "text.delta")  # the answer is under way
        assert value(await scrape(server.port), "voicechat_responses_in_flight") == 1
        await connection.cancel()
        done = await read_until(connection, "response.done")
        assert done["status"] == "cancelled"
        samples = await scrape(server.port)
    assert value(samples, "voicechat_answers_total", status="cancelled") == 1
    assert value(samples, "voicechat_answers_total", status="completed") == 0


async def test_refusals_are_counted_by_reason() -> None:
    config = {"max_connections": 1, "message_burst": 1, "messages_per_minute": 1}
    async with running_server(scripted_backend(["Hi."]), **config) as server:
        with pytest.raises(InvalidStatus):  # origin
            async with connect(server.url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        await http_exchange(  # bad_request: two Host headers
            server, "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        )
        async with ChatConnection(server.url) as connection:
            with pytest.raises(ServerUnavailable):  # full
                async with ChatConnection(server.url):
                    pass
            await collect_answer(connection, "One.")  # message_rate: the burst is 1
            await connection.send_user_message("Two.")
            error = await read_until(connection, "error")
            assert error["code"] == "rate_limited"
            samples = await scrape(server.port)
    for reason in ("origin", "bad_request", "full", "message_rate"):
        assert value(samples, "voicechat_refusals_total", reason=reason) == 1, reason
    assert value(samples, "voicechat_refusals_total", reason="auth") == 0
    assert server.refused["full"] == 1  # the same counts as /healthz


async def test_metrics_answers_get_and_head_without_the_token_and_405_to_others() -> None:
    """Like /healthz: counts only, never a conversation, so no token (a monitor has none)."""
    async with running_server(scripted_backend(["Hi."]), token="a-token-of-16-chars") as server:
        status, headers, body = await http_exchange(server, req("GET", "/metrics"))
        assert status == 200 and int(headers["content-length"]) == len(body)
        assert b"voicechat_sessions 0.0" in body
        async with connect(server.url) as chat:  # the chat needs the token ...
            with pytest.raises(ConnectionClosed):
                await chat.recv()
        status, headers, body = await http_exchange(server, req("HEAD", "/metrics"))
        assert status == 200 and int(headers["content-length"]) > 0 and body == b""
        for method in ("OPTIONS", "POST", "DELETE"):
            extra = "Content-Length: 0\r\n" if method == "POST" else ""
            status, headers, _ = await http_exchange(server, req(method, "/metrics", extra))
            assert (status, headers.get("allow")) == (405, "GET, HEAD"), method
        samples = parse((await http_exchange(server, req("GET", "/metrics")))[2].decode())
    assert value(samples, "voicechat_refusals_total", reason="auth") == 1  # ... and was refused


async def test_engine_worker_state_restarts_and_queue_come_from_the_worker() -> None:
    """A real worker process (Silero VAD): killed, restarted, its restart counted once."""
    worker = vad_worker()
    await worker.start()
    server = VoiceChatServer(
        scripted_backend(["Hi."]), ToneTTS(), ServerConfig(port=0), workers={"vad": worker}
    )
    await server.start()
    try:
        samples = await scrape(server.port)
        assert value(samples, "voicechat_engine_workers", engine="vad", state="ready") == 1
        assert value(samples, "voicechat_engine_queue", engine="vad", queue="in_flight") == 0
        assert value(samples, "voicechat_engine_restarts_total", engine="vad") == 0
        os.kill(server.health()["workers"]["vad"]["pid"], signal.SIGKILL)
        await until(lambda: restarted(server.health()["workers"]["vad"]), "vad restarted")
        samples = await scrape(server.port)
        again = await scrape(server.port)  # a second scrape does not count the restart again
    finally:
        await server.shutdown()
        await worker.aclose()
    assert value(samples, "voicechat_engine_restarts_total", engine="vad") == 1
    assert value(again, "voicechat_engine_restarts_total", engine="vad") == 1
    assert value(samples, "voicechat_engine_workers", engine="vad", state="ready") == 1
    assert value(samples, "voicechat_engine_workers", engine="vad", state="restarting") == 0


def test_health_figures_become_gauges_and_cumulative_ones_counters() -> None:
    """What publish() makes of a health() dict (the data /healthz shows), on its own: a state
    left goes back to 0, a cumulative figure (restarts, turns shed) counts only what is new."""
    metrics = ServerMetrics()
    health = {
        "sessions": 3,
        "workers": {"whisper": {"state": "restarting", "pid": None, "restarts": 2, "waiting": 4}},
        "speech": {"stt_queued": 7, "stt_in_flight": 1, "stt_shed": 5, "listening": 3},
    }
    metrics.publish(health)
    health["workers"]["whisper"].update(state="ready", waiting=0)
    health["speech"].update(stt_queued=2, stt_shed=6)
    samples = parse(metrics.render(health)[0].decode())
    assert value(samples, "voicechat_engine_workers", engine="whisper", state="ready") == 1
    assert value(samples, "voicechat_engine_workers", engine="whisper", state="restarting") == 0
    assert value(samples, "voicechat_engine_restarts_total", engine="whisper") == 2
    assert value(samples, "voicechat_engine_queue", engine="whisper", queue="waiting") == 0
    assert value(samples, "voicechat_speech_queue", queue="queued") == 2
    assert value(samples, "voicechat_speech_queue", queue="in_flight") == 1
    assert value(samples, "voicechat_speech_shed_total") == 6
    assert value(samples, "voicechat_speech_listening") == 3
    assert value(samples, "voicechat_sessions") == 3


async def test_a_spoken_turn_is_counted_as_voice_to_voice() -> None:
    question = pad(spoken_pcm("What is the capital of France?"), 0.5, 1.5)
    async with (
        speech_input() as speech,
        running_server(scripted_backend(["Paris."]), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        await send_audio(connection, question)
        events = await read_answer(connection)
        assert events[-1]["status"] == "completed"
        samples = await scrape(server.port)
    assert value(samples, "voicechat_voice_to_voice_seconds_count") == 1
    reported = events[-1]["metrics"]["first_audio_ms"] / 1000  # from the end of the speech
    assert value(samples, "voicechat_voice_to_voice_seconds_sum") == pytest.approx(
        reported, abs=1e-3
    )
    assert value(samples, "voicechat_first_audio_seconds_count") == 0
    assert value(samples, "voicechat_answers_total", status="completed") == 1

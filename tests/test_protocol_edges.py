"""Edges of the protocol and of the HTTP side (issue 15): lone surrogates, repeated
Authorization headers, connections still in the handshake, the open-file limit, HTTP methods.

Real server on loopback, real clients (websockets, httpx, raw sockets). Nothing measures time:
waits are bounded by WAIT_S and poll a condition.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import WAIT_S, collect_answer, read_until, running_server, scripted_backend
from voicechat import protocol
from voicechat.client.connection import ChatConnection
from voicechat.protocol import ProtocolError, parse_client_message
from voicechat.server import FD_RESERVE, VoiceChatServer

TOKEN = "s3cret-token-for-tests-0123456789"
SCRIPT = ["The moon is bright.", " Owls hunt at night."]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` on the event loop until it holds; fail after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - server state has no event to await
            await asyncio.sleep(0.01)
    assert condition(), what


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# --- lone surrogates ---------------------------------------------------------------------------


def test_the_parser_refuses_lone_surrogates_in_every_client_string() -> None:
    frames = [
        r'{"type":"user.message","text":"hi","id":"\ud800"}',
        r'{"type":"user.message","text":"bad \udfff text"}',
        r'{"type":"session.resume","session_id":"\ud800x"}',
    ]
    for frame in frames:
        with pytest.raises(ProtocolError) as error:
            parse_client_message(frame, max_text_chars=100)
        assert error.value.code == protocol.BAD_MESSAGE
        assert "surrogate" in error.value.message
    pair = parse_client_message(
        r'{"type":"user.message","text":"hi","id":"ok \ud83d\ude00"}', max_text_chars=100
    )
    assert pair == protocol.UserMessage(text="hi", id="ok \U0001f600")  # a pair is one character


async def test_a_lone_surrogate_in_a_client_field_is_bad_message_and_the_connection_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        async with ChatConnection(server.url) as conn:
            for frame in (
                r'{"type":"user.message","text":"hi","id":"\ud800"}',  # would be in_reply_to
                r'{"type":"user.message","text":"lone \udfff here"}',
                r'{"type":"session.resume","session_id":"\ud800"}',
            ):
                await conn.ws.send(frame)
                async with asyncio.timeout(WAIT_S):
                    event = await conn.next_event()
                assert (event["type"], event["code"]) == ("error", "bad_message")
            await conn.ws.send(r'{"type":"user.message","text":"hi","id":"ok \ud83d\ude00"}')
            created = await read_until(conn, "response.created")
            assert created["in_reply_to"] == "ok \U0001f600"
            done = await read_until(conn, "response.done")
            assert done["status"] == "completed" and done["text"] == "".join(SCRIPT)
    no_errors_logged(caplog)


ODD_SCRIPT = r'["Odd \ud800 char here.", " Then", " all is fine."]'
ODD_TEXT = "Odd \ufffd char here. Then all is fine."


async def test_a_lone_surrogate_in_the_model_text_is_replaced_and_the_answer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = json.loads(ODD_SCRIPT)
    assert "\ud800" in script[0]  # the JSON escape decodes to a lone surrogate
    async with running_server(scripted_backend(script)) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "say something odd")
            assert (await collect_answer(conn, "again"))[-1]["status"] == "completed"
    deltas = "".join(e["text"] for e in events if e["type"] == "text.delta")
    assert deltas == ODD_TEXT
    assert (events[-1]["status"], events[-1]["text"]) == ("completed", ODD_TEXT)
    assert not [r for r in caplog.records if r.name.startswith("websockets")]


async def test_a_lone_surrogate_in_the_model_text_costs_no_speech_unit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(scripted_backend(json.loads(ODD_SCRIPT))) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "say something odd")
    assert not [e for e in events if e["type"] == "error"]
    spoken = [e["text"] for e in events if e["type"] == "audio.chunk" and e["text"]]
    assert spoken and "\ufffd" in spoken[0]
    no_errors_logged(caplog)


# --- two Authorization headers -----------------------------------------------------------------


async def test_two_authorization_headers_are_refused_1008_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(scripted_backend(SCRIPT), token=TOKEN) as server:
        for second in (f"Bearer {TOKEN}", "Bearer wrong-one"):
            headers = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", second)]
            async with connect(server.url, additional_headers=headers) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    async with asyncio.timeout(WAIT_S):
                        await ws.recv()  # no session.created
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                1008,
                "authentication required",
            )
        assert server.refused["auth"] == 2
        async with ChatConnection(server.url, token=TOKEN) as conn:  # one header: fine
            assert (await collect_answer(conn, "hi"))[-1]["status"] == "completed"
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2 and all(r.levelno == logging.WARNING for r in refusals)
    assert all("several Authorization headers" in r.getMessage() for r in refusals)
    no_errors_logged(caplog)
    assert TOKEN not in caplog.text


# --- connections in the handshake, the open-file limit -----------------------------------------


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """What the server sends before closing; b"" when it closes (or resets) without a word."""
    try:
        async with asyncio.timeout(WAIT_S):
            return await reader.read()
    except ConnectionResetError:
        return b""


async def test_past_the_handshake_cap_the_oldest_idle_socket_is_dropped_and_healthz_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(scripted_backend(SCRIPT), max_handshakes=3) as server:
        sessions = [ChatConnection(server.url) for _ in range(4)]
        for conn in sessions:  # sessions are not in the handshake: more than the cap is fine
            await conn.__aenter__()
        idle = []
        for count in range(1, 4):  # one at a time, so "oldest" is well defined
            idle.append(await asyncio.open_connection("127.0.0.1", server.port))
            await until(lambda n=count: server.handshakes_in_progress == n, "idle socket counted")
        async with httpx.AsyncClient() as http:  # a 4th connection, past the cap
            response = await http.get(f"http://127.0.0.1:{server.port}/healthz")
        assert response.status_code == 200
        health = response.json()
        assert health["disconnected"]["handshake"] == 1 and health["sessions"] == 4
        assert await read_to_eof(idle[0][0]) == b""  # the oldest idle socket was dropped
        assert server.refused["handshake"] == 1
        notices = [r for r in caplog.records if "opening handshake" in r.getMessage()]
        assert len(notices) == 1 and notices[0].levelno == logging.WARNING
        for conn in sessions:  # the sessions were not touched
            assert (await collect_answer(conn, "still there?"))[-1]["status"] == "completed"
        for _, writer in idle:
            writer.close()
        for conn in sessions:
            await conn.__aexit__(None, None, None)
        await until(lambda: server.handshakes_in_progress == 0, "nothing left in the handshake")


async def test_a_socket_that_never_sends_its_request_is_dropped_after_the_handshake_timeout() -> (
    None
):
    async with running_server(scripted_backend(SCRIPT), handshake_timeout_s=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await read_to_eof(reader) == b""  # dropped without a response
        writer.close()
        await until(lambda: server.handshakes_in_progress == 0, "the socket to be forgotten")
        async with ChatConnection(server.url) as conn:  # a prompt client is not affected
            assert conn.session["type"] == "session.created"


async def test_the_open_file_limit_is_raised_at_start_up_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, max(256, len(os.listdir("/proc/self/fd")) + 128))
    needed = low + 10 + FD_RESERVE  # max_connections=low, max_handshakes=10
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no room to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        async with running_server(
            scripted_backend(SCRIPT), max_connections=low, max_handshakes=10
        ) as server:
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == needed
            async with ChatConnection(server.url) as conn:
                assert conn.session["type"] == "session.created"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert f"raised the open-file limit (RLIMIT_NOFILE) from {low} to {needed}" in caplog.text


async def test_caps_the_open_file_limit_cannot_hold_are_scaled_down_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit to exceed")
    try:  # ask for more than the hard limit allows: it is raised to the hard limit, no further
        async with running_server(
            scripted_backend(SCRIPT), max_connections=hard, max_handshakes=hard
        ) as server:
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
            assert 1 <= server.max_connections and 1 <= server.max_handshakes
            assert server.max_connections + server.max_handshakes <= hard - FD_RESERVE
            async with ChatConnection(server.url) as conn:
                assert conn.session["type"] == "session.created"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    warnings = [r for r in caplog.records if "cannot hold" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


CHILD_SERVER = """
import asyncio, logging, sys
from langgraph.checkpoint.memory import InMemorySaver
from voicechat.llm import ChatBackend
from voicechat.llm.graph import build_chat_graph
from voicechat.llm.scripted import ScriptedChatModel, parse_script
from voicechat.server import VoiceChatServer
from voicechat.settings import ServerConfig
from voicechat.tts.tone import ToneTTS

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
logging.getLogger("websockets").setLevel(logging.WARNING)

async def main():
    model = ScriptedChatModel(items=parse_script(["Hi."]))
    backend = ChatBackend(build_chat_graph(model, checkpointer=InMemorySaver()), name="scripted")
    server = VoiceChatServer(backend, ToneTTS(), ServerConfig(port=0))  # the default caps
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_with_256_file_descriptors_300_idle_sockets_do_not_stop_accept_or_healthz() -> None:
    """The case from issue 15: idle TCP sockets and a low fd limit used to make accept() fail
    ("out of system resource") and /healthz time out until the handshake timeout."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD_SERVER,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)),
    )
    idle: list[Any] = []
    try:
        assert child.stdout is not None
        async with asyncio.timeout(WAIT_S):
            port = int(await child.stdout.readline())
            for _ in range(300):
                idle.append(await asyncio.open_connection("127.0.0.1", port))
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200
        assert response.json()["disconnected"]["handshake"] > 0
        async with ChatConnection(f"ws://127.0.0.1:{port}/v1/chat/stream") as conn:
            assert (await collect_answer(conn, "hi"))[-1]["status"] == "completed"
    finally:
        for _, writer in idle:
            writer.close()
        child.terminate()
        async with asyncio.timeout(WAIT_S):
            _, stderr = await child.communicate()
    log_text = stderr.decode()
    assert "out of system resource" not in log_text
    assert (
        "cannot hold 500 sessions and 500 connections in the handshake: serving at most 60 and 60"
        in log_text
    )


# --- HTTP methods --------------------------------------------------------------------------------


async def http_exchange(server: VoiceChatServer, request: str) -> tuple[int | None, Any, bytes]:
    """(status, headers, body) of the server's answer to a raw HTTP request; status None when
    the server closed without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request.encode("ascii"))
        data = await read_to_eof(reader)
    finally:
        writer.close()
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def req(method: str, path: str, extra: str = "") -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"


async def test_healthz_answers_get_and_head_and_405_to_other_methods() -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        status, headers, body = await http_exchange(server, req("GET", "/healthz"))
        assert status == 200 and headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body) and json.loads(body)["status"] == "ok"

        status, headers, body = await http_exchange(server, req("HEAD", "/healthz"))
        assert status == 200 and headers["content-type"] == "application/json"
        assert int(headers["content-length"]) > 0 and body == b""  # a GET's headers, no body

        for method in ("OPTIONS", "POST", "PUT", "DELETE"):
            extra = "Content-Length: 0\r\n" if method in ("POST", "PUT") else ""
            status, headers, _ = await http_exchange(server, req(method, "/healthz", extra))
            assert (status, headers.get("allow")) == (405, "GET, HEAD"), method

        for method in ("HEAD", "OPTIONS", "POST"):  # the chat path: a WebSocket, GET only
            extra = "Content-Length: 0\r\n" if method == "POST" else ""
            status, headers, body = await http_exchange(
                server, req(method, "/v1/chat/stream", extra)
            )
            assert (status, headers.get("allow")) == (405, "GET"), method
            assert (body == b"") == (method == "HEAD"), method

        status, headers, body = await http_exchange(server, req("HEAD", "/nope"))
        assert status == 404 and body == b""

        # A request with a body is not HTTP websockets parses: closed without a response.
        status, _, _ = await http_exchange(
            server, req("POST", "/healthz", "Content-Length: 3\r\n") + "abc"
        )
        assert status is None
        await until(lambda: server.handshakes_in_progress == 0, "every request to be done")
        async with ChatConnection(server.url) as conn:  # and the server goes on
            assert conn.session["type"] == "session.created"

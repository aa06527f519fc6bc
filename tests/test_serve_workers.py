"""`voicechat serve --workers 2`: two real server processes on one port, as a user runs them.

Which process a connection lands on is the kernel's choice (SO_REUSEPORT hashes the
connection's addresses), so the tests open connections until they have what they need, with a
bound, and `session.created` says which worker holds each session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from voicechat.client.connection import ChatConnection, ConnectionLost, ServerUnavailable

from .conftest import WAIT_S
from .process_guard import spawn, stop
from .test_backends import _free_port

ATTEMPTS = 64  # connections tried to land on a given worker: a miss is 2**-64 likely


def serve(port: int, *extra: str, script: Path | None = None) -> subprocess.Popen[bytes]:
    llm = f"scripted:{script}" if script else "scripted"
    return spawn(
        [sys.executable, "-m", "voicechat", "serve", "--workers", "2", "--port", str(port),
         "--llm", llm, "--tts", "tone", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


async def until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until both workers answer /healthz: the first one up takes every connection until the
    second has bound the port too."""
    seen: set[int] = set()
    async with httpx.AsyncClient() as client:
        for _ in range(int(WAIT_S / 0.05)):
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                health = (await client.get(f"http://127.0.0.1:{port}/healthz", timeout=1)).json()
                seen.add(health["worker"]["index"])
                if seen == {0, 1}:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    stop(process)
    log = process.stderr.read().decode()  # type: ignore[union-attr]
    raise AssertionError(f"serve --workers 2 did not come up (workers seen: {seen}):\n{log}")


@pytest.fixture
def memory_file(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:{tmp_path / 'chats.db'}"


@pytest.fixture
async def two_workers(memory_file: str) -> AsyncIterator[tuple[int, subprocess.Popen[bytes]]]:
    port = _free_port()
    process = serve(port, "--memory", memory_file)
    try:
        await until_listening(port, process)
        yield port, process
    finally:
        stop(process)


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/chat/stream"


async def connection_on(port: int, worker: int) -> ChatConnection:
    """An open connection whose session worker `worker` holds."""
    seen: list[int] = []
    for _ in range(ATTEMPTS):
        conn = await ChatConnection(url(port)).__aenter__()
        seen.append(conn.session["worker"])
        if conn.session["worker"] == worker:
            return conn
        await conn.__aexit__(None, None, None)
    raise AssertionError(f"no connection of {ATTEMPTS} landed on worker {worker}: {seen}")


async def answer(conn: ChatConnection, text: str) -> dict[str, object]:
    await conn.send_user_message(text)
    async for event in conn.events():
        if event["type"] == "response.done":
            return event
    raise AssertionError("no response.done")


async def test_connections_spread_over_both_workers_and_each_names_its_own(
    two_workers: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, _ = two_workers
    seen: set[int] = set()
    conns = []
    for _ in range(ATTEMPTS):
        conn = await ChatConnection(url(port)).__aenter__()
        conns.append(conn)
        seen.add(conn.session["worker"])
        if seen == {0, 1}:
            break
    for conn in conns:
        await conn.__aexit__(None, None, None)
    assert seen == {0, 1}
    async with httpx.AsyncClient() as client:
        pids = set()
        for _ in range(ATTEMPTS):
            health = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
            pids.add((health["worker"]["index"], health["worker"]["pid"]))
            if len(pids) == 2:
                break
    assert {index for index, _ in pids} == {0, 1}  # /healthz names the worker that answered


async def test_a_conversation_resumes_on_the_other_worker_with_sqlite_memory(
    two_workers: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, _ = two_workers
    first = await connection_on(port, 0)
    done = await answer(first, "Remember this.")
    assert done["status"] == "completed"
    session_id = first.session["session_id"]
    await first.__aexit__(None, None, None)

    other = await connection_on(port, 1)
    try:
        await other.send({"type": "session.resume", "session_id": session_id})
        resumed = await other.next_event()
        assert resumed["type"] == "session.resumed" and resumed["messages"] == 2
        assert (await answer(other, "And now?"))["status"] == "completed"
    finally:
        await other.__aexit__(None, None, None)


async def test_with_in_process_memory_another_worker_says_unknown_session() -> None:
    port = _free_port()
    process = serve(port)  # --memory memory: each process keeps its own
    try:
        await until_listening(port, process)
        first = await connection_on(port, 0)
        await answer(first, "Hello.")
        session_id = first.session["session_id"]
        await first.__aexit__(None, None, None)
        other = await connection_on(port, 1)
        await other.send({"type": "session.resume", "session_id": session_id})
        event = await other.next_event()
        await other.__aexit__(None, None, None)
        assert (event["type"], event["code"]) == ("error", "unknown_session")
    finally:
        stop(process)
    assert b"use --memory sqlite:PATH or postgres://" in process.stderr.read()  # type: ignore[union-attr]


async def test_sigterm_drains_both_workers(tmp_path: Path) -> None:
    script = tmp_path / "slow.json"
    script.write_text(json.dumps(["One sentence. ", {"text": "Never said.", "delay_ms": 60_000}]))
    port = _free_port()
    process = serve(port, script=script)
    try:
        await until_listening(port, process)
        conns = [await connection_on(port, 0), await connection_on(port, 1)]
        for conn in conns:
            await conn.send_user_message("Go.")
            event = await conn.next_event()
            while event["type"] != "text.delta":  # each answer is in flight on its worker
                event = await conn.next_event()
        process.send_signal(signal.SIGTERM)
        for conn in conns:
            done = None
            with contextlib.suppress(ConnectionLost):  # then the 1001 close
                async for event in conn.events():
                    if event["type"] == "response.done":
                        done = event
            assert done is not None and done["status"] == "cancelled"
            assert "Never said." not in str(done["text"])
        assert process.wait(timeout=WAIT_S) == 0
    finally:
        stop(process)


async def test_a_killed_worker_is_restarted_and_the_other_keeps_serving(
    two_workers: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, _ = two_workers
    survivor = await connection_on(port, 1)
    victim = await connection_on(port, 0)
    async with httpx.AsyncClient() as client:
        for _ in range(ATTEMPTS):
            health = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
            if health["worker"]["index"] == 0:
                old_pid = health["worker"]["pid"]
                break
        else:
            raise AssertionError("no /healthz from worker 0")
        os.kill(old_pid, signal.SIGKILL)
        with contextlib.suppress(ConnectionLost):  # its connection drops with it
            async for _ in victim.events():
                pass
        assert (await answer(survivor, "Still there?"))["status"] == "completed"
        new_pid = None
        for _ in range(int(WAIT_S / 0.05)):
            health = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
            if health["worker"]["index"] == 0 and health["worker"]["pid"] != old_pid:
                new_pid = health["worker"]["pid"]
                break
            await asyncio.sleep(0.05)
    await survivor.__aexit__(None, None, None)
    assert new_pid is not None  # the supervisor started worker 0 again


async def test_a_second_serve_on_the_same_port_is_refused(
    two_workers: tuple[int, subprocess.Popen[bytes]],
) -> None:
    """SO_REUSEPORT would let it join the first one's port silently: it must not."""
    port, _ = two_workers
    second = serve(port)
    try:
        assert second.wait(timeout=WAIT_S) == 1
        assert f"port {port} is in use".encode() in second.stderr.read()  # type: ignore[union-attr]
    finally:
        stop(second)


def test_workers_need_a_fixed_port() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voicechat", "serve", "--workers", "2", "--port", "0",
         "--llm", "scripted", "--tts", "tone"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "needs a fixed --port" in result.stderr


async def test_max_connections_holds_for_all_workers_together(memory_file: str) -> None:
    """The kernel spreads by hash, not by load: a share per process would refuse clients while
    another process has room, so the processes count their sessions together."""
    port = _free_port()
    process = serve(port, "--memory", memory_file, "--max-connections", "6")
    try:
        await until_listening(port, process)
        conns = [await ChatConnection(url(port)).__aenter__() for _ in range(6)]
        with pytest.raises(ServerUnavailable, match="the server is full"):
            for _ in range(8):  # whichever process the kernel picks, the server is full
                extra = await ChatConnection(url(port)).__aenter__()
                conns.append(extra)
        assert len(conns) == 6
        await conns.pop().__aexit__(None, None, None)
        for _ in range(int(WAIT_S / 0.05)):  # until the closing session is counted out
            try:
                conns.append(await ChatConnection(url(port)).__aenter__())
                break
            except ServerUnavailable:
                await asyncio.sleep(0.05)
        assert len(conns) == 6  # a place freed on any process is a place for anyone
        for conn in conns:
            await conn.__aexit__(None, None, None)
    finally:
        stop(process)


async def pid_of(port: int, worker: int) -> int:
    """The pid of worker `worker`, from a /healthz that it answered."""
    async with httpx.AsyncClient() as client:
        for _ in range(ATTEMPTS):
            health = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
            if health["worker"]["index"] == worker:
                return int(health["worker"]["pid"])
    raise AssertionError(f"no /healthz from worker {worker}")


async def until_restarted(port: int, worker: int, old_pid: int) -> None:
    """Until worker `worker` answers /healthz from another pid than `old_pid`."""
    async with httpx.AsyncClient() as client:
        for _ in range(int(WAIT_S / 0.05)):
            with contextlib.suppress(httpx.TransportError):
                health = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
                if health["worker"]["index"] == worker and health["worker"]["pid"] != old_pid:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"worker {worker} was not started again")


async def drop(conn: ChatConnection) -> None:
    with contextlib.suppress(ConnectionLost, OSError):
        await conn.__aexit__(None, None, None)


async def test_a_killed_workers_sessions_stop_counting_against_the_cap(memory_file: str) -> None:
    """Issue 24, defect 3: the server full (10 of 10), SIGKILL of the process holding most of
    them. Once it is back, its places are free again: its slot of the shared tally said what
    it held, so every new connection got 503 while fewer than 10 sessions were open."""
    port = _free_port()
    process = serve(port, "--memory", memory_file, "--max-connections", "10")
    try:
        await until_listening(port, process)
        conns = [await ChatConnection(url(port)).__aenter__() for _ in range(10)]
        held = {worker: [c for c in conns if c.session["worker"] == worker] for worker in (0, 1)}
        victim = max(held, key=lambda worker: len(held[worker]))  # 5 or more of the 10
        freed = len(held[victim])
        old_pid = await pid_of(port, victim)
        os.kill(old_pid, signal.SIGKILL)
        for conn in held[victim]:
            await drop(conn)
        await until_restarted(port, victim, old_pid)
        survivors = held[1 - victim]
        for _ in range(freed):  # whichever process the kernel picks: the freed places are free
            survivors.append(await ChatConnection(url(port)).__aenter__())
        with pytest.raises(ServerUnavailable, match="the server is full"):
            survivors.append(await ChatConnection(url(port)).__aenter__())  # the cap holds
        for conn in survivors:
            await conn.__aexit__(None, None, None)
    finally:
        stop(process)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    """One /metrics scrape, answered by whichever process the kernel picked."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient() as client:  # a new connection: the kernel picks again
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def until_sessions(port: int, count: int) -> None:
    """Until /metrics counts `count` sessions (the misses of connection_on close in the
    background)."""
    for _ in range(int(WAIT_S / 0.05)):
        if (await scrape(port))[("voicechat_sessions", frozenset())] == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/metrics never counted {count} sessions")


async def test_metrics_add_up_every_worker_whichever_answers_the_scrape(
    two_workers: tuple[int, subprocess.Popen[bytes]],
) -> None:
    """One answer on each process: every scrape (any process may get it) counts both, and
    after a SIGKILL the dead one's answers still count, its sessions no longer do."""
    port, _ = two_workers
    conns = [await connection_on(port, 0), await connection_on(port, 1)]
    for conn in conns:
        assert (await answer(conn, "Hello."))["status"] == "completed"
    await until_sessions(port, 2)
    completed = ("voicechat_answers_total", frozenset({("status", "completed")}))
    for _ in range(8):  # per-process numbers would say 1 in every one of them
        samples = await scrape(port)
        assert samples[("voicechat_server_processes", frozenset())] == 2
        assert samples[completed] == 2
        assert samples[("voicechat_first_audio_seconds_count", frozenset())] == 2
        assert samples[("voicechat_sessions", frozenset())] == 2
    old_pid = await pid_of(port, 1)
    os.kill(old_pid, signal.SIGKILL)
    await drop(conns.pop())
    await until_restarted(port, 1, old_pid)
    samples = await scrape(port)
    assert samples[completed] == 2  # what the dead process answered still happened
    assert samples[("voicechat_sessions", frozenset())] == 1  # its session is gone
    assert samples[("voicechat_server_processes", frozenset())] == 2
    assert samples[("voicechat_server_restarts_total", frozenset())] == 1
    await drop(conns.pop())

"""Real back ends: the embedded GGUF LLM and Piper voice, an OpenAI-compatible server, a user
graph, SQLite and PostgreSQL memory, and Korean through espeak-ng."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from voicechat.audio.wav import decode_wav
from voicechat.client.connection import ChatConnection
from voicechat.config import ConfigError, open_backends
from voicechat.engines.piper import MAX_UNIT_PHONEMES
from voicechat.llm import LLMSettings, build_backend
from voicechat.llm.memory import open_checkpointer
from voicechat.server import VoiceChatServer
from voicechat.settings import BackendOptions, ServerConfig
from voicechat.tts.tone import ToneTTS
from voicechat.workers.embedded import default_model_path, llm_worker

from .conftest import WAIT_S, collect_answer
from .process_guard import owned_tempdir, spawn, stop

ROOT = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[VoiceChatServer]:
    async with AsyncExitStack() as stack:
        backends = await open_backends(BackendOptions(**options), stack)
        server = VoiceChatServer(
            backends.chat, backends.tts, ServerConfig(port=0), backends.workers
        )
        await server.start()
        try:
            yield server
        finally:
            await server.shutdown()


def _audio(events: list[dict[str, Any]]) -> tuple[np.ndarray, set[int]]:
    samples, rates = [], set()
    for event in events:
        if event["type"] == "audio.chunk":
            data, rate = decode_wav(base64.b64decode(event["audio"]))
            samples.append(np.frombuffer(data, "<i2"))
            rates.add(rate)
    return (np.concatenate(samples) if samples else np.zeros(0, np.int16)), rates


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


async def test_embedded_llm_and_piper_answer_with_real_speech() -> None:
    async with serving(llm="local", tts="piper", max_tokens=40) as server:
        assert server.health()["llm"].startswith("local:SmolLM2")
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "Tell me about the moon.")
    done = events[-1]
    assert done["status"] == "completed", events
    assert done["text"].strip()
    samples, rates = _audio(events)
    assert rates == {22050}
    assert samples.size > 22050 // 2  # at least half a second of speech
    assert _rms(samples) > 300  # not silence


async def test_a_conversation_longer_than_the_local_models_context_goes_on() -> None:
    """The real model and tokenizer in a 512-token window (4,096 in `serve`: the same code, but
    a full window takes minutes to evaluate on a slow CI core). Messages of ~100 tokens outgrow
    it by the fourth; each is answered: the oldest turns are left out of what the model is sent.
    Without that, llama.cpp refuses with "Requested tokens (...) exceed context window"."""
    text = ("The quick brown fox jumps over the lazy dog near the river bank. " * 7)[:400]
    async with AsyncExitStack() as stack:
        worker = llm_worker(default_model_path(), context_tokens=512)
        stack.push_async_callback(worker.aclose)
        await worker.start()
        backend = build_backend(LLMSettings(spec="local", max_tokens=16), InMemorySaver(), worker)
        server = VoiceChatServer(backend, ToneTTS(), ServerConfig(port=0), {"llm": worker})
        await server.start()
        stack.push_async_callback(server.shutdown)
        async with ChatConnection(server.url) as conn:
            for message in [f"{i}. {text}" for i in range(5)] + ["Hi"]:
                await conn.send_user_message(message)
                async with asyncio.timeout(LONG_PROMPT_WAIT_S):
                    events = [event async for event in _until_done(conn)]
                assert [e for e in events if e["type"] == "error"] == [], events
                assert events[-1]["status"] == "completed"
            state = await backend.graph.aget_state(
                {"configurable": {"thread_id": conn.session["session_id"]}}
            )
    assert len(state.values["messages"]) == 12  # the stored history keeps every turn


LONG_PROMPT_WAIT_S = 120.0  # ~450 tokens of prompt on a busy core


async def _until_done(conn: ChatConnection) -> AsyncIterator[dict[str, Any]]:
    async for event in conn.events():
        yield event
        if event["type"] == "response.done":
            return


def _load_script(name: str) -> ModuleType:
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_a_hostile_message_makes_bounded_speech_in_the_real_piper_worker() -> None:
    """Issue 24 (defect 7): 420 characters of enclosed ideographs, braille, Myanmar signs and
    math symbols made 143 s of audio (one unit 69 s) and took Piper from 162 to 1,585 MB.
    Now the symbols with no word go, the router keeps what the voice can say, and no unit is
    over MAX_UNIT_PHONEMES (about 20 s at Piper's ~20 phonemes a second; the bound is checked at
    15 a second). scripts/bench_speech_symbols.py --piper prints both paths."""
    bench = _load_script("bench_speech_symbols")
    bound_s = MAX_UNIT_PHONEMES / 15
    async with AsyncExitStack() as stack:
        backends = await open_backends(
            BackendOptions(llm="scripted", tts="piper", stt="none"), stack
        )
        seconds = []
        for unit in bench.units_of(bench.HOSTILE_MESSAGE, filtered=True):
            seconds.append(await _speech_seconds(backends.tts, unit))
        # Symbols that do have words pass every filter, and still add up: 100 of them in one
        # unit would be ~1,700 phonemes (80 s); the unit is cut at MAX_UNIT_PHONEMES.
        math = await _speech_seconds(backends.tts, ("≤ ≥ ≠ ± ≈ " * 20)[:199])
    assert len(seconds) >= 2
    assert max(seconds) <= bound_s, seconds
    assert sum(seconds) <= len(seconds) * bound_s
    assert sum(seconds) > 5  # the words and the symbols that have words are still spoken
    assert bound_s / 3 < math <= bound_s


async def _speech_seconds(tts: Any, text: str) -> float:
    seconds = 0.0
    async for pcm in tts.synthesize(text):
        seconds += pcm.samples / pcm.sample_rate
    return seconds


async def test_korean_units_are_spoken_by_espeak_and_unknown_scripts_are_skipped() -> None:
    script = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    script.write('["Hello there. ", "안녕하세요. 만나서 반갑습니다. ", "สวัสดีครับ. ", "Bye now."]')
    script.close()
    try:
        async with serving(llm=f"scripted:{script.name}", tts="piper") as server:
            async with ChatConnection(server.url) as conn:
                events = await collect_answer(conn, "hi")
    finally:
        os.unlink(script.name)
    chunks = [e for e in events if e["type"] == "audio.chunk"]
    spoken = [c["text"] for c in chunks if c["text"]]
    assert spoken == ["Hello there.", "안녕하세요.", "만나서 반갑습니다.", "Bye now."]
    korean = [c for c in chunks if c["segment"] in (1, 2)]
    data = b"".join(decode_wav(base64.b64decode(c["audio"]))[0] for c in korean)
    assert _rms(np.frombuffer(data, "<i2")) > 300
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["tts_failed"]
    assert "thai" in errors[0]["message"] and "skipped" in errors[0]["message"]
    assert events[-1]["status"] == "completed"


async def test_a_user_graph_remembers_across_turns() -> None:
    async with serving(llm="graph:examples.memory_bot:graph", tts="tone") as server:
        async with ChatConnection(server.url) as conn:
            first = await collect_answer(conn, "I like tea")
            second = await collect_answer(conn, "and cake")
    assert "You said: I like tea" in first[-1]["text"]
    assert second[-1]["text"] == "That makes 2 messages. Before this one you said: I like tea."


async def test_sqlite_memory_survives_a_restart_and_a_session_resumes(tmp_path: Path) -> None:
    options = {"llm": "graph:examples.memory_bot:graph", "tts": "tone"}
    memory = f"sqlite:{tmp_path / 'chats.db'}"
    async with serving(memory=memory, **options) as server, ChatConnection(server.url) as conn:
        await collect_answer(conn, "remember the apples")
        session_id = conn.session["session_id"]
    async with serving(memory=memory, **options) as server, ChatConnection(server.url) as conn:
        await conn.send({"type": "session.resume", "session_id": session_id})
        async with asyncio.timeout(WAIT_S):
            resumed = await conn.next_event()
        assert resumed == {"type": "session.resumed", "session_id": session_id, "messages": 2}
        events = await collect_answer(conn, "what did I say?")
        assert events[-1]["text"].endswith("you said: remember the apples.")
        await conn.send({"type": "session.resume", "session_id": "no-such-session"})
        async with asyncio.timeout(WAIT_S):
            error = await conn.next_event()
        assert error["code"] == "unknown_session"


async def test_sqlite_memory_set_up_waits_out_a_busy_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`serve --workers 2` on a new file: both processes create the tables at once, and SQLite
    answers one "database is locked" (on a loaded machine the loser's server exited). Here
    another connection holds the file; the set-up tries again until it is free."""
    import sqlite3

    path = tmp_path / "chats.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    async with AsyncExitStack() as stack:
        setting_up = asyncio.create_task(open_checkpointer(f"sqlite:{path}", stack))
        async with asyncio.timeout(WAIT_S):
            while "setting it up again" not in caplog.text:  # the first attempt gave up
                assert not setting_up.done(), setting_up.exception()
                await asyncio.sleep(0.05)
        holder.execute("COMMIT")
        holder.close()
        async with asyncio.timeout(WAIT_S):
            await setting_up
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert {"checkpoints", "writes"} <= tables


def test_a_bad_memory_or_llm_spec_is_a_clear_config_error() -> None:
    for options in ({"memory": "redis://x"}, {"llm": "graph:no_such_module:g"}, {"llm": "gpt"}):
        with pytest.raises(ConfigError):
            asyncio.run(_open(BackendOptions(tts="tone", **options)))


async def _open(options: BackendOptions) -> None:
    async with AsyncExitStack() as stack:
        await open_backends(options, stack)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def openai_server() -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on loopback, serving the embedded GGUF.

    It dies with the test process, even a killed one (tests/process_guard.py).
    """
    port = _free_port()
    process = spawn(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--model_alias", "smol"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        assert process.stderr is not None
        for line in process.stderr:  # uvicorn says when it accepts connections
            if "Uvicorn running" in line:
                break
        else:
            raise AssertionError("llama_cpp.server exited before serving")
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
        yield url
    finally:
        stop(process, timeout=30)


async def test_openai_compatible_server_answers_through_the_pipeline(openai_server: str) -> None:
    async with serving(
        llm="openai", openai_base_url=openai_server, openai_model="smol", tts="tone", max_tokens=40
    ) as server:
        assert server.health()["llm"] == "openai:smol"
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "Say hello.")
    assert events[-1]["status"] == "completed", events
    deltas = [e for e in events if e["type"] == "text.delta"]
    assert len(deltas) > 1  # streamed token by token, not in one piece
    assert events[-1]["text"].strip()
    assert any(e["type"] == "audio.chunk" for e in events)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found: run scripts/setup.sh test")
    return found[-1]


PG_PREFIX = "voicechat-pg-"  # its directories in the system temp dir (process_guard.owned_tempdir)
PG_START_TIMEOUT_S = 60.0  # bound on initdb, and on the server's start-up (~1 s)


def _pg_drop_stale_segment(base: Path) -> None:
    """Remove the SysV shared-memory segment a killed postmaster left, once nothing uses it.

    A postmaster that shuts down removes it; one that is killed cannot. postmaster.pid's 7th
    line holds its key and id; /proc/sysvipc/shm says whether any process is still attached.
    """
    try:
        key, shmid = (base / "data" / "postmaster.pid").read_text().splitlines()[6].split()
        segments = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except (OSError, IndexError, ValueError):
        return
    for line in segments:
        fields = line.split()  # key shmid perms size cpid lpid nattch ...
        if fields[:2] == [key, shmid] and fields[6] == "0":
            with contextlib.suppress(OSError):  # no ipcrm (util-linux): it stays, nothing worse
                subprocess.run(["ipcrm", "-m", shmid], capture_output=True, check=False)


def _pg_wait_ready(server: subprocess.Popen[bytes], data: Path, log: Path) -> None:
    """Poll postmaster.pid until its status line says "ready" (what `pg_ctl -w` waits for)."""
    deadline = time.monotonic() + PG_START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited ({server.returncode}):\n{log.read_text()}")
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) > 7 and lines[7].strip() == "ready":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"postgres not ready after {PG_START_TIMEOUT_S} s:\n{log.read_text()}"
            )
        time.sleep(0.05)  # poll interval, not a synchronisation


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server: own data directory, own port, own socket directory.

    `postgres` runs in the foreground as our direct child (not through `pg_ctl start`, which
    daemonises it, nor `runuser`, which would stand in between), so it dies with the test
    process even when that is killed; its backends follow the postmaster (tests/process_guard.py).
    Its dynamic shared memory lives in the data directory, which a later run removes if a killed
    one could not.
    """
    user = "postgres" if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root
    with owned_tempdir(PG_PREFIX, on_stale=_pg_drop_stale_segment) as base:
        data, run, log = base / "data", base / "run", base / "log"
        run.mkdir()
        if user:
            shutil.chown(base, user)
            shutil.chown(run, user)
        initdb = spawn(
            [_pg_bin("initdb"), "-D", str(data), "-U", "voicechat", "-A", "trust"],
            user=user, cwd=base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            output, _ = initdb.communicate(timeout=PG_START_TIMEOUT_S)
        finally:
            stop(initdb)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{output.decode()}")
        port = _free_port()
        with open(log, "wb") as log_file:
            server = spawn(
                [_pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(run),
                 "-c", "listen_addresses=127.0.0.1", "-c", "dynamic_shared_memory_type=mmap"],
                user=user, cwd=base, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _pg_wait_ready(server, data, log)
            yield f"postgresql://voicechat@127.0.0.1:{port}/postgres"
        finally:
            stop(server, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown


async def test_two_servers_share_conversations_through_postgres(postgres_url: str) -> None:
    options = {"llm": "graph:examples.memory_bot:graph", "tts": "tone", "memory": postgres_url}
    async with serving(**options) as first, serving(**options) as second:
        async with ChatConnection(first.url) as conn:
            await collect_answer(conn, "blue is my colour")
            session_id = conn.session["session_id"]
        async with ChatConnection(second.url) as conn:  # as if a load balancer moved us
            await conn.send({"type": "session.resume", "session_id": session_id})
            async with asyncio.timeout(WAIT_S):
                assert (await conn.next_event())["type"] == "session.resumed"
            events = await collect_answer(conn, "what colour?")
    assert events[-1]["text"].endswith("you said: blue is my colour.")


async def test_servers_starting_together_on_a_new_database_all_come_up(postgres_url: str) -> None:
    """Every server creates the checkpointer's tables at start-up; several at the same instant
    on an empty database used to collide (a duplicate key in LangGraph's migration table)."""
    import uuid

    import psycopg

    database = f"fresh_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        await admin.execute(f"CREATE DATABASE {database}")
    url = postgres_url.rsplit("/", 1)[0] + f"/{database}"

    async def open_one() -> None:
        async with AsyncExitStack() as stack:
            await open_checkpointer(url, stack)

    results = await asyncio.gather(*(open_one() for _ in range(6)), return_exceptions=True)
    assert [r for r in results if r is not None] == []

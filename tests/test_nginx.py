"""Scale-out behind a real load balancer: nginx (Debian's package) running
deploy/nginx/voicechat.conf in front of two `voicechat serve` processes that share one PostgreSQL.

Everything is a real process on loopback: PostgreSQL (tests/test_backends.py's fixture), two
`python -m voicechat serve --memory postgres://...` and nginx in the foreground with its own
prefix, pid file, logs and temp directories. The site file is used as it is in the repository,
only its two upstream ports and its listen line changed; around it, the few lines Debian's
/etc/nginx/nginx.conf would give it (events, the http block, the paths). The servers start one
after the other, as docs/deployment.md says (the first creates the tables).

The servers run the example memory graph (`--llm graph:examples.memory_bot:graph`), whose
answers repeat what the conversation held, so an answer shows whether the history reached the
server that gave it; or a scripted LLM whose answer stalls after one sentence, to stop a server
while an answer is in flight. What a conversation holds is also read back from PostgreSQL.

Each daemon dies with the test process, even a killed one (tests/process_guard.py): nginx with
its worker processes, which outlive a killed master, through `spawn_group`;
`test_a_killed_run_leaves_nothing_behind` checks it. Waits poll a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from voicechat.client.connection import ChatConnection, ConnectionLost
from voicechat.tui.app import VoiceChatApp

from .conftest import read_until
from .process_guard import owned_tempdir, spawn, spawn_group, stop
from .test_backends import (  # noqa: F401  (postgres_url: a fixture)
    PG_PREFIX,
    _free_port,
    _pg_drop_stale_segment,
    postgres_url,
)
from .test_talk import notices, say, status, until
from .test_test_daemons import RUN_ENV, _alive, _descendants, _left_behind

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "nginx" / "voicechat.conf"
# What the site file says, and what the test puts in its place.
SITE_UPSTREAMS = ("server 127.0.0.1:8765 ", "server 127.0.0.1:8766 ")
SITE_LISTEN = "listen 8080;"
LLM = "graph:examples.memory_bot:graph"
NGINX_PREFIX = "voicechat-nginx-"  # its directories in the system temp dir (owned_tempdir)
START_S = 60.0  # bound on a server's or nginx's start-up (imports, PostgreSQL set-up; ~2 s)
WAIT_S = 20.0  # bound on any other single wait
POLL_S = 0.02  # poll interval, not a synchronisation

HOLD_REPORT_ENV = "VOICECHAT_TEST_NGINX_REPORT"  # hold_stack: where to write the process tree
HOLD_RELEASE_ENV = "VOICECHAT_TEST_NGINX_RELEASE"  # hold_stack: a file that ends the hold


def _nginx_bin() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if not found:
        pytest.fail("nginx not installed: run scripts/setup.sh test (Debian package nginx)")
    return found


def render_site(upstreams: tuple[int, int], listen: int) -> str:
    """deploy/nginx/voicechat.conf with the servers' ports and nginx's own (on loopback)."""
    text = SITE.read_text()
    pairs = zip(SITE_UPSTREAMS, upstreams, strict=True)
    wanted = {old: f"server 127.0.0.1:{port} " for old, port in pairs}
    wanted[SITE_LISTEN] = f"listen 127.0.0.1:{listen};"
    for old, new in wanted.items():
        assert text.count(old) == 1, f"{SITE} should say {old!r} once: the test replaces it"
        text = text.replace(old, new)
    return text


def main_config(base: Path) -> str:
    """What Debian's /etc/nginx/nginx.conf puts around a site, with this run's own paths.

    As root nginx's workers run as `nobody` (no `user` line, as in Debian's `www-data` set-up
    they do not run as root); nothing they touch is in `base` but the temp directories, which
    nginx itself creates for them.
    """
    temp = "\n".join(
        f"    {kind}_temp_path {base / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
worker_processes 2;
pid {base / "nginx.pid"};
error_log {base / "error.log"} warn;
events {{
    worker_connections 768;
}}
http {{
    access_log {base / "access.log"};
{temp}
    include {base / "voicechat.conf"};
}}
"""


def _wait(
    condition: Callable[[], bool], what: str, alive: list[Any], timeout: float,
    log: Callable[[], str] = str,
) -> None:  # fmt: skip
    """Poll `condition` until it holds; fail, with `log()`, if a process in `alive` ends or
    time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in alive:
            if process.poll() is not None:
                raise AssertionError(
                    f"{what}: {process.args[:4]} exited ({process.returncode})\n{log()}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log()}")
        time.sleep(POLL_S)


def _answers_health(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"


@dataclass
class Stack:
    """Two servers behind nginx; `servers[0]` is the first `server` line of the upstream."""

    servers: list[Server]
    nginx: subprocess.Popen[bytes]
    port: int
    base: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/chat/stream"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.base / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def describe(self) -> str:
        """Every log, for a failure message."""
        parts = [f"--- nginx error.log\n{self.error_log()}"]
        for server in self.servers:
            parts.append(f"--- server :{server.port}\n{server.log.read_text(errors='replace')}")
        return "\n".join(parts)


def _start_server(llm: str, memory: str, base: Path, env: dict[str, str]) -> Server:
    port = _free_port()
    log = base / f"server-{port}.log"
    with open(log, "wb") as out:
        process = spawn(
            [sys.executable, "-m", "voicechat", "serve", "--llm", llm, "--tts", "tone",
             "--memory", memory, "--port", str(port)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Server(port, process, log)


def _wait_ready(server: Server) -> None:
    _wait(
        lambda: _answers_health(server.health_url),
        f"voicechat serve on :{server.port}",
        [server.process],
        START_S,
        lambda: server.log.read_text(errors="replace"),
    )


@pytest.fixture
def stack(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[Stack]:  # noqa: F811
    """PostgreSQL (the module's), two `voicechat serve` on it, nginx in front with the site.

    The servers run the memory graph, or (indirect parametrisation) a scripted LLM's script.
    """
    nginx_bin = _nginx_bin()
    script = getattr(request, "param", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    servers: list[Server] = []
    nginx: subprocess.Popen[bytes] | None = None
    with owned_tempdir(NGINX_PREFIX) as base:
        if os.geteuid() == 0:
            base.chmod(0o755)  # nginx's workers (nobody) reach their temp directories in it
        llm = LLM
        if script is not None:
            (base / "script.json").write_text(json.dumps(script))
            llm = f"scripted:{base / 'script.json'}"
        try:
            # One after the other: the first one creates PostgreSQL's tables (docs/deployment.md).
            for _ in range(2):
                servers.append(_start_server(llm, postgres_url, base, env))
                _wait_ready(servers[-1])
            port = _free_port()
            (base / "voicechat.conf").write_text(
                render_site((servers[0].port, servers[1].port), port)
            )
            (base / "nginx.conf").write_text(main_config(base))
            with open(base / "nginx.out", "wb") as out:
                nginx = spawn_group(
                    [nginx_bin, "-p", str(base), "-e", str(base / "error.log"),
                     "-c", str(base / "nginx.conf"), "-g", "daemon off;"],
                    cwd=base, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            result = Stack(servers, nginx, port, base)
            _wait(
                lambda: _answers_health(f"{result.http}/healthz"),
                f"nginx on :{port}",
                [nginx],
                START_S,
                lambda: (base / "nginx.out").read_text() + result.error_log(),
            )
            yield result
        finally:
            if nginx is not None:
                stop(nginx)  # SIGTERM: nginx's fast shutdown
            for server in servers:
                stop(server.process)


def _sessions(server: Server) -> int | None:
    """The server's open sessions, from its own /healthz; None when it does not answer."""
    try:
        return int(httpx.get(server.health_url, timeout=2).json()["sessions"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def _holder(stack: Stack) -> tuple[Server, Server]:
    """(the server that holds our one connection, the other one), from their /healthz."""
    deadline = time.monotonic() + WAIT_S
    while True:
        counts = [await asyncio.to_thread(_sessions, server) for server in stack.servers]
        if counts.count(1) == 1 and counts.count(0) == 1:
            held = counts.index(1)
            return stack.servers[held], stack.servers[1 - held]
        if time.monotonic() > deadline:
            raise AssertionError(f"no single server holds the connection: {counts}")
        await asyncio.sleep(POLL_S)


async def _stored_messages(memory: str, session_id: str) -> list[tuple[str, str]]:
    """(type, text) of every message PostgreSQL holds for a conversation."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    async with AsyncPostgresSaver.from_conn_string(memory) as saver:
        stored = await saver.aget_tuple({"configurable": {"thread_id": session_id}})
    assert stored is not None, f"PostgreSQL holds no conversation {session_id}"
    return [(m.type, m.content) for m in stored.checkpoint["channel_values"]["messages"]]


async def test_talk_resumes_on_the_other_server_when_its_server_is_killed(
    stack: Stack,
    postgres_url: str,  # noqa: F811
) -> None:
    """`voicechat talk` (the Textual app, Pilot) through nginx: the server holding its connection
    is SIGKILLed between two turns; the app reconnects through nginx, which skips the dead
    server, resumes on the other, and the next answer is built from the history."""
    app = VoiceChatApp(stack.url, device="null")
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.connection is not None, "the connection")
        assert app.connection is not None
        conversation = app.connection.session["session_id"]
        first = await say(pilot, app, "I like tea")
        assert first.text == "Nice to meet you. You said: I like tea. Tell me more."
        held, other = await _holder(stack)

        stop(held.process, signal.SIGKILL)  # the machine is gone: no close frame, no drain
        await until(
            pilot,
            lambda: any("conversation continues" in text for text in notices(app)),
            "the resumed notice",
        )
        assert any("Disconnected" in text for text in notices(app)), notices(app)
        assert any("(2 messages kept)" in text for text in notices(app)), notices(app)
        assert not any("new one" in text for text in notices(app)), notices(app)
        assert "connected" in status(app)
        assert await asyncio.to_thread(_sessions, other) == 1  # the survivor holds it now
        assert app.connection is not None
        assert app.connection.session["session_id"] != conversation  # a new session ...
        assert app.session_id == conversation  # ... continuing the same conversation

        second = await say(pilot, app, "and cake")
        assert second.status == "completed", stack.describe()
        assert second.text == "That makes 2 messages. Before this one you said: I like tea."

    assert await _stored_messages(postgres_url, conversation) == [
        ("human", "I like tea"),
        ("ai", "Nice to meet you. You said: I like tea. Tell me more."),
        ("human", "and cake"),
        ("ai", "That makes 2 messages. Before this one you said: I like tea."),
    ]


# An answer that writes its first sentence, then waits far longer than any test.
SLOW_ANSWER = ["One sentence here. ", {"text": "And the rest, much later.", "delay_ms": 600_000}]


@pytest.mark.parametrize("stack", [SLOW_ANSWER], indirect=True, ids=["slow-answer"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["drained", "killed"])
async def test_an_answer_in_flight_when_its_server_stops(
    stack: Stack,
    postgres_url: str,  # noqa: F811
    sig: signal.Signals,
) -> None:
    """Drained (SIGTERM), the server ends the answer in flight with response.done "cancelled"
    and keeps what was written; killed, the answer is lost and only the user's message is
    kept. Either way the conversation resumes on the other server through nginx."""
    async with ChatConnection(stack.url) as conn:
        conversation = conn.session["session_id"]
        await conn.send_user_message("first")
        await read_until(conn, "text.delta")
        held, _ = await _holder(stack)
        stopping = asyncio.create_task(asyncio.to_thread(stop, held.process, sig))
        events = []
        with pytest.raises(ConnectionLost) as lost:
            async with asyncio.timeout(WAIT_S):
                async for event in conn.events():
                    events.append(event)
        await stopping
    done = [event for event in events if event["type"] == "response.done"]
    if sig == signal.SIGTERM:
        assert "(1001)" in str(lost.value)  # nginx passed the server's close frame on
        assert [(d["status"], d["text"]) for d in done] == [("cancelled", "One sentence here. ")]
        # The history keeps what was spoken of it: the units whose audio had been sent.
        spoken = " ".join(e["text"] for e in events if e["type"] == "audio.chunk" and e["text"])
        kept = [("human", "first"), ("ai", spoken)]
    else:
        assert done == [], done
        kept = [("human", "first")]

    async with ChatConnection(stack.url) as conn:
        await conn.send({"type": "session.resume", "session_id": conversation})
        async with asyncio.timeout(WAIT_S):
            resumed = await conn.next_event()
    assert resumed == {"type": "session.resumed", "session_id": conversation, "messages": len(kept)}
    assert await _stored_messages(postgres_url, conversation) == kept


def _ask(stack: Stack, text: str) -> tuple[int, list[dict[str, Any]], str]:
    """`voicechat ask TEXT --json` through nginx: (exit code, JSON lines, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    process = spawn(
        [sys.executable, "-m", "voicechat", "ask", text, "--server", stack.url, "--json"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=WAIT_S)
    finally:
        stop(process)
    return process.returncode, [json.loads(line) for line in out.splitlines()], err


def test_ask_and_healthz_through_nginx_while_a_server_is_down(stack: Stack) -> None:
    """The first server of the upstream is drained (SIGTERM) and stays down: every `voicechat
    ask` through nginx is answered by the other one, /healthz too."""
    down, up = stack.servers
    stop(down.process)  # SIGTERM: drained, exits 0
    assert down.process.returncode == 0, down.log.read_text()

    for number in range(4):
        code, lines, err = _ask(stack, f"question {number}")
        assert code == 0, f"{err}\n{stack.describe()}"
        assert lines[0]["type"] == "session.created"
        done = lines[-1]
        assert done["type"] == "response.done" and done["status"] == "completed", lines
        assert done["text"] == f"Nice to meet you. You said: question {number}. Tell me more."
        assert any(line["type"] == "audio.chunk" for line in lines)

    health = httpx.get(f"{stack.http}/healthz", timeout=WAIT_S)
    assert health.status_code == 200
    assert health.headers["content-type"] == "application/json"
    assert health.json()["status"] == "ok"
    assert health.json()["llm"] == httpx.get(up.health_url, timeout=WAIT_S).json()["llm"]
    # nginx did try the dead server, and went on to the other one.
    refused = re.compile(
        rf"connect\(\) failed \(111: Connection refused\) while connecting to upstream.*"
        rf"upstream: \"http://127\.0\.0\.1:{down.port}/"
    )
    assert refused.search(stack.error_log()), stack.error_log()


async def test_the_page_and_its_origin_through_nginx(stack: Stack) -> None:
    """nginx passes the Host the browser used: the page's Content-Security-Policy names it, and
    a browser's own origin by IP is let in; by a name it is refused without --allow-origin."""
    page = await asyncio.to_thread(httpx.get, f"{stack.http}/", timeout=WAIT_S)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f"ws://127.0.0.1:{stack.port}" in page.headers["content-security-policy"]

    origin = f"http://127.0.0.1:{stack.port}"
    async with websockets.connect(stack.url, origin=origin, open_timeout=WAIT_S) as ws:
        async with asyncio.timeout(WAIT_S):
            assert json.loads(await ws.recv())["type"] == "session.created"

    named = f"ws://chat.example.test:{stack.port}/v1/chat/stream"
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(
            named, origin=f"http://chat.example.test:{stack.port}", host="127.0.0.1",
            port=stack.port, open_timeout=WAIT_S,
        )  # fmt: skip
    assert refused.value.response.status_code == 403
    assert b"--allow-origin http://chat.example.test" in refused.value.response.body


# --- a killed run leaves nothing behind ----------------------------------------------------------


def hold_stack(stack: Stack) -> None:
    """Run only in a child pytest: start the stack, report the process tree, hold.

    Not named test_*: a normal run never collects it (the child uses -o python_functions).
    """
    report = Path(os.environ[HOLD_REPORT_ENV])
    partial = report.with_suffix(".partial")
    tree = {"holder": os.getpid(), "processes": _descendants(), "nginx_base": str(stack.base)}
    partial.write_text(json.dumps(tree))
    partial.replace(report)
    release, deadline = Path(os.environ[HOLD_RELEASE_ENV]), time.monotonic() + 300
    while not release.exists():
        if time.monotonic() > deadline:
            pytest.fail("held 300 s: neither killed nor released")
        time.sleep(POLL_S)


def _named(processes: list[dict[str, Any]], test: Callable[[list[str]], bool]) -> list[int]:
    return [p["pid"] for p in processes if test(p["argv"])]


def test_a_killed_run_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGKILL a pytest that holds the whole stack: nginx's master and workers, both servers and
    PostgreSQL with its backends are gone within a bound; no teardown ran. What it could not
    remove (its temp directories, PostgreSQL's SysV segment) the next run sweeps."""
    report, release = tmp_path / "report.json", tmp_path / "release"
    marker = uuid.uuid4().hex
    env = {**os.environ, HOLD_REPORT_ENV: str(report), HOLD_RELEASE_ENV: str(release)}
    env[RUN_ENV] = marker  # every descendant that keeps its environment carries it
    with open(tmp_path / "output.txt", "wb") as out:
        child = spawn(
            [sys.executable, "-m", "pytest", f"{Path(__file__)}::hold_stack",
             "-o", "python_functions=hold_stack", "-p", "no:cacheprovider",
             f"--basetemp={tmp_path / 'tmp'}", "-q"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait(
            report.exists,
            "the child's stack",
            [child],
            START_S * 3,
            lambda: (tmp_path / "output.txt").read_text(errors="replace"),
        )
        tree = json.loads(report.read_text())
    finally:
        stop(child, signal.SIGKILL)
    processes = tree["processes"]
    masters = _named(processes, lambda argv: argv[0].startswith("nginx: master"))
    workers = _named(processes, lambda argv: argv[0].startswith("nginx: worker"))
    servers = _named(processes, lambda argv: argv[1:4] == ["-m", "voicechat", "serve"])
    postgres = _named(processes, lambda argv: Path(argv[0]).name == "postgres")
    assert len(masters) == 1 and len(workers) == 2 and len(servers) == 2, processes
    assert len(postgres) == 1 and any(p["ppid"] in postgres for p in processes), processes
    left = _left_behind(tree, marker)
    for process in processes:  # a failure leaves nothing running either (e.g. nginx workers)
        if _alive(process):
            os.kill(process["pid"], signal.SIGKILL)
    assert not left, f"alive after the test process died of SIGKILL: {left}"

    stale = [Path(tree["nginx_base"])]
    stale += [Path(p["cwd"]).parent for p in processes if p["pid"] in postgres]  # in base/data
    assert all(directory.is_dir() for directory in stale), stale
    with owned_tempdir(NGINX_PREFIX), owned_tempdir(PG_PREFIX, on_stale=_pg_drop_stale_segment):
        pass  # what the next run does first
    assert not any(directory.exists() for directory in stale), stale

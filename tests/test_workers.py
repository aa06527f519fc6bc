"""Native engines in worker processes: real processes, real signals, the real embedded models.

A worker that dies costs the answers that were using it (`llm_failed` / `tts_failed`), never the
server: sessions stay connected, /healthz shows the restart, and the next answer works. A worker
that cannot start makes `serve` exit with code 4 and one line. Nothing outlives the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from voicechat.client.connection import ChatConnection
from voicechat.server import VoiceChatServer
from voicechat.workers import Worker, WorkerDied
from voicechat.workers.supervisor import describe_exit

from .conftest import WAIT_S, collect_answer, read_answer, read_until
from .test_backends import serving

LONG_PROMPT = "Count from one to three hundred, writing every number as a word."


def process_state(pid: int) -> str | None:
    """The kernel's state letter for `pid` (R, S, T, Z...), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


async def until(condition: Any, what: str) -> None:
    """Poll a condition the code under test exposes no event for; bounded, so a hang fails."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 (no event exists for "a request reached it")
            await asyncio.sleep(0.01)


def worker_pid(server: VoiceChatServer, name: str) -> int:
    pid = server.health()["workers"][name]["pid"]
    assert isinstance(pid, int), server.health()
    return pid


def audio_chunks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == "audio.chunk"]


def test_exit_statuses_are_described_by_signal_name() -> None:
    assert describe_exit(-signal.SIGILL) == "crashed with SIGILL (illegal instruction)"
    assert describe_exit(-signal.SIGSEGV) == "crashed with SIGSEGV (segmentation fault)"
    assert describe_exit(3) == "exited with code 3"


async def test_llm_worker_killed_mid_answer_costs_that_answer_only() -> None:
    async with serving(llm="local", tts="tone", max_tokens=1000) as server:
        health = server.health()
        assert health["status"] == "ok"
        assert health["workers"]["llm"]["state"] == "ready"
        assert health["workers"]["llm"]["restarts"] == 0
        first_pid = worker_pid(server, "llm")
        async with ChatConnection(server.url) as victim, ChatConnection(server.url) as bystander:
            await victim.send_user_message(LONG_PROMPT)
            await read_until(victim, "text.delta")  # the worker is generating this answer
            os.kill(first_pid, signal.SIGKILL)
            error = await read_until(victim, "error")
            assert error["code"] == "llm_failed"
            assert "SIGKILL" in error["message"]
            done = await read_until(victim, "response.done")
            assert done["status"] == "failed"

            worker = server.workers["llm"]
            await worker.wait_ready(WAIT_S)  # restarted behind the failed answer
            health = server.health()["workers"]["llm"]
            assert health["state"] == "ready"
            assert health["restarts"] == 1
            assert health["pid"] != first_pid and alive(health["pid"])
            assert not alive(first_pid)

            # The same connection and the one that only watched both get full answers.
            for conn in (victim, bystander):
                events = await collect_answer(conn, "Say hello.")
                assert events[-1]["status"] == "completed", events
                assert audio_chunks(events)


async def test_voice_worker_killed_mid_unit_loses_only_the_units_in_flight(
    tmp_path: Path,
) -> None:
    script = tmp_path / "answer.json"
    script.write_text(json.dumps(["The first sentence is here. ", "The second one follows."]))
    async with serving(llm=f"scripted:{script}", tts="piper") as server:
        pid = worker_pid(server, "piper")
        voice = server.workers["piper"]
        os.kill(pid, signal.SIGSTOP)  # frozen: whatever it is asked stays in flight
        async with ChatConnection(server.url) as conn:
            await conn.send_user_message("Talk.")
            await until(lambda: voice.health()["in_flight"] >= 1, "a unit in flight")
            os.kill(pid, signal.SIGKILL)
            events = await read_answer(conn)
            errors = [event for event in events if event["type"] == "error"]
            assert errors and all(error["code"] == "tts_failed" for error in errors), errors
            assert "SIGKILL" in errors[0]["message"]
            assert events[-1]["status"] == "completed"
            lost = {int(error["message"].split()[2]) for error in errors}  # "speech unit N lost"
            assert 0 in lost
            assert server.health()["workers"]["piper"]["restarts"] == 1

            await voice.wait_ready(WAIT_S)
            again = await collect_answer(conn, "Talk again.")
            assert again[-1]["status"] == "completed"
            assert {chunk["segment"] for chunk in audio_chunks(again)} == {0, 1}


# --- start-up: the self-check and the exit code ---------------------------------------------


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.fixture
def serve_process() -> Iterator[Any]:
    """Start `voicechat serve` (the real CLI) and make sure it and its children end."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "voicechat", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=_no_core_dumps,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=WAIT_S)


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def worker_processes(marker: str) -> list[int]:
    """Worker processes whose command line mentions `marker` (e.g. a test's model path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if (
                "voicechat.workers.child" in cmdline
                and marker in cmdline
                and alive(int(entry.name))
            ):
                pids.append(int(entry.name))
    return pids


def test_a_corrupt_gguf_fails_the_start_with_exit_code_4_and_one_line(
    tmp_path: Path, serve_process: Any
) -> None:
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    process = serve_process("--llm-model-path", str(bad), "--tts", "tone")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 4, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("voicechat: the local LLM failed while loading: "), stderr
    assert worker_processes(str(bad)) == []


def test_a_worker_killed_during_its_self_check_fails_the_start(serve_process: Any) -> None:
    process = serve_process("--tts", "tone", env={"VOICECHAT_WORKER_STOP_AT": "llm:self-check"})
    deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
    pid = None
    while pid is None and time.monotonic() < deadline and process.poll() is None:
        stopped = [child for child in children_of(process.pid) if process_state(child) == "T"]
        pid = stopped[0] if stopped else None
        time.sleep(0.05)
    assert pid is not None, "the LLM worker never reached its self-check"
    os.kill(pid, signal.SIGILL)  # what a wrong CPU build does there; pending until it runs
    os.kill(pid, signal.SIGCONT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 4, stderr
    assert stderr.strip().splitlines()[-1] == (
        "voicechat: the local LLM crashed with SIGILL (illegal instruction) during its start-up "
        "self-check: llama-cpp-python was built for another CPU; run `bash scripts/setup.sh` again"
    )
    assert not alive(pid)
    assert children_of(process.pid) == []


def test_workers_die_with_a_killed_server(serve_process: Any) -> None:
    process = serve_process("--log-level", "info")
    assert process.stderr is not None
    for line in process.stderr:
        if "serving ws://" in line:
            port = int(line.split("ws://127.0.0.1:", 1)[1].split("/", 1)[0])
            break
    else:
        pytest.fail("the server never started")
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=WAIT_S).json()
    pids = [worker["pid"] for worker in health["workers"].values()]
    # llm, piper, espeak, and speech input: vad, whisper, turn (the end-of-turn model)
    assert len(pids) == 6 and all(alive(pid) for pid in pids), health
    os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5  # they die at once (PR_SET_PDEATHSIG); a hang guard
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [pid for pid in pids if alive(pid)] == []


# --- the supervisor, on a real worker (espeak-ng: ready in ~0.1 s) ---------------------------


async def test_a_stuck_worker_is_killed_and_its_request_fails() -> None:
    worker = Worker("espeak", {}, label="espeak-ng", stall_timeout_s=1.0)
    await worker.start()
    try:
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # alive, answering nothing: a deadlock looks like this
        with pytest.raises(WorkerDied, match="SIGKILL"):
            async with asyncio.timeout(WAIT_S):
                async for _ in worker.stream({"text": "안녕하세요.", "voice": "ko"}):
                    pass
        await worker.wait_ready(WAIT_S)
        assert worker.pid != pid and worker.restarts == 1
        assert [reply async for reply in worker.stream({"text": "안녕.", "voice": "ko"})]
    finally:
        await worker.aclose()
    assert not alive(pid)


async def test_a_stuck_worker_is_killed_while_requests_keep_coming() -> None:
    """The watchdog counts from the worker's last answer, not from the last request written:
    a stopped worker takes requests into its pipe all the same, so traffic must not keep it
    looking alive. Every request outstanding fails with the death."""
    worker = Worker("espeak", {}, label="espeak-ng", stall_timeout_s=1.0)
    await worker.start()
    failures: list[BaseException] = []

    async def one_request() -> None:
        try:
            async for _ in worker.stream({"text": "안녕하세요.", "voice": "ko"}):
                pass
        except WorkerDied as exc:
            failures.append(exc)

    requests: set[asyncio.Task[None]] = set()
    try:
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        async with asyncio.timeout(WAIT_S):
            # The death is judged by the restart count, not by the state: a restart can
            # run from kill to ready inside one pause of the loop, so "ready" is no sign.
            while worker.restarts == 0:
                task = asyncio.create_task(one_request())
                requests.add(task)
                # Traffic paced well inside the stall timeout (what kept the old clock young);
                # the wait for the kill is the loop condition, bounded by the timeout.
                await asyncio.sleep(0.1)
            await asyncio.gather(*requests)
        assert len(requests) > 1
        # All the requests written to it failed with its death (those sent after it went
        # down wait for the restart and are served by the new worker).
        assert failures and all("answered nothing" in str(f) for f in failures), failures
        assert "SIGKILL" in str(failures[0])
        await worker.wait_ready(WAIT_S)
        assert worker.pid != pid and worker.restarts == 1
        assert worker.health()["in_flight"] == 0
    finally:
        for task in requests:
            task.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
        await worker.aclose()
    assert not alive(pid)


async def test_a_worker_ignores_sigterm_meant_for_the_server() -> None:
    worker = Worker("espeak", {}, label="espeak-ng")
    await worker.start()
    try:
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)  # as systemd sends it to the whole group on stop
        replies = [reply async for reply in worker.stream({"text": "안녕.", "voice": "ko"})]
        assert replies and replies[0]["pcm"]
        assert worker.pid == pid and worker.restarts == 0
    finally:
        await worker.aclose()
    assert not alive(pid)


def process_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in raw if entry)


@pytest.mark.parametrize("operator_choice", [None, "ACTIVE"])
async def test_workers_openmp_threads_sleep_unless_the_operator_says_otherwise(
    operator_choice: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp's and CTranslate2's libgomp threads spin while they wait by default: on shared
    cores that made an end-of-turn call take seconds (scripts/bench_engine_threads.py)."""
    if operator_choice is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", operator_choice)
    worker = Worker("espeak", {}, label="espeak-ng")
    await worker.start()
    try:
        assert worker.pid is not None
        policy = process_environment(worker.pid).get("OMP_WAIT_POLICY")
        assert policy == (operator_choice or "PASSIVE")
    finally:
        await worker.aclose()


def niceness(pid: int) -> set[int]:
    """The niceness of each thread of a process (field 19 of /proc/PID/task/TID/stat)."""
    values = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        values.add(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
    return values


async def test_the_answers_llm_yields_the_cores_to_the_voice_and_the_turn_engines() -> None:
    """The embedded LLM writes on while Piper speaks the first unit; at the same priority its
    thread slowed Piper down by about half on 2 cores (docs/performance.md)."""
    from voicechat.workers.embedded import LLM_NICE, default_model_path, llm_worker

    ours = os.nice(0)
    llm, voice = llm_worker(default_model_path()), Worker("espeak", {}, label="espeak-ng")
    await llm.start()
    await voice.start()
    try:
        assert llm.pid is not None and voice.pid is not None
        assert LLM_NICE > 0
        assert niceness(llm.pid) == {ours + LLM_NICE}  # every thread, llama.cpp's included
        assert niceness(voice.pid) == {ours}
    finally:
        await llm.aclose()
        await voice.aclose()


async def test_modules_in_the_working_directory_do_not_shadow_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "queue.py").write_text("raise SystemExit('the wrong queue module')\n")
    monkeypatch.chdir(tmp_path)
    worker = Worker("espeak", {}, label="espeak-ng")
    try:
        await worker.start()
        assert worker.state == "ready"
    finally:
        await worker.aclose()


async def test_a_voice_worker_over_its_memory_limit_is_restarted_between_units() -> None:
    """Issue 24 (defect 7): Piper keeps the memory of the longest unit it spoke. With a limit
    below what a loaded Piper uses (~140 MB), the worker is replaced after every unit: the unit
    itself is complete, the next one is served by a fresh process, and nothing fails."""
    from voicechat.tts.piper import default_voice_path
    from voicechat.workers.embedded import piper_worker
    from voicechat.workers.supervisor import resident_bytes

    worker = piper_worker(default_voice_path(), max_rss_mb=64)
    await worker.start()
    try:
        pids = []
        for _ in range(2):
            pid = worker.pid
            assert pid is not None and (resident_bytes(pid) or 0) > 64 * 2**20
            pids.append(pid)
            replies = [reply async for reply in worker.stream({"text": "Hello there."})]
            assert sum(len(reply["pcm"]) for reply in replies) > 22050  # over 0.5 s of speech
            await worker.wait_ready(WAIT_S)  # the restart behind it
        assert worker.pid not in pids and len(set(pids)) == 2
        assert worker.restarts == 2
    finally:
        await worker.aclose()
    assert not any(alive(pid) for pid in pids)


async def test_a_voice_worker_under_its_memory_limit_is_kept() -> None:
    from voicechat.tts.piper import default_voice_path
    from voicechat.workers.embedded import piper_worker

    worker = piper_worker(default_voice_path(), max_rss_mb=4096)
    await worker.start()
    try:
        pid = worker.pid
        for _ in range(2):
            assert [reply async for reply in worker.stream({"text": "Hello there."})]
        assert worker.pid == pid and worker.restarts == 0
    finally:
        await worker.aclose()

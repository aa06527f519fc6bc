"""The server's side of a worker process: start it, stream requests through it, restart it.

Everything here runs on the event loop and never blocks: the worker's stdout is read by one task
per process, replies are routed to the request that asked, and a death (EOF, then the exit
status) fails every request in flight with `WorkerDied` before a fresh worker is started. A
worker that owes answers and sends nothing for `stall_timeout_s` is stuck: it is killed, and
that is handled as a death.
Workers are started from the event loop's thread, which lives as long as the server: Linux's
PR_SET_PDEATHSIG fires when the *thread* that forked the worker ends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from voicechat.workers import wire

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0  # load + self-check; a cold disk and a busy CPU can be slow
WAIT_READY_S = 60.0  # how long a request waits for a restarting worker before it fails
STOP_WAIT_S = 2.0  # after stdin closes, how long a worker gets to exit before SIGKILL
RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # the last one repeats
HEALTHY_AFTER_S = 60.0  # a worker that lived this long since its start resets the backoff
STALL_TIMEOUT_S = 30.0  # requests outstanding and not a frame for this long: the worker is stuck
WATCH_TICK_S = 1.0  # how often the watchdog looks (more often for a shorter stall timeout)
FAIL_FAST_AFTER = 2  # restarts failing in a row: requests fail at once instead of waiting

_SIGNAL_TEXT = {
    signal.SIGILL: "illegal instruction",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "abort",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating-point exception",
    signal.SIGKILL: "killed: kill -9 or the kernel's out-of-memory killer",
    signal.SIGTERM: "terminated",
}


class WorkerError(Exception):
    """A request failed inside a live worker (the engine raised); the worker goes on."""


class WorkerDied(WorkerError):
    """The worker died while the request was in flight; a fresh one is being started."""


class WorkerStartError(Exception):
    """The worker could not load its engine or failed its self-check; the message is one line."""


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory (Linux: /proc/PID/statm, a few µs); None elsewhere."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def describe_exit(returncode: int | None) -> str:
    """'crashed with SIGILL (illegal instruction)', 'exited with code 3', ..."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"was killed by signal {-returncode}"
        text = _SIGNAL_TEXT.get(sig)
        return f"crashed with {sig.name}" + (f" ({text})" if text else "")
    return f"exited with code {returncode}"


_STAGE_TEXT = {"loading": "while loading", "self-check": "during its start-up self-check"}


@dataclass
class _Process:
    """One incarnation of a worker: the OS process, its reader task, how far it got."""

    process: asyncio.subprocess.Process
    ready: asyncio.Future[dict[str, Any]]
    stage: str = "starting"
    fatal: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    # Requests written to it that it has not ended yet (with "end" or "error"): one it was
    # asked to cancel is still outstanding until it says so, as it may still be working on it.
    outstanding: set[int] = field(default_factory=set)
    last_frame: float = field(default_factory=time.monotonic)  # anything it sent
    busy_since: float = field(default_factory=time.monotonic)  # outstanding went from 0 to 1
    stalled: str | None = None  # why the watchdog killed it
    retired: str | None = None  # why it was asked to exit between requests (its memory)
    reader: asyncio.Task[int] | None = None
    stderr: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None

    def kill(self) -> None:
        """SIGKILL by pid while it runs (Popen.kill() could reap it behind asyncio's back)."""
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)

    @property
    def pid(self) -> int:
        return self.process.pid


def worker_environment() -> dict[str, str]:
    """The server's environment, with OpenMP's threads told to sleep at a barrier instead of
    spinning (unless the operator chose otherwise). llama.cpp and CTranslate2 run their threads
    under libgomp, whose default spins: on 2 cores shared by several engines, a thread that
    waits burns the core that the thread it waits for needs. One end-of-turn call took 7.6 s
    instead of 0.15 s beside two busy processes once, and an answer's prompt takes 586 ms (at
    worst 815) instead of 460 beside one; alone, sleeping costs 4-7 ms
    (python scripts/bench_engine_threads.py, docs/performance.md)."""
    return {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}


class Worker:
    """A supervised worker process running one engine (`kind`: llm, piper or espeak)."""

    def __init__(
        self,
        kind: str,
        settings: dict[str, Any],
        *,
        label: str,
        sigill_hint: str = "",
        ready_timeout_s: float = READY_TIMEOUT_S,
        wait_ready_s: float = WAIT_READY_S,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        max_outstanding: int | None = None,
        max_rss_bytes: int | None = None,
        nice: int = 0,
    ) -> None:
        self.kind = kind
        self.settings = settings
        self.label = label  # "the local LLM": how messages name it
        self.sigill_hint = sigill_hint  # what an illegal instruction most likely means here
        self.ready_timeout_s = ready_timeout_s
        self.wait_ready_s = wait_ready_s
        self.stall_timeout_s = stall_timeout_s
        # At most this many requests written to the worker and not ended (None: no limit). A
        # worker runs one request at a time; more only wait in its pipe and its unbounded
        # queue, where they cannot be reordered or dropped. Past it a request waits here.
        self.max_outstanding = max_outstanding
        # A worker whose resident memory is over this when it owes nothing is restarted
        # (None: never). Native engines keep memory they once needed (onnxruntime's arena after
        # one long unit); a fresh process gives it back.
        self.max_rss_bytes = max_rss_bytes
        # Added to the process's niceness (lower priority) when it starts: see llm_worker.
        self.nice = nice
        self.state = "stopped"  # starting, ready, restarting, stopped
        self.restarts = 0
        self.last_start_s: float | None = None  # spawn -> ready, for the last (re)start
        self._current: _Process | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()  # ready, given up or closed: wakes wait_ready()
        self._room = asyncio.Event()  # a request ended: one waiting for max_outstanding may go
        self._waiting = 0  # requests not written yet: the worker restarting, or no room
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._ids = itertools.count()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._failed_restarts = 0  # restarts in a row that did not come up

    @property
    def pid(self) -> int | None:
        return self._current.pid if self._current and self.state == "ready" else None

    def health(self) -> dict[str, Any]:
        """in_flight: written to the worker, not ended by it; waiting: not written yet."""
        current = self._current
        alive = current is not None and current.process.returncode is None
        return {
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "in_flight": len(current.outstanding) if alive and current else 0,
            "waiting": self._waiting,
        }

    async def start(self) -> None:
        """Start the worker and wait until its self-check passed; WorkerStartError if not."""
        if self._closing:
            raise WorkerStartError(f"{self.label} is shut down")
        process = await self._start_process()
        self._supervisor = asyncio.create_task(self._supervise(process), name=f"{self.kind}-sup")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until the worker is ready (after a restart too); WorkerError after `timeout_s`, and
        at once when it is shut down or its restarts keep failing (waiters are woken then)."""

        def settled() -> bool:
            return self._ready.is_set() or self._closing or self._failed_restarts >= FAIL_FAST_AFTER

        if not settled():
            try:
                async with asyncio.timeout(timeout_s or self.wait_ready_s), self._changed:
                    await self._changed.wait_for(settled)
            except TimeoutError:
                raise WorkerError(f"{self.label} is restarting; try again shortly") from None
        if self._closing:
            raise WorkerError(f"{self.label} is shut down")
        if not self._ready.is_set():
            raise WorkerError(f"{self.label} keeps failing to restart; try again later")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _slot(self) -> _Process:
        """The process to write a request to, once it is ready and has room for one more."""
        self._waiting += 1
        try:
            while True:
                while not self._ready.is_set():  # (cleared again if it died while we woke up)
                    await self.wait_ready()
                if self._closing:
                    raise WorkerError(f"{self.label} is shut down")
                current = self._current
                assert current is not None
                limit = self.max_outstanding
                if limit is None or len(current.outstanding) < limit:
                    return current
                self._room.clear()
                await self._room.wait()
        finally:
            self._waiting -= 1

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Run one request; yield its data frames. Leaving early cancels it in the worker."""
        request_id = next(self._ids)
        frame = wire.encode({"op": "run", "id": request_id, "req": request})
        if len(frame) > wire.MAX_FRAME_BYTES:
            raise WorkerError(f"request too large for {self.label} ({len(frame)} bytes)")
        current = await self._slot()
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[request_id] = replies
        finished = False
        try:
            self._write(current, frame, request_id)
            while True:
                reply = await replies.get()
                kind = reply["t"]
                if kind == "data":
                    yield reply
                    continue
                finished = True
                if kind == "end":
                    return
                if kind == "died":
                    raise WorkerDied(reply["message"])
                raise WorkerError(reply["message"])
        finally:
            self._pending.pop(request_id, None)
            if not finished:
                self._write(current, wire.encode({"op": "cancel", "id": request_id}))

    async def aclose(self) -> None:
        """End the worker: close its stdin (it exits), SIGKILL it if it does not, reap it."""
        self._closing = True
        self._ready.set()  # wakes every request waiting for a restart; they see _closing
        self._room.set()
        await self._notify()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._current is not None:
            await self._stop_process(self._current)
        self._fail_pending(f"{self.label} was shut down")
        self._ready.clear()
        self.state = "stopped"

    # --- one process ------------------------------------------------------------------------

    async def _start_process(self) -> _Process:
        """Spawn, wait for ready; on any failure the process is gone before this raises."""
        self.state = "starting"
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # not the working directory's modules (a queue.py there, say) first
                "-m",
                "voicechat.workers.child",
                self.kind,
                json.dumps(self.settings),
                str(os.getpid()),
                str(self.nice),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=worker_environment(),
            )
        except OSError as exc:  # out of file descriptors or processes, say
            raise WorkerStartError(f"cannot start {self.label}: {exc}") from None
        current = _Process(process, asyncio.get_running_loop().create_future())
        current.reader = asyncio.create_task(self._read(current), name=f"{self.kind}-reader")
        current.stderr = asyncio.create_task(self._forward_log(current), name=f"{self.kind}-log")
        current.watchdog = asyncio.create_task(self._watch(current), name=f"{self.kind}-watch")
        self._current = current
        done, _ = await asyncio.wait(
            {current.ready, current.reader},
            timeout=self.ready_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if current.ready in done:
            self.last_start_s = time.monotonic() - started
            self.state = "ready"
            self._room.set()
            log.info(
                "%s worker ready (pid %d) in %.2f s", self.kind, current.pid, self.last_start_s
            )
            # What the engine says of itself (for llama.cpp: the CPU features it was built for).
            log.info("%s engine: %s", self.kind, current.ready.result())
            self._ready.set()
            await self._notify()
            return current
        timed_out = not done
        await self._stop_process(current)
        code = process.returncode
        if timed_out:
            message = f"{self.label} did not start within {self.ready_timeout_s:.0f} s"
        elif current.fatal:
            message = f"{self.label} failed {_STAGE_TEXT.get(current.stage, '')}: {current.fatal}"
        else:
            message = f"{self.label} {describe_exit(code)} {_STAGE_TEXT.get(current.stage, '')}"
            if code == -signal.SIGILL and self.sigill_hint:
                message = f"{message.strip()}: {self.sigill_hint}"
        raise WorkerStartError(message.strip())

    async def _read(self, current: _Process) -> int:
        """Route the worker's frames until EOF; return its exit status."""
        stdout = current.process.stdout
        assert stdout is not None
        try:
            while (frame := await wire.read_async(stdout)) is not None:
                current.last_frame = time.monotonic()
                kind = frame.get("t")
                if kind in ("data", "end", "error"):
                    replies = self._pending.get(frame.get("id", -1))
                    if replies is not None:  # else: a request that was given up
                        replies.put_nowait(frame)
                    if kind != "data":
                        current.outstanding.discard(frame.get("id", -1))
                        self._room.set()
                        if not current.outstanding:
                            self._retire_if_large(current)
                elif kind == "stage":
                    current.stage = str(frame.get("stage"))
                elif kind == "ready" and not current.ready.done():
                    current.ready.set_result(dict(frame.get("info") or {}))
                elif kind == "fatal":
                    current.fatal = str(frame.get("message"))
        except wire.WireError as exc:  # garbage, or the pipe ended inside a frame (it died)
            log.error("%s worker (pid %d): %s; ending it", self.kind, current.pid, exc)
            current.kill()
        finally:
            if current is self._current:
                self._ready.clear()  # no new request goes to it from here on
        return await current.process.wait()

    def _retire_if_large(self, current: _Process) -> None:
        """Between requests: past `max_rss_bytes`, no request goes to it any more and its stdin
        is closed, so it exits; the supervisor starts a fresh one at once. (Synchronous, so no
        request can be written between the check and the close.)"""
        limit = self.max_rss_bytes
        if limit is None or current is not self._current or current.retired:
            return
        rss = resident_bytes(current.pid)
        if rss is None or rss <= limit:
            return
        current.retired = f"uses {rss / 2**20:.0f} MB, over its limit of {limit / 2**20:.0f} MB"
        self._ready.clear()
        if current.process.stdin is not None:
            current.process.stdin.close()

    async def _watch(self, current: _Process) -> None:
        """Kill a worker that is alive but stuck: it owes answers and has sent nothing for
        `stall_timeout_s`, counted from its last frame or from when it last owed nothing,
        whichever is later. Writing it more requests does not count: a stopped process takes
        them into its pipe all the same."""
        tick = min(WATCH_TICK_S, self.stall_timeout_s / 2)
        while current.process.returncode is None:
            await asyncio.sleep(tick)
            if not current.outstanding or current is not self._current:
                continue
            silent = time.monotonic() - max(current.last_frame, current.busy_since)
            if silent > self.stall_timeout_s:
                current.stalled = why = (
                    f"answered nothing for {silent:.0f} s with {len(current.outstanding)} "
                    "request(s) outstanding"
                )
                log.error("%s worker (pid %d) %s; killing it", self.kind, current.pid, why)
                current.kill()
                return

    async def _forward_log(self, current: _Process) -> None:
        """The worker's stderr (its log lines, and whatever native code prints) into our log."""
        stderr = current.process.stderr
        assert stderr is not None
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # a line longer than the stream's limit: skip it
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            first_word = text.split(" ", 1)[0]
            level = (
                logging.WARNING if first_word in ("WARNING", "ERROR", "CRITICAL") else logging.INFO
            )
            log.log(level, "[%s %d] %s", self.kind, current.pid, text)

    def _write(self, current: _Process, frame: bytes, request_id: int | None = None) -> None:
        """Send a frame; with `request_id`, a request the worker now owes an end for."""
        stdin = current.process.stdin
        if stdin is None or stdin.is_closing() or current.process.returncode is not None:
            return  # it is dead or dying: the reader reports that
        if request_id is not None:
            if not current.outstanding:
                current.busy_since = time.monotonic()
            current.outstanding.add(request_id)
        try:
            stdin.write(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass

    async def _stop_process(self, current: _Process) -> None:
        process = current.process
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()  # the worker's reader sees EOF and exits at once
            try:
                await asyncio.wait_for(process.wait(), STOP_WAIT_S)
            except TimeoutError:
                log.warning("%s worker (pid %d) did not exit; killing it", self.kind, current.pid)
        current.kill()
        await process.wait()
        if current.watchdog is not None:
            current.watchdog.cancel()  # it would only notice the exit at its next 1 s tick
        for task in (current.reader, current.stderr, current.watchdog):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)

    # --- supervision --------------------------------------------------------------------------

    def _fail_pending(self, message: str) -> None:
        for replies in self._pending.values():
            replies.put_nowait({"t": "died", "message": message})

    async def _supervise(self, current: _Process) -> None:
        """Wait for the worker to die; fail its requests; start a fresh one, with backoff."""
        failures = 0
        while True:
            assert current.reader is not None
            code = await asyncio.gather(current.reader, return_exceptions=True)
            await asyncio.gather(
                *(task for task in (current.stderr, current.watchdog) if task),
                return_exceptions=True,
            )
            self._ready.clear()
            current.outstanding.clear()
            self._room.set()  # requests waiting for room now wait for the restart
            status = code[0] if isinstance(code[0], int) else current.process.returncode
            if current.stalled:
                how = f"{current.stalled} and was killed ({describe_exit(status)})"
            else:
                how = describe_exit(status)
            what = f"{self.label} worker (pid {current.pid}) {how}"
            if current.retired and status == 0:
                log.info(
                    "%s worker (pid %d) %s: restarting it", self.kind, current.pid, current.retired
                )
            else:
                log.error("%s; restarting it", what)
            self._fail_pending(f"{what}; restarting it")
            if time.monotonic() - current.started_at > HEALTHY_AFTER_S or current.retired:
                failures = 0
            self.state = "restarting"
            while True:
                self.restarts += 1
                await asyncio.sleep(RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)])
                failures += 1
                try:
                    current = await self._start_process()
                except Exception as exc:  # WorkerStartError, or anything unforeseen: retry
                    log.error("restarting %s failed: %s", self.kind, exc)
                    self._failed_restarts += 1
                    self.state = "restarting"
                    await self._notify()  # waiting requests fail now, not after wait_ready_s
                    continue
                self._failed_restarts = 0
                break

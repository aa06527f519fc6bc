"""The server's side of a worker process: start it, stream requests through it, restart it.

Everything here runs on the event loop and never blocks: the worker's stdout is read by one task
per process, replies are routed to the request that asked, and a death (EOF, then the exit
status) fails every request in flight with `WorkerDied` before a fresh worker is started.
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
from dataclasses import dataclass, field
from typing import Any

from voicechat.workers import wire

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0  # load + self-check; a cold disk and a busy CPU can be slow
WAIT_READY_S = 60.0  # how long a request waits for a restarting worker before it fails
STOP_WAIT_S = 2.0  # after stdin closes, how long a worker gets to exit before SIGKILL
RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # the last one repeats
HEALTHY_AFTER_S = 60.0  # a worker that served this long resets the backoff

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

    def __init__(self, message: str, *, returncode: int | None = None, stage: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stage = stage


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
    reader: asyncio.Task[int] | None = None
    stderr: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


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
    ) -> None:
        self.kind = kind
        self.settings = settings
        self.label = label  # "the local LLM": how messages name it
        self.sigill_hint = sigill_hint  # what an illegal instruction most likely means here
        self.ready_timeout_s = ready_timeout_s
        self.wait_ready_s = wait_ready_s
        self.state = "stopped"  # starting, ready, restarting, stopped
        self.restarts = 0
        self.info: dict[str, Any] = {}  # what the engine said about itself when ready
        self.last_start_s: float | None = None  # spawn -> ready, for the last (re)start
        self._current: _Process | None = None
        self._ready = asyncio.Event()
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._ids = itertools.count()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self._current.pid if self._current and self.state == "ready" else None

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "in_flight": len(self._pending),
        }

    async def start(self) -> None:
        """Start the worker and wait until its self-check passed; WorkerStartError if not."""
        process = await self._start_process()
        self._supervisor = asyncio.create_task(self._supervise(process), name=f"{self.kind}-sup")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until the worker is ready (after a restart too); WorkerError after `timeout_s`."""
        if self._closing:
            raise WorkerError(f"{self.label} is shut down")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s or self.wait_ready_s)
        except TimeoutError:
            raise WorkerError(f"{self.label} is restarting; try again shortly") from None

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Run one request; yield its data frames. Leaving early cancels it in the worker."""
        while not self._ready.is_set():  # (cleared again if it died while we woke up)
            await self.wait_ready()
        current = self._current
        assert current is not None
        request_id = next(self._ids)
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[request_id] = replies
        finished = False
        try:
            self._send(current, {"op": "run", "id": request_id, "req": request})
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
                self._send(current, {"op": "cancel", "id": request_id})

    async def aclose(self) -> None:
        """End the worker: close its stdin (it exits), SIGKILL it if it does not, reap it."""
        self._closing = True
        self._ready.clear()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._current is not None:
            await self._stop_process(self._current)
        self._fail_pending(f"{self.label} was shut down")
        self.state = "stopped"

    # --- one process ------------------------------------------------------------------------

    async def _start_process(self) -> _Process:
        """Spawn, wait for ready; on any failure the process is gone before this raises."""
        self.state = "starting"
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "voicechat.workers.child",
            self.kind,
            json.dumps(self.settings),
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        current = _Process(process, asyncio.get_running_loop().create_future())
        current.reader = asyncio.create_task(self._read(current), name=f"{self.kind}-reader")
        current.stderr = asyncio.create_task(self._forward_log(current), name=f"{self.kind}-log")
        self._current = current
        done, _ = await asyncio.wait(
            {current.ready, current.reader},
            timeout=self.ready_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if current.ready in done:
            self.info = current.ready.result()
            self.last_start_s = time.monotonic() - started
            self.state = "ready"
            log.info(
                "%s worker ready (pid %d) in %.2f s", self.kind, current.pid, self.last_start_s
            )
            self._ready.set()
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
        raise WorkerStartError(message.strip(), returncode=code, stage=current.stage)

    async def _read(self, current: _Process) -> int:
        """Route the worker's frames until EOF; return its exit status."""
        stdout = current.process.stdout
        assert stdout is not None
        try:
            while (frame := await wire.read_async(stdout)) is not None:
                kind = frame.get("t")
                if kind in ("data", "end", "error"):
                    replies = self._pending.get(frame.get("id", -1))
                    if replies is not None:  # else: a request that was given up
                        replies.put_nowait(frame)
                elif kind == "stage":
                    current.stage = str(frame.get("stage"))
                elif kind == "ready" and not current.ready.done():
                    current.ready.set_result(dict(frame.get("info") or {}))
                elif kind == "fatal":
                    current.fatal = str(frame.get("message"))
        except wire.WireError as exc:
            log.error(
                "%s worker (pid %d) sent garbage (%s); ending it", self.kind, current.pid, exc
            )
            current.process.kill()
        return await current.process.wait()

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

    def _send(self, current: _Process, message: dict[str, Any]) -> None:
        stdin = current.process.stdin
        if stdin is None or stdin.is_closing() or current.process.returncode is not None:
            return  # it is dead or dying: the reader reports that
        try:
            stdin.write(wire.encode(message))
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
        if process.returncode is None:
            process.kill()
        await process.wait()
        for task in (current.reader, current.stderr):
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
            code = await current.reader
            if current.stderr is not None:
                await asyncio.gather(current.stderr, return_exceptions=True)
            self._ready.clear()
            lived = time.monotonic() - current.started_at
            what = f"{self.label} worker (pid {current.pid}) {describe_exit(code)}"
            log.error("%s; restarting it", what)
            self._fail_pending(f"{what}; restarting it")
            failures = 0 if lived > HEALTHY_AFTER_S else failures
            self.state = "restarting"
            while True:
                self.restarts += 1
                await asyncio.sleep(RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)])
                failures += 1
                try:
                    current = await self._start_process()
                except WorkerStartError as exc:
                    log.error("restarting %s failed: %s", self.kind, exc)
                    self.state = "restarting"
                    continue
                break

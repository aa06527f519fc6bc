"""`voicechat serve --workers N`: N server processes, each with its own event loop, on one port.

One event loop saturates one core; N processes use N. Each child is a whole `voicechat serve`
(its own sessions, back ends and embedded engines) bound with SO_REUSEPORT, so the kernel spreads
new connections over them. This parent only starts, watches and stops them:

- it waits until every child is listening; a child that fails before that (a bad flag, a port in
  use, an engine that fails its self-check) stops the others and its exit code is the parent's;
- a child that dies later is logged and started again (after 1 s, doubling to 30 s while it keeps
  dying young); the others go on serving meanwhile;
- SIGINT or SIGTERM is passed to every child, which drains as a single server does; the parent
  exits 0 once they have all stopped. A child never outlives the parent (PR_SET_PDEATHSIG).
- a child that died holds nothing any more: its slot in the session tally is set to 0 and its
  live gauges of /metrics are dropped (the multiprocess directory) as soon as it is reaped.

Children know they are children from CHILD_ENV ("INDEX/COUNT"), set only here.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("voicechat")

CHILD_ENV = "VOICECHAT_SERVE_CHILD"  # "INDEX/COUNT" in a child of `serve --workers N`
TALLY_ENV = "VOICECHAT_SERVE_TALLY"  # the file where the children count their sessions
READY_FD_ENV = "VOICECHAT_SERVE_READY_FD"  # the child writes one byte here once it listens
RESTARTED_ENV = "VOICECHAT_SERVE_RESTARTED"  # "1" in a child started again after one died
# prometheus-client's own variable: its multiprocess mode keeps the children's metrics there.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FIRST_RESTART_S = 1.0
MAX_RESTART_S = 30.0
STEADY_S = 60.0  # a child that ran this long died "old": its next restart waits FIRST_RESTART_S


@dataclass(frozen=True)
class ChildRole:
    """What a child of `serve --workers N` is: its index (0-based) and how many there are."""

    index: int
    count: int


class SessionTally:
    """Open sessions of every process of `serve --workers N`, so --max-connections holds for the
    whole server: the kernel spreads connections by hash, not by load, so a fixed share per
    process would turn clients away from a full one while another has room.

    A small shared file, one 8-byte slot per process: each process writes only its own slot and
    reads them all, so no lock is needed. Two processes admitting at the same instant can each
    see the last free place: the total can pass the cap by at most N-1, for a moment.
    """

    SLOT = struct.Struct("<q")

    def __init__(self, path: str, index: int, count: int) -> None:
        self.index = index
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), self.SLOT.size * count)
        self.count = count

    def set_own(self, sessions: int) -> None:
        self.set_slot(self.index, sessions)

    def set_slot(self, slot: int, sessions: int) -> None:
        """Only the supervisor writes another process's slot: 0 once that process is dead."""
        self.SLOT.pack_into(self._map, slot * self.SLOT.size, sessions)

    def total(self) -> int:
        return sum(
            self.SLOT.unpack_from(self._map, slot * self.SLOT.size)[0] for slot in range(self.count)
        )


def session_tally(role: ChildRole) -> SessionTally | None:
    """This child's view of the tally; its slot starts at 0 (a restarted child holds nothing,
    whatever the one before it left there)."""
    path = os.environ.get(TALLY_ENV)
    if not path:
        return None
    tally = SessionTally(path, role.index, role.count)
    tally.set_own(0)
    return tally


def restarted() -> bool:
    """Is this process a child started again after the one before it died?"""
    return os.environ.get(RESTARTED_ENV) == "1"


def child_role() -> ChildRole | None:
    """The role set by the parent, or None in a plain `voicechat serve`."""
    value = os.environ.get(CHILD_ENV)
    if not value:
        return None
    index, _, count = value.partition("/")
    return ChildRole(int(index), int(count))


def announce_ready() -> None:
    """Tell the parent this child listens (a no-op outside `serve --workers N`)."""
    fd = os.environ.get(READY_FD_ENV)
    if fd:
        os.write(int(fd), b"1")
        os.close(int(fd))


def worker_count(value: str, cpus: int | None = None) -> int:
    """`auto` is one per CPU core; otherwise a positive number."""
    if value == "auto":
        return max(1, cpus or os.cpu_count() or 1)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--workers is a number of processes or auto, not {value!r}")
    return int(value)


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    next_delay_s: float = FIRST_RESTART_S


class Supervisor:
    """Starts the children, restarts the ones that die, stops them all on a signal."""

    def __init__(self, argv: list[str], count: int, tally_path: str, metrics_dir: str) -> None:
        self.argv = argv  # the whole `voicechat serve ...` command line, run as is by children
        self.count = count
        self.tally_path = tally_path
        self.tally = SessionTally(tally_path, 0, count)  # to empty a dead child's slot
        self.metrics_dir = metrics_dir  # prometheus-client's multiprocess files (/metrics)
        self.children: dict[int, _Child] = {}  # by index
        self.started: set[int] = set()  # indexes started at least once
        self.stopping = False

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        try:
            # All at once: each loads its own back ends (seconds, with the embedded models).
            starting = [self._spawn(index) for index in range(self.count)]
            for child, ready_pipe in starting:
                if not self._listening(child, ready_pipe):
                    self._stop_all()
                    return child.process.returncode or 1
            log.info("serving with %d worker processes: %s", self.count, self.pids())
            return self._watch()
        finally:
            self._stop_all()

    def pids(self) -> list[int]:
        return [self.children[index].process.pid for index in sorted(self.children)]

    def _start(self, index: int) -> tuple[_Child, bool]:
        """Start child `index` and wait until it listens (True) or exits first (False)."""
        child, ready_pipe = self._spawn(index)
        return child, self._listening(child, ready_pipe)

    def _spawn(self, index: int) -> tuple[_Child, int]:
        """Start child `index`; the read end of the pipe it announces itself on."""
        read_end, write_end = os.pipe()
        env = {
            **os.environ,
            CHILD_ENV: f"{index}/{self.count}",
            TALLY_ENV: self.tally_path,
            READY_FD_ENV: str(write_end),
            RESTARTED_ENV: "1" if index in self.started else "0",
            "VOICECHAT_SERVE_PARENT": str(os.getpid()),
            MULTIPROC_ENV: self.metrics_dir,
        }
        self.started.add(index)
        process = subprocess.Popen(self.argv, env=env, pass_fds=(write_end,))
        os.close(write_end)
        child = _Child(index, process)
        self.children[index] = child
        return child, read_end

    @staticmethod
    def _listening(child: _Child, ready_pipe: int) -> bool:
        """Wait until the child listens (True) or exits before it does (False)."""
        with os.fdopen(ready_pipe, "rb") as ready:
            listening = ready.read(1) == b"1"  # EOF: it exited (or closed the pipe) first
        if not listening:
            child.process.wait()
        return listening

    def _watch(self) -> int:
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index = next((i for i, c in self.children.items() if c.process.pid == pid), None)
            if index is None:
                continue
            child = self.children.pop(index)
            child.process.returncode = os.waitstatus_to_exitcode(status)
            self._forget(child)
            if self.stopping:
                continue
            self._restart(child)
        return 0

    def _forget(self, dead: _Child) -> None:
        """A dead child's sessions are gone: its slot of the tally is 0 from now on (not when
        its successor starts, seconds later, or never while the supervisor is stopping), and
        its live gauges leave /metrics (its counters stay: what it did still happened)."""
        from prometheus_client.multiprocess import mark_process_dead  # only here: doctor and
        # the CLI import this module, and need no metrics library

        self.tally.set_slot(dead.index, 0)
        mark_process_dead(dead.process.pid, self.metrics_dir)

    def _restart(self, dead: _Child) -> None:
        code = dead.process.returncode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        lived = time.monotonic() - dead.started
        delay = FIRST_RESTART_S if lived >= STEADY_S else dead.next_delay_s
        log.warning(
            "worker %d (pid %d) died (%s) after %.0f s; starting it again in %.0f s",
            dead.index, dead.process.pid, how, lived, delay,
        )  # fmt: skip
        deadline = time.monotonic() + delay
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)  # a signal cuts the wait short
        if self.stopping:
            return
        child, ready = self._start(dead.index)
        child.next_delay_s = min(MAX_RESTART_S, delay * 2) if lived < STEADY_S else FIRST_RESTART_S
        if ready:
            log.info("worker %d is back (pid %d)", child.index, child.process.pid)
        else:
            self.children.pop(child.index, None)
            self._forget(child)
            self._restart(child)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("stopping %d worker processes (they finish their answers)", self.count)
        self._terminate_all()

    def _terminate_all(self) -> None:
        """SIGTERM to every child still running: each drains as a single server does."""
        self.stopping = True
        for child in list(self.children.values()):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)

    def _stop_all(self) -> None:
        self._terminate_all()
        for child in list(self.children.values()):
            try:
                child.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.children.clear()


def port_taken(host: str, port: int) -> OSError | None:
    """Why `voicechat serve` could not bind (host, port) without SO_REUSEPORT, or None.

    Binds what the server would, as asyncio's server does: every address the host resolves to,
    with SO_REUSEADDR (a TIME_WAIT leftover is no conflict), IPv6 sockets IPv6-only. A failure
    to resolve the host is a socket.gaierror. Used by `voicechat doctor`, and before
    `serve --workers N`: SO_REUSEPORT lets any process of the same user join a port, so a second
    such server would otherwise share the first one's connections silently.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return exc
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        with socket.socket(family, kind, proto) as sock:
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


def run(count: int, host: str, port: int) -> int:
    """Serve with `count` processes: this process becomes their supervisor."""
    if problem := port_taken(host, port):
        raise problem
    argv = [sys.executable, "-m", "voicechat", *sys.argv[1:]]
    # In /dev/shm where there is one: memory, never written back to a disk.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with (
        tempfile.NamedTemporaryFile(prefix="voicechat-sessions-", dir=shm) as tally,
        tempfile.TemporaryDirectory(prefix="voicechat-metrics-", dir=shm) as metrics_dir,
    ):
        tally.write(bytes(SessionTally.SLOT.size * count))
        tally.flush()
        return Supervisor(argv, count, tally.name, metrics_dir).run()

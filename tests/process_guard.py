"""Daemons that die with the test process, and temp directories a later run can sweep.

A fixture that starts a daemon stops it in its teardown, but a test process that is killed
(SIGKILL, a crash such as SIGILL, an out-of-memory kill) runs no teardown at all. `spawn` makes
the kernel do it instead: between fork and exec, the child asks for PR_SET_PDEATHSIG(SIGKILL), so
the kernel sends it SIGKILL the moment its parent is gone, however the parent ended. No code has to
run in the dying process, which is the only thing that works after SIGKILL.

Why this and not a watchdog process: one prctl call is enough when the daemon is the *direct*
child of the test process and stays so, and every daemon the tests start is made to be:

1. It does not double-fork: `pulseaudio --daemonize=no`, `postgres -D DIR` in the foreground
   (not `pg_ctl start`), `python -m llama_cpp.server`.
2. Nothing stands between the test and the daemon. `runuser`, `su` and `sudo` fork the command
   and wait for it, so the death signal would kill only the wrapper and orphan the daemon.
   `spawn(user=...)` switches user itself (Popen's user/group/extra_groups, applied in the child
   *before* preexec_fn). The order matters: the kernel clears the death signal whenever the
   effective uid or gid changes, and also on exec of a set-user-ID, set-group-ID or
   file-capability binary (none of ours is one).
3. The daemon's own children die with it. PostgreSQL's backends and auxiliary processes exit as
   soon as the postmaster is gone (they watch it); pulseaudio and llama_cpp.server start none.

A daemon that breaks rule 3 needs a watchdog: nginx's worker processes outlive a killed master and
go on serving. `spawn_group` starts such a daemon in a process group of its own, led by a small
watchdog process that holds the read end of a pipe whose write end only the test process holds;
on end of file (the test process died, however, or `stop` is done with the daemon) the watchdog
SIGKILLs its whole group, itself included. The group's id is the watchdog's pid, which stays
taken while the watchdog lives, so the kill can never hit a recycled group. Every other daemon
keeps rule 3; tests/test_test_daemons.py checks the whole process tree of each, and
tests/test_nginx.py that of nginx.

One caveat: the kernel ties the death signal to the *thread* that forked, not the process. A
daemon forked from a worker thread would be killed when that thread ends, in the middle of a
healthy run. Pytest runs fixtures on the main thread, and `spawn` refuses any other.

Only on Linux. Elsewhere `spawn` is plain `subprocess.Popen`, and a killed run can leak.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_TIMEOUT_S = 10.0  # bound on a daemon's orderly exit before it is killed

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def spawn(
    args: Sequence[str | os.PathLike[str]], *, user: str | None = None, **popen: Any
) -> subprocess.Popen[Any]:
    """`subprocess.Popen(args, **popen)`, but the child is SIGKILLed when this process dies.

    `user`: run the child as this user (and its primary group, no supplementary groups), which
    needs root; this replaces `runuser -u USER --`, which would stand between us and the child.
    The child must not daemonise (double-fork) itself; see the module's docstring.
    """
    if "preexec_fn" in popen:
        raise TypeError("spawn sets preexec_fn itself")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "spawn from the main thread only: the death signal fires when the forking thread ends"
        )
    if user is not None:
        entry = pwd.getpwnam(user)
        popen.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    if _libc is None:
        return subprocess.Popen(args, **popen)
    parent = os.getpid()

    def die_with_parent() -> None:  # runs in the child, after the user switch, before exec
        if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)  # cannot guard it: do not start it
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return subprocess.Popen(args, preexec_fn=die_with_parent, **popen)


def stop(
    process: subprocess.Popen[Any],
    sig: int = signal.SIGTERM,
    timeout: float = STOP_TIMEOUT_S,
) -> None:
    """Send `sig`, wait up to `timeout` s, then SIGKILL; always reaps the process.

    For a daemon from `spawn_group`, its watchdog then SIGKILLs whatever is left of its group
    (children that outlived it, say) and is reaped too.
    """
    try:
        if process.poll() is None:
            process.send_signal(sig)
            _reap(process, timeout)
    finally:
        guard = _watchdogs.pop(process, None)
        if guard is not None:
            _release(*guard)


# The watchdog of `spawn_group`: blocks until end of file on stdin, then kills its own group.
_WATCHDOG = "import os, signal, sys\nsys.stdin.buffer.read()\nos.killpg(0, signal.SIGKILL)\n"
_watchdogs: dict[subprocess.Popen[Any], tuple[subprocess.Popen[bytes], int]] = {}


def spawn_group(
    args: Sequence[str | os.PathLike[str]], *, user: str | None = None, **popen: Any
) -> subprocess.Popen[Any]:
    """`spawn`, for a daemon whose own children outlive it (nginx): they die with this process too.

    The daemon joins the process group of a watchdog started first (see the module's
    docstring), so nothing it forks can escape, whenever this process dies. The group is not
    the terminal's foreground group: Ctrl+C reaches the test process, whose teardown stops the
    daemon. `stop` ends the daemon, then the watchdog. A child forked from this process without
    exec (multiprocessing's "fork") would hold the pipe too and delay the watchdog until it ends.
    """
    if {"process_group", "start_new_session"} & popen.keys():
        raise TypeError("spawn_group sets the process group itself")
    read, write = os.pipe()  # not inheritable: only this process holds `write`
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG],
            stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
            process_group=0,
        )  # fmt: skip
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    try:
        process = spawn(args, user=user, process_group=watchdog.pid, **popen)
    except BaseException:
        _release(watchdog, write)
        raise
    _watchdogs[process] = (watchdog, write)
    return process


def _release(watchdog: subprocess.Popen[bytes], write: int) -> None:
    """Close the pipe: the watchdog SIGKILLs its group, itself included; reap it."""
    os.close(write)
    _reap(watchdog, STOP_TIMEOUT_S)


def _reap(process: subprocess.Popen[Any], timeout: float) -> None:
    """Wait up to `timeout` s for a process told to stop, then SIGKILL it; always reaps it."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def owned_tempdir(prefix: str, *, on_stale: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A new directory `<tmp>/<prefix>XXXX` for this process, removed when the block ends.

    A killed test process never reaches that end, so each call first sweeps the directories of
    `prefix` whose owner is dead, calling `on_stale(directory)` before removing each one (for
    what lives outside it, e.g. a SysV shared-memory segment). Ownership is an flock on
    `.owner` inside the directory, held for the block: the kernel drops it when its process
    dies however it ends, and never while it lives, so concurrent test runs do not sweep each
    other's directories. A directory without `.owner` is left alone.
    """
    _sweep(prefix, on_stale)
    while True:
        base = Path(tempfile.mkdtemp(prefix=prefix))
        lock = os.open(base / ".owner", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.fstat(lock).st_nlink:  # a concurrent sweep did not remove it before we locked
            break
        os.close(lock)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        os.close(lock)


def _sweep(prefix: str, on_stale: Callable[[Path], None] | None) -> None:
    for directory in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            lock = os.open(directory / ".owner", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # not made by owned_tempdir, or not ours to open
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            continue  # its owner is alive
        try:
            if on_stale is not None:
                on_stale(directory)
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            os.close(lock)

"""A killed test run leaves no daemon behind, and the next run starts clean.

Real processes and real signals. Each case runs a child pytest that starts one daemon through
the very fixture the tests use (PulseAudio for `paced_audio_device`, PostgreSQL for
`postgres_url`, llama_cpp.server for `openai_server`), then writes the process tree it started
to a file and waits. The test kills that pytest with SIGKILL (or SIGILL, as a crashing native
library would), so no teardown runs, and requires within a bound that every process of the tree
is gone and that no process anywhere still carries the run's marker (an environment variable
every descendant inherits, also the ones the report did not list). After the SIGKILL a second
child run starts the same fixture again, which must work, and ends normally, leaving nothing.
Starting clean also means that what the killed run could not remove is gone by then: the POSIX
shared memory its processes mapped and, for PostgreSQL, its temp directory and SysV segment.

The child runs `hold_daemon` below, which is not named test_*: a normal run never collects it;
the child collects it with `-o python_functions=hold_daemon`.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if sys.platform == "linux":
    import resource

from .audio_env import portaudio_missing, pulse_missing
from .process_guard import spawn, stop
from .test_backends import openai_server, postgres_url  # noqa: F401  (fixtures for hold_daemon)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc and PR_SET_PDEATHSIG")

ROOT = Path(__file__).resolve().parents[1]
HOLD_ENV = "VOICECHAT_TEST_HOLD"  # the daemon the child starts: a key of DAEMONS
REPORT_ENV = "VOICECHAT_TEST_HOLD_REPORT"  # where the child writes its process tree
RELEASE_ENV = "VOICECHAT_TEST_HOLD_RELEASE"  # a file whose appearance ends the hold normally
RUN_ENV = "VOICECHAT_TEST_HOLD_RUN"  # a marker unique to each child run, inherited by all
START_S = 120.0  # bound on a child's start-up: imports, initdb, a model load; ~5 s here
HOLD_S = 300.0  # bound on a hold that is never ended, should this test die first
GONE_S = 5.0  # bound on the daemons' death after the kill (they die in milliseconds)
POLL_S = 0.02  # poll interval, not a synchronisation


@dataclass(frozen=True)
class Daemon:
    fixture: str  # what the child requests
    program: str  # the daemon's argv[0] name, or the module after `python -m`
    missing: Callable[[], str | None]  # why it cannot run here, or None


def _pulse_missing() -> str | None:
    return portaudio_missing() or pulse_missing()


def _postgres_missing() -> str | None:
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        return "PostgreSQL server not installed (scripts/setup.sh test installs it)"
    return None


def _llama_server_missing() -> str | None:
    if any(importlib.util.find_spec(name) is None for name in ("llama_cpp", "uvicorn")):
        return "llama-cpp-python[server] not installed (scripts/setup.sh test installs it)"
    return None


DAEMONS = {
    "pulseaudio": Daemon("paced_audio_device", "pulseaudio", _pulse_missing),
    "postgres": Daemon("postgres_url", "postgres", _postgres_missing),
    "openai": Daemon("openai_server", "llama_cpp.server", _llama_server_missing),
}


# --- the child's side --------------------------------------------------------------------------


def hold_daemon(request: pytest.FixtureRequest) -> None:
    """Run only in the child pytest: start the fixture, report, hold until killed or released."""
    request.getfixturevalue(DAEMONS[os.environ[HOLD_ENV]].fixture)
    report = Path(os.environ[REPORT_ENV])
    partial = report.with_suffix(".partial")
    partial.write_text(json.dumps({"holder": os.getpid(), "processes": _descendants()}))
    partial.replace(report)  # atomic: the parent never reads half a report
    release, deadline = Path(os.environ[RELEASE_ENV]), time.monotonic() + HOLD_S
    while not release.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"held {HOLD_S} s: neither killed nor released")
        time.sleep(POLL_S)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks since boot) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ", which may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _descendants() -> list[dict[str, Any]]:
    """Every process below this one: pid, ppid, start time, argv, working directory, and the
    files it maps from /dev/shm (POSIX shared memory, which outlives a killed process)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[1]
    found, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid in sorted(p for p, pp in parents.items() if pp == parent):
            stat = _stat(pid)
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                cwd = os.readlink(f"/proc/{pid}/cwd")
                maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            except OSError:
                continue  # it ended meanwhile
            if stat is None or stat[0] == "Z":
                continue
            shm = sorted({line.split(maxsplit=5)[-1] for line in maps if " /dev/shm/" in line})
            found.append(
                {"pid": pid, "ppid": parent, "start": stat[2], "argv": argv.split("\0"),
                 "cwd": cwd, "shm": shm}
            )  # fmt: skip
            frontier.append(pid)
    return found


# --- the test's side ---------------------------------------------------------------------------


@dataclass
class Run:
    """One child pytest holding one daemon."""

    process: subprocess.Popen[bytes]
    report: Path
    release: Path
    output: Path
    marker: str

    def log(self) -> str:
        return self.output.read_text(errors="replace")


def _start(daemon: str, directory: Path) -> Run:
    directory.mkdir()
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.pop("ALSA_CONFIG_PATH", None)  # this session's audio set-up, should it be running
    env.update({
        HOLD_ENV: daemon,
        REPORT_ENV: str(directory / "report.json"),
        RELEASE_ENV: str(directory / "release"),
        RUN_ENV: marker,
    })  # fmt: skip
    output = directory / "output.txt"
    with open(output, "wb") as out:
        process = spawn(  # guarded too: were this test killed, its child would follow
            [sys.executable, "-m", "pytest", f"{Path(__file__)}::hold_daemon",
             "-o", "python_functions=hold_daemon", "-p", "no:cacheprovider",
             f"--basetemp={directory / 'tmp'}", "-q", "-rA"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    resource.prlimit(process.pid, resource.RLIMIT_CORE, (0, 0))  # SIGILL: no core file in ROOT
    return Run(process, directory / "report.json", directory / "release", output, marker)


def _wait_report(run: Run) -> dict[str, Any]:
    """The child's report, once its daemon is up; fails if the child ends or the bound passes."""
    deadline = time.monotonic() + START_S
    while not run.report.exists():
        if run.process.poll() is not None:
            pytest.fail(f"the child pytest ended ({run.process.returncode}):\n{run.log()}")
        if time.monotonic() > deadline:
            stop(run.process, signal.SIGKILL)
            pytest.fail(f"the child's daemon not up after {START_S} s:\n{run.log()}")
        time.sleep(POLL_S)
    return json.loads(run.report.read_text())


def _end(run: Run) -> int:
    """End a hold normally, so the child's fixtures tear down; its exit status."""
    run.release.touch()
    try:
        return run.process.wait(timeout=START_S)
    except subprocess.TimeoutExpired:
        stop(run.process, signal.SIGKILL)
        pytest.fail(f"the child pytest did not end after release:\n{run.log()}")


def _alive(process: dict[str, Any]) -> bool:
    """The same process (pid and start time) still exists and has not exited (a zombie has)."""
    stat = _stat(process["pid"])
    return stat is not None and stat[0] != "Z" and stat[2] == process["start"]


def _carrying(marker: str) -> dict[int, str]:
    """Live processes anywhere on the machine whose environment holds this run's marker."""
    needle = f"{RUN_ENV}={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except OSError:
            continue  # gone meanwhile, or not ours to read (a zombie has no environment)
    return found


def _left_behind(report: dict[str, Any], marker: str) -> list[str]:
    """Whatever of a run is still alive once the bound has passed: [] if everything died."""
    deadline = time.monotonic() + GONE_S
    while True:
        left = {p["pid"]: " ".join(p["argv"]) for p in report["processes"] if _alive(p)}
        left.update(_carrying(marker))
        if not left or time.monotonic() > deadline:
            return [f"{pid}: {argv}" for pid, argv in sorted(left.items())]
        time.sleep(POLL_S)


def _check_tree(daemon: str, report: dict[str, Any]) -> dict[str, Any]:
    """The daemon is the child pytest's direct child (else the death signal misses it)."""
    program = DAEMONS[daemon].program
    mains = [
        p
        for p in report["processes"]
        if Path(p["argv"][0]).name == program or p["argv"][1:3] == ["-m", program]
    ]
    assert mains, f"no {daemon} process in the child's tree: {report['processes']}"
    main = mains[0]
    assert main["ppid"] == report["holder"], f"{daemon} is not a direct child: {report}"
    if daemon == "postgres":  # backends and auxiliary processes: they must go too
        assert any(p["ppid"] == main["pid"] for p in report["processes"]), report
    return main


def _pg_segment(data: Path) -> tuple[str, str]:
    """The SysV segment (key, id) postmaster.pid names."""
    key, shmid = (data / "postmaster.pid").read_text().splitlines()[6].split()
    return key, shmid


def _pg_segment_exists(segment: tuple[str, str]) -> bool:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return any(line.split()[:2] == list(segment) for line in lines)


def _kill_a_holding_run(daemon: str, kill: signal.Signals, directory: Path) -> dict[str, Any]:
    """Start a child holding `daemon`, kill it with `kill`; everything it started must die.

    Returns the child's report.
    """
    if missing := DAEMONS[daemon].missing():
        pytest.skip(missing)
    killed = _start(daemon, directory)
    try:
        report = _wait_report(killed)
        main = _check_tree(daemon, report)
        assert _alive(main)
        assert main["pid"] in _carrying(killed.marker)  # the scan in _left_behind sees it
    finally:
        stop(killed.process, kill)  # no teardown runs (SIGILL: faulthandler, then death)
    assert killed.process.returncode == -kill, killed.log()
    left = _left_behind(report, killed.marker)
    assert not left, f"alive {GONE_S} s after the test process died of {kill.name}: {left}"
    return report


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_a_crashed_run_leaves_no_daemon(
    daemon: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGILL, as from a native library built for another CPU: Python's faulthandler prints a
    traceback and the process dies of the signal, without teardown."""
    _kill_a_holding_run(daemon, signal.SIGILL, tmp_path_factory.mktemp("hold") / "1")


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_a_killed_run_leaves_no_daemon_and_the_next_run_starts_clean(
    daemon: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("hold")  # short: pulseaudio's socket path must fit
    report = _kill_a_holding_run(daemon, signal.SIGKILL, directory / "1")
    main = _check_tree(daemon, report)

    shm = sorted({path for p in report["processes"] for path in p["shm"]})
    stale_segment = None
    if daemon == "postgres":  # a killed run could not remove its directory nor its segment
        stale_base = Path(main["cwd"]).parent  # postgres runs in its data directory
        assert stale_base.is_dir()
        stale_segment = _pg_segment(Path(main["cwd"]))
        assert _pg_segment_exists(stale_segment)

    later = _start(daemon, directory / "2")
    try:
        report = _wait_report(later)
        main = _check_tree(daemon, report)
        assert _alive(main)
        if stale_segment is not None:  # the later run swept them
            assert not stale_base.exists()
            assert not _pg_segment_exists(stale_segment)
        leaked = [path for path in shm if Path(path).exists()]
        assert not leaked, f"the killed run's POSIX shared memory is left: {leaked}"
    finally:
        returncode = _end(later)  # also after a failed assertion: a normal end leaks nothing
    assert returncode == 0, later.log()
    left = _left_behind(report, later.marker)
    assert not left, f"alive {GONE_S} s after a normal end: {left}"
    if daemon == "postgres":
        assert not Path(main["cwd"]).parent.exists()

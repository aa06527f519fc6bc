"""scripts/setup.sh's step runner: one line per step, the output in a log, a heartbeat, a report.

The script is sourced with VOICECHAT_SETUP_LIB_ONLY=1, which defines its functions and installs
nothing. Each test runs `run_step` in a fresh bash, in a session of its own, and checks afterwards
that no process of that session outlived it (the heartbeat runs in the background). Waits are
bounded polls for an event (a heartbeat line, a file), never a fixed sleep standing in for one.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import WAIT_S

SETUP_SH = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"

# Defined in every test's bash: wait_until COMMAND... polls the command (every 0.05 s, for at most
# $WAIT_S seconds) and fails, saying so, if it never succeeds.
HELPERS = r"""
wait_until() {
  local deadline=$((SECONDS + WAIT_S))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "gave up waiting for: $*"; return 1; fi
    sleep 0.05
  done
}
"""

HEARTBEAT_LINE = re.compile(r"setup:   still (.+)… \d+s")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CI", "VOICECHAT_SETUP_HEARTBEAT_S", "TERM")
    }
    env.update(
        VOICECHAT_SETUP_LIB_ONLY="1",
        SETUP_SH=str(SETUP_SH),
        TMPDIR=str(tmp_path),  # the step logs land in tmp_path/voicechat-setup.XXXXXX/
        OUT=str(tmp_path / "stdout.txt"),
        WAIT_S=str(int(WAIT_S)),
    )
    env.update(extra)
    return env


def start(tmp_path: Path, body: str, stdout: int | None = None, **env: str) -> subprocess.Popen:
    """bash that sources setup.sh for its functions, then runs `body`; stdout to $OUT by default."""
    with open(tmp_path / "stdout.txt", "wb") as out, open(tmp_path / "stderr.txt", "wb") as err:
        return subprocess.Popen(
            ["bash", "-c", 'source "$SETUP_SH"\n' + HELPERS + body],
            stdin=subprocess.DEVNULL,
            stdout=out if stdout is None else stdout,
            stderr=err,
            env=environment(tmp_path, **env),
            cwd=tmp_path,
            start_new_session=True,
        )


def finish(process: subprocess.Popen, tmp_path: Path) -> Run:
    try:
        process.wait(timeout=2 * WAIT_S)
    finally:
        assert_nothing_left(process.pid)
    return Run(
        process.returncode,
        (tmp_path / "stdout.txt").read_text(),
        (tmp_path / "stderr.txt").read_text(),
    )


def assert_nothing_left(session: int) -> None:
    """No process of the run's session (its process group) is alive once the run has ended."""
    try:
        os.killpg(session, 0)
    except ProcessLookupError:
        return
    os.killpg(session, signal.SIGKILL)
    pytest.fail("a process of the run outlived it (a heartbeat that was not stopped?)")


def run(tmp_path: Path, body: str, **env: str) -> Run:
    return finish(start(tmp_path, body, **env), tmp_path)


def step_logs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("voicechat-setup.*/*.log"))


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SETUP_SH)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_finds_nothing() -> None:
    result = subprocess.run(["shellcheck", str(SETUP_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sourced_for_its_functions_it_does_nothing(tmp_path: Path) -> None:
    result = run(tmp_path, "type run_step >/dev/null; pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path}\n"  # no step line, no cd to the project
    assert result.stderr == ""
    assert step_logs(tmp_path) == []


def test_a_step_that_succeeds_is_one_line_and_its_output_goes_to_its_log(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        'run_step "saying hello: to the log only" echo "hello from the command"\n'
        'echo "after the step"',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "setup: saying hello: to the log only\nafter the step\n"
    assert result.stderr == ""
    [log] = step_logs(tmp_path)
    assert log.name == "01-saying-hello.log"
    assert log.read_text() == "hello from the command\n"


def test_a_failing_step_reports_the_end_of_its_log_and_exits_with_its_code(
    tmp_path: Path,
) -> None:
    result = run(
        tmp_path,
        'count_then_fail() { for i in $(seq 1 100); do echo "line $i"; done; return 3; }\n'
        'run_step "counting to 100: then failing" count_then_fail\n'
        'echo "not reached"',
    )
    assert result.returncode == 3
    assert result.stdout == "setup: counting to 100: then failing\n"
    assert "setup: FAILED: counting to 100 (exit code 3)" in result.stderr
    shown = [line.strip() for line in result.stderr.splitlines()]
    assert "line 100" in shown and "line 76" in shown  # the last 25 lines
    assert "line 75" not in shown and "line 10" not in shown
    [log_path] = re.findall(r"setup: the whole log: (\S+)", result.stderr)
    assert Path(log_path) == step_logs(tmp_path)[0]
    assert Path(log_path).read_text().splitlines() == [f"line {i}" for i in range(1, 101)]


def test_a_function_step_stops_at_its_first_failing_command(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        'two_commands() { echo first; false; echo "after false"; }\n'
        'run_step "running two commands: the first fails" two_commands',
    )
    assert result.returncode == 1
    assert "setup: FAILED: running two commands (exit code 1)" in result.stderr
    assert step_logs(tmp_path)[0].read_text() == "first\n"


def test_a_long_step_prints_a_heartbeat_line_until_it_ends(tmp_path: Path) -> None:
    # The step ends only once its heartbeat is in the output: no guess at how long that takes.
    result = run(
        tmp_path,
        'run_step "waiting for the heartbeat: in the output" '
        'wait_until grep -q "still waiting for the heartbeat…" "$OUT"\n'
        'jobs -p\necho "after the step"',
        VOICECHAT_SETUP_HEARTBEAT_S="0.05",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "setup: waiting for the heartbeat: in the output"
    assert lines[-1] == "after the step"  # and `jobs -p` found no heartbeat left running
    beats = lines[1:-1]
    assert beats, result.stdout
    for beat in beats:  # one line per beat, without a terminal: no \r
        match = HEARTBEAT_LINE.fullmatch(beat)
        assert match and match.group(1) == "waiting for the heartbeat", repr(beat)


def test_ci_gets_no_heartbeat(tmp_path: Path) -> None:
    # The step looks for a heartbeat for 2 s, 40 heartbeat intervals; in CI it must see none.
    result = run(
        tmp_path,
        'look_for_a_heartbeat() { WAIT_S=2 wait_until grep -q still "$OUT" || true; }\n'
        'run_step "looking for a heartbeat: in CI" look_for_a_heartbeat',
        CI="true",
        VOICECHAT_SETUP_HEARTBEAT_S="0.05",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "setup: looking for a heartbeat: in CI\n"
    [log] = step_logs(tmp_path)
    assert log.read_text() == f"gave up waiting for: grep -q still {tmp_path / 'stdout.txt'}\n"


def test_on_a_terminal_the_heartbeat_rewrites_one_line_and_wipes_it(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    go = tmp_path / "go"
    process = start(
        tmp_path,
        'run_step "waiting for the go: on a terminal" wait_until test -e "$GO"\n'
        'echo "after the step"',
        stdout=follower,
        GO=str(go),
        TERM="xterm",
        VOICECHAT_SETUP_HEARTBEAT_S="0.05",
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 2 * WAIT_S
    try:
        while time.monotonic() < deadline:
            if b"still waiting for the go" in seen:
                go.touch()  # one heartbeat is on the screen: the step may end
            ready, _, _ = select.select([leader], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        process.wait(timeout=WAIT_S)
        assert_nothing_left(process.pid)
    assert process.returncode == 0, (tmp_path / "stderr.txt").read_text()
    # The terminal turns each \n into \r\n; the heartbeat itself never ends a line.
    assert re.fullmatch(
        r"setup: waiting for the go: on a terminal\r\n"
        r"(\rsetup:   still waiting for the go… \d+s\x1b\[K)+"
        r"\r\x1b\[K"
        r"after the step\r\n",
        seen.decode(),
    ), seen


def test_ctrl_c_during_a_step_says_so_and_leaves_nothing_running(tmp_path: Path) -> None:
    started = tmp_path / "started"
    process = start(
        tmp_path,
        'run_step "waiting to be interrupted: forever" sh -c \': >"$STARTED"; exec sleep 1000\'\n'
        'echo "not reached"',
        STARTED=str(started),
        VOICECHAT_SETUP_HEARTBEAT_S="1000",  # alive, silent, and long-lived if not stopped
    )
    wait_for_file(started)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    result = finish(process, tmp_path)
    assert result.returncode == 130
    assert result.stdout == "setup: waiting to be interrupted: forever\n"
    [log] = step_logs(tmp_path)
    report = f"setup: interrupted: waiting to be interrupted (its log so far: {log})\n"
    assert result.stderr == report


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
    ids=["SIGTERM", "SIGINT", "SIGHUP"],
)
def test_a_signal_to_the_script_alone_stops_the_heartbeat_too(
    tmp_path: Path, signum: int, code: int
) -> None:
    # `kill PID` or `timeout`: only the script gets the signal. bash acts on it once the running
    # command has ended, so the test lets the command end afterwards; the heartbeat must not stay.
    started, release = tmp_path / "started", tmp_path / "release"
    process = start(
        tmp_path,
        'hold() { : >"$STARTED"; wait_until test -e "$RELEASE"; }\n'
        'run_step "holding on: until released" hold\n'
        'echo "not reached"',
        STARTED=str(started),
        RELEASE=str(release),
        VOICECHAT_SETUP_HEARTBEAT_S="1000",
    )
    wait_for_file(started)
    os.kill(process.pid, signum)
    release.touch()
    result = finish(process, tmp_path)
    assert result.returncode == code
    assert result.stdout == "setup: holding on: until released\n"
    if signum != signal.SIGHUP:  # after a hang-up there may be no terminal left to tell
        [log] = step_logs(tmp_path)
        assert result.stderr == f"setup: interrupted: holding on (its log so far: {log})\n"

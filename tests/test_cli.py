"""The command line as a user meets it: help that fits 80 columns, --version, completion,
usage errors with exit code 2. Each case runs the real `voicechat` script in a new process.

The help snapshots live in tests/cli_help_snapshots/; after a deliberate change to the
help, rewrite them with `VOICECHAT_UPDATE_SNAPSHOTS=1 python3 -m pytest tests/test_cli.py`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

# Not in __snapshots__: that folder is syrupy's, which fails a run on files it did not write.
SNAPSHOTS = Path(__file__).parent / "cli_help_snapshots"
COMMANDS = ["", "serve", "ask", "talk", "doctor"]


def voicechat(*args: str, columns: int = 80, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")},
        "COLUMNS": str(columns),
        "NO_COLOR": "1",
        "TERM": "dumb",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "voicechat", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_the_terminal_and_matches_its_snapshot(command: str, columns: int) -> None:
    result = voicechat(*([command] if command else []), "--help", columns=columns)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    # No type labels beside flags (Typer's `<bool>`), no envvar or range noise.
    assert "<bool>" not in result.stdout
    assert "env var" not in result.stdout
    assert "x>=" not in result.stdout
    snapshot = SNAPSHOTS / f"{command or 'voicechat'}-{columns}.txt"
    if os.environ.get("VOICECHAT_UPDATE_SNAPSHOTS"):
        snapshot.write_text(result.stdout)
    assert result.stdout == snapshot.read_text(), f"help changed; see {snapshot}"


def test_serve_help_groups_its_options_into_panels() -> None:
    out = voicechat("serve", "--help").stdout
    panels = ["Server", "Back ends", "Local models", "Fish Speech", "Speech input", "Security"]
    positions = [out.index(f"─ {panel} ") for panel in [*panels, "Limits", "Tuning"]]
    assert positions == sorted(positions)
    # One line an option at 80 columns for most of them: 56 options in 94 lines (one panel,
    # Speech input, more than the 45 options in under 90 lines before it).
    assert len(out.splitlines()) <= 94


def test_version() -> None:
    result = voicechat("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"voicechat {version('voicechat')}"


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o default -F"),
        ("zsh", "#compdef voicechat"),
        ("fish", "complete --command voicechat"),
    ],
)
def test_completion_script_is_generated(shell: str, marker: str) -> None:
    """What `--install-completion` writes for that shell (Typer asks the same variable)."""
    result = voicechat(_VOICECHAT_COMPLETE=f"source_{shell}")
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
    assert "_VOICECHAT_COMPLETE" in result.stdout


def test_completion_lists_the_commands() -> None:
    result = voicechat(_VOICECHAT_COMPLETE="complete_bash", COMP_WORDS="voicechat ", COMP_CWORD="1")
    assert set(result.stdout.split()) >= {"serve", "ask", "talk", "doctor"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--max-tokens", "0"], "must be at least 1, not 0"),
        (["serve", "--tts-concurrency", "17"], "must be between 1 and 16, not 17"),
        (["serve", "--port", "x"], "'x' is not a valid integer"),
        (["serve", "--no-such-flag"], "No such option"),
        (["serve", "--log-level", "loud"], "not a log level"),
        (["serve", "--host", "0.0.0.0"], "without a token"),
        (["ask"], "the message is empty"),
        (["ask", "   "], "the message is empty"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_line(args: list[str], says: str) -> None:
    result = voicechat(*args)
    assert result.returncode == 2
    assert says in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_an_environment_variable_sets_an_option() -> None:
    result = voicechat("serve", VOICECHAT_MAX_TOKENS="0")
    assert result.returncode == 2
    assert "must be at least 1, not 0" in " ".join(result.stderr.split())


def test_the_cli_imports_no_back_end_before_a_command_runs() -> None:
    """What keeps --help fast (scripts/bench_cli.py measures the time itself)."""
    probe = (
        "import sys, voicechat.cli; "
        "heavy = {'langgraph', 'langchain_core', 'websockets', 'numpy', 'sounddevice', "
        "'textual', 'llama_cpp', 'httpx', 'asyncio'} & {m.split('.')[0] for m in sys.modules}; "
        "print(sorted(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_doctor_reports_this_machine_as_json_for_scripts() -> None:
    result = voicechat("doctor", "--json")
    report = json.loads(result.stdout)
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    failed = [check for check in report["checks"] if check["status"] == "fail"]
    assert statuses["python"] == statuses["LLM model"] == statuses["voice"] == "ok", failed
    assert statuses["llama.cpp build"] == "ok", failed
    assert result.returncode == (0 if report["ok"] else 1)


def test_doctor_names_a_missing_model_and_the_fix() -> None:
    result = voicechat("doctor", "--llm-model-path", "/nonexistent/model.gguf")
    assert result.returncode == 1
    assert "FAIL LLM model" in result.stdout
    assert "--llm-model-path" in result.stdout


def test_serve_on_a_port_in_use_says_so_and_exits_1() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = voicechat("serve", "--llm", "scripted", "--tts", "tone", "--port", str(port))
    assert result.returncode == 1
    said = " ".join(result.stderr.split())
    assert f"cannot listen on 127.0.0.1:{port}: port {port} is in use" in said
    assert f"--port {port + 1}" in said and "Traceback" not in said


def test_a_token_the_web_page_cannot_send_is_warned_about() -> None:
    """`serve` stops at once on the port in use, after checking the token."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        bad = voicechat("serve", "--llm", "scripted", "--tts", "tone", "--port", port,
                        VOICECHAT_TOKEN="slash/and=equals:colon-0123456789")  # fmt: skip
        good = voicechat("serve", "--llm", "scripted", "--tts", "tone", "--port", port,
                         VOICECHAT_TOKEN="Url_safe-token.0123456789~")  # fmt: skip
    assert "a browser cannot send" in bad.stderr
    assert "a browser cannot send" not in good.stderr

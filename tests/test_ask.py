"""`voicechat ask`: in-process against a live server, and as a real command line."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from voicechat.client.ask import ask
from voicechat.segmenter import Segmenter
from voicechat.settings import EXIT_ANSWER_FAILED, EXIT_OK, EXIT_UNREACHABLE
from voicechat.tts.tone import ToneTTS, tone_pcm

from .conftest import running_server, scripted_backend

SCRIPT = ["Hello", " there.", " This is", " a test", " answer."]


def _units(text: str) -> list[str]:
    seg = Segmenter()
    return seg.feed(text) + seg.flush()


async def test_ask_prints_the_text_and_writes_the_exact_samples(tmp_path: Path) -> None:
    out, stdout, stderr = tmp_path / "a.wav", io.StringIO(), io.StringIO()
    tts = ToneTTS()
    async with running_server(scripted_backend(SCRIPT), tts) as server:
        code = await ask("hi", server_url=server.url, out=out, stdout=stdout, stderr=stderr)
    assert code == EXIT_OK, stderr.getvalue()
    assert stdout.getvalue() == "".join(SCRIPT) + "\n"
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (22050, 1, 2)
        frames = wav.readframes(wav.getnframes())
    assert frames == b"".join(tone_pcm(u, 22050) for u in _units("".join(SCRIPT)))


async def test_ask_json_prints_every_server_message_as_one_line() -> None:
    stdout = io.StringIO()
    async with running_server(scripted_backend(SCRIPT)) as server:
        code = await ask("hi", server_url=server.url, json_lines=True, stdout=stdout)
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert code == EXIT_OK
    assert lines[0]["type"] == "session.created"
    assert lines[1]["type"] == "response.created"
    assert lines[-1]["type"] == "response.done" and lines[-1]["status"] == "completed"
    assert {"text.delta", "audio.chunk"} <= {line["type"] for line in lines}


async def test_ask_exits_1_when_the_answer_fails() -> None:
    stderr = io.StringIO()
    async with running_server(scripted_backend(["Oops", {"error": "boom"}])) as server:
        code = await ask("hi", server_url=server.url, stdout=io.StringIO(), stderr=stderr)
    assert code == EXIT_ANSWER_FAILED
    assert "llm_failed" in stderr.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _voicechat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "voicechat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_ask_against_no_server_says_so_in_one_line_and_exits_3() -> None:
    url = f"ws://127.0.0.1:{_free_port()}/v1/chat/stream"
    result = _voicechat("ask", "hello", "--server", url)
    assert result.returncode == EXIT_UNREACHABLE
    assert result.stderr.strip().count("\n") == 0
    assert "cannot connect" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args", [["ask"], ["ask", "hi", "--no-such-flag"], ["serve", "--port", "x"]]
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = _voicechat(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_ask_reads_the_prompt_from_stdin_and_an_empty_one_is_a_usage_error() -> None:
    result = _voicechat("ask", "-", stdin="   \n")
    assert result.returncode == 2
    assert "empty" in result.stderr


def _wait_until_serving(server: subprocess.Popen[str]) -> None:
    """Read the server's log until it says it is serving (it logs that after binding)."""
    assert server.stderr is not None
    for line in server.stderr:
        if "serving ws://" in line:
            return
    raise AssertionError(f"server exited before serving: {server.wait()}")


def test_serve_then_ask_from_the_command_line_then_sigterm_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    env["VOICECHAT_PORT"] = str(port)  # options also come from the environment
    server = subprocess.Popen(
        [sys.executable, "-m", "voicechat", "serve", "--llm", "scripted", "--tts", "tone"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_serving(server)
        out = tmp_path / "demo.wav"
        result = _voicechat(
            "ask", "hello", "--server", f"ws://127.0.0.1:{port}/v1/chat/stream", "--out", str(out)
        )
        assert result.returncode == 0, result.stderr
        assert "speaking while the text is still being written" in result.stdout
        with wave.open(str(out)) as wav:
            assert wav.getnframes() > 22050  # seconds of audio, not a stub
    finally:
        server.terminate()
        _, logs = server.communicate(timeout=30)
    assert server.returncode == 0, logs
    assert "stopped" in logs

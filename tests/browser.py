"""Helpers for the browser client's tests: Debian's Chromium driven by Playwright, the page's
state read through its read-only hook (`window.voicechat.state()`), recordings of a private
PulseAudio sink, and a protocol peer a test scripts frame by frame.

Waits poll a condition in the page (Playwright's wait_for_function) with a generous deadline;
nothing waits for a duration. Predicates are passed as function source: the page's CSP has no
'unsafe-eval', which Playwright needs for a bare expression.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from voicechat.audio.wav import encode_wav
from voicechat.web import load_static_files

from .audio_env import PULSE_MONITOR, SINK_RATE, PulseDaemon
from .process_guard import spawn, stop

CHROMIUM = Path("/usr/lib/chromium/chromium")  # Debian's; the /usr/bin wrapper is a shell script
WAIT_MS = 20_000  # bound on any single wait: a hang fails instead of blocking CI


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (a missing package), or None."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} missing: apt-get install chromium (scripts/setup.sh test)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return (
            "the playwright package is missing: pip install playwright (never playwright install)"
        )
    return None


async def launch_chromium(playwright: Any, env: dict[str, str], args: Sequence[str] = ()) -> Any:
    """Headless Chromium with sound on (Playwright mutes it by default) and no autoplay gate.

    The page still creates its AudioContext on the first real gesture (Safari's rule); the flag
    only keeps tests that never click from depending on it. Playwright's driver kills the
    browser when its pipe closes, so a killed test run leaves no Chromium behind.
    """
    return await playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        ignore_default_args=["--mute-audio"],
        args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required", *args],
        env=env,
    )


def fake_microphone(wav: Path) -> list[str]:
    """Chromium flags that make `wav` the microphone (played once from the start of each
    capture, `%noloop`, then silence). Permission still follows the browser context: granted
    with `context.grant_permissions(["microphone"])`, refused otherwise (headless, no prompt)."""
    return [
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
    ]


def write_spoken_wav(path: Path, parts: Sequence[str | float]) -> Path:
    """A WAV file of `parts`: text said by the embedded Piper voice (run here, in the test
    process, not by the server under test), or seconds of silence."""
    import piper

    from voicechat.tts.piper import default_voice_path

    voice = piper.PiperVoice.load(str(default_voice_path()))
    rate = int(voice.config.sample_rate)
    pcm = bytearray()
    for part in parts:
        if isinstance(part, str):
            pcm += b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(part))
        else:
            pcm += bytes(2 * round(part * rate))
    path.write_bytes(encode_wav(bytes(pcm), rate))
    return path


class PageErrors:
    """Uncaught exceptions and CSP violations in a page: a test fails on any."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.errors.append(f"CSP: {message.text}")


async def state(page: Any) -> dict[str, Any]:
    return await page.evaluate("() => window.voicechat.state()")


async def until(
    page: Any, predicate: str, what: str, arg: Any = None, *, timeout_ms: float = WAIT_MS
) -> Any:
    """Wait until `predicate(state, arg)` (JavaScript function source) is truthy in the page;
    return its value. On timeout, fail with the page's state."""
    try:
        handle = await page.wait_for_function(
            f"(arg) => window.voicechat && ({predicate})(window.voicechat.state(), arg)",
            arg=arg,
            timeout=timeout_ms,
        )
    except Exception as exc:  # Playwright's TimeoutError, or the page went away
        try:
            snapshot = json.dumps(await state(page), indent=1)[:6000]
        except Exception:
            snapshot = "(no state)"
        raise AssertionError(
            f"timed out waiting for {what}: {exc}\npage state: {snapshot}"
        ) from None
    return await handle.json_value()


async def open_chat(page: Any, url: str) -> None:
    """Load the page and wait for its session."""
    await page.goto(url)
    await until(page, "s => s.connection.state === 'connected'", "the connection")


async def send(page: Any, text: str) -> None:
    """Type `text` and press Enter, as a user does (both are real input events: gestures)."""
    await page.fill("#message", text)
    await page.press("#message", "Enter")


async def answer_done(page: Any, index: int) -> dict[str, Any]:
    """Wait until the answer at turn `index` has its response.done and all its audio played.
    Playing takes as long as the audio still queued: the bound is WAIT_MS beyond that."""
    s = await until(
        page,
        """(s, i) => {
          const turn = s.turns[i];
          if (!turn || !turn.status) return false;
          const counts = s.player.answers[turn.responseId];
          return (turn.chunks === 0 || (counts && counts.received === counts.sent)) && s;
        }""",
        f"answer {index} to arrive",
        index,
    )
    playing_ms = 1000 * s["player"]["queued"] / (s["player"]["contextRate"] or 1)
    return await until(
        page,
        """(s, i) => {
          const turn = s.turns[i];
          const counts = s.player.answers[turn.responseId];
          const played = turn.chunks === 0 || counts.played + counts.dropped === counts.received;
          return played && s.player.queued === 0 && turn;
        }""",
        f"answer {index} to finish playing",
        index,
        timeout_ms=WAIT_MS + playing_ms,
    )


# --- sound out of the sink ------------------------------------------------------------------


class SinkRecording:
    """`parec` on the private sink's monitor, into a file, while the test runs."""

    def __init__(self, pulse: PulseDaemon, path: Path) -> None:
        self.path = path
        env = {**os.environ, **pulse.client_env}
        command = ["parec", "-d", PULSE_MONITOR, "--format=s16le", f"--rate={SINK_RATE}",
                   "--channels=1", "--raw", "--latency-msec=20"]  # fmt: skip
        with open(path, "wb") as out:
            self.process = spawn(command, env=env, stdout=out, stderr=subprocess.PIPE)

    def samples(self) -> np.ndarray:
        data = self.path.read_bytes()
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32) / 32768

    async def wait_for(self, condition: Callable[[np.ndarray], bool], what: str) -> np.ndarray:
        """Poll the recording until `condition(samples)` holds; fail after WAIT_MS."""
        deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
        while not condition(samples := self.samples()):
            if self.process.poll() is not None:
                raise AssertionError(f"parec exited: {self.process.stderr.read().decode()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what} in the recording")
            await asyncio.sleep(0.05)  # poll interval, not a synchronisation
        return samples

    def close(self) -> None:
        stop(self.process, signal.SIGTERM)


def loud_span(samples: np.ndarray, threshold: float = 0.02, block: int = 480) -> tuple[int, int]:
    """[first, last) sample of the 10 ms blocks whose peak passes `threshold`; (0, 0) if none."""
    blocks = len(samples) // block
    peaks = np.abs(samples[: blocks * block]).reshape(blocks, block).max(axis=1)
    loud = np.flatnonzero(peaks > threshold)
    return (0, 0) if not len(loud) else (int(loud[0]) * block, (int(loud[-1]) + 1) * block)


def dominant_hz(samples: np.ndarray, rate: int = SINK_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


# --- a protocol peer scripted by the test ---------------------------------------------------


def response_created(response_id: str, in_reply_to: str | None) -> str:
    return json.dumps(
        {"type": "response.created", "response_id": response_id, "in_reply_to": in_reply_to}
    )


def text_delta(response_id: str, text: str) -> str:
    return json.dumps({"type": "text.delta", "response_id": response_id, "text": text})


def audio_chunk(response_id: str, seq: int, segment: int, text: str, pcm: bytes,
                rate: int = 22050, audio: str | None = None) -> str:  # fmt: skip
    """An audio.chunk frame carrying int16 `pcm` as a WAV file (or `audio` as given)."""
    return json.dumps({
        "type": "audio.chunk", "response_id": response_id, "seq": seq, "segment": segment,
        "text": text, "format": "wav", "sample_rate": rate, "samples": len(pcm) // 2,
        "audio": audio if audio is not None else base64.b64encode(encode_wav(pcm, rate)).decode(),
    })  # fmt: skip


def response_done(response_id: str, status: str, text: str = "") -> str:
    metrics = {"first_text_ms": 1, "first_audio_ms": 2, "total_ms": 3, "segments": 1, "audio_ms": 0}
    return json.dumps({"type": "response.done", "response_id": response_id, "status": status,
                       "text": text, "metrics": metrics})  # fmt: skip


@dataclass
class ProtocolPeer:
    """Serves the page's files and, on the WebSocket, runs `script(connection)`: a stand-in
    for the server that sends exactly the frames a test needs, in the order it needs (what a
    real server does only under a race)."""

    script: Callable[[Any], Awaitable[None]]
    session: dict[str, Any] = field(default_factory=dict)  # more fields for session.created
    files: dict[str, Any] = field(default_factory=load_static_files)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> ProtocolPeer:
        from websockets.asyncio.server import serve

        self.server = await serve(
            self._run, "127.0.0.1", 0, process_request=self._route,
            select_subprotocol=lambda connection, offered: "voicechat.v1",
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    def _route(self, connection: Any, request: Any) -> Any:
        if request.path == "/v1/chat/stream":
            return None  # go on with the WebSocket handshake
        file = self.files.get(request.path)
        if file is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "no such file\n")
        response = connection.respond(HTTPStatus.OK, "")
        response.body = file.body
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        response.headers["Content-Type"] = file.content_type
        response.headers["Content-Length"] = str(len(file.body))
        return response

    async def _run(self, connection: Any) -> None:
        await connection.send(json.dumps({
            "type": "session.created", "session_id": "peer-session",
            "protocol": "voicechat.v1", "llm": "peer", "tts": "peer", **self.session,
        }))  # fmt: skip
        try:
            await self.script(connection)
        finally:
            self.done.set()


async def receive(connection: Any, kind: str) -> dict[str, Any]:
    """The next frame of type `kind` from the page (others are skipped)."""
    async with asyncio.timeout(WAIT_MS / 1000):
        while (frame := json.loads(await connection.recv()))["type"] != kind:
            pass
    return frame

"""A test double of OpenAI's speech-to-text endpoint, `POST /v1/audio/transcriptions`, on loopback.

A real HTTP/1.1 server (stdlib `ThreadingHTTPServer`, as tests/fish_double.py) that answers the
way OpenAI's API does: a multipart/form-data body with `file` and `model` (both required, else 400
with an `{"error": {...}}` object), optional `language` and `response_format` (`json`, the
default: `{"text": ...}`; `text`: the bare text; `verbose_json`: text, language, duration), bearer
auth when `api_key` is set (401 otherwise). Recognition is real: the uploaded WAV (read with the
`wave` module) goes through the project's own Whisper engine, `WhisperEngine("tiny.en", "en")`,
loaded once per test process. Not supported: audio other than WAV (400, as OpenAI does for a file
it cannot decode), and the srt/vtt formats (400).

`mode` makes it misbehave on purpose:
- "ok": recognises the speech;
- "down": nothing listens at `url` (connection refused); set at construction only;
- "500": HTTP 500 with an OpenAI-style error object;
- "garbage": HTTP 200 whose body is not JSON;
- "no_text": HTTP 200 JSON without "text";
- "slow": never answers, until the client gives up (its timeout) or the double stops.

The server runs in threads of the test process, so it dies with the test; `stop()` also ends a
"slow" request in progress.
"""

from __future__ import annotations

import functools
import io
import json
import select
import socket
import threading
import wave
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np

from .fish_double import refused_url
from .loopback_http import LoopbackHTTPServer

MODES = ("ok", "down", "500", "garbage", "no_text", "slow")
RATE = 16000  # Whisper hears 16 kHz; other rates are resampled
FORMATS = ("json", "text", "verbose_json")


@functools.cache
def whisper_engine() -> Any:
    """The project's Whisper tiny.en engine, in this process (about 1 s to load, once)."""
    from voicechat.engines.whisper import WhisperEngine

    return WhisperEngine("tiny.en", "en")


@dataclass
class Upload:
    """One transcription request as the double received it."""

    fields: dict[str, str]  # model, language, response_format...
    filename: str | None
    content_type: str | None
    audio: bytes  # the file's bytes, as sent
    wav_rate: int | None = None  # when `audio` was a WAV file
    wav_channels: int | None = None
    wav_samples: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class SttDouble:
    """OpenAI transcription double. `mode`, `api_key` and `text_override` may change any time
    (except to or from "down")."""

    def __init__(self, mode: str = "ok", *, api_key: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.api_key = api_key
        self.text_override: str | None = None  # answer this instead of recognising
        self.uploads: list[Upload] = []
        self.given_up = 0  # "slow" requests whose client went away first
        self.url = ""  # the base URL, …/v1, as --stt-url takes it
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()  # one Whisper model: one request at a time
        self._stopping = threading.Event()
        self._slow_entered = threading.Event()
        self._server: LoopbackHTTPServer | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> SttDouble:
        if self.mode == "down":
            self.url = refused_url() + "/v1"
            return self
        whisper_engine()  # load it now, not inside the first request's timeout
        double = self

        class Handler(_Handler):
            stt = double

        self._server = LoopbackHTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self._server.port}/v1"
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends "slow" requests
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> SttDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- observations -----------------------------------------------------------------------

    def wait_slow_request(self, timeout: float) -> bool:
        """Whether a request reached the "slow" hold within `timeout` seconds (a hang guard)."""
        return self._slow_entered.wait(timeout)

    def _record(self, upload: Upload) -> None:
        with self._lock:
            self.uploads.append(upload)

    def recognise(self, upload: Upload) -> tuple[str, str, float]:
        """(text, language, seconds of audio) of an uploaded WAV, by the real Whisper engine."""
        samples = _wav_samples(upload)
        seconds = samples.size / RATE
        if self.text_override is not None:
            return self.text_override, "en", seconds
        language = upload.fields.get("language") or None
        with self._engine_lock:
            text, detected = whisper_engine().transcribe(samples, language, lambda: False)
        return text, detected, seconds


def _wav_samples(upload: Upload) -> np.ndarray:
    """The upload's audio as float32 mono at 16 kHz (channels averaged, resampled if needed)."""
    try:
        with wave.open(io.BytesIO(upload.audio), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise BadRequest(f"Invalid file format: not a WAV file ({exc})", "file") from None
    if width != 2:
        raise BadRequest(f"Invalid file format: {8 * width}-bit WAV; the double reads 16-bit")
    upload.wav_rate, upload.wav_channels = rate, channels
    pcm = np.frombuffer(frames[: len(frames) // (2 * channels) * 2 * channels], "<i2")
    mono = pcm.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
    upload.wav_samples = mono.size
    if rate != RATE:
        import soxr

        mono = soxr.resample(mono, rate, RATE).astype(np.float32)
    return mono


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/form-data body: (their Content-Disposition params and
    Content-Type, as a dict), and their bytes exactly as sent."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise BadRequest("malformed multipart body")
    parts = []
    for piece in pieces[1:-1]:
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"\r\n") or not data.endswith(b"\r\n"):
            raise BadRequest("malformed multipart part")
        info: dict[str, str] = {}
        for line in head[2:].decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                for param in value.split(";")[1:]:
                    key, _, val = param.strip().partition("=")
                    info[key.lower()] = val.strip('"')
            elif name.strip().lower() == "content-type":
                info["content-type"] = value.strip()
        parts.append((info, data[:-2]))
    return parts


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stt: SttDouble

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        return

    def do_GET(self) -> None:
        self._discard_body()
        path = self.path.split("?", 1)[0]
        if path == "/v1/audio/transcriptions":
            return self._error(405, "Method Not Allowed", "invalid_request_error")
        return self._error(404, f"Unknown request URL: GET {path}", "invalid_request_error")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path != "/v1/audio/transcriptions":
            return self._error(404, f"Unknown request URL: POST {path}", "invalid_request_error")
        if not self._authorized():
            return None
        try:
            upload = self._upload(body)
        except BadRequest as exc:
            return self._error(400, str(exc), "invalid_request_error", exc.param)
        self.stt._record(upload)
        mode = self.stt.mode
        if mode == "slow":
            return self._hold()
        if mode == "500":
            return self._error(
                500, "The server had an error processing your request.", "server_error"
            )
        if mode == "garbage":
            return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
        if mode == "no_text":
            return self._json(200, {"task": "transcribe", "language": "english"})
        try:
            text, language, seconds = self.stt.recognise(upload)
        except BadRequest as exc:
            return self._error(400, str(exc), "invalid_request_error", exc.param)
        response_format = upload.fields.get("response_format", "json")
        if response_format == "text":
            return self._send(200, text.encode(), "text/plain; charset=utf-8")
        if response_format == "verbose_json":
            return self._json(
                200,
                {"task": "transcribe", "language": language, "duration": seconds, "text": text},
            )
        return self._json(200, {"text": text})

    def _authorized(self) -> bool:
        if self.stt.api_key is None:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {self.stt.api_key}":
            return True
        self._error(401, "Incorrect API key provided.", "invalid_request_error")
        return False

    def _upload(self, body: bytes) -> Upload:
        content_type = self.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise BadRequest("Could not parse multipart form")
        fields: dict[str, str] = {}
        file: tuple[dict[str, str], bytes] | None = None
        for info, data in parse_multipart(body, content_type):
            if info.get("name") == "file":
                file = (info, data)
            elif "name" in info:
                fields[info["name"]] = data.decode("utf-8", "replace")
        if file is None:
            raise BadRequest("you must provide a file", "file")
        if not fields.get("model"):
            raise BadRequest("you must provide a model parameter", "model")
        response_format = fields.get("response_format", "json")
        if response_format not in FORMATS:
            raise BadRequest(f"response_format {response_format!r} is not supported by the double")
        headers = {key.lower(): value for key, value in self.headers.items()}
        info, audio = file
        return Upload(
            fields, info.get("filename"), info.get("content-type"), audio, headers=headers
        )

    def _hold(self) -> None:
        """Answer nothing: wait until the client goes away or the double stops."""
        self.stt._slow_entered.set()
        while not self.stt._stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                with self.stt._lock:
                    self.stt.given_up += 1
                break
        self.close_connection = True

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up; nothing to tell it

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        error = {"message": message, "type": kind, "param": param, "code": None}
        self._json(status, {"error": error})

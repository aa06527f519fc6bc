"""A faithful test double of Fish Speech's HTTP API server (`tools/api_server.py`), on loopback.

A real HTTP/1.1 server (stdlib `ThreadingHTTPServer`, chunked responses written by hand) that
follows the facts in shared/FISH_SPEECH_API.md: msgpack and JSON bodies (else 415), 422 lists of
validation errors, bearer auth checked before the body, "Streaming only supports WAV format",
44.1 kHz mono int16 audio, a complete WAV when not streaming and headerless PCM when streaming
(optionally the legacy 44-byte header with zero sizes first). Knobs make it fail on purpose,
on every request or (`fault_marker`) only on those whose text contains a marker. `stop()` closes
the open connections too, as a server process that exits does.
Not supported (answered 500, as the real server does for pcm/opus): non-wav formats.
"""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import msgpack
import numpy as np

from .loopback_http import LoopbackHTTPServer

_REFERENCE_ID = re.compile(r"^[a-zA-Z0-9\-_ ]+$")


def pcm_for_text(text: str, sample_rate: int = 44100) -> bytes:
    """The int16 LE mono PCM the double answers for `text` (30 ms per character, >= 100 ms)."""
    count = int(sample_rate * max(0.1, 0.03 * len(text)))
    pitch = 150 + zlib.crc32(text.encode()) % 300
    t = np.arange(count) / sample_rate
    return (0.25 * 32767 * np.sin(2 * np.pi * pitch * t)).astype("<i2").tobytes()


def wav_bytes(pcm: bytes, sample_rate: int, *, streaming_header: bool = False) -> bytes:
    """A WAV header (+ PCM). A streaming header has zero sizes, like old Fish Speech versions."""
    data_size = 0 if streaming_header else len(pcm)
    riff_size = 0 if streaming_header else 36 + len(pcm)
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", riff_size, b"WAVE", b"fmt ", 16, 1, 1,
        sample_rate, sample_rate * 2, 2, 16, b"data", data_size,
    )  # fmt: skip
    return header if streaming_header else header + pcm


def refused_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class _ClientGone(Exception):
    pass


class FishDouble:
    """Fish Speech API double. Attributes below are knobs a test may change at any time."""

    def __init__(
        self, *, api_key: str | None = None, max_text_length: int = 0, sample_rate: int = 44100
    ) -> None:
        self.api_key = api_key
        self.max_text_length = max_text_length
        self.sample_rate = sample_rate
        self.fail_status: int | None = None
        self.garbage = False
        self.truncate_after_bytes: int | None = None
        self.first_byte_delay_s = 0.0
        self.legacy_wav_header = False
        self.stream_chunk_bytes = 4097
        self.serialize = False
        self.hold: threading.Event | None = None
        # When set, the fault knobs above apply only to requests whose text contains it.
        self.fault_marker: str | None = None
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.max_in_flight = 0
        self.url = ""
        self._in_flight = 0
        self._lock = threading.Lock()
        self._worker = threading.Lock()  # the one model worker when `serialize` is on
        self._disconnected = threading.Event()
        self._stopping = threading.Event()
        self._server: LoopbackHTTPServer | None = None
        self._connections: set[socket.socket] = set()  # open client connections

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> FishDouble:
        double = self

        class Handler(_Handler):
            fish = double

        self._server = LoopbackHTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self._server.port}"
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.stop()
        with self._lock:  # kept-alive connections close too: a client must connect anew
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client

    def __enter__(self) -> FishDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- observations -----------------------------------------------------------------------

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def wait_for_disconnect(self, timeout: float = 5.0) -> bool:
        return self._disconnected.wait(timeout)

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def faulty(self, text: str) -> bool:
        """Whether the fault knobs apply to a request for `text`."""
        return self.fault_marker is None or self.fault_marker in text

    def _client_gone(self) -> None:
        with self._lock:
            self.disconnects += 1
        self._disconnected.set()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fish: FishDouble

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        return

    def setup(self) -> None:
        super().setup()
        self.fish._opened(self.connection)

    def finish(self) -> None:
        self.fish._closed(self.connection)
        super().finish()

    # --- routing ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        routes = {"/v1/health": {"GET", "POST"}, "/v1/tts": {"POST"}}
        if path not in routes:
            self._discard_body()
            return self._error(404, "Not Found")
        if method not in routes[path]:
            self._discard_body()
            return self._error(405, "Method Not Allowed")
        if not self._authorized():
            return None
        if path == "/v1/health":
            self._discard_body()
            self.fish.requests.append(RecordedRequest(method, path, self._headers(), None))
            return self._json(200, {"status": "ok"})
        return self._tts()

    def _headers(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers.items()}

    def _authorized(self) -> bool:
        """Bearer auth on every /v1 route, checked before the body is read."""
        if self.fish.api_key is None:
            return True
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            self._error(401, "Unauthorized", extra={"WWW-Authenticate": "Bearer"}, close=True)
            return False
        if token != self.fish.api_key:
            self._error(401, "Invalid token", close=True)
            return False
        return True

    # --- /v1/tts -----------------------------------------------------------------------------

    def _tts(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        body: Any = None
        try:
            if content_type == "application/msgpack":
                body = msgpack.unpackb(raw)
            elif content_type == "application/json":
                body = json.loads(raw)
        except Exception:
            body = None
        self.fish.requests.append(RecordedRequest("POST", "/v1/tts", self._headers(), body))
        if content_type not in ("application/msgpack", "application/json"):
            return self._error(415, "Unsupported Media Type")
        if not isinstance(body, dict):
            return self._validation(
                [{"loc": ["body"], "msg": "Invalid body", "type": "value_error"}]
            )
        problems = _validate(body)
        if problems:
            return self._validation(problems)
        reference_id = body.get("reference_id")
        if reference_id is not None and not _REFERENCE_ID.match(reference_id):
            return self._error(500, "Invalid reference id")
        text: str = body["text"]
        limit = self.fish.max_text_length
        if limit and len(text) > limit:
            return self._error(400, f"Text is too long, max length is {limit}")
        streaming = bool(body.get("streaming", False))
        fmt = body.get("format", "wav")
        if streaming and fmt != "wav":
            return self._error(400, "Streaming only supports WAV format")
        if fmt != "wav":
            return self._error(500, f"format {fmt} is not supported by the double")
        faulty = self.fish.faulty(text)
        worker = self.fish._worker if self.fish.serialize else None
        if worker is not None:
            worker.acquire()
        self.fish._enter()
        try:
            if faulty and self.fish.first_byte_delay_s:
                self.fish._stopping.wait(self.fish.first_byte_delay_s)
            if faulty and self.fish.fail_status is not None:
                return self._error(self.fish.fail_status, "Synthetic failure")
            self._send_audio(text, streaming, faulty)
        except _ClientGone:
            self.fish._client_gone()
            self.close_connection = True
        finally:
            self.fish._leave()
            if worker is not None:
                worker.release()

    def _send_audio(self, text: str, streaming: bool, faulty: bool = True) -> None:
        rate = self.fish.sample_rate
        pcm = pcm_for_text(text, rate)
        if streaming:
            body = pcm
            if self.fish.legacy_wav_header:
                body = wav_bytes(pcm, rate, streaming_header=True) + pcm
        else:
            garbage = faulty and self.fish.garbage
            body = b"NOT A WAV FILE" * 10 if garbage else wav_bytes(pcm, rate)
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Disposition", "attachment; filename=audio.wav")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        step = max(1, self.fish.stream_chunk_bytes) if streaming else len(body)
        sent = 0
        for index, start in enumerate(range(0, len(body), step)):
            piece = body[start : start + step]
            truncate = self.fish.truncate_after_bytes if faulty else None
            if streaming and truncate is not None and sent + len(piece) > truncate:
                self._write_chunk(piece[: max(0, truncate - sent)])
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # cut off mid-stream
                return
            self._write_chunk(piece)
            sent += len(piece)
            if index == 0 and streaming and self.fish.hold is not None:
                self._hold_watching_client()
        self._write(b"0\r\n\r\n")

    def _hold_watching_client(self) -> None:
        """Wait for `hold`; a client that closes meanwhile is noticed at once."""
        hold = self.fish.hold
        assert hold is not None
        while not hold.is_set() and not self.fish._stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                raise _ClientGone

    def _write_chunk(self, piece: bytes) -> None:
        if piece:
            self._write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientGone from exc

    # --- helpers ------------------------------------------------------------------------------

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _json(
        self, status: int, payload: Any, extra: dict[str, str] | None = None, close: bool = False
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self, status: int, message: str, extra: dict[str, str] | None = None, close: bool = False
    ) -> None:
        phrase = self.responses.get(status, ("Error",))[0]
        payload = {"statusCode": status, "message": message, "error": phrase}
        self._json(status, payload, extra, close)

    def _validation(self, problems: list[dict[str, Any]]) -> None:
        self._json(422, problems)


def _validate(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks pydantic makes on ServeTTSRequest, as a 422 list."""
    problems: list[dict[str, Any]] = []

    def problem(field: str, msg: str, kind: str) -> None:
        problems.append({"loc": ["body", field], "msg": msg, "type": kind})

    if "text" not in body:
        problem("text", "Field required", "missing")
    elif not isinstance(body["text"], str):
        problem("text", "Input should be a valid string", "string_type")
    if body.get("format", "wav") not in ("wav", "pcm", "mp3", "opus"):
        problem("format", "Input should be 'wav', 'pcm', 'mp3' or 'opus'", "literal_error")
    if not isinstance(body.get("streaming", False), bool):
        problem("streaming", "Input should be a valid boolean", "bool_type")
    for field, low, high in (("top_p", 0.1, 1.0), ("temperature", 0.1, 1.0)):
        if field in body:
            value = body[field]
            if not isinstance(value, int | float) or isinstance(value, bool):
                problem(field, "Input should be a valid number", "float_type")
            elif not low <= value <= high:
                problem(field, f"Input should be between {low} and {high}", "range_error")
    reference_id = body.get("reference_id")
    if reference_id is not None and not isinstance(reference_id, str):
        problem("reference_id", "Input should be a valid string", "string_type")
    return problems

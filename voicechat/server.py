"""The WebSocket server: routes, sessions, limits and a two-step shutdown.

`WS /v1/chat/stream` runs one `Session` per connection; `GET /healthz` answers JSON and
`GET /metrics` Prometheus' text format (`HEAD` their headers, other methods 405); the web
client's files are served from memory; any other path gets 404. A request with several `Host`
headers gets 400, a chat handshake with several `Origin` headers 403. Connections still in the
opening handshake are capped apart from sessions, and both caps are fitted to the open-file
limit.

A session owns at most one answer task and one writer task: every frame goes through a bounded
outbound queue to the writer, which drops frames of cancelled responses, so after a response's
`response.done` nothing of it is ever sent.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from contextlib import suppress
from functools import partial
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from voicechat import protocol, serve_workers
from voicechat.llm import ChatBackend
from voicechat.metrics import METRICS_PATH, METRICS_REFRESH_S, ServerMetrics
from voicechat.notice import RepeatedWarning
from voicechat.pipeline import (
    CANCELLED,
    COMPLETED,
    FAILED,
    Answer,
    ClientGone,
    Emit,
)
from voicechat.serve_workers import SessionTally
from voicechat.settings import ServerConfig
from voicechat.speech import SpeechInput
from voicechat.speech.listener import Listener, TurnSettings, vad_notice
from voicechat.speech.scheduler import STTScheduler
from voicechat.tts.base import TTSEngine
from voicechat.web import etag_matches, load_static_files, security_headers
from voicechat.workers import Worker

log = logging.getLogger(__name__)

# One outbound frame: (response_id or None, its text, kind). FRAME: an encoded frame, dropped
# if its response was cancelled; FINAL: a response.done, sent even then; TEXT_DELTA: the text of
# a text.delta, unencoded, so the writer can merge neighbours into one frame.
FRAME, FINAL, TEXT_DELTA = "frame", "final", "text.delta"
Outbound = tuple[str | None, str, str]

SPEECH_BEHIND = "speech input is behind (the recognizer is busy); message dropped"
MIN_FRAME_S = 0.02  # what the audio rate limit charges for a frame, at least
RECENT_ANSWERS = 4  # how many of a session's answers response.truncate can still name
CLOSE_WAIT_S = 5.0  # how long a close may wait for a client that is not reading
# File descriptors for everything but client connections: worker pipes, the Fish Speech pool
# (16), SQLite, logs, the listening socket. Added to the caps when sizing the open-file limit.
FD_RESERVE = 128
CAP_NOTICE_INTERVAL_S = 60.0  # a cap that keeps refusing logs one line per this interval


def presented_token(headers: Headers) -> str | None:
    """The token from `Authorization: Bearer ...`, or from a `voicechat.token.*` subprotocol.

    Several Authorization headers present no token: which one counts would be a guess.
    """
    authorizations = headers.get_all("Authorization")
    if len(authorizations) > 1:
        return None
    authorization = authorizations[0] if authorizations else ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for header in headers.get_all("Sec-WebSocket-Protocol"):
        for offered in header.split(","):
            offered = offered.strip()
            if offered.startswith(protocol.TOKEN_SUBPROTOCOL_PREFIX):
                return offered[len(protocol.TOKEN_SUBPROTOCOL_PREFIX) :]
    return None


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """May a client that sent this Origin (and this Host) connect?

    No Origin: not a browser, so not a cross-site request. A listed origin: yes. The page's own
    origin (the scheme and the Host it was loaded from) too, so the page served at `/` works
    without --allow-origin, but only when that Host is an IP address or `localhost`: a name
    could be a DNS-rebinding attacker's (evil.example resolving to 127.0.0.1 makes its Origin
    and Host agree), so a page opened by name needs that name in --allow-origin.
    """
    if origin is None or origin in allowed:
        return True
    if not host or origin not in (f"http://{host}", f"https://{host}"):
        return False
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    hostname = hostname.strip("[]").lower()
    if hostname == "localhost":
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal the token."""
    return presented is not None and hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8")
    )


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Answer "voicechat.v1" when offered; never echo a token subprotocol."""
    return Subprotocol(protocol.PROTOCOL) if protocol.PROTOCOL in offered else None


class _CountedConnection(ServerConnection):
    """A connection the server counts from TCP accept until its handler starts (or it ends)."""

    def __init__(self, *args: Any, owner: VoiceChatServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.owner._handshake_started(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._handshaking.pop(self, None)
        super().connection_lost(exc)


def raise_fd_limit(needed: int) -> int | None:
    """Raise the soft open-file limit toward `needed`, up to the hard limit, with a log line;
    return the soft limit now in force (None: unlimited, or not POSIX).

    Past the limit accept() fails: asyncio logs "socket.accept() out of system resource" and stops
    accepting anyone, /healthz included, for a second at a time.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    if soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
        else:
            log.info("raised the open-file limit (RLIMIT_NOFILE) from %d to %d", soft, target)
            soft = target
    return soft


def fit_caps(max_connections: int, max_handshakes: int, fd_limit: int | None) -> tuple[int, int]:
    """The two connection caps, scaled down together when `fd_limit` cannot hold them."""
    wanted = max_connections + max_handshakes
    budget = None if fd_limit is None else fd_limit - FD_RESERVE
    if budget is None or wanted <= budget:
        return max_connections, max_handshakes
    scale = max(budget, 2) / wanted
    return max(1, int(max_connections * scale)), max(1, int(max_handshakes * scale))


class VoiceChatServer:
    """Serves protocol v1 over `websockets`, with one chat graph and one TTS engine for all."""

    def __init__(
        self,
        backend: ChatBackend,
        tts: TTSEngine,
        config: ServerConfig,
        workers: Mapping[str, Worker] | None = None,
        tally: SessionTally | None = None,
        speech: SpeechInput | None = None,
    ) -> None:
        self.backend = backend
        self.speech = speech  # None: speech input is off (serve --stt none)
        # Every session's transcriptions wait here, fairly, not in the recognizer's pipe.
        self.stt_scheduler = STTScheduler(speech.stt) if speech else None
        self.vad_notice = vad_notice()  # a failing VAD: one log line a minute for all sessions
        self.tally = tally  # `serve --workers N`: the sessions of every process, for the cap
        self.tts = tts
        self.config = config
        self.workers = dict(workers or {})  # the engines' worker processes, for /healthz
        self.sessions: set[Session] = set()
        # Counters for /healthz (refuse() counts them there and in /metrics).
        self.refused = {
            "full": 0, "auth": 0, "origin": 0, "slow": 0, "idle": 0, "handshake": 0,
            "bad_request": 0,
        }  # fmt: skip
        restarted = config.worker_index is not None and serve_workers.restarted()
        self.metrics = ServerMetrics(config.worker_index, restarted=restarted)
        self._metrics_task: asyncio.Task[None] | None = None  # serve --workers N: publishes
        self.static_files = load_static_files()  # the browser client, served at /
        # Accepted, not yet a session; oldest first (a dict keeps insertion order).
        self._handshaking: dict[ServerConnection, None] = {}
        # The caps in force: the configured ones, unless the open-file limit is lower (start()).
        self.max_connections = config.max_connections
        self.max_handshakes = config.max_handshakes
        # One WARNING when a cap starts refusing, then at most one per interval while it does.
        self._full_notice = RepeatedWarning(
            log,
            "--max-connections (%d) reached: new connections get HTTP 503 (%d refused since the "
            "last such line)",
            CAP_NOTICE_INTERVAL_S,
        )
        self._handshake_notice = RepeatedWarning(
            log,
            "%d connections are in the opening handshake (the cap): for each new one, the oldest "
            "that has not sent its request is dropped (%d dropped since the last such line)",
            CAP_NOTICE_INTERVAL_S,
        )
        self._server: Server | None = None
        self._idle = asyncio.Event()  # set while no session is open and no answer runs
        # Locks of conversations in use; an entry goes when no answer holds or awaits it.
        self._conversation_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._idle.set()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self._url_host()}:{self.port}{protocol.CHAT_PATH}"

    @property
    def page_url(self) -> str:
        """Where a browser opens the web client (a wildcard bind is shown as loopback)."""
        return f"http://{self._url_host()}:{self.port}/"

    def _url_host(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    def responses_in_flight(self) -> int:
        return sum(1 for session in self.sessions if session.answering)

    async def wait_until_idle(self) -> None:
        """Return once no session is open and no answer is in flight (tests, shutdown checks)."""
        await self._idle.wait()

    def conversation_lock(self, thread_id: str) -> asyncio.Lock:
        """One answer at a time per conversation, even when several connections share it
        (session.resume on two sockets): their turns are stored one after the other."""
        lock = self._conversation_locks.get(thread_id)
        if lock is None:
            lock = self._conversation_locks[thread_id] = asyncio.Lock()
        return lock

    def refuse(self, reason: str) -> None:
        """Count a refusal (or a session closed by a limit): /healthz `disconnected` has the
        connection-level reasons, /metrics every reason (metrics.REFUSAL_REASONS)."""
        if reason in self.refused:
            self.refused[reason] += 1
        self.metrics.refused(reason)

    def update_idle(self, *_: object) -> None:
        """Recompute the idle flag; called whenever a session or an answer task ends."""
        if self.sessions or self.responses_in_flight():
            self._idle.clear()
        else:
            self._idle.set()

    @property
    def handshakes_in_progress(self) -> int:
        """TCP connections accepted that are not (yet) a session: HTTP requests included."""
        return len(self._handshaking)

    def _handshake_started(self, connection: ServerConnection) -> None:
        """A TCP connection was accepted. Past the cap, drop the oldest connection that has not
        sent its request yet (a prompt client sends it at once: an idle socket is the oldest),
        or, when every one has, the new connection."""
        if len(self._handshaking) >= self.max_handshakes:
            victim = next((c for c in self._handshaking if c.request is None), connection)
            self.refuse("handshake")
            self._handshake_notice(self.max_handshakes)
            self._handshaking.pop(victim, None)
            victim.transport.abort()  # frees its file descriptor now
            if victim is connection:
                return
        self._handshaking[connection] = None

    async def start(self) -> None:
        config = self.config
        fd_limit = raise_fd_limit(config.max_connections + config.max_handshakes + FD_RESERVE)
        self.max_connections, self.max_handshakes = fit_caps(
            config.max_connections, config.max_handshakes, fd_limit
        )
        if (self.max_connections, self.max_handshakes) != (
            config.max_connections,
            config.max_handshakes,
        ):
            log.warning(
                "the open-file limit (%s) cannot hold %d sessions and %d connections in the "
                "handshake: serving at most %d and %d. Raise it (ulimit -n, systemd "
                "LimitNOFILE=) for more",
                fd_limit,
                config.max_connections,
                config.max_handshakes,
                self.max_connections,
                self.max_handshakes,
            )
        self._server = await serve(
            self._handle_connection,
            self.config.host,
            self.config.port,
            create_connection=partial(_CountedConnection, owner=self),  # type: ignore[arg-type]
            open_timeout=config.handshake_timeout_s,
            process_request=self._route,
            max_size=self.config.max_frame_bytes,
            compression=None,  # deflating Base64 audio costs much CPU for little gain
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            origins=None,  # checked in _route: listed origins and the page's own (origin_allowed)
            select_subprotocol=_select_subprotocol,
            server_header=None,
            reuse_port=config.reuse_port or None,
        )
        self.metrics.publish(self.health())
        if self.metrics.shared_dir is not None:
            self._metrics_task = asyncio.create_task(self._publish_metrics(), name="metrics")

    async def _publish_metrics(self) -> None:
        """`serve --workers N`: a scrape is answered by any process, from every process's
        files, so each process keeps its states there fresh (its events it writes as they
        happen)."""
        while True:
            await asyncio.sleep(METRICS_REFRESH_S)
            self.metrics.publish(self.health())

    async def shutdown(self) -> None:
        """Stop listening, end answers in flight with their response.done, close, release."""
        if self._server is None:
            return
        self._server.server.close()  # no new connections from here on
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            await asyncio.gather(self._metrics_task, return_exceptions=True)
            self._metrics_task = None
        try:
            await asyncio.gather(
                *(session.close_for_shutdown() for session in list(self.sessions)),
                return_exceptions=True,
            )
            self._server.close()
            await self._server.wait_closed()
        finally:
            if self.stt_scheduler is not None:
                await self.stt_scheduler.aclose()
            await self.tts.aclose()
            self._server = None

    async def __aenter__(self) -> VoiceChatServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    def health(self) -> dict[str, Any]:
        workers = {name: worker.health() for name, worker in self.workers.items()}
        ready = all(worker["state"] == "ready" for worker in workers.values())
        worker = self.config.worker_index
        return {
            "status": "ok" if ready else "degraded",
            **({} if worker is None else {"worker": {"index": worker, "pid": os.getpid()}}),
            "workers": workers,
            "sessions": len(self.sessions),
            "max_connections": self.max_connections,
            "responses_in_flight": self.responses_in_flight(),
            "disconnected": dict(self.refused),
            **({} if self.stt_scheduler is None else {"speech": self.speech_health()}),
            "llm": self.backend.name,
            "tts": self.tts.name,
            "protocol": protocol.PROTOCOL,
        }

    def speech_health(self) -> dict[str, Any]:
        """Speech recognition's backlog (scheduler.py), the sessions listening, and the frames
        the VAD failed on since the start."""
        assert self.stt_scheduler is not None
        return {
            **self.stt_scheduler.health(),
            "listening": sum(1 for s in self.sessions if s._listener is not None),
            "vad_failures": self.vad_notice.total,
        }

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        method = getattr(request, "method", "GET")  # older websockets parse GET requests only
        if len(request.headers.get_all("Host")) > 1:
            # RFC 9112, 3.2: more than one Host is a 400. Which one the Origin check and the
            # page's policy would use is a guess, and a proxy may have picked the other.
            self._refuse_request(connection, method, path, "bad_request", "several Host headers")
            response = connection.respond(HTTPStatus.BAD_REQUEST, "several Host headers\n")
        elif path == protocol.CHAT_PATH and method != "GET":
            response = connection.respond(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{path} is a WebSocket: GET with an Upgrade\n"
            )
            response.headers["Allow"] = "GET"
        elif path == protocol.CHAT_PATH:
            return self._admit(connection, request)
        elif path in (protocol.HEALTH_PATH, METRICS_PATH) and method not in ("GET", "HEAD"):
            response = connection.respond(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{path} answers GET and HEAD only\n"
            )
            response.headers["Allow"] = "GET, HEAD"
        elif path == protocol.HEALTH_PATH:
            response = connection.respond(HTTPStatus.OK, json.dumps(self.health()) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
        elif path == METRICS_PATH:
            body, content_type = self.metrics.render(self.health())
            response = _bytes_response(connection, body, content_type)
            response.headers["Cache-Control"] = "no-store"
        elif path in self.static_files:
            response = self._static(connection, request, path, method)
        else:
            response = connection.respond(HTTPStatus.NOT_FOUND, f"no such path: {path}\n")
        if method == "HEAD":  # the headers a GET would get (Content-Length too), no body
            response.body = b""
        return response

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """The chat path: a refusal (the Origin, the cap), or None to go on with the handshake."""
        origins = request.headers.get_all("Origin")
        if len(origins) > 1:  # a browser sends one: which one to check would be a guess
            self._refuse_request(
                connection, "GET", protocol.CHAT_PATH, "origin", "several Origin headers"
            )
            return connection.respond(HTTPStatus.FORBIDDEN, "several Origin headers\n")
        origin = origins[0] if origins else None
        if not origin_allowed(origin, request.headers.get("Host"), self.config.allow_origins):
            self.refuse("origin")
            return connection.respond(
                HTTPStatus.FORBIDDEN,
                f"origin {origin} is not allowed; serve with --allow-origin {origin}\n",
            )
        open_sessions = len(self.sessions) if self.tally is None else self.tally.total()
        if open_sessions >= self.max_connections:
            self.refuse("full")
            self._full_notice(self.max_connections)
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"server full: {self.max_connections} connections; retry later\n",
            )
        return None  # go on with the WebSocket handshake

    def _refuse_request(
        self, connection: ServerConnection, method: str, path: str, reason: str, why: str
    ) -> None:
        """Count a malformed request and log one line (no traceback)."""
        self.refuse(reason)
        log.warning("refused %s: %s %s with %s", connection.remote_address, method, path, why)

    def _static(
        self, connection: ServerConnection, request: Request, path: str, method: str
    ) -> Response:
        """A file of the browser client: GET or HEAD, revalidated by ETag on every load."""
        if method not in ("GET", "HEAD"):
            response = connection.respond(HTTPStatus.METHOD_NOT_ALLOWED, "GET and HEAD only\n")
            response.headers["Allow"] = "GET, HEAD"
            return response
        file = self.static_files[path]
        if etag_matches(request.headers.get_all("If-None-Match"), file.etag):
            response = connection.respond(HTTPStatus.NOT_MODIFIED, "")
            response.body = b""
            del response.headers["Content-Length"]
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = file.content_type
        else:
            response = _bytes_response(connection, file.body, file.content_type)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["ETag"] = file.etag
        for name, value in security_headers(request.headers.get("Host")).items():
            response.headers[name] = value
        return response

    def _count_sessions(self) -> None:
        """After a session opened or closed: the shared tally (the cap of serve --workers N)
        and the sessions gauge of /metrics, both at once rather than at the next scrape."""
        if self.tally is not None:
            self.tally.set_own(len(self.sessions))
        self.metrics.sessions.set(len(self.sessions))

    async def _handle_connection(self, connection: ServerConnection) -> None:
        self._handshaking.pop(connection, None)  # the handshake is over
        token = self.config.token
        headers = connection.request.headers
        if token and not token_matches(presented_token(headers), token):
            self.refuse("auth")
            several = len(headers.get_all("Authorization")) > 1
            why = "several Authorization headers" if several else "missing or wrong token"
            log.warning("refused %s: %s", connection.remote_address, why)
            await connection.close(protocol.CLOSE_POLICY, "authentication required")
            return
        session = Session(self, connection)
        self.sessions.add(session)
        self._count_sessions()
        self._idle.clear()
        log.info("session %s… opened from %s", session.log_id, connection.remote_address)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self._count_sessions()
            log.info("session %s… closed", session.log_id)
            self.update_idle()


def _bytes_response(connection: ServerConnection, body: bytes, content_type: str) -> Response:
    """A 200 with this body and type (respond() takes text and says text/plain)."""
    response = connection.respond(HTTPStatus.OK, "")
    response.body = body
    del response.headers["Content-Length"]  # respond() set it for the empty body
    response.headers["Content-Length"] = str(len(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response


class SlowClient(ClientGone):
    """The client stopped reading; its session is being closed."""


def _is_client_gone(exc: BaseException) -> bool:
    """Only ClientGone: a group that also holds a real error is not swallowed."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(ClientGone)[1] is None
    return isinstance(exc, ClientGone)


class Session:
    """One client connection: reads messages, runs answers, writes frames in order."""

    def __init__(self, server: VoiceChatServer, connection: ServerConnection) -> None:
        self.server = server
        self.connection = connection
        self.id = uuid.uuid4().hex
        self.thread_id = self.id  # the conversation; session.resume switches to an older one
        # The id is the key to resume a conversation: logs get only a prefix to correlate lines.
        self.log_id = self.id[:8]
        self._outbound: asyncio.Queue[Outbound] = asyncio.Queue(
            maxsize=server.config.outbound_frames
        )
        self._dropped: set[str] = set()  # responses whose remaining frames must not be sent
        self._answer: Answer | None = None
        self._answer_task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None  # a close we started (slow client)
        config = server.config
        self._allowance = float(config.message_burst)  # token bucket for the message rate
        self._refill_per_s = config.messages_per_minute / 60
        self._last_refill = time.monotonic()
        self._last_activity = time.monotonic()  # the last message, or the end of the last answer
        # Speech input: made on the first input_audio message (most sessions never send one).
        self._listener: Listener | None = None
        speech = server.speech
        self._turn_settings = TurnSettings.from_limits(
            config.input_audio, speech.language if speech else None
        )
        self._audio_allowance = config.input_audio.burst_s  # seconds of audio, token bucket
        self._audio_refill_at = time.monotonic()
        self._playing_until = 0.0  # when the audio sent so far ends playing at the client
        self._answer_lock = asyncio.Lock()  # a typed and a spoken turn never start together
        # response.truncate may name one of the last few answers (a new turn may have begun
        # before the client's report of what it heard arrives).
        self._recent_answers: dict[str, Answer] = {}
        self._history_tasks: set[asyncio.Task[None]] = set()  # truncations waiting to be stored
        # Answers not yet counted in /metrics (each once, however it ends): spoken or typed.
        self._uncounted: dict[str, bool] = {}

    @property
    def answering(self) -> bool:
        return self._answer_task is not None and not self._answer_task.done()

    async def run(self) -> None:
        self._writer = writer = asyncio.create_task(self._write())
        try:
            await self._send(
                protocol.session_created(
                    self.id,
                    self.server.backend.name,
                    self.server.tts.name,
                    worker=self.server.config.worker_index,
                    stt=self.server.speech.stt.name if self.server.speech else None,
                    input_audio=self._input_audio_info(),
                )
            )
            while (frame := await self._next_frame()) is not None:
                await self._receive(frame, time.perf_counter())
        except (ConnectionClosed, SlowClient):
            pass
        finally:
            if self._listener is not None:
                await self._listener.aclose()
            await self._cancel_answer(notify=False)
            await asyncio.gather(*self._history_tasks, return_exceptions=True)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if self._closer is not None:
                await asyncio.gather(self._closer, return_exceptions=True)

    async def _next_frame(self) -> str | bytes | None:
        """The next frame; None once the client was idle too long (the connection is closed).

        Idle means: no message since the last one or the end of the last answer, whichever
        came later; listening to an answer is not idling.
        """
        limit = self.server.config.idle_timeout_s
        while True:
            remaining = self._last_activity + limit - time.monotonic()
            if self.answering:
                remaining = limit
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        frame = await self.connection.recv()  # cancelling recv is safe
                    self._last_activity = time.monotonic()
                    return frame
                except TimeoutError:
                    continue
            else:
                self.server.refuse("idle")
                await self._close(protocol.CLOSE_IDLE, "idle timeout")
                return None

    def _note_activity(self, *_: object) -> None:
        self._last_activity = time.monotonic()

    def _take_allowance(self) -> bool:
        """Token bucket: `message_burst` at once, then `messages_per_minute` on average."""
        now = time.monotonic()
        burst = self.server.config.message_burst
        refill = (now - self._last_refill) * self._refill_per_s
        self._allowance = min(burst, self._allowance + refill)
        self._last_refill = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    async def close_for_shutdown(self) -> None:
        """Cancel the answer in flight (the client gets its response.done), flush, close 1001."""
        if self._writer is None or self._writer.done():
            return  # the session is already ending on its own
        try:
            async with asyncio.timeout(self.server.config.shutdown_grace_s):
                if self._listener is not None:  # no spoken turn may start an answer now
                    await self._listener.aclose()
                await self._cancel_answer(notify=True)
                await self._outbound.join()
        except (TimeoutError, ClientGone):
            log.warning("session %s…: client too slow to flush on shutdown", self.log_id)
        await self._close(1001, "server shutting down")

    async def _receive(self, frame: str | bytes, arrived_at: float) -> None:
        try:
            message = protocol.parse_client_message(
                frame, max_text_chars=self.server.config.max_text_chars
            )
        except protocol.ProtocolError as exc:
            message = exc
        if isinstance(message, protocol.AppendAudio):
            await self._append_audio(message.pcm16)  # its own limit: seconds of audio
            return
        if not self._take_allowance():
            self.server.refuse("message_rate")
            limit = self.server.config.messages_per_minute
            await self._send(
                protocol.error(
                    protocol.RATE_LIMITED, f"too many messages (limit {limit} per minute); dropped"
                )
            )
            return
        if isinstance(message, protocol.ProtocolError):
            await self._send(protocol.error(message.code, message.message))
        elif isinstance(message, protocol.CancelResponse):
            self._drop_spoken_turns()
            await self._cancel_answer(notify=True)
            self._playing_until = 0.0  # the client stops its playback too
        elif isinstance(message, protocol.ResumeSession):
            await self._resume(message.session_id)
        elif isinstance(message, protocol.UserMessage):
            log.debug("session %s…: user message %r", self.log_id, message.text)
            self._drop_spoken_turns()  # typed after speaking: the typed message is the turn
            await self._start_answer(message.text, message.id, arrived_at)
        elif isinstance(message, protocol.TruncateResponse):
            await self._truncate(message)
        elif (listener := await self._speech_listener()) is None:
            pass  # speech input is off: the client was told
        elif isinstance(message, protocol.CommitAudio | protocol.ClearAudio):
            kind = "commit" if isinstance(message, protocol.CommitAudio) else "clear"
            if not listener.put(kind):
                self.server.refuse("speech_behind")
                await self._send(protocol.error(protocol.RATE_LIMITED, SPEECH_BEHIND))
        elif isinstance(message, protocol.UpdateSession):
            self._turn_settings = self._turn_settings.updated(message.fields)
            listener.update(self._turn_settings)
            await self._send({"type": "session.updated", "input_audio": self._input_audio_info()})

    async def _start_answer(
        self, text: str, in_reply_to: str | None, arrived_at: float, *, spoken: bool = False
    ) -> None:
        """A user turn, typed or spoken: the answer in flight ends first (barge-in)."""
        async with self._answer_lock:
            await self._cancel_answer(notify=True)
            response_id = uuid.uuid4().hex
            answer = Answer(
                graph=self.server.backend.graph,
                thread_id=self.thread_id,
                user_text=text,
                response_id=response_id,
                tts=self.server.tts,
                emit=self._emitter(response_id),
                settings=self.server.config.pipeline,
                started_at=arrived_at,
            )
            await self._send(protocol.response_created(answer.response_id, in_reply_to))
            self._answer = answer
            self._uncounted[response_id] = spoken
            self._recent_answers[response_id] = answer
            while len(self._recent_answers) > RECENT_ANSWERS:
                self._recent_answers.pop(next(iter(self._recent_answers)))
            self._answer_task = asyncio.create_task(self._run_answer(answer))
            self._answer_task.add_done_callback(self.server.update_idle)
            self._answer_task.add_done_callback(self._note_activity)

    # --- speech input (voicechat/speech/) ----------------------------------------------------

    def _input_audio_info(self) -> dict[str, Any]:
        settings = self._turn_settings
        return {
            "format": "pcm16",
            "sample_rate": protocol.INPUT_RATE,
            "turn_mode": settings.turn_mode,
            "silence_ms": settings.silence_ms,
            "barge_in_ms": settings.barge_in_ms,
            "echo_guard": settings.echo_guard,
            "language": settings.language,
            "max_turn_ms": round(self.server.config.input_audio.max_turn_audio_s * 1000),
            # The audio rate limit: a client paces itself by these.
            "burst_ms": round(self.server.config.input_audio.burst_s * 1000),
            "speed": self.server.config.input_audio.speed,
        }

    async def _speech_listener(self) -> Listener | None:
        """This session's listener, made on first use; None (and an error sent) when the
        server has speech input off."""
        speech = self.server.speech
        if speech is None:
            await self._send(
                protocol.error(
                    protocol.SPEECH_INPUT_OFF,
                    "speech input is off on this server (voicechat serve --stt none)",
                )
            )
            return None
        if self._listener is None:
            assert self.server.stt_scheduler is not None
            self._listener = Listener(
                self,  # the session is the listener's Host
                speech.vad,
                self.server.stt_scheduler.session(),
                self._turn_settings,
                self.server.config.input_audio,
                self.server.vad_notice,
            )
        return self._listener

    async def _append_audio(self, pcm16: bytes) -> None:
        limits = self.server.config.input_audio
        now = time.monotonic()
        refill = (now - self._audio_refill_at) * limits.speed
        self._audio_allowance = min(limits.burst_s, self._audio_allowance + refill)
        self._audio_refill_at = now
        # A frame costs at least 20 ms: tiny frames cannot buy many requests per second.
        seconds = max(len(pcm16) / 2 / protocol.INPUT_RATE, MIN_FRAME_S)
        if seconds > self._audio_allowance:
            self.server.refuse("audio_rate")
            await self._send(
                protocol.error(
                    protocol.RATE_LIMITED,
                    f"audio faster than {limits.speed:g} x real time (after a "
                    f"{limits.burst_s:g} s burst); frame dropped",
                )
            )
            return
        self._audio_allowance -= seconds
        listener = await self._speech_listener()
        if listener is not None and not listener.put("audio", pcm16):
            self.server.refuse("speech_behind")
            await self._send(protocol.error(protocol.RATE_LIMITED, SPEECH_BEHIND))

    def answer_playing(self) -> bool:
        """An answer is being made, or its audio is still playing at the client (estimated
        from the audio sent: playback cannot end before the sum of the chunks' lengths)."""
        return self.answering or time.monotonic() < self._playing_until

    # --- what the listener needs of its session (speech/listener.py: Host) ---------------

    async def send(self, frame: dict[str, Any]) -> None:
        await self._send(frame)

    def answer_words(self) -> str:
        """The words of the latest answer, for the echo check."""
        return self._answer.text if self._answer is not None else ""

    async def user_turn(self, item_id: str, text: str, ended_at: float) -> None:
        await self._start_answer(text, item_id, ended_at, spoken=True)

    def _drop_spoken_turns(self) -> None:
        if self._listener is not None:
            self._listener.drop_pending_turns()

    async def interrupt(self) -> None:
        """The user started speaking over the answer: it ends now."""
        async with self._answer_lock:
            await self._cancel_answer(notify=True)
        self._playing_until = 0.0

    async def _truncate(self, message: protocol.TruncateResponse) -> None:
        """What the user heard of an answer becomes its stored turn. The reply goes at once;
        the history is changed as soon as no answer of this conversation is running (the
        next answer waits for it: the conversation's lock is first come, first served)."""
        answer = self._recent_answers.get(message.response_id)
        if answer is None:
            problem = f"not one of this session's last {RECENT_ANSWERS} answers"
        elif answer is self._answer and self.answering:
            problem = "the answer is still in flight; cancel it first"
        else:
            problem = None
        if answer is None or problem is not None:
            await self._send(protocol.error(protocol.BAD_MESSAGE, f"response.truncate: {problem}"))
            return
        task = asyncio.create_task(self._keep_heard_text(answer, message.audio_end_ms))
        self._history_tasks.add(task)
        task.add_done_callback(self._history_tasks.discard)
        await self._send(
            {
                "type": "response.truncated",
                "response_id": answer.response_id,
                "audio_end_ms": message.audio_end_ms,
                "text": answer.heard_text(message.audio_end_ms),
            }
        )

    async def _keep_heard_text(self, answer: Answer, audio_end_ms: int) -> None:
        try:
            async with self.server.conversation_lock(answer.thread_id):
                await answer.keep_heard_text(audio_end_ms)
        except Exception as exc:
            log.warning("session %s…: response.truncate not stored: %s", self.log_id, exc)

    async def _resume(self, session_id: str) -> None:
        """Continue the conversation of an earlier session (e.g. after a reconnect)."""
        await self._cancel_answer(notify=True)
        config = {"configurable": {"thread_id": session_id}}
        try:
            state = await self.server.backend.graph.aget_state(config)
        except Exception as exc:  # a graph without a checkpointer cannot resume
            await self._send(protocol.error(protocol.UNKNOWN_SESSION, f"cannot resume: {exc}"))
            return
        messages = state.values.get("messages", []) if state and state.values else []
        if not messages:
            await self._send(
                protocol.error(protocol.UNKNOWN_SESSION, "no conversation with that session_id")
            )
            return
        self.thread_id = session_id
        await self._send(protocol.session_resumed(session_id, len(messages)))

    async def _run_answer(self, answer: Answer) -> None:
        async with self.server.conversation_lock(answer.thread_id):
            try:
                status = await answer.run()
            except Exception as exc:
                if _is_client_gone(exc):
                    await answer.keep_partial_text()
                    self._count_answer(answer, CANCELLED)
                    return  # the connection is being closed: nothing more to send
                log.exception("response %s crashed", answer.response_id)
                error = protocol.error(
                    protocol.INTERNAL, f"internal error: {exc}", answer.response_id
                )
                with suppress(ClientGone):
                    await self._send(error)
                status = FAILED
            if status != COMPLETED or answer.truncated:  # the graph did not store the answer
                await answer.keep_partial_text()
        with suppress(ClientGone):  # the client stopped reading: the session is closing
            await self._finish(answer, status)

    async def _cancel_answer(self, *, notify: bool) -> None:
        task, answer = self._answer_task, self._answer
        if task is None or answer is None or task.done():
            return
        self._dropped.add(answer.response_id)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if answer.done_sent:
            return
        async with self.server.conversation_lock(answer.thread_id):
            await answer.keep_partial_text()
        if notify:
            await self._finish(answer, CANCELLED)
        else:
            self._count_answer(answer, CANCELLED)

    async def _finish(self, answer: Answer, status: str) -> None:
        self._count_answer(answer, status)
        await self._queue((answer.response_id, protocol.encode(answer.done_frame(status)), FINAL))
        answer.done_sent = True

    def _count_answer(self, answer: Answer, status: str) -> None:
        """/metrics: the answer's status and its first audio (time to first audio for a typed
        turn, voice to voice for a spoken one), once, whether or not the client saw the end."""
        spoken = self._uncounted.pop(answer.response_id, None)
        if spoken is None:
            return
        first_audio_ms = answer.metrics()["first_audio_ms"]
        first_audio_s = None if first_audio_ms is None else first_audio_ms / 1000
        self.server.metrics.answer_done(status, first_audio_s, spoken=spoken)

    def _emitter(self, response_id: str) -> Emit:
        async def emit(frame: dict[str, Any]) -> None:
            if frame["type"] == "text.delta":  # encoded by the writer, merged with its neighbours
                await self._queue((response_id, frame["text"], TEXT_DELTA))
            else:
                if frame["type"] == "audio.chunk":
                    starts = max(time.monotonic(), self._playing_until)
                    self._playing_until = starts + frame["samples"] / frame["sample_rate"]
                await self._queue((response_id, protocol.encode(frame), FRAME))

        return emit

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._queue((None, protocol.encode(frame), FRAME))

    async def _queue(self, item: Outbound) -> None:
        """Queue a frame; a client that leaves the queue full too long is disconnected."""
        if self._closer is not None:
            raise SlowClient  # already being disconnected: produce nothing more
        if not self._outbound.full():  # the usual case, and once per token: no timer needed
            self._outbound.put_nowait(item)
            return
        try:
            async with asyncio.timeout(self.server.config.slow_client_timeout_s):
                await self._outbound.put(item)
        except TimeoutError:
            self._disconnect_slow_client()
            raise SlowClient from None

    def _disconnect_slow_client(self) -> None:
        if self._closer is None:
            self.server.refuse("slow")
            log.warning("session %s…: client stopped reading; disconnecting", self.log_id)
            reason = f"client too slow: {self._outbound.qsize()} frames waiting"
            self._closer = asyncio.create_task(self._close(protocol.CLOSE_POLICY, reason))

    async def _close(self, code: int, reason: str) -> None:
        """Close with a reason; a client that reads nothing cannot take the close frame, so
        after CLOSE_WAIT_S the TCP connection is dropped instead of waiting forever."""
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.connection.close(code, reason)
        except TimeoutError:
            self.connection.transport.abort()

    async def _write(self) -> None:
        """The only place that writes to the socket: one frame at a time, in queue order.

        After the connection closes it keeps draining the queue, so producers never block.
        """
        open_ = True
        held: Outbound | None = None  # taken from the queue while merging text, not sent yet
        while True:
            if held is None:
                held = await self._outbound.get()
            (response_id, text, kind), held = held, None
            if kind == TEXT_DELTA:
                text, held = self._merge_text_deltas(response_id, text)
                text = protocol.encode(protocol.text_delta(response_id or "", text))
            try:
                wanted = kind == FINAL or response_id is None or response_id not in self._dropped
                if open_ and wanted:
                    await self.connection.send(text)
            except ConnectionClosed:
                open_ = False
            finally:
                self._outbound.task_done()

    def _merge_text_deltas(self, response_id: str | None, text: str) -> tuple[str, Outbound | None]:
        """The text of this delta and of the deltas of the same answer queued right behind it:
        one frame instead of several when the client is behind, or tokens came in a burst.
        Returns the first item that is not one of them, taken from the queue (or None).

        Order is kept: only consecutive deltas merge, and the protocol allows any split of an
        answer's text into text.delta frames.
        """
        parts = [text]
        while not self._outbound.empty():
            item = self._outbound.get_nowait()
            if item[2] != TEXT_DELTA or item[0] != response_id:
                return "".join(parts), item
            parts.append(item[1])
            self._outbound.task_done()
        return "".join(parts), None

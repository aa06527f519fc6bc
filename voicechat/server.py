"""The WebSocket server: routes, sessions, limits and a two-step shutdown.

`WS /v1/chat/stream` (protocol v1) and `WS /v1/realtime` (the OpenAI Realtime API) run one
`Session` (voicechat/session.py) per connection, through that protocol's adapter
(voicechat/protocols/); `GET /healthz` answers JSON and
`GET /metrics` Prometheus' text format (`HEAD` their headers, other methods 405); the web
client's files are served from memory; any other path gets 404. A request with several `Host`
headers gets 400, a chat handshake with several `Origin` headers 403. Connections still in the
opening handshake are capped apart from sessions, and both caps are fitted to the open-file
limit.

Everything a conversation does is the session core's; this module is the HTTP and connection
shell around it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from functools import partial
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from voicechat import protocol, serve_workers
from voicechat.llm import ChatBackend
from voicechat.metrics import METRICS_PATH, METRICS_REFRESH_S, ServerMetrics
from voicechat.notice import RepeatedWarning
from voicechat.protocols import realtime
from voicechat.protocols.v1 import V1Protocol
from voicechat.serve_workers import SessionTally
from voicechat.session import ProtocolAdapter, Session
from voicechat.settings import ServerConfig
from voicechat.speech import SpeechInput
from voicechat.speech.listener import vad_notice
from voicechat.speech.scheduler import STTScheduler
from voicechat.tts.base import TTSEngine
from voicechat.web import etag_matches, load_static_files, security_headers
from voicechat.workers import Worker

log = logging.getLogger(__name__)

CHAT_PATHS = (protocol.CHAT_PATH, realtime.PATH)  # the WebSocket endpoints, one session core

# File descriptors for everything but client connections: worker pipes, the Fish Speech pool
# (16), SQLite, logs, the listening socket. Added to the caps when sizing the open-file limit.
FD_BASE = 64
# asyncio's accept loop takes up to `backlog` sockets per loop iteration, before any of their
# protocols runs (and before the handshake cap can drop one). On a starved CPU a few such bursts
# are in flight at once, with the dropped sockets' descriptors not yet closed; the reserve holds
# this many bursts.
ACCEPT_BURSTS = 3
DEFAULT_BACKLOG = 100  # asyncio's default
FD_RESERVE = FD_BASE + ACCEPT_BURSTS * DEFAULT_BACKLOG  # 364 with an ample open-file limit
CAP_NOTICE_INTERVAL_S = 60.0  # a cap that keeps refusing logs one line per this interval


def presented_token(headers: Headers) -> str | None:
    """The token from `Authorization: Bearer ...`, or from a `voicechat.token.*` subprotocol
    (or, for browsers on the Realtime path, `openai-insecure-api-key.*`).

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
            for prefix in (protocol.TOKEN_SUBPROTOCOL_PREFIX, realtime.TOKEN_SUBPROTOCOL_PREFIX):
                if offered.startswith(prefix):
                    return offered[len(prefix) :]
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
    """Answer "voicechat.v1" (or on the Realtime path "realtime") when offered; never echo a
    token subprotocol."""
    for name in (protocol.PROTOCOL, realtime.SUBPROTOCOL):
        if name in offered:
            return Subprotocol(name)
    return None


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


def accept_backlog(fd_limit: int | None) -> int:
    """The listen backlog, which is also asyncio's accept burst: smaller under a tight open-file
    limit, so that bursts in flight cannot exhaust it (issue 15's `out of system resource`)."""
    if fd_limit is None:
        return DEFAULT_BACKLOG
    return max(8, min(DEFAULT_BACKLOG, (fd_limit - FD_BASE) // 8))


def fit_caps(max_connections: int, max_handshakes: int, fd_limit: int | None) -> tuple[int, int]:
    """The two connection caps, scaled down together when `fd_limit` cannot hold them with the
    reserve (FD_BASE and the accept bursts)."""
    wanted = max_connections + max_handshakes
    reserve = FD_BASE + ACCEPT_BURSTS * accept_backlog(fd_limit)
    budget = None if fd_limit is None else fd_limit - reserve
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
            backlog=accept_backlog(fd_limit),
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
            "listening": sum(1 for session in self.sessions if session.listening),
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
        elif path in CHAT_PATHS and method != "GET":
            response = connection.respond(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{path} is a WebSocket: GET with an Upgrade\n"
            )
            response.headers["Allow"] = "GET"
        elif path in CHAT_PATHS:
            return self._admit(connection, request, path)
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

    def _admit(self, connection: ServerConnection, request: Request, path: str) -> Response | None:
        """A chat path: a refusal (the Origin, the cap), or None to go on with the handshake."""
        origins = request.headers.get_all("Origin")
        if len(origins) > 1:  # a browser sends one: which one to check would be a guess
            self._refuse_request(connection, "GET", path, "origin", "several Origin headers")
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
        path = connection.request.path
        adapter: ProtocolAdapter
        if path.split("?", 1)[0] == realtime.PATH:
            adapter = realtime.RealtimeProtocol(session, realtime.realtime_model(path))
        else:
            adapter = V1Protocol(session)
        self.sessions.add(session)
        self._count_sessions()
        self._idle.clear()
        log.info(
            "session %s… (%s) opened from %s",
            session.log_id,
            "realtime" if path.startswith(realtime.PATH) else "v1",
            connection.remote_address,
        )
        try:
            await session.run(adapter)
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

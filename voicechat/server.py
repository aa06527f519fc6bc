"""The WebSocket server: routes, sessions, limits and a two-step shutdown.

`WS /v1/chat/stream` runs one `Session` per connection; `GET /healthz` answers JSON; any other
path gets 404. A session owns at most one answer task and one writer task: every frame goes
through a bounded outbound queue to the writer, which drops frames of cancelled responses, so
after a response's `response.done` nothing of it is ever sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voicechat import protocol
from voicechat.llm import ChatBackend
from voicechat.pipeline import CANCELLED, COMPLETED, FAILED, Answer, Emit, PipelineSettings
from voicechat.tts.base import TTSEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_text_chars: int = 4000  # one user.message; over it: error too_large
    max_frame_bytes: int = 256 * 1024  # one incoming frame; over it: close 1009
    outbound_frames: int = 64  # frames queued per connection before the answer waits
    shutdown_grace_s: float = 5.0  # time to flush the last frames to each client on shutdown
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)


class VoiceChatServer:
    """Serves protocol v1 over `websockets`, with one chat graph and one TTS engine for all."""

    def __init__(self, backend: ChatBackend, tts: TTSEngine, config: ServerConfig) -> None:
        self.backend = backend
        self.tts = tts
        self.config = config
        self.sessions: set[Session] = set()
        self._server: Server | None = None
        self._idle = asyncio.Event()  # set while no session is open and no answer runs
        self._idle.set()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{protocol.CHAT_PATH}"

    def responses_in_flight(self) -> int:
        return sum(1 for session in self.sessions if session.answering)

    async def wait_until_idle(self) -> None:
        """Return once no session is open and no answer is in flight (tests, shutdown checks)."""
        await self._idle.wait()

    def update_idle(self, *_: object) -> None:
        """Recompute the idle flag; called whenever a session or an answer task ends."""
        if self.sessions or self.responses_in_flight():
            self._idle.clear()
        else:
            self._idle.set()

    async def start(self) -> None:
        self._server = await serve(
            self._handle_connection,
            self.config.host,
            self.config.port,
            process_request=self._route,
            max_size=self.config.max_frame_bytes,
            compression=None,  # deflating Base64 audio costs much CPU for little gain
        )

    async def shutdown(self) -> None:
        """Stop listening, end answers in flight with their response.done, close, release."""
        if self._server is None:
            return
        self._server.server.close()  # no new connections from here on
        await asyncio.gather(*(session.close_for_shutdown() for session in list(self.sessions)))
        self._server.close()
        await self._server.wait_closed()
        await self.tts.aclose()
        self._server = None

    async def __aenter__(self) -> VoiceChatServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "sessions": len(self.sessions),
            "responses_in_flight": self.responses_in_flight(),
            "llm": self.backend.name,
            "tts": self.tts.name,
            "protocol": protocol.PROTOCOL,
        }

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == protocol.CHAT_PATH:
            return None  # go on with the WebSocket handshake
        if path == protocol.HEALTH_PATH:
            response = connection.respond(HTTPStatus.OK, json.dumps(self.health()) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        return connection.respond(HTTPStatus.NOT_FOUND, f"no such path: {path}\n")

    async def _handle_connection(self, connection: ServerConnection) -> None:
        session = Session(self, connection)
        self.sessions.add(session)
        self._idle.clear()
        log.info("session %s opened from %s", session.id, connection.remote_address)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            log.info("session %s closed", session.id)
            self.update_idle()


class Session:
    """One client connection: reads messages, runs answers, writes frames in order."""

    def __init__(self, server: VoiceChatServer, connection: ServerConnection) -> None:
        self.server = server
        self.connection = connection
        self.id = uuid.uuid4().hex
        self.thread_id = self.id  # the conversation; session.resume switches to an older one
        self._outbound: asyncio.Queue[tuple[str | None, str, bool]] = asyncio.Queue(
            maxsize=server.config.outbound_frames
        )
        self._dropped: set[str] = set()  # responses whose remaining frames must not be sent
        self._answer: Answer | None = None
        self._answer_task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def answering(self) -> bool:
        return self._answer_task is not None and not self._answer_task.done()

    async def run(self) -> None:
        self._writer = writer = asyncio.create_task(self._write())
        try:
            await self._send(
                protocol.session_created(self.id, self.server.backend.name, self.server.tts.name)
            )
            async for frame in self.connection:
                await self._receive(frame, time.perf_counter())
        except ConnectionClosed:
            pass
        finally:
            await self._cancel_answer(notify=False)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def close_for_shutdown(self) -> None:
        """Cancel the answer in flight (the client gets its response.done), flush, close 1001."""
        if self._writer is None or self._writer.done():
            return  # the session is already ending on its own
        await self._cancel_answer(notify=True)
        try:
            async with asyncio.timeout(self.server.config.shutdown_grace_s):
                await self._outbound.join()
        except TimeoutError:
            log.warning("session %s: client too slow to flush on shutdown", self.id)
        await self.connection.close(1001, "server shutting down")

    async def _receive(self, frame: str | bytes, arrived_at: float) -> None:
        try:
            message = protocol.parse_client_message(
                frame, max_text_chars=self.server.config.max_text_chars
            )
        except protocol.ProtocolError as exc:
            await self._send(protocol.error(exc.code, exc.message))
            return
        if isinstance(message, protocol.CancelResponse):
            await self._cancel_answer(notify=True)
            return
        if isinstance(message, protocol.ResumeSession):
            await self._resume(message.session_id)
            return
        await self._cancel_answer(notify=True)  # barge-in: the old answer ends first
        response_id = uuid.uuid4().hex
        answer = Answer(
            graph=self.server.backend.graph,
            thread_id=self.thread_id,
            user_text=message.text,
            response_id=response_id,
            tts=self.server.tts,
            emit=self._emitter(response_id),
            settings=self.server.config.pipeline,
            started_at=arrived_at,
        )
        log.debug("session %s: user message %r", self.id, message.text)
        await self._send(protocol.response_created(answer.response_id, message.id))
        self._answer = answer
        self._answer_task = asyncio.create_task(self._run_answer(answer))
        self._answer_task.add_done_callback(self.server.update_idle)

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
        try:
            status = await answer.run()
        except Exception as exc:
            log.exception("response %s crashed", answer.response_id)
            await self._send(
                protocol.error(protocol.INTERNAL, f"internal error: {exc}", answer.response_id)
            )
            status = FAILED
        if status != COMPLETED:
            await answer.keep_partial_text()
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
        await answer.keep_partial_text()
        if notify:
            await self._finish(answer, CANCELLED)

    async def _finish(self, answer: Answer, status: str) -> None:
        await self._outbound.put(
            (answer.response_id, protocol.encode(answer.done_frame(status)), True)
        )
        answer.done_sent = True

    def _emitter(self, response_id: str) -> Emit:
        async def emit(frame: dict[str, Any]) -> None:
            await self._outbound.put((response_id, protocol.encode(frame), False))

        return emit

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._outbound.put((None, protocol.encode(frame), False))

    async def _write(self) -> None:
        """The only place that writes to the socket: one frame at a time, in queue order.

        After the connection closes it keeps draining the queue, so producers never block.
        """
        open_ = True
        while True:
            response_id, text, final = await self._outbound.get()
            try:
                wanted = final or response_id is None or response_id not in self._dropped
                if open_ and wanted:
                    await self.connection.send(text)
            except ConnectionClosed:
                open_ = False
            finally:
                self._outbound.task_done()

"""An async client connection to a voicechat server: send messages, read events."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voicechat.settings import DEFAULT_SERVER_URL


class ServerUnavailable(Exception):
    """The server cannot be reached or refused the connection (one line for the user)."""


class ConnectionLost(Exception):
    """The server went away in the middle of a conversation."""


class ChatConnection:
    """One WebSocket session; `session` holds the server's session.created message."""

    def __init__(
        self,
        url: str = DEFAULT_SERVER_URL,
        *,
        open_timeout: float = 10.0,
        token: str | None = None,
    ) -> None:
        self.url = url
        self.open_timeout = open_timeout
        self.token = token  # sent as `Authorization: Bearer`, never in the URL
        self.session: dict[str, Any] = {}
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> ChatConnection:
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            self._ws = await connect(
                self.url,
                open_timeout=self.open_timeout,
                compression=None,
                max_size=4 * 2**20,
                additional_headers=headers,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ServerUnavailable(f"cannot connect to {self.url}: {_reason(exc)}") from None
        try:
            first = await self.next_event()
        except ConnectionLost as exc:  # e.g. closed 1008: authentication required
            await self._ws.close()
            raise ServerUnavailable(f"{self.url} refused the session: {exc}") from None
        if first.get("type") != "session.created":
            raise ServerUnavailable(f"{self.url} did not start a voicechat session")
        self.session = first
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            await self._ws.close()

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None, "use `async with ChatConnection(...)`"
        return self._ws

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise ConnectionLost(_closed(exc)) from None

    async def send_user_message(self, text: str, message_id: str | None = None) -> None:
        message: dict[str, Any] = {"type": "user.message", "text": text}
        if message_id is not None:
            message["id"] = message_id
        await self.send(message)

    async def cancel(self) -> None:
        await self.send({"type": "response.cancel"})

    async def append_audio(self, pcm16: bytes) -> None:
        """Microphone audio: PCM16 little-endian mono 16 kHz, at most 1 s per call."""
        audio = base64.b64encode(pcm16).decode("ascii")
        await self.send({"type": "input_audio.append", "audio": audio})

    async def commit_audio(self) -> None:
        """The user finished speaking (push-to-talk, or the end of a recorded file)."""
        await self.send({"type": "input_audio.commit"})

    async def clear_audio(self) -> None:
        await self.send({"type": "input_audio.clear"})

    async def update_session(self, **fields: Any) -> None:
        """`session.update`: turn_mode, silence_ms, barge_in_ms, echo_guard, language."""
        await self.send({"type": "session.update", **fields})

    async def truncate_response(self, response_id: str, audio_end_ms: int) -> None:
        """Tell the server how much of an answer's audio was heard before playback stopped."""
        await self.send(
            {"type": "response.truncate", "response_id": response_id, "audio_end_ms": audio_end_ms}
        )

    async def next_event(self) -> dict[str, Any]:
        try:
            frame = await self.ws.recv()
        except ConnectionClosed as exc:
            raise ConnectionLost(_closed(exc)) from None
        event = json.loads(frame)
        if not isinstance(event, dict):
            raise ConnectionLost("server sent a frame that is not a JSON object")
        return event

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self.next_event()


def _closed(exc: ConnectionClosed) -> str:
    """One line: who closed, the code and the reason the server gave."""
    close = exc.rcvd or exc.sent
    if close is None:
        return "the connection to the server was lost"
    reason = f": {close.reason}" if close.reason else ""
    return f"server closed the connection ({close.code}){reason}"


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in the user's words; the library's text only when unknown."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is `voicechat serve` running?)"
    if isinstance(exc, TimeoutError):
        return "timed out (is the address right? is a firewall in the way?)"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    if isinstance(exc, InvalidURI):
        return "not a WebSocket URL; it looks like ws://127.0.0.1:8765/v1/chat/stream"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 503:
            return "the server is full (HTTP 503); try again later"
        if status == 404:
            return "no voicechat server at that path (HTTP 404); the path is /v1/chat/stream"
        if status in (401, 403):
            return f"the server refused the token (HTTP {status}); check --token"
        return f"the server answered HTTP {status} instead of a WebSocket"
    return str(exc) or type(exc).__name__

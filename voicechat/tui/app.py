"""`voicechat talk`: a Textual chat that shows each answer as it is written and plays it.

One connection task owns the WebSocket: it connects (or reconnects with backoff, resuming the
conversation), reads events and applies them to the transcript and the player. The player
(voicechat.audio.player) plays every audio chunk in one gapless queue; a 20 Hz timer asks it which
unit is being heard and highlights that unit, so the highlight follows the sound, not the network.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Input, Static

from voicechat.audio.player import AudioPlayer, AudioUnavailable
from voicechat.audio.wav import WavError
from voicechat.client.connection import ChatConnection, ConnectionLost, ServerUnavailable

log = logging.getLogger("voicechat.talk")

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # then every 8 s


class UserLine(Static):
    """One message the user sent."""

    def __init__(self, text: str) -> None:
        super().__init__(Text.assemble(("you  ", "bold cyan"), text), classes="user")


class NoticeLine(Static):
    """Errors and connection changes, in the transcript where they happened."""

    def __init__(self, text: str) -> None:
        super().__init__(Text(text, style="italic yellow"), classes="notice")


class AnswerView(Static):
    """An answer: its text as it streams in, the unit being heard highlighted."""

    def __init__(self) -> None:
        super().__init__(Text("…", style="dim"), classes="answer")
        self.response_id: str | None = None
        self.text = ""
        self.units: dict[int, str] = {}  # segment index -> the text spoken for it
        self.heard: int | None = None
        self.status = ""  # the response.done status, once it came
        self.silenced = False  # stopped here (Esc, barge-in): late audio of it is dropped

    def add_text(self, delta: str) -> None:
        self.text += delta
        self.refresh_text()

    def refresh_text(self) -> None:
        body = Text(self.text or "…")
        span = (
            _locate(self.text, self.units.get(self.heard, "")) if self.heard is not None else None
        )
        if span:
            body.stylize("bold reverse", *span)
        label = Text("voicechat  ", style="bold magenta")
        tail = (
            Text(f"  [{self.status}]", style="dim") if self.status not in ("", "completed") else ""
        )
        self.update(Text.assemble(label, body, tail))


def _locate(text: str, unit: str) -> tuple[int, int] | None:
    """Where a spoken unit sits in the written text (markdown and spacing may differ)."""
    if not unit.strip():
        return None
    start = text.find(unit)
    if start >= 0:
        return start, start + len(unit)
    words = re.findall(r"\w+", unit)
    if not words:
        return None
    match = re.search(r"[\W_]+".join(re.escape(word) for word in words), text)
    return match.span() if match else None


class VoiceChatApp(App[None]):
    """The terminal voice chat."""

    TITLE = "voicechat"
    CSS = """
    #transcript { height: 1fr; padding: 0 1; }
    #transcript > Static { margin: 1 0 0 0; }
    #status { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape", "stop_speaking", "Stop speaking"),
        Binding("ctrl+t", "toggle_mute", "Mute"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        server_url: str,
        *,
        device: int | str | None = None,
        token: str | None = None,
    ) -> None:
        """Talk to the server at `server_url` (`voicechat talk` starts an embedded one first)."""
        super().__init__()
        self.server_url = server_url
        self.device = device
        self.token = token
        self.player: AudioPlayer | None = None
        self.audio_note = ""
        self.connection: ChatConnection | None = None
        self.session_id: str | None = None
        self.backends = ""
        self.connection_state = "starting"
        self.last_metrics = ""
        self.answers: dict[str, AnswerView] = {}
        self.pending: list[AnswerView] = []  # sent, not yet given a response_id
        self._shown_status = ""

    # --- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="transcript")
        yield Input(placeholder="Type a message, Enter to send", id="message")
        yield Static(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#message", Input).focus()
        self._open_player()
        self.set_interval(0.05, self._follow_playback)
        self._refresh_status()
        self.run_worker(self._connection_loop(), name="connection", exclusive=True)

    async def on_unmount(self) -> None:
        if self.player is not None:
            self.player.close()

    def _open_player(self) -> None:
        try:
            self.player = AudioPlayer(self.device)
        except AudioUnavailable as exc:
            self.audio_note = "no audio device: text only"
            self._notice(
                f"{str(exc)[0].upper()}{str(exc)[1:]}. Answers are text only; "
                "`voicechat doctor` says why, `voicechat talk --list-devices` lists outputs."
            )
            self.player = AudioPlayer("null")
        self.player.__enter__()

    # --- the connection -----------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        url = self.server_url
        failures = 0
        while True:
            self.connection_state = "connecting…" if not failures else "reconnecting…"
            self._refresh_status()
            try:
                async with ChatConnection(url, token=self.token) as connection:
                    await self._on_connected(connection)
                    failures = 0
                    async for event in connection.events():
                        self.apply_event(event)
            except (ServerUnavailable, ConnectionLost) as exc:
                self._on_disconnected(str(exc))
            self.connection = None
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            self.connection_state = f"offline, retrying in {delay:g} s"
            self._refresh_status()
            await asyncio.sleep(delay)  # backoff before the next attempt

    async def _on_connected(self, connection: ChatConnection) -> None:
        created = connection.session
        self.backends = f"{created.get('llm')} + {created.get('tts')}"
        if self.session_id is not None:
            await connection.send({"type": "session.resume", "session_id": self.session_id})
        else:
            self.session_id = created.get("session_id")
        self.connection = connection
        self.connection_state = "connected"
        self._refresh_status()

    def _on_disconnected(self, reason: str) -> None:
        if self.connection is not None or self.connection_state == "connected":
            self._notice(f"Disconnected: {reason}")
        for view in [*self.pending, *self.answers.values()]:
            if not view.status:
                view.status = "interrupted"
                view.refresh_text()
        self.pending.clear()
        if self.player is not None:
            self.player.flush()

    # --- events from the server ---------------------------------------------------------------

    def apply_event(self, event: dict[str, Any]) -> None:
        """Show one server event (public so tests and tools can drive the UI directly)."""
        kind = event.get("type")
        if kind == "response.created":
            view = self.pending.pop(0) if self.pending else self._add_answer()
            view.response_id = event["response_id"]
            self.answers[view.response_id] = view
        elif kind == "text.delta":
            if view := self.answers.get(event.get("response_id", "")):
                view.add_text(event["text"])
                self._scroll_to_end()
        elif kind == "audio.chunk":
            self._play_chunk(event)
        elif kind == "response.done":
            self._finish_answer(event)
        elif kind == "session.resumed":
            self.session_id = event.get("session_id", self.session_id)
            count = event.get("messages", 0)
            self._notice(f"Reconnected: the conversation continues ({count} messages kept).")
        elif kind == "error":
            self._on_error(event)

    def _play_chunk(self, event: dict[str, Any]) -> None:
        view = self.answers.get(event.get("response_id", ""))
        if view is None or view.silenced or view.status or self.player is None:
            return  # an answer we already stopped
        if event.get("text"):
            view.units[event["segment"]] = event["text"]
        try:
            wav = base64.b64decode(event["audio"], validate=True)
            self.player.enqueue_wav(wav, (view.response_id, event["segment"]))
        except (WavError, ValueError) as exc:
            self._notice(f"Skipped an unplayable audio chunk: {exc}")

    def _finish_answer(self, event: dict[str, Any]) -> None:
        view = self.answers.get(event.get("response_id", ""))
        if view is not None:
            view.status = event.get("status", "")
            view.text = event.get("text", view.text)
            view.refresh_text()
        metrics = event.get("metrics") or {}
        self.last_metrics = (
            f"text {_ms(metrics.get('first_text_ms'))} · audio {_ms(metrics.get('first_audio_ms'))}"
            f" · total {_ms(metrics.get('total_ms'))}"
        )
        if self.player is not None and view is not None and not view.silenced:
            self.player.finish()  # the queue may now run dry without an underrun
        self._refresh_status()

    def _on_error(self, event: dict[str, Any]) -> None:
        code, message = event.get("code"), event.get("message", "")
        if code == "unknown_session":
            self._notice("The server does not know our conversation; starting a new one.")
            if self.connection is not None:  # this connection's own session is the new one
                self.session_id = self.connection.session.get("session_id")
            return
        if event.get("response_id") is None and self.pending:
            view = self.pending.pop(0)  # the message was refused: no answer will come
            view.status = "refused"
            view.refresh_text()
        self._notice(f"{code}: {message}")

    # --- user actions -------------------------------------------------------------------------

    async def on_input_submitted(self, submitted: Input.Submitted) -> None:
        text = submitted.value.strip()
        if not text:
            return
        if self.connection is None:
            self.notify("Not connected yet; the message was kept.", severity="warning")
            return
        submitted.input.value = ""
        self._stop_local_audio()  # barge-in: the old answer goes quiet at once
        transcript = self.query_one("#transcript", VerticalScroll)
        await transcript.mount(UserLine(text))
        self.pending.append(self._add_answer())
        try:
            await self.connection.send_user_message(text)
        except ConnectionLost as exc:
            self._notice(f"Not sent: {exc}")

    def _add_answer(self) -> AnswerView:
        view = AnswerView()
        self.query_one("#transcript", VerticalScroll).mount(view)
        self._scroll_to_end()
        return view

    async def action_stop_speaking(self) -> None:
        """Esc: cancel the answer in flight and silence what is queued."""
        self._stop_local_audio()
        if self.connection is not None:
            try:
                await self.connection.cancel()
            except ConnectionLost:
                pass

    def _stop_local_audio(self) -> None:
        if self.player is not None:
            self.player.flush()
        for view in self.answers.values():
            if not view.status:
                view.silenced = True
            if view.heard is not None:
                view.heard = None
                view.refresh_text()

    def action_toggle_mute(self) -> None:
        if self.player is not None:
            self.player.muted = not self.player.muted
            self._refresh_status()

    # --- presentation -------------------------------------------------------------------------

    def _follow_playback(self) -> None:
        """Highlight the unit being heard; runs 20 times a second."""
        playing = self.player.now_playing if self.player is not None else None
        response_id, segment = playing if isinstance(playing, tuple) else (None, None)
        for view in self.answers.values():
            heard = segment if view.response_id == response_id else None
            if view.heard != heard:
                view.heard = heard
                view.refresh_text()
        self._refresh_status()

    def _notice(self, text: str) -> None:
        if self.is_mounted:
            self.query_one("#transcript", VerticalScroll).mount(NoticeLine(text))
            self._scroll_to_end()

    def _scroll_to_end(self) -> None:
        self.query_one("#transcript", VerticalScroll).scroll_end(animate=False)

    def playback_state(self) -> str:
        player = self.player
        if player is None:
            return "no audio"
        state = "muted" if player.muted else ("playing" if player.queue.busy else "idle")
        note = f" ({self.audio_note})" if self.audio_note else ""
        underruns = player.stats.underruns
        return f"{state}{note} · {underruns} underrun{'' if underruns == 1 else 's'}"

    def status_text(self) -> str:
        parts = [self.connection_state]
        if self.backends:
            parts.append(self.backends)
        if self.last_metrics:
            parts.append(self.last_metrics)
        parts.append(self.playback_state())
        return " │ ".join(parts)

    def _refresh_status(self) -> None:
        text = self.status_text()
        if self.is_mounted and text != self._shown_status:  # redraw only on change
            self._shown_status = text
            self.query_one("#status", Static).update(text)


def _ms(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"

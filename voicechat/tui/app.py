"""`voicechat talk`: a Textual chat that shows each answer as it is written and plays it.

One connection task owns the WebSocket: it connects (or reconnects with backoff, resuming the
conversation), reads events and applies them to the transcript and the player. The player
(voicechat.audio.player) plays every audio chunk in one gapless queue; a 20 Hz timer asks it which
unit is being heard and highlights that unit, so the highlight follows the sound, not the network.

With `mic=True` a second task streams the microphone (voicechat.audio.mic) to the server as
`input_audio.append` frames: hands-free, the server's VAD finds the turns; with push-to-talk, F5
starts a turn and F5 again commits it. The server's `input_audio.*` events drive the state in the
status line (listening, hearing you, still your turn…, thinking, speaking, paused) and put the
transcript in as the user's turn. A sound over an answer first holds its playback where it is
(`response.audio.paused`): a backchannel, a cough or the answer's own echo lets it play on from
there (`response.audio.resumed`); a real interruption (`speech_started`) stops it at once and the
server is told how much of that answer was heard (`response.truncate`).
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
from textual.css.query import NoMatches
from textual.widgets import Footer, Input, Static

from voicechat.audio.mic import Microphone, MicUnavailable, meter_bar
from voicechat.audio.player import AudioPlayer, AudioUnavailable
from voicechat.audio.wav import WavError
from voicechat.client.connection import ChatConnection, ConnectionLost, ServerUnavailable

log = logging.getLogger("voicechat.talk")

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # then every 8 s
TALK_KEY = "f5"  # push-to-talk: start a turn, then commit it (a terminal has no key-up)
# How the server's errors about speech input begin (an audio frame, a truncate, recognition):
# unlike those about a typed message, they refuse no message waiting for its answer.
SPEECH_ERRORS = (
    "audio ", "'audio'", "input_audio", "one input_audio", "response.truncate", "cannot truncate",
    "speech ",
)  # fmt: skip


class UserLine(Static):
    """One message the user sent, typed or spoken (the server's transcript)."""

    def __init__(self, text: str, *, spoken: bool = False) -> None:
        super().__init__(
            Text.assemble(("you  ", "bold cyan"), text), classes="user spoken" if spoken else "user"
        )


class NoticeLine(Static):
    """Errors and connection changes, in the transcript where they happened.

    `quiet`: a remark rather than a problem (a turn the server heard no words in)."""

    def __init__(self, text: str, *, quiet: bool = False) -> None:
        style = "italic dim" if quiet else "italic yellow"
        super().__init__(Text(text, style=style), classes="notice quiet" if quiet else "notice")


# response.done's `truncated` and `silent` (docs/protocol.md), as the transcript says them.
TRUNCATED_LABELS = {
    "repetition": "cut: it began repeating itself",
    "max_speech": "cut at the spoken length limit",
    "max_tokens": "cut at the token limit",
    "max_audio": "cut at the audio limit",
}
SILENT_NOTICE = "The answer had nothing to say aloud (only emoji, symbols or code)."


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
        self.kept: str | None = None  # after response.truncated: the part the user heard
        self.truncated: str | None = None  # response.done's: what ended it early

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
        if self.kept is not None and self.text.startswith(self.kept):
            body.stylize("dim", len(self.kept), len(self.text))  # never heard: not remembered
        label = Text("voicechat  ", style="bold magenta")
        notes = [self.status] if self.status not in ("", "completed") else []
        if self.truncated:
            notes.append(TRUNCATED_LABELS.get(self.truncated, f"cut short: {self.truncated}"))
        tail = Text(f"  [{'; '.join(notes)}]", style="dim") if notes else ""
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
        Binding(TALK_KEY, "push_to_talk", "Talk", priority=True),  # shown with push-to-talk only
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        server_url: str,
        *,
        device: int | str | None = None,
        token: str | None = None,
        mic: bool = False,
        input_device: int | str | None = None,
        push_to_talk: bool = False,
    ) -> None:
        """Talk to the server at `server_url` (`voicechat talk` starts an embedded one first).

        `mic`: speak as well as type (`input_device`: index or name, None for the default);
        `push_to_talk`: turns start and end with F5 instead of the server's VAD.
        """
        super().__init__()
        self.server_url = server_url
        self.device = device
        self.token = token
        self.mic_wanted = mic or push_to_talk
        self.input_device = input_device
        self.push_to_talk = push_to_talk
        self.microphone: Microphone | None = None
        self.speech_input = False  # the microphone streams to this connection
        self.recording = False  # push-to-talk: a turn is being recorded
        # "hearing you", "still your turn…", "thinking"; None: listening (or speaking)
        self.voice_phase: str | None = None
        self._held: str | None = None  # the answer whose playback response.audio.paused holds
        self.voice_pending: dict[str, AnswerView] = {}  # a spoken turn's item_id -> its answer
        self._speech_off_told = False
        # Where each answer's audio starts in the player's count of samples played (None:
        # behind other audio, found when it is first heard); what is owed a response.truncate.
        self._audio_start: dict[str, int | None] = {}
        self._last_audio: str | None = None  # the answer whose audio was queued last
        self._truncations: dict[str, int] = {}  # response_id -> audio_end_ms, sent once done
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
        if self.mic_wanted:
            self._open_microphone()
        self.set_interval(0.05, self._follow_playback)
        self._refresh_status()
        self.run_worker(self._connection_loop(), name="connection", exclusive=True)
        if self.microphone is not None:
            self.run_worker(self._stream_microphone(), name="microphone", group="microphone")

    async def on_unmount(self) -> None:
        if self.microphone is not None:
            self.microphone.close()
        if self.player is not None:
            self.player.close()

    def _open_microphone(self) -> None:
        try:
            microphone = Microphone(self.input_device)
            microphone.start()
        except MicUnavailable as exc:
            self._notice(f"{str(exc)[0].upper()}{str(exc)[1:]}; type instead.")
            return
        self.microphone = microphone

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "push_to_talk":  # the key exists (and shows) only with push-to-talk
            return self.push_to_talk and self.microphone is not None
        return True

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
        try:
            await self._converse()
        except NoMatches:
            pass  # the app is closing: its widgets are gone before this task is cancelled

    async def _converse(self) -> None:
        """Connect, show every event, reconnect with backoff when the connection drops."""
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
        if self.microphone is not None:
            await self._start_speech_input(connection)
        self.connection = connection
        self.connection_state = "connected"
        self._refresh_status()

    async def _start_speech_input(self, connection: ChatConnection) -> None:
        """Stream the microphone to this connection, if its server takes speech input."""
        if connection.session.get("stt") is None:
            self._speech_input_off()
            return
        if self.push_to_talk:
            await connection.update_session(turn_mode="push_to_talk")
        self.speech_input = True

    def _speech_input_off(self) -> None:
        self.speech_input = False
        if not self._speech_off_told:
            self._speech_off_told = True
            self._notice("The server has speech input off (`serve --stt none`); type instead.")

    def _on_disconnected(self, reason: str) -> None:
        if self.connection is not None or self.connection_state == "connected":
            self._notice(f"Disconnected: {reason}")
        for view in [*self.pending, *self.voice_pending.values(), *self.answers.values()]:
            if not view.status:
                view.status = "interrupted"
                view.refresh_text()
        self.pending.clear()
        self.voice_pending.clear()
        self.speech_input = self.recording = False
        self.voice_phase = None
        self._held = None
        self._truncations.clear()
        if self.player is not None:
            self.player.flush()

    async def _stream_microphone(self) -> None:
        """Send every microphone frame to the server while speech input is on."""
        assert self.microphone is not None
        async for frame in self.microphone.frames():
            connection = self.connection
            if connection is None or not self.speech_input:
                continue  # nobody to send to: the frame is only metered
            if self.push_to_talk and not self.recording:
                continue
            try:
                await connection.append_audio(frame)
            except ConnectionLost:
                pass  # the connection task notices, says so and reconnects

    # --- events from the server ---------------------------------------------------------------

    def apply_event(self, event: dict[str, Any]) -> None:
        """Show one server event (public so tests and tools can drive the UI directly)."""
        kind = event.get("type")
        if kind == "response.created":
            if self._held is not None:  # a held answer was interrupted: stop it, as speech would
                self._interrupt_playback()
            reply_to = event.get("in_reply_to")
            if reply_to is not None:  # a spoken turn (typed messages carry no id)
                view = self.voice_pending.pop(reply_to, None) or self._add_answer()
            else:
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
        elif kind == "input_audio.speech_started":
            self.voice_phase = "hearing you"
            self._interrupt_playback()
        elif kind == "input_audio.end_of_turn":
            # complete=false: the thought sounds unfinished, the server waits longer for more;
            # true (the turn is about to end) or null (not judged): back to hearing the user.
            self.voice_phase = (
                "still your turn…" if event.get("complete") is False else "hearing you"
            )
        elif kind in ("input_audio.speech_stopped", "input_audio.committed"):
            self.voice_phase = "thinking"
        elif kind == "response.audio.paused":
            self._hold(event.get("response_id"))
        elif kind == "response.audio.resumed":
            if self._held is not None and event.get("response_id") == self._held:
                self._held = None
                if self.player is not None:
                    self.player.resume()
        elif kind == "input_audio.transcript":
            self._on_transcript(event)
        elif kind == "response.truncated":
            if view := self.answers.get(event.get("response_id", "")):
                view.kept = event.get("text", "")
                view.refresh_text()
        self._refresh_status()

    def _on_transcript(self, event: dict[str, Any]) -> None:
        """What the user said: their turn in the transcript, then its answer's place."""
        text = event.get("text", "").strip()
        if not text:
            return  # no words: `error` no_speech follows, and no answer
        if self._showing():
            self.query_one("#transcript", VerticalScroll).mount(UserLine(text, spoken=True))
        self.voice_pending[event.get("item_id", "")] = self._add_answer()
        self.voice_phase = "thinking"

    def _hold(self, response_id: str | None) -> None:
        """Hold the answer being played where it is: the user made a sound over it.

        Only the answer whose audio plays (or is queued last) is held; a pause for another
        one, or one already stopped, is ignored. Its chunks keep queueing while it is held."""
        view = self.answers.get(response_id or "")
        if view is None or view.silenced or response_id != self._last_audio:
            return
        if self.player is not None and (self.player.queue.busy or not view.status):
            self._held = response_id
            self.player.pause()

    def _play_chunk(self, event: dict[str, Any]) -> None:
        view = self.answers.get(event.get("response_id", ""))
        if view is None or view.silenced or view.status or self.player is None:
            return  # an answer we already stopped
        if event.get("text"):
            view.units[event["segment"]] = event["text"]
        if view.response_id not in self._audio_start:
            # Nothing queued: this answer starts where playback stands now (else: see
            # _follow_playback); the count of samples heard since tells what was heard of it.
            idle = not self.player.queue.busy
            self._audio_start[view.response_id] = self.player.stats.samples_played if idle else None
        self._last_audio = view.response_id
        try:
            wav = base64.b64decode(event["audio"], validate=True)
            self.player.enqueue_wav(wav, (view.response_id, event["segment"]))
        except (WavError, ValueError) as exc:
            self._notice(f"Skipped an unplayable audio chunk: {exc}")

    def _finish_answer(self, event: dict[str, Any]) -> None:
        view = self.answers.get(event.get("response_id", ""))
        if (
            view is not None
            and view.response_id == self._held
            and event.get("status") != "completed"
        ):
            self._interrupt_playback()  # held, then cancelled: it never plays on
        if view is not None:
            view.status = event.get("status", "")
            view.text = event.get("text", view.text)  # what was spoken, if it ended early
            view.truncated = event.get("truncated")
            view.refresh_text()
        if event.get("silent"):
            self._notice(SILENT_NOTICE)
        metrics = event.get("metrics") or {}
        self.last_metrics = (
            f"text {_ms(metrics.get('first_text_ms'))} · audio {_ms(metrics.get('first_audio_ms'))}"
            f" · total {_ms(metrics.get('total_ms'))}"
        )
        if self.player is not None and view is not None and not view.silenced:
            self.player.finish()  # the queue may now run dry without an underrun
        if self.voice_phase == "thinking" and (self.player is None or not self.player.queue.busy):
            self.voice_phase = None  # an answer with no audio to wait for
        response_id = event.get("response_id", "")
        if response_id in self._truncations:
            self._send_truncate(response_id, self._truncations.pop(response_id))
        self._refresh_status()

    def _on_error(self, event: dict[str, Any]) -> None:
        code, message = event.get("code"), event.get("message", "")
        if code == "no_speech":  # a turn with no words in it: a remark, not a failure
            self.voice_phase = None
            self._notice("Didn't catch that.", quiet=True)
            return
        if code == "speech_input_off":
            self._speech_input_off()
            return
        if message.startswith(SPEECH_ERRORS):  # about audio, not about a typed message
            self._notice(f"{code}: {message}")
            return
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
        self.voice_phase = "thinking"
        try:
            await self.connection.send_user_message(text)
        except ConnectionLost as exc:
            self._notice(f"Not sent: {exc}")

    def _add_answer(self) -> AnswerView:
        view = AnswerView()
        if self._showing():
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

    def _interrupt_playback(self) -> None:
        """The user speaks over an answer: silence it now and report how much was heard.

        `response.truncate` is only accepted once the answer is done, so it waits for its
        response.done when the answer is still being written.
        """
        response_id = self._audible_answer()
        heard_ms = self._heard_ms(response_id) if response_id is not None else 0
        self._stop_local_audio()
        if response_id is None:
            return
        view = self.answers.get(response_id)
        if view is not None and view.status:
            self._send_truncate(response_id, heard_ms)
        else:
            self._truncations[response_id] = heard_ms

    def _audible_answer(self) -> str | None:
        """The answer being heard, or whose audio is queued to be heard next."""
        if self.player is None:
            return None
        playing = self.player.now_playing
        if isinstance(playing, tuple):
            return playing[0]
        return self._last_audio if self.player.queue.busy else None

    def _heard_ms(self, response_id: str) -> int:
        """How much of an answer's audio has reached the listener's ears, in ms."""
        start = self._audio_start.get(response_id)
        if self.player is None or start is None:
            return 0
        played = self.player.stats.samples_played - start
        # Handed over, not yet heard; while held, the device has long played that out.
        in_device_s = 0.0 if self.player.paused else self.player.queue.output_latency_s
        return max(0, round(1000 * (played / self.player.sample_rate - in_device_s)))

    def _send_truncate(self, response_id: str, audio_end_ms: int) -> None:
        connection = self.connection
        if connection is None:
            return

        async def send() -> None:
            try:
                await connection.truncate_response(response_id, audio_end_ms)
            except ConnectionLost:
                pass

        self.run_worker(send(), group="truncate")

    async def action_push_to_talk(self) -> None:
        """F5 (push-to-talk): start a turn (barge-in, like speaking), or end it (commit)."""
        connection = self.connection
        if self.microphone is None or connection is None or not self.speech_input:
            self.notify("Not connected yet.", severity="warning")
            return
        try:
            if not self.recording:
                self.microphone.read_nowait()  # from now on, not what was said before
                self.recording = True
                self.voice_phase = None
                self._interrupt_playback()
                await connection.cancel()
            else:
                self.recording = False
                for frame in self.microphone.read_nowait():  # the last words before F5
                    await connection.append_audio(frame)
                await connection.commit_audio()
                self.voice_phase = "thinking"
        except ConnectionLost:
            pass
        self._refresh_status()

    def _stop_local_audio(self) -> None:
        self._held = None
        if self.player is not None:
            self.player.flush()  # also ends a hold
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
        if response_id is not None and self.player is not None and not self.player.paused:
            self.voice_phase = None  # speaking now
            if self._audio_start.get(response_id, 0) is None:
                self._audio_start[response_id] = self.player.stats.samples_played
        for view in self.answers.values():
            heard = segment if view.response_id == response_id else None
            if view.heard != heard:
                view.heard = heard
                view.refresh_text()
        self._refresh_status()

    def _showing(self) -> bool:
        """Whether the layout is there to draw on. While the app shuts down, its screen goes
        first; the playback timer and the connection worker stop only after it."""
        return self.is_mounted and self.is_running

    def _notice(self, text: str, *, quiet: bool = False) -> None:
        if self._showing():
            self.query_one("#transcript", VerticalScroll).mount(NoticeLine(text, quiet=quiet))
            self._scroll_to_end()

    def _scroll_to_end(self) -> None:
        if self._showing():
            self.query_one("#transcript", VerticalScroll).scroll_end(animate=False)

    def playback_state(self) -> str:
        player = self.player
        if player is None:
            return "no audio"
        state = "playing" if player.queue.busy else "idle"
        state = "muted" if player.muted else ("paused" if player.paused else state)
        note = f" ({self.audio_note})" if self.audio_note else ""
        underruns = player.stats.underruns
        return f"{state}{note} · {underruns} underrun{'' if underruns == 1 else 's'}"

    def mic_state(self) -> str:
        """listening, hearing you, still your turn…, thinking, speaking, paused (push-to-talk:
        recording, or the key)."""
        if self.microphone is None:
            return "no microphone"
        if self.connection is None:
            return "waiting for the server"
        if not self.speech_input:
            return "speech input off"
        if self.recording:
            return f"recording, {TALK_KEY.upper()} to send"
        if self.player is not None and self.player.paused:
            return "paused"
        if self.player is not None and self.player.now_playing is not None:
            return "speaking"
        if self.voice_phase:
            return self.voice_phase
        return f"{TALK_KEY.upper()} to talk" if self.push_to_talk else "listening"

    def status_text(self) -> str:
        parts = [self.connection_state]
        if self.mic_wanted:  # first: what the user is talking to needs to stay in view
            meter = f"mic {meter_bar(self.microphone.peak_db)} " if self.microphone else ""
            parts.append(meter + self.mic_state())
        if self.backends:
            parts.append(self.backends)
        if self.last_metrics:
            parts.append(self.last_metrics)
        parts.append(self.playback_state())
        return " │ ".join(parts)

    def _refresh_status(self) -> None:
        text = self.status_text()
        if self._showing() and text != self._shown_status:  # redraw only on change
            self._shown_status = text
            self.query_one("#status", Static).update(text)


def _ms(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"

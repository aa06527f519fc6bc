"""The session core: what one conversation does, whatever protocol the client speaks.

Answers (one at a time, a new turn cancels the one in flight), the history (what was said, what
was heard after a truncation, resume), speech input (the listener, barge-in), the limits (message
rate, audio rate, idle time) and the outbound queue with its one writer. It knows no wire format:
it takes commands from a protocol adapter (voicechat/protocols/) and produces `events`, which the
adapter encodes in the writer (protocol v1: JSON with Base64 WAV; Realtime: its own events with
raw PCM). Both adapters are thin: neither decides what the conversation does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Protocol

from langchain_core.messages import BaseMessage, HumanMessage, RemoveMessage
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voicechat import events, protocol
from voicechat.pipeline import CANCELLED, COMPLETED, FAILED, Answer, ClientGone
from voicechat.speech.listener import STT_BUSY, Listener, TurnSettings
from voicechat.speech.scheduler import TURN, SessionSTT, STTBusy
from voicechat.speech.stt import STTError

if TYPE_CHECKING:
    from voicechat.server import VoiceChatServer

log = logging.getLogger(__name__)

# One outbound item: (response_id or None, payload, kind). FRAME: an event (or a frame the
# adapter built itself), dropped if its response was cancelled; FINAL: a response's end, sent
# even then; TEXT_DELTA: a TextDelta's text, so the writer can merge neighbours into one frame.
FRAME, FINAL, TEXT_DELTA = "frame", "final", "text.delta"
Payload = events.Event | dict[str, Any] | str
Outbound = tuple[str | None, Payload, str]

SPEECH_BEHIND = "speech input is behind (the recognizer is busy); message dropped"
MIN_FRAME_S = 0.02  # what the audio rate limit charges for a frame, at least
RECENT_ANSWERS = 4  # how many of a session's answers a truncation can still name
CLOSE_WAIT_S = 5.0  # how long a close may wait for a client that is not reading


class ProtocolAdapter(Protocol):
    """A wire protocol over the core: frames in, events out (voicechat/protocols/)."""

    def hello(self) -> dict[str, Any]: ...

    async def receive(self, frame: str | bytes, arrived_at: float) -> None: ...

    def encode(self, payload: events.Event | dict[str, Any]) -> list[str]: ...


class HeldAnswer:
    """An answer started on a pause's transcript before the turn was confirmed (preemptive):
    its frames wait here, in order, unseen by the client, until the turn ends at that pause
    (release) or the user goes on (dropped: the client and the history never see it). At most
    `limit` frames wait; then the answer waits too."""

    def __init__(self, answer: Answer, item_id: str, limit: int) -> None:
        self.answer = answer
        self.item_id = item_id
        self.items: list[Outbound] = []
        self.status: str | None = None  # the answer ended while held: its end is built at release
        self.limit = limit
        self.room = asyncio.Event()  # set when frames may be added (released, or not full)
        self.room.set()


class SlowClient(ClientGone):
    """The client left the outbound queue full for too long; it is being disconnected."""


def _is_client_gone(exc: BaseException) -> bool:
    """Only ClientGone: a group that also holds a real error is not swallowed."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(ClientGone)[1] is None
    return isinstance(exc, ClientGone)


class Session:
    """One client connection's conversation: answers, history, speech input, limits, writer."""

    def __init__(self, server: VoiceChatServer, connection: ServerConnection) -> None:
        self.server = server
        self.connection = connection
        self.id = uuid.uuid4().hex
        self.thread_id = self.id  # the conversation; resume switches to an older one
        # The id is the key to resume a conversation: logs get only a prefix to correlate lines.
        self.log_id = self.id[:8]
        self.adapter: ProtocolAdapter | None = None  # set by run()
        self.max_text_chars = server.config.max_text_chars
        self.auto_respond = True  # a spoken turn is answered at once (Realtime may turn it off)
        self.instructions: str | None = None  # this session's system prompt (Realtime)
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
        # Speech input: made on the first audio (most sessions never send any).
        self._listener: Listener | None = None
        self._item_stt: SessionSTT | None = None  # made on the first message with speech in it
        speech = server.speech
        self.turn_settings = TurnSettings.from_limits(
            config.input_audio, speech.language if speech else None
        )
        self._audio_allowance = config.input_audio.burst_s  # seconds of audio, token bucket
        self._audio_refill_at = time.monotonic()
        self._playing_until = 0.0  # when the audio sent so far ends playing at the client
        self._paused_at: float | None = None  # playback held at the client since (monotonic)
        self._held: HeldAnswer | None = None  # a preemptive answer not released yet
        self._answer_lock = asyncio.Lock()  # a typed and a spoken turn never start together
        # A truncation may name one of the last few answers (a new turn may have begun before
        # the client's report of what it heard arrives).
        self._recent_answers: dict[str, Answer] = {}
        self._history_tasks: set[asyncio.Task[None]] = set()  # truncations waiting to be stored
        # Answers not yet counted in /metrics (each once, however it ends): spoken or typed.
        self._uncounted: dict[str, bool] = {}

    @property
    def listening(self) -> bool:
        """Has this session sent speech (it has a listener)?"""
        return self._listener is not None

    @property
    def answering(self) -> bool:
        return self._answer_task is not None and not self._answer_task.done()

    # --- the connection: read, idle time, shutdown ----------------------------------------------

    async def run(self, adapter: ProtocolAdapter) -> None:
        self.adapter = adapter
        self._writer = writer = asyncio.create_task(self._write())
        try:
            await self.send_frame(adapter.hello())
            while (frame := await self._next_frame()) is not None:
                await adapter.receive(frame, time.perf_counter())
        except (ConnectionClosed, SlowClient):
            pass
        finally:
            if self._listener is not None:
                await self._listener.aclose()
            if self._item_stt is not None:
                self._item_stt.close()
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

    def take_allowance(self) -> bool:
        """Token bucket: `message_burst` at once, then `messages_per_minute` on average; a
        message refused is counted (/metrics)."""
        now = time.monotonic()
        burst = self.server.config.message_burst
        refill = (now - self._last_refill) * self._refill_per_s
        self._allowance = min(burst, self._allowance + refill)
        self._last_refill = now
        if self._allowance < 1:
            self.server.refuse("message_rate")
            return False
        self._allowance -= 1
        return True

    async def close_for_shutdown(self) -> None:
        """Cancel the answer in flight (the client gets its end), flush, close 1001."""
        if self._writer is None or self._writer.done():
            return  # the session is already ending on its own
        try:
            async with asyncio.timeout(self.server.config.shutdown_grace_s):
                if self._listener is not None:  # no spoken turn may start an answer now
                    await self._listener.aclose()
                await self._stop_answer()
                await self._flushed()
        except (TimeoutError, ClientGone):
            log.warning("session %s…: client too slow to flush on shutdown", self.log_id)
        await self._close(1001, "server shutting down")

    async def _flushed(self) -> None:
        """Until the writer has sent all that is queued, or has ended: the client may have
        left at the same moment, and a writer cancelled by `run` leaves its queue behind."""
        assert self._writer is not None
        flushed = asyncio.create_task(self._outbound.join())
        try:
            await asyncio.wait({flushed, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            flushed.cancel()

    # --- commands from the protocol adapters ---------------------------------------------------

    async def typed_turn(self, text: str, in_reply_to: str | None, arrived_at: float) -> None:
        """A typed user message: it is the turn (spoken turns still pending are dropped)."""
        log.debug("session %s…: user message %r", self.log_id, text)
        self._drop_spoken_turns()
        await self._start_answer(text, in_reply_to, arrived_at)

    async def respond(self, options: events.ResponseOptions) -> None:
        """An answer to the conversation as it stands (Realtime's response.create)."""
        await self._start_answer(None, None, time.perf_counter(), options)

    async def add_message(self, message: BaseMessage) -> None:
        """Put a message in the history without answering it (Realtime's item.create)."""
        async with self.server.conversation_lock(self.thread_id):
            config = {"configurable": {"thread_id": self.thread_id}}
            await self.server.backend.graph.aupdate_state(config, {"messages": [message]})

    async def forget(self, message_id: str, response_id: str | None = None) -> None:
        """Take a message out of the history: by its id, or the stored turn of an answer."""
        answer = self._recent_answers.get(response_id) if response_id else None
        async with self.server.conversation_lock(self.thread_id):
            config = {"configurable": {"thread_id": self.thread_id}}
            graph = self.server.backend.graph
            state = await graph.aget_state(config)
            messages = state.values.get("messages", []) if state and state.values else []
            ids = [getattr(message, "id", None) for message in messages]
            target = message_id
            if answer is not None and answer.user_message is not None:
                if answer.user_message.id in ids[:-1]:
                    target = ids[ids.index(answer.user_message.id) + 1] or message_id
            if target in ids:
                await graph.aupdate_state(config, {"messages": [RemoveMessage(id=target)]})

    async def transcribe(self, pcm16: bytes) -> str:
        """Speech in a message (Realtime's input_audio content): its words. It waits in the
        same fair, bounded recognizer lines as spoken turns (speech/scheduler.py)."""
        scheduler = self.server.stt_scheduler
        if scheduler is None:
            raise protocol.ProtocolError(protocol.SPEECH_INPUT_OFF, "speech input is off")
        if self._item_stt is None:
            self._item_stt = scheduler.session()
        try:
            job = self._item_stt.transcribe(pcm16, self.turn_settings.language, TURN)
        except STTBusy as exc:
            raise protocol.ProtocolError(STT_BUSY, f"speech recognition is busy ({exc})") from None
        try:
            transcript = await job.future
        except STTError as exc:
            message = f"speech recognition failed: {exc}"
            raise protocol.ProtocolError(protocol.STT_FAILED, message) from None
        return transcript.text

    async def cancel(self) -> None:
        """Stop the answer in flight, and spoken turns not answered yet; nothing in flight:
        nothing happens."""
        self._drop_spoken_turns()
        await self._stop_answer()

    async def _stop_answer(self, *, interrupted: bool = False) -> None:
        """The answer in flight ends now, with its response.done. Under the answer lock, like
        every start and stop: two stops of one answer (a barge-in and the client's truncate)
        cannot both send its end, and a new answer never starts before the old one's end."""
        async with self._answer_lock:
            await self._cancel_answer(notify=True, interrupted=interrupted)
        self._playing_until, self._paused_at = 0.0, None  # the client stops its playback too

    async def resume(self, session_id: str) -> None:
        """Continue the conversation of an earlier session (e.g. after a reconnect)."""
        await self._stop_answer()
        config = {"configurable": {"thread_id": session_id}}
        try:
            state = await self.server.backend.graph.aget_state(config)
        except Exception as exc:  # a graph without a checkpointer cannot resume
            await self.emit(events.Error(protocol.UNKNOWN_SESSION, f"cannot resume: {exc}"))
            return
        messages = state.values.get("messages", []) if state and state.values else []
        if not messages:
            await self.emit(
                events.Error(protocol.UNKNOWN_SESSION, "no conversation with that session_id")
            )
            return
        self.thread_id = session_id
        await self.emit(events.SessionResumed(session_id, len(messages)))

    async def truncate(
        self, response_id: str, audio_end_ms: int, *, cancel_in_flight: bool = False
    ) -> str | None:
        """What the user heard of an answer becomes its stored turn; returns that text (None:
        an error was sent). The history changes as soon as no answer of this conversation runs
        (the next answer waits for it: the conversation's lock is first come, first served).
        An answer still in flight is refused, or cancelled first with `cancel_in_flight`."""
        answer = self._recent_answers.get(response_id)
        if answer is not None and answer is self._answer and self.answering:
            if cancel_in_flight:  # (spoken turns being transcribed are the user's: kept)
                await self._stop_answer()
            else:
                await self.emit(
                    events.Error(
                        protocol.BAD_MESSAGE,
                        "response.truncate: the answer is still in flight; cancel it first",
                    )
                )
                return None
        if answer is None:
            problem = f"not one of this session's last {RECENT_ANSWERS} answers"
            await self.emit(events.Error(protocol.BAD_MESSAGE, f"response.truncate: {problem}"))
            return None
        task = asyncio.create_task(self._keep_heard_text(answer, audio_end_ms))
        self._history_tasks.add(task)
        task.add_done_callback(self._history_tasks.discard)
        heard = answer.heard_text(audio_end_ms)
        await self.emit(events.ResponseTruncated(answer.response_id, audio_end_ms, heard))
        return heard

    async def history_stored(self) -> None:
        """Return once every truncation asked for so far is in the history."""
        await asyncio.gather(*self._history_tasks, return_exceptions=True)

    async def _keep_heard_text(self, answer: Answer, audio_end_ms: int) -> None:
        try:
            async with self.server.conversation_lock(answer.thread_id):
                await answer.keep_heard_text(audio_end_ms)
        except Exception as exc:
            log.warning("session %s…: truncation not stored: %s", self.log_id, exc)

    # --- speech input (voicechat/speech/) --------------------------------------------------------

    def input_audio_info(self) -> dict[str, Any]:
        settings = self.turn_settings
        return {
            "format": "pcm16",
            "sample_rate": protocol.INPUT_RATE,
            "turn_mode": settings.turn_mode,
            "turn_detection": settings.turn_detection,
            "eagerness": settings.eagerness,
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
            await self.emit(
                events.Error(
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
                self.server.stt_scheduler.session(),  # fair, bounded recognition
                self.turn_settings,
                self.server.config.input_audio,
                self.server.vad_notice,
                speech.end_of_turn,
            )
        return self._listener

    async def append_audio(self, pcm16: bytes) -> None:
        """16 kHz PCM16 from the microphone, at most 1 s: rate-limited, then heard."""
        limits = self.server.config.input_audio
        now = time.monotonic()
        refill = (now - self._audio_refill_at) * limits.speed
        self._audio_allowance = min(limits.burst_s, self._audio_allowance + refill)
        self._audio_refill_at = now
        # A frame costs at least 20 ms: tiny frames cannot buy many requests per second.
        seconds = max(len(pcm16) / 2 / protocol.INPUT_RATE, MIN_FRAME_S)
        if seconds > self._audio_allowance:
            self.server.refuse("audio_rate")
            await self.emit(
                events.Error(
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
            await self.emit(events.Error(protocol.RATE_LIMITED, SPEECH_BEHIND))

    async def commit_audio(self) -> None:
        await self._listener_command("commit")

    async def clear_audio(self) -> None:
        await self._listener_command("clear")

    async def _listener_command(self, kind: str) -> None:
        listener = await self._speech_listener()
        if listener is not None and not listener.put(kind):
            self.server.refuse("speech_behind")
            await self.emit(events.Error(protocol.RATE_LIMITED, SPEECH_BEHIND))

    async def update_turns(self, fields: dict[str, Any]) -> None:
        """New turn settings (validated by the adapter); session.updated follows."""
        self.turn_settings = self.turn_settings.updated(fields)
        if fields and (listener := await self._speech_listener()) is not None:
            listener.update(self.turn_settings)
        await self.emit(events.SessionUpdated(self.input_audio_info()))

    def answer_playing(self) -> bool:
        """An answer is being made (not one held back), or its audio is still playing at the
        client (estimated from the audio sent: playback cannot end before the sum of the
        chunks' lengths), or its playback is paused."""
        return (
            (self.answering and self._held is None)
            or self._paused_at is not None
            or time.monotonic() < self._playing_until
        )

    # --- what the listener needs of its session (speech/listener.py: Host) -------------------

    def answer_words(self) -> str:
        """The words of the latest answer, for the echo check."""
        return self._answer.text if self._answer is not None else ""

    async def user_turn(self, item_id: str, text: str, ended_at: float) -> None:
        """A spoken turn's words: answered at once, or kept for the client's response.create."""
        if self.auto_respond:
            await self._start_answer(text, item_id, ended_at, message_id=item_id, spoken=True)
        else:
            await self.add_message(HumanMessage(text, id=item_id))

    async def preempt(self, item_id: str, text: str) -> None:
        """A pause's transcript: start its answer now, held back until the turn is confirmed."""
        if self.auto_respond:
            await self._start_answer(
                text, item_id, time.perf_counter(), message_id=item_id, spoken=True, held=True
            )

    async def confirm_preempted(self, item_id: str, ended_at: float) -> bool:
        """The turn ended at the pause: the held answer is its answer; its frames go out now.
        False when no answer to that turn is held (it was dropped, or another one started)."""
        async with self._answer_lock:
            hold = self._held
            if hold is None or hold.item_id != item_id:
                return False
            answer = hold.answer
            answer.started_at = ended_at  # its times count from the turn's end, as the user's
            now = time.perf_counter()
            if answer.first_text_at is not None:
                answer.first_text_at = max(answer.first_text_at, now)
            if answer.first_audio_at is not None:
                answer.first_audio_at = max(answer.first_audio_at, now)
            while hold.items:  # (the answer may add more while the queue is full)
                item = hold.items.pop(0)
                self._note_playback(item[1])
                await self._queue(item)
            self._held = None  # from now on the answer's frames go straight to the queue
            hold.room.set()
            if hold.status is not None:
                await self._finish(answer, hold.status)
            return True

    async def drop_preempted(self) -> None:
        """The user went on: the held answer goes, unseen; its turn leaves the history."""
        async with self._answer_lock:
            hold = self._held
            if hold is not None and hold.answer is self._answer:
                await self._cancel_answer(notify=False)

    async def pause_playback(self) -> None:
        """Speech began over the answer: the client holds its playback where it is."""
        if self._paused_at is None and self._answer is not None and self._held is None:
            self._paused_at = time.monotonic()
            await self.emit(events.PlaybackPaused(self._answer.response_id))

    async def resume_playback(self) -> None:
        """That speech was not an interruption: playback goes on where it was held."""
        if self._paused_at is not None and self._answer is not None:
            if self._playing_until > self._paused_at:  # what was left to play still is
                self._playing_until += time.monotonic() - self._paused_at
            self._paused_at = None
            await self.emit(events.PlaybackResumed(self._answer.response_id))

    def _drop_spoken_turns(self) -> None:
        if self._listener is not None:
            self._listener.drop_pending_turns()

    async def interrupt(self) -> None:
        """The user started speaking over the answer: it ends now."""
        await self._stop_answer(interrupted=True)

    # --- answers ---------------------------------------------------------------------------------

    async def _start_answer(
        self,
        text: str | None,
        in_reply_to: str | None,
        arrived_at: float,
        options: events.ResponseOptions | None = None,
        message_id: str | None = None,
        spoken: bool = False,
        held: bool = False,
    ) -> None:
        """A user turn, typed or spoken (or a bare request): the answer in flight ends first.
        A `held` answer (preempt) sends nothing until confirm_preempted releases it.
        `message_id` names the user's message in the history (a spoken turn's item id);
        a typed message's id is the client's to reuse, so it gets one of the server's."""
        options = options or events.ResponseOptions()
        if options.instructions is None and self.instructions is not None:
            options = events.ResponseOptions(options.speak, self.instructions, options.metadata)
        async with self._answer_lock:
            await self._cancel_answer(notify=True)
            response_id = uuid.uuid4().hex
            answer = Answer(
                graph=self.server.backend.graph,
                thread_id=self.thread_id,
                user_text=text,
                user_message_id=message_id,
                response_id=response_id,
                tts=self.server.tts,
                emit=self._emitter(response_id),
                settings=self.server.config.pipeline,
                started_at=arrived_at,
                options=options,
            )
            if held:
                limit = self.server.config.outbound_frames
                self._held = HeldAnswer(answer, message_id or "", limit)
            await self._queue_answer_item(
                (None, events.ResponseStarted(response_id, in_reply_to, options), FRAME), answer
            )
            self._answer = answer
            self._uncounted[response_id] = spoken
            self._recent_answers[response_id] = answer
            while len(self._recent_answers) > RECENT_ANSWERS:
                self._recent_answers.pop(next(iter(self._recent_answers)))
            self._answer_task = asyncio.create_task(self._run_answer(answer))
            self._answer_task.add_done_callback(self.server.update_idle)
            self._answer_task.add_done_callback(self._note_activity)

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
                error = events.Error(
                    protocol.INTERNAL, f"internal error: {exc}", answer.response_id
                )
                with suppress(ClientGone):
                    await self.emit(error)
                status = FAILED
            if status != COMPLETED or answer.truncated:  # the graph did not store the answer
                await answer.keep_partial_text()
        with suppress(ClientGone):  # the client stopped reading: the session is closing
            await self._finish(answer, status)

    async def _cancel_answer(self, *, notify: bool, interrupted: bool = False) -> None:
        task, answer = self._answer_task, self._answer
        hold, self._held = self._held, None
        if hold is not None and hold.answer is answer and answer is not None:
            await self._drop_held(hold)
            return
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
            answer.interrupted = interrupted
            await self._finish(answer, CANCELLED)
        else:
            self._count_answer(answer, CANCELLED)

    async def _drop_held(self, hold: HeldAnswer) -> None:
        """A held answer ends unseen: nothing of it was sent, and the history loses its turn
        (the user's words so far and anything of the answer the graph stored)."""
        answer = hold.answer
        if self._answer_task is not None:
            self._answer_task.cancel()
            await asyncio.gather(self._answer_task, return_exceptions=True)
        self._uncounted.pop(answer.response_id, None)
        self._recent_answers.pop(answer.response_id, None)
        self._answer, self._answer_task = None, None
        if hold.item_id:
            try:
                await self._forget_from(answer.thread_id, hold.item_id)
            except Exception as exc:  # a checkpointer that is down: the turn may linger
                log.warning("session %s…: a dropped answer's turn stays: %s", self.log_id, exc)

    async def _forget_from(self, thread_id: str, message_id: str) -> None:
        """Remove a message and every message after it from the history."""
        async with self.server.conversation_lock(thread_id):
            config = {"configurable": {"thread_id": thread_id}}
            graph = self.server.backend.graph
            state = await graph.aget_state(config)
            messages = state.values.get("messages", []) if state and state.values else []
            ids = [getattr(message, "id", None) for message in messages]
            if message_id in ids:
                doomed = ids[ids.index(message_id) :]
                await graph.aupdate_state(
                    config, {"messages": [RemoveMessage(id=i) for i in doomed if i]}
                )

    async def _finish(self, answer: Answer, status: str) -> None:
        hold = self._held
        if hold is not None and hold.answer is answer:
            hold.status = status  # sent at release, with the times counted from then
            answer.done_sent = True
            return
        self._count_answer(answer, status)
        await self._queue((answer.response_id, answer.done_event(status), FINAL))
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

    def _emitter(self, response_id: str) -> Callable[[events.Event], Awaitable[None]]:
        async def emit(event: events.Event) -> None:
            answer = self._recent_answers.get(response_id)
            if isinstance(event, events.TextDelta):  # merged with its neighbours by the writer
                await self._queue_answer_item((response_id, event.text, TEXT_DELTA), answer)
            else:
                await self._queue_answer_item((response_id, event, FRAME), answer)

        return emit

    async def _queue_answer_item(self, item: Outbound, answer: Answer | None) -> None:
        """An answer's frame: to the client, or into its hold while it is held back."""
        while (hold := self._held) is not None and hold.answer is answer:
            if len(hold.items) < hold.limit:
                hold.items.append(item)
                return
            hold.room.clear()
            await hold.room.wait()  # released (or dropped: this task is cancelled)
        self._note_playback(item[1])
        await self._queue(item)

    def _note_playback(self, payload: Payload) -> None:
        """Audio going to the client: when its playback will end there."""
        if isinstance(payload, events.AudioOut):
            starts = max(time.monotonic(), self._playing_until)
            self._playing_until = starts + payload.pcm.samples / payload.pcm.sample_rate

    # --- the outbound queue and its writer ---------------------------------------------------

    async def emit(self, event: events.Event) -> None:
        """An event about the session (not one answer's stream): always delivered."""
        await self._queue((None, event, FRAME))

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """A frame the adapter built itself (its replies), through the same queue."""
        await self._queue((None, frame, FRAME))

    async def _queue(self, item: Outbound) -> None:
        """Queue an item; a client that leaves the queue full too long is disconnected."""
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
        """The only place that writes to the socket: one item at a time, in queue order,
        encoded by the adapter. After the connection closes it keeps draining the queue, so
        producers never block."""
        assert self.adapter is not None
        open_ = True
        held: Outbound | None = None  # taken from the queue while merging text, not sent yet
        while True:
            if held is None:
                held = await self._outbound.get()
            (response_id, payload, kind), held = held, None
            if kind == TEXT_DELTA:
                text, held = self._merge_text_deltas(response_id, str(payload))
                payload = events.TextDelta(response_id or "", text)
            try:
                wanted = kind == FINAL or response_id is None or response_id not in self._dropped
                if open_ and wanted:
                    frames = [payload] if isinstance(payload, str) else self.adapter.encode(payload)
                    for frame in frames:
                        await self.connection.send(frame)
            except ConnectionClosed:
                open_ = False
            except Exception:  # an encoding bug must not stop the writer: producers would hang
                log.exception("session %s…: could not encode %r", self.log_id, type(payload))
            finally:
                self._outbound.task_done()

    def _merge_text_deltas(self, response_id: str | None, text: str) -> tuple[str, Outbound | None]:
        """The text of this delta and of the deltas of the same answer queued right behind it:
        one frame instead of several when the client is behind, or tokens came in a burst.
        Returns the first item that is not one of them, taken from the queue (or None).

        Order is kept: only consecutive deltas merge, and the protocols allow any split of an
        answer's text into deltas.
        """
        parts = [text]
        while not self._outbound.empty():
            item = self._outbound.get_nowait()
            if item[2] != TEXT_DELTA or item[0] != response_id:
                return "".join(parts), item
            parts.append(str(item[1]))
            self._outbound.task_done()
        return "".join(parts), None

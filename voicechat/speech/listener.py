"""One session's ear: microphone audio in, turns out (VAD -> turn rules -> transcript).

The session hands every `input_audio.*` message to its `Listener`, which works through them in
order in one task of its own: VAD on each frame (the Silero worker), the turn rules
(`turns.py`), a speculative transcription when a pause begins, the final transcript when the
turn ends, then `host.user_turn(...)` starts the answer exactly as a typed message would. The
queue in front of it is bounded: audio that finds it full is dropped with an error, so a slow
recognizer never stops the session reading its socket (a typed message or a cancel still
gets through). Transcribing an ended turn runs beside the listener, which keeps hearing.

When a pause begins, the speculative transcript does three things at once: it is judged by
meaning (semantic.py: is the thought finished?), which sets how much silence ends the turn;
it starts a preemptive answer, which the session holds back until the turn really ends (and
drops, unseen, if the user goes on); and when the turn ends at that pause it is the turn's
transcript. Speech over a playing answer pauses the answer's playback at once; it is then
judged (echo, backchannel, noise: the answer resumes; words: the answer is cancelled).

Every transcription goes through the server's scheduler (scheduler.py), which bounds the
session's work and shares the recognizer fairly: a turn that finds MAX_TURNS of this session's
turns still pending is shed (`committed`, then `error` `stt_busy`). The audio kept is bounded
whatever the VAD does: at most one turn (`max_turn_audio_s`) and its lead-in.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any, Protocol

from voicechat import events, protocol
from voicechat.notice import RepeatedWarning
from voicechat.settings import InputAudioSettings
from voicechat.speech.scheduler import ECHO, SPECULATIVE, TURN, Job, SessionSTT, STTBusy
from voicechat.speech.semantic import EAGERNESS_RULES, MEDIUM, EndOfTurnModel, judges_language
from voicechat.speech.stt import STTError, Transcript
from voicechat.speech.turns import (
    DECIDING,
    ECHO_WINDOW_MS,
    HOLDING,
    SPEAKING,
    WINDOW_MS,
    Candidate,
    Held,
    Paused,
    Released,
    Resumed,
    Started,
    Stopped,
    TurnDetector,
    TurnEvent,
    TurnRules,
)
from voicechat.speech.turns import ECHO as JUDGED_AGAIN  # (scheduler.ECHO: a job's kind)
from voicechat.speech.vad import SileroVAD
from voicechat.workers import WorkerError

log = logging.getLogger(__name__)

RATE = protocol.INPUT_RATE
BYTES_PER_MS = RATE * 2 // 1000  # PCM16 mono
PREFIX_MS = 300  # audio kept from before the speech began
QUEUE_FRAMES = 256  # input_audio messages waiting for the listener…
QUEUE_AUDIO_MS = 30_000  # …holding at most this much audio (256 frames of 1 s would be 8 MB)
SERVER_VAD, PUSH_TO_TALK = "server_vad", "push_to_talk"
SEMANTIC, SILENCE = "semantic", "silence"  # what ends a server_vad turn
GAP_KEEP_MS = 50  # of a pause inside a turn, this much is kept on each side
# One or two words ("Hello", "Okay", "So") are a whole turn to the end-of-turn model, but as
# often the opening of a longer one, before a comma's pause (~250-300 ms): silence decides.
SHORT_TURN_WORDS = 2
ECHO_CHECK_TIMEOUT_S = 3.0  # a recognizer slower than this: the speech is taken as the user's
ECHO_SHARE = 0.5  # speech whose words are at least this share of the answer's is its echo
STT_BUSY = "stt_busy"  # the error code of a shed turn (protocol.md)
VAD_NOTICE_INTERVAL_S = 60.0  # a VAD that keeps failing logs one line per this interval
# Speech that starts this soon after playback resumed is most likely the answer's own voice
# coming back (no echo cancellation): pausing again would stutter, so the listener stops pausing
# for PAUSE_SUSPEND_S and judges such speech while the answer plays on (the echo guard).
ECHO_ONSET_S = 0.6
PAUSE_SUSPEND_S = 10.0
# Words that acknowledge without taking the floor: said over a playing answer, they neither
# interrupt it nor become a turn. ("mm-hmm", "uh-huh" split into their parts; "mm", "hmm" and
# every other hum: is_hum.)
BACKCHANNEL_WORDS = frozenset(
    "yeah yes yep yup ya okay ok kay right alright sure uh huh um ah oh aha "
    "i see got it gotcha cool nice wow true exactly indeed totally sounds good great fine "
    "네 응 아 예 음 어 그래 그렇구나 맞아".split()
)
MAX_BACKCHANNEL_WORDS = 4
_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    return [w.strip("'") for w in _WORD.findall(text.lower()) if w.strip("'")]


def is_echo(heard: str, answer: str) -> bool:
    """Is what the microphone heard the answer's own words (coming back from the speakers)?
    Nothing recognisable counts as echo too: a barge-in needs words."""
    heard_words = words(heard)
    if not heard_words:
        return True
    answer_words = set(words(answer))
    found = sum(1 for word in heard_words if word in answer_words)
    return found / len(heard_words) >= ECHO_SHARE


def is_hum(word: str) -> bool:
    """ "mmmm", "nmmm", "mhmm", "hmmm": Whisper spells a hum as it likes (Piper's "Mm-hmm." comes
    back "MMMM.", "NMMM." or "N.M."), and no English word is made of these letters alone."""
    return set(word) <= {"m", "h", "n"}


def is_backchannel(heard: str) -> bool:
    """Is it an acknowledgement ("yeah", "mm-hmm", "okay, right", "I see", "네"), not a
    request? A few words, all from the backchannel vocabulary or hums."""
    heard_words = words(heard)
    return 0 < len(heard_words) <= MAX_BACKCHANNEL_WORDS and all(
        word in BACKCHANNEL_WORDS or is_hum(word) for word in heard_words
    )


@dataclass(frozen=True)
class TurnSettings:
    """What a client may change with `session.update`."""

    turn_mode: str = SERVER_VAD
    turn_detection: str = SEMANTIC
    eagerness: str = MEDIUM
    silence_ms: int = 600
    barge_in_ms: int = 500
    echo_guard: bool = True
    language: str | None = None

    @classmethod
    def from_limits(cls, limits: InputAudioSettings, language: str | None) -> TurnSettings:
        return cls(
            turn_detection=limits.turn_detection,
            eagerness=limits.eagerness,
            silence_ms=limits.silence_ms,
            barge_in_ms=limits.barge_in_ms,
            echo_guard=limits.echo_guard,
            language=language,
        )

    def updated(self, fields: dict[str, Any]) -> TurnSettings:
        return replace(self, **fields)


class Host(Protocol):
    """What the listener needs from its session."""

    async def emit(self, event: events.Event) -> None: ...

    def answer_playing(self) -> bool: ...

    def answer_words(self) -> str: ...

    async def interrupt(self) -> None: ...

    async def user_turn(self, item_id: str, text: str, ended_at: float) -> None: ...

    async def preempt(self, item_id: str, text: str) -> None: ...

    async def confirm_preempted(self, item_id: str, ended_at: float) -> bool: ...

    async def drop_preempted(self) -> None: ...

    async def pause_playback(self) -> None: ...

    async def resume_playback(self) -> None: ...


@dataclass
class ListenerStats:
    turns: int = 0
    speculative_used: int = 0
    speculative_discarded: int = 0
    echo_rejected: int = 0
    backchannels: int = 0  # speech over the answer taken as an acknowledgement
    preempted_used: int = 0  # answers started on a pause's transcript and then confirmed
    shed: int = 0  # turns refused by the scheduler (stt_busy)
    vad_failures: int = 0  # frames the VAD worker failed on
    most_buffered_ms: float = 0.0  # the most audio ever kept (a new frame included)


def vad_notice() -> RepeatedWarning:
    """One for every listener of a server: a VAD worker down fails every session's frames."""
    return RepeatedWarning(
        log,
        "VAD failed (%s): its sessions listen afresh (%d failures since the last such line)",
        VAD_NOTICE_INTERVAL_S,
    )


class Listener:
    """The speech input of one session; `aclose()` drops everything it holds."""

    def __init__(
        self,
        host: Host,
        vad: SileroVAD,
        stt: SessionSTT,
        settings: TurnSettings,
        limits: InputAudioSettings,
        vad_failed: RepeatedWarning | None = None,
        end_of_turn: EndOfTurnModel | None = None,
    ) -> None:
        self.host = host
        self.vad = vad
        self.stt = stt  # this session's lines in the server's scheduler
        self.settings = settings
        self.limits = limits
        self.end_of_turn = end_of_turn  # None: a semantic verdict is never possible
        self.stats = ListenerStats()
        self._vad_failed = vad_failed or vad_notice()
        self._stream = uuid.uuid4().hex  # this session's state in the VAD worker
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_FRAMES)
        self._queued_bytes = 0  # audio in `_queue`
        self._detector = TurnDetector(self._rules())
        self._samples = 0  # appended so far: the session's audio clock
        self._audio = bytearray()  # the audio kept, from `_audio_from_ms` on
        self._audio_from_ms = 0.0
        self._item_id = ""
        self._turn_from_ms = 0  # where the turn's audio begins (speech start - prefix)
        self._pause_from_ms: int | None = None  # the pause in progress in the turn
        self._gaps: list[tuple[int, int]] = []  # the turn's long pauses, cut from its audio
        self._turn_ended = False  # a turn ended since the last commit/clear
        self._speech_run = 0  # push-to-talk: consecutive speech windows
        self._heard_speech = False  # push-to-talk: speech since the last commit
        # The pause's speculative transcription, and the task that follows it up (verdict,
        # preemptive answer); the verdict waits here for the listener's task to apply it.
        self._speculation: tuple[int, Job, asyncio.Task[None]] | None = None
        self._verdict: tuple[int, bool | None] | None = None
        self._preempted = False  # the session holds an answer to this turn's pause
        self._paused_playback = False  # Held: the answer's playback is paused at the client
        self._resumed_at = -1e9  # when playback last resumed (monotonic): the echo onset rule
        self._no_pause_until = 0.0
        self._answering: asyncio.Task[None] | None = None  # the last ended turn's transcription
        self._task = asyncio.create_task(self._run(), name="listener")

    @property
    def now_ms(self) -> float:
        return self._samples / (RATE / 1000)

    @property
    def buffered_ms(self) -> float:
        """The audio kept for turns in progress (bounded: `_trim`)."""
        return len(self._audio) / BYTES_PER_MS

    def _rules(self) -> TurnRules:
        s = self.settings
        eagerness = EAGERNESS_RULES[s.eagerness]
        return TurnRules(
            silence_ms=s.silence_ms,
            barge_in_ms=s.barge_in_ms,
            max_turn_ms=int(self.limits.max_turn_audio_s * 1000),
            # Without the model, or in a language it cannot read, silence alone decides.
            semantic=s.turn_detection == SEMANTIC
            and self.end_of_turn is not None
            and judges_language(s.language),
            complete_ms=eagerness.complete_ms,
            incomplete_ms=eagerness.incomplete_ms,
        )

    def update(self, settings: TurnSettings) -> None:
        """session.update: applies from the next window; a mode change drops a turn in
        progress (its rules no longer hold)."""
        mode_changed = settings.turn_mode != self.settings.turn_mode
        self.settings = settings
        self._detector.rules = self._rules()
        if mode_changed:
            self._drop_speculation()
            self._detector.reset()
            self._heard_speech, self._speech_run, self._turn_ended = False, 0, False

    # --- the session's side: put messages in line --------------------------------------

    def put(self, kind: str, pcm16: bytes = b"") -> bool:
        """Queue "audio", "commit" or "clear"; False when the listener is that far behind (the
        message is dropped: the session never stops reading its socket for speech input)."""
        if self._queued_bytes + len(pcm16) > QUEUE_AUDIO_MS * BYTES_PER_MS:
            return False
        try:
            self._queue.put_nowait((kind, pcm16))
        except asyncio.QueueFull:
            return False
        self._queued_bytes += len(pcm16)
        return True

    def drop_pending_turns(self) -> None:
        """response.cancel, or a typed message: turns still being transcribed get no answer."""
        if self._answering is not None:
            self._answering.cancel()
            self._answering = None

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._drop_speculation_and_wait()
        if self._answering is not None:
            self._answering.cancel()
            await asyncio.gather(self._answering, return_exceptions=True)
        self.stt.close()  # every job of this session leaves the scheduler
        with suppress(Exception):  # the worker may be gone; its state goes with it then
            async with asyncio.timeout(2):
                await self.vad.close(self._stream)

    # --- the listener's task ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            kind, data = await self._queue.get()
            self._queued_bytes -= len(data)
            try:
                if kind == "audio":
                    await self._on_audio(data)
                elif kind == "verdict":
                    await self._apply_verdict()
                elif kind == "commit":
                    await self._on_commit()
                else:
                    await self._on_clear()
            except protocol.ProtocolError as exc:
                await self.host.emit(events.Error(exc.code, exc.message))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: report it, keep listening
                log.exception("speech input failed")
                await self.host.emit(events.Error(protocol.INTERNAL, f"speech input: {exc}"))

    async def _on_audio(self, pcm16: bytes) -> None:
        self._audio += pcm16
        self._samples += len(pcm16) // 2
        self.stats.most_buffered_ms = max(self.stats.most_buffered_ms, self.buffered_ms)
        try:
            probabilities = await self.vad.probabilities(self._stream, pcm16)
        except WorkerError as exc:
            # The VAD worker died and lost every stream's state: start this one afresh. (A
            # worker that cannot restart fails every frame at once: the audio is trimmed all
            # the same, and the log gets one line per interval, not one per frame.)
            self.stats.vad_failures += 1
            self._vad_failed(exc)
            self._stream = uuid.uuid4().hex
            self._detector.reset()
            self._detector.windows = int(self.now_ms // WINDOW_MS)  # the clocks agree again
            probabilities = []
        if self.settings.turn_mode == PUSH_TO_TALK:
            self._push_to_talk_windows(probabilities)
            if self.now_ms - self._audio_from_ms >= self.limits.max_turn_audio_s * 1000:
                await self._on_commit(truncated=True)  # the turn limit: as if the user let go
        else:
            await self._apply_verdict()
            guarded = self.settings.barge_in_ms > 0 and self.host.answer_playing()
            for probability in probabilities:
                for event in self._detector.feed(probability, guarded=guarded):
                    await self._on_turn_event(event)
            held = self._detector.state in (HOLDING, DECIDING, JUDGED_AGAIN)
            if self._paused_playback and not held:
                await self._resume_playback()  # the held sound ended, or the rules changed
        self._trim()

    def _push_to_talk_windows(self, probabilities: list[float]) -> None:
        rules = self._detector.rules
        for probability in probabilities:
            self._detector.windows += 1
            self._speech_run = self._speech_run + 1 if probability >= rules.start_threshold else 0
            if self._speech_run * WINDOW_MS >= rules.start_ms:
                self._heard_speech = True

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if isinstance(event, Started):
            await self._start_turn(event.start_ms)
        elif isinstance(event, Paused):
            self._pause_from_ms = event.at_ms
            self._speculate(event.at_ms)
        elif isinstance(event, Resumed):
            if self._pause_from_ms is not None:  # (the speech began a few windows ago)
                resumed_ms = self._detector.now_ms - self._detector.rules.start_ms
                self._gaps.append((self._pause_from_ms + GAP_KEEP_MS, resumed_ms - GAP_KEEP_MS))
                self._pause_from_ms = None
            if self._speculation is not None:
                self.stats.speculative_discarded += 1
            self._drop_speculation()
            await self._drop_preempted()
        elif isinstance(event, Held):
            await self._pause_playback()
        elif isinstance(event, Released):
            await self._resume_playback()
        elif isinstance(event, Stopped):
            await self.host.emit(events.SpeechStopped(self._item_id, event.end_ms))
            await self._end_turn(event.end_ms, event.truncated)
        elif isinstance(event, Candidate):
            await self._judge(event)

    async def _judge(self, candidate: Candidate) -> None:
        """Speech over the playing answer (its playback is paused): the user barging in, or
        the answer's own voice, an acknowledgement ("yeah"), a noise? Only words interrupt."""
        heard: Transcript | None = None
        audio = self._slice(candidate.start_ms, candidate.at_ms)
        job = self.stt.transcribe(audio, self.settings.language, ECHO)
        try:
            # Waiting for the recognizer counts too: a busy one does not hold the listener
            # (on the timeout the job is dropped, from the scheduler's line or the worker).
            async with asyncio.timeout(ECHO_CHECK_TIMEOUT_S):
                heard = await job.future
        except Exception as exc:  # STTError, a timeout: never leave a Candidate undecided
            log.warning("speech over the answer not recognised (%r): taking it as the user", exc)
        if self._detector.state != DECIDING:
            return  # a session.update or clear changed the rules meanwhile
        if heard is not None:
            if not words(heard.text):  # a noise, or speech not recognisable yet: judged again
                self._detector.reject()  # while it lasts; playback stays held until it ends
                return
            echo = self.settings.echo_guard and is_echo(heard.text, self.host.answer_words())
            if echo or is_backchannel(heard.text):
                kind = "its echo" if echo else "a backchannel"
                log.info("speech over the answer taken as %s: %r", kind, heard.text)
                if echo:
                    self.stats.echo_rejected += 1
                else:
                    self.stats.backchannels += 1
                self._detector.reject()
                await self._resume_playback()
                return
            log.info("speech over the answer taken as the user's: %r", heard.text)
        for event in self._detector.accept():
            await self._on_turn_event(event)

    async def _pause_playback(self) -> None:
        """Speech began over the answer: hold its playback (unless that speech is likely the
        answer's echo returning as soon as playback resumed: then it plays on while judged)."""
        now = time.monotonic()
        if now - self._resumed_at < ECHO_ONSET_S:
            self._no_pause_until = now + PAUSE_SUSPEND_S
        if now < self._no_pause_until or self._paused_playback:
            return
        self._paused_playback = True
        await self.host.pause_playback()

    async def _resume_playback(self) -> None:
        if self._paused_playback:
            self._paused_playback = False
            self._resumed_at = time.monotonic()
            await self.host.resume_playback()

    async def _start_turn(self, start_ms: int) -> None:
        self._item_id = uuid.uuid4().hex
        self._turn_from_ms = max(0, start_ms - PREFIX_MS)
        self._gaps, self._pause_from_ms = [], None
        self._drop_speculation()
        await self._drop_preempted()
        self._paused_playback = False  # (a paused answer is cancelled now)
        await self.host.emit(events.SpeechStarted(self._item_id, start_ms))
        if self.host.answer_playing():
            await self.host.interrupt()  # barge-in: the answer stops, the user has the floor

    def _speculate(self, at_ms: int) -> None:
        """A pause began: transcribe the turn so far now, while the turn rules wait."""
        self._drop_speculation()
        audio = self._turn_audio(at_ms)
        job = self.stt.transcribe(audio, self.settings.language, SPECULATIVE)
        follow = asyncio.create_task(self._follow_speculation(at_ms, job), name="speculation")
        self._speculation = (at_ms, job, follow)

    async def _follow_speculation(self, at_ms: int, job: Job) -> None:
        """The pause's transcript: judge it by meaning, and unless it is unfinished start a
        held answer on it. The verdict goes to the listener's task, which owns the turn rules."""
        try:  # (shielded: when the turn ends here, this task goes but the job is the turn's)
            heard = await asyncio.shield(job.future)
        except STTError:  # silence decides this pause; the turn's own transcription will
            self._post_verdict(at_ms, None)  # say what failed, if the turn ends here
            return
        item_id = self._item_id
        complete: bool | None = None
        said = words(heard.text)
        if said:  # the answer starts beside the verdict (both engines' threads sleep while
            self._preempted = True  # they wait, so neither starves the other)
            await self.host.preempt(item_id, heard.text)
        judged = len(said) > SHORT_TURN_WORDS
        if self._detector.rules.semantic and judged and self.end_of_turn:
            if judges_language(heard.language):
                try:
                    complete = await self.end_of_turn.complete(heard.text, self.settings.eagerness)
                except Exception as exc:  # a failed worker: silence decides this pause
                    log.warning("end-of-turn model failed (%r): silence decides", exc)
        if complete is False:  # unfinished: the user is likely to go on
            await self._drop_preempted()
        self._post_verdict(at_ms, complete)

    def _post_verdict(self, at_ms: int, complete: bool | None) -> None:
        self._verdict = (at_ms, complete)
        with suppress(asyncio.QueueFull):  # full: the next audio frame applies it
            self._queue.put_nowait(("verdict", b""))

    async def _apply_verdict(self) -> None:
        if self._verdict is None:
            return
        (at_ms, complete), self._verdict = self._verdict, None
        if self._detector.pause_at_ms != at_ms or not self._detector.rules.semantic:
            return  # stale: the speech went on, or the turn already ended
        wait_ms = self._detector.wait_for(complete)
        emitted = self._detector.judge(at_ms, complete)
        if complete is not None:  # (None: silence decides, as without a model)
            await self.host.emit(events.EndOfTurn(self._item_id, at_ms, complete, wait_ms))
        for event in emitted:
            await self._on_turn_event(event)

    async def _drop_preempted(self) -> None:
        if self._preempted:
            self._preempted = False
            await self.host.drop_preempted()

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation[1].cancel()
            self._speculation[2].cancel()
            self._speculation = None
        self._verdict = None

    async def _drop_speculation_and_wait(self) -> None:
        follow = self._speculation[2] if self._speculation is not None else None
        self._drop_speculation()
        if follow is not None:
            await asyncio.gather(follow, return_exceptions=True)

    async def _end_turn(self, end_ms: int, truncated: bool) -> None:
        """The turn is over: commit its audio, transcribe it (or take the speculative
        transcript, made of exactly this audio), answer it."""
        ended_at = time.perf_counter()
        item_id = self._item_id
        audio = self._turn_audio(end_ms)
        self._turn_ended = True
        self.stats.turns += 1
        await self.host.emit(events.AudioCommitted(item_id, len(audio) // BYTES_PER_MS, truncated))
        speculation, self._speculation = self._speculation, None
        self._verdict = None
        preempted = False  # the session holds an answer to exactly this turn's words
        if speculation is not None:  # its follow-up must not start an answer now
            speculation[2].cancel()
            await asyncio.gather(speculation[2], return_exceptions=True)
            if speculation[0] == end_ms:
                preempted, self._preempted = self._preempted, False
        await self._drop_preempted()  # (one held for other words)
        self._forget_until(end_ms)
        try:
            if speculation is not None and speculation[0] == end_ms:
                job = speculation[1]
                self.stt.promote(job)  # the turn's transcription: it counts as one now
                self.stats.speculative_used += 1
            else:
                if speculation is not None:
                    speculation[1].cancel()
                    self.stats.speculative_discarded += 1
                job = self.stt.transcribe(audio, self.settings.language, TURN)
        except STTBusy as exc:
            if speculation is not None:
                speculation[1].cancel()
            self.stats.shed += 1
            if preempted:
                await self.host.drop_preempted()
            message = f"speech recognition is busy ({exc}): this turn was not transcribed"
            await self.host.emit(events.Error(STT_BUSY, message, item_id=item_id))
            return
        # Transcribing runs beside the listener, which keeps hearing (a barge-in, the next
        # turn) however long the recognizer takes; turns are answered in the order they ended.
        previous = self._answering
        self._answering = asyncio.create_task(
            self._answer_turn(item_id, job, ended_at, previous, preempted), name="speech-turn"
        )

    async def _answer_turn(
        self,
        item_id: str,
        job: Job,
        ended_at: float,
        previous: asyncio.Task[None] | None,
        preempted: bool = False,
    ) -> None:
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            transcript = await job.future
        except asyncio.CancelledError:
            job.cancel()  # (it may not have been awaited yet)
            if preempted:
                await self.host.drop_preempted()
            raise
        except STTError as exc:
            message = f"speech recognition failed: {exc}"
            await self.host.emit(events.Error(protocol.STT_FAILED, message, item_id=item_id))
            return
        stt_ms = round(1000 * (time.perf_counter() - ended_at))
        await self.host.emit(
            events.Transcript(item_id, transcript.text, transcript.language, stt_ms)
        )
        if not words(transcript.text):
            await self.host.emit(events.Error(protocol.NO_SPEECH, "no words heard in that turn"))
            return
        try:
            if preempted and await self.host.confirm_preempted(item_id, ended_at):
                self.stats.preempted_used += 1  # already under way: its audio goes out now
            else:
                await self.host.user_turn(item_id, transcript.text, ended_at)
        except Exception as exc:  # a bug or a failing checkpointer: say so, keep listening
            log.exception("could not answer a spoken turn")
            await self.host.emit(events.Error(protocol.INTERNAL, f"internal error: {exc}"))

    async def _on_commit(self, truncated: bool = False) -> None:
        if self.settings.turn_mode == PUSH_TO_TALK:
            if not self._heard_speech:
                self._forget_until(self.now_ms)
                raise protocol.ProtocolError(protocol.NO_SPEECH, "no speech in the audio")
            self._item_id = uuid.uuid4().hex
            self._turn_from_ms = int(self._audio_from_ms)
            self._heard_speech, self._speech_run = False, 0
            if self.host.answer_playing():
                await self.host.interrupt()
            await self._end_turn(int(self.now_ms), truncated=truncated)
            return
        holding = self._detector.state != SPEAKING
        stop = self._detector.end_now()
        if stop is not None:
            if holding:  # speech over the answer not judged yet: a commit says it is the user
                await self._start_turn(self._detector.speech_start_ms)
            await self._end_turn(stop.end_ms, truncated=False)
        elif not self._turn_ended:
            raise protocol.ProtocolError(protocol.NO_SPEECH, "no speech heard since the last turn")
        self._turn_ended = False

    async def _on_clear(self) -> None:
        if self._answering is not None:  # `cleared` comes after every ended turn's transcript
            await asyncio.gather(self._answering, return_exceptions=True)
        await self._drop_speculation_and_wait()
        await self._drop_preempted()
        self._detector.reset()
        await self._resume_playback()
        self._heard_speech, self._speech_run, self._turn_ended = False, 0, False
        self._forget_until(self.now_ms)
        await self.host.emit(events.AudioCleared())

    # --- the audio kept ----------------------------------------------------------------------

    def _turn_audio(self, to_ms: float) -> bytes:
        """The turn's audio up to `to_ms`, its long pauses cut to 2 x GAP_KEEP_MS: Whisper
        tiny drops the words that follow a second of silence ("I need a name for my new ...
        puppy" came back without "puppy")."""
        parts, at = [], float(self._turn_from_ms)
        for gap_from, gap_to in self._gaps:
            if gap_to > gap_from >= at:
                parts.append(self._slice(at, gap_from))
                at = gap_to
        parts.append(self._slice(at, to_ms))
        return b"".join(parts)

    def _slice(self, from_ms: float, to_ms: float) -> bytes:
        start = max(0, int((from_ms - self._audio_from_ms) * BYTES_PER_MS)) & ~1
        end = max(0, int((to_ms - self._audio_from_ms) * BYTES_PER_MS)) & ~1
        return bytes(self._audio[start:end])

    def _forget_until(self, ms: float) -> None:
        drop = min(len(self._audio), max(0, int((ms - self._audio_from_ms) * BYTES_PER_MS)) & ~1)
        del self._audio[:drop]
        self._audio_from_ms += drop / BYTES_PER_MS

    def _trim(self) -> None:
        """Keep only what a turn may still need: its audio from the lead-in on while one is
        in progress, the last 3.5 s otherwise (an echo re-check looks at up to 3 s; push-to-
        talk: all since the last commit, up to the turn limit, which commits; past it, should
        the commit not come, the oldest goes)."""
        if self.settings.turn_mode == PUSH_TO_TALK:
            self._forget_until(self.now_ms - self.limits.max_turn_audio_s * 1000)
            return
        state = self._detector.state
        if state == SPEAKING:
            keep_from = self._turn_from_ms
        elif state in (HOLDING, DECIDING):
            keep_from = self._detector.speech_start_ms - PREFIX_MS
        else:  # idle, or echo (a re-check looks at the last `echo_recheck_ms`)
            keep_from = self.now_ms - max(2000, ECHO_WINDOW_MS + 500)
        self._forget_until(keep_from)

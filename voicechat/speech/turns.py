"""Turn detection: speech probabilities per 32 ms window in, turn events out.

Pure and synchronous (no audio, no model, no clock but the window count), so every rule is
tested with plain lists of numbers. Times are milliseconds on the session's audio clock.

A turn starts after `start_ms` of windows at or above `start_threshold`; it ends after
`silence_ms` below `end_threshold` (between the two thresholds counts as speech: hysteresis).
When a pause reaches `pause_ms` the caller may transcribe speculatively (`Paused`); speech
resuming makes that stale (`Resumed`).

Two rules end a turn. `silence`: `silence_ms` of silence. `semantic`: the caller judges the
pause by meaning (is the thought finished?) and hands the verdict to `judge()`; a finished
thought then ends the turn after `complete_ms` of silence, an unfinished one (or no verdict
yet) only after `incomplete_ms`, the most a pause may last; no verdict possible (`None`: a
language the judge cannot read) falls back to `silence_ms`.

While the assistant's answer plays (`guarded`), speech is held (`Held`: the caller pauses the
answer's playback) and must last `barge_in_ms` to be judged (`Candidate`: the caller calls
`accept()` or `reject()`), so a "mm-hm", a cough or the assistant's own voice coming back does
not take the turn. A held sound that ends short of that is `Released` (playback resumes).
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_MS = 32  # Silero's window at 16 kHz (512 samples)
ECHO_WINDOW_MS = 3000  # the most of a long sound over the answer that is judged again


@dataclass(frozen=True)
class TurnRules:
    start_threshold: float = 0.5
    end_threshold: float = 0.35
    start_ms: int = 64
    silence_ms: int = 600
    pause_ms: int = 64  # a pause this long starts a speculative transcription
    barge_in_ms: int = 500
    # While guarded, this much silence ends a short sound ("mm"): longer than the ~300 ms pause
    # after a comma, so "Wait, stop" is held and judged whole, not resumed between the words.
    short_sound_ms: int = 320
    echo_recheck_ms: int = 1000  # speech judged to be echo is judged again after this much more
    max_turn_ms: int = 60_000
    semantic: bool = False  # the turn ends by the caller's verdict (judge()), not silence alone
    complete_ms: int = 250  # semantic: silence that ends a finished thought
    incomplete_ms: int = 2500  # semantic: silence that ends an unfinished one (or unjudged)


@dataclass(frozen=True)
class Started:
    start_ms: int


@dataclass(frozen=True)
class Paused:
    at_ms: int  # where the pause began: the speculative transcript covers the audio before it


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class Held:
    """Speech began over the playing answer: hold its playback until the sound is judged."""

    start_ms: int


@dataclass(frozen=True)
class Released:
    """The held sound ended short of a barge-in: not a turn, the answer plays on."""


@dataclass(frozen=True)
class Stopped:
    end_ms: int
    truncated: bool = False


@dataclass(frozen=True)
class Candidate:
    """Speech over the playing answer lasted `barge_in_ms`: accept() it or reject() it."""

    start_ms: int  # the speech to judge runs from here to `at_ms`
    at_ms: int


TurnEvent = Started | Paused | Resumed | Stopped | Candidate | Held | Released
PENDING = "pending"  # semantic: the pause has no verdict yet

IDLE, SPEAKING, HOLDING, DECIDING, ECHO = "idle", "speaking", "holding", "deciding", "echo"


class TurnDetector:
    """Feed one probability per window, in order; read the events each window causes."""

    def __init__(self, rules: TurnRules | None = None) -> None:
        self.rules = rules or TurnRules()
        self.state = IDLE
        self.windows = 0  # windows fed so far: now = windows * WINDOW_MS
        self._run = 0  # consecutive speech windows (idle)
        self._start_ms = 0  # where the current speech began
        self._silence = 0  # consecutive silent windows
        self._paused = False
        self._pause_at_ms = 0  # where the current pause began
        self._verdict: bool | str | None = PENDING  # semantic: the current pause's verdict
        self._check_from_ms = 0  # echo: speech since here is judged next

    @property
    def now_ms(self) -> int:
        return self.windows * WINDOW_MS

    @property
    def speech_start_ms(self) -> int:
        """Where the speech in progress (a turn, or a sound being judged) began."""
        return self._start_ms

    @property
    def pause_at_ms(self) -> int | None:
        """Where the pause in the current turn began; None: no turn, or no pause."""
        return self._pause_at_ms if self.state == SPEAKING and self._paused else None

    def reset(self) -> None:
        """Forget the speech in progress (input_audio.clear); the clock keeps running."""
        self.state, self._run, self._silence, self._paused = IDLE, 0, 0, False
        self._verdict = PENDING

    def feed(self, probability: float, *, guarded: bool = False) -> list[TurnEvent]:
        if self.state == DECIDING:
            raise RuntimeError("a Candidate is waiting for accept() or reject()")
        rules = self.rules
        at_ms = self.now_ms  # this window starts here
        self.windows += 1
        speech = probability >= rules.start_threshold
        silent = probability < rules.end_threshold
        if self.state == ECHO and not guarded:
            self.reset()  # the answer stopped playing: whatever comes now is the user
        if self.state == IDLE:
            self._run = self._run + 1 if speech else 0
            if self._run == 1:
                self._start_ms = at_ms
            if self._run * WINDOW_MS < rules.start_ms:
                return []
            self._run, self._silence = 0, 0
            self.state = HOLDING if guarded else SPEAKING
            return [Held(self._start_ms)] if guarded else [Started(self._start_ms)]
        self._silence = self._silence + 1 if silent else 0
        if self.state == HOLDING:
            if not guarded:
                self.state = SPEAKING
                return [Started(self._start_ms)]
            if self._silence * WINDOW_MS >= rules.short_sound_ms:
                self.reset()  # a short sound over the answer: not a turn
                return [Released()]
            if self.now_ms - self._start_ms >= rules.barge_in_ms:
                self.state = DECIDING
                return [Candidate(self._start_ms, self.now_ms)]
            return []
        if self.state == ECHO:
            if self._silence * WINDOW_MS >= rules.short_sound_ms:
                self.reset()
            elif self.now_ms - self._check_from_ms >= rules.echo_recheck_ms:
                self.state = DECIDING
                # Judged on up to the last 3 s: a longer stretch is recognised more surely.
                start = max(self._start_ms, self.now_ms - ECHO_WINDOW_MS)
                self._start_ms = start  # accepted, the turn starts here: less of the echo
                return [Candidate(start, self.now_ms)]
            return []
        return self._speaking(at_ms)

    def _speaking(self, at_ms: int) -> list[TurnEvent]:
        rules = self.rules
        events: list[TurnEvent] = []
        if self._silence == 0 and self._paused:
            self._paused, self._verdict = False, PENDING
            events.append(Resumed())
        pause_start = at_ms - (self._silence - 1) * WINDOW_MS
        if self._silence and self._silence * WINDOW_MS >= self.wait_ms():
            self.reset()
            return [*events, Stopped(pause_start)]
        if self._silence * WINDOW_MS >= rules.pause_ms and not self._paused:
            self._paused, self._pause_at_ms = True, pause_start
            events.append(Paused(pause_start))
        if self.now_ms - self._start_ms >= rules.max_turn_ms:
            self.reset()
            events.append(Stopped(self.now_ms, truncated=True))
        return events

    def wait_ms(self) -> int:
        """The silence that ends the turn now (under the current pause's verdict)."""
        return self.wait_for(self._verdict)

    def wait_for(self, verdict: bool | str | None) -> int:
        """The silence that ends the turn under `verdict` (True, False, None or PENDING)."""
        rules = self.rules
        if not rules.semantic:
            return rules.silence_ms
        if verdict is None:
            return rules.silence_ms
        if verdict is True:
            return rules.complete_ms
        return rules.incomplete_ms  # unfinished, or not judged yet

    def judge(self, pause_at_ms: int, complete: bool | None) -> list[TurnEvent]:
        """The semantic verdict on the pause that began at `pause_at_ms` (a stale one, for a
        pause the speech has since resumed from, is ignored). The turn ends at once when the
        silence so far already meets the wait the verdict sets."""
        if self.state != SPEAKING or not self._paused or self._pause_at_ms != pause_at_ms:
            return []
        self._verdict = complete
        if self._silence * WINDOW_MS >= self.wait_ms():
            self.reset()
            return [Stopped(pause_at_ms)]
        return []

    def accept(self) -> list[TurnEvent]:
        """The Candidate is the user: the turn starts where the speech began."""
        self._expect_decision()
        self.state, self._silence, self._paused = SPEAKING, 0, False
        return [Started(self._start_ms)]

    def reject(self) -> None:
        """The Candidate is not the user (the answer's own voice): ignore this speech, but judge
        it again after `echo_recheck_ms` more of it, in case the user starts talking over it."""
        self._expect_decision()
        self.state, self._check_from_ms = ECHO, self.now_ms

    def end_now(self) -> Stopped | None:
        """input_audio.commit during a turn: it ends here, with no silence wait."""
        if self.state not in (SPEAKING, HOLDING, DECIDING):
            return None
        self.reset()
        return Stopped(self.now_ms)

    def _expect_decision(self) -> None:
        if self.state != DECIDING:
            raise RuntimeError("no Candidate is waiting for a decision")

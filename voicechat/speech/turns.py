"""Turn detection: speech probabilities per 32 ms window in, turn events out.

Pure and synchronous (no audio, no model, no clock but the window count), so every rule is
tested with plain lists of numbers. Times are milliseconds on the session's audio clock.

A turn starts after `start_ms` of windows at or above `start_threshold`; it ends after
`silence_ms` below `end_threshold` (between the two thresholds counts as speech: hysteresis).
When a pause reaches `pause_ms` the caller may transcribe speculatively (`Paused`); speech
resuming makes that stale (`Resumed`). While the assistant's answer plays (`guarded`), speech
must last `barge_in_ms` and then be judged (`Candidate`: the caller calls `accept()` or
`reject()`), so a "mm-hm" or the assistant's own voice coming back does not take the turn.
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
    pause_ms: int = 160  # a pause this long starts a speculative transcription
    barge_in_ms: int = 500
    short_sound_ms: int = 200  # while guarded: this much silence ends a short sound ("mm")
    echo_recheck_ms: int = 1000  # speech judged to be echo is judged again after this much more
    max_turn_ms: int = 60_000


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
class Stopped:
    end_ms: int
    truncated: bool = False


@dataclass(frozen=True)
class Candidate:
    """Speech over the playing answer lasted `barge_in_ms`: accept() it or reject() it."""

    start_ms: int  # the speech to judge runs from here to `at_ms`
    at_ms: int


TurnEvent = Started | Paused | Resumed | Stopped | Candidate

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
        self._check_from_ms = 0  # echo: speech since here is judged next

    @property
    def now_ms(self) -> int:
        return self.windows * WINDOW_MS

    @property
    def speech_start_ms(self) -> int:
        """Where the speech in progress (a turn, or a sound being judged) began."""
        return self._start_ms

    def reset(self) -> None:
        """Forget the speech in progress (input_audio.clear); the clock keeps running."""
        self.state, self._run, self._silence, self._paused = IDLE, 0, 0, False

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
            return [] if guarded else [Started(self._start_ms)]
        self._silence = self._silence + 1 if silent else 0
        if self.state == HOLDING:
            if not guarded:
                self.state = SPEAKING
                return [Started(self._start_ms)]
            if self._silence * WINDOW_MS >= rules.short_sound_ms:
                self.reset()  # a short sound over the answer: not a turn
                return []
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
            self._paused = False
            events.append(Resumed())
        pause_start = at_ms - (self._silence - 1) * WINDOW_MS
        if self._silence and self._silence * WINDOW_MS >= rules.silence_ms:
            self.reset()
            return [*events, Stopped(pause_start)]
        if self._silence * WINDOW_MS >= rules.pause_ms and not self._paused:
            self._paused = True
            events.append(Paused(pause_start))
        if self.now_ms - self._start_ms >= rules.max_turn_ms:
            self.reset()
            events.append(Stopped(self.now_ms, truncated=True))
        return events

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

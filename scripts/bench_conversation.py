"""Conversation feel (issue 22), measured at the client on the embedded stack: does the server
cut the user off in a pause, how soon does it answer, does an acknowledgement said over its
answer stop it (it should not), and how fast does a real interruption stop it?

    python scripts/bench_conversation.py [--parts cutoffs,v2v,backchannels,interruptions]
        [--turn-detection semantic|silence] [--eagerness low|medium|high] [--silence-ms N]
        [--quick] [--json]

A real server on loopback, in this process, on the embedded defaults
(`open_backends(BackendOptions())`: local SmolLM2, Piper, Whisper tiny.en, Silero VAD; as
scripts/bench_speech.py's `voice` mode). Every case is a fresh connection (a conversation of its
own) that streams a microphone signal in real time: 20 ms frames paced by the event loop's clock,
each sent when its last sample has been "captured", digital silence between the things said.
Times are taken at the client: a spoken part starts at the send time of the frame holding its
first speech sample and ends at the send time of the frame holding its last one (the first and
last 10 ms blocks within 40 dB of the clip's peak). The speech is said alternately by Piper
(tests/speech_fixtures.spoken_pcm, en_US-joe-medium, in this process) and by espeak-ng (the
project's espeak worker, voice en-us, resampled to 16 kHz), and reported per voice. The cases are
in tests/conversation_fixtures.py. Each case ends by cancelling whatever answer is in flight and
reading to its response.done, and waits for the server to fall quiet before the next; a case that
times out (--case-timeout) is reported as such. One unmeasured warm-up turn first.

- cutoffs: an unfinished sentence, a pause, its end ("I need a name for my new" <pause>
  "puppy."). CUT when the server ends the turn in the pause: more than one input_audio.committed,
  or a committed or response.created before the second part's last frame was sent. Pauses (from
  the first part's last speech sample to the second part's first) 0.7-1.2 s are the measure; 0.5
  and 1.5 s, on a few of the sentences, show the trend and are reported apart. Also: the time
  from the end of the second part to the first audio.chunk of its answer.
- v2v: finished questions (bench_speech's VOICE_QUESTIONS), from the end of speech to the first
  audio.chunk's arrival, split at the events the client sees (speech_stopped, committed,
  transcript, response.created, first text.delta).
- backchannels: a question with a long answer; from its first audio.chunk a simulated player
  plays what arrived (the server estimates the same from the audio it sent); 1.5 s into the
  playback an acknowledgement ("Yeah.", "Mm-hmm.", ...) is said, then silence. INTERRUPTED when
  the answer's response.done comes "cancelled" or a new response.created arrives within 4 s of
  the backchannel's end. A response.audio.paused followed by response.audio.resumed is not an
  interruption (counted apart), nor is an input_audio.speech_started alone, though a client stops
  its playback on it (counted apart too: "stopped").
- interruptions: the same, with "Wait, stop. Tell me about dogs instead." Latency from the
  interruption's first speech frame to (a) the answer's audio stopping at the client: the first
  of response.audio.paused, input_audio.speech_started, or the answer's response.done
  "cancelled"; (b) that response.done "cancelled". FAILED when within 6 s of the interruption's
  end neither a cancel nor a speech_started came (a pause that resumes is not a stop).

`--turn-detection` and `--eagerness` go in a session.update at the start of every connection
(with `--silence-ms` too, when given). A server that refuses them (error bad_message) or ignores
them (session.updated without them) is run without them, and the output says so.

The machine may be shared: the load average at the start of the run and of each part is printed.
Run time on 2 cores at load ~1.5-3: the full set ~6 min (16 cut-off cases ~2 min, 10 questions
~1 min, 8 backchannels ~1.5 min, 4 interruptions ~1.1 min; plus the server's start, 3 s with
warm caches, ~30 s cold); --quick (5 cut-offs, 2 of each other part) ~2 min, ~3.5 min at load 8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_speech, which adds the repo

from bench_speech import (
    BLOCK,
    FRAME,
    RATE,
    VOICE_QUESTIONS,
    WARMUP_QUESTION,
    embedded_server,
    espeak_clips,
    fmt,
    load_average,
    loud_blocks,
    ms,
    p50_max,
    speech_end_sample,
)

from tests.conversation_fixtures import (
    BACKCHANNELS,
    CUTOFFS,
    INTERRUPTIONS,
    LONG_QUESTIONS,
)
from tests.speech_fixtures import spoken_pcm, word_error_rate
from voicechat.client.connection import ChatConnection, ConnectionLost, ServerUnavailable

PARTS = ("cutoffs", "v2v", "backchannels", "interruptions")
VOICES = ("piper", "espeak")
LEAD_S = 0.5  # silence before the first thing said
MAIN_PAUSES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2)  # cut-offs: the measured range, in turn
TREND_PAUSES = (0.5, 1.5)  # cut-offs: either side of it, on a few sentences
TALK_OVER_AT_S = 1.5  # into the playback, the backchannel or interruption is said
INTERRUPT_WINDOW_S = 4.0  # a new response.created this soon after a backchannel interrupted
STOP_WINDOW_S = 6.0  # an interruption that has not stopped the answer by then failed
ANSWER_TIMEOUT_S = 40.0  # for an answer's first audio.chunk
SECOND_PART_WAIT_S = 12.0  # cut-offs: for the answer to the second part
QUIET_S = 1.5  # settled: nothing open and no event for this long
SETTLE_TIMEOUT_S = 30.0
TURN_FIELDS = ("turn_detection", "eagerness")


# --- the speech ---------------------------------------------------------------------------------


def speech_start_sample(samples: np.ndarray) -> int:
    """The first sample of speech: the start of the first 10 ms block within END_DB of the peak."""
    loud = loud_blocks(samples)
    return int(loud[0] * BLOCK) if loud.size else 0


class Voices:
    """Every text the run says, in both voices, made once."""

    def __init__(self) -> None:
        self.clips: dict[tuple[str, str], np.ndarray] = {}

    async def make(self, texts: list[str]) -> None:
        texts = sorted(set(texts))
        for text in texts:
            self.clips["piper", text] = spoken_pcm(text, varied=True)
        for text, clip in zip(texts, await espeak_clips(texts), strict=True):
            self.clips["espeak", text] = clip

    def __call__(self, voice: str, text: str) -> np.ndarray:
        return self.clips[voice, text]


# --- the microphone -----------------------------------------------------------------------------


class Utterance:
    """Something said into the microphone: where its speech lies in the stream (samples)."""

    def __init__(self, text: str, start: int, clip: np.ndarray) -> None:
        self.text = text
        self.onset = start + speech_start_sample(clip)  # the first speech sample
        self.end = start + speech_end_sample(clip)  # one past the last one
        self.onset_frame = self.onset // FRAME
        self.end_frame = (self.end - 1) // FRAME


class Microphone:
    """Real time, FRAME samples per frame paced by the loop's clock; silence unless something is
    queued with `say`. `sent_at[k]` is the send time of frame k."""

    def __init__(self, connection: ChatConnection) -> None:
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.pending = np.zeros(0, np.int16)
        self.frames = 0
        self.sent_at: list[float] = []
        self.lag = 0.0  # the latest any frame left after its due time
        self.ticked = asyncio.Event()
        self.failed: str | None = None
        self.task = asyncio.create_task(self._run(), name="microphone")

    def say(self, text: str, clip: np.ndarray, lead_s: float = 0.0) -> Utterance:
        """Queue `lead_s` of silence then `clip` after what is queued already."""
        lead = np.zeros(round(lead_s * RATE), np.int16)
        start = self.frames * FRAME + len(self.pending) + len(lead)
        self.pending = np.concatenate([self.pending, lead, clip.astype(np.int16)])
        return Utterance(text, start, clip)

    @property
    def speaking(self) -> bool:
        return len(self.pending) > 0

    async def until(self, frame: int) -> float:
        """The send time of frame `frame`, once it has been sent."""
        while len(self.sent_at) <= frame:
            if self.task.done():
                raise ConnectionLost(f"the microphone stopped: {self.failed}")
            self.ticked.clear()
            await self.ticked.wait()
        return self.sent_at[frame]

    async def _run(self) -> None:
        start = self.loop.time()
        try:
            while True:
                due = start + (self.frames + 1) * FRAME / RATE
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                piece = self.pending[:FRAME]
                self.pending = self.pending[FRAME:]
                if len(piece) < FRAME:
                    piece = np.concatenate([piece, np.zeros(FRAME - len(piece), np.int16)])
                now = self.loop.time()
                self.lag = max(self.lag, now - due)
                await self.connection.append_audio(piece.astype("<i2").tobytes())
                self.sent_at.append(now)
                self.frames += 1
                self.ticked.set()
        except ConnectionLost as exc:
            self.failed = str(exc)
            self.ticked.set()

    async def aclose(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


# --- one conversation ---------------------------------------------------------------------------


class TurnConfig:
    """What goes in each connection's session.update; learns whether the server takes it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.wanted = {
            name: value
            for name, value in (
                ("turn_detection", args.turn_detection),
                ("eagerness", args.eagerness),
                ("silence_ms", args.silence_ms),
            )
            if value is not None
        }
        self.supported: bool | None = None  # the new turn fields: None = not tried yet
        self.note: str | None = None
        self.input_audio: dict[str, Any] | None = None  # as the server reported it

    def fields(self) -> dict[str, Any]:
        if self.supported is False:
            return {k: v for k, v in self.wanted.items() if k not in TURN_FIELDS}
        return dict(self.wanted)

    async def apply(self, connection: ChatConnection) -> None:
        self.input_audio = connection.session.get("input_audio")
        fields = self.fields()
        if not fields:
            return
        asked = [name for name in TURN_FIELDS if name in fields]
        await connection.update_session(**fields)
        async with asyncio.timeout(10):
            while True:
                event = await connection.next_event()
                if event["type"] == "session.updated":
                    self.input_audio = event["input_audio"]
                    if asked and self.supported is None:
                        missing = [n for n in asked if self.input_audio.get(n) != fields[n]]
                        self.supported = not missing
                        if missing:
                            self.note = (
                                f"the server ignored {', '.join(missing)} (session.updated "
                                "does not carry them): run without them"
                            )
                    return
                if event["type"] == "error":
                    if asked and event.get("code") == "bad_message" and self.supported is None:
                        self.supported = False
                        self.note = (
                            f"the server refused {', '.join(asked)} (error bad_message: "
                            f"{event.get('message')}): run without them"
                        )
                        return await self.apply(connection)
                    raise ConnectionLost(f"session.update refused: {event}")


class Conversation:
    """A fresh connection with a microphone; every event with its arrival time."""

    def __init__(self, url: str, config: TurnConfig) -> None:
        self.url = url
        self.config = config
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.created: dict[str, float] = {}  # response_id -> arrival of its response.created
        self.done: dict[str, dict[str, Any]] = {}  # response_id -> its response.done
        self.cancel_answers = False  # settling: cancel any answer at its first audio.chunk
        self.cancelled: set[str] = set()
        self.problems: list[str] = []
        self.marks: dict[str, float] = {}  # the client's own moments (loop time)
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Conversation:
        self.loop = asyncio.get_running_loop()
        self.connection = ChatConnection(self.url)
        await self.connection.__aenter__()
        try:
            await self.config.apply(self.connection)
        except BaseException:
            await self.connection.__aexit__(None, None, None)
            raise
        self.reader = asyncio.create_task(self._read(), name="reader")
        self.mic = Microphone(self.connection)
        self.t0 = self.loop.time()  # the microphone's start: event times in the JSON count from it
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.mic.aclose()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.connection.__aexit__(None, None, None)

    async def _read(self) -> None:
        try:
            async for event in self.connection.events():
                now = self.loop.time()
                kind = event["type"]
                if kind == "audio.chunk":
                    event["audio"] = None
                    rid = event["response_id"]
                    if self.cancel_answers and rid not in self.cancelled and rid not in self.done:
                        self.cancelled.add(rid)
                        await self.connection.cancel()
                elif kind == "response.created":
                    self.created[event["response_id"]] = now
                elif kind == "response.done":
                    self.done[event["response_id"]] = event
                    event["arrived"] = now
                elif kind == "error":
                    self.problems.append(f"{event.get('code')}: {event.get('message')}")
                self.events.append((now, event))
                self._changed.set()
                self._changed = asyncio.Event()
        except ConnectionLost as exc:
            self.problems.append(f"connection lost: {exc}")
            self._changed.set()

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], within: float, start: int = 0
    ) -> tuple[float, dict[str, Any]] | None:
        """The first event from index `start` on that `match`es (waiting up to `within` s)."""
        deadline = self.loop.time() + within
        index = start
        while True:
            while index < len(self.events):
                if match(self.events[index][1]):
                    return self.events[index]
                index += 1
            if self.reader.done():
                return None
            changed = self._changed
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return None

    async def until(self, moment: float) -> None:
        await asyncio.sleep(max(0.0, moment - self.loop.time()))

    def first(
        self, kind: str, after: float = -1.0, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> tuple[float, dict[str, Any]] | None:
        for at, event in self.events:
            if event["type"] == kind and at >= after and (match is None or match(event)):
                return at, event
        return None

    def of_kind(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, event) for at, event in self.events if event["type"] == kind]

    def open_responses(self) -> list[str]:
        return [rid for rid in self.created if rid not in self.done]

    def unresolved_turns(self) -> list[str]:
        """Committed turns with neither a transcript nor an error yet."""
        resolved = {
            event.get("item_id")
            for _, event in self.events
            if event["type"] in ("input_audio.transcript", "error")
        }
        return [
            event["item_id"]
            for _, event in self.of_kind("input_audio.committed")
            if event["item_id"] not in resolved
        ]

    async def settle(self) -> None:
        """Let the case end: any answer cancelled (read to its response.done), every committed
        turn transcribed, nothing said, and no event for QUIET_S."""
        self.cancel_answers = True
        deadline = self.loop.time() + SETTLE_TIMEOUT_S
        while self.loop.time() < deadline:
            if self.reader.done():
                return
            for rid in self.open_responses():
                if rid not in self.cancelled:
                    self.cancelled.add(rid)
                    await self.connection.cancel()
            last = self.events[-1][0] if self.events else 0.0
            quiet = self.loop.time() - last >= QUIET_S
            if (
                quiet
                and not self.mic.speaking
                and not self.open_responses()
                and not self.unresolved_turns()
            ):
                return
            await asyncio.sleep(0.1)
        self.problems.append(
            f"did not settle in {SETTLE_TIMEOUT_S} s (open responses {self.open_responses()}, "
            f"turns without transcript {self.unresolved_turns()})"
        )

    def transcripts(self) -> list[str]:
        return [event["text"] for _, event in self.of_kind("input_audio.transcript")]

    def verdicts(self) -> list[Any]:
        """The semantic end-of-turn verdicts (input_audio.end_of_turn), if the server sends them."""
        return [event.get("complete") for _, event in self.of_kind("input_audio.end_of_turn")]


def rel(at: float | None, origin: float | None) -> float | None:
    return None if at is None or origin is None else ms(at - origin)


def at_of(found: tuple[float, dict[str, Any]] | None) -> float | None:
    return None if found is None else found[0]


async def run_case(
    kind: str, case: dict[str, Any], body: Callable[[Conversation], Any], args: argparse.Namespace
) -> dict[str, Any]:
    """One case on a fresh connection; a timeout or a lost connection is its result, not a crash."""
    started = time.perf_counter()
    conversation: Conversation | None = None
    try:
        async with asyncio.timeout(args.case_timeout):
            async with Conversation(args.url, args.config) as conversation:
                try:
                    case.update(await body(conversation))
                finally:
                    await conversation.settle()
    except TimeoutError:
        case["error"] = f"case timed out after {args.case_timeout} s"
    except (ConnectionLost, ServerUnavailable) as exc:
        case["error"] = str(exc)
    if conversation is not None:
        case["problems"] = conversation.problems
        case["pacing_lag_ms"] = ms(conversation.mic.lag) if hasattr(conversation, "mic") else None
        t0 = getattr(conversation, "t0", None)
        if t0 is not None:  # seconds from the microphone's start
            case["marks"] = {k: round(at - t0, 3) for k, at in conversation.marks.items()}
            case["events"] = [
                {"t": round(at - t0, 3), **summarize_event(event)}
                for at, event in conversation.events
            ]
    case["case_s"] = round(time.perf_counter() - started, 1)
    if not args.json:
        show_case(kind, case)
    return case


def summarize_event(event: dict[str, Any]) -> dict[str, Any]:
    keep = ("type", "response_id", "item_id", "status", "text", "complete", "code", "seq")
    out = {k: event[k] for k in keep if k in event}
    if event["type"] == "text.delta":
        out.pop("text", None)
    if "text" in out and isinstance(out["text"], str) and len(out["text"]) > 80:
        out["text"] = out["text"][:80] + "…"
    return out


# --- the parts ----------------------------------------------------------------------------------


def cutoff_cases(quick: bool) -> list[dict[str, Any]]:
    cases = []
    main = CUTOFFS[:3] if quick else CUTOFFS
    pauses = (0.7, 1.0, 1.2) if quick else MAIN_PAUSES
    for index, (first, second) in enumerate(main):
        cases.append({"first": first, "second": second, "pause_s": pauses[index % len(pauses)]})
    trend = CUTOFFS[:1] if quick else CUTOFFS[:3]
    for pause in TREND_PAUSES:
        for first, second in trend:
            cases.append({"first": first, "second": second, "pause_s": pause})
    for index, case in enumerate(cases):
        case["voice"] = VOICES[index % 2]
    return cases


async def cutoff(conv: Conversation, case: dict[str, Any], voices: Voices) -> dict[str, Any]:
    one = voices(case["voice"], case["first"])
    two = voices(case["voice"], case["second"])
    # The pause runs from the first part's last speech sample to the second part's first.
    tail = len(one) - speech_end_sample(one)
    head = speech_start_sample(two)
    gap = max(0, round(case["pause_s"] * RATE) - tail - head)
    part1 = conv.mic.say(case["first"], one, LEAD_S)
    part2 = conv.mic.say(case["second"], two, gap / RATE)
    pause_true = (part2.onset - part1.end) / RATE
    conv.marks["first_end"] = await conv.mic.until(part1.end_frame)
    conv.marks["second_onset"] = await conv.mic.until(part2.onset_frame)
    conv.marks["second_end"] = second_end = await conv.mic.until(part2.end_frame)

    # The answer to the whole thought: the first audio.chunk of a response created after it.
    def answer_audio(event: dict[str, Any]) -> bool:
        rid = event.get("response_id")
        return event["type"] == "audio.chunk" and conv.created.get(rid, -1.0) >= second_end

    early = [
        (kind, at)
        for kind in ("input_audio.committed", "response.created")
        for at, _ in conv.of_kind(kind)
        if at < second_end
    ]
    cut_so_far = bool(early)
    found = await conv.wait_for(answer_audio, 5.0 if cut_so_far else SECOND_PART_WAIT_S)
    commits = conv.of_kind("input_audio.committed")
    early = sorted(
        (kind, at)
        for kind in ("input_audio.committed", "response.created")
        for at, _ in conv.of_kind(kind)
        if at < second_end
    )
    cut = len(commits) > 1 or bool(early)
    if found is None and not cut:
        conv.problems.append(f"no answer audio in {SECOND_PART_WAIT_S} s after the second part")
    heard = " ".join(conv.transcripts())
    return {
        "pause_true_s": round(pause_true, 3),
        "cut": cut,
        "commits": len(commits),
        "early": [kind for kind, _ in early],
        "speech_stopped": len(conv.of_kind("input_audio.speech_stopped")),
        "verdicts": conv.verdicts(),
        "transcripts": conv.transcripts(),
        # Words lost or misheard, over the whole thought (a dropped second part shows here).
        "wer": round(word_error_rate(f"{case['first']} {case['second']}", heard), 3),
        "answer_ms": rel(at_of(found), second_end),
        "responses": len(conv.created),
    }


def v2v_cases(quick: bool) -> list[dict[str, Any]]:
    questions = VOICE_QUESTIONS[:2] if quick else VOICE_QUESTIONS
    return [{"question": q, "voice": VOICES[i % 2]} for i, q in enumerate(questions)]


V2V_MARKS = (  # (key, event type)
    ("speech_stopped_ms", "input_audio.speech_stopped"),
    ("committed_ms", "input_audio.committed"),
    ("transcript_ms", "input_audio.transcript"),
    ("response_created_ms", "response.created"),
    ("first_text_ms", "text.delta"),
    ("total_ms", "audio.chunk"),
)


async def voice_to_voice(
    conv: Conversation, case: dict[str, Any], voices: Voices
) -> dict[str, Any]:
    said = conv.mic.say(case["question"], voices(case["voice"], case["question"]), LEAD_S)
    conv.marks["speech_end"] = end = await conv.mic.until(said.end_frame)
    found = await conv.wait_for(
        lambda e: (
            e["type"] == "audio.chunk"
            or (e["type"] == "error" and e.get("code") in ("no_speech", "stt_failed", "stt_busy"))
        ),
        ANSWER_TIMEOUT_S,
    )
    if found is None:
        conv.problems.append(f"no audio.chunk in {ANSWER_TIMEOUT_S} s after the end of speech")
    out: dict[str, Any] = {key: rel(at_of(conv.first(kind)), end) for key, kind in V2V_MARKS}
    heard = conv.transcripts()
    out["transcript"] = heard[0] if heard else None
    out["wer"] = round(word_error_rate(case["question"], heard[0]), 3) if heard else None
    out["commits"] = len(conv.of_kind("input_audio.committed"))
    out["verdicts"] = conv.verdicts()
    return out


def talk_over_cases(part: str, quick: bool) -> list[dict[str, Any]]:
    if part == "backchannels":
        said = BACKCHANNELS[:2] if quick else [*BACKCHANNELS, BACKCHANNELS[0]]
    else:
        said = [INTERRUPTIONS[i % len(INTERRUPTIONS)] for i in range(2 if quick else 4)]
    return [
        {"question": LONG_QUESTIONS[i % len(LONG_QUESTIONS)], "said": text, "voice": VOICES[i % 2]}
        for i, text in enumerate(said)
    ]


async def talk_over(
    conv: Conversation, case: dict[str, Any], voices: Voices, interrupt: bool
) -> dict[str, Any]:
    """Ask for a long answer; TALK_OVER_AT_S into its playback say case["said"]."""
    voice = case["voice"]
    asked = conv.mic.say(case["question"], voices(voice, case["question"]), LEAD_S)
    conv.marks["question_end"] = asked_end = await conv.mic.until(asked.end_frame)
    found = await conv.wait_for(lambda e: e["type"] == "audio.chunk", ANSWER_TIMEOUT_S)
    if found is None:
        conv.problems.append(f"no answer audio in {ANSWER_TIMEOUT_S} s")
        return {"valid": False, "why": "no answer audio"}
    play_start, chunk = found
    conv.marks["playback_start"] = play_start
    answer = chunk["response_id"]
    deadline = play_start + TALK_OVER_AT_S + 10.0  # (an answer starved of audio: say it then)
    while (position := playback(conv, answer, play_start)[0]) < TALK_OVER_AT_S:
        if conv.loop.time() >= deadline:
            break
        await asyncio.sleep(0.01)
    position, buffered = playback(conv, answer, play_start)
    if answer in conv.done and conv.done[answer]["status"] != "completed":
        return {"valid": False, "why": f"answer ended {conv.done[answer]['status']} before"}
    said = conv.mic.say(case["said"], voices(voice, case["said"]))
    conv.marks["said_onset"] = onset = await conv.mic.until(said.onset_frame)
    conv.marks["said_end"] = end = await conv.mic.until(said.end_frame)
    window = STOP_WINDOW_S if interrupt else INTERRUPT_WINDOW_S
    # Watch until the window closes (an interruption: or its answer's first audio.chunk).
    new_audio = None
    if interrupt:
        new_audio = await conv.wait_for(
            lambda e: e["type"] == "audio.chunk" and e["response_id"] != answer,
            end + window + 20.0 - conv.loop.time(),
        )
    await conv.until(end + window)

    def of_answer(event: dict[str, Any]) -> bool:
        return event.get("response_id") == answer

    paused = conv.first("response.audio.paused", onset - 0.1, of_answer)
    resumed = conv.first("response.audio.resumed", onset - 0.1, of_answer)
    started = conv.first("input_audio.speech_started", onset - 0.1)
    done = conv.done.get(answer)
    cancelled_at = done["arrived"] if done and done["status"] == "cancelled" else None
    new = [(at, rid) for rid, at in conv.created.items() if rid != answer and at <= end + window]
    stops = [
        (at, name)
        for at, name in (
            (at_of(paused), "paused"),
            (at_of(started), "speech_started"),
            (cancelled_at, "cancelled"),
        )
        if at is not None
    ]
    out: dict[str, Any] = {
        "valid": True,
        "answer_ms": rel(play_start, asked_end),
        "playback_at_s": round(position, 2),
        "buffered_s": round(buffered, 2),
        "answer_done_before": done is not None and done["arrived"] < onset,
        "paused": paused is not None,
        "resumed": resumed is not None,
        "speech_started": started is not None,
        "cancelled": cancelled_at is not None,
        "new_response": bool(new),
        "paused_ms": rel(at_of(paused), onset),
        "resumed_ms": rel(at_of(resumed), onset),
        "held_ms": rel(at_of(resumed), at_of(paused)),  # how long playback stood still
        "speech_started_ms": rel(at_of(started), onset),
        "cancelled_ms": rel(cancelled_at, onset),
        "new_response_ms": rel(min(at for at, _ in new), onset) if new else None,
        "stop_ms": rel(min(stops)[0], onset) if stops else None,
        "stopped_by": min(stops)[1] if stops else None,
        "transcripts": conv.transcripts(),
        "said_s": round((said.end - said.onset) / RATE, 2),
    }
    if interrupt:
        out["stopped"] = cancelled_at is not None or started is not None
        out["new_answer_audio_ms"] = rel(at_of(new_audio), end)
    else:
        out["interrupted"] = out["cancelled"] or out["new_response"]
    return out


def playback(conv: Conversation, answer: str, start: float) -> tuple[float, float]:
    """The simulated player, now: (seconds of the answer played, seconds received). Each chunk
    plays from its arrival or the end of the one before, whichever is later."""
    now = conv.loop.time()
    ends = start
    played = received = 0.0
    for at, event in conv.of_kind("audio.chunk"):
        if event["response_id"] != answer or at > now:
            continue
        length = event["samples"] / event["sample_rate"]
        begins = max(ends, at)
        ends = begins + length
        played += min(max(0.0, now - begins), length)
        received += length
    return played, received


# --- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = args.parts
    plans: dict[str, list[dict[str, Any]]] = {}
    if "cutoffs" in parts:
        plans["cutoffs"] = cutoff_cases(args.quick)
    if "v2v" in parts:
        plans["v2v"] = v2v_cases(args.quick)
    for part in ("backchannels", "interruptions"):
        if part in parts:
            plans[part] = talk_over_cases(part, args.quick)
    texts = [WARMUP_QUESTION]
    for case in plans.get("cutoffs", []):
        texts += [case["first"], case["second"]]
    texts += [case["question"] for case in plans.get("v2v", [])]
    for part in ("backchannels", "interruptions"):
        texts += [t for case in plans.get(part, []) for t in (case["question"], case["said"])]
    voices = Voices()
    made = time.perf_counter()
    await voices.make(texts)
    result: dict[str, Any] = {"speech_made_s": round(time.perf_counter() - made, 1)}
    started = time.perf_counter()
    async with embedded_server() as server:
        result["server_start_s"] = round(time.perf_counter() - started, 1)
        args.url = server.url
        args.config = TurnConfig(args)
        warm = {"question": WARMUP_QUESTION, "voice": "piper"}
        if not args.json:
            print("warm-up (not measured):")
        await run_case("warmup", warm, lambda c: voice_to_voice(c, warm, voices), args)
        result["input_audio"] = args.config.input_audio
        result["turn_fields"] = {
            "wanted": args.config.wanted,
            "supported": args.config.supported,
            "note": args.config.note,
        }
        if not args.json and args.config.note:
            print(f"NOTE: {args.config.note}")
        bodies = {
            "cutoffs": lambda case: lambda c: cutoff(c, case, voices),
            "v2v": lambda case: lambda c: voice_to_voice(c, case, voices),
            "backchannels": lambda case: lambda c: talk_over(c, case, voices, False),
            "interruptions": lambda case: lambda c: talk_over(c, case, voices, True),
        }
        result["parts"] = {}
        for part in PARTS:
            if part not in plans:
                continue
            part_started = time.perf_counter()
            load = load_average()
            if not args.json:
                print(f"\n{part} ({len(plans[part])} cases; load average {load}):", flush=True)
            cases = [await run_case(part, case, bodies[part](case), args) for case in plans[part]]
            result["parts"][part] = {
                "load_average_start": load,
                "elapsed_s": round(time.perf_counter() - part_started, 1),
                "summary": SUMMARIES[part](cases),
                "cases": cases,
            }
        result["input_audio"] = args.config.input_audio
    return result


# --- summaries ----------------------------------------------------------------------------------


def ok(cases: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [c for c in cases if "error" not in c and c.get(key) is not None]


def summarize_cutoffs(cases: list[dict[str, Any]]) -> dict[str, Any]:
    def count(subset: list[dict[str, Any]]) -> dict[str, Any]:
        judged = ok(subset, "cut")
        return {
            "cut": sum(c["cut"] for c in judged),
            "total": len(judged),
            "failed_cases": len(subset) - len(judged),
        }

    main = [c for c in cases if 0.7 <= c["pause_s"] <= 1.2]
    out: dict[str, Any] = {"main": count(main)}
    out["main_per_voice"] = {v: count([c for c in main if c["voice"] == v]) for v in VOICES}
    out["trend"] = {
        str(p): count([c for c in cases if c["pause_s"] == p]) for p in sorted({*TREND_PAUSES})
    }
    out["answer_ms"] = p50_max([c["answer_ms"] for c in ok(cases, "answer_ms") if not c["cut"]])
    judged = ok(cases, "wer")
    out["wer_mean"] = round(sum(c["wer"] for c in judged) / len(judged), 3) if judged else None
    return out


def summarize_v2v(cases: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: p50_max([c[key] for c in ok(cases, key)]) for key, _ in V2V_MARKS}
    out["per_voice_total_ms"] = {
        v: p50_max([c["total_ms"] for c in ok(cases, "total_ms") if c["voice"] == v])
        for v in VOICES
    }
    out["answered"] = len(ok(cases, "total_ms"))
    for voice in VOICES:
        judged = [c for c in ok(cases, "wer") if c["voice"] == voice]
        out.setdefault("wer_mean", {})[voice] = (
            round(sum(c["wer"] for c in judged) / len(judged), 3) if judged else None
        )
    out["total"] = len(cases)
    return out


def summarize_talk_over(cases: list[dict[str, Any]], interrupt: bool) -> dict[str, Any]:
    valid = [c for c in cases if "error" not in c and c.get("valid")]

    def counts(subset: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            "trials": len(subset),
            "paused": sum(c["paused"] for c in subset),
            "resumed": sum(c["paused"] and c["resumed"] for c in subset),
            "speech_started": sum(c["speech_started"] for c in subset),
            "cancelled": sum(c["cancelled"] for c in subset),
            "new_response": sum(c["new_response"] for c in subset),
        }
        if interrupt:
            out["failed"] = sum(not c["stopped"] for c in subset)
        else:
            out["interrupted"] = sum(c["interrupted"] for c in subset)
        return out

    out: dict[str, Any] = {
        **counts(valid),
        "invalid": len(cases) - len(valid),
        "per_voice": {v: counts([c for c in valid if c["voice"] == v]) for v in VOICES},
    }
    out["held_ms"] = p50_max([c["held_ms"] for c in valid if c["held_ms"] is not None])
    if interrupt:
        out["stop_ms"] = p50_max([c["stop_ms"] for c in valid if c["stop_ms"] is not None])
        out["stopped_by"] = {
            name: sum(c["stopped_by"] == name for c in valid)
            for name in ("paused", "speech_started", "cancelled")
        }
        out["cancelled_ms"] = p50_max(
            [c["cancelled_ms"] for c in valid if c["cancelled_ms"] is not None]
        )
        out["new_answer_audio_ms"] = p50_max(
            [c["new_answer_audio_ms"] for c in valid if c["new_answer_audio_ms"] is not None]
        )
    return out


SUMMARIES: dict[str, Callable[[list[dict[str, Any]]], dict[str, Any]]] = {
    "cutoffs": summarize_cutoffs,
    "v2v": summarize_v2v,
    "backchannels": lambda cases: summarize_talk_over(cases, False),
    "interruptions": lambda cases: summarize_talk_over(cases, True),
}


# --- output -------------------------------------------------------------------------------------


def show_case(kind: str, case: dict[str, Any]) -> None:
    voice = case.get("voice", "")
    trouble = case.get("error") or "; ".join(case.get("problems", []))
    tail = f"  [{trouble}]" if trouble else ""
    if "error" in case and kind != "warmup":
        label = case.get("question") or case.get("first") or ""
        print(f"  {voice:6s} {label[:40]:40s} ERROR{tail}", flush=True)
        return
    if kind in ("warmup", "v2v"):
        print(
            f"  {voice:6s} {case['question'][:40]:40s} total {fmt(case.get('total_ms')):>6s} ms"
            f"  heard {case.get('transcript')!r}{tail}",
            flush=True,
        )
    elif kind == "cutoffs":
        verdict = "CUT" if case["cut"] else "ok "
        print(
            f"  {voice:6s} pause {case['pause_s']:.1f}s {verdict} commits {case['commits']}"
            f"  answer {fmt(case['answer_ms']):>6s} ms  WER {case['wer']:.0%}"
            f"{'  verdicts ' + str(case['verdicts']) if case['verdicts'] else ''}"
            f"  heard {case['transcripts']}{tail}",
            flush=True,
        )
    else:
        if not case.get("valid"):
            print(f"  {voice:6s} {case['said']:40s} INVALID: {case.get('why')}{tail}", flush=True)
            return
        flags = ", ".join(
            name
            for name in ("paused", "resumed", "speech_started", "cancelled", "new_response")
            if case[name]
        )
        later = case["transcripts"][1:]  # (a backchannel judged over the answer has none)
        heard = f"  heard {later}" if later else ""
        if kind == "backchannels":
            verdict = "INTERRUPTED" if case["interrupted"] else "played on"
        else:
            verdict = (
                f"stop {fmt(case['stop_ms'])} ms, cancel {fmt(case['cancelled_ms'])} ms"
                if case["stopped"]
                else "FAILED to stop"
            )
        print(
            f"  {voice:6s} {case['said']!r:42s} at {case['playback_at_s']:.1f}s of playback: "
            f"{verdict} ({flags or 'nothing'}){heard}{tail}",
            flush=True,
        )


def stats_row(label: str, stats: dict[str, Any]) -> str:
    return f"  {label:44s} {fmt(stats['p50']):>7s} {fmt(stats['max']):>7s} {fmt(stats['mean']):>7s}"


def print_result(result: dict[str, Any]) -> None:
    print("\n=== conversation feel (issue 22) ===")
    print(
        f"server ready in {result['server_start_s']} s; speech made in {result['speech_made_s']} s;"
        f" load average at start {result['load_average_start']} ({result['cpus']} cores), "
        f"at end {result['load_average_end']}"
    )
    fields = result["turn_fields"]
    audio = result.get("input_audio") or {}
    shown = {
        k: audio.get(k)
        for k in ("turn_mode", "turn_detection", "eagerness", "silence_ms", "barge_in_ms")
        if k in audio
    }
    print(f"turn settings the server reported: {shown}")
    if fields["wanted"]:
        print(
            f"asked for: {fields['wanted']}"
            + (f"  NOTE: {fields['note']}" if fields["note"] else "")
        )
    parts = result["parts"]
    if "cutoffs" in parts:
        s = parts["cutoffs"]["summary"]
        m = s["main"]
        print("\ncut-offs (unfinished sentence, pause, its end)")
        print(
            f"  CUT, pauses 0.7-1.2 s: {m['cut']}/{m['total']}"
            + (f" ({m['failed_cases']} cases failed)" if m["failed_cases"] else "")
        )
        for voice, c in s["main_per_voice"].items():
            print(f"    {voice:6s} {c['cut']}/{c['total']}")
        for pause, c in s["trend"].items():
            print(f"  CUT, pause {pause} s (trend): {c['cut']}/{c['total']}")
        a = s["answer_ms"]
        print(
            f"  not cut: end of the second part -> first audio.chunk p50 {fmt(a['p50'])} ms, "
            f"max {fmt(a['max'])} ms; transcript WER over the whole thought, mean "
            + (f"{s['wer_mean']:.1%}" if s["wer_mean"] is not None else "-")
        )
    if "v2v" in parts:
        s = parts["v2v"]["summary"]
        print(
            f"\nvoice to voice: {s['answered']}/{s['total']} answered (ms from the end of speech;"
            " measured at the client's receipt)"
        )
        print(f"  {'':44s} {'p50':>7s} {'max':>7s} {'mean':>7s}")
        for key, kind in V2V_MARKS:
            label = "-> first audio.chunk (total)" if key == "total_ms" else f"-> {kind}"
            print(stats_row(label, s[key]))
        for voice, stats in s["per_voice_total_ms"].items():
            print(stats_row(f"  total, {voice}", stats))
        wer = ", ".join(
            f"{voice} {value:.1%}" if value is not None else f"{voice} -"
            for voice, value in s["wer_mean"].items()
        )
        print(f"  transcript WER, mean per question: {wer}")
    if "backchannels" in parts:
        s = parts["backchannels"]["summary"]
        print(
            f"\nbackchannels over a playing answer ({s['trials']} trials"
            + (f", {s['invalid']} invalid" if s["invalid"] else "")
            + ")"
        )
        print(
            f"  INTERRUPTED {s['interrupted']}/{s['trials']}   paused {s['paused']} "
            f"(resumed {s['resumed']})   speech_started (client stops) {s['speech_started']}   "
            f"cancelled {s['cancelled']}   new response {s['new_response']}"
        )
        held = s["held_ms"]
        print(
            f"  playback held (paused -> resumed): p50 {fmt(held['p50'])} ms, "
            f"max {fmt(held['max'])} ms"
        )
        for voice, c in s["per_voice"].items():
            print(
                f"    {voice:6s} interrupted {c['interrupted']}/{c['trials']}, paused "
                f"{c['paused']} (resumed {c['resumed']}), speech_started {c['speech_started']}"
            )
    if "interruptions" in parts:
        s = parts["interruptions"]["summary"]
        print(
            f"\nreal interruptions ({s['trials']} trials"
            + (f", {s['invalid']} invalid" if s["invalid"] else "")
            + ")"
        )
        print(
            f"  failed to stop the answer: {s['failed']}/{s['trials']}   "
            f"paused {s['paused']} (resumed before the stop {s['resumed']})   "
            f"speech_started {s['speech_started']}   "
            f"cancelled {s['cancelled']}"
        )
        print(
            f"  {'ms from the onset of the interrupting speech':44s} {'p50':>7s} {'max':>7s} "
            f"{'mean':>7s}"
        )
        print(stats_row("(a) the answer's audio stops at the client", s["stop_ms"]))
        print(f"      (first stop signal: {s['stopped_by']})")
        print(stats_row("(b) its response.done cancelled", s["cancelled_ms"]))
        print(stats_row("end of interruption -> new answer's audio", s["new_answer_audio_ms"]))
        for voice, c in s["per_voice"].items():
            print(f"    {voice:6s} failed {c['failed']}/{c['trials']}")
    print(
        f"\ntook {result['elapsed_s']} s"
        + "".join(f"; {p} {v['elapsed_s']} s" for p, v in parts.items())
    )


def part_list(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown}; choose from {PARTS}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", type=part_list, default=list(PARTS))
    parser.add_argument("--turn-detection", choices=("semantic", "silence"))
    parser.add_argument("--eagerness", choices=("low", "medium", "high"))
    parser.add_argument(
        "--silence-ms",
        type=int,
        choices=range(200, 3001),
        metavar="200-3000",
        help="session.update silence_ms",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few cases of each part: a smoke run"
    )
    parser.add_argument("--case-timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    started = time.perf_counter()
    load = load_average()
    if not args.json:
        print(
            f"conversation feel: load average at start {load} ({os.cpu_count()} cores)", flush=True
        )
    result = asyncio.run(run(args))
    result = {
        "load_average_start": load,
        "load_average_end": load_average(),
        "cpus": os.cpu_count(),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "quick": args.quick,
        **result,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result)


if __name__ == "__main__":
    main()

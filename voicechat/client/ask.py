"""`voicechat ask`: one prompt, the answer's text to stdout, its audio to a WAV file or speakers.

The prompt is text, or speech: a WAV file streamed as `input_audio.append` frames and committed
(docs/protocol.md, "Speech input"); the server transcribes it and answers the transcript.

Exit codes (docs/cli.md): 0 the answer completed; 1 it failed or was cancelled (or no speech
was heard, or it had nothing to say aloud); 2 usage error; 3 the server cannot be reached or
went away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from voicechat.audio.player import AudioPlayer
from voicechat.audio.wav import (
    SPEECH_INPUT_RATE,
    WavError,
    decode_wav,
    encode_wav,
    read_wav,
    resample,
    speech_input_pcm,
)
from voicechat.client.connection import ChatConnection, ConnectionLost, ServerUnavailable
from voicechat.settings import (
    EXIT_ANSWER_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    InputAudioSettings,
)

# Sending a recording "as fast as allowed": the server takes a burst of audio ahead of real time,
# then at most `speed` times real time on average (docs/protocol.md, limits). The client stays
# under both with a margin, so no frame is ever refused.
DEFAULT_BURST_S = InputAudioSettings.burst_s  # for a server that does not say its own
DEFAULT_SPEED = InputAudioSettings.speed
BURST_MARGIN_S = 1.0  # send up to burst - 1 s ahead at once (4 s of the default 5 s)
SPEED_MARGIN = 0.95  # then at 1.9x real time for the default 2x
FAST_FRAME_MS = 100
REALTIME_FRAME_MS = 20  # --realtime: what a microphone sends
# A recording is one turn: pauses in it shorter than this do not end it (the protocol's maximum).
FILE_SILENCE_MS = 3000
# response.done's `truncated`, said on stderr: the text printed while it streamed may go on
# past what was spoken (docs/protocol.md, "response.done").
TRUNCATED_NOTES = {
    "repetition": "the answer began repeating itself; it was cut after its last whole sentence",
    "max_speech": "the answer reached the spoken length limit; it ends after that sentence",
    "max_tokens": "the answer reached the token limit and was cut short",
    "max_audio": "the answer reached the audio limit and was cut short",
}
SILENT_NOTE = "the answer had nothing to say aloud (only emoji, symbols or code)"


class SpeechFileError(Exception):
    """A file that cannot be the spoken question (one line for the user, naming the file)."""


@dataclass(frozen=True)
class SpokenQuestion:
    """A spoken question: PCM16 little-endian mono at 16 kHz, and where it came from."""

    pcm: bytes
    name: str
    realtime: bool = False  # paced at 1x in 20 ms frames, like a microphone

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SPEECH_INPUT_RATE


def load_speech(path: Path, *, realtime: bool = False) -> SpokenQuestion:
    """Read a WAV file (any integer PCM or float, any channels and rate) as speech input."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpeechFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise SpeechFileError(f"{path} is empty, not a WAV file")
    try:
        samples, rate = read_wav(data)
    except WavError as exc:
        raise SpeechFileError(f"cannot use {path} as speech: {exc}") from None
    return SpokenQuestion(speech_input_pcm(samples, rate), str(path), realtime)


class AudioCollector:
    """Joins audio.chunk frames into one PCM stream at the first chunk's sample rate."""

    def __init__(self) -> None:
        self.sample_rate: int | None = None
        self._parts: list[bytes] = []

    def add(self, event: dict[str, Any]) -> None:
        data, rate = decode_wav(base64.b64decode(event["audio"]))
        if self.sample_rate is None:
            self.sample_rate = rate
        elif rate != self.sample_rate:
            data = resample(np.frombuffer(data, "<i2"), rate, self.sample_rate).tobytes()
        self._parts.append(data)

    def clear(self) -> None:
        self.sample_rate = None
        self._parts.clear()

    @property
    def pcm(self) -> bytes:
        return b"".join(self._parts)

    def write(self, path: Path) -> None:
        path.write_bytes(encode_wav(self.pcm, self.sample_rate or 22050))


async def ask(
    text: str | None,
    *,
    server_url: str,
    speech: SpokenQuestion | None = None,
    out: Path | None = None,
    json_lines: bool = False,
    player: AudioPlayer | None = None,
    token: str | None = None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Send one message (`text`, or `speech` instead), stream the answer; return the exit code.

    With a `player`, chunks play as they arrive; the call returns once the last one was heard,
    and with `json_lines` a last `playback` line reports samples played and underruns. With
    `speech`, what the server heard is printed first, on its own line: `> transcript`.
    """
    audio = AudioCollector()
    answer = _Answer(audio, player, json_lines, stdout, stderr)
    try:
        async with ChatConnection(server_url, token=token) as connection:
            if json_lines:
                print(json.dumps(connection.session), file=stdout, flush=True)
            if speech is None:
                assert text is not None, "ask() needs text or speech"
                status = await _ask_by_text(connection, text, answer)
            else:
                status = await _ask_by_voice(connection, speech, answer)
            if status is None:  # an error that ends the exchange, already printed
                return EXIT_ANSWER_FAILED
    except ServerUnavailable as exc:
        print(f"voicechat: {exc}", file=stderr)
        return EXIT_UNREACHABLE
    except ConnectionLost as exc:
        print(f"\nvoicechat: {exc}", file=stderr)
        return EXIT_UNREACHABLE
    finally:
        if out is not None and audio.sample_rate is not None:
            audio.write(out)
        if player is not None:
            answer.end_hold()  # else waiting for it to play out would wait for ever
            player.finish()
    if player is not None:
        await player.wait_drained()
        if json_lines:
            report = {
                "type": "playback",
                "sample_rate": player.sample_rate,
                **player.stats.as_dict(),
            }
            print(json.dumps(report), file=stdout, flush=True)
    if not json_lines:
        print(file=stdout)
    if out is not None and audio.sample_rate is None:
        print("voicechat: the answer had no audio; no WAV written", file=stderr)
    return EXIT_OK if status == "completed" and not answer.silent else EXIT_ANSWER_FAILED


@dataclass
class _Answer:
    """Where an answer's events go: stdout (text or JSON lines), the WAV collector, the player."""

    audio: AudioCollector
    player: AudioPlayer | None
    json_lines: bool
    stdout: TextIO
    stderr: TextIO
    _line_open: bool = False  # answer text printed since the last newline
    _answers: int = 0  # response.created seen
    _playing: str | None = None  # the response whose audio was queued last
    _held: str | None = None  # the response whose playback response.audio.paused holds
    silent: bool = False  # the last answer completed with nothing to say aloud

    def show(self, event: dict[str, Any]) -> None:
        """Print (or collect, or play) one server event; errors are left to the caller."""
        if self.json_lines:
            print(json.dumps(event, ensure_ascii=False), file=self.stdout, flush=True)
        kind = event.get("type")
        if kind == "text.delta":
            if not self.json_lines:
                print(event["text"], end="", file=self.stdout, flush=True)
                self._line_open = True
        elif kind == "audio.chunk":
            self.audio.add(event)
            if self.player is not None:
                self._playing = event.get("response_id")
                self.player.enqueue_wav(base64.b64decode(event["audio"]), event["segment"])
        elif kind == "response.created":
            self._answers += 1
            self.end_hold()  # a held answer that another one follows never plays on
        elif kind == "response.audio.paused":
            # A later sound of the recording over the answer playing: hold it where it is.
            if self.player is not None and event.get("response_id") == self._playing:
                self._held = self._playing
                self.player.pause()
        elif kind == "response.audio.resumed":
            if self.player is not None and self._held and event.get("response_id") == self._held:
                self._held = None
                self.player.resume()  # it was no interruption: play on from where it was held
        elif kind == "response.done":
            if event.get("response_id") == self._held and event.get("status") != "completed":
                self.end_hold()
            self.silent = bool(event.get("silent"))
            if note := TRUNCATED_NOTES.get(str(event.get("truncated"))):
                self.error(note)
            if self.silent:
                self.error(SILENT_NOTE)
        elif kind == "input_audio.speech_started" and self._answers and self.player is not None:
            self._held = None
            self.player.flush()  # a later turn of the recording barges in: stop the last answer
        elif kind == "input_audio.transcript" and not self.json_lines and event["text"].strip():
            start = "\n" if self._line_open else ""
            print(f"{start}> {event['text'].strip()}", file=self.stdout, flush=True)
            self._line_open = False

    def end_hold(self) -> None:
        """Drop a held answer's audio: nothing will resume it (cancelled, or the exchange ended)."""
        if self._held is not None and self.player is not None:
            self._held = None
            self.player.flush()

    def error(self, message: str) -> None:
        start = "\n" if self._line_open else ""
        print(f"{start}voicechat: {message}", file=self.stderr)


async def _ask_by_text(connection: ChatConnection, text: str, answer: _Answer) -> str | None:
    """Send `text`; the answer's final status, or None after an error that ends the exchange."""
    await connection.send_user_message(text)
    async for event in connection.events():
        answer.show(event)
        kind = event.get("type")
        if kind == "error":
            answer.error(f"{event['code']}: {event['message']}")
            if event.get("response_id") is None:
                return None
        elif kind == "response.done":
            return str(event["status"])
    raise AssertionError("unreachable")


async def _ask_by_voice(
    connection: ChatConnection, speech: SpokenQuestion, answer: _Answer
) -> str | None:
    """Stream `speech` and commit it; the status of the answer to what was heard last, or None
    after an error that ends the exchange (no speech heard included)."""
    session = connection.session
    if "stt" not in session:
        answer.error("this server does not take speech input (it is older); ask it in text")
        return None
    if session["stt"] is None:
        answer.error("this server has speech input turned off (serve --stt none)")
        return None
    settings = session.get("input_audio") or {}
    wire = (settings.get("format", "pcm16"), settings.get("sample_rate", SPEECH_INPUT_RATE))
    if wire != ("pcm16", SPEECH_INPUT_RATE):
        answer.error(
            f"this server wants speech as {wire[0]} at {wire[1]} Hz, which ask cannot send"
        )
        return None
    pcm = speech.pcm
    max_turn_ms = settings.get("max_turn_ms")
    if isinstance(max_turn_ms, int) and speech.seconds * 1000 > max_turn_ms:
        pcm = pcm[: max_turn_ms * SPEECH_INPUT_RATE // 1000 * 2]
        answer.error(
            f"{speech.name} is {speech.seconds:.1f} s long; sending its first "
            f"{max_turn_ms / 1000:.1f} s, the longest turn this server takes"
        )
    silence_ms = settings.get("silence_ms")
    if settings.get("turn_mode", "server_vad") == "server_vad" and (
        isinstance(silence_ms, int) and silence_ms < FILE_SILENCE_MS
    ):
        # The recording is one question: a pause in it must not end the turn early.
        await connection.update_session(silence_ms=FILE_SILENCE_MS)
    turns = _Turns()
    sender = asyncio.create_task(_send_speech(connection, pcm, _pace(speech, settings), turns))
    try:
        while True:
            event = await _next_event(connection, sender)
            answer.show(event)
            kind = event.get("type")
            if kind == "error" and event.get("code") == "no_speech":
                pass  # a turn without words; what counts is whether any had words (settled)
            elif kind == "error":
                answer.error(f"{event['code']}: {event['message']}")
                if event.get("response_id") is None:
                    return None
            else:
                turns.update(event)
                if kind == "response.created":
                    answer.audio.clear()  # --out keeps the answer to the question, not a cut one
            if turns.settled():
                if turns.status is None:
                    answer.error(f"no speech heard in {speech.name}")
                    return None
                return turns.status
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionLost):
            await sender


@dataclass
class _Turns:
    """What the server made of the audio sent: its turns, their transcripts and answers.

    Usually one turn: speech_started, committed, transcript, then the answer. But the server's
    VAD may also end a turn inside the recording (a long pause, or trailing silence: the commit
    then finds nothing to end), a turn may hold no words (`no_speech`), and a later turn barges in
    on the answer to an earlier one. So after the commit the client sends `input_audio.clear`,
    which the server handles after all the audio and the commit: its `input_audio.cleared` says
    every turn of the recording has been committed and transcribed. Settled then, once the
    answer to the last words heard is done.
    """

    sent: bool = False  # every frame, the commit and the clear went out
    all_heard: bool = False  # input_audio.cleared came back
    last_heard: str | None = None  # the item of the latest transcript with words
    replies: dict[str, Any] = field(default_factory=dict)  # response_id -> item_id
    status: str | None = None  # response.done's status of the answer to `last_heard`

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "input_audio.transcript" and event["text"].strip():
            self.last_heard, self.status = event["item_id"], None
        elif kind == "input_audio.cleared" and self.sent:
            self.all_heard = True
        elif kind == "response.created":
            self.replies[event["response_id"]] = event.get("in_reply_to")
        elif kind == "response.done" and self.last_heard is not None:
            if self.replies.get(event["response_id"]) == self.last_heard:
                self.status = str(event["status"])

    def settled(self) -> bool:
        return self.all_heard and (self.last_heard is None or self.status is not None)


@dataclass(frozen=True)
class _Pace:
    """Send frame after frame so that audio sent by time t never exceeds ahead_s + speed * t."""

    frame_samples: int
    ahead_s: float
    speed: float


def _pace(speech: SpokenQuestion, settings: dict[str, Any]) -> _Pace:
    """--realtime: 20 ms frames at 1x, each once it "was spoken". Otherwise 100 ms frames, as
    fast as the server's limits allow, with a margin (its figures from session.created's
    `input_audio` when it gives them)."""
    if speech.realtime:
        return _Pace(SPEECH_INPUT_RATE * REALTIME_FRAME_MS // 1000, 0.0, 1.0)
    burst_s = _number(settings, "burst_ms", DEFAULT_BURST_S * 1000) / 1000
    speed = _number(settings, "speed", DEFAULT_SPEED)
    return _Pace(
        SPEECH_INPUT_RATE * FAST_FRAME_MS // 1000,
        max(0.0, burst_s - BURST_MARGIN_S),
        max(0.5, speed * SPEED_MARGIN),
    )


def _number(settings: dict[str, Any], key: str, default: float) -> float:
    value = settings.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else default


async def _send_speech(connection: ChatConnection, pcm: bytes, pace: _Pace, turns: _Turns) -> None:
    """Append `pcm` frame by frame at `pace`, then commit, then clear (see _Turns)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    frame_bytes = 2 * pace.frame_samples
    for offset in range(0, len(pcm), frame_bytes):
        frame = pcm[offset : offset + frame_bytes]
        sent_s = (offset + len(frame)) / 2 / SPEECH_INPUT_RATE  # including this frame
        due = start + max(0.0, sent_s - pace.ahead_s) / pace.speed
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        await connection.append_audio(frame)
    await connection.commit_audio()
    turns.sent = True  # before the clear goes: its answer may come while the send completes
    await connection.clear_audio()


async def _next_event(connection: ChatConnection, sender: asyncio.Task[None]) -> dict[str, Any]:
    """The next server event. A failure of the sender is raised here rather than waited on
    forever (except the connection going away, which the receiver sees too)."""
    if sender.done():
        _raise_failure(sender)
        return await connection.next_event()
    receive = asyncio.ensure_future(connection.next_event())
    try:
        await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
        if not receive.done():  # the sender ended first
            _raise_failure(sender)
        return await receive
    finally:
        receive.cancel()  # only has an effect when an exception leaves early


def _raise_failure(sender: asyncio.Task[None]) -> None:
    if sender.cancelled():
        return
    failure = sender.exception()
    if failure is not None and not isinstance(failure, ConnectionLost):
        raise failure

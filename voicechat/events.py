"""What a conversation says to its client, before any wire format.

The session core (voicechat/session.py) and the parts it runs (the answer pipeline, the speech
listener) produce these events; each wire protocol's adapter (voicechat/protocols/) encodes them:
protocol v1 as JSON frames with Base64 WAV, the OpenAI Realtime API as its own events with raw
PCM. Nothing here knows a field name of either protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voicechat.tts.base import Pcm


@dataclass(frozen=True)
class ResponseOptions:
    """How one answer is made, as the client asked for it (Realtime's response.create)."""

    speak: bool = True  # False: text only, no TTS at all
    instructions: str | None = None  # a system prompt for this answer only
    metadata: dict[str, Any] | None = None  # echoed back, never read


@dataclass(frozen=True)
class ResponseStarted:
    response_id: str
    in_reply_to: str | None  # the user's message or spoken turn it answers, if any
    options: ResponseOptions = field(default_factory=ResponseOptions)


@dataclass(frozen=True)
class TextDelta:
    """LLM text exactly as generated (consecutive deltas may be merged)."""

    response_id: str
    text: str


@dataclass(frozen=True)
class AudioOut:
    """A piece of an answer's audio; `text` is its speech unit's words on the unit's first piece."""

    response_id: str
    seq: int  # 0, 1, 2, ... per answer, no gaps
    segment: int  # the speech unit's index
    text: str
    pcm: Pcm


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str  # completed, cancelled, failed
    text: str
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. truncated: "max_audio"
    interrupted: bool = False  # cancelled because the user spoke over it


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    response_id: str | None = None
    item_id: str | None = None  # the spoken turn it concerns (a failed transcription)


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class EndOfTurn:
    """The semantic verdict on a pause in the user's speech (None: could not judge)."""

    item_id: str
    audio_ms: int  # where the pause began
    complete: bool | None
    wait_ms: int  # the silence, from the pause's start, that now ends the turn


@dataclass(frozen=True)
class PlaybackPaused:
    """Someone may be talking over the answer: the client holds its playback where it is."""

    response_id: str


@dataclass(frozen=True)
class PlaybackResumed:
    """It was not an interruption (a backchannel, a noise, the answer's echo): play on."""

    response_id: str


@dataclass(frozen=True)
class AudioCommitted:
    item_id: str
    audio_ms: int
    truncated: bool


@dataclass(frozen=True)
class Transcript:
    item_id: str
    text: str
    language: str | None
    stt_ms: int
    audio_ms: int = 0


@dataclass(frozen=True)
class AudioCleared:
    pass


@dataclass(frozen=True)
class SessionUpdated:
    input_audio: dict[str, Any]


@dataclass(frozen=True)
class ResponseTruncated:
    response_id: str
    audio_end_ms: int
    text: str  # what the user heard: the answer's stored turn from now on


@dataclass(frozen=True)
class SessionResumed:
    session_id: str
    messages: int


Event = (
    ResponseStarted
    | TextDelta
    | AudioOut
    | ResponseDone
    | Error
    | SpeechStarted
    | SpeechStopped
    | AudioCommitted
    | Transcript
    | AudioCleared
    | SessionUpdated
    | ResponseTruncated
    | SessionResumed
)

"""Wire protocol v1: parse and validate client frames, build server frames.

Pure and synchronous: no sockets here, so every rule of the protocol is tested without a server.
See docs/protocol.md for the message table.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

PROTOCOL = "voicechat.v1"
CHAT_PATH = "/v1/chat/stream"
HEALTH_PATH = "/healthz"

# Error codes sent in `error` frames.
BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
UNKNOWN_TYPE = "unknown_type"
TOO_LARGE = "too_large"
TTS_FAILED = "tts_failed"
LLM_FAILED = "llm_failed"
INTERNAL = "internal"
UNKNOWN_SESSION = "unknown_session"
RATE_LIMITED = "rate_limited"
STT_FAILED = "stt_failed"
NO_SPEECH = "no_speech"
SPEECH_INPUT_OFF = "speech_input_off"

# Close codes and what they mean here.
CLOSE_POLICY = 1008  # no or wrong token; a client that stopped reading
CLOSE_TOO_BIG = 1009  # a frame over --max-frame-bytes (sent by the websockets library)
CLOSE_IDLE = 1000  # idle timeout: a normal closure, with the reason "idle timeout"

# A browser cannot set an Authorization header on a WebSocket; it can offer subprotocols.
# `new WebSocket(url, ["voicechat.v1", "voicechat.token." + token])`: the server answers with
# "voicechat.v1", so the token never appears in a URL or in the response.
TOKEN_SUBPROTOCOL_PREFIX = "voicechat.token."

MAX_ID_CHARS = 200

# A lone UTF-16 surrogate (U+D800 to U+DFFF) is what a JSON escape such as "\ud800" decodes to in
# Python; UTF-8 cannot encode it, so no frame carrying one could ever be sent. Paired escapes
# ("\ud83d\ude00") decode to one character and are fine.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT_CHARACTER = "\ufffd"


def has_lone_surrogate(text: str) -> bool:
    return _LONE_SURROGATE.search(text) is not None


def without_lone_surrogates(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, so it can be encoded as UTF-8."""
    if text.isascii():  # constant time in CPython: most frames are ASCII
        return text
    return _LONE_SURROGATE.sub(REPLACEMENT_CHARACTER, text)


class ProtocolError(Exception):
    """A client frame that cannot be accepted; `code` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class UserMessage:
    text: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class CancelResponse:
    pass


@dataclass(frozen=True, slots=True)
class ResumeSession:
    session_id: str


@dataclass(frozen=True, slots=True)
class AppendAudio:
    pcm16: bytes  # little-endian, mono, 16 kHz


@dataclass(frozen=True, slots=True)
class CommitAudio:
    pass


@dataclass(frozen=True, slots=True)
class ClearAudio:
    pass


@dataclass(frozen=True, slots=True)
class UpdateSession:
    fields: dict[str, Any]  # only the fields given, each validated


@dataclass(frozen=True, slots=True)
class TruncateResponse:
    response_id: str
    audio_end_ms: int


ClientMessage = (
    UserMessage
    | CancelResponse
    | ResumeSession
    | AppendAudio
    | CommitAudio
    | ClearAudio
    | UpdateSession
    | TruncateResponse
)

INPUT_RATE = 16000
MAX_APPEND_SAMPLES = INPUT_RATE  # one input_audio.append carries at most 1 s
_MAX_APPEND_BASE64 = 4 * -(-MAX_APPEND_SAMPLES * 2 // 3)
TURN_MODES = ("server_vad", "push_to_talk")
TURN_DETECTIONS = ("semantic", "silence")  # server_vad: what ends a turn
EAGERNESS = ("low", "medium", "high")  # semantic: how soon
# session.update: field -> (type, lowest, highest) for numbers
_SESSION_INTS = {"silence_ms": (200, 3000), "barge_in_ms": (0, 5000)}
MAX_LANGUAGE_CHARS = 16


def _append_audio(data: dict[str, Any]) -> AppendAudio:
    audio = data.get("audio")
    if not isinstance(audio, str) or not audio:
        raise ProtocolError(BAD_MESSAGE, "input_audio.append needs 'audio': Base64 PCM16")
    if len(audio) > _MAX_APPEND_BASE64:
        raise ProtocolError(
            TOO_LARGE, f"one input_audio.append carries at most {MAX_APPEND_SAMPLES} samples (1 s)"
        )
    try:
        pcm = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(BAD_MESSAGE, "'audio' is not valid Base64") from None
    if len(pcm) % 2:
        raise ProtocolError(
            BAD_MESSAGE, f"'audio' holds {len(pcm)} bytes: PCM16 needs an even number"
        )
    if not pcm:
        raise ProtocolError(BAD_MESSAGE, "'audio' is empty")
    return AppendAudio(pcm)


def _session_update(data: dict[str, Any]) -> UpdateSession:
    fields: dict[str, Any] = {}
    if "turn_mode" in data:
        if data["turn_mode"] not in TURN_MODES:
            raise ProtocolError(BAD_MESSAGE, f"'turn_mode' must be one of {', '.join(TURN_MODES)}")
        fields["turn_mode"] = data["turn_mode"]
    for name, choices in (("turn_detection", TURN_DETECTIONS), ("eagerness", EAGERNESS)):
        if name in data:
            if data[name] not in choices:
                raise ProtocolError(BAD_MESSAGE, f"'{name}' must be one of {', '.join(choices)}")
            fields[name] = data[name]
    for name, (lowest, highest) in _SESSION_INTS.items():
        if name in data:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError(BAD_MESSAGE, f"'{name}' must be an integer")
            if not lowest <= value <= highest:
                raise ProtocolError(
                    BAD_MESSAGE, f"'{name}' must be {lowest} to {highest}, not {value}"
                )
            fields[name] = value
    if "echo_guard" in data:
        if not isinstance(data["echo_guard"], bool):
            raise ProtocolError(BAD_MESSAGE, "'echo_guard' must be true or false")
        fields["echo_guard"] = data["echo_guard"]
    if "language" in data:
        language = data["language"]
        if language is not None and (
            not isinstance(language, str)
            or not 0 < len(language) <= MAX_LANGUAGE_CHARS
            or not language.replace("-", "").isalpha()
            or not language.isascii()
        ):
            raise ProtocolError(BAD_MESSAGE, "'language' must be null or a code such as \"en\"")
        fields["language"] = language
    return UpdateSession(fields)


def _truncate_response(data: dict[str, Any]) -> TruncateResponse:
    response_id = data.get("response_id")
    if not isinstance(response_id, str) or not 0 < len(response_id) <= MAX_ID_CHARS:
        raise ProtocolError(BAD_MESSAGE, "response.truncate needs 'response_id'")
    end = data.get("audio_end_ms")
    if isinstance(end, bool) or not isinstance(end, int) or end < 0:
        raise ProtocolError(BAD_MESSAGE, "response.truncate needs 'audio_end_ms', an integer >= 0")
    return TruncateResponse(response_id, end)


def _check_encodable(field: str, value: str) -> None:
    if has_lone_surrogate(value):
        raise ProtocolError(
            BAD_MESSAGE,
            f"'{field}' holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), "
            "which is not text and cannot be encoded as UTF-8",
        )


def parse_client_message(frame: str | bytes, *, max_text_chars: int) -> ClientMessage:
    """Validate one client frame; raise ProtocolError with the code the client should see."""
    if isinstance(frame, bytes):
        raise ProtocolError(
            BAD_MESSAGE, "binary frames are not part of the protocol; send JSON text"
        )
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_MESSAGE, "a message must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_MESSAGE, "field 'type' (string) is required")
    if kind == "user.message":
        text = data.get("text")
        if not isinstance(text, str):
            raise ProtocolError(BAD_MESSAGE, "user.message needs a string field 'text'")
        if not text.strip():
            raise ProtocolError(BAD_MESSAGE, "user.message 'text' is empty")
        if len(text) > max_text_chars:
            raise ProtocolError(
                TOO_LARGE, f"text has {len(text)} characters; the limit is {max_text_chars}"
            )
        msg_id = data.get("id")
        if msg_id is not None and (not isinstance(msg_id, str) or len(msg_id) > MAX_ID_CHARS):
            raise ProtocolError(
                BAD_MESSAGE, f"'id' must be a string of at most {MAX_ID_CHARS} characters"
            )
        _check_encodable("text", text)
        if msg_id is not None:
            _check_encodable("id", msg_id)  # echoed as in_reply_to
        return UserMessage(text=text, id=msg_id)
    if kind == "response.cancel":
        return CancelResponse()
    if kind == "session.resume":
        session_id = data.get("session_id")
        if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_ID_CHARS:
            raise ProtocolError(
                BAD_MESSAGE, f"session.resume needs 'session_id', 1 to {MAX_ID_CHARS} characters"
            )
        _check_encodable("session_id", session_id)
        return ResumeSession(session_id)
    if kind == "input_audio.append":
        return _append_audio(data)
    if kind == "input_audio.commit":
        return CommitAudio()
    if kind == "input_audio.clear":
        return ClearAudio()
    if kind == "session.update":
        return _session_update(data)
    if kind == "response.truncate":
        return _truncate_response(data)
    raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}")


def encode(message: dict[str, Any]) -> str:
    """One JSON text frame; compact separators keep audio frames small.

    The Base64 audio of an audio.chunk (tens of kilobytes) is spliced in as is: its alphabet needs
    no JSON escaping, and scanning it in json.dumps was the server's largest CPU cost under load.

    Every frame can be encoded as UTF-8: a lone surrogate (a model can produce one; client fields
    holding one are refused by the parser) becomes U+FFFD, so the frame is sent, not the
    connection dropped.
    """
    audio = message.get("audio")
    if isinstance(audio, str) and message.get("type") == "audio.chunk":
        head = json.dumps(
            {key: value for key, value in message.items() if key != "audio"},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return f'{without_lone_surrogates(head)[:-1]},"audio":"{audio}"}}'
    return without_lone_surrogates(json.dumps(message, ensure_ascii=False, separators=(",", ":")))


# --- server -> client frames ---------------------------------------------------------------


def session_created(
    session_id: str,
    llm: str,
    tts: str,
    worker: int | None = None,
    stt: str | None = None,
    input_audio: dict[str, Any] | None = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "session.created",
        "session_id": session_id,
        "protocol": PROTOCOL,
        "llm": llm,
        "tts": tts,
        "stt": stt,
    }
    if input_audio is not None:
        frame["input_audio"] = input_audio
    if worker is not None:  # `serve --workers N`: which process holds this session
        frame["worker"] = worker
    return frame


def session_resumed(session_id: str, messages: int) -> dict[str, Any]:
    return {"type": "session.resumed", "session_id": session_id, "messages": messages}


def response_created(response_id: str, in_reply_to: str | None) -> dict[str, Any]:
    return {"type": "response.created", "response_id": response_id, "in_reply_to": in_reply_to}


def text_delta(response_id: str, text: str) -> dict[str, Any]:
    return {"type": "text.delta", "response_id": response_id, "text": text}


def audio_chunk(
    response_id: str,
    *,
    seq: int,
    segment: int,
    text: str,
    sample_rate: int,
    samples: int,
    audio_b64: str,
) -> dict[str, Any]:
    return {
        "type": "audio.chunk",
        "response_id": response_id,
        "seq": seq,
        "segment": segment,
        "text": text,
        "format": "wav",
        "sample_rate": sample_rate,
        "samples": samples,
        "audio": audio_b64,
    }


def response_done(
    response_id: str, status: str, text: str, metrics: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "response.done",
        "response_id": response_id,
        "status": status,
        "text": text,
        "metrics": metrics,
    }


def error(code: str, message: str, response_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if response_id is not None:
        frame["response_id"] = response_id
    return frame

"""The OpenAI Realtime API (GA event names) over the session core: `WS /v1/realtime`.

A codec and an event mapping, nothing else: the conversation itself (answers, history, speech
input, barge-in, truncation, limits) is voicechat/session.py's. What clients need of the wire and
how strict each is: docs/realtime.md. Audio is PCM16 at 24 kHz by default (or G.711 at 8 kHz),
resampled with soxr to and from the engines' rates (16 kHz in; the voice's rate out).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import soxr
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from voicechat import events, protocol
from voicechat.audio import g711
from voicechat.pipeline import ClientGone
from voicechat.session import Session

log = logging.getLogger(__name__)

PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"  # what browsers offer, with the token as the next one:
TOKEN_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
DEFAULT_MODEL = "voicechat"
PCM_RATE = 24000  # audio/pcm: the only rate the API has
G711_RATE = 8000
FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
MAX_ITEMS = 512  # items remembered for retrieve/delete/truncate (the oldest are forgotten)
# semantic_vad's eagerness as voicechat's silence rule (how long a pause ends the turn).
# semantic_vad: voicechat's end of turn by meaning at that eagerness; the silence is for speech
# the model cannot judge (another language).
EAGERNESS_SILENCE_MS = {"low": 1200, "medium": 800, "auto": 800, "high": 500}
SEMANTIC_EAGERNESS = {"low": "low", "medium": "medium", "auto": "medium", "high": "high"}
# What a client may set without an error, though voicechat does nothing with it.
IGNORED_SESSION_FIELDS = ("tools", "tool_choice", "tracing", "truncation", "include", "prompt")

# Errors the strict clients survive (Pipecat ends its session on any other code).
ACTIVE_RESPONSE = "conversation_already_has_active_response"


def _event_id() -> str:
    return f"event_{uuid.uuid4().hex[:24]}"


class RealtimeError(Exception):
    """A client event that cannot be done: an `error` event; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class _Response:
    """What the mapping remembers of one response while it runs."""

    id: str
    item_id: str
    audio: bool
    metadata: dict[str, Any] | None
    transcript: list[str] = field(default_factory=list)
    resampler: tuple[int, Any] | None = None  # (input rate, soxr.ResampleStream)
    error: dict[str, str] | None = None  # the last error of it (code, message), if it fails


def _decode_pcm(audio: str, fmt: str) -> bytes:
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError("invalid_value", "audio is not Base64", "audio") from None
    if fmt == "audio/pcmu":
        return g711.ulaw_to_pcm16(data)
    if fmt == "audio/pcma":
        return g711.alaw_to_pcm16(data)
    if len(data) % 2:
        raise RealtimeError("invalid_value", "audio/pcm needs whole 16-bit samples", "audio")
    return data


def _encode_pcm(pcm16: bytes, fmt: str) -> bytes:
    if fmt == "audio/pcmu":
        return g711.pcm16_to_ulaw(pcm16)
    if fmt == "audio/pcma":
        return g711.pcm16_to_alaw(pcm16)
    return pcm16


def _rate(fmt: str) -> int:
    return PCM_RATE if fmt == "audio/pcm" else G711_RATE


def _format_of(value: Any, param: str) -> str:
    fmt = value.get("type", "audio/pcm") if isinstance(value, dict) else value
    if fmt not in FORMATS:
        raise RealtimeError("invalid_value", f"{param}: one of {', '.join(FORMATS)}", param)
    if isinstance(value, dict) and fmt == "audio/pcm" and value.get("rate", PCM_RATE) != PCM_RATE:
        raise RealtimeError("invalid_value", f"{param}.rate: only 24000", param)
    return fmt


def _text_of(content: list[Any]) -> str:
    parts = []
    for part in content:
        if isinstance(part, dict):
            parts.append(str(part.get("text") or part.get("transcript") or ""))
    return " ".join(p for p in parts if p)


class RealtimeProtocol:
    """One Realtime connection: client events in, core events out as Realtime events."""

    def __init__(self, core: Session, model: str | None) -> None:
        self.core = core
        self.model = model or DEFAULT_MODEL
        self.voice = "joe"  # any name is accepted; the server's one voice speaks
        self.instructions: str | None = None
        self.modalities = ["audio"]
        self.input_format = "audio/pcm"
        self.output_format = "audio/pcm"
        # Realtime's default is server_vad: silence ends a turn, as its clients expect.
        core.turn_settings = core.turn_settings.updated({"turn_detection": "silence"})
        self.turn_detection: dict[str, Any] | None = {
            "type": "server_vad",
            "silence_duration_ms": core.turn_settings.silence_ms,
            "prefix_padding_ms": 300,
            "threshold": 0.5,
            "create_response": True,
            "interrupt_response": True,
        }
        self.transcription: dict[str, Any] | None = {"model": "whisper", "language": None}
        self._to_16k: tuple[str, Any] | None = None  # (input format, soxr.ResampleStream)
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._responses: dict[str, _Response] = {}
        self._item_response: dict[str, str] = {}  # assistant item id -> response id
        self._pending_options: dict[str, events.ResponseOptions] = {}
        self._spoken_ms: dict[str, int] = {}  # a spoken item's audio length, for its usage

    # --- the session object -----------------------------------------------------------------

    def session(self) -> dict[str, Any]:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_{self.core.id}",
            "model": self.model,
            "output_modalities": list(self.modalities),
            "instructions": self.instructions or "",
            "tools": [],  # voicechat's back ends do not call tools (docs/realtime.md)
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "audio": {
                "input": {
                    "format": self._format_object(self.input_format),
                    "transcription": self.transcription,
                    "noise_reduction": None,
                    "turn_detection": self.turn_detection,
                },
                "output": {
                    "format": self._format_object(self.output_format),
                    "voice": self.voice,
                    "speed": 1.0,
                },
            },
        }

    @staticmethod
    def _format_object(fmt: str) -> dict[str, Any]:
        return {"type": fmt, "rate": PCM_RATE} if fmt == "audio/pcm" else {"type": fmt}

    def hello(self) -> dict[str, Any]:
        return {"type": "session.created", "session": self.session()}

    # --- client events ----------------------------------------------------------------------

    async def receive(self, frame: str | bytes, arrived_at: float) -> None:
        client_event_id, kind = None, "an event"
        try:
            try:
                data = json.loads(frame)
            except (ValueError, UnicodeDecodeError):
                raise RealtimeError("invalid_json", "the event is not JSON") from None
            if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                raise RealtimeError("invalid_event", "an event is an object with a type", "type")
            client_event_id = (
                data.get("event_id") if isinstance(data.get("event_id"), str) else None
            )
            kind = data["type"]
            if kind != "input_audio_buffer.append" and not self.core.take_allowance():
                raise RealtimeError("rate_limit_exceeded", "too many events; dropped")
            handler = self._handlers.get(kind)
            if handler is None:
                raise RealtimeError("invalid_event", f"unknown event type {kind!r}", "type")
            await handler(self, data)
        except RealtimeError as exc:
            await self.core.send_frame(
                self._error(exc.code, exc.message, exc.param, client_event_id)
            )
        except protocol.ProtocolError as exc:  # the core's own checks (sizes, rates)
            await self.core.send_frame(self._error(exc.code, exc.message, None, client_event_id))
        except (ClientGone, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug, or a checkpointer that failed: say so, keep serving
            log.exception("realtime session %s…: %s failed", self.core.log_id, kind)
            error = self._error(protocol.INTERNAL, f"internal error: {exc}", None, client_event_id)
            await self.core.send_frame(error)

    @staticmethod
    def _error(
        code: str, message: str, param: str | None = None, client_event_id: str | None = None
    ) -> dict[str, Any]:
        kind = "server_error" if code in (protocol.INTERNAL,) else "invalid_request_error"
        return {
            "type": "error",
            "error": {
                "type": kind,
                "code": code,
                "message": message,
                "param": param,
                "event_id": client_event_id,
            },
        }

    async def _session_update(self, data: dict[str, Any]) -> None:
        session = data.get("session")
        if not isinstance(session, dict):
            raise RealtimeError("invalid_value", "session.update needs a session object", "session")
        if session.get("type", "realtime") != "realtime":
            raise RealtimeError("invalid_value", "only realtime sessions", "session.type")
        modalities = session.get("output_modalities")
        if modalities is not None:
            if modalities not in (["audio"], ["text"]):
                raise RealtimeError(
                    "invalid_value", 'output_modalities: ["audio"] or ["text"]', "output_modalities"
                )
            self.modalities = list(modalities)
        if "instructions" in session:
            instructions = session["instructions"]
            if instructions is not None and not isinstance(instructions, str):
                raise RealtimeError("invalid_value", "instructions is a string", "instructions")
            self.instructions = instructions or None
            self.core.instructions = self.instructions
        if isinstance(session.get("model"), str):
            self.model = session["model"]
        audio = session.get("audio") or {}
        audio_in = audio.get("input") or {}
        audio_out = audio.get("output") or {}
        if "format" in audio_in:
            self.input_format = _format_of(audio_in["format"], "audio.input.format")
        if "format" in audio_out:
            self.output_format = _format_of(audio_out["format"], "audio.output.format")
        if "voice" in audio_out:
            voice = audio_out["voice"]
            self.voice = voice.get("id", "joe") if isinstance(voice, dict) else str(voice)
        if "transcription" in audio_in:
            self.transcription = audio_in["transcription"]
        fields: dict[str, Any] = {}
        if isinstance(self.transcription, dict) and self.transcription.get("language"):
            fields["language"] = str(self.transcription["language"])
        if "turn_detection" in audio_in:
            fields.update(self._turn_fields(audio_in["turn_detection"]))
        if self.core.server.speech is None:
            # Clients send turn detection unasked (openai-agents always does; an error would end
            # Pipecat's session): without speech input it is reported, not used; appends and
            # commits still get the speech_input_off error.
            fields = {}
        await self.core.update_turns(fields)

    def _turn_fields(self, detection: Any) -> dict[str, Any]:
        """Realtime's turn_detection as voicechat's turn settings (docs/realtime.md)."""
        if detection is None:  # the client commits, and asks for answers itself
            self.turn_detection = None
            self.core.auto_respond = False
            return {"turn_mode": "push_to_talk"}
        if not isinstance(detection, dict) or detection.get("type") not in (
            "server_vad",
            "semantic_vad",
        ):
            raise RealtimeError(
                "invalid_value",
                "turn_detection: server_vad, semantic_vad or null",
                "audio.input.turn_detection",
            )
        kind = detection["type"]
        if kind == "semantic_vad":
            eagerness = detection.get("eagerness") or "auto"
            if eagerness not in EAGERNESS_SILENCE_MS:
                raise RealtimeError("invalid_value", "eagerness: low, medium, high or auto")
            silence_ms = EAGERNESS_SILENCE_MS[eagerness]
            self.turn_detection = {"type": kind, "eagerness": eagerness}
        else:
            silence_ms = int(detection.get("silence_duration_ms") or 500)
            silence_ms = min(max(silence_ms, 200), 3000)
            self.turn_detection = {
                "type": kind,
                "silence_duration_ms": silence_ms,
                "prefix_padding_ms": 300,
                "threshold": 0.5,
            }
        create = detection.get("create_response", True) is not False
        interrupt = detection.get("interrupt_response", True) is not False
        self.turn_detection |= {"create_response": create, "interrupt_response": interrupt}
        self.core.auto_respond = create
        fields: dict[str, Any] = {"turn_mode": "server_vad", "silence_ms": silence_ms}
        if kind == "semantic_vad":  # the end of a turn by meaning (speech/semantic.py)
            fields |= {"turn_detection": "semantic", "eagerness": SEMANTIC_EAGERNESS[eagerness]}
        else:
            fields["turn_detection"] = "silence"
        if not interrupt:
            fields["barge_in_ms"] = 5000  # the longest: speech hardly ever interrupts
        return fields

    async def _append(self, data: dict[str, Any]) -> None:
        audio = data.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("invalid_value", "audio is a Base64 string", "audio")
        pcm = _decode_pcm(audio, self.input_format)
        if self._to_16k is None or self._to_16k[0] != self.input_format:
            rate = _rate(self.input_format)
            self._to_16k = (
                self.input_format,
                soxr.ResampleStream(rate, protocol.INPUT_RATE, 1, dtype="int16"),
            )
        samples = self._to_16k[1].resample_chunk(np.frombuffer(pcm, dtype="<i2"))
        pcm16k = samples.astype("<i2").tobytes()
        step = protocol.MAX_APPEND_SAMPLES * 2  # the core takes at most 1 s at a time
        for start in range(0, len(pcm16k), step):
            await self.core.append_audio(pcm16k[start : start + step])

    async def _commit(self, data: dict[str, Any]) -> None:
        await self.core.commit_audio()

    async def _clear(self, data: dict[str, Any]) -> None:
        await self.core.clear_audio()

    async def _item_create(self, data: dict[str, Any]) -> None:
        item = data.get("item")
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise RealtimeError(
                "invalid_value", "only message items (voicechat calls no tools)", "item.type"
            )
        role = item.get("role")
        content = item.get("content")
        if role not in ("user", "assistant", "system") or not isinstance(content, list):
            raise RealtimeError("invalid_value", "item: role and content", "item")
        item_id = item.get("id") if isinstance(item.get("id"), str) else f"item_{uuid.uuid4().hex}"
        if len(item_id) > protocol.MAX_ID_CHARS:
            raise RealtimeError("invalid_value", "item.id is too long", "item.id")
        audio_parts = [p for p in content if isinstance(p, dict) and p.get("type") == "input_audio"]
        text = _text_of(content)
        stored: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": role,
            "status": "completed",
            "content": [dict(p) for p in content if isinstance(p, dict)],
        }
        for part in stored["content"]:
            part.pop("audio", None)  # never echoed: it can be megabytes
        if role == "user" and audio_parts:
            pcm = b"".join(
                _decode_pcm(str(p.get("audio", "")), self.input_format) for p in audio_parts
            )
            rate = _rate(self.input_format)
            pcm16k = soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, protocol.INPUT_RATE)
            heard = await self.core.transcribe(pcm16k.astype("<i2").tobytes())
            text = " ".join(t for t in (text, heard) if t)
            for part in stored["content"]:
                if part.get("type") == "input_audio":
                    part["transcript"] = heard
        if not text.strip():
            raise RealtimeError("invalid_value", "the item has no text or speech", "item.content")
        if len(text) > self.core.max_text_chars:
            raise RealtimeError(
                "too_large", f"item text over {self.core.max_text_chars} characters"
            )
        message: BaseMessage
        if role == "user":
            message = HumanMessage(text, id=item_id)
        elif role == "assistant":
            message = AIMessage(text, id=item_id)
        else:
            message = SystemMessage(text, id=item_id)
        previous = next(reversed(self._items), None)
        await self.core.add_message(message)
        self._remember(stored)
        await self.core.send_frame(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": stored}
        )
        await self.core.send_frame(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": stored}
        )

    async def _item_retrieve(self, data: dict[str, Any]) -> None:
        item = self._items.get(str(data.get("item_id")))
        if item is None:
            raise RealtimeError("item_not_found", f"no item {data.get('item_id')!r}", "item_id")
        await self.core.send_frame({"type": "conversation.item.retrieved", "item": item})

    async def _item_delete(self, data: dict[str, Any]) -> None:
        item_id = str(data.get("item_id"))
        if self._items.pop(item_id, None) is None:
            raise RealtimeError("item_not_found", f"no item {item_id!r}", "item_id")
        response_id = self._item_response.pop(item_id, None)
        await self.core.forget(item_id, response_id)
        await self.core.send_frame({"type": "conversation.item.deleted", "item_id": item_id})

    async def _item_truncate(self, data: dict[str, Any]) -> None:
        item_id = str(data.get("item_id"))
        audio_end_ms = data.get("audio_end_ms")
        if not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            raise RealtimeError("invalid_value", "audio_end_ms: an integer >= 0", "audio_end_ms")
        response_id = self._item_response.get(item_id)
        if response_id is None:
            raise RealtimeError("item_not_found", f"no assistant audio item {item_id!r}", "item_id")
        heard = await self.core.truncate(response_id, audio_end_ms, cancel_in_flight=True)
        item = self._items.get(item_id)
        if item is not None and heard is not None:
            item["content"] = [{"type": "output_audio", "transcript": heard}]
        await self.core.send_frame(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": int(data.get("content_index") or 0),
                "audio_end_ms": audio_end_ms,
            }
        )

    async def _response_create(self, data: dict[str, Any]) -> None:
        request = data.get("response") or {}
        if not isinstance(request, dict):
            raise RealtimeError("invalid_value", "response is an object", "response")
        if self.core.answering:
            raise RealtimeError(
                ACTIVE_RESPONSE, "a response is in progress; cancel it first", "response"
            )
        modalities = request.get("output_modalities") or self.modalities
        instructions = request.get("instructions")
        metadata = request.get("metadata")
        options = events.ResponseOptions(
            speak="audio" in modalities,
            instructions=instructions if isinstance(instructions, str) else None,
            metadata=metadata if isinstance(metadata, dict) else None,
        )
        await self.core.respond(options)

    async def _response_cancel(self, data: dict[str, Any]) -> None:
        await self.core.cancel()  # nothing in flight: quiet, as clients expect

    async def _ignored(self, data: dict[str, Any]) -> None:
        """Events for WebRTC clients (output_audio_buffer.clear): nothing to do here."""

    _handlers: ClassVar[dict[str, Any]] = {
        "session.update": _session_update,
        "input_audio_buffer.append": _append,
        "input_audio_buffer.commit": _commit,
        "input_audio_buffer.clear": _clear,
        "conversation.item.create": _item_create,
        "conversation.item.retrieve": _item_retrieve,
        "conversation.item.delete": _item_delete,
        "conversation.item.truncate": _item_truncate,
        "response.create": _response_create,
        "response.cancel": _response_cancel,
        "output_audio_buffer.clear": _ignored,
    }

    def _remember(self, item: dict[str, Any]) -> None:
        self._items[item["id"]] = item
        while len(self._items) > MAX_ITEMS:
            old, _ = self._items.popitem(last=False)
            self._item_response.pop(old, None)

    # --- core events -> Realtime events -------------------------------------------------------

    def encode(self, event: events.Event | dict[str, Any]) -> list[str]:
        """The Realtime events of one core event (or an adapter's own frame), each with an
        `event_id`, which the strict clients require."""
        frames = self._map(event)
        for frame in frames:
            frame.setdefault("event_id", _event_id())
        return [protocol.encode(frame) for frame in frames]

    def _map(self, event: events.Event | dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(event, dict):
            return [event]
        match event:
            case events.ResponseStarted():
                return self._response_started(event)
            case events.TextDelta():
                response = self._responses.get(event.response_id)
                if response is None or response.audio:
                    return []  # with audio, the transcript goes with each unit's audio
                response.transcript.append(event.text)
                return [self._part_event("response.output_text.delta", response, delta=event.text)]
            case events.AudioOut():
                return self._audio(event)
            case events.ResponseDone():
                return self._response_done(event)
            case events.Error():
                return self._error_event(event)
            case events.SpeechStarted():
                return [
                    {
                        "type": "input_audio_buffer.speech_started",
                        "item_id": event.item_id,
                        "audio_start_ms": event.audio_start_ms,
                    }
                ]
            case events.SpeechStopped():
                return [
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "item_id": event.item_id,
                        "audio_end_ms": event.audio_end_ms,
                    }
                ]
            case events.AudioCommitted():
                return self._committed(event)
            case events.Transcript():
                return self._transcript(event)
            case events.AudioCleared():
                return [{"type": "input_audio_buffer.cleared"}]
            case events.SessionUpdated():
                return [{"type": "session.updated", "session": self.session()}]
            case _:  # ResponseTruncated, SessionResumed: v1's; Realtime answers its own way.
                # (PlaybackPaused/Resumed, EndOfTurn: Realtime has no such events; a backchannel
                # over the answer simply does not interrupt it.)
                return []

    def _response_object(
        self, response: _Response, status: str, output: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "conversation_id": f"conv_{self.core.thread_id}",
            "output_modalities": ["audio"] if response.audio else ["text"],
            "output": output,
            "metadata": response.metadata,
            "audio": {
                "output": {"format": self._format_object(self.output_format), "voice": self.voice}
            },
            "max_output_tokens": "inf",
        }

    def _assistant_item(self, response: _Response, status: str, text: str | None) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if text is not None:
            kind = "output_audio" if response.audio else "output_text"
            content = [{"type": kind, ("transcript" if response.audio else "text"): text}]
        return {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        }

    def _part_event(self, kind: str, response: _Response, **fields: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "response_id": response.id,
            "item_id": response.item_id,
            "output_index": 0,
            "content_index": 0,
            **fields,
        }

    def _response_started(self, event: events.ResponseStarted) -> list[dict[str, Any]]:
        response = _Response(
            id=event.response_id,
            item_id=f"item_{event.response_id}",
            audio=event.options.speak,
            metadata=event.options.metadata,
        )
        self._responses[response.id] = response
        self._item_response[response.item_id] = response.id
        previous = next(reversed(self._items), None)
        item = self._assistant_item(response, "in_progress", None)
        self._remember(item)
        part = (
            {"type": "audio", "transcript": ""} if response.audio else {"type": "text", "text": ""}
        )
        return [
            {
                "type": "response.created",
                "response": self._response_object(response, "in_progress", []),
            },
            {
                "type": "response.output_item.added",
                "response_id": response.id,
                "output_index": 0,
                "item": item,
            },
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item},
            self._part_event("response.content_part.added", response, part=part),
        ]

    def _audio(self, event: events.AudioOut) -> list[dict[str, Any]]:
        response = self._responses.get(event.response_id)
        if response is None or not response.audio:
            return []
        frames = []
        if event.text:
            delta = (" " if response.transcript else "") + event.text
            response.transcript.append(delta)
            frames.append(
                self._part_event("response.output_audio_transcript.delta", response, delta=delta)
            )
        rate = _rate(self.output_format)
        pcm = event.pcm
        if pcm.sample_rate != rate:
            if response.resampler is None or response.resampler[0] != pcm.sample_rate:
                stream = soxr.ResampleStream(pcm.sample_rate, rate, 1, dtype="int16")
                response.resampler = (pcm.sample_rate, stream)
            samples = response.resampler[1].resample_chunk(np.frombuffer(pcm.data, dtype="<i2"))
            data = samples.astype("<i2").tobytes()
        else:
            data = pcm.data
        if data:
            payload = base64.b64encode(_encode_pcm(data, self.output_format)).decode("ascii")
            frames.append(self._part_event("response.output_audio.delta", response, delta=payload))
        return frames

    def _response_done(self, event: events.ResponseDone) -> list[dict[str, Any]]:
        response = self._responses.pop(event.response_id, None)
        if response is None:
            return []
        frames: list[dict[str, Any]] = []
        if response.audio and response.resampler is not None:  # the resampler's last samples
            tail = response.resampler[1].resample_chunk(np.zeros(0, dtype="<i2"), last=True)
            if len(tail):
                payload = base64.b64encode(
                    _encode_pcm(tail.astype("<i2").tobytes(), self.output_format)
                ).decode("ascii")
                frames.append(
                    self._part_event("response.output_audio.delta", response, delta=payload)
                )
        text = "".join(response.transcript)
        if not response.audio:
            text = event.text
        status = {"completed": "completed", "cancelled": "cancelled"}.get(event.status, "failed")
        details: dict[str, Any] = {"type": status}
        if event.extra.get("truncated"):
            status = details["type"] = "incomplete"
            details["reason"] = "max_output_tokens"
        elif status == "cancelled":
            details["reason"] = "turn_detected" if event.interrupted else "client_cancelled"
        elif status == "failed":
            details["error"] = {"type": "server_error", **(response.error or {})}
        item_status = "completed" if status == "completed" else "incomplete"
        item = self._assistant_item(response, item_status, text)
        if response.item_id in self._items:  # (unless deleted meanwhile)
            self._remember(item)
        if response.audio:
            frames += [
                self._part_event("response.output_audio.done", response),
                self._part_event(
                    "response.output_audio_transcript.done", response, transcript=text
                ),
                self._part_event(
                    "response.content_part.done",
                    response,
                    part={"type": "audio", "transcript": text},
                ),
            ]
        else:
            frames += [
                self._part_event("response.output_text.done", response, text=text),
                self._part_event(
                    "response.content_part.done", response, part={"type": "text", "text": text}
                ),
            ]
        body = self._response_object(response, status, [item])
        body["status_details"] = details
        words = len(text.split())
        body["usage"] = {
            "total_tokens": words,
            "input_tokens": 0,
            "output_tokens": words,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": words, "audio_tokens": 0},
        }
        frames += [
            {
                "type": "response.output_item.done",
                "response_id": response.id,
                "output_index": 0,
                "item": item,
            },
            {"type": "conversation.item.done", "item": item},
            {"type": "response.done", "response": body},
        ]
        return frames

    def _error_event(self, event: events.Error) -> list[dict[str, Any]]:
        if event.code == protocol.STT_FAILED and event.item_id is not None:
            return [
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": event.item_id,
                    "content_index": 0,
                    "error": {"type": "server_error", "code": event.code, "message": event.message},
                }
            ]
        if event.response_id is not None:
            # One lost unit (tts_failed) or a failed LLM: the response goes on or ends with
            # status failed (and this in its status_details); an error event would end
            # Pipecat's session.
            response = self._responses.get(event.response_id)
            if response is not None:
                response.error = {"code": event.code, "message": event.message}
            log.info("realtime session %s…: %s: %s", self.core.log_id, event.code, event.message)
            return []
        return [self._error(event.code, event.message)]

    def _committed(self, event: events.AudioCommitted) -> list[dict[str, Any]]:
        previous = next(reversed(self._items), None)
        item = {
            "id": event.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self._remember(item)
        self._spoken_ms[event.item_id] = event.audio_ms
        while len(self._spoken_ms) > MAX_ITEMS:
            self._spoken_ms.pop(next(iter(self._spoken_ms)))
        return [
            {
                "type": "input_audio_buffer.committed",
                "item_id": event.item_id,
                "previous_item_id": previous,
            },
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item},
        ]

    def _transcript(self, event: events.Transcript) -> list[dict[str, Any]]:
        item = self._items.get(event.item_id)
        if item is not None:
            item["content"] = [{"type": "input_audio", "transcript": event.text}]
        seconds = self._spoken_ms.pop(event.item_id, event.audio_ms) / 1000
        frames: list[dict[str, Any]] = [
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": event.item_id,
                "content_index": 0,
                "transcript": event.text,
                "usage": {"type": "duration", "seconds": round(seconds, 3)},
            }
        ]
        if item is not None:
            frames.append({"type": "conversation.item.done", "item": item})
        return frames


def realtime_model(path_query: str) -> str | None:
    """The `model` query parameter of a /v1/realtime request (accepted and reported)."""
    from urllib.parse import parse_qs, urlsplit

    values = parse_qs(urlsplit(path_query).query).get("model")
    return values[0][:200] if values else None

"""Protocol v1 (`WS /v1/chat/stream`, docs/protocol.md) over the session core.

A thin adapter: frames are parsed and validated by voicechat/protocol.py (the pure codec) and
become the core's commands; the core's events become v1 frames (audio as Base64 WAV).
"""

from __future__ import annotations

import base64
from typing import Any

from voicechat import events, protocol
from voicechat.audio.wav import encode_wav
from voicechat.session import Session


class V1Protocol:
    """One protocol v1 connection."""

    def __init__(self, core: Session) -> None:
        self.core = core

    def hello(self) -> dict[str, Any]:
        server = self.core.server
        return protocol.session_created(
            self.core.id,
            server.backend.name,
            server.tts.name,
            worker=server.config.worker_index,
            stt=server.speech.stt.name if server.speech else None,
            input_audio=self.core.input_audio_info(),
        )

    async def receive(self, frame: str | bytes, arrived_at: float) -> None:
        core = self.core
        try:
            message = protocol.parse_client_message(frame, max_text_chars=core.max_text_chars)
        except protocol.ProtocolError as exc:
            message = exc
        if isinstance(message, protocol.AppendAudio):
            await core.append_audio(message.pcm16)  # its own limit: seconds of audio
            return
        if not core.take_allowance():
            limit = core.server.config.messages_per_minute
            await core.emit(
                events.Error(
                    protocol.RATE_LIMITED, f"too many messages (limit {limit} per minute); dropped"
                )
            )
            return
        if isinstance(message, protocol.ProtocolError):
            await core.emit(events.Error(message.code, message.message))
        elif isinstance(message, protocol.CancelResponse):
            await core.cancel()
        elif isinstance(message, protocol.ResumeSession):
            await core.resume(message.session_id)
        elif isinstance(message, protocol.UserMessage):
            await core.typed_turn(message.text, message.id, arrived_at)
        elif isinstance(message, protocol.TruncateResponse):
            await core.truncate(message.response_id, message.audio_end_ms)
        elif isinstance(message, protocol.CommitAudio):
            await core.commit_audio()
        elif isinstance(message, protocol.ClearAudio):
            await core.clear_audio()
        elif isinstance(message, protocol.UpdateSession):
            await core.update_turns(message.fields)

    def encode(self, payload: events.Event | dict[str, Any]) -> list[str]:
        return [protocol.encode(self.frame(payload))]

    @staticmethod
    def frame(payload: events.Event | dict[str, Any]) -> dict[str, Any]:
        """The v1 frame of an event (a dict is already one)."""
        match payload:
            case dict():
                return payload
            case events.ResponseStarted():
                return protocol.response_created(payload.response_id, payload.in_reply_to)
            case events.TextDelta():
                return protocol.text_delta(payload.response_id, payload.text)
            case events.AudioOut():
                pcm = payload.pcm
                wav = encode_wav(pcm.data, pcm.sample_rate)
                return protocol.audio_chunk(
                    payload.response_id,
                    seq=payload.seq,
                    segment=payload.segment,
                    text=payload.text,
                    sample_rate=pcm.sample_rate,
                    samples=pcm.samples,
                    audio_b64=base64.b64encode(wav).decode("ascii"),
                )
            case events.ResponseDone():
                done = protocol.response_done(
                    payload.response_id, payload.status, payload.text, payload.metrics
                )
                done.update(payload.extra)
                return done
            case events.Error():
                error = protocol.error(payload.code, payload.message, payload.response_id)
                if payload.item_id is not None:  # the spoken turn it concerns
                    error["item_id"] = payload.item_id
                return error
            case events.SpeechStarted():
                return {
                    "type": "input_audio.speech_started",
                    "item_id": payload.item_id,
                    "audio_start_ms": payload.audio_start_ms,
                }
            case events.SpeechStopped():
                return {
                    "type": "input_audio.speech_stopped",
                    "item_id": payload.item_id,
                    "audio_end_ms": payload.audio_end_ms,
                }
            case events.AudioCommitted():
                return {
                    "type": "input_audio.committed",
                    "item_id": payload.item_id,
                    "audio_ms": payload.audio_ms,
                    "truncated": payload.truncated,
                }
            case events.Transcript():
                return {
                    "type": "input_audio.transcript",
                    "item_id": payload.item_id,
                    "text": payload.text,
                    "language": payload.language,
                    "stt_ms": payload.stt_ms,
                }
            case events.AudioCleared():
                return {"type": "input_audio.cleared"}
            case events.EndOfTurn():
                return {
                    "type": "input_audio.end_of_turn",
                    "item_id": payload.item_id,
                    "audio_ms": payload.audio_ms,
                    "complete": payload.complete,
                    "wait_ms": payload.wait_ms,
                }
            case events.PlaybackPaused():
                return {"type": "response.audio.paused", "response_id": payload.response_id}
            case events.PlaybackResumed():
                return {"type": "response.audio.resumed", "response_id": payload.response_id}
            case events.SessionUpdated():
                return {"type": "session.updated", "input_audio": payload.input_audio}
            case events.ResponseTruncated():
                return {
                    "type": "response.truncated",
                    "response_id": payload.response_id,
                    "audio_end_ms": payload.audio_end_ms,
                    "text": payload.text,
                }
            case events.SessionResumed():
                return protocol.session_resumed(payload.session_id, payload.messages)
        raise TypeError(f"no v1 frame for {type(payload).__name__}")

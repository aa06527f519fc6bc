"""Back-end settings shared by `serve` and `ask --embedded`: the one place engines are chosen."""

from __future__ import annotations

from dataclasses import dataclass

from voicechat.llm import ChatBackend, build_backend
from voicechat.tts.base import TTSEngine
from voicechat.tts.fish import FishSpeechTTS
from voicechat.tts.tone import ToneTTS

TTS_CHOICES = ("tone", "fish")


class ConfigError(ValueError):
    """Settings that cannot work together; the message is shown to the user as is."""


@dataclass(frozen=True)
class BackendOptions:
    llm: str = "scripted"
    tts: str = "tone"
    system_prompt: str | None = None
    tone_latency_ms: float = 0.0
    tone_rtf: float = 0.0
    fish_url: str = "http://127.0.0.1:8080"
    fish_api_key: str | None = None
    fish_reference_id: str | None = None
    fish_streaming: bool = True
    fish_timeout_s: float = 30.0


def build_tts(options: BackendOptions) -> TTSEngine:
    if options.tts == "tone":
        return ToneTTS(latency_ms=options.tone_latency_ms, rtf=options.tone_rtf)
    if options.tts == "fish":
        return FishSpeechTTS(
            options.fish_url,
            api_key=options.fish_api_key,
            reference_id=options.fish_reference_id,
            streaming=options.fish_streaming,
            timeout_s=options.fish_timeout_s,
        )
    raise ConfigError(f"unknown --tts {options.tts!r}; choose one of: {', '.join(TTS_CHOICES)}")


def build_llm(options: BackendOptions) -> ChatBackend:
    try:
        return build_backend(options.llm, system_prompt=options.system_prompt)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

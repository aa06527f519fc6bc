"""Back-end settings shared by `serve` and `ask --embedded`: the one place engines are chosen."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from voicechat.llm import ChatBackend, LLMConfigError, LLMSettings, build_backend
from voicechat.llm.memory import MemoryConfigError, open_checkpointer
from voicechat.tts.base import TTSEngine
from voicechat.tts.fish import FishSpeechTTS
from voicechat.tts.tone import ToneTTS

log = logging.getLogger(__name__)

TTS_CHOICES = ("piper", "fish", "tone")


class ConfigError(ValueError):
    """Settings that cannot work together; the message is shown to the user as is."""


@dataclass(frozen=True)
class BackendOptions:
    llm: str = "local"
    llm_model_path: Path | None = None
    max_tokens: int = 256
    system_prompt: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    memory: str = "memory"
    tts: str = "piper"
    piper_model: Path | None = None
    speaking_rate: float = 1.0
    tone_latency_ms: float = 0.0
    tone_rtf: float = 0.0
    fish_url: tuple[str, ...] = ("http://127.0.0.1:8080",)
    fish_api_key: str | None = None
    fish_reference_id: str | None = None
    fish_streaming: bool = True
    fish_timeout_s: float = 30.0


def build_tts(options: BackendOptions) -> TTSEngine:
    """The TTS engine; loads models (blocking: call it off the event loop)."""
    if options.tts == "tone":
        return ToneTTS(latency_ms=options.tone_latency_ms, rtf=options.tone_rtf)
    if options.tts == "fish":
        return FishSpeechTTS(
            list(options.fish_url),
            api_key=options.fish_api_key,
            reference_id=options.fish_reference_id,
            streaming=options.fish_streaming,
            timeout_s=options.fish_timeout_s,
        )
    if options.tts == "piper":
        return _embedded_voice(options)
    raise ConfigError(f"unknown --tts {options.tts!r}; choose one of: {', '.join(TTS_CHOICES)}")


def _embedded_voice(options: BackendOptions) -> TTSEngine:
    """Piper for Latin-script text, espeak-ng for Korean, Japanese and Chinese units."""
    from voicechat.tts.espeak import EspeakEngine
    from voicechat.tts.piper import PiperTTS, VoiceNotFound
    from voicechat.tts.router import ScriptRouter

    if options.speaking_rate <= 0:
        raise ConfigError("--speaking-rate must be positive (1.0 is normal speed)")
    try:
        piper = PiperTTS(options.piper_model, length_scale=1 / options.speaking_rate)
    except VoiceNotFound as exc:
        raise ConfigError(str(exc)) from None
    log.info("voice %s loaded in %.2f s", piper.model_path.name, piper.load_seconds)
    try:
        espeak = EspeakEngine()
    except (ImportError, OSError, RuntimeError) as exc:
        log.warning("no espeak-ng voices (%s): Korean/CJK units will be skipped", exc)
        return ScriptRouter(piper, {})
    others = {"hangul": espeak.voice("ko"), "kana": espeak.voice("ja"), "han": espeak.voice("cmn")}
    return ScriptRouter(piper, others)


def llm_settings(options: BackendOptions) -> LLMSettings:
    return LLMSettings(
        spec=options.llm,
        system_prompt=options.system_prompt,
        model_path=options.llm_model_path,
        max_tokens=options.max_tokens,
        openai_base_url=options.openai_base_url,
        openai_model=options.openai_model,
    )


async def open_backends(
    options: BackendOptions, stack: AsyncExitStack
) -> tuple[ChatBackend, TTSEngine]:
    """Open memory, load the LLM and the voice (in worker threads); `stack` releases them."""
    try:
        checkpointer = await open_checkpointer(options.memory, stack)
        backend = await asyncio.to_thread(build_backend, llm_settings(options), checkpointer)
        stack.callback(backend.close)
        tts = await asyncio.to_thread(build_tts, options)
    except (LLMConfigError, MemoryConfigError) as exc:
        raise ConfigError(str(exc)) from None
    return backend, tts

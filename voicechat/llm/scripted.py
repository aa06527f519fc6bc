"""A scripted chat model for tests, benchmarks and demos (not a real LLM).

It replays a JSON script of deltas on an absolute timeline: each item waits `delay_ms` after the
previous item's scheduled time, so sleeps never drift and a benchmark knows the ideal timeline.
An item `{"error": "..."}` raises mid-stream, to exercise failure paths.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import BaseModel


class ScriptedLLMError(RuntimeError):
    """The failure a script asked for with an `error` item."""


class ScriptItem(BaseModel):
    text: str = ""
    delay_ms: float = 0.0
    error: str | None = None


def parse_script(data: Any) -> list[ScriptItem]:
    """Validate a script: a JSON array of strings or {text, delay_ms, error} objects."""
    if not isinstance(data, list) or not data:
        raise ValueError("a script is a non-empty JSON array of strings or objects")
    items = []
    for index, raw in enumerate(data):
        if isinstance(raw, str):
            items.append(ScriptItem(text=raw))
        elif isinstance(raw, dict):
            items.append(ScriptItem.model_validate(raw))
        else:
            raise ValueError(f"script item {index} must be a string or an object")
    return items


def load_script(path: str | Path) -> list[ScriptItem]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read script {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"script {path} is not JSON: {exc}") from None
    return parse_script(data)


class ScriptedChatModel(BaseChatModel):
    """Streams the same scripted answer to every prompt, on the script's timeline."""

    items: list[ScriptItem]

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        for item in self.items:
            if item.error:
                raise ScriptedLLMError(item.error)
        text = "".join(item.text for item in self.items)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        raise NotImplementedError("the scripted model streams asynchronously only")

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for item in self.items:
            due += item.delay_ms / 1000
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if item.error:
                raise ScriptedLLMError(item.error)
            if item.text:
                yield ChatGenerationChunk(message=AIMessageChunk(content=item.text))

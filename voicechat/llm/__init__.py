"""Chat back ends, chosen by the `--llm` spec, all run inside a LangGraph graph.

Specs: `scripted:PATH` (tests, benchmarks, demos; plain `scripted` plays a built-in demo).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph

from voicechat.llm.graph import build_chat_graph
from voicechat.llm.scripted import ScriptedChatModel, load_script

DEMO_SCRIPT = Path(__file__).parent / "scripts" / "demo.json"


class LLMConfigError(ValueError):
    """An --llm spec that cannot be used; the message says why and what would work."""


@dataclass
class ChatBackend:
    """A compiled graph plus the name shown to clients."""

    graph: CompiledStateGraph[Any, Any, Any, Any]
    name: str


def build_backend(spec: str, *, system_prompt: str | None = None) -> ChatBackend:
    """Turn an --llm spec into a graph with in-memory conversation history."""
    kind, _, arg = spec.partition(":")
    checkpointer = InMemorySaver()
    if kind == "scripted":
        arg = arg or str(DEMO_SCRIPT)
        try:
            model = ScriptedChatModel(items=load_script(arg))
        except ValueError as exc:
            raise LLMConfigError(str(exc)) from None
        graph = build_chat_graph(model, checkpointer=checkpointer, system_prompt=system_prompt)
        return ChatBackend(graph=graph, name="scripted")
    raise LLMConfigError(f"unknown --llm {spec!r}; this build supports scripted:PATH")

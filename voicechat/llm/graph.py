"""The LangGraph graph every built-in chat model runs in: one node over MessagesState."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph

from voicechat.llm.context import ContextWindow, fit_to_context

CHAT_NODE = "chat"
SYSTEM_PROMPT_KEY = "system_prompt"  # in a run's config["configurable"]


def build_chat_graph(
    model: BaseChatModel,
    *,
    checkpointer: BaseCheckpointSaver[Any] | None,
    system_prompt: str | None = None,
    context: ContextWindow | None = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile `model` into a one-node graph; its tokens stream through `stream_mode="messages"`.

    With `context`, what is sent to the model is cut to fit its window (llm/context.py); the
    stored history keeps every turn. A run's `configurable.system_prompt` (a Realtime client's
    `instructions`) replaces `system_prompt` for that run."""

    async def chat(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        messages = list(state["messages"])
        prompt = (config.get("configurable") or {}).get(SYSTEM_PROMPT_KEY) or system_prompt
        if prompt:
            messages.insert(0, SystemMessage(prompt))
        if context is not None:
            messages = await fit_to_context(messages, context)
        return {"messages": [await model.ainvoke(messages)]}

    builder = StateGraph(MessagesState)
    builder.add_node(CHAT_NODE, chat)
    builder.add_edge(START, CHAT_NODE)
    return builder.compile(checkpointer=checkpointer)

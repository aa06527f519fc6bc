"""An example LangGraph graph for `voicechat serve --llm graph:examples.memory_bot:graph`.

It needs no model: it answers from the conversation history, so you can hear memory work
(across turns, across reconnects with session.resume, across restarts with --memory sqlite:...).
Replace `reply` with a call to your own chat model: `await model.ainvoke(state["messages"])`
streams its tokens to voicechat by itself.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph


async def reply(state: MessagesState) -> dict[str, Any]:
    said = [m.content for m in state["messages"] if isinstance(m, HumanMessage)]
    if len(said) == 1:
        text = f"Nice to meet you. You said: {said[-1]}. Tell me more."
    else:
        text = f"That makes {len(said)} messages. Before this one you said: {said[-2]}."
    return {"messages": [AIMessage(text)]}


builder = StateGraph(MessagesState)
builder.add_node("reply", reply)
builder.add_edge(START, "reply")

# Uncompiled: voicechat compiles it with its own checkpointer (--memory).
graph = builder

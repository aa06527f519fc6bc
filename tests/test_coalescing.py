"""Text deltas that wait in a session's outbound queue are merged into one text.delta frame:
fewer frames and socket writes when a client is behind or tokens come in a burst. Merging must
never reorder or lose a character, whatever the timing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langgraph.checkpoint.memory import InMemorySaver

from voicechat.client.connection import ChatConnection
from voicechat.llm import ChatBackend
from voicechat.llm.graph import build_chat_graph
from voicechat.llm.scripted import ScriptedChatModel
from voicechat.tts.tone import ToneTTS

from .conftest import WHOLE_ANSWERS, running_server
from .hostile import hostile_text


class EchoTimingModel(ScriptedChatModel):
    """Test double: the user's message is a JSON list of [delta, pause] pairs; it streams each
    delta, first letting the event loop run `pause` times (0: in the same iteration as the last
    one). So one server replays any timing the test generates."""

    async def _astream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any):  # type: ignore[override]
        for delta, pause in json.loads(str(messages[-1].content)):
            for _ in range(pause):
                await asyncio.sleep(0)
            yield ChatGenerationChunk(message=AIMessageChunk(content=delta))


def echo_backend() -> ChatBackend:
    model = EchoTimingModel(items=[])
    return ChatBackend(graph=build_chat_graph(model, checkpointer=InMemorySaver()), name="echo")


async def answer(conn: ChatConnection, plan: list[tuple[str, int]]) -> tuple[list[str], str]:
    await conn.send_user_message(json.dumps(plan))
    deltas: list[str] = []
    async for event in conn.events():
        if event["type"] == "text.delta":
            deltas.append(event["text"])
        elif event["type"] == "response.done":
            return deltas, event["text"]
        elif event["type"] == "error" and event.get("code") != "tts_failed":
            raise AssertionError(f"the server refused the plan: {event}")
    raise AssertionError("no response.done")


# Hostile text makes many speech units; short, low-rate tones keep each example quick.
SHORT_TONES = ToneTTS(sample_rate=8000, ms_per_char=1.0)

deltas_with_timing = st.lists(
    st.tuples(
        st.one_of(
            st.text(min_size=1, max_size=8),
            hostile_text(st.text(max_size=8)).map(lambda s: s[:60]).filter(bool),
        ),
        st.integers(min_value=0, max_value=3),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=st.lists(deltas_with_timing, min_size=1, max_size=3))
def test_any_timing_of_deltas_gives_the_same_text_in_order(plans: list[Any]) -> None:
    async def run() -> None:
        # Random text loops, and may run long: every delta must reach the client here.
        async with running_server(
            echo_backend(), SHORT_TONES, max_text_chars=64_000, pipeline=WHOLE_ANSWERS
        ) as server:
            async with ChatConnection(server.url) as conn:
                for plan in plans:
                    deltas, done_text = await answer(conn, plan)
                    expected = "".join(delta for delta, _ in plan)
                    assert "".join(deltas) == expected == done_text
                    assert 1 <= len(deltas) <= len(plan)

    asyncio.run(run())


async def test_a_burst_of_deltas_is_sent_in_fewer_frames() -> None:
    plan = [(f"w{i} ", 0) for i in range(200)]  # all ready in the same loop iteration
    async with running_server(echo_backend()) as server:
        async with ChatConnection(server.url) as conn:
            deltas, done_text = await answer(conn, plan)
    assert "".join(deltas) == done_text == "".join(d for d, _ in plan)
    assert len(deltas) < len(plan) // 4

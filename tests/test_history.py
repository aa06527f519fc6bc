"""The conversation's history under barge-ins and shared conversations: every user message is
stored exactly once, turns alternate, whatever the timing (real server on loopback)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import Field

from voicechat.client.connection import ChatConnection
from voicechat.llm import ChatBackend
from voicechat.llm.context import MESSAGE_OVERHEAD_TOKENS, ContextWindow, estimate_counts
from voicechat.llm.graph import build_chat_graph
from voicechat.llm.scripted import ScriptedChatModel, parse_script
from voicechat.pipeline import Answer
from voicechat.settings import PipelineSettings
from voicechat.tts.tone import ToneTTS

from .conftest import WAIT_S, collect_answer, read_until, running_server, scripted_backend

# A scripted answer slow enough that later messages arrive while it is still being written.
SLOW_ANSWER = [{"text": "Part one. ", "delay_ms": 5}, {"text": "Part two.", "delay_ms": 5}]
NO_RATE_LIMIT = {"messages_per_minute": 100_000, "message_burst": 1000}


async def history(server: Any, thread_id: str) -> list[Any]:
    state = await server.backend.graph.aget_state({"configurable": {"thread_id": thread_id}})
    return list(state.values.get("messages", []))


def assert_well_formed(messages: list[Any], sent: list[str]) -> None:
    """Each text in `sent` once, in order, each followed by one assistant turn."""
    humans = [m.content for m in messages if isinstance(m, HumanMessage)]
    assert humans == sent, humans
    kinds = [type(m) for m in messages]
    assert kinds == [HumanMessage, AIMessage] * len(sent), kinds


async def send_with_gaps(conn: ChatConnection, texts: list[str], gaps_s: list[float]) -> None:
    """Send `texts` back to back, `gaps_s` apart (the arrival times are the test's input)."""
    for text, gap in zip(texts, gaps_s, strict=True):
        await conn.send_user_message(text)
        if gap:
            await asyncio.sleep(gap)


async def until_last_answer_done(conn: ChatConnection, count: int) -> list[dict[str, Any]]:
    """Read until `count` response.done frames arrived; return them."""
    done: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while len(done) < count:
            event = await conn.next_event()
            if event["type"] == "response.done":
                done.append(event)
    return done


async def test_fifty_back_to_back_barge_ins_keep_every_user_message_once() -> None:
    async with running_server(scripted_backend(SLOW_ANSWER), **NO_RATE_LIMIT) as server:
        async with ChatConnection(server.url) as conn:
            texts = [f"barge {i}" for i in range(50)]
            await send_with_gaps(conn, texts, [0.0] * 50)
            done = await until_last_answer_done(conn, 50)
            assert done[-1]["status"] == "completed"
            assert [d["status"] for d in done[:-1]] == ["cancelled"] * 49
            messages = await history(server, conn.session["session_id"])
    assert_well_formed(messages, texts)
    assert messages[-1].content == "Part one. Part two."


@pytest.mark.parametrize("seed", range(4))
async def test_barge_ins_at_random_times_keep_the_history_well_formed(seed: int) -> None:
    rng = random.Random(seed)
    texts = [f"message {i}" for i in range(15)]
    gaps = [rng.choice([0.0, 0.0, 0.001, 0.004, 0.012, 0.03]) for _ in texts]
    async with running_server(scripted_backend(SLOW_ANSWER), **NO_RATE_LIMIT) as server:
        async with ChatConnection(server.url) as conn:
            await send_with_gaps(conn, texts, gaps)
            done = await until_last_answer_done(conn, len(texts))
            assert done[-1]["status"] == "completed"
            messages = await history(server, conn.session["session_id"])
    assert_well_formed(messages, texts)
    # A cancelled answer keeps what it had said (its spoken units: the start of its text,
    # possibly nothing); a completed one all of it.
    for human, ai, frame in zip(messages[::2], messages[1::2], done, strict=True):
        if frame["status"] == "completed":
            assert ai.content == frame["text"], (human.content, ai.content, frame)
        else:
            assert frame["text"].startswith(ai.content), (human.content, ai.content, frame)


async def test_an_answer_cancelled_at_any_step_of_the_graph_stays_in_the_history() -> None:
    """Cancel the first answer after each number of event-loop steps in turn, as a barge-in
    would, then answer again: the history always alternates. (A cancel after the node returned
    but before LangGraph committed its step once lost the first answer: the snapshot showed it
    as a pending write, so it was not stored, and the next run's input discarded it.)"""
    between_return_and_commit = 0
    for steps in range(80):
        graph = scripted_backend(["Part one. ", "Part two."]).graph
        config = {"configurable": {"thread_id": "t"}}

        def answer(text: str, graph: Any = graph) -> Answer:
            return Answer(
                graph=graph,
                thread_id="t",
                user_text=text,
                response_id=text,
                tts=ToneTTS(),
                emit=_ignore,
                settings=PipelineSettings(),
            )

        first = answer("first")
        task = asyncio.create_task(first.run())
        for _ in range(steps):
            await asyncio.sleep(0)  # let the answer run this many steps, then barge in
        task.cancel()
        (status,) = await asyncio.gather(task, return_exceptions=True)
        if status != "completed":
            snapshot = await graph.aget_state(config)
            # The node's answer is there, but only as a write of a step not yet committed.
            between_return_and_commit += len(snapshot.values.get("messages", [])) == 2 and bool(
                snapshot.tasks
            )
            await first.keep_partial_text()  # what the session does after a cancel
        await answer("second").run()
        messages = (await graph.aget_state(config)).values["messages"]
        assert_well_formed(messages, ["first", "second"])
        # What it said: all of it, or when cut short the units whose audio was sent.
        expected = first.answer_text if status == "completed" else first.history_text
        assert messages[1].content == expected, (steps, messages)
    assert between_return_and_commit  # the loop did reach that moment


async def _ignore(frame: dict[str, Any]) -> None:
    pass


async def test_one_conversation_on_three_sockets_stores_every_turn() -> None:
    async with running_server(scripted_backend(SLOW_ANSWER), **NO_RATE_LIMIT) as server:
        async with ChatConnection(server.url) as first:
            session_id = first.session["session_id"]
            await collect_answer(first, "hello")
            others = [ChatConnection(server.url), ChatConnection(server.url)]
            for conn in others:
                await conn.__aenter__()
                await conn.send({"type": "session.resume", "session_id": session_id})
                await read_until(conn, "session.resumed")
            try:

                async def talk(conn: ChatConnection, name: str) -> list[str]:
                    sent = []
                    for turn in range(5):
                        text = f"{name} {turn}"
                        events = await collect_answer(conn, text)
                        assert events[-1]["status"] == "completed"
                        sent.append(text)
                    return sent

                sent = await asyncio.gather(
                    talk(first, "a"), talk(others[0], "b"), talk(others[1], "c")
                )
            finally:
                for conn in others:
                    await conn.__aexit__(None, None, None)
            messages = await history(server, session_id)
    humans = [m.content for m in messages if isinstance(m, HumanMessage)]
    assert sorted(humans) == sorted(["hello", *(t for turns in sent for t in turns)])
    assert [type(m) for m in messages] == [HumanMessage, AIMessage] * 16
    assert all(m.content == "Part one. Part two." for m in messages[1::2])


class RecordingChatModel(ScriptedChatModel):
    """Test double: the scripted model, which also keeps the messages each call was sent."""

    sent: list[list[Any]] = Field(default_factory=list)

    async def _astream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):  # type: ignore[override]
        self.sent.append(list(messages))
        async for chunk in super()._astream(messages, stop, run_manager, **kw):
            yield chunk


def recording_backend(window: ContextWindow) -> tuple[ChatBackend, RecordingChatModel]:
    model = RecordingChatModel(items=parse_script(["Noted."]), sent=[])
    graph = build_chat_graph(
        model, checkpointer=InMemorySaver(), system_prompt="Be brief.", context=window
    )
    return ChatBackend(graph=graph, name="recording"), model


# 700 tokens, 100 of them for the answer; estimate_tokens counts 3 ASCII characters a token:
# two of the 600-character messages below fit, three do not.
SMALL_WINDOW = ContextWindow(tokens=700, answer_tokens=100, count=estimate_counts)


async def test_a_conversation_longer_than_the_context_sends_the_newest_turns_that_fit() -> None:
    backend, model = recording_backend(SMALL_WINDOW)
    long_texts = [f"{i} " + "word " * 119 for i in range(4)]  # 600 characters: ~200 tokens each
    async with running_server(backend) as server:
        async with ChatConnection(server.url) as conn:
            for text in [*long_texts, "Hi"]:
                events = await collect_answer(conn, text)
                assert events[-1]["status"] == "completed", events
            stored = await history(server, conn.session["session_id"])
    assert_well_formed(stored, [*long_texts, "Hi"])  # the stored history keeps every turn
    sent = model.sent[-1]
    assert isinstance(sent[0], SystemMessage) and sent[0].content == "Be brief."
    assert isinstance(sent[1], HumanMessage) and sent[-1].content == "Hi"
    # The newest turns, up to the message being answered (the last stored turn is its answer).
    assert [m.content for m in sent[1:]] == [m.content for m in stored[-len(sent) : -1]]
    tokens = await estimate_counts([str(m.content) for m in sent])
    assert sum(tokens) + MESSAGE_OVERHEAD_TOKENS * len(sent) <= SMALL_WINDOW.prompt_budget
    assert sent[1].content == long_texts[2]  # ... and the newest that fit were kept


async def test_a_message_longer_than_the_context_fails_clearly_and_the_next_one_is_answered() -> (
    None
):
    backend, _ = recording_backend(SMALL_WINDOW)
    async with running_server(backend) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "word " * 600)  # ~1,000 tokens
            errors = [e for e in events if e["type"] == "error"]
            assert [e["code"] for e in errors] == ["llm_failed"], events
            assert "too long for the model's context window" in errors[0]["message"]
            assert events[-1]["status"] == "failed"
            events = await collect_answer(conn, "Hi")
            assert events[-1]["status"] == "completed", events
            assert events[-1]["text"] == "Noted."

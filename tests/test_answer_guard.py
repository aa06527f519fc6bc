"""What the server speaks of a looping, overlong or unspeakable answer, and what the conversation
keeps of it (real server on loopback; the scripted LLM and the tone voice are test doubles)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import Field

from voicechat.client.ask import SILENT_NOTE, ask
from voicechat.client.connection import ChatConnection
from voicechat.llm import ChatBackend
from voicechat.llm.graph import build_chat_graph
from voicechat.llm.scripted import ScriptedChatModel, parse_script
from voicechat.loop_guard import speech_seconds
from voicechat.segmenter import ends_sentence
from voicechat.settings import EXIT_ANSWER_FAILED

from .conftest import collect_answer, running_server, scripted_backend

SPOKEN = "Here are two ideas. A stir fry is quick."
REAL_MODEL_WAIT_S = 120.0  # 60 tokens of the real model on 2 busy cores take 3-30 s
# Word-sized deltas, as a model streams them: two sentences, then a clause over and over.
LOOPING = [
    word + " "
    for word in "Here are two ideas. A stir fry is quick. You could have it with rice,".split()
    + "but you could have it with a lighter option,".split() * 6
]


class RecordingModel(ScriptedChatModel):
    """Test double: the scripted model, remembering the messages each call was given."""

    calls: list[list[BaseMessage]] = Field(default_factory=list)

    async def _astream(self, messages: Any, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.calls.append(list(messages))
        async for chunk in super()._astream(messages, *args, **kwargs):
            yield chunk


def recording_backend(items: list[Any]) -> tuple[ChatBackend, RecordingModel]:
    model = RecordingModel(items=parse_script(items))
    graph = build_chat_graph(model, checkpointer=InMemorySaver())
    return ChatBackend(graph=graph, name="recording"), model


def spoken_units(events: list[dict[str, Any]]) -> list[str]:
    return [e["text"] for e in events if e["type"] == "audio.chunk" and e["text"]]


async def history(server: Any, conn: ChatConnection) -> list[BaseMessage]:
    config = {"configurable": {"thread_id": conn.session["session_id"]}}
    state = await server.backend.graph.aget_state(config)
    return list(state.values["messages"])


async def test_a_looping_answer_ends_at_its_last_sentence_and_only_that_is_remembered() -> None:
    backend, model = recording_backend(LOOPING)
    async with running_server(backend) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "What should I cook tonight?")
            done = events[-1]
            assert (done["status"], done.get("truncated")) == ("completed", "repetition")
            assert done["text"] == SPOKEN
            assert spoken_units(events) == ["Here are two ideas.", "A stir fry is quick."]
            assert "silent" not in done
            # The follow-up turn's model input holds the spoken part, never the loop.
            await collect_answer(conn, "Tell me more about the first one.")
            stored = await history(server, conn)
    follow_up = model.calls[1]
    assert [type(m) for m in follow_up[-3:]] == [HumanMessage, AIMessage, HumanMessage]
    assert follow_up[-2].content == SPOKEN
    assert stored[1].content == SPOKEN


async def test_without_the_guard_the_loop_is_spoken_and_kept_as_before() -> None:
    backend, _ = recording_backend(LOOPING)
    async with running_server(backend, pipeline={"loop_guard": False}) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "What should I cook tonight?")
            stored = await history(server, conn)
    done = events[-1]
    assert "truncated" not in done
    assert done["text"] == "".join(LOOPING)
    assert stored[1].content == "".join(LOOPING)
    assert "lighter option" in " ".join(spoken_units(events))


async def test_the_speech_budget_ends_an_answer_after_a_whole_sentence() -> None:
    sentences = [
        "The sun rises in the east every single morning. ",
        "Cats like to sleep in warm and sunny places. ",
        "Rivers carry water from the hills down to the sea. ",
        "A good book can keep you company on a rainy day. ",
        "Bread tastes best when it is still warm from the oven. ",
        "Music helps many people focus while they work. ",
    ]
    pipeline = {"max_speech_s": 10.0}
    # The answer ends with the sentence that reaches 10 s (estimated from its words).
    heard = next(n for n in range(1, 7) if speech_seconds("".join(sentences[:n])) >= 10.0)
    assert heard < len(sentences)
    async with running_server(scripted_backend(sentences), pipeline=pipeline) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "Talk for a while.")
            stored = await history(server, conn)
    done = events[-1]
    assert (done["status"], done.get("truncated")) == ("completed", "max_speech")
    assert spoken_units(events) == [sentence.strip() for sentence in sentences[:heard]]
    assert done["text"] == stored[1].content == "".join(sentences[:heard]).strip()


async def test_a_token_limit_never_speaks_the_unfinished_sentence() -> None:
    # The second sentence is long: the segmenter cuts it at a comma, and that part waits for its
    # sentence to end; the limit comes first, so it is never spoken.
    words = (
        "The plan is simple. We start early in the morning and walk along the river, past the "
        "farms and the old fields, to the mill by the bridge, and then we climb the hill"
    ).split(" ")
    script = [word + " " for word in words]
    pipeline = {"max_answer_tokens": len(script) - 2}
    async with running_server(scripted_backend(script), pipeline=pipeline) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "What is the plan?")
            stored = await history(server, conn)
    done = events[-1]
    assert (done["status"], done.get("truncated")) == ("completed", "max_tokens")
    assert spoken_units(events) == ["The plan is simple."]
    assert done["text"] == stored[1].content == "The plan is simple."


async def test_an_answer_with_nothing_to_say_aloud_comes_with_a_notice() -> None:
    only_code = ["```python\n", "def add(a, b):\n", "    return a + b\n", "```\n", "🙂"]
    async with running_server(scripted_backend(only_code)) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "Write an add function.")
        stdout, stderr = io.StringIO(), io.StringIO()
        code = await ask("Again.", server_url=server.url, stdout=stdout, stderr=stderr)
    done = events[-1]
    assert (done["status"], done.get("silent")) == ("completed", True)
    assert done["text"] == "".join(only_code)  # it ran to its end: the text stands
    assert spoken_units(events) == []
    assert code == EXIT_ANSWER_FAILED
    assert "def add(a, b):" in stdout.getvalue()
    assert f"voicechat: {SILENT_NOTE}" in stderr.getvalue()


async def test_an_emoji_flood_is_cut_early_and_is_silent() -> None:
    flood = ["🌸"] * 80
    async with running_server(scripted_backend(flood)) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "Say hello again in one short sentence.")
            stored = await history(server, conn)
    done = events[-1]
    assert (done.get("truncated"), done.get("silent"), done["text"]) == ("repetition", True, "")
    deltas = "".join(e["text"] for e in events if e["type"] == "text.delta")
    assert len(deltas) < 20  # stopped after a dozen, not 80
    assert stored[1].content == ""


async def test_the_embedded_model_cut_by_its_token_limit_ends_on_a_whole_sentence() -> None:
    """The real SmolLM2 with a small --max-tokens: the limit falls mid-sentence (finish_reason
    "length"); what is spoken and kept ends at the last whole sentence."""
    from .test_backends import _until_done, serving

    async with serving(llm="local", tts="tone", stt="none", max_tokens=60) as server:
        async with ChatConnection(server.url) as conn:
            await conn.send_user_message("Tell me a long story about a dragon.")
            async with asyncio.timeout(REAL_MODEL_WAIT_S):
                events = [event async for event in _until_done(conn)]
    done = events[-1]
    assert (done["status"], done.get("truncated")) == ("completed", "max_tokens")
    streamed = "".join(e["text"] for e in events if e["type"] == "text.delta")
    assert not ends_sentence(streamed.strip())  # the model was cut mid-sentence…
    assert done["text"] and ends_sentence(done["text"])  # …what was spoken was not
    assert done["text"] == " ".join(spoken_units(events))


@pytest.mark.parametrize(
    ("script", "text", "silent"), [(LOOPING, SPOKEN, False), (["🌸"] * 80, "", True)]
)
async def test_talk_shows_what_was_spoken_why_it_was_cut_and_a_silent_answer(
    script: list[str], text: str, silent: bool
) -> None:
    from voicechat.tui.app import SILENT_NOTICE, TRUNCATED_LABELS, NoticeLine, VoiceChatApp

    from .test_talk import answers, send, until

    async with running_server(scripted_backend(script)) as server:
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            await send(pilot, "Say hello again in one short sentence.")
            await until(pilot, lambda: bool(answers(app)) and answers(app)[0].status, "the answer")
            answer = answers(app)[0]
            assert answer.text == text  # the streamed loop was replaced by what was spoken
            assert TRUNCATED_LABELS["repetition"] in str(answer.render())
            notices = [str(notice.render()) for notice in app.query(NoticeLine)]
            assert (SILENT_NOTICE in notices) is silent

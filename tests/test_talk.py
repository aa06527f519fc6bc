"""`voicechat talk`: the Textual app driven by Pilot against a real server on loopback.

The app plays through the player's null output (paced like a sound card), so what it highlights
follows real playback time. Waits poll a condition with a deadline; nothing assumes a duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from tests.audio_env import MonitorRecording
from tests.conftest import WAIT_S, gated_backend, running_server, scripted_backend
from voicechat.config import open_backends
from voicechat.server import VoiceChatServer
from voicechat.settings import BackendOptions
from voicechat.tts.tone import ToneTTS
from voicechat.tui.app import AnswerView, NoticeLine, UserLine, VoiceChatApp, _locate

SENTENCES = [
    "The moon is bright tonight.",
    " It lights the whole valley.",
    " Owls are out hunting.",
]


async def until(pilot: Pilot[Any], condition: Callable[[], bool], what: str) -> None:
    """Let the app run until `condition()` holds; fail after WAIT_S."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def answers(app: VoiceChatApp) -> list[AnswerView]:
    return list(app.query(AnswerView))


def status(app: VoiceChatApp) -> str:
    return str(app.query_one("#status", Static).render())


async def send(pilot: Pilot[Any], text: str) -> None:
    await pilot.click("#message")
    await pilot.press(*text, "enter")


async def test_a_typed_message_is_sent_and_the_answer_streams_into_the_transcript() -> None:
    async with running_server(scripted_backend(SENTENCES), ToneTTS()) as server:
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            await send(pilot, "Tell me about the moon")
            await until(pilot, lambda: bool(answers(app)) and answers(app)[0].status, "the answer")

            assert [str(line.render()) for line in app.query(UserLine)] == [
                "you  Tell me about the moon"
            ]
            answer = answers(app)[0]
            assert answer.status == "completed"
            assert answer.text == "".join(SENTENCES)
            assert sorted(answer.units) == [0, 1, 2]
            assert app.query_one("#message", Input).value == ""
            assert "connected" in status(app) and "scripted + tone" in status(app)
            assert "audio" in app.last_metrics and "total" in app.last_metrics


async def test_the_highlight_follows_playback_not_arrival() -> None:
    async with running_server(scripted_backend(SENTENCES), ToneTTS()) as server:
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            await send(pilot, "Tell me about the moon")
            await until(pilot, lambda: bool(answers(app)) and answers(app)[0].status, "the answer")
            answer = answers(app)[0]
            # Every unit has arrived, but the first (about 1.6 s of audio) is still being heard.
            await until(pilot, lambda: answer.heard is not None, "playback to start")
            assert answer.heard == 0
            assert app.player is not None
            first_unit_frames = app.player.stats.samples_played
            await until(pilot, lambda: answer.heard == 1, "the second unit to be heard")
            assert app.player.stats.samples_played > first_unit_frames
            span = _locate(answer.text, answer.units[1])
            assert span is not None and answer.text[span[0] : span[1]] == SENTENCES[1].strip()
            await until(pilot, lambda: answer.heard is None, "the end of playback")
            assert app.player.stats.underruns == 0


async def test_sending_while_an_answer_plays_is_barge_in() -> None:
    gate = asyncio.Event()
    backend = gated_backend([*SENTENCES, " The end."], gate)
    async with running_server(backend, ToneTTS()) as server:
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            await send(pilot, "first question")
            assert app.player is not None
            await until(pilot, lambda: app.player.now_playing is not None, "the first answer audio")
            first = answers(app)[0]
            played_before = app.player.stats.dropped_samples

            await send(pilot, "second question")
            await until(pilot, lambda: len(app.query(UserLine)) == 2, "the second message")
            # The old answer is silenced at once, before the server confirms the cancel.
            playing = app.player.now_playing
            assert playing is None or playing[0] != first.response_id
            assert app.player.stats.dropped_samples > played_before
            await until(pilot, lambda: first.status == "cancelled", "the first answer's done")
            gate.set()
            await until(pilot, lambda: answers(app)[1].status == "completed", "the second answer")
            second = answers(app)[1]
            await until(pilot, lambda: second.heard is not None, "the second answer audio")
            assert first.heard is None
            assert app.player.now_playing == (second.response_id, second.heard)


async def test_escape_stops_speaking_and_cancels_the_answer() -> None:
    gate = asyncio.Event()
    async with running_server(gated_backend([*SENTENCES, " Never."], gate), ToneTTS()) as server:
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            await send(pilot, "talk to me")
            assert app.player is not None
            await until(pilot, lambda: app.player.now_playing is not None, "audio")
            await pilot.press("escape")
            await until(pilot, lambda: answers(app)[0].silenced, "the stop")
            assert app.player.now_playing is None
            answer = answers(app)[0]
            await until(pilot, lambda: answer.status == "cancelled", "the cancelled done")
            assert "Never" not in answer.text
            assert not app.player.queue.busy


def record_highlights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every unit an AnswerView ever highlights goes into its `highlighted` set: polling
    `heard` can miss a short unit's highlight on a loaded machine."""

    def get(view: AnswerView) -> int | None:
        return view.__dict__.get("_heard")

    def put(view: AnswerView, value: int | None) -> None:
        view.__dict__["_heard"] = value
        view.__dict__.setdefault("highlighted", set()).add(value)

    monkeypatch.setattr(AnswerView, "heard", property(get, put), raising=False)


async def test_mute_keeps_time_but_plays_silence(
    paced_audio_device: str,
    paced_audio_monitor: Callable[..., MonitorRecording],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Muted, an answer still plays out in time (the highlight moves, samples are consumed),
    but what reaches the sound card is silence; unmuted, the same answer is heard."""
    record_highlights(monkeypatch)
    sentences = ["Hush now.", " Time goes on."]
    async with running_server(scripted_backend(sentences), ToneTTS()) as server:
        app = VoiceChatApp(server.url, device=paced_audio_device)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            player = app.player
            assert player is not None and not player.is_null and not app.audio_note
            await pilot.press("ctrl+t")
            assert player.muted and "muted" in status(app)

            async def play_answer(number: int) -> set[int | None]:
                """Send a message; wait until its answer has been played out; what was heard."""
                heard: set[int | None] = set()

                def played_out() -> bool:
                    if len(answers(app)) <= number:
                        return False
                    answer = answers(app)[number]
                    heard.update(answer.__dict__.get("highlighted", set()))
                    return answer.status == "completed" and not player.queue.busy

                await send(pilot, f"message {number}")
                await until(pilot, played_out, f"answer {number} to be played out")
                return heard

            with paced_audio_monitor() as muted_sound:
                heard_muted = await play_answer(0)
            muted_samples = player.stats.samples_played
            assert {0, 1} <= heard_muted  # the highlight followed playback while muted
            assert muted_samples > 0  # ... because playback time went on

            await pilot.press("ctrl+t")
            assert not player.muted and "muted" not in status(app)
            with paced_audio_monitor() as loud_sound:
                heard_loud = await play_answer(1)
            assert {0, 1} <= heard_loud
            # Muted, the answer took exactly as long as the same answer heard.
            assert player.stats.samples_played - muted_samples == muted_samples

    assert len(muted_sound.samples()) and len(loud_sound.samples())
    assert np.abs(muted_sound.samples()).max() < 1e-3  # the sink played nothing but silence
    assert np.abs(loud_sound.samples()).max() > 0.05  # the monitor does hear an answer


@asynccontextmanager
async def memory_bot_server(memory: Path, port: int = 0) -> AsyncIterator[VoiceChatServer]:
    """A server (the example memory graph, the tone voice) whose conversations live in SQLite:
    `voicechat serve --llm graph:examples.memory_bot:graph --tts tone --memory sqlite:PATH`."""
    options = BackendOptions(
        llm="graph:examples.memory_bot:graph", tts="tone", memory=f"sqlite:{memory}"
    )
    async with AsyncExitStack() as stack:
        backends = await open_backends(options, stack)
        async with running_server(backends.chat, backends.tts, port=port) as server:
            yield server


def notices(app: VoiceChatApp) -> list[str]:
    return [str(n.render()) for n in app.query(NoticeLine)]


async def say(pilot: Pilot[Any], app: VoiceChatApp, text: str) -> AnswerView:
    """Send `text`; wait until its answer is done; return it."""
    count = len(answers(app))
    await send(pilot, text)
    await until(
        pilot, lambda: len(answers(app)) > count and bool(answers(app)[count].status), "an answer"
    )
    return answers(app)[count]


async def test_a_lost_server_is_shown_and_the_app_reconnects_and_resumes(tmp_path: Path) -> None:
    memory = tmp_path / "chats.db"
    first_server = AsyncExitStack()
    server = await first_server.enter_async_context(memory_bot_server(memory))
    port = server.port
    try:
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            assert app.connection is not None
            first_session = app.connection.session["session_id"]
            assert app.session_id == first_session
            first = await say(pilot, app, "I like tea")
            assert first.text == "Nice to meet you. You said: I like tea. Tell me more."

            await first_server.aclose()  # the server goes away, its memory file closed
            await until(pilot, lambda: "offline" in status(app), "the offline status")
            assert any("Disconnected" in text for text in notices(app))

            async with memory_bot_server(memory, port) as restarted:  # same file, same port
                await until(
                    pilot,
                    lambda: any("conversation continues" in text for text in notices(app)),
                    "the resumed notice",
                )
                assert any("(2 messages kept)" in text for text in notices(app))
                assert not any("new one" in text for text in notices(app))
                assert app.connection is not None
                assert app.connection.session["session_id"] != first_session  # a new session,
                assert app.session_id == first_session  # ... the same conversation
                second = await say(pilot, app, "and cake")
                assert second.status == "completed"
                assert second.text == "That makes 2 messages. Before this one you said: I like tea."
                config = {"configurable": {"thread_id": first_session}}
                state = await restarted.backend.graph.aget_state(config)
                assert len(state.values["messages"]) == 4  # both turns, in one conversation
    finally:
        await first_server.aclose()


async def test_a_server_that_forgot_the_conversation_starts_a_new_one_which_then_resumes(
    tmp_path: Path,
) -> None:
    memory = tmp_path / "chats.db"
    async with running_server(scripted_backend(SENTENCES), ToneTTS()) as server:
        port = server.port
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            first_session = app.session_id
            await server.shutdown()
            await until(pilot, lambda: "offline" in status(app), "the offline status")

            # A server with a fresh memory does not know that conversation: a new one starts.
            async with memory_bot_server(memory, port):
                await until(
                    pilot,
                    lambda: any("new one" in text for text in notices(app)),
                    "the unknown-session notice",
                )
                assert app.connection is not None
                new_session = app.connection.session["session_id"]
                assert first_session is not None and new_session != first_session
                assert app.session_id == new_session  # the app follows the new conversation
                answer = await say(pilot, app, "still there?")
                assert answer.text == "Nice to meet you. You said: still there?. Tell me more."
            await until(pilot, lambda: "offline" in status(app), "the offline status again")

            # Restarted on the same memory: the new conversation is the one that continues.
            async with memory_bot_server(memory, port):
                await until(
                    pilot,
                    lambda: any("conversation continues" in text for text in notices(app)),
                    "the resumed notice",
                )
                assert sum("new one" in text for text in notices(app)) == 1
                assert app.session_id == new_session
                answer = await say(pilot, app, "good")
                assert (
                    answer.text == "That makes 2 messages. Before this one you said: still there?."
                )


async def test_a_server_that_is_down_leaves_a_usable_text_box() -> None:
    app = VoiceChatApp("ws://127.0.0.1:9/v1/chat/stream", device="null")
    async with app.run_test() as pilot:
        await until(pilot, lambda: "offline" in status(app), "the offline status")
        await send(pilot, "hello?")
        assert app.query_one("#message", Input).value == "hello?"  # kept, not lost
        assert not app.query(UserLine)


async def test_events_that_land_while_the_app_shuts_down_are_dropped_quietly() -> None:
    """Textual removes the screen before it stops the app's timers and workers: a playback tick
    or a server event in between must not look for widgets that are gone (a CI failure once)."""
    app = VoiceChatApp("ws://127.0.0.1:9/v1/chat/stream", device="null")
    async with app.run_test() as pilot:
        await until(pilot, lambda: "offline" in status(app), "the offline status")
    assert not app.query("#status")  # the screen is gone, as in the shutdown window
    app.connection_state = "offline, retrying in 0.5 s"  # a changed status to redraw
    app._follow_playback()  # the 20-a-second timer's tick
    app._on_transcript({"type": "transcript", "item_id": "i1", "text": "late words"})
    app.apply_event({"type": "response.created", "response_id": "r1", "in_reply_to": "i1"})
    app._notice("Disconnected")
    assert not app.answers["r1"].is_mounted  # kept in the model, just not drawn


@pytest.mark.parametrize("device", ["no-such-device-xyz"])
async def test_no_audio_device_means_a_text_chat(device: str) -> None:
    async with running_server(scripted_backend(SENTENCES), ToneTTS()) as server:
        app = VoiceChatApp(server.url, device=device)
        async with app.run_test() as pilot:
            notices = [str(n.render()) for n in app.query(NoticeLine)]
            assert any("text only" in text for text in notices)
            assert "text only" in status(app)
            await until(pilot, lambda: app.connection is not None, "the connection")
            await send(pilot, "hi")
            await until(pilot, lambda: bool(answers(app)) and answers(app)[0].status, "an answer")
            assert answers(app)[0].text == "".join(SENTENCES)


class StillConversationApp(VoiceChatApp):
    """Test double: the real app showing a fixed conversation, no server (for the snapshot)."""

    async def _connection_loop(self) -> None:
        self.connection_state = "connected"
        self.backends = "local + piper"
        await self.query_one("#transcript").mount(UserLine("Tell me about the moon."))
        self.pending.append(self._add_answer())
        self.apply_event({"type": "response.created", "response_id": "r1"})
        self.apply_event({"type": "text.delta", "response_id": "r1", "text": "".join(SENTENCES)})
        view = self.answers["r1"]
        view.units = {0: SENTENCES[0], 1: SENTENCES[1].strip()}
        view.heard = 1  # as if the second sentence were being heard
        metrics = {"first_text_ms": 25.0, "first_audio_ms": 432.0, "total_ms": 1790.0}
        self.apply_event(
            {"type": "response.done", "response_id": "r1", "status": "completed",
             "text": "".join(SENTENCES), "metrics": metrics}
        )  # fmt: skip

    def _follow_playback(self) -> None:
        """Keep the fixed highlight: nothing really plays here."""


def test_main_screen_snapshot(snap_compare: Any) -> None:
    async def settle(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: "r1" in pilot.app.answers, "the conversation")

    app = StillConversationApp("ws://127.0.0.1:9/v1/chat/stream", device="null")
    assert snap_compare(app, terminal_size=(100, 24), run_before=settle)

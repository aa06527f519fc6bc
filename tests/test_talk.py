"""`voicechat talk`: the Textual app driven by Pilot against a real server on loopback.

The app plays through the player's null output (paced like a sound card), so what it highlights
follows real playback time. Waits poll a condition with a deadline; nothing assumes a duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from tests.conftest import WAIT_S, gated_backend, running_server, scripted_backend
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


async def test_mute_keeps_time_but_plays_silence() -> None:
    async with running_server(scripted_backend(SENTENCES), ToneTTS()) as server:
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await pilot.press("ctrl+t")
            assert app.player is not None and app.player.muted
            assert "muted" in status(app)
            await pilot.press("ctrl+t")
            assert not app.player.muted


async def test_a_lost_server_is_shown_and_the_app_reconnects_and_resumes() -> None:
    async with running_server(scripted_backend(SENTENCES), ToneTTS()) as server:
        port = server.port
        app = VoiceChatApp(server.url, device="null")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            first_session = app.session_id
            await server.shutdown()
            await until(pilot, lambda: "offline" in status(app), "the offline status")
            notices = [str(n.render()) for n in app.query(NoticeLine)]
            assert any("Disconnected" in text for text in notices)

            async with running_server(scripted_backend(SENTENCES), ToneTTS(), port=port):
                await until(pilot, lambda: app.connection is not None, "the reconnection")
                # A fresh server does not know the old conversation: the app says so, starts anew.
                await until(
                    pilot,
                    lambda: any("new one" in str(n.render()) for n in app.query(NoticeLine)),
                    "the unknown-session notice",
                )
                assert first_session is not None
                await send(pilot, "still there?")
                await until(pilot, lambda: answers(app)[-1].status == "completed", "an answer")


async def test_a_server_that_is_down_leaves_a_usable_text_box() -> None:
    app = VoiceChatApp("ws://127.0.0.1:9/v1/chat/stream", device="null")
    async with app.run_test() as pilot:
        await until(pilot, lambda: "offline" in status(app), "the offline status")
        await send(pilot, "hello?")
        assert app.query_one("#message", Input).value == "hello?"  # kept, not lost
        assert not app.query(UserLine)


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

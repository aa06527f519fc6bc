"""Speech input on a real server on loopback, with the real engines in their worker processes:
Silero VAD and Whisper tiny.en (and, for the echo test, the Piper voice). The LLM is scripted
so each answer is known; the speech is Piper's, made in the test process (speech_fixtures.py).

Synchronisation is by the protocol itself: the listener works through a session's messages in
order, so `input_audio.clear` answered by `input_audio.cleared` proves every earlier frame of
audio was heard and judged.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soxr

from voicechat.audio.wav import decode_wav
from voicechat.client.connection import ChatConnection
from voicechat.settings import InputAudioSettings
from voicechat.speech import SpeechInput
from voicechat.tts.worker_voice import WorkerVoice
from voicechat.workers.embedded import piper_worker

from .conftest import (
    WAIT_S,
    gated_backend,
    read_answer,
    read_until,
    running_server,
    scripted_backend,
)
from .speech_fixtures import pad, spoken_pcm
from .speech_server import VOICE_TURN, send_audio, speech_input

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE = 16000
LISTENER_TASKS = ("listener", "speculation", "transcription", "speech-turn")
# Tests that send a question twice, at once: more than the default 5 s burst of audio.
ROOMY = InputAudioSettings(burst_s=30.0)
ANSWER = [
    "The capital of France is Paris. ",
    "It is a large city on the river Seine, with many museums and old bridges. ",
    "Millions of people visit it every year.",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech() -> AsyncIterator[SpeechInput]:
    async with speech_input() as engines:
        yield engines


async def heard(connection: ChatConnection) -> list[dict[str, Any]]:
    """Every event up to the listener's answer to a clear: all audio sent so far was judged."""
    await connection.clear_audio()
    events = []
    async with asyncio.timeout(WAIT_S):
        async for event in connection.events():
            events.append(event)
            if event["type"] == "input_audio.cleared":
                return events
    raise AssertionError("unreachable")


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


async def test_a_spoken_question_becomes_a_turn_in_order(speech: SpeechInput) -> None:
    question = pad(spoken_pcm("What is the capital of France?"), 1.0, 1.5)
    async with (
        running_server(scripted_backend(["Paris."]), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        assert connection.session["stt"] == "whisper:tiny.en"
        assert connection.session["input_audio"]["sample_rate"] == RATE
        await send_audio(connection, question)
        events = await read_answer(connection)
    names = kinds(events)
    assert names[:5] == VOICE_TURN
    item_id = events[0]["item_id"]
    assert all(event["item_id"] == item_id for event in events[:4])
    assert events[4]["in_reply_to"] == item_id
    # The audio clock: the speech begins after the 1 s of silence we put before it.
    assert 900 <= events[0]["audio_start_ms"] <= 1300
    assert events[1]["audio_end_ms"] > events[0]["audio_start_ms"] + 1000
    assert "capital of france" in events[3]["text"].lower()
    assert events[-1]["status"] == "completed"


async def test_push_to_talk_waits_for_the_commit(speech: SpeechInput) -> None:
    # Two phrases with a long silence between: server VAD would make two turns of them.
    first, second = spoken_pcm("What is the capital of France?"), spoken_pcm("How many legs?")
    audio = np.concatenate([pad(first, 0.2, 1.0), pad(second, 0, 0.8)])
    async with (
        running_server(scripted_backend(["Paris."]), speech=speech, input_audio=ROOMY) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.update_session(turn_mode="push_to_talk")
        updated = await read_until(connection, "session.updated")
        assert updated["input_audio"]["turn_mode"] == "push_to_talk"
        await send_audio(connection, audio)
        await connection.commit_audio()
        events = await read_answer(connection)
    names = kinds(events)
    assert "input_audio.speech_started" not in names
    assert names[:3] == ["input_audio.committed", "input_audio.transcript", "response.created"]
    text = events[1]["text"].lower()  # both sentences, in one turn
    assert "france" in text and "legs" in text and text.index("france") < text.index("legs")


async def test_clear_drops_the_turn_and_a_commit_of_nothing_is_no_speech(speech: SpeechInput):
    async with (
        running_server(scripted_backend(["Paris."]), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.update_session(turn_mode="push_to_talk")
        await read_until(connection, "session.updated")
        await send_audio(connection, spoken_pcm("What is the capital of France?"))
        assert kinds(await heard(connection))[-1] == "input_audio.cleared"
        await connection.commit_audio()
        error = await read_until(connection, "error")
        assert error["code"] == "no_speech"
        # Silence alone, in server VAD mode: no turn, and a commit says so.
        await connection.update_session(turn_mode="server_vad")
        await read_until(connection, "session.updated")
        await send_audio(connection, np.zeros(RATE * 2, np.int16))
        await connection.commit_audio()
        error = await read_until(connection, "error")
        assert error["code"] == "no_speech"
        assert connection.ws.state.name == "OPEN"


@pytest.mark.parametrize(
    ("audio", "code"),
    [
        (base64.b64encode(bytes(2 * RATE + 2)).decode(), "too_large"),  # over 1 s
        (base64.b64encode(bytes(3)).decode(), "bad_message"),  # an odd number of bytes
        ("not base64!", "bad_message"),
        ("", "bad_message"),
    ],
    ids=["over-1-s", "odd-bytes", "not-base64", "empty"],
)
async def test_bad_audio_frames_get_an_error_and_the_session_goes_on(
    speech: SpeechInput, audio: str, code: str
) -> None:
    async with (
        running_server(scripted_backend(["Paris."]), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.send({"type": "input_audio.append", "audio": audio})
        error = await read_until(connection, "error")
        assert error["code"] == code
        events = await read_answer_to(connection, "still there?")
        assert events[-1]["status"] == "completed"


async def read_answer_to(connection: ChatConnection, text: str) -> list[dict[str, Any]]:
    await connection.send_user_message(text)
    return await read_answer(connection)


async def test_audio_faster_than_allowed_is_dropped_with_rate_limited(speech: SpeechInput):
    async with (
        running_server(scripted_backend(["Paris."]), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        burst = int(server.config.input_audio.burst_s)
        for _ in range(burst + 3):  # one second a frame, all at once
            await connection.append_audio(bytes(2 * RATE))
        error = await read_until(connection, "error")
        assert error["code"] == "rate_limited"
        assert kinds(await heard(connection))[-1] == "input_audio.cleared"


async def test_speech_input_off_is_an_error_for_every_audio_message() -> None:
    async with (
        running_server(scripted_backend(["Paris."])) as server,
        ChatConnection(server.url) as connection,
    ):
        assert connection.session["stt"] is None
        for message in (
            {"type": "input_audio.append", "audio": base64.b64encode(bytes(320)).decode()},
            {"type": "input_audio.commit"},
            {"type": "session.update", "turn_mode": "push_to_talk"},
        ):
            await connection.send(message)
            error = await read_until(connection, "error")
            assert error["code"] == "speech_input_off"


async def test_a_client_leaving_mid_utterance_leaves_nothing_behind(speech: SpeechInput):
    question = spoken_pcm("What is the capital of France and how old is it?")
    async with running_server(scripted_backend(["Paris."]), speech=speech) as server:
        async with ChatConnection(server.url) as connection:
            await send_audio(connection, question[: len(question) // 2])
            await read_until(connection, "input_audio.speech_started")
        async with asyncio.timeout(WAIT_S):
            await server.wait_until_idle()
        leftover = [t for t in asyncio.all_tasks() if t.get_name() in LISTENER_TASKS]
        assert leftover == []
        assert speech.vad.worker.health()["in_flight"] == 0
        # The engines still serve the next session.
        async with ChatConnection(server.url) as connection:
            await send_audio(connection, pad(question, 0.5, 1.0))
            events = await read_answer(connection)
            assert (
                "capital of france"
                in next(e["text"] for e in events if e["type"] == "input_audio.transcript").lower()
            )


async def test_speaking_over_an_answer_interrupts_it_and_truncate_keeps_what_was_heard(
    speech: SpeechInput,
) -> None:
    gate = asyncio.Event()
    backend = gated_backend([*ANSWER, " The end."], gate)
    interruption = pad(spoken_pcm("Stop. Tell me about Germany instead."), 0.3, 1.2)
    async with (
        running_server(backend, speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.send_user_message("Tell me about Paris.")
        old = (await read_until(connection, "audio.chunk"))["response_id"]
        await send_audio(connection, interruption)
        events = []
        async with asyncio.timeout(WAIT_S):
            async for event in connection.events():
                events.append(event)
                if event["type"] == "input_audio.transcript":
                    break
        names = kinds(events)
        started = names.index("input_audio.speech_started")
        done = next(i for i, e in enumerate(events) if e["type"] == "response.done")
        assert events[done]["response_id"] == old and events[done]["status"] == "cancelled"
        assert started < done
        assert not [e for e in events[done + 1 :] if e.get("response_id") == old]
        assert "germany" in events[-1]["text"].lower()
        # The client had played 10 ms of the old answer: the history keeps its first unit.
        await connection.truncate_response(old, 10)
        truncated = await read_until(connection, "response.truncated")
        assert truncated["text"] == ANSWER[0].strip()
        gate.set()
        rest = await read_answer(connection)
        assert rest[-1]["status"] == "completed" and rest[-1]["response_id"] != old
        config = {"configurable": {"thread_id": connection.session["session_id"]}}
        state = await server.backend.graph.aget_state(config)
        contents = [message.content for message in state.values["messages"]]
        assert contents[:2] == ["Tell me about Paris.", ANSWER[0].strip()]
        assert "germany" in contents[2].lower()


async def test_truncate_keeps_only_the_units_the_user_heard(speech: SpeechInput) -> None:
    async with (
        running_server(scripted_backend(ANSWER), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        events = await read_answer_to(connection, "Tell me about Paris.")
        response_id = events[-1]["response_id"]
        await connection.truncate_response(response_id, 10)
        truncated = await read_until(connection, "response.truncated")
        assert truncated["text"] == ANSWER[0].strip()
        config = {"configurable": {"thread_id": connection.session["session_id"]}}
        state = await server.backend.graph.aget_state(config)
        assert state.values["messages"][-1].content == ANSWER[0].strip()


async def test_a_short_sound_over_the_answer_does_not_interrupt(speech: SpeechInput) -> None:
    gate = asyncio.Event()
    mm = spoken_pcm("Mm.")[: RATE // 5]  # 200 ms of it
    async with (
        running_server(gated_backend([*ANSWER, " The end."], gate), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        # The duration rule alone (the echo check would also drop a sound with no words).
        await connection.update_session(echo_guard=False)
        await read_until(connection, "session.updated")
        await connection.send_user_message("Tell me about Paris.")
        await read_until(connection, "audio.chunk")
        await send_audio(connection, pad(mm, 0.2, 1.0))
        judged = await heard(connection)
        gate.set()
        rest = await read_answer(connection)
    assert "input_audio.speech_started" not in kinds(judged)
    assert rest[-1]["status"] == "completed"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def piper_voice() -> AsyncIterator[WorkerVoice]:
    from voicechat.tts.piper import default_voice_path

    worker = piper_worker(default_voice_path())
    await worker.start()
    try:
        yield WorkerVoice(worker, "piper")
    finally:
        await worker.aclose()


async def test_the_answers_own_voice_coming_back_does_not_interrupt(
    speech: SpeechInput, piper_voice: WorkerVoice
) -> None:
    """No echo cancellation in a terminal: the microphone hears the speakers. The answer's
    audio, looped back into the microphone, must not stop the answer."""
    gate = asyncio.Event()
    async with (
        running_server(
            gated_backend([*ANSWER, " The end."], gate), piper_voice, speech=speech
        ) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.send_user_message("Tell me about Paris.")
        played: list[np.ndarray] = []
        async with asyncio.timeout(WAIT_S):
            while sum(len(p) for p in played) < 4 * RATE:  # 4 s of the answer's voice
                chunk = await read_until(connection, "audio.chunk")
                pcm, rate = decode_wav(base64.b64decode(chunk["audio"]))
                played.append(soxr.resample(np.frombuffer(pcm, "<i2"), rate, RATE))
        loopback = np.concatenate(played)[: 4 * RATE].astype(np.int16)
        await send_audio(connection, (loopback * 0.7).astype(np.int16))  # the room: quieter
        judged = await heard(connection)
        gate.set()
        rest = await read_answer(connection)
    assert "input_audio.speech_started" not in kinds(judged)
    assert [e["status"] for e in rest if e["type"] == "response.done"] == ["completed"]


async def test_a_recognizer_crash_costs_that_turn_only(speech: SpeechInput) -> None:
    """Whisper dies while a turn is being transcribed: that turn is `stt_failed`; the session
    stays, and once the worker is back the next turn is heard."""
    whisper = speech.stt.worker  # type: ignore[attr-defined]
    question = pad(spoken_pcm("What is the capital of France?"), 0.3, 1.0)
    async with (
        running_server(scripted_backend(["Paris."]), speech=speech, input_audio=ROOMY) as server,
        ChatConnection(server.url) as connection,
    ):
        pid = whisper.pid
        os.kill(pid, signal.SIGSTOP)  # it takes the turn's request and never answers it...
        try:
            await send_audio(connection, question)
            await read_until(connection, "input_audio.committed")
            async with asyncio.timeout(WAIT_S):  # the turn's request reaches the worker's pipe
                # A condition the worker exposes, with no event to wait on.
                while whisper.health()["in_flight"] == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            os.kill(pid, signal.SIGKILL)  # ...then dies with it in flight
        error = await read_until(connection, "error")
        assert error["code"] == "stt_failed"
        await send_audio(connection, question)
        events = await read_answer(connection)
    transcript = next(e for e in events if e["type"] == "input_audio.transcript")
    assert "capital of france" in transcript["text"].lower()
    assert whisper.pid != pid


async def test_a_vad_crash_mid_turn_loses_that_turn_and_listening_goes_on(speech: SpeechInput):
    vad = speech.vad.worker
    question = spoken_pcm("What is the capital of France?")
    async with (
        running_server(scripted_backend(["Paris."]), speech=speech, input_audio=ROOMY) as server,
        ChatConnection(server.url) as connection,
    ):
        await send_audio(connection, question[: len(question) // 2])
        await read_until(connection, "input_audio.speech_started")
        pid = vad.pid
        os.kill(pid, signal.SIGKILL)
        await send_audio(connection, pad(question[len(question) // 2 :], 0, 1.0))
        judged = await heard(connection)
        if "response.created" in kinds(judged):  # the second half, heard as a turn of its own
            await read_answer(connection)
        await send_audio(connection, pad(question, 0.3, 1.0))
        events = await read_answer(connection)
    transcript = next(e for e in events if e["type"] == "input_audio.transcript")
    assert "capital of france" in transcript["text"].lower()
    assert vad.pid != pid


async def test_tiny_audio_frames_cost_at_least_20_ms_each(speech: SpeechInput) -> None:
    """One-sample frames cannot buy thousands of requests a second: each counts as 20 ms, so
    the 5 s burst holds 250 of them."""
    async with (
        running_server(scripted_backend(["Paris."]), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        for _ in range(300):
            await connection.append_audio(bytes(2))
        error = await read_until(connection, "error")
        assert error["code"] == "rate_limited"
        assert "real time" in error["message"]  # the audio rate, not a full queue


async def test_after_a_cancel_a_short_reply_is_a_turn_not_a_sound_over_the_answer(
    speech: SpeechInput,
) -> None:
    """The answer's audio was sent well ahead of playback; once the client cancels it, nothing
    plays, so a short "yes" must not be held to the 500 ms rule for speech over an answer."""
    async with (
        running_server(scripted_backend(ANSWER), speech=speech) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.update_session(barge_in_ms=2000)  # "yes" is far shorter than that
        await read_until(connection, "session.updated")
        await read_answer_to(connection, "Tell me about Paris.")  # seconds of audio, sent at once
        await connection.cancel()
        await send_audio(connection, pad(spoken_pcm("Yes."), 0.3, 1.0))
        assert "input_audio.speech_started" in kinds(await heard(connection))


async def test_push_to_talk_cut_at_the_turn_limit_says_truncated(speech: SpeechInput) -> None:
    short_turns = InputAudioSettings(max_turn_audio_s=2.0)
    async with (
        running_server(
            scripted_backend(["Paris."]), speech=speech, input_audio=short_turns
        ) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.update_session(turn_mode="push_to_talk")
        await read_until(connection, "session.updated")
        await send_audio(connection, pad(spoken_pcm("What is the capital of France?"), 0.2, 0.5))
        committed = await read_until(connection, "input_audio.committed")
        assert committed["truncated"] is True
        assert committed["audio_ms"] <= 2100

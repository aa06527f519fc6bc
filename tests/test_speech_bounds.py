"""Speech input under load and under failure, with the real engines (Silero VAD and Whisper
tiny.en in their worker processes), real audio (Piper's voice, made in the test process) and a
real server on loopback:

- sessions saying short turns faster than Whisper can transcribe them are shed (`stt_busy`),
  the backlog stays bounded, and another session's question waits behind at most one job of
  each of them (the issue's 3 sessions saying "yes" with `silence_ms` 200);
- a stopped Whisper is killed by the watchdog: its turn fails with `stt_failed`, /healthz says
  it is not ready until its successor is, and the next turn is heard;
- a VAD worker that cannot restart: the audio kept stays bounded and the failure is logged
  once, not once per frame.

Determinism comes from real signals, not from timing: Whisper is SIGSTOPped while the turns
pile up, so which turns are shed does not depend on how fast it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from voicechat.client.connection import ChatConnection
from voicechat.server import VoiceChatServer
from voicechat.settings import InputAudioSettings
from voicechat.speech import SpeechInput
from voicechat.speech.scheduler import MAX_TURNS
from voicechat.speech.stt import Transcript, WhisperSTT
from voicechat.speech.vad import SileroVAD
from voicechat.workers.child import STOP_AT_ENV
from voicechat.workers.embedded import vad_worker, whisper_worker

from .conftest import WAIT_S, read_until, running_server, scripted_backend
from .speech_fixtures import pad, spoken_pcm
from .speech_server import VOICE_TURN, send_audio, speech_input
from .test_workers import children_of, process_state, until

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE = 16000
ROOMY = InputAudioSettings(burst_s=30.0)  # whole recordings sent at once
QUESTION = "What is the capital of France?"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech() -> AsyncIterator[SpeechInput]:
    async with speech_input() as engines:
        yield engines


@dataclass
class RecordingSTT:
    """The real Whisper, noting the length (ms) of each transcription as it starts."""

    inner: WhisperSTT
    started: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def concurrency(self) -> int:
        return self.inner.concurrency

    async def transcribe(self, pcm16: bytes, language: str | None) -> Transcript:
        self.started.append(len(pcm16) // 32)
        return await self.inner.transcribe(pcm16, language)

    async def aclose(self) -> None:
        pass


async def events_until(
    connection: ChatConnection, done: Any, into: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Read events into `into` until `done(into)` holds."""
    async with asyncio.timeout(WAIT_S):
        while not done(into):
            into.append(await connection.next_event())
    return into


def of(events: list[dict[str, Any]], kind: str, code: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and (code is None or e.get("code") == code)]


async def healthz(server: VoiceChatServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/healthz", timeout=WAIT_S)
    return dict(response.json())


async def test_turns_said_faster_than_whisper_hears_them_are_shed_fairly(
    speech: SpeechInput,
) -> None:
    whisper = speech.stt.worker  # type: ignore[attr-defined]
    recording = RecordingSTT(speech.stt)  # type: ignore[arg-type]
    engines = SpeechInput(speech.vad, recording, speech.language)
    turns = 6  # each spammer's: "yes", 260 ms of silence; twice what it may have pending
    yes = spoken_pcm("Yes.")
    spam = np.concatenate([np.zeros(RATE // 4, np.int16)] + [pad(yes, 0, 0.26)] * turns)
    spam = pad(spam, 0, 0.3)
    question = pad(spoken_pcm(QUESTION), 0.3, 1.0)
    stall_timeout = whisper.stall_timeout_s
    whisper.stall_timeout_s = 10 * WAIT_S  # stopped on purpose below: not a stuck worker
    pid = whisper.pid
    async with (
        running_server(scripted_backend(["Fine."]), speech=engines, input_audio=ROOMY) as server,
        ChatConnection(server.url) as s1,
        ChatConnection(server.url) as s2,
        ChatConnection(server.url) as s3,
        ChatConnection(server.url) as asker,
    ):
        spammers = [s1, s2, s3]
        for connection in spammers:
            await connection.update_session(silence_ms=200)
            await read_until(connection, "session.updated")
        seen: list[list[dict[str, Any]]] = [[] for _ in spammers]
        os.kill(pid, signal.SIGSTOP)  # nothing is transcribed until SIGCONT: turns pile up
        try:
            await asyncio.gather(*(send_audio(c, spam) for c in spammers))

            def judged(events: list[dict[str, Any]]) -> bool:
                """Every turn committed, and the turns past MAX_TURNS refused at once."""
                committed = len(of(events, "input_audio.committed"))
                return committed == turns and len(of(events, "error")) == turns - MAX_TURNS

            await asyncio.gather(
                *(events_until(c, judged, into) for c, into in zip(spammers, seen, strict=True))
            )
            for events in seen:  # the 4th turn on was refused, the connection stays
                shed = of(events, "error", "stt_busy")
                committed = [e["item_id"] for e in of(events, "input_audio.committed")]
                assert [e["item_id"] for e in shed] == committed[MAX_TURNS:]
                assert "busy" in shed[0]["message"]
            health = (await healthz(server))["speech"]
            assert health["stt_in_flight"] == 1
            assert health["stt_queued"] == 3 * MAX_TURNS - 1
            assert health["stt_shed"] == 3 * (turns - MAX_TURNS)
            assert whisper.health()["in_flight"] == 1  # the rest wait in the scheduler
            await send_audio(asker, question)
            asked: list[dict[str, Any]] = []
            await events_until(asker, lambda e: of(e, "input_audio.committed"), asked)
            before = len(recording.started)
            assert before == 1
        finally:
            os.kill(pid, signal.SIGCONT)
            whisper.stall_timeout_s = stall_timeout
        await events_until(asker, lambda e: of(e, "response.created"), asked)
        names = [e["type"] for e in asked]
        assert names == VOICE_TURN
        assert "capital of france" in asked[3]["text"].lower()
        # The question went to Whisper behind at most one turn of each spammer.
        mine = next(i for i, ms in enumerate(recording.started) if ms > 1500)
        assert mine - before <= len(spammers), recording.started
        # Every turn a spammer committed got its transcript, or was shed: none is lost.
        for connection, events in zip(spammers, seen, strict=True):
            await events_until(
                connection, lambda e: len(of(e, "input_audio.transcript")) == MAX_TURNS, events
            )
            assert len(of(events, "error")) == turns - MAX_TURNS
        health = server.health()["speech"]
        assert health["stt_queued"] == 0
        assert health["stt_queued_max"] <= 4 * MAX_TURNS


async def test_a_stopped_recognizer_is_killed_its_turn_fails_and_the_next_is_heard(
    speech: SpeechInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    whisper = whisper_worker("tiny.en", "en")
    whisper.stall_timeout_s = 2.0
    await whisper.start()
    engines = SpeechInput(speech.vad, WhisperSTT(whisper, "tiny.en"), "en")
    question = pad(spoken_pcm(QUESTION), 0.3, 1.0)
    stuck = whisper.pid
    assert stuck is not None
    successor = None
    try:
        async with (
            running_server(
                scripted_backend(["Paris."]),
                speech=engines,
                input_audio=ROOMY,
                workers={"vad": speech.vad.worker, "whisper": whisper},
            ) as server,
            ChatConnection(server.url) as connection,
        ):
            # Its successor stops itself while loading, so "not ready" lasts until we say.
            monkeypatch.setenv(STOP_AT_ENV, "whisper:loading")
            os.kill(stuck, signal.SIGSTOP)
            events: list[dict[str, Any]] = []
            for turn in (1, 2):  # the first turn is written to the worker, the second waits
                await send_audio(connection, question)
                await events_until(
                    connection, lambda e, n=turn: len(of(e, "input_audio.committed")) == n, events
                )
            assert whisper.health()["in_flight"] == 1
            await events_until(connection, lambda e: of(e, "error"), events)
            failed = of(events, "error")[0]
            assert failed["code"] == "stt_failed"
            assert "answered nothing" in failed["message"]
            health = await healthz(server)
            assert health["status"] == "degraded"
            assert health["workers"]["whisper"]["state"] in ("restarting", "starting")
            assert health["workers"]["whisper"]["restarts"] == 1
            assert process_state(stuck) is None  # killed and reaped

            def stopped_successor() -> int | None:
                for child in children_of(os.getpid()):
                    if process_state(child) == "T" and child != stuck:
                        return child
                return None

            await until(lambda: stopped_successor() is not None, "the successor at loading")
            successor = stopped_successor()
            assert successor is not None
            monkeypatch.delenv(STOP_AT_ENV)
            os.kill(successor, signal.SIGCONT)
            await events_until(connection, lambda e: of(e, "response.created"), events)
            transcript = of(events, "input_audio.transcript")
            assert len(transcript) == 1  # the second turn, served by the new worker
            assert "capital of france" in transcript[0]["text"].lower()
            names = [e["type"] for e in events]
            assert names.index("error") < names.index("input_audio.transcript")
            assert (await healthz(server))["workers"]["whisper"]["state"] == "ready"
    finally:
        for pid in (stuck, successor):
            if pid is not None and process_state(pid) == "T":
                os.kill(pid, signal.SIGCONT)
        await whisper.aclose()


async def test_a_vad_that_cannot_restart_keeps_the_audio_bounded_and_logs_once(
    speech: SpeechInput, caplog: pytest.LogCaptureFixture
) -> None:
    vad = vad_worker()
    await vad.start()
    engines = SpeechInput(SileroVAD(vad), speech.stt, speech.language)
    question = spoken_pcm(QUESTION)
    frames = 200  # 100 ms each: 20 s of audio after the VAD went
    try:
        async with (
            running_server(
                scripted_backend(["Paris."]),
                speech=engines,
                input_audio=ROOMY,
                workers={"vad": vad, "whisper": speech.stt.worker},  # type: ignore[attr-defined]
            ) as server,
            ChatConnection(server.url) as connection,
        ):
            await send_audio(connection, pad(question[: len(question) // 2], 0.3, 0))
            await read_until(connection, "input_audio.speech_started")  # mid-turn
            listener = next(iter(server.sessions))._listener
            assert listener is not None
            # Every restart now fails while loading (an engine setting it does not know).
            vad.settings = {"model_path": "/nonexistent/silero_vad.onnx"}
            os.kill(vad.pid or 0, signal.SIGKILL)
            with caplog.at_level(logging.WARNING, logger="voicechat.speech.listener"):
                await send_audio(connection, np.zeros(frames * 1600, np.int16))
                await connection.clear_audio()
                await read_until(connection, "input_audio.cleared")  # every frame was handled
            failures = listener.stats.vad_failures
            assert failures >= frames
            # Kept: the last 3.5 s at most (no turn can be in progress), not all 20 s.
            assert listener.stats.most_buffered_ms <= 3600
            lines = [r for r in caplog.records if r.name == "voicechat.speech.listener"]
            assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
            health = await healthz(server)
            assert health["workers"]["vad"]["state"] != "ready"
            assert health["speech"]["vad_failures"] == failures
            # The VAD comes back at its next restart: the session hears again.
            vad.settings = {}
            await until(lambda: vad.state == "ready", "the VAD restarted")
            await send_audio(connection, pad(question, 0.3, 1.0))
            events: list[dict[str, Any]] = []
            await events_until(connection, lambda e: of(e, "input_audio.transcript"), events)
            assert "capital of france" in of(events, "input_audio.transcript")[0]["text"].lower()
    finally:
        await vad.aclose()

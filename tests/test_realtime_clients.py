"""`WS /v1/realtime` driven by the real clients beyond the official SDK: openai-agents' realtime
model and Pipecat's `OpenAIRealtimeLLMService`, each against a real server on loopback (what each
client needs: docs/realtime.md).

Pipecat runs in-process (pinned in the `test` extra). openai-agents 0.24.0 requires
websockets<17, which the server cannot run on, so it runs as a user's app would, in an
environment of its own: tests/realtime_agents_client.py, with the Python of .venv-agents (made by
`bash scripts/setup.sh test` from tests/agents-requirements.txt), as a child process of the test
that prints what it saw as JSON lines; the server stays in the test's process.

Both are strict: openai-agents validates every server event against the SDK's pydantic models
and reports one it rejects as an `error` event; Pipecat validates with its own models and ends
its receive task silently on one it rejects, so its tests assert that the response completed
and that the receive task still runs. The LLM is scripted and the voice the tone voice (fakes,
so each answer is known); the spoken turns are Piper's speech heard by the real Silero VAD and
Whisper tiny.en in their worker processes (tests/speech_server.py).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

from voicechat.server import VoiceChatServer
from voicechat.speech import SpeechInput

from .conftest import WAIT_S, running_server, scripted_backend
from .process_guard import spawn, stop
from .speech_fixtures import pad, spoken_pcm
from .speech_server import speech_input
from .test_realtime import ANSWER, ANSWER_TEXT, RESPONSE_ORDER, collapse

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE = 24000  # what both clients send and expect: PCM16 at 24 kHz
CHUNK_BYTES = RATE // 10 * 2  # 100 ms a chunk, as the clients send a microphone's audio
QUESTION = "What is the capital of France?"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech() -> AsyncIterator[SpeechInput]:
    async with speech_input() as engines:
        yield engines


def spoken_question() -> bytes:
    """The question in Piper's voice at 24 kHz, with silence after it that ends the turn."""
    return pad(spoken_pcm(QUESTION, RATE), 0.3, 1.2, RATE).astype("<i2").tobytes()


def tone_samples(units: list[str]) -> int:
    """How many 24 kHz samples the tone voice makes of these units (60 ms a character, at
    least 200 ms a unit: tests/test_realtime.py)."""
    return sum(int(RATE * max(200.0, 60.0 * len(unit.strip())) / 1000) for unit in units)


# --- openai-agents ------------------------------------------------------------------------------


AGENTS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-agents" / "bin" / "python"
AGENTS_CLIENT = Path(__file__).with_name("realtime_agents_client.py")
AGENTS_REQUIREMENTS = Path(__file__).with_name("agents-requirements.txt")
AGENTS_START_S = 30.0  # on top of the turn's WAIT_S: importing openai-agents, connecting

needs_agents_venv = pytest.mark.skipif(
    not AGENTS_PYTHON.exists(),
    reason="no .venv-agents, the environment openai-agents runs in: run bash scripts/setup.sh test",
)


def pinned(requirements: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, by name."""
    lines = (line.split("#")[0].strip() for line in requirements.read_text().splitlines())
    return dict(line.split("==", 1) for line in lines if line)


async def agent_turn(
    server: VoiceChatServer, folder: Path, audio: bytes | None = None
) -> tuple[list[dict[str, Any]], bytes]:
    """One turn of openai-agents' client in .venv-agents (tests/realtime_agents_client.py): a
    typed one, or `audio` spoken. Every session event it saw up to and including the turn's
    agent_end, and the answer's audio. The client is killed if it outlives the test."""
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    out, err, answer = folder / "client.jsonl", folder / "client.err", folder / "answer.pcm"
    args: list[str | Path] = [AGENTS_PYTHON, "-I", AGENTS_CLIENT, url, "--audio-out", answer]
    args += ["--timeout", str(WAIT_S)]
    if audio is not None:
        (folder / "question.pcm").write_bytes(audio)
        args += ["--audio", folder / "question.pcm"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        client = spawn(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    try:
        code = await asyncio.to_thread(client.wait, WAIT_S + AGENTS_START_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        await asyncio.to_thread(stop, client)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0, f"the client ended with {code}: {lines[-3:]}\n{err.read_text()[-3000:]}"
    versions = lines.pop(0)
    assert versions["type"] == "versions"
    # The versions pinned, and the same openai SDK (pydantic models) as the main environment:
    for name, version in pinned(AGENTS_REQUIREMENTS).items():
        assert versions[name] == version, f"{name}: stale .venv-agents? run setup.sh test"
    assert versions["openai"] == importlib.metadata.version("openai")
    pcm = answer.read_bytes()
    assert len(pcm) == sum(line.get("bytes", 0) for line in lines)
    return lines, pcm


def rejected(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors openai-agents reported: server events its validation rejected, error events."""
    return [e for e in events if e["type"] == "error" or e.get("model") in ("error", "exception")]


def model_events(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The model layer's events of one type (raw_server_event: one of the server's events)."""
    return [e for e in events if e.get("model") == kind]


def server_types(events: list[dict[str, Any]]) -> list[str]:
    """The server's events in order, but session.updated: openai-agents sends a session.update
    (its tracing setting) when session.created reaches it, so a message sent right after connect
    can come before it and the server's session.updated in the middle of the answer."""
    kinds = [e["server"] for e in model_events(events, "raw_server_event")]
    return [kind for kind in kinds if kind != "session.updated"]


def agent_audio(events: list[dict[str, Any]], pcm: bytes) -> np.ndarray:
    """The answer's samples, in the PCM16 at 24 kHz that the session's output format says."""
    formats = [e["output_format"] for e in events if e.get("output_format")]
    assert formats and formats[-1] == {"type": "audio/pcm", "rate": RATE}
    assert len(pcm) % 2 == 0
    return np.frombuffer(pcm, "<i2")


@needs_agents_venv
async def test_openai_agents_typed_turn_hears_the_answer(tmp_path: Path) -> None:
    async with running_server(scripted_backend(ANSWER)) as server:
        events, pcm = await agent_turn(server, tmp_path)
    assert rejected(events) == []
    kinds = server_types(events)
    answer = kinds[kinds.index("response.created") :]
    assert collapse(answer) == RESPONSE_ORDER
    units = [e["delta"] for e in model_events(events, "transcript_delta")]
    assert "".join(units).split() == ANSWER_TEXT.split()
    samples = agent_audio(events, pcm)
    assert np.abs(samples).max() > 1000
    assert abs(len(samples) - tone_samples(units)) <= 8 * len(units)  # all of it, at 24 kHz
    types = [e["type"] for e in events]
    assert types.index("audio_end") > max(i for i, t in enumerate(types) if t == "audio")
    said = [e["assistant"] for e in events if e["type"] == "history_updated"][-1]
    assert len(said) == 1 and said[0][0].split() == ANSWER_TEXT.split()


@needs_agents_venv
async def test_openai_agents_spoken_turn_is_heard_and_answered(
    speech: SpeechInput, tmp_path: Path
) -> None:
    async with running_server(scripted_backend(ANSWER), speech=speech) as server:
        events, pcm = await agent_turn(server, tmp_path, spoken_question())
    assert rejected(events) == []
    kinds = server_types(events)
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.created")
    heard = model_events(events, "input_audio_transcription_completed")
    assert len(heard) == 1 and "france" in heard[0]["transcript"].lower()
    assert collapse(kinds[kinds.index("response.created") :]) == RESPONSE_ORDER
    assert np.abs(agent_audio(events, pcm)).max() > 1000
    assert "audio_end" in [e["type"] for e in events]


# --- Pipecat ------------------------------------------------------------------------------------


class Collector(FrameProcessor):
    """Keeps the frames going one way past it; `responses` counts LLMFullResponseEndFrames."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self.direction = direction
        self.frames: list[Frame] = []
        self.responses = 0
        self._changed = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction and not isinstance(frame, StartFrame):
            self.frames.append(frame)
            if isinstance(frame, LLMFullResponseEndFrame):
                self.responses += 1
                async with self._changed:
                    self._changed.notify_all()
        await self.push_frame(frame, direction)

    async def wait_responses(self, count: int) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: self.responses >= count)

    def of(self, kind: type[Frame]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]


@asynccontextmanager
async def pipecat_pipeline(
    server: VoiceChatServer,
) -> AsyncIterator[tuple[PipelineWorker, OpenAIRealtimeLLMService, Collector, Collector]]:
    """[upstream collector, the realtime service, downstream collector], running; ended with
    an EndFrame after the test, cancelled if that does not end it."""
    llm = OpenAIRealtimeLLMService(
        api_key="sk-local", base_url=f"ws://127.0.0.1:{server.port}/v1/realtime"
    )
    up, down = Collector(FrameDirection.UPSTREAM), Collector(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(
        Pipeline([up, llm, down]), enable_rtvi=False, cancel_on_idle_timeout=False
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run(), name="pipecat-runner")
    try:
        async with asyncio.timeout(WAIT_S):
            await started.wait()  # frames queued before the StartFrame are dropped
        yield worker, llm, up, down
        await worker.queue_frame(EndFrame())
        async with asyncio.timeout(WAIT_S):
            await asyncio.shield(running)
    finally:
        if not running.done():
            await runner.cancel(reason="test over")
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(running, return_exceptions=True)


def pipecat_audio(down: Collector) -> np.ndarray:
    frames = down.of(TTSAudioRawFrame)
    assert frames and {(f.sample_rate, f.num_channels) for f in frames} == {(RATE, 1)}
    return np.frombuffer(b"".join(f.audio for f in frames), "<i2")


def assert_pipecat_survived(llm: OpenAIRealtimeLLMService, up: Collector) -> None:
    """No ErrorFrame (an `error` event), and the receive task still reads the socket (it ends
    silently on an event its models reject)."""
    assert up.of(ErrorFrame) == []
    receive = llm._receive_task  # no public view of it
    assert receive is not None and not receive.done()


async def test_pipecat_typed_turn_hears_the_answer_at_24khz() -> None:
    async with (
        running_server(scripted_backend(ANSWER)) as server,
        pipecat_pipeline(server) as (worker, llm, up, down),
    ):
        context = LLMContext(messages=[{"role": "user", "content": "Say hello."}])
        await worker.queue_frame(LLMContextFrame(context=context))
        await down.wait_responses(1)
        assert_pipecat_survived(llm, up)
        samples = pipecat_audio(down)
        text = "".join(f.text for f in down.of(LLMTextFrame))
        stopped = down.frames.index(down.of(TTSStoppedFrame)[0])
        last_audio = max(i for i, f in enumerate(down.frames) if isinstance(f, TTSAudioRawFrame))
    assert text.split() == ANSWER_TEXT.split()
    assert np.abs(samples).max() > 1000
    units = [f.text for f in down.of(LLMTextFrame)]
    assert abs(len(samples) - tone_samples(units)) <= 8 * len(units)
    assert last_audio < stopped


async def test_pipecat_spoken_turn_is_heard_and_answered(speech: SpeechInput) -> None:
    async with (
        running_server(scripted_backend(ANSWER), speech=speech) as server,
        pipecat_pipeline(server) as (worker, llm, up, down),
    ):
        audio = spoken_question()
        for start in range(0, len(audio), CHUNK_BYTES):
            chunk = audio[start : start + CHUNK_BYTES]
            await worker.queue_frame(InputAudioRawFrame(chunk, sample_rate=RATE, num_channels=1))
        await down.wait_responses(1)
        assert_pipecat_survived(llm, up)
        heard = up.of(TranscriptionFrame)
        text = "".join(f.text for f in down.of(LLMTextFrame))
        samples = pipecat_audio(down)
    assert len(heard) == 1 and "france" in heard[0].text.lower()
    assert text.split() == ANSWER_TEXT.split()
    assert np.abs(samples).max() > 1000


async def test_pipecat_survives_an_answer_that_fails() -> None:
    """An LLM failing mid-answer ends the response with status failed and the reason in its
    status_details, never with an `error` event (Pipecat would end its session)."""
    failing = scripted_backend(["Hello there. ", {"error": "the model fell over"}])
    async with (
        running_server(failing) as server,
        pipecat_pipeline(server) as (worker, llm, up, down),
    ):
        context = LLMContext(messages=[{"role": "user", "content": "Say hello."}])
        await worker.queue_frame(LLMContextFrame(context=context))
        await down.wait_responses(1)
        errors = up.of(ErrorFrame)
        receive = llm._receive_task
        assert receive is not None and not receive.done()  # its session goes on
    # Pipecat reports a failed response's status_details.error.message itself:
    assert len(errors) == 1 and "the model fell over" in errors[0].error

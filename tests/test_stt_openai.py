"""`--stt openai`: speech input recognised by an OpenAI-compatible transcription server.

End to end: `open_backends` with `--stt openai --stt-url <double>/v1` starts the real Silero VAD
worker and an `OpenAISTT`; a real `VoiceChatServer` on loopback hears a question spoken by Piper
(tests/speech_fixtures.py) in 100 ms `input_audio.append` frames; the transcription double
(tests/stt_double.py) runs the real Whisper tiny.en engine on the WAV it is sent. The LLM is
scripted, so each answer is known. Each way the transcription server can fail must reach the
client as `error` `stt_failed` with a message saying what happened, and leave the session open.

Synchronisation is by the protocol: every wait reads events until the one expected arrives, with
conftest.WAIT_S as a hang guard only.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voicechat.speech.stt as stt_module
from voicechat.client.connection import ChatConnection
from voicechat.config import ConfigError, open_backends
from voicechat.server import VoiceChatServer
from voicechat.settings import BackendOptions
from voicechat.speech.stt import OpenAISTT, STTError

from .conftest import WAIT_S, read_answer, running_server
from .speech_fixtures import pad, spoken_pcm
from .speech_server import VOICE_TURN, send_audio
from .stt_double import SttDouble

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."
SHORT_TIMEOUT_S = 2.0  # the "slow" server: the client's timeout, instead of the default 30 s


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    """The question as a microphone would hear it: silence, the words, the silence after."""
    return pad(spoken_pcm(QUESTION), 1.0, 1.5)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "answer.json"
    path.write_text(f'["{ANSWER}"]', encoding="utf-8")
    return path


@pytest.fixture
def double(request: pytest.FixtureRequest) -> Iterator[SttDouble]:
    with SttDouble(getattr(request, "param", "ok")) as running:
        yield running


@asynccontextmanager
async def openai_stt_server(url: str, script: Path) -> AsyncIterator[VoiceChatServer]:
    """A server as `serve --llm scripted:SCRIPT --tts tone --stt openai --stt-url URL` runs."""
    options = BackendOptions(llm=f"scripted:{script}", tts="tone", stt="openai", stt_url=url)
    async with AsyncExitStack() as stack:
        backends = await open_backends(options, stack)
        assert backends.speech is not None
        assert set(backends.workers) == {"vad", "turn"}  # no Whisper worker: the server recognises
        async with running_server(backends.chat, backends.tts, speech=backends.speech) as server:
            yield server


async def read_until_any(connection: ChatConnection, *kinds: str) -> list[dict[str, Any]]:
    """Every event up to and including the first of one of `kinds`."""
    events = []
    async with asyncio.timeout(WAIT_S):
        while (event := await connection.next_event())["type"] not in kinds:
            events.append(event)
    return [*events, event]


# --- recognition ------------------------------------------------------------------------------


async def test_a_spoken_question_is_transcribed_by_the_server_and_answered(
    double: SttDouble, script: Path, question: np.ndarray
) -> None:
    async with (
        openai_stt_server(double.url, script) as server,
        ChatConnection(server.url) as connection,
    ):
        assert connection.session["stt"] == "openai:whisper-1"
        await send_audio(connection, question)
        events = await read_answer(connection)
    # (the end-of-turn model's verdict on the pause may come between: test_conversation.py)
    events = [event for event in events if event["type"] != "input_audio.end_of_turn"]
    names = [event["type"] for event in events]
    assert names[:5] == VOICE_TURN, names
    committed, transcript, created = events[2], events[3], events[4]
    assert "capital of france" in transcript["text"].lower(), transcript
    assert created["in_reply_to"] == transcript["item_id"] == committed["item_id"]
    assert events[-1]["status"] == "completed"
    assert events[-1]["text"] == ANSWER
    assert "error" not in names
    # What went over the wire: OpenAI's form fields and the turn's audio as 16 kHz mono WAV.
    upload = double.uploads[-1]
    assert upload.fields == {"model": "whisper-1", "response_format": "json"}  # no language
    assert (upload.filename, upload.content_type) == ("turn.wav", "audio/wav")
    assert (upload.wav_rate, upload.wav_channels) == (16000, 1)
    assert upload.wav_samples is not None
    assert abs(upload.wav_samples / 16 - committed["audio_ms"]) <= 1


async def test_the_language_setting_is_sent_to_the_server(
    double: SttDouble, script: Path, question: np.ndarray
) -> None:
    async with (
        openai_stt_server(double.url, script) as server,
        ChatConnection(server.url) as connection,
    ):
        await connection.update_session(language="en")
        await read_until_any(connection, "session.updated")
        await send_audio(connection, question)
        events = await read_until_any(connection, "input_audio.transcript")
    assert "capital of france" in events[-1]["text"].lower()
    assert events[-1]["language"] == "en"
    assert double.uploads[-1].fields["language"] == "en"


# --- misbehaving servers -------------------------------------------------------------------------


@pytest.fixture
def short_client_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_backends builds OpenAISTT with its default timeout (30 s); a test waits less."""

    class ShortTimeoutSTT(OpenAISTT):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "timeout_s": SHORT_TIMEOUT_S})

    monkeypatch.setattr(stt_module, "OpenAISTT", ShortTimeoutSTT)


# mode -> what the error message must say (besides the failure itself)
FAILURES = {
    "down": ["/v1/audio/transcriptions", "connect"],
    "500": ["http 500", "server had an error"],
    "garbage": ["sent no text", "502 bad gateway"],
    "no_text": ["sent no text", '"task": "transcribe"'],
    "slow": ["/v1/audio/transcriptions", "did not answer within"],
}


@pytest.mark.parametrize("double", list(FAILURES), indirect=True)
async def test_a_failing_transcription_server_is_stt_failed_and_the_session_goes_on(
    double: SttDouble, script: Path, question: np.ndarray, short_client_timeout: None
) -> None:
    async with (
        openai_stt_server(double.url, script) as server,
        ChatConnection(server.url) as connection,
    ):
        await send_audio(connection, question)
        events = await read_until_any(connection, "error", "input_audio.transcript")
        error = events[-1]
        names = [event["type"] for event in events]
        # A typed message still gets its answer on the same connection.
        await connection.send_user_message("Are you still there?")
        answer = await read_answer(connection)
        assert connection.ws.state.name == "OPEN"
    assert error["type"] == "error", names
    assert error["code"] == "stt_failed"
    assert "input_audio.committed" in names  # the turn ended; only its recognition failed
    message = error["message"].lower()
    assert message.startswith("speech recognition failed: ")
    for words in FAILURES[double.mode]:
        assert words in message, error["message"]
    if double.mode != "down":
        assert double.uploads, "the server never got the audio"
    if double.mode == "slow":
        assert double.wait_slow_request(0)
    assert [event["type"] for event in answer].count("response.created") == 1
    assert answer[-1]["status"] == "completed"
    assert answer[-1]["text"] == ANSWER


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, ""])
async def test_stt_openai_without_a_url_is_a_config_error(url: str | None) -> None:
    options = BackendOptions(llm="scripted", tts="tone", stt="openai", stt_url=url)
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match="--stt openai needs --stt-url"):
            await open_backends(options, stack)


def test_serve_with_stt_openai_and_no_url_is_a_usage_error() -> None:
    command = "serve --llm scripted --tts tone --stt openai --port 0".split()
    result = subprocess.run(
        [sys.executable, "-m", "voicechat", *command],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--stt-url" in result.stderr


async def test_an_api_key_is_sent_as_a_bearer_token(question: np.ndarray) -> None:
    pcm = question.astype("<i2").tobytes()
    with SttDouble(api_key="sk-test") as double:
        without = OpenAISTT(double.url, "whisper-1")
        right = OpenAISTT(double.url, "whisper-1", api_key="sk-test")
        try:
            with pytest.raises(STTError, match="HTTP 401"):
                await without.transcribe(pcm, None)
            transcript = await right.transcribe(pcm, "en")
        finally:
            await without.aclose()
            await right.aclose()
    assert "capital of france" in transcript.text.lower()
    assert transcript.language == "en"
    assert double.uploads[-1].headers["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    ("flag", "environment", "sent"),
    [("sk-flag", None, "Bearer sk-flag"), (None, "sk-env", "Bearer sk-env"), (None, None, None)],
)
async def test_serve_sends_the_stt_api_key_or_openai_api_key(
    monkeypatch: pytest.MonkeyPatch, flag: str | None, environment: str | None, sent: str | None
) -> None:
    if environment is None:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", environment)
    options = BackendOptions(
        llm="scripted", tts="tone", stt="openai", stt_url="http://127.0.0.1:9/v1", stt_api_key=flag
    )
    async with AsyncExitStack() as stack:
        backends = await open_backends(options, stack)
        assert backends.speech is not None
        stt = backends.speech.stt
        assert isinstance(stt, OpenAISTT)
        assert stt._client.headers.get("authorization") == sent


# --- a recognizer that hangs ----------------------------------------------------------------------


@pytest.mark.parametrize("double", ["slow"], indirect=True)
async def test_a_hung_transcription_does_not_hold_up_a_typed_message(
    double: SttDouble, script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class HangingSTT(OpenAISTT):  # long enough for a typed answer to come first, if it can
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "timeout_s": 5.0})

    monkeypatch.setattr(stt_module, "OpenAISTT", HangingSTT)
    question = pad(spoken_pcm(QUESTION), 0.2, 0.8)  # within the 5 s burst, with what follows
    microphone_goes_on = [bytes(128)] * 300  # 4 ms frames: more than the queue holds
    async with (
        openai_stt_server(double.url, script) as server,
        ChatConnection(server.url) as connection,
    ):
        await send_audio(connection, question)
        for frame in microphone_goes_on:
            await connection.append_audio(frame)
        await connection.send_user_message("Are you still there?")
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT_S):
            while not {"response.done", "stt_failed"} <= {
                event.get("code", event["type"]) for event in events
            }:
                events.append(await connection.next_event())
    names = [event["type"] for event in events if event.get("code") != "rate_limited"]
    assert "error" in names and "response.created" in names, names
    assert names.index("response.created") < names.index("error"), names

"""`voicechat ask --audio FILE.wav`: a spoken question, heard by a real server.

The server runs on loopback with the real speech engines in their worker processes (Silero VAD,
Whisper tiny.en); the LLM is scripted and the voice the tone engine, except in the one
end-to-end test on the embedded models. The questions are spoken by Piper in the test process
(speech_fixtures.py), so what Whisper should hear is known: transcripts are judged by word
error rate. The command line runs as a real subprocess; the `ask()` coroutine where a test
needs the events.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from voicechat.audio.wav import WavError, read_wav, speech_input_pcm
from voicechat.client.ask import SpeechFileError, ask, load_speech
from voicechat.settings import EXIT_ANSWER_FAILED, EXIT_OK, EXIT_USAGE
from voicechat.speech import SpeechInput

from . import speech_fixtures
from .conftest import running_server, scripted_backend
from .speech_fixtures import (
    QUESTIONS,
    SPEECH_RATE,
    corpus_wer,
    normalize,
    pad,
    silence_wav,
    spoken_pcm,
    spoken_wav,
    word_error_rate,
    write_wav,
)
from .speech_server import speech_input

ANSWER = ["The answer ", "is short. ", "It ends here."]
CLI_TIMEOUT_S = 180  # an upper bound for one command (the embedded models load in it), not a wait


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}


def voicechat(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, for cases that need no server."""
    return subprocess.run(
        [sys.executable, "-m", "voicechat", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=_env(),
    )


async def voicechat_async(*args: str) -> tuple[int, str, str]:
    """The real command line while this event loop serves it: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicechat",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def wav_frames(path: Path) -> tuple[int, int]:
    """(frames, sample rate) of a WAV file ask wrote."""
    with wave.open(str(path)) as wav:
        return wav.getnframes(), wav.getframerate()


def transcript_line(stdout: str) -> str:
    """What ask printed as heard: its first line, `> transcript`."""
    first = stdout.splitlines()[0]
    assert first.startswith("> "), stdout
    return first[2:]


# --- the word error rate ------------------------------------------------------------------------


def test_word_error_rate_ignores_case_punctuation_and_number_spelling() -> None:
    assert (
        word_error_rate("How many legs does a spider have?", "how many legs, does a spider have")
        == 0.0
    )
    assert word_error_rate("A spider has eight legs.", "a spider has 8 legs") == 0.0
    assert word_error_rate("twenty-one", "21") == 0.0
    assert word_error_rate("twenty one apples", "21 apples") == 0.0
    assert normalize("It's TWELVE o'clock!") == ["it's", "12", "o'clock"]


def test_word_error_rate_counts_substitutions_deletions_and_insertions() -> None:
    assert word_error_rate("the cat sat", "the cat sat") == 0.0
    assert word_error_rate("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    assert word_error_rate("the cat sat", "the sat") == pytest.approx(1 / 3)
    assert word_error_rate("the cat sat", "the cat sat down there") == pytest.approx(2 / 3)
    assert word_error_rate("a b", "") == 1.0
    # Over a corpus, every word weighs the same: (0 + 1) edits over (1 + 4) words.
    assert corpus_wer([("yes", "yes"), ("one two three four", "one two three")]) == 0.2
    with pytest.raises(ValueError):
        word_error_rate("?!", "anything")


# --- reading WAV files --------------------------------------------------------------------------


def _riff(fmt: bytes, data: bytes) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(tag: int, channels: int, rate: int, bits: int) -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


def _extensible(channels: int, rate: int, bits: int, sub_tag: int) -> bytes:
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    extra = struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", sub_tag) + guid_tail
    return _fmt(0xFFFE, channels, rate, bits) + extra


# One ramp, -1 to almost 1, as each encoding writes it.
RAMP = np.linspace(-1.0, 1.0, 64, endpoint=False)


def _int_bytes(bits: int) -> bytes:
    scale = 2 ** (bits - 1)
    values = np.round(RAMP * scale).astype(np.int64)
    if bits == 8:
        return (values + 128).astype(np.uint8).tobytes()
    if bits == 24:
        return b"".join(int(v).to_bytes(3, "little", signed=True) for v in values)
    return values.astype(f"<i{bits // 8}").tobytes()


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_read_wav_reads_every_integer_width(bits: int) -> None:
    samples, rate = read_wav(_riff(_fmt(1, 1, 8000, bits), _int_bytes(bits)))
    assert rate == 8000 and samples.shape == (64, 1)
    np.testing.assert_allclose(samples[:, 0], RAMP, atol=1 / 2 ** (bits - 2))


@pytest.mark.parametrize("bits", [32, 64])
def test_read_wav_reads_float_wav(bits: int) -> None:
    data = RAMP.astype(f"<f{bits // 8}").tobytes()
    samples, rate = read_wav(_riff(_fmt(3, 1, 22050, bits), data))
    assert rate == 22050
    np.testing.assert_allclose(samples[:, 0], RAMP, atol=1e-6)


def test_read_wav_reads_extensible_multichannel_wav() -> None:
    # 24-bit stereo in WAVE_FORMAT_EXTENSIBLE (what many recorders write): left is the ramp,
    # right its negation. Python 3.11's wave refuses it; read_wav does not.
    left = _int_bytes(24)
    right = b"".join(
        int(v).to_bytes(3, "little", signed=True)
        for v in np.round(-RAMP * 2**23).clip(max=2**23 - 1)
    )
    interleaved = b"".join(left[i : i + 3] + right[i : i + 3] for i in range(0, len(left), 3))
    samples, rate = read_wav(_riff(_extensible(2, 48000, 24, 1), interleaved))
    assert rate == 48000 and samples.shape == (64, 2)
    np.testing.assert_allclose(samples[:, 0], RAMP, atol=1e-6)
    np.testing.assert_allclose(samples[:, 1], -RAMP, atol=1e-6)


def test_speech_input_pcm_mixes_down_and_resamples_to_16k() -> None:
    # One second of a 440 Hz tone at 44.1 kHz on the left, silence on the right.
    t = np.arange(44100) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1)
    pcm = np.frombuffer(speech_input_pcm(stereo.astype(np.float32), 44100), "<i2")
    assert len(pcm) == 16000  # one second at 16 kHz
    spectrum = np.abs(np.fft.rfft(pcm))
    assert np.argmax(spectrum) == 440  # 1 Hz bins: still the same pitch
    assert 0.2 < np.abs(pcm).max() / 32767 < 0.3  # the mean of both channels: half the level


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is text and not a WAV file\n",
        b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 100,  # an MP3's start
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # cut off in the middle of its header
    ],
    ids=["empty", "text", "mp3", "truncated"],
)
def test_read_wav_refuses_what_is_not_a_wav_file(data: bytes) -> None:
    with pytest.raises(WavError, match="not a WAV file"):
        read_wav(data)


def test_read_wav_refuses_a_wav_file_without_samples_and_odd_encodings() -> None:
    with pytest.raises(WavError, match="holds no audio"):
        read_wav(_riff(_fmt(1, 1, 16000, 16), b""))
    with pytest.raises(WavError, match="unsupported"):
        read_wav(_riff(_fmt(3, 1, 16000, 16), b"\x00" * 64))  # 16-bit float does not exist
    with pytest.raises(WavError, match="unsupported"):
        read_wav(_riff(_fmt(2, 1, 16000, 4), b"\x00" * 64))  # ADPCM


def test_load_speech_names_the_file_in_every_refusal(tmp_path: Path) -> None:
    missing, empty = tmp_path / "missing.wav", tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path in (missing, empty):
        with pytest.raises(SpeechFileError, match=str(path)):
            load_speech(path)


# --- usage errors of the command line (no server needed) ---------------------------------------


@pytest.mark.parametrize(
    "contents",
    [b"just some text, renamed to .wav\n", b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00", b""],
    ids=["text", "mp3", "empty"],
)
def test_ask_audio_refuses_a_file_that_is_not_a_wav_with_exit_2(
    tmp_path: Path, contents: bytes
) -> None:
    path = tmp_path / "question.wav"
    path.write_bytes(contents)
    result = voicechat("ask", "--audio", str(path), "--server", "ws://127.0.0.1:9/v1/chat/stream")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert str(path) in result.stderr
    assert result.stderr.startswith("voicechat: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_ask_audio_with_a_missing_file_or_one_without_samples_exits_2(tmp_path: Path) -> None:
    no_samples = write_wav(tmp_path / "nothing.wav", np.zeros(0, np.int16))
    for path in (tmp_path / "missing.wav", no_samples):
        result = voicechat("ask", "--audio", str(path))
        assert result.returncode == EXIT_USAGE, result.stderr
        assert str(path) in result.stderr


def test_ask_needs_text_or_audio_but_not_both(tmp_path: Path) -> None:
    path = silence_wav(tmp_path / "quiet.wav", 0.5)
    both = voicechat("ask", "hello", "--audio", str(path))
    assert both.returncode == EXIT_USAGE and "not both" in both.stderr
    neither = voicechat("ask")
    assert neither.returncode == EXIT_USAGE and "--audio" in neither.stderr
    realtime_alone = voicechat("ask", "hello", "--realtime")
    assert realtime_alone.returncode == EXIT_USAGE and "--audio" in realtime_alone.stderr


# --- against a real server with the real speech engines ----------------------------------------


@pytest.fixture(scope="session")
def spoken_questions(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    """QUESTIONS spoken by Piper: (reference text, a 16 kHz mono WAV file)."""
    return speech_fixtures.spoken_questions(tmp_path_factory.mktemp("spoken"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech() -> AsyncIterator[SpeechInput]:
    async with speech_input() as engines:
        yield engines


@pytest.mark.asyncio(loop_scope="module")
async def test_five_spoken_questions_are_heard_and_answered_from_the_command_line(
    speech: SpeechInput, spoken_questions: list[tuple[str, Path]], tmp_path: Path
) -> None:
    pairs = []
    async with running_server(scripted_backend(ANSWER), speech=speech) as server:
        for index, (reference, path) in enumerate(spoken_questions):
            out = tmp_path / f"answer{index}.wav"
            code, stdout, stderr = await voicechat_async(
                "ask", "--audio", str(path), "--server", server.url, "--out", str(out)
            )
            assert code == EXIT_OK, stderr
            heard = transcript_line(stdout)
            pairs.append((reference, heard))
            # The transcript on its own line, then the answer's text as it streamed.
            assert stdout.splitlines()[1:] == ["".join(ANSWER)], stdout
            frames, rate = wav_frames(out)
            assert frames > rate // 2 and rate == 22050  # the tone voice's audio, not a stub
    assert corpus_wer(pairs) <= 0.10, pairs


@pytest.mark.asyncio(loop_scope="module")
async def test_a_silent_file_is_no_speech_heard_and_exit_1(
    speech: SpeechInput, tmp_path: Path
) -> None:
    path = silence_wav(tmp_path / "silence.wav", 3.0)
    async with running_server(scripted_backend(ANSWER), speech=speech) as server:
        code, stdout, stderr = await voicechat_async(
            "ask", "--audio", str(path), "--server", server.url
        )
    assert code == EXIT_ANSWER_FAILED
    assert f"voicechat: no speech heard in {path}" in stderr
    assert "The answer" not in stdout  # nothing was answered


@pytest.mark.asyncio(loop_scope="module")
async def test_a_44k_stereo_recording_is_mixed_down_and_resampled(
    speech: SpeechInput, tmp_path: Path
) -> None:
    question = QUESTIONS[1]
    voice = pad(spoken_pcm(question, 44100), 0.4, 0.4, 44100)
    stereo = np.stack([voice, (voice * 0.5).astype(np.int16)], axis=1)
    path = write_wav(tmp_path / "stereo44k.wav", stereo, 44100)
    stdout, stderr = io.StringIO(), io.StringIO()
    async with running_server(scripted_backend(ANSWER), speech=speech) as server:
        code = await ask(
            None, server_url=server.url, speech=load_speech(path), stdout=stdout, stderr=stderr
        )
    assert code == EXIT_OK, stderr.getvalue()
    assert word_error_rate(question, transcript_line(stdout.getvalue())) <= 0.15


@pytest.mark.asyncio(loop_scope="module")
async def test_json_shows_the_turn_in_order_before_the_answer(
    speech: SpeechInput, spoken_questions: list[tuple[str, Path]]
) -> None:
    reference, path = spoken_questions[0]
    async with running_server(scripted_backend(ANSWER), speech=speech) as server:
        code, stdout, stderr = await voicechat_async(
            "ask", "--audio", str(path), "--server", server.url, "--json"
        )
    assert code == EXIT_OK, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "session.created" and events[0]["stt"] == "whisper:tiny.en"
    order = [
        kinds.index(kind)
        for kind in (
            "input_audio.speech_started",
            "input_audio.committed",
            "input_audio.transcript",
            "response.created",
        )
    ]
    assert order == sorted(order), kinds
    committed = events[kinds.index("input_audio.committed")]
    transcript = events[kinds.index("input_audio.transcript")]
    created = events[kinds.index("response.created")]
    assert transcript["item_id"] == committed["item_id"] == created["in_reply_to"]
    assert word_error_rate(reference, transcript["text"]) <= 0.10
    assert kinds[-1] == "response.done" and events[-1]["status"] == "completed"
    assert not any(line.startswith("> ") for line in stdout.splitlines())  # JSON lines only


@pytest.mark.asyncio(loop_scope="module")
async def test_a_long_recording_with_pauses_is_one_turn_sent_within_the_rate_limit(
    speech: SpeechInput, tmp_path: Path
) -> None:
    # Two sentences with a 1.5 s pause between them, then 6 s of silence: 13 s of audio, more
    # than the server's 5 s burst, so the client must pace it; and the trailing silence ends
    # the turn on the server's side before the file's end does.
    first, second = "What is the capital of France?", "Tell me a short joke about cats."
    audio = np.concatenate([pad(spoken_pcm(first), 0.5, 1.5), pad(spoken_pcm(second), 0.0, 6.0)])
    path = write_wav(tmp_path / "long.wav", audio)
    assert len(audio) / SPEECH_RATE > 10
    stdout, stderr = io.StringIO(), io.StringIO()
    async with running_server(scripted_backend(ANSWER), speech=speech) as server:
        code = await ask(
            None,
            server_url=server.url,
            speech=load_speech(path),
            json_lines=True,
            stdout=stdout,
            stderr=stderr,
        )
    events = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert code == EXIT_OK, stderr.getvalue()
    assert not [e for e in events if e["type"] == "error"], stderr.getvalue()  # no rate_limited
    transcripts = [e["text"] for e in events if e["type"] == "input_audio.transcript"]
    assert len(transcripts) == 1, transcripts  # the pause did not split the question
    assert word_error_rate(f"{first} {second}", transcripts[0]) <= 0.15
    assert [e["status"] for e in events if e["type"] == "response.done"] == ["completed"]


@pytest.mark.asyncio(loop_scope="module")
async def test_realtime_sends_like_a_microphone_and_is_answered(
    speech: SpeechInput, spoken_questions: list[tuple[str, Path]]
) -> None:
    reference, path = spoken_questions[3]
    stdout, stderr = io.StringIO(), io.StringIO()
    async with running_server(scripted_backend(ANSWER), speech=speech) as server:
        code = await ask(
            None,
            server_url=server.url,
            speech=load_speech(path, realtime=True),
            stdout=stdout,
            stderr=stderr,
        )
    assert code == EXIT_OK, stderr.getvalue()
    assert word_error_rate(reference, transcript_line(stdout.getvalue())) <= 0.10


@pytest.mark.asyncio(loop_scope="module")
async def test_a_server_with_speech_input_off_says_so_before_any_audio_is_sent(
    spoken_questions: list[tuple[str, Path]],
) -> None:
    _, path = spoken_questions[0]
    async with running_server(scripted_backend(ANSWER), speech=None) as server:
        code, stdout, stderr = await voicechat_async(
            "ask", "--audio", str(path), "--server", server.url, "--json"
        )
    assert code == EXIT_ANSWER_FAILED
    assert "this server has speech input turned off (serve --stt none)" in stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["type"] for e in events] == ["session.created"]  # no speech_input_off: none sent
    assert events[0]["stt"] is None


def test_ask_embedded_hears_and_answers_with_the_real_models(tmp_path: Path) -> None:
    """End to end on the embedded defaults: Whisper hears, the local LLM answers, Piper speaks."""
    question = QUESTIONS[0]
    path = spoken_wav(question, tmp_path / "question.wav", 22050)  # resampled by ask
    out = tmp_path / "answer.wav"
    result = voicechat("ask", "--embedded", "--audio", str(path), "--out", str(out))
    assert result.returncode == EXIT_OK, result.stderr
    assert word_error_rate(question, transcript_line(result.stdout)) <= 0.10
    assert "".join(result.stdout.splitlines()[1:]).strip()  # the local LLM's answer
    frames, rate = wav_frames(out)
    assert rate == 22050 and frames > rate // 2  # Piper's voice

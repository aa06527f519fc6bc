"""`voicechat talk --mic`: speaking to the Textual app through a real (headless) microphone.

The microphone is a PulseAudio pipe source in a private daemon (tests/audio_env.py), reached
through PortAudio like a sound card's input; `feed_microphone` speaks into it in real time. The
speech is Piper's voice saying a question (tests/speech_fixtures.py). The server runs on
loopback with the real speech input (Silero VAD and Whisper tiny.en in worker processes), a
scripted LLM and the tone voice; the app plays its answers into the daemon's null sink. Waits
poll a condition with a deadline; nothing assumes a duration.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from textual.widgets import Input

from tests.audio_env import PACED_DEVICE, MicrophoneFeeder, PulseDaemon, start_pulse
from tests.audio_fixtures import AudioEnv
from tests.conftest import (
    WAIT_S,
    WHOLE_ANSWERS,
    gated_backend,
    running_server,
    scripted_backend,
)
from tests.speech_fixtures import normalize, spoken_pcm
from tests.speech_server import speech_input
from tests.test_talk import answers, send, status, until
from voicechat.audio.mic import FLOOR_DB, RATE, Framer, LevelMeter, Microphone, meter_bar
from voicechat.server import VoiceChatServer
from voicechat.tts.tone import ToneTTS
from voicechat.tui.app import NoticeLine, UserLine, VoiceChatApp

QUESTION = "What is the capital of France?"
ANSWER = ["Paris is the capital of France.", " It lies on the Seine."]
# A long answer (about 2.2 s of tone audio per sentence) that is still being heard when the
# user speaks over it; its last item waits for a gate that never opens.
LONG_ANSWER = [f"Sentence number {n} of a long answer. " for n in range(12)] + ["Never."]


@pytest.fixture(scope="module")
def microphone(
    audio_env: AudioEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PulseDaemon]:
    """A private PulseAudio daemon with a microphone (a pipe source) as its default source and
    a null sink; device "pulse" reaches it for this module, then the session's daemon again.
    Like the session's, it dies with the test process (tests/process_guard.py)."""
    if audio_env.paced_skip:
        pytest.skip(audio_env.paced_skip)
    if audio_env.paced_device is None:
        pytest.fail(audio_env.paced_error or "no paced audio device")
    daemon = start_pulse(tmp_path_factory.mktemp("mic"), microphone=True)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in daemon.client_env.items():
                patch.setenv(key, value)  # the ALSA pulse plugin connects on each open
            yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def voice(microphone: PulseDaemon) -> Iterator[MicrophoneFeeder]:
    """The microphone in a quiet room for the whole test (a real one always delivers audio);
    `voice.say(pcm)` speaks into it, in real time."""
    with microphone.feed_microphone(b"", lead_s=0) as feeder:
        yield feeder


@pytest.fixture(scope="module")
def question() -> bytes:
    """The question, spoken by Piper, as PCM16 at 16 kHz."""
    return spoken_pcm(QUESTION, RATE).astype("<i2").tobytes()


class RecordingApp(VoiceChatApp):
    """Test double: the real app, also recording what it showed and heard.

    `states`: each microphone state the status line showed, in order, without repeats;
    `events`: every server event; `interruptions`: (playing before, playing after, the unit
    being heard) at each stop for the user's voice.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.states: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.interruptions: list[tuple[Any, Any, int | None]] = []

    def apply_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        super().apply_event(event)

    def _refresh_status(self) -> None:
        state = self.mic_state()
        if not self.states or self.states[-1] != state:
            self.states.append(state)
        super()._refresh_status()

    def _interrupt_playback(self) -> None:
        assert self.player is not None
        before = self.player.now_playing
        heard = next((view.heard for view in self.answers.values() if view.heard is not None), None)
        super()._interrupt_playback()
        self.interruptions.append((before, self.player.now_playing, heard))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("type") == kind]


def spoken_lines(app: VoiceChatApp) -> list[str]:
    return [str(line.render()) for line in app.query(UserLine) if line.has_class("spoken")]


def notices(app: VoiceChatApp) -> list[NoticeLine]:
    return list(app.query(NoticeLine))


def in_order(seen: list[str], expected: list[str]) -> bool:
    """`expected` appears in `seen` as a subsequence."""
    remaining = iter(seen)
    return all(any(state == wanted for state in remaining) for wanted in expected)


async def test_a_spoken_question_appears_as_the_users_turn_and_is_answered_aloud(
    voice: MicrophoneFeeder, question: bytes
) -> None:
    async with (
        speech_input() as speech,
        running_server(scripted_backend(ANSWER), ToneTTS(), speech=speech) as server,
    ):
        app = RecordingApp(server.url, device=PACED_DEVICE, mic=True, input_device=PACED_DEVICE)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.speech_input, "speech input on")
            assert app.player is not None and not app.player.is_null
            assert "mic ····· listening" in status(app)  # the meter: a quiet room

            voice.say(question)
            await until(pilot, lambda: bool(spoken_lines(app)), "the transcript")
            await until(
                pilot,
                lambda: bool(answers(app)) and answers(app)[0].status == "completed",
                "the answer",
            )
            await until(pilot, lambda: not app.player.queue.busy, "the answer played out")
            assert voice.speech_written.is_set()

            assert app.microphone is not None and app.microphone.frames_captured > 0
            transcript = app.of_type("input_audio.transcript")[0]
            assert {"capital", "france"} <= set(normalize(transcript["text"]))
            assert spoken_lines(app) == [f"you  {transcript['text'].strip()}"]
            # The user's turn comes before its answer, which is the reply to that turn.
            lines = list(app.query_one("#transcript").children)
            assert lines.index(app.query(UserLine)[0]) < lines.index(answers(app)[0])
            created = app.of_type("response.created")[0]
            assert created["in_reply_to"] == transcript["item_id"]
            assert answers(app)[0].text == "".join(ANSWER)
            assert app.player.stats.samples_played > 0  # heard, through PortAudio
            await until(pilot, lambda: app.states[-1] == "listening", "listening again")
            assert in_order(app.states, ["listening", "heard you", "thinking", "speaking"])
            assert not [n for n in notices(app) if "error" in str(n.render()).lower()]


async def test_speaking_over_an_answer_stops_it_at_once_and_keeps_only_what_was_heard(
    voice: MicrophoneFeeder, question: bytes
) -> None:
    gate = asyncio.Event()  # never set: the answer is still being written when the user speaks
    async with (
        speech_input() as speech,
        running_server(
            gated_backend(LONG_ANSWER, gate), ToneTTS(), speech=speech, pipeline=WHOLE_ANSWERS
        ) as server,
    ):
        app = RecordingApp(server.url, device=PACED_DEVICE, mic=True, input_device=PACED_DEVICE)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.speech_input, "speech input on")
            # Typing works with the microphone on. (Not key by key: with audio streaming
            # the process is never idle, and Pilot waits up to 1 s for idleness per key.)
            app.query_one("#message", Input).value = "Talk for a while"
            await pilot.press("enter")
            assert app.player is not None
            await until(
                pilot, lambda: bool(answers(app)) and answers(app)[0].heard == 1, "the second unit"
            )
            first = answers(app)[0]
            voice.say(question)
            await until(pilot, lambda: bool(app.interruptions), "the barge-in")
            before, after, heard = app.interruptions[0]
            assert before is not None and before[0] == first.response_id
            assert after is None  # silenced at once, before the server's cancel arrived
            await until(pilot, lambda: first.kept is not None, "response.truncated")
            await until(pilot, lambda: bool(spoken_lines(app)), "the transcript")

            assert first.status == "cancelled"
            truncate = app.of_type("response.truncated")[0]
            assert truncate["response_id"] == first.response_id
            assert truncate["audio_end_ms"] > 0
            # The history keeps the sentences whose audio had started, not the rest.
            kept = truncate["text"]
            assert first.text.startswith(kept) and len(kept) < len(first.text)
            # The unit before the one being heard was heard in full (the one being heard may
            # have started less than the device's latency ago: not yet in the listener's ears).
            assert heard is not None and heard >= 1 and first.units[heard - 1].strip() in kept
            assert LONG_ANSWER[-2].strip() not in kept
            assert {"capital", "france"} <= set(normalize(spoken_lines(app)[0]))
            assert not [e for e in app.of_type("error") if e["code"] == "bad_message"]
        await sessions_closed(server)  # the answer to the question is still in flight


async def sessions_closed(server: VoiceChatServer) -> None:
    """Until the server has seen the client go (a shutdown racing that close waits its whole
    grace period for the session to flush)."""
    async with asyncio.timeout(WAIT_S):
        while server.sessions:  # noqa: ASYNC110 - server state has no event to await
            await asyncio.sleep(0.02)  # poll interval


async def test_push_to_talk_records_between_two_presses_and_silence_is_not_an_error(
    voice: MicrophoneFeeder, question: bytes
) -> None:
    async with (
        speech_input() as speech,
        running_server(scripted_backend(ANSWER), ToneTTS(), speech=speech) as server,
    ):
        app = RecordingApp(
            server.url,
            device=PACED_DEVICE,
            mic=True,
            input_device=PACED_DEVICE,
            push_to_talk=True,
        )
        async with app.run_test() as pilot:
            await until(pilot, lambda: bool(app.of_type("session.updated")), "session.updated")
            assert app.of_type("session.updated")[0]["input_audio"]["turn_mode"] == "push_to_talk"
            assert "F5 to talk" in status(app)
            assert app.microphone is not None

            # Only silence between the presses: a quiet remark, no refused message, no answer.
            await pilot.press("f5")
            assert "recording" in status(app)
            captured = app.microphone.frames_captured
            await until(
                pilot, lambda: app.microphone.frames_captured > captured + 10, "recorded audio"
            )
            await pilot.press("f5")
            await until(pilot, lambda: bool(app.of_type("error")), "the server's verdict")
            assert [e["code"] for e in app.of_type("error")] == ["no_speech"]
            quiet = [str(n.render()) for n in notices(app) if n.has_class("quiet")]
            assert quiet == ["Didn't catch that."]
            assert not answers(app) and "F5 to talk" in status(app)

            await pilot.press("f5")
            voice.say(question)
            await until(pilot, voice.speech_written.is_set, "the question spoken")
            await pilot.press("f5")
            await until(pilot, lambda: bool(spoken_lines(app)), "the transcript")
            await until(
                pilot,
                lambda: bool(answers(app)) and answers(app)[0].status == "completed",
                "the answer",
            )
            assert {"capital", "france"} <= set(normalize(spoken_lines(app)[0]))
            assert answers(app)[0].text == "".join(ANSWER)
            assert not app.of_type("input_audio.speech_started")  # the key, not the VAD


async def test_without_a_microphone_the_app_says_so_and_typing_works() -> None:
    async with running_server(scripted_backend(ANSWER), ToneTTS()) as server:
        app = VoiceChatApp(server.url, device="null", mic=True, input_device="no-such-mic-xyz")
        async with app.run_test() as pilot:
            said = [str(n.render()) for n in notices(app)]
            assert len(said) == 1
            assert said[0].startswith("No microphone found") and said[0].endswith("type instead.")
            assert app.microphone is None and "no microphone" in status(app)
            await until(pilot, lambda: app.connection is not None, "the connection")
            await send(pilot, "hi")
            await until(pilot, lambda: bool(answers(app)) and answers(app)[0].status, "an answer")
            assert answers(app)[0].text == "".join(ANSWER)
            assert app.query_one("#message", Input).value == ""


async def test_a_server_without_speech_input_leaves_a_text_chat(voice: MicrophoneFeeder) -> None:
    async with running_server(scripted_backend(ANSWER), ToneTTS()) as server:  # no speech
        app = RecordingApp(server.url, device="null", mic=True, input_device=PACED_DEVICE)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.connection is not None, "the connection")
            assert app.microphone is not None and not app.speech_input
            assert any("speech input off" in str(n.render()) for n in notices(app))
            assert "speech input off" in status(app)
            await send(pilot, "hi")
            await until(pilot, lambda: bool(answers(app)) and answers(app)[0].status, "an answer")
            assert answers(app)[0].status == "completed"
            assert app.microphone.frames_captured > 0  # it did hear the room…
            assert not app.of_type("error")  # …and sent none of it (session.created said so)


# --- the microphone itself ----------------------------------------------------------------------


def sine(frequency: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_the_framer_resamples_to_16_khz_and_cuts_20_ms_frames_across_blocks() -> None:
    framer = Framer(48000)
    tone = sine(1000, 1.0, 48000)
    frames: list[bytes] = []
    for start in range(0, len(tone), 441):  # blocks that do not divide into frames
        frames += framer.push(tone[start : start + 441])
    assert {len(frame) for frame in frames} == {640}  # 320 samples of PCM16: 20 ms at 16 kHz
    assert 48 <= len(frames) <= 50  # one second, less the resampler's delay
    samples = np.frombuffer(b"".join(frames), "<i2")
    assert dominant_frequency(samples, RATE) == pytest.approx(1000, abs=5)
    steady = samples[len(samples) // 4 : -len(samples) // 4]
    assert np.abs(steady).max() == pytest.approx(0.5 * 32767, rel=0.02)  # no gain, no clipping

    native = Framer(RATE, frame_ms=40)
    assert native.push(np.zeros(1000, np.int16)) == [bytes(1280)] * 1  # 640 samples; 360 wait
    assert native.push(np.zeros(280, np.int16)) == [bytes(1280)]


def test_the_level_meter_reads_rms_dbfs_and_holds_its_peak() -> None:
    now = [100.0]
    meter = LevelMeter(clock=lambda: now[0])
    assert meter.level_db == FLOOR_DB and meter_bar(meter.peak_db) == "·····"
    meter.update(sine(440, 0.02, RATE, amplitude=1.0))
    assert meter.level_db == pytest.approx(-3.0, abs=0.1)  # a full-scale sine
    assert meter_bar(meter.peak_db) == "▁▂▃▅▇"
    meter.update(np.zeros(320, np.int16))
    assert meter.level_db == FLOOR_DB
    assert meter.peak_db == pytest.approx(-3.0, abs=0.1)  # held…
    now[0] += 0.5 + 1.0
    assert meter.peak_db == pytest.approx(-33.0, abs=0.1)  # …then falling at 30 dB/s
    assert meter_bar(meter.peak_db) == "▁▂▃··"
    meter.update(sine(440, 0.02, RATE, amplitude=0.01))
    assert meter.level_db == pytest.approx(-43.0, abs=0.2)
    now[0] += 10
    assert meter.peak_db == FLOOR_DB


def test_a_consumer_that_falls_behind_loses_the_oldest_frames_counted() -> None:
    # Not started: only the loop's side runs, fed as the PortAudio callback would feed it.
    microphone = Microphone("unused", sample_rate=RATE, max_buffered_ms=100)
    for n in range(8):
        microphone.receive(np.full(320, n, np.int16))
    assert microphone.dropped_frames == 3
    kept = microphone.read_nowait()
    assert [np.frombuffer(frame, "<i2")[0] for frame in kept] == [3, 4, 5, 6, 7]


async def test_a_device_that_records_at_another_rate_still_gives_16_khz_frames(
    voice: MicrophoneFeeder,
) -> None:
    mic = Microphone(PACED_DEVICE, sample_rate=44100)  # as a card that cannot record 16 kHz
    tone = sine(1000, 1.5, RATE)
    received: list[bytes] = []
    levels: list[float] = []
    mic.start()
    try:
        voice.say(bytes(RATE // 5 * 2) + tone.astype("<i2").tobytes())  # 200 ms of quiet first

        async def collect() -> None:
            async for frame in mic.frames():
                received.append(frame)
                levels.append(mic.level_db)
                if voice.speech_written.is_set() and len(received) >= 100:
                    return

        async with asyncio.timeout(20):
            await collect()
    finally:
        mic.close()
    assert {len(frame) for frame in received} == {640}
    samples = np.frombuffer(b"".join(received), "<i2")
    loud = samples[np.abs(samples) > 1000]
    assert len(loud) > RATE // 2
    assert dominant_frequency(samples, RATE) == pytest.approx(1000, abs=5)
    assert max(levels) == pytest.approx(-9.0, abs=0.2)  # a half-scale sine
    assert min(levels) == FLOOR_DB  # the silence before it


def test_list_devices_shows_the_microphone(microphone: PulseDaemon, audio_env: AudioEnv) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voicechat", "talk", "--list-devices"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outputs, _, inputs = result.stdout.partition("inputs (--input-device):")
    assert "null" in outputs
    assert "pulse" in inputs

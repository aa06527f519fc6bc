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
import base64
import json
import subprocess
import sys
import threading
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
from voicechat.audio.player import AudioPlayer
from voicechat.audio.wav import encode_wav
from voicechat.server import VoiceChatServer
from voicechat.tts.tone import ToneTTS, tone_pcm
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
            assert in_order(app.states, ["listening", "hearing you", "thinking", "speaking"])
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


# --- the conversation feel: held playback, "still your turn" (issue 22) ----------------------


class ScriptedServer:
    """Test double for the server: a WebSocket peer that sends `session.created` (speech input
    on), then exactly the frames the test hands to `send()`, when it does; it records every
    frame the app sends. It stages what a real server does only at moments a test cannot pick
    (a pause, a resume, a judged end of turn at a known point of the answer's playback)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> ScriptedServer:
        from websockets.asyncio.server import serve

        self._server = await serve(self._run, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/chat/stream"

    def send(self, frame: dict[str, Any]) -> None:
        self._outbox.put_nowait(frame)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.received if frame.get("type") == kind]

    async def _run(self, connection: Any) -> None:
        await connection.send(json.dumps({
            "type": "session.created", "session_id": "scripted", "protocol": "voicechat.v1",
            "llm": "scripted", "tts": "tone", "stt": "whisper:tiny.en",
            "input_audio": {"turn_mode": "server_vad", "turn_detection": "semantic",
                            "eagerness": "medium"},
        }))  # fmt: skip

        async def read() -> None:
            async for raw in connection:
                self.received.append(json.loads(raw))

        reader = asyncio.create_task(read())
        while True:  # until the app goes (the reader ends): then the handler ends too
            frame = asyncio.ensure_future(self._outbox.get())
            await asyncio.wait({frame, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not frame.done():
                frame.cancel()
                return
            await connection.send(json.dumps(frame.result()))


def audio_chunk(response_id: str, segment: int, text: str) -> dict[str, Any]:
    """One audio.chunk of `text` said by the tone voice (at its 22,050 Hz)."""
    wav = encode_wav(tone_pcm(text, 22050), 22050)
    return {"type": "audio.chunk", "response_id": response_id, "seq": segment,
            "segment": segment, "text": text, "format": "wav", "sample_rate": 22050,
            "audio": base64.b64encode(wav).decode()}  # fmt: skip


class HeldPlaybackApp(RecordingApp):
    """Test double: the recording app, its player the paced null output (a sound card's pace,
    no device) with a count of the blocks handed out, so a test can let the output run on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocks = 0
        self.silent_blocks = 0  # blocks of nothing but silence
        self._blocks_lock = threading.Lock()

    def _count(self, block: np.ndarray) -> None:
        with self._blocks_lock:
            self.blocks += 1
            self.silent_blocks += not block.any()

    def _open_player(self) -> None:
        self.player = AudioPlayer("null", tap=self._count)
        self.player.__enter__()


LONG_UNIT = "A long sentence that keeps on playing while the user makes a sound over it. "


async def playing(pilot: Any, app: HeldPlaybackApp, server: ScriptedServer, rid: str) -> None:
    """Start answer `rid` (three long units) and wait until its audio is heard."""
    server.send({"type": "response.created", "response_id": rid, "in_reply_to": None})
    server.send({"type": "text.delta", "response_id": rid, "text": LONG_UNIT * 3})
    for segment in range(3):
        server.send(audio_chunk(rid, segment, LONG_UNIT))
    assert app.player is not None
    await until(pilot, lambda: app.player.stats.samples_played > 0, f"{rid} playing")
    await until(pilot, lambda: app.mic_state() == "speaking", "speaking")


async def delivered(pilot: Any, app: HeldPlaybackApp, server: ScriptedServer) -> None:
    """Until the app has handled every frame sent so far (a marker frame it ignores is last)."""
    count = len(app.of_type("input_audio.cleared")) + 1
    server.send({"type": "input_audio.cleared"})
    await until(pilot, lambda: len(app.of_type("input_audio.cleared")) == count, "the marker")


async def held(pilot: Any, app: HeldPlaybackApp) -> int:
    """Wait until the player holds (faded out), then 10 blocks more; the samples played."""
    assert app.player is not None
    await until(pilot, lambda: app.player.paused, "the hold")
    await until(pilot, lambda: app.player.queue._gain == 0, "the fade into the hold")
    played = app.player.stats.samples_played
    silent = app.silent_blocks
    await until(pilot, lambda: app.silent_blocks >= silent + 10, "the output to run on, held")
    assert app.player.stats.samples_played == played  # held: not one sample more
    return played


async def test_a_sound_over_the_answer_holds_it_and_a_resume_plays_on_without_a_loss(
    voice: MicrophoneFeeder,
) -> None:
    async with ScriptedServer() as server:
        app = HeldPlaybackApp(server.url, device="null", mic=True, input_device=PACED_DEVICE)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.speech_input, "speech input on")
            await playing(pilot, app, server, "r1")
            assert app.player is not None

            server.send({"type": "response.audio.paused", "response_id": "r-other"})
            await delivered(pilot, app, server)
            assert not app.player.paused  # another answer's pause: not this one's
            server.send({"type": "response.audio.paused", "response_id": "r1"})
            await held(pilot, app)
            assert app.mic_state() == "paused" and "paused" in status(app)
            assert app.player.now_playing == ("r1", 0)  # the highlight stays where it was
            server.send(audio_chunk("r1", 3, "More."))  # arrives while held: queued
            server.send({"type": "response.done", "response_id": "r1", "status": "completed",
                         "text": LONG_UNIT * 3 + "More."})  # fmt: skip
            await until(pilot, lambda: answers(app)[0].status == "completed", "the done")
            assert app.player.paused  # a completed answer stays held

            server.send({"type": "response.audio.resumed", "response_id": "r1"})
            await until(pilot, lambda: not app.player.paused, "the resume")
            await until(pilot, lambda: app.mic_state() == "speaking", "speaking again")
            await until(pilot, lambda: not app.player.queue.busy, "the answer played out")
            assert app.player.stats.dropped_samples == 0  # every sample played, after all
            assert in_order(app.states, ["listening", "speaking", "paused", "speaking"])
            await until(pilot, lambda: app.mic_state() == "listening", "listening")
            # A pause for an answer that has played out holds nothing.
            server.send({"type": "response.audio.paused", "response_id": "r1"})
            await delivered(pilot, app, server)
            assert not app.player.paused and app.mic_state() == "listening"
        assert not server.of_type("response.truncate")  # nothing was interrupted


async def test_a_held_answer_that_turns_out_interrupted_is_flushed_and_truncated_where_held(
    voice: MicrophoneFeeder,
) -> None:
    async with ScriptedServer() as server:
        app = HeldPlaybackApp(server.url, device="null", mic=True, input_device=PACED_DEVICE)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.speech_input, "speech input on")
            await playing(pilot, app, server, "r1")
            assert app.player is not None
            server.send({"type": "response.audio.paused", "response_id": "r1"})
            played = await held(pilot, app)

            server.send({"type": "input_audio.speech_started", "item_id": "i1",
                         "audio_start_ms": 900})  # fmt: skip
            await until(pilot, lambda: not app.player.paused, "the flush")
            assert app.mic_state() == "hearing you"
            assert app.player.now_playing is None and not app.player.queue.busy
            assert app.player.stats.dropped_samples > 0  # what was held is gone
            server.send({"type": "response.audio.resumed", "response_id": "r1"})  # too late
            server.send({"type": "response.done", "response_id": "r1", "status": "cancelled",
                         "text": LONG_UNIT})  # fmt: skip
            await until(pilot, lambda: bool(server.of_type("response.truncate")), "the truncate")
            assert not app.player.paused and app.player.stats.samples_played == played
            # What was heard: up to where the answer was held.
            heard_ms = round(1000 * played / app.player.sample_rate)
            assert server.of_type("response.truncate") == [
                {"type": "response.truncate", "response_id": "r1", "audio_end_ms": heard_ms}
            ]

            # Held again (a second answer), then cancelled with no speech_started: flushed.
            await playing(pilot, app, server, "r2")
            server.send({"type": "response.audio.paused", "response_id": "r2"})
            await held(pilot, app)
            server.send({"type": "response.done", "response_id": "r2", "status": "cancelled",
                         "text": ""})  # fmt: skip
            await until(pilot, lambda: not app.player.paused, "the flush")
            assert not app.player.queue.busy
            await until(pilot, lambda: len(server.of_type("response.truncate")) == 2, "truncate")
            assert app.mic_state() not in ("paused", "speaking")


async def test_an_unfinished_thought_shows_still_your_turn_until_the_turn_ends(
    voice: MicrophoneFeeder,
) -> None:
    async with ScriptedServer() as server:
        app = HeldPlaybackApp(server.url, device="null", mic=True, input_device=PACED_DEVICE)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.speech_input, "speech input on")

            def end_of_turn(complete: bool | None) -> None:
                server.send({"type": "input_audio.end_of_turn", "item_id": "i1", "audio_ms": 900,
                             "complete": complete, "wait_ms": 1500})  # fmt: skip

            server.send({"type": "input_audio.speech_started", "item_id": "i1",
                         "audio_start_ms": 0})  # fmt: skip
            await until(pilot, lambda: app.mic_state() == "hearing you", "hearing you")
            end_of_turn(False)
            await until(pilot, lambda: app.mic_state() == "still your turn…", "still your turn")
            assert "still your turn…" in status(app)
            end_of_turn(None)  # not judged: the silence rule decides
            await until(pilot, lambda: app.mic_state() == "hearing you", "hearing you again")
            end_of_turn(False)
            await until(pilot, lambda: app.mic_state() == "still your turn…", "unfinished again")
            server.send({"type": "input_audio.speech_stopped", "item_id": "i1",
                         "audio_end_ms": 2400})  # fmt: skip
            await until(pilot, lambda: app.mic_state() == "thinking", "thinking")
            server.send({"type": "input_audio.committed", "item_id": "i1", "audio_ms": 2400,
                         "truncated": False})  # fmt: skip
            server.send({"type": "input_audio.transcript", "item_id": "i1",
                         "text": "So I was wondering", "language": "en", "stt_ms": 0})  # fmt: skip
            await until(pilot, lambda: bool(spoken_lines(app)), "the transcript")
            assert app.mic_state() == "thinking"
            server.send({"type": "input_audio.speech_started", "item_id": "i2",
                         "audio_start_ms": 5000})  # fmt: skip
            await until(pilot, lambda: app.mic_state() == "hearing you", "the next turn")
            end_of_turn(False)
            await until(pilot, lambda: app.mic_state() == "still your turn…", "unfinished")
            end_of_turn(True)  # about to end: no longer "still your turn"
            await until(pilot, lambda: app.mic_state() == "hearing you", "hearing you")
            assert in_order(
                app.states,
                ["listening", "hearing you", "still your turn…", "hearing you",
                 "still your turn…", "thinking", "hearing you", "still your turn…",
                 "hearing you"],
            )  # fmt: skip

"""The gapless player through real PortAudio (sounddevice) on headless outputs.

ALSA's null device consumes as fast as it is given: used for sample-exactness. The PulseAudio null
sink plays in real time: used for underruns, latency and for proving sound really went out.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import soxr

from tests.audio_env import MonitorRecording
from tests.conftest import WAIT_S, running_server, scripted_backend
from voicechat.audio.player import AudioPlayer
from voicechat.audio.wav import encode_wav
from voicechat.client.ask import ask
from voicechat.tts.tone import ToneTTS, tone_pcm


def wav_chunks(texts: list[str], rate: int) -> list[bytes]:
    """Distinct, non-silent WAV chunks (the tone voice's samples for each text)."""
    return [encode_wav(tone_pcm(text, rate, 60.0), rate) for text in texts]


def samples_of(wav: bytes) -> np.ndarray:
    return np.frombuffer(wav[44:], dtype="<i2")


class Tap:
    """Collects every block the output callback hands to PortAudio."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.lock = threading.Lock()

    def __call__(self, block: np.ndarray) -> None:
        with self.lock:
            self.blocks.append(block)

    def played(self) -> np.ndarray:
        with self.lock:
            return np.concatenate(self.blocks)


TEXTS = ["One two three.", "Four five six seven.", "Eight.", "Nine ten eleven twelve thirteen."]


def test_same_rate_playback_is_sample_exact(null_audio_device: str) -> None:
    tap = Tap()
    chunks = wav_chunks(TEXTS, 22050)
    player = AudioPlayer(null_audio_device, sample_rate=22050, tap=tap)
    for index, chunk in enumerate(chunks):  # queued before the stream starts: no lead-in
        player.enqueue_wav(chunk, label=index)
    player.finish()
    with player:
        assert player.queue.wait_drained(WAIT_S)
    expected = np.concatenate([samples_of(chunk) for chunk in chunks])
    played = tap.played()
    assert np.array_equal(played[: len(expected)], expected)
    assert not played[len(expected) :].any()  # only silence after the last chunk
    assert player.stats.samples_played == len(expected)
    assert player.stats.underruns == 0


def test_other_rates_are_resampled_seamlessly_to_the_device_rate(null_audio_device: str) -> None:
    tap = Tap()
    chunks = wav_chunks(TEXTS, 22050)
    player = AudioPlayer(null_audio_device, sample_rate=48000, tap=tap)
    for index, chunk in enumerate(chunks):
        player.enqueue_wav(chunk, label=index)
    player.finish()
    with player:
        assert player.queue.wait_drained(WAIT_S)

    # One continuous resampling of the whole answer: what a gapless player must produce.
    reference = soxr.ResampleStream(22050, 48000, 1, dtype="int16")
    expected = np.concatenate(
        [reference.resample_chunk(samples_of(chunk)) for chunk in chunks]
        + [reference.resample_chunk(np.zeros(0, np.int16), last=True)]
    )
    total_in = sum(len(samples_of(chunk)) for chunk in chunks)
    assert player.stats.samples_played == len(expected) == round(total_in * 48000 / 22050)
    assert np.array_equal(tap.played()[: len(expected)], expected)


def test_the_device_rate_is_used_when_none_is_asked(null_audio_device: str) -> None:
    import sounddevice as sd

    device_rate = int(sd.query_devices(null_audio_device, "output")["default_samplerate"])
    assert device_rate != 22050  # else this test could not tell resampled from passed through
    tap = Tap()
    chunk = wav_chunks(["Hi there."], 22050)[0]
    player = AudioPlayer(null_audio_device, tap=tap)
    assert player.sample_rate == device_rate
    player.enqueue_wav(chunk)  # queued before the stream starts: no lead-in
    player.finish()
    with player:
        assert player.queue.wait_drained(WAIT_S)
    # What reached the device is the chunk resampled to the device's rate, sample for sample.
    reference = soxr.ResampleStream(22050, device_rate, 1, dtype="int16")
    expected = np.concatenate(
        [
            reference.resample_chunk(samples_of(chunk)),
            reference.resample_chunk(np.zeros(0, np.int16), last=True),
        ]
    )
    assert player.stats.samples_played == len(expected)
    assert np.array_equal(tap.played()[: len(expected)], expected)


def test_paced_playback_really_sounds_and_counts_no_underrun_when_fed_in_time(
    paced_audio_device: str, paced_audio_monitor: Callable[..., MonitorRecording]
) -> None:
    chunks = wav_chunks(TEXTS[:2], 22050)
    with paced_audio_monitor() as recording, AudioPlayer(paced_audio_device) as player:
        for index, chunk in enumerate(chunks):
            player.enqueue_wav(chunk, label=index)
        player.finish()
        assert player.queue.wait_drained(WAIT_S)
    assert player.stats.underruns == 0
    assert player.stats.latencies_ms and player.stats.latencies_ms[0] > 0
    assert np.abs(recording.samples()).max() > 0.05  # the sink's monitor heard the tone


def test_a_chunk_that_arrives_late_is_one_underrun_on_a_paced_device(
    paced_audio_device: str,
) -> None:
    first, second = wav_chunks(["Short.", "Then more words."], 22050)
    with AudioPlayer(paced_audio_device) as player:
        player.enqueue_wav(first, label=0)
        # The answer is not finished: wait until the device has used up the first chunk.
        deadline = time.monotonic() + WAIT_S
        while not player.stats.underruns:  # poll the audio thread's counter
            assert time.monotonic() < deadline, "the paced device never used up the first chunk"
            time.sleep(0.01)
        player.enqueue_wav(second, label=1)  # late: after the queue ran dry
        player.finish()
        assert player.queue.wait_drained(WAIT_S)
    assert player.stats.underruns == 1
    assert len(player.stats.latencies_ms) == 2  # both chunks found the player idle


async def ask_with_player(player: AudioPlayer) -> list[dict[str, Any]]:
    """`ask --play --json` in-process against a scripted server; its JSON lines."""
    sentences = ["The moon is bright tonight.", " Owls hunt at night."]
    async with running_server(scripted_backend(sentences), ToneTTS()) as server:
        out = io.StringIO()
        with player:
            code = await ask(
                "moon?", server_url=server.url, json_lines=True, player=player, stdout=out
            )
    assert code == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_ask_play_plays_every_sample_it_received(null_audio_device: str) -> None:
    lines = await ask_with_player(AudioPlayer(null_audio_device, sample_rate=22050))
    report = lines[-1]
    audio = [line for line in lines if line["type"] == "audio.chunk"]
    sent = sum(len(base64.b64decode(chunk["audio"])) - 44 for chunk in audio) // 2
    assert report["type"] == "playback"
    assert report["sample_rate"] == 22050
    assert report["samples_played"] == sent


async def test_ask_play_on_a_paced_device_reports_no_underrun(paced_audio_device: str) -> None:
    lines = await ask_with_player(AudioPlayer(paced_audio_device))
    report = lines[-1]
    assert report["type"] == "playback"
    assert report["underruns"] == 0
    assert report["samples_played"] > 0
    assert report["arrival_to_sound_ms_p50"] > 0

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


def never_silent(count: int, start: int) -> np.ndarray:
    """Samples that are never zero, even scaled down by a fade: silence in the output is
    then exactly the held time, and every sample can be found again."""
    return (2000 + (np.arange(count) + start) % 5000).astype(np.int16)


class PausingTap(Tap):
    """A Tap that pauses the player from inside the audio callback after `after` blocks: a
    hold at an exact, known place of the stream, however fast the null device consumes."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.player: AudioPlayer | None = None
        self.paused_at: int | None = None  # samples played when the pause was asked for
        self.held = threading.Event()

    def __call__(self, block: np.ndarray) -> None:
        super().__call__(block)
        if len(self.blocks) == self.after and self.player is not None:
            self.player.pause()
            self.paused_at = self.player.stats.samples_played
            self.held.set()

    def count(self) -> int:
        with self.lock:
            return len(self.blocks)


def wait_for_blocks(tap: PausingTap, count: int) -> None:
    """Until the output has handed `count` blocks to the device (polls its thread's list)."""
    deadline = time.monotonic() + WAIT_S
    while tap.count() < count:
        assert time.monotonic() < deadline, f"the device never took {count} blocks"
        time.sleep(0.005)


RATE_22K = 22050


def test_pause_holds_the_position_and_resume_plays_on_from_the_next_sample(
    null_audio_device: str,
) -> None:
    tap = PausingTap(after=3)
    player = AudioPlayer(null_audio_device, sample_rate=RATE_22K, tap=tap)
    tap.player = player
    first, second = never_silent(RATE_22K, 0), never_silent(RATE_22K // 2, 7)
    player.enqueue_pcm(first, RATE_22K, label="first")  # queued before the stream: no lead-in
    with player:
        assert tap.held.wait(WAIT_S)
        player.enqueue_pcm(second, RATE_22K, label="second")  # arrives during the hold: kept
        held_blocks = tap.count()
        wait_for_blocks(tap, held_blocks + 20)  # 20 more blocks (0.4 s) of holding
        played_while_held = player.stats.samples_played
        assert player.paused and player.queue.busy
        assert player.now_playing == "first"  # the highlight stays on the held unit
        player.resume()
        player.finish()
        assert player.queue.wait_drained(WAIT_S)

    blocks = tap.blocks
    block = len(blocks[0])
    assert tap.paused_at == 3 * block
    fade = player.queue._fade_frames
    # Held: after the fade, only silence, and the count of samples heard stood still.
    assert played_while_held <= tap.paused_at + fade
    assert not np.concatenate(blocks[held_blocks + 1 : held_blocks + 20]).any()
    played = tap.played()
    sound = played[played != 0]  # the held silence taken out
    expected = np.concatenate([first, second])
    assert len(sound) == len(expected)  # no sample lost, none repeated
    assert player.stats.samples_played == len(expected)
    # Exact, except that the volume ramps down into the hold and up out of it.
    ramp = slice(tap.paused_at, tap.paused_at + 2 * fade)
    differs = np.flatnonzero(sound != expected)
    assert len(differs) and differs.min() >= ramp.start and differs.max() < ramp.stop
    assert np.all(np.abs(sound[ramp]) <= np.abs(expected[ramp]))
    assert player.stats.underruns == 0  # the hold is no underrun


def test_a_stop_while_paused_drops_what_was_held_and_the_next_answer_plays_whole(
    null_audio_device: str,
) -> None:
    tap = PausingTap(after=2)
    player = AudioPlayer(null_audio_device, sample_rate=RATE_22K, tap=tap)
    tap.player = player
    first, nxt = never_silent(RATE_22K, 0), never_silent(RATE_22K // 4, 11)
    player.enqueue_pcm(first, RATE_22K, label="first")
    with player:
        assert tap.held.wait(WAIT_S)
        wait_for_blocks(tap, tap.count() + 5)
        heard = player.stats.samples_played
        player.flush()  # the pause ended in a barge-in
        assert not player.paused and player.now_playing is None
        player.enqueue_pcm(nxt, RATE_22K, label="next")
        player.finish()
        assert player.queue.wait_drained(WAIT_S)

    assert player.stats.dropped_samples == len(first) - heard  # all that was held
    played = tap.played()
    sound = played[played != 0]
    # What was heard of the first answer, then the next one from its first sample at full
    # volume: nothing of the held audio leaked out with the flush's fade.
    assert len(sound) == heard + len(nxt)
    assert np.array_equal(sound[heard:], nxt)
    assert np.array_equal(sound[: tap.paused_at], first[: tap.paused_at])


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

"""The player's queue on its own: what the output callback is handed, block by block."""

from __future__ import annotations

import numpy as np

from voicechat.audio.player import FADE_MS, PlaybackQueue

RATE = 8000


def ramp(count: int, start: int = 1) -> np.ndarray:
    return (np.arange(count) + start).astype(np.int16)


def read_blocks(queue: PlaybackQueue, blocks: int, size: int = 160) -> np.ndarray:
    out = []
    for _ in range(blocks):
        block = np.full(size, -1, dtype=np.int16)  # garbage that must be overwritten
        queue.read_into(block)
        out.append(block)
    return np.concatenate(out)


def test_chunks_come_out_as_one_seamless_stream_then_silence() -> None:
    queue = PlaybackQueue(RATE)
    chunks = [ramp(100), ramp(250, 1000), ramp(7, 5000)]
    for chunk in chunks:
        queue.push(chunk)
    queue.finish()
    played = read_blocks(queue, 3)
    expected = np.concatenate(chunks)
    assert np.array_equal(played[: len(expected)], expected)
    assert not played[len(expected) :].any()
    assert queue.stats.samples_played == len(expected)
    assert queue.stats.underruns == 0
    assert not queue.busy


def test_running_dry_mid_answer_is_one_underrun_and_the_end_is_none() -> None:
    queue = PlaybackQueue(RATE)
    queue.push(ramp(100))
    read_blocks(queue, 4)  # 100 samples of audio, then dry for three more blocks
    assert queue.stats.underruns == 1  # one dry spell, however many blocks it lasts
    queue.push(ramp(500))
    read_blocks(queue, 1)
    queue.finish()
    read_blocks(queue, 5)
    assert queue.stats.underruns == 1
    assert queue.stats.samples_played == 600


def test_silence_before_the_first_chunk_is_not_an_underrun() -> None:
    queue = PlaybackQueue(RATE)
    assert not read_blocks(queue, 3).any()
    assert queue.stats.underruns == 0


def test_flush_fades_out_within_a_few_milliseconds_and_drops_the_rest() -> None:
    queue = PlaybackQueue(RATE)
    queue.push(np.full(RATE, 10000, dtype=np.int16), label="unit 0")
    read_blocks(queue, 1)
    assert queue.now_playing == "unit 0"
    queue.flush()
    assert queue.now_playing is None
    played = read_blocks(queue, 2)
    fade = played[: RATE * FADE_MS // 1000]
    assert fade[0] == 10000
    assert np.all(np.diff(fade.astype(int)) <= 0)  # only ever quieter: no click
    assert not played[len(fade) :].any()
    assert queue.stats.dropped_samples == RATE - 160 - len(fade)
    assert queue.stats.underruns == 0

    queue.push(ramp(50), label="next answer")  # barge-in: the new answer plays normally
    assert np.array_equal(read_blocks(queue, 1)[:50], ramp(50))
    assert queue.now_playing == "next answer"


def test_labels_change_when_their_first_sample_is_played() -> None:
    queue = PlaybackQueue(RATE)
    queue.push(ramp(300), label=0)
    queue.push(ramp(300), label=1)
    queue.finish()
    read_blocks(queue, 1)  # samples 0-159
    assert queue.now_playing == 0
    read_blocks(queue, 1)  # 160-319: unit 1 starts at 300
    assert queue.now_playing == 1
    read_blocks(queue, 3)
    assert queue.now_playing is None
    assert len(queue.stats.latencies_ms) == 1  # only unit 0 arrived to an idle player


def test_muted_playback_keeps_time_but_writes_silence() -> None:
    queue = PlaybackQueue(RATE)
    queue.muted = True
    queue.push(ramp(200), label="x")
    assert not read_blocks(queue, 1).any()
    assert queue.stats.samples_played == 160
    assert queue.now_playing == "x"


def test_a_tap_sees_exactly_what_the_device_is_given() -> None:
    seen: list[np.ndarray] = []
    queue = PlaybackQueue(RATE, tap=seen.append)
    queue.push(ramp(200))
    played = read_blocks(queue, 2)
    assert np.array_equal(np.concatenate(seen), played)

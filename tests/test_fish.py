"""The Fish Speech client against a faithful test double on loopback (real HTTP, real httpx)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from voicechat.client.connection import ChatConnection
from voicechat.segmenter import Segmenter
from voicechat.tts.base import TTSError
from voicechat.tts.fish import FishSpeechTTS

from .conftest import (
    WAIT_S,
    audio_by_segment,
    collect_answer,
    gated_backend,
    read_until,
    running_server,
    scripted_backend,
)
from .fish_double import FishDouble, pcm_for_text, refused_url

SCRIPT = ["Fish speaks", " this first.", " And then", " this second", " sentence."]
TEXT = "".join(SCRIPT)


def _units(text: str) -> list[str]:
    seg = Segmenter()
    return seg.feed(text) + seg.flush()


@pytest.fixture
def fish() -> Iterator[FishDouble]:
    with FishDouble() as double:
        yield double


async def _synthesize(tts: FishSpeechTTS, text: str) -> tuple[bytes, set[int], int]:
    data, rates, pieces = b"", set(), 0
    async for pcm in tts.synthesize(text):
        data += pcm.data
        rates.add(pcm.sample_rate)
        pieces += 1
    return data, rates, pieces


@pytest.mark.parametrize("legacy_header", [False, True])
@pytest.mark.parametrize("chunk_bytes", [4097, 3, 1])
async def test_streamed_audio_is_sample_exact_whatever_the_chunking(
    fish: FishDouble, legacy_header: bool, chunk_bytes: int
) -> None:
    fish.legacy_wav_header = legacy_header
    fish.stream_chunk_bytes = chunk_bytes  # odd sizes split samples mid-byte
    tts = FishSpeechTTS(fish.url)
    try:
        data, rates, _ = await _synthesize(tts, "Hello from the double.")
    finally:
        await tts.aclose()
    assert data == pcm_for_text("Hello from the double.")
    assert rates == {44100}
    request = fish.requests[-1]
    assert request.headers["content-type"] == "application/msgpack"
    assert request.body["streaming"] is True and request.body["format"] == "wav"


async def test_non_streaming_audio_is_the_wav_the_server_sent(fish: FishDouble) -> None:
    tts = FishSpeechTTS(fish.url, streaming=False, reference_id="my-voice")
    try:
        data, rates, pieces = await _synthesize(tts, "Not streamed.")
    finally:
        await tts.aclose()
    assert (data, rates, pieces) == (pcm_for_text("Not streamed."), {44100}, 1)
    assert fish.requests[-1].body["streaming"] is False
    assert fish.requests[-1].body["reference_id"] == "my-voice"


async def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    with FishDouble(api_key="s3cret") as double:
        good, bad = FishSpeechTTS(double.url, api_key="s3cret"), FishSpeechTTS(double.url)
        try:
            data, _, _ = await _synthesize(good, "With key.")
            with pytest.raises(TTSError, match="401"):
                await _synthesize(bad, "Without key.")
        finally:
            await good.aclose()
            await bad.aclose()
    assert data == pcm_for_text("With key.")


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("fail_status", "HTTP 500"),
        ("truncate_after_bytes", "RemoteProtocolError"),
        ("garbage", "unusable audio"),
        ("refused", "ConnectError"),
        ("slow", "Timeout"),
    ],
)
async def test_every_server_fault_becomes_a_tts_error(
    fish: FishDouble, fault: str, match: str
) -> None:
    url, streaming, timeout = fish.url, True, 30.0
    if fault == "fail_status":
        fish.fail_status = 500
    elif fault == "truncate_after_bytes":
        fish.truncate_after_bytes = 1000
    elif fault == "garbage":
        fish.garbage, streaming = True, False
    elif fault == "refused":
        url = refused_url()
    elif fault == "slow":
        fish.first_byte_delay_s, timeout = 2.0, 0.2
    tts = FishSpeechTTS(url, streaming=streaming, timeout_s=timeout)
    try:
        with pytest.raises(TTSError, match=match):
            await _synthesize(tts, "This will not work.")
    finally:
        await tts.aclose()


async def test_a_whole_answer_through_fish_is_sample_exact_per_unit(fish: FishDouble) -> None:
    async with running_server(scripted_backend(SCRIPT), FishSpeechTTS(fish.url)) as server:
        async with ChatConnection(server.url) as conn:
            assert conn.session["tts"] == "fish"
            events = await collect_answer(conn, "go")
    units = _units(TEXT)
    chunks = [e for e in events if e["type"] == "audio.chunk"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert [c["text"] for c in chunks if c["text"]] == units
    pcm = audio_by_segment(events)
    assert [pcm[i] for i in range(len(units))] == [pcm_for_text(u) for u in units]
    assert sorted(r.body["text"] for r in fish.requests) == sorted(units)
    assert events[-1]["status"] == "completed"


async def test_fish_down_loses_each_unit_with_an_error_and_the_answer_completes() -> None:
    async with running_server(scripted_backend(SCRIPT), FishSpeechTTS(refused_url())) as server:
        async with ChatConnection(server.url) as conn:
            events = await collect_answer(conn, "go")
            again = await collect_answer(conn, "again")
    codes = [e["code"] for e in events if e["type"] == "error"]
    assert codes == ["tts_failed"] * len(_units(TEXT))
    assert not [e for e in events if e["type"] == "audio.chunk"]
    assert events[-1]["status"] == "completed"
    assert again[-1]["status"] == "completed"


async def test_cancel_closes_the_http_request_in_flight(fish: FishDouble) -> None:
    fish.hold = threading.Event()  # the double sends one chunk, then waits
    fish.stream_chunk_bytes = 4096
    gate = asyncio.Event()
    backend = gated_backend(["Only this sentence.", " More", " text"], gate)
    async with running_server(backend, FishSpeechTTS(fish.url)) as server:
        async with ChatConnection(server.url) as conn:
            await conn.send_user_message("go")
            async with asyncio.timeout(WAIT_S):
                await read_until(conn, "audio.chunk")
                await conn.cancel()
                event = await read_until(conn, "response.done")
            assert event["status"] == "cancelled"
            disconnected = await asyncio.to_thread(fish.wait_for_disconnect, WAIT_S)
    fish.hold.set()
    assert disconnected
    assert fish.in_flight() == 0


async def test_units_spread_over_several_fish_workers_least_busy_first() -> None:
    holds = [threading.Event() for _ in range(3)]
    doubles = [FishDouble().start() for _ in range(3)]
    tts = FishSpeechTTS([d.url for d in doubles])

    def requests_per_worker() -> list[int]:
        return [len([r for r in d.requests if r.path == "/v1/tts"]) for d in doubles]

    try:
        for double, hold in zip(doubles, holds, strict=True):
            double.hold, double.stream_chunk_bytes, double.serialize = hold, 4096, True
        async with asyncio.timeout(WAIT_S):
            streams = [tts.synthesize(f"Unit number {i}.") for i in range(3)]
            firsts = [await anext(stream) for stream in streams]  # three units in flight at once
            assert all(pcm.samples for pcm in firsts)
            assert requests_per_worker() == [1, 1, 1]

            # Every worker but one finishes; that one stays busy with its unit.
            kept = "Unit number 1."
            busy = next(i for i, d in enumerate(doubles) if d.requests[-1].body["text"] == kept)
            for index, hold in enumerate(holds):
                if index != busy:
                    hold.set()
            held = streams.pop(1)
            for stream in streams:
                async for _ in stream:
                    pass
            # Round-robin would send every third unit to the busy worker; least-busy never does.
            for number in range(6):
                text = f"Meanwhile unit {number}."
                asked = sum(requests_per_worker())
                stream = tts.synthesize(text)
                first = asyncio.ensure_future(anext(stream))
                # The busy worker (one request at a time) would not answer: look at where the
                # request went as soon as a worker has it, not at what comes back.
                while sum(requests_per_worker()) == asked:  # noqa: ASYNC110 - a thread records it
                    await asyncio.sleep(0.01)
                if requests_per_worker()[busy] != 1:
                    first.cancel()
                    raise AssertionError(f"unit {number} went to the busy worker")
                head = await first
                rest = [pcm.data async for pcm in stream]
                assert b"".join([head.data, *rest]) == pcm_for_text(text)
            counts = requests_per_worker()
            assert sum(counts) == 3 + 6
            idle_counts = [count for index, count in enumerate(counts) if index != busy]
            assert min(idle_counts) > 1, f"the idle workers did not share the load: {counts}"

            holds[busy].set()
            rest = [pcm.data async for pcm in held]
            assert b"".join([firsts[1].data, *rest]) == pcm_for_text(kept)
            after = [pcm async for pcm in tts.synthesize("All idle again.")]
            assert b"".join(p.data for p in after) == pcm_for_text("All idle again.")
    finally:
        for hold in holds:
            hold.set()
        await tts.aclose()
        for double in doubles:
            double.stop()

"""The speech-recognition scheduler's rules, on a fake recognizer the test finishes by hand
(FakeSTT: each call waits until the test says it is done), so every order is exact.

The same rules run with the real engines in tests/test_speech_bounds.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from voicechat.speech.scheduler import (
    ECHO,
    MAX_TURNS,
    SPECULATIVE,
    TURN,
    Job,
    STTBusy,
    STTScheduler,
)
from voicechat.speech.stt import STTError, Transcript

pytestmark = pytest.mark.asyncio

WAIT_S = 5.0


@dataclass
class Call:
    audio: bytes
    done: asyncio.Future[Transcript]
    cancelled: bool = False

    def finish(self) -> None:
        self.done.set_result(Transcript(self.audio.decode(), "en"))

    def fail(self, message: str) -> None:
        self.done.set_exception(STTError(message))


@dataclass
class FakeSTT:
    """A recognizer that answers only when the test finishes the call (fake: no model)."""

    concurrency: int = 1
    name: str = "fake"
    calls: asyncio.Queue[Call] = field(default_factory=asyncio.Queue)
    started: list[bytes] = field(default_factory=list)
    active: int = 0
    most_active: int = 0

    async def transcribe(self, pcm16: bytes, language: str | None) -> Transcript:
        call = Call(pcm16, asyncio.get_running_loop().create_future())
        self.started.append(pcm16)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        await self.calls.put(call)
        try:
            return await call.done
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        finally:
            self.active -= 1

    async def next_call(self) -> Call:
        async with asyncio.timeout(WAIT_S):
            return await self.calls.get()

    async def aclose(self) -> None:
        pass


async def result(job: Job) -> str:
    async with asyncio.timeout(WAIT_S):
        return (await job.future).text


async def run_in_order(stt: FakeSTT, count: int) -> list[bytes]:
    """Finish `count` calls one after the other, as the recognizer takes them."""
    order = []
    for _ in range(count):
        call = await stt.next_call()
        order.append(call.audio)
        call.finish()
    return order


async def test_sessions_take_turns_one_job_each() -> None:
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a, b, c = scheduler.session(), scheduler.session(), scheduler.session()
    jobs = [a.transcribe(b"a1", None, TURN)]
    first = await stt.next_call()  # a1 holds the recognizer while the others ask
    jobs += [a.transcribe(audio, None, TURN) for audio in (b"a2", b"a3")]
    jobs += [b.transcribe(b"b1", None, TURN), c.transcribe(b"c1", None, TURN)]
    assert scheduler.health()["stt_queued"] == 4
    assert scheduler.health()["stt_in_flight"] == 1
    first.finish()
    order = [b"a1", *await run_in_order(stt, 4)]
    assert order == [b"a1", b"b1", b"c1", b"a2", b"a3"]
    assert [await result(job) for job in jobs] == ["a1", "a2", "a3", "b1", "c1"]
    assert stt.most_active == 1
    assert scheduler.health() == {
        "stt_queued": 0,
        "stt_in_flight": 0,
        "stt_queued_max": 4,
        "stt_shed": 0,
        "stt_concurrency": 1,
    }


async def test_spammers_are_shed_and_a_newcomer_waits_behind_one_job_of_each() -> None:
    """The issue's load in miniature: three sessions say turn after turn faster than they are
    transcribed; a fourth asks one question."""
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    spammers = [scheduler.session() for _ in range(3)]
    accepted: list[Job] = []
    shed = 0
    for round_ in range(5):
        for index, spammer in enumerate(spammers):
            try:
                accepted.append(spammer.transcribe(f"s{index}-{round_}".encode(), None, TURN))
            except STTBusy:
                shed += 1
        if round_ == 0:
            held = await stt.next_call()  # the recognizer is busy from the first turn on
    assert len(accepted) == 3 * MAX_TURNS and shed == 3 * (5 - MAX_TURNS)
    assert scheduler.health()["stt_shed"] == shed
    asker = scheduler.session()
    question = asker.transcribe(b"question", None, TURN)
    assert scheduler.queued() == 3 * MAX_TURNS - 1 + 1  # one of them is running
    held.finish()
    order = await run_in_order(stt, 3 * MAX_TURNS)
    assert order.index(b"question") <= len(spammers)  # behind one job of each at most
    assert await result(question) == "question"
    assert scheduler.health()["stt_queued_max"] <= 3 * MAX_TURNS
    assert stt.most_active == 1


async def test_a_session_that_speaks_now_and_then_goes_ahead_of_busy_ones() -> None:
    """Least recently served first: two sessions with backlogs take turns, and a third that
    asks while they do is next, not behind a round of theirs."""
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a, b, c = scheduler.session(), scheduler.session(), scheduler.session()
    for name in (b"a1", b"a2", b"a3"):
        a.transcribe(name, None, TURN)
    for name in (b"b1", b"b2", b"b3"):
        b.transcribe(name, None, TURN)
    assert await run_in_order(stt, 2) == [b"a1", b"b1"]
    running = await stt.next_call()
    assert running.audio == b"a2"
    c.transcribe(b"c1", None, TURN)  # c was never served: it goes before b's second
    running.finish()
    assert await run_in_order(stt, 4) == [b"c1", b"b2", b"a3", b"b3"]


async def test_a_session_has_one_job_in_flight_even_with_room_for_more() -> None:
    stt = FakeSTT(concurrency=2)
    scheduler = STTScheduler(stt)
    a, b = scheduler.session(), scheduler.session()
    a.transcribe(b"a1", None, TURN)
    a.transcribe(b"a2", None, TURN)
    a.transcribe(b"a3", None, TURN)
    first = await stt.next_call()
    assert stt.calls.empty() and scheduler.health()["stt_in_flight"] == 1
    b.transcribe(b"b1", None, TURN)
    second = await stt.next_call()
    assert (first.audio, second.audio) == (b"a1", b"b1")
    first.finish()
    second.finish()
    assert sorted(await run_in_order(stt, 2)) == [b"a2", b"a3"]
    assert stt.most_active == 2


async def test_a_newer_speculation_replaces_the_older_and_waits_for_turns() -> None:
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a, b = scheduler.session(), scheduler.session()
    a.transcribe(b"a-turn", None, TURN)
    held = await stt.next_call()
    old = a.transcribe(b"a-spec-old", None, SPECULATIVE)
    new = a.transcribe(b"a-spec-new", None, SPECULATIVE)
    assert old.future.cancelled()
    b.transcribe(b"b-turn", None, TURN)
    assert scheduler.queued() == 2
    held.finish()
    # A turn anywhere goes before a speculation; the replaced one never reaches the engine.
    assert await run_in_order(stt, 2) == [b"b-turn", b"a-spec-new"]
    assert await result(new) == "a-spec-new"
    assert b"a-spec-old" not in stt.started


async def test_an_echo_check_goes_before_the_sessions_turns() -> None:
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a = scheduler.session()
    a.transcribe(b"turn1", None, TURN)
    held = await stt.next_call()
    a.transcribe(b"turn2", None, TURN)
    a.transcribe(b"echo", None, ECHO)
    held.finish()
    assert await run_in_order(stt, 2) == [b"echo", b"turn2"]


async def test_a_promoted_speculation_counts_as_a_turn() -> None:
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a, other = scheduler.session(), scheduler.session()
    other.transcribe(b"other", None, TURN)
    held = await stt.next_call()
    speculation = a.transcribe(b"spec", None, SPECULATIVE)
    a.promote(speculation)  # the turn ended on exactly this audio
    a.transcribe(b"turn2", None, TURN)
    a.transcribe(b"turn3", None, TURN)
    with pytest.raises(STTBusy):
        a.transcribe(b"turn4", None, TURN)
    late = a.transcribe(b"spec2", None, SPECULATIVE)
    with pytest.raises(STTBusy):
        a.promote(late)
    assert not late.future.done()  # the caller decides: the listener cancels it
    late.cancel()
    held.finish()
    assert await run_in_order(stt, 3) == [b"spec", b"turn2", b"turn3"]
    assert await result(speculation) == "spec"


async def test_cancelling_drops_a_job_waiting_or_running() -> None:
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a, b = scheduler.session(), scheduler.session()
    running = a.transcribe(b"running", None, TURN)
    call = await stt.next_call()
    waiting = b.transcribe(b"waiting", None, TURN)
    last = b.transcribe(b"last", None, TURN)
    waiting.cancel()
    running.cancel()
    assert await run_in_order(stt, 1) == [b"last"]
    assert call.cancelled  # stopped in the recognizer
    assert b"waiting" not in stt.started
    assert await result(last) == "last"
    assert scheduler.health()["stt_queued"] == 0


async def test_a_timeout_on_the_awaiter_drops_the_job() -> None:
    """The echo check's way: asyncio.timeout around `await job.future`."""
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a, b = scheduler.session(), scheduler.session()
    a.transcribe(b"busy", None, TURN)
    held = await stt.next_call()
    echo = b.transcribe(b"echo", None, ECHO)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await echo.future
    assert echo.future.cancelled()
    held.finish()
    after = b.transcribe(b"after", None, TURN)
    assert await run_in_order(stt, 1) == [b"after"]
    assert await result(after) == "after"
    assert b"echo" not in stt.started


async def test_a_job_cancelled_before_its_task_ran_frees_the_recognizer() -> None:
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a = scheduler.session()
    gone = a.transcribe(b"gone", None, SPECULATIVE)  # starts at once (its task is created)...
    gone.cancel()  # ...and is dropped before that task's first step
    kept = a.transcribe(b"kept", None, TURN)
    assert await run_in_order(stt, 1) == [b"kept"]
    assert await result(kept) == "kept"


async def test_an_engine_error_fails_that_job_only() -> None:
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a = scheduler.session()
    failing = a.transcribe(b"one", None, TURN)
    following = a.transcribe(b"two", None, TURN)
    (await stt.next_call()).fail("the recognizer crashed")
    with pytest.raises(STTError, match="crashed"):
        await result(failing)
    assert await run_in_order(stt, 1) == [b"two"]
    assert await result(following) == "two"


async def test_a_closed_session_leaves_nothing_behind() -> None:
    stt = FakeSTT()
    scheduler = STTScheduler(stt)
    a, b = scheduler.session(), scheduler.session()
    jobs = [a.transcribe(b"a1", None, TURN), a.transcribe(b"a2", None, TURN)]
    jobs.append(a.transcribe(b"a-spec", None, SPECULATIVE))
    call = await stt.next_call()
    a.close()
    assert all(job.future.cancelled() for job in jobs)
    assert scheduler.health()["stt_queued"] == 0
    b1 = b.transcribe(b"b1", None, TURN)
    assert await run_in_order(stt, 1) == [b"b1"]
    assert await result(b1) == "b1"
    assert call.cancelled
    await scheduler.aclose()

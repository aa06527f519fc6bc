"""Speech recognition shared fairly: every session's transcriptions wait here, in front of the
recognizer, instead of in its pipe.

One `STTScheduler` per server holds the recognizer (`SpeechToText`) and at most `concurrency`
requests in flight to it (the Whisper worker: 1, as it transcribes one turn at a time; a remote
server: a few). Each session gets a `SessionSTT` from it, and its jobs wait in the session's
own lines:

- ended turns (`TURN`), in the order they ended: at most `MAX_TURNS` per session, the one
  being transcribed included. One more is refused (`STTBusy`): the session sheds it with an
  error rather than queueing work nobody will wait for;
- one echo check (`ECHO`) and one speculative run (`SPECULATIVE`): a newer one replaces the
  older (cancelled: dropped from the line, or stopped in the recognizer);
- a session has at most one job in flight.

When the recognizer has room, the next job comes from the session served least recently (the
one whose last job started longest ago; never served comes first; a tie goes to the job that
has waited longest). Sessions that always have work take turns (round-robin), and one that
speaks now and then goes ahead of them: a session's turn waits behind at most one job of each
other session, and usually only behind the job in flight, never behind another's backlog.
Within a session an echo check goes first (an answer is playing and the barge-in waits for
it), then the ended turns. A speculative run uses spare capacity only: it starts when no
session has a turn or an echo check waiting. Once its turn ends on exactly the audio it was
given it becomes that turn's transcription (`promote`), with the turn's place in the line.

Cancelling a job's future (the session's `asyncio.timeout`, a task cancelled while awaiting
it, or `Job.cancel()`) drops it: from its line if it waits, from the recognizer if it runs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from voicechat.speech.stt import SpeechToText, Transcript

TURN, ECHO, SPECULATIVE = "turn", "echo", "speculative"
MAX_TURNS = 3  # a session's ended turns not yet transcribed: one running, two waiting


class STTBusy(Exception):
    """The session already has MAX_TURNS turns waiting for the recognizer: this one is shed."""


@dataclass(eq=False)
class Job:
    """One transcription. Await `future` for its Transcript (or STTError)."""

    owner: SessionSTT
    audio: bytes
    language: str | None
    kind: str
    seq: int  # the order jobs were asked for, server-wide
    future: asyncio.Future[Transcript] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[None] | None = None  # set once it runs in the recognizer
    settled: bool = False  # its place in the lines is freed

    def cancel(self) -> None:
        self.future.cancel()
        self.owner._scheduler._finished(self)  # now, not at the done callback's turn

    @property
    def running(self) -> bool:
        return self.task is not None


class SessionSTT:
    """One session's lines in the scheduler. `close()` drops every job it has."""

    def __init__(self, scheduler: STTScheduler) -> None:
        self._scheduler = scheduler
        self.turns: deque[Job] = deque()  # ended turns waiting, in the order they ended
        self.echo: Job | None = None  # waiting
        self.speculation: Job | None = None  # waiting
        self.running: Job | None = None
        self.turns_pending = 0  # TURN jobs not finished: waiting or running
        self.shed = 0
        self.last_started = 0  # the scheduler's `started` count at its last job's start

    def transcribe(self, audio: bytes, language: str | None, kind: str) -> Job:
        """Queue a job; STTBusy for a TURN when MAX_TURNS are already pending."""
        if kind == TURN:
            self._take_turn()
        self._scheduler.asked += 1
        job = Job(self, audio, language, kind, self._scheduler.asked)
        # A task awaiting the future and cancelled cancels the future: that frees it too.
        job.future.add_done_callback(lambda _: self._scheduler._finished(job))
        job.future.add_done_callback(_consume_exception)
        if kind == TURN:
            self.turns.append(job)
        else:  # a newer echo check or speculation replaces the older one
            older = self.echo if kind == ECHO else self.speculation
            if older is not None:
                older.cancel()  # (its callback clears the slot)
            if kind == ECHO:
                self.echo = job
            else:
                self.speculation = job
        self._scheduler._dispatch()
        return job

    def promote(self, job: Job) -> None:
        """A speculative job becomes its turn's transcription; STTBusy (the job is left as it
        is) when MAX_TURNS are already pending. A finished one needs nothing more."""
        if job.kind != SPECULATIVE:
            raise ValueError(f"a {job.kind} job cannot be promoted")
        if job.future.done():
            return
        self._take_turn()
        job.kind = TURN
        if self.speculation is job:
            self.speculation = None
            self.turns.append(job)
            self._scheduler._dispatch()

    def _take_turn(self) -> None:
        if self.turns_pending >= MAX_TURNS:
            self.shed += 1
            self._scheduler.shed += 1
            raise STTBusy(f"{self.turns_pending} earlier turns are still being transcribed")
        self.turns_pending += 1

    def waiting(self) -> int:
        return len(self.turns) + (self.echo is not None) + (self.speculation is not None)

    def next_job(self, speculative: bool) -> Job | None:
        """The job this session would run next: echo, then turns (or else its speculation).
        A job cancelled by a cancelled awaiter whose callback has not run yet is freed here."""
        while True:
            if speculative:
                job = self.speculation
            else:
                job = self.echo or (self.turns[0] if self.turns else None)
            if job is None or not job.future.done():
                return job
            self._scheduler._finished(job)

    def close(self) -> None:
        for job in [*self.turns, self.echo, self.speculation, self.running]:
            if job is not None:
                job.cancel()
        self._scheduler._forget(self)


class STTScheduler:
    """The server's one door to its recognizer; `session()` for each listener."""

    def __init__(self, stt: SpeechToText, concurrency: int | None = None) -> None:
        self.stt = stt
        self.concurrency = max(1, concurrency or getattr(stt, "concurrency", 1))
        self._sessions: list[SessionSTT] = []
        self._running: set[Job] = set()
        self.shed = 0  # turns refused since the start (STTBusy)
        self.max_queued = 0  # the most jobs ever waiting at once (high-water mark)
        self.started = 0  # jobs handed to the recognizer since the start
        self.asked = 0  # jobs asked for since the start

    def session(self) -> SessionSTT:
        queue = SessionSTT(self)
        self._sessions.append(queue)
        return queue

    def health(self) -> dict[str, int]:
        """For /healthz: jobs waiting and in flight now, the most ever waiting, turns shed."""
        return {
            "stt_queued": self.queued(),
            "stt_in_flight": len(self._running),
            "stt_queued_max": self.max_queued,
            "stt_shed": self.shed,
            "stt_concurrency": self.concurrency,
        }

    def queued(self) -> int:
        return sum(session.waiting() for session in self._sessions)

    async def aclose(self) -> None:
        for session in list(self._sessions):
            session.close()
        tasks = [job.task for job in self._running if job.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- inside -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start jobs while the recognizer has room: turns and echo checks first, from the
        session served least recently; speculation only when no session has either waiting."""
        while len(self._running) < self.concurrency:
            job = self._pick(speculative=False) or self._pick(speculative=True)
            if job is None:
                break
            self._start(job)
        self.max_queued = max(self.max_queued, self.queued())

    def _pick(self, *, speculative: bool) -> Job | None:
        best: Job | None = None
        for session in self._sessions:
            if session.running is not None:
                continue  # one job in flight per session
            job = session.next_job(speculative)
            if job is not None and (
                best is None
                or (session.last_started, job.seq) < (best.owner.last_started, best.seq)
            ):
                best = job
        return best

    def _start(self, job: Job) -> None:
        session = job.owner
        if job is session.echo:
            session.echo = None
        elif job is session.speculation:
            session.speculation = None
        else:
            session.turns.popleft()
        session.running = job
        self._running.add(job)
        self.started += 1
        session.last_started = self.started
        job.task = asyncio.create_task(self._run(job), name="stt-job")
        # (A callback, not a `finally`: a task cancelled before its first step runs no code.)
        job.task.add_done_callback(lambda _: self._ran(job))

    async def _run(self, job: Job) -> None:
        try:
            transcript = await self.stt.transcribe(job.audio, job.language)
        except Exception as exc:  # STTError, or a bug: the session reports it
            if not job.future.done():
                job.future.set_exception(exc)
        else:
            if not job.future.done():
                job.future.set_result(transcript)
        self._ran(job)  # now, before the awaiter wakes (the done callback does it again)

    def _ran(self, job: Job) -> None:
        """The job's task ended (done, failed or cancelled): its place goes to the next job."""
        if job not in self._running:
            return
        self._running.discard(job)
        if job.owner.running is job:
            job.owner.running = None
        if not job.future.done():  # the task was cancelled from outside (aclose)
            job.future.cancel()
        self._finished(job)
        self._dispatch()

    def _finished(self, job: Job) -> None:
        """A job is done (result, error or cancelled): free its place, once."""
        if not job.future.done() or job.settled:
            return
        job.settled = True
        session = job.owner
        if job.kind == TURN:
            session.turns_pending -= 1
        if job.task is not None:
            if job.future.cancelled() and job.task is not asyncio.current_task():
                job.task.cancel()  # stops it in the recognizer; _run frees the slot
        elif job is session.echo:
            session.echo = None
        elif job is session.speculation:
            session.speculation = None
        elif job in session.turns:
            session.turns.remove(job)

    def _forget(self, session: SessionSTT) -> None:
        if session in self._sessions:
            self._sessions.remove(session)


def _consume_exception(future: asyncio.Future[Transcript]) -> None:
    """A job nobody awaits (a speculation dropped with its error) must not log 'exception never
    retrieved'; the awaiter, if any, still gets the exception."""
    if not future.cancelled():
        future.exception()

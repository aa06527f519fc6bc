"""One answer, top to bottom as the data flows.

graph.astream(stream_mode="messages") -> TextDelta events -> speech-text filter -> Segmenter
-> one TTS task per unit, started at once (at most `tts_concurrency` synthesising)
-> an ordered sender that forwards unit 0's audio, then unit 1's, ... as AudioOut events.
The events (voicechat/events.py) go to the session, whose protocol adapter encodes them.

Cancellation is one mechanism: the session cancels the task running `Answer.run()`; the task
group cancels the LLM stream, every TTS task (closing their HTTP requests) and the sender.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage

from voicechat import events, protocol
from voicechat.events import ResponseOptions
from voicechat.llm.graph import SYSTEM_PROMPT_KEY
from voicechat.loop_guard import SpeechGate
from voicechat.settings import PipelineSettings
from voicechat.speech_text import SpeechTextFilter
from voicechat.tts.base import Pcm, TTSEngine, TTSError

log = logging.getLogger(__name__)

Emit = Callable[[events.Event], Awaitable[None]]

COMPLETED, CANCELLED, FAILED = "completed", "cancelled", "failed"
# The filter and the segmenter take at most a few µs per character even on hostile text
# (scripts/bench_segmenter.py --worst): a delta is fed in slices of this many characters, with
# the event loop free between them, so no delta holds the loop for more than a few ms.
PURE_STAGE_SLICE = 2048


class ClientGone(Exception):
    """Raised by `emit` when the client can take no more frames; ends the answer quietly."""


@dataclass
class _Unit:
    """One speech unit on its way through TTS; `pieces` ends with None or a TTSError."""

    index: int
    text: str
    pieces: asyncio.Queue[Pcm | TTSError | None] = field(default_factory=asyncio.Queue)


SILENT_TAG = "voicechat:silent"


def is_spoken(message: BaseMessage, metadata: dict[str, Any]) -> bool:
    """AI text is spoken, streamed or not, unless its model run is tagged voicechat:silent."""
    return isinstance(message, AIMessage | AIMessageChunk) and SILENT_TAG not in (
        metadata.get("tags") or ()
    )


def message_text(message: BaseMessage) -> str:
    """The text of a streamed message chunk (plain string or content blocks)."""
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(
        block.get("text", "") if isinstance(block, dict) else str(block)
        for block in content
        if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")
    )


class Answer:
    """Produces the frames of one response through `emit`; `run()` returns its final status."""

    def __init__(
        self,
        *,
        graph: Any,
        thread_id: str,
        user_text: str | None,
        response_id: str,
        tts: TTSEngine,
        emit: Emit,
        settings: PipelineSettings,
        started_at: float | None = None,
        user_message_id: str | None = None,
        options: ResponseOptions | None = None,
    ) -> None:
        self.graph = graph
        self.thread_id = thread_id
        self.user_text = user_text
        self.response_id = response_id
        self.tts = tts
        self.emit = emit
        self.settings = settings
        self.options = options or ResponseOptions()
        self.interrupted = False  # cancelled because the user spoke over it (set by the session)
        self.completed = False  # it ran to its end: all its text generated, all its audio sent
        self.started_at = time.perf_counter() if started_at is None else started_at
        self.text = ""  # the LLM's text exactly as generated
        # What was spoken, when the answer ended early (a loop, the speech budget, a token limit)
        # and the rest was not: what the conversation keeps and response.done says. Else None.
        self.kept_text: str | None = None
        self.first_text_at: float | None = None
        self.first_audio_at: float | None = None
        self.segments = 0
        self.audio_ms = 0.0
        self._seq = 0
        self.done_sent = False  # set by the session once response.done is queued
        self._tts_slots = asyncio.Semaphore(max(1, settings.tts_concurrency))
        self._tts_tasks: list[asyncio.Task[None]] = []
        self.truncated: str | None = None  # which limit ended the answer early, if one did
        # (audio start in ms, text) of each unit sent: what response.truncate maps time onto.
        self.unit_starts: list[tuple[float, str]] = []
        # Its own id, so that after a cancel we can tell whether the graph stored it already.
        # None: an answer to the conversation as it stands (Realtime's response.create).
        self.user_message = (
            None
            if user_text is None
            else HumanMessage(user_text, id=user_message_id or f"user-{response_id}")
        )
        # Without a user message: the id of the history's last message before this answer,
        # which the answer follows once stored ("" for an empty history).
        self._anchor: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        configurable = {"thread_id": self.thread_id}
        if self.options.instructions is not None:
            configurable[SYSTEM_PROMPT_KEY] = self.options.instructions
        return {"configurable": configurable}

    async def _history(self) -> tuple[list[BaseMessage], list[str | None], bool]:
        """The stored messages, their ids, and whether a run is still uncommitted."""
        state = await self.graph.aget_state(self.config)
        messages = state.values.get("messages", []) if state and state.values else []
        ids = [getattr(message, "id", None) for message in messages]
        return messages, ids, bool(state.tasks) if state else False

    def _stored_index(self, ids: list[str | None]) -> int | None:
        """Where the history holds this answer's assistant turn, if it does."""
        key = self.user_message.id if self.user_message is not None else self._anchor
        if key == "":
            return 0 if ids else None
        if key not in ids[:-1]:
            return None
        return ids.index(key) + 1

    async def run(self) -> str:
        """Stream the answer; return COMPLETED or FAILED. Cancellation propagates."""
        if self.settings.trace:
            self.settings.trace("start", self.started_at, {"response_id": self.response_id})
        units: asyncio.Queue[_Unit | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(self._send_in_order(units))
            try:
                await self._stream_text(group, units)
            except ClientGone:
                raise
            except Exception as exc:  # the LLM failed: nothing more of this answer is sent
                log.warning("LLM failed in response %s: %r", self.response_id, exc)
                for task in (sender, *self._tts_tasks):
                    task.cancel()
                await self.emit(
                    events.Error(protocol.LLM_FAILED, f"LLM failed: {exc}", self.response_id)
                )
                return FAILED
            units.put_nowait(None)
        self.completed = True
        return COMPLETED

    async def _stream_text(
        self, group: asyncio.TaskGroup, units: asyncio.Queue[_Unit | None]
    ) -> None:
        speech_filter = SpeechTextFilter()
        # The segmenter, and what of its units is spoken: loops end the answer, an unfinished
        # sentence is never spoken at a limit, the speech budget (voicechat/loop_guard.py).
        gate = SpeechGate(guard=self.settings.loop_guard, max_speech_s=self.settings.max_speech_s)
        index = 0

        def start_units(found: list[str]) -> None:
            nonlocal index
            if self.truncated == "max_audio" or not self.options.speak:
                return  # nothing more will be sent (or nothing is spoken): synthesise nothing
            for text in found:
                if self.settings.trace:
                    self.settings.trace("unit", time.perf_counter(), {"index": index, "text": text})
                unit = _Unit(index, text)
                index += 1
                self.segments += 1
                self._tts_tasks.append(group.create_task(self._synthesize(unit)))
                units.put_nowait(unit)

        if self.user_message is None:  # the answer will follow the history's last message
            _, ids, _ = await self._history()
            self._anchor = (ids[-1] or "") if ids else ""
        new = [] if self.user_message is None else [self.user_message]
        stream = self.graph.astream({"messages": new}, self.config, stream_mode="messages")
        message_id: str | None = None
        deltas = 0
        async with aclosing(stream):
            async for message, metadata in stream:
                if self.truncated:
                    break  # the audio limit was reached: stop the LLM too
                if not is_spoken(message, metadata):
                    continue
                if _hit_length_limit(message):  # the model's own --max-tokens ended it
                    self.truncated = "max_tokens"
                # A lone surrogate (e.g. from a JSON escape) cannot be encoded: U+FFFD instead.
                delta = protocol.without_lone_surrogates(message_text(message))
                if not delta:
                    continue  # every answer ends with an empty chunk
                if self.first_text_at is None:
                    self.first_text_at = time.perf_counter()
                speech = delta
                if message.id != message_id:
                    if message_id is not None:
                        speech = "\n" + delta  # a new message is a new sentence
                    message_id = message.id
                self.text += delta
                if self.settings.trace:
                    self.settings.trace("delta", time.perf_counter(), {"text": delta})
                await self.emit(events.TextDelta(self.response_id, delta))
                for start in range(0, len(speech), PURE_STAGE_SLICE):
                    if start:  # a huge delta (a user graph's whole answer): let others run
                        await asyncio.sleep(0)
                    piece = speech[start : start + PURE_STAGE_SLICE]
                    start_units(gate.feed(piece, speech_filter.feed(piece)))
                    if gate.stopped:
                        break
                if gate.stopped:  # a loop, or the speech budget is spent: stop the LLM
                    self.truncated = gate.stopped
                    log.info("response %s ended early: %s", self.response_id, gate.stopped)
                    break
                deltas += 1
                if deltas >= self.settings.max_answer_tokens:
                    self.truncated = self.truncated or "max_tokens"
                    log.info("response %s stopped at %d tokens", self.response_id, deltas)
                    break
        rest = speech_filter.flush()
        if self.truncated == "max_audio":
            return  # nothing more is spoken; the text stands as generated
        start_units(gate.cut(rest) if self.truncated else gate.finish(rest))
        self.truncated = self.truncated or gate.stopped  # a loop or the budget in the last units
        self.kept_text = gate.kept_text

    async def _synthesize(self, unit: _Unit) -> None:
        trace = self.settings.trace
        async with self._tts_slots:
            if trace:
                trace("tts_start", time.perf_counter(), {"index": unit.index})
            try:
                async with aclosing(self.tts.synthesize(unit.text)) as pieces:
                    async for pcm in pieces:
                        unit.pieces.put_nowait(pcm)
            except TTSError as exc:
                unit.pieces.put_nowait(exc)
                return
            except Exception as exc:  # a bug in an engine must not take the answer down
                log.exception("TTS engine %s crashed on unit %d", self.tts.name, unit.index)
                unit.pieces.put_nowait(TTSError(f"{type(exc).__name__}: {exc}"))
                return
            finally:
                if trace:
                    trace("tts_end", time.perf_counter(), {"index": unit.index})
        unit.pieces.put_nowait(None)

    async def _send_in_order(self, units: asyncio.Queue[_Unit | None]) -> None:
        while (unit := await units.get()) is not None:
            first = True
            while (piece := await unit.pieces.get()) is not None:
                if isinstance(piece, TTSError):
                    await self.emit(
                        events.Error(
                            protocol.TTS_FAILED,
                            f"speech unit {unit.index} lost: {piece}",
                            self.response_id,
                        )
                    )
                    break
                for part in split_pcm(piece, self.settings.max_chunk_ms):
                    if self.audio_ms + 1000 * part.samples / part.sample_rate > (
                        1000 * self.settings.max_answer_audio_s
                    ):
                        self._stop_at_audio_limit()
                        return
                    await self._send_audio(unit, part, first)
                    first = False

    def _stop_at_audio_limit(self) -> None:
        """Enough audio: no more synthesis, no more generation; the answer ends normally."""
        self.truncated = "max_audio"
        log.info("response %s stopped at %.0f s of audio", self.response_id, self.audio_ms / 1000)
        for task in self._tts_tasks:
            task.cancel()

    async def _send_audio(self, unit: _Unit, pcm: Pcm, first: bool) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
        if first:
            self.unit_starts.append((self.audio_ms, unit.text))
        self.audio_ms += 1000 * pcm.samples / pcm.sample_rate
        piece = events.AudioOut(
            self.response_id, self._seq, unit.index, unit.text if first else "", pcm
        )
        self._seq += 1
        await self.emit(piece)
        if self.settings.trace:
            self.settings.trace(
                "audio",
                time.perf_counter(),
                {"segment": unit.index, "seconds": pcm.samples / pcm.sample_rate},
            )

    def metrics(self) -> dict[str, Any]:
        def since_start(moment: float | None) -> float | None:
            return None if moment is None else round(1000 * (moment - self.started_at), 1)

        return {
            "first_text_ms": since_start(self.first_text_at),
            "first_audio_ms": since_start(self.first_audio_at),
            "total_ms": since_start(time.perf_counter()),
            "segments": self.segments,
            "audio_ms": round(self.audio_ms, 1),
        }

    @property
    def answer_text(self) -> str:
        """The answer as the conversation keeps it: the text as generated, or what was spoken
        of it when it ended early."""
        return self.text if self.kept_text is None else self.kept_text

    @property
    def history_text(self) -> str:
        """What the conversation keeps of an answer that ended early (cancelled, failed, cut
        by a limit): what was spoken. A small model given its own unfinished text repeats it
        in the next answer (docs/performance.md), so the text generated beyond the units whose
        audio was sent is not kept. An answer that ran to its end (a limit may have cut its
        text) and a text-only answer keep their text."""
        if self.kept_text is not None or not self.options.speak or self.completed:
            return self.answer_text
        return " ".join(text for _, text in self.unit_starts)

    def done_fields(self, status: str) -> dict[str, Any]:
        """response.done's optional fields: `truncated` (which limit or guard ended it early)
        and `silent` (it completed with nothing to say aloud: only emoji, symbols or code)."""
        fields: dict[str, Any] = {}
        if self.truncated:
            fields["truncated"] = self.truncated
        if status == COMPLETED and self.segments == 0 and self.options.speak:
            fields["silent"] = True
        return fields

    def done_event(self, status: str) -> events.ResponseDone:
        return events.ResponseDone(
            self.response_id,
            status,
            self.answer_text,
            self.metrics(),
            self.done_fields(status),
            interrupted=self.interrupted,
        )

    async def keep_partial_text(self) -> None:
        """After a cancel or failure: keep the user's message and what was said, so every user
        message is in the history exactly once and turns alternate. An answer cancelled before
        the graph even started stores its user message and an empty assistant turn.

        What was said is `history_text`: the speech units whose audio had been sent, not the
        text generated beyond them (response.done still reports that text, as protocol v1 has)."""
        text = self.history_text
        try:
            messages, ids, uncommitted = await self._history()
            stored_at = self._stored_index(ids)
            # `state.tasks` is empty once LangGraph committed the run. A cancel between the node's
            # return and that commit leaves the answer only as a task's pending write: the
            # snapshot shows it, but the next run's input (or any update) discards it, which
            # left two user messages in a row. Then the text is stored below, like any cancel.
            if stored_at is not None and not uncommitted:
                # The node finished and stored the answer after the user's message; when the
                # model's token limit cut it, only what was spoken stays (same id: replaced).
                stored = messages[stored_at]
                if stored.id and stored.content != text:
                    update = [AIMessage(text, id=stored.id)]
                    await self.graph.aupdate_state(self.config, {"messages": update})
                return
            # The user's message goes in again with its id: the reducer replaces it where the
            # graph had stored it, and appends it where it had not (cancelled before the graph
            # ran, or while its input was only a pending write, which this update supersedes).
            update: list[BaseMessage] = [AIMessage(text)]
            if self.user_message is not None:
                update.insert(0, self.user_message)
            await self.graph.aupdate_state(self.config, {"messages": update})
        except Exception:
            log.exception("could not store the partial answer of %s", self.response_id)

    def heard_text(self, audio_end_ms: int) -> str:
        """The units whose audio had begun by `audio_end_ms`: what the user heard of it."""
        if audio_end_ms >= self.audio_ms:
            return self.answer_text
        return " ".join(text for start, text in self.unit_starts if start < audio_end_ms)

    async def keep_heard_text(self, audio_end_ms: int) -> str:
        """response.truncate: the stored assistant turn becomes what the user heard."""
        text = self.heard_text(audio_end_ms)
        messages, ids, _ = await self._history()
        stored_at = self._stored_index(ids)
        if stored_at is None:
            raise LookupError("the conversation does not hold this answer")
        stored = messages[stored_at]
        if stored.id is not None and stored.content != text:
            update = [AIMessage(text, id=stored.id)]  # same id: the reducer replaces it
            await self.graph.aupdate_state(self.config, {"messages": update})
        return text


def _hit_length_limit(message: BaseMessage) -> bool:
    """Did the model stop because it reached its token limit (finish_reason "length", as
    OpenAI-compatible servers and the local model's worker report it)?"""
    metadata = getattr(message, "response_metadata", None) or {}
    return metadata.get("finish_reason") == "length"


def split_pcm(pcm: Pcm, max_ms: int) -> list[Pcm]:
    """Split PCM into pieces of at most `max_ms` (keeps every frame far below 1 MiB)."""
    step = max(1, pcm.sample_rate * max_ms // 1000) * 2
    if len(pcm.data) <= step:
        return [pcm]
    return [Pcm(pcm.data[i : i + step], pcm.sample_rate) for i in range(0, len(pcm.data), step)]

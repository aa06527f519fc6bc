"""Where voice to voice goes: bench_conversation's v2v part with the server's own moments.

    python scripts/profile_v2v.py [bench_conversation options, e.g. --quick]

Runs `bench_conversation.py --parts v2v` (the server is in this process) with marks wrapped
around the server's steps, and prints for each question, in ms from the client's end of speech:
the turn events (Paused: a speculative transcription starts), the speculative transcript, the
end-of-turn verdict, the preemptive answer, the turn's end and its confirmation, the LLM's call
and first token, and each TTS unit's start and first audio. A profiling aid: the wrappers
add microseconds, and the numbers to quote are bench_conversation's own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_conversation, bench_speech

import bench_conversation

import voicechat.llm.local as local_llm
import voicechat.session as session_module
import voicechat.speech.listener as listener_module
import voicechat.speech.semantic as semantic
import voicechat.tts.worker_voice as worker_voice

MARKS: list[tuple[float, str]] = []


def mark(what: str) -> None:
    MARKS.append((time.monotonic(), what))  # the event loop's clock, as the client's


def wrap() -> None:
    listener, session = listener_module.Listener, session_module.Session

    on_turn_event = listener._on_turn_event

    async def turn_event(self: Any, event: Any) -> None:
        mark(type(event).__name__)
        await on_turn_event(self, event)

    speculate = listener._speculate

    def speculating(self: Any, at_ms: int) -> None:
        speculate(self, at_ms)

        def heard(future: Any) -> None:
            ok = not future.cancelled() and future.exception() is None
            mark(f"speculative transcript {future.result().text!r}" if ok else "(dropped)")

        self._speculation[1].future.add_done_callback(heard)

    complete = semantic.EndOfTurnModel.complete

    async def judged(self: Any, text: str, eagerness: str) -> bool:
        mark("verdict asked")
        verdict = await complete(self, text, eagerness)
        mark(f"verdict: {'finished' if verdict else 'unfinished'}")
        return verdict

    preempt, confirm = session.preempt, session.confirm_preempted

    async def preempting(self: Any, item_id: str, text: str) -> None:
        mark("preemptive answer starts")
        await preempt(self, item_id, text)

    async def confirming(self: Any, item_id: str, ended_at: float) -> bool:
        confirmed = await confirm(self, item_id, ended_at)
        mark(f"held answer confirmed: {confirmed}")
        return confirmed

    synthesize = worker_voice.WorkerVoice.synthesize

    async def synthesizing(self: Any, text: str) -> AsyncGenerator[Any, None]:
        mark(f"TTS starts {text[:32]!r}")
        first = True
        async for pcm in synthesize(self, text):
            if first:
                mark("TTS first audio")
                first = False
            yield pcm

    astream = local_llm.WorkerChatModel._astream

    async def streaming(self: Any, messages: Any, *args: Any, **kwargs: Any) -> Any:
        mark("LLM called")
        first = True
        async for chunk in astream(self, messages, *args, **kwargs):
            if first:
                mark("LLM first token")
                first = False
            yield chunk

    listener._on_turn_event = turn_event  # type: ignore[method-assign]
    listener._speculate = speculating  # type: ignore[method-assign]
    semantic.EndOfTurnModel.complete = judged  # type: ignore[method-assign]
    session.preempt = preempting  # type: ignore[method-assign]
    session.confirm_preempted = confirming  # type: ignore[method-assign]
    worker_voice.WorkerVoice.synthesize = synthesizing  # type: ignore[method-assign]
    local_llm.WorkerChatModel._astream = streaming  # type: ignore[method-assign]

    voice_to_voice = bench_conversation.voice_to_voice

    async def profiled(conv: Any, case: dict[str, Any], voices: Any) -> dict[str, Any]:
        MARKS.clear()
        out = await voice_to_voice(conv, case, voices)
        end = conv.marks["speech_end"]
        print(f"--- {case['voice']} {case['question']!r}: first audio {out['total_ms']} ms")
        for at, what in MARKS:
            print(f"   {1000 * (at - end):7.0f}  {what}")
        return out

    bench_conversation.voice_to_voice = profiled


if __name__ == "__main__":
    wrap()
    sys.argv = [sys.argv[0], "--parts", "v2v", *sys.argv[1:]]
    bench_conversation.main()

"""Time to first audio against its physical limit, and against the seed's "before" design.

A scripted LLM with a realistic timeline (first token after --first-token-ms, then
--tokens-per-s) and the tone TTS (--tts-latency-ms plus --tts-rtf x audio duration) run in a real
`voicechat serve` process; this script talks to it over a real WebSocket.

The physical limit of first audio is derived from the script alone, never from the code under
test: the script is this benchmark's own text, whose first sentence (FIRST_SENTENCE) is the first
speech unit. A sentence end can only be known when the first character after it arrives (a "."
may be a decimal point: "3.14"), so the unit is complete when the delta carrying that character
is emitted on the script's timeline; add the tone voice's synthesis time for that sentence.
Overhead = first audio - limit, from the server's metrics (its clock starts when the message has
been read, stops before the frame is encoded and written) and at the client (from just before
`send` to the first audio.chunk received). Every answer's first audio.chunk is checked to carry
FIRST_SENTENCE: if the server cut the first unit elsewhere, the limit does not apply and the
script says so.
The "before" design (whole answer, then TTS of the whole text, then send) runs in-process on the
same scripted model and tone voice for the ratio.

    python scripts/bench_latency.py [--answers 50] [--json] [--plot timeline.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from voicechat.client.connection import ChatConnection
from voicechat.llm.scripted import ScriptedChatModel, parse_script
from voicechat.speech_text import SpeechTextFilter
from voicechat.tts.tone import ToneTTS

FIRST_SENTENCE = "The Moon is Earth's only natural satellite."  # the first speech unit
ANSWER = (
    f"{FIRST_SENTENCE} It orbits at about 384,400 kilometres. "
    "Its gravity drives the ocean tides. The same side always faces us. "
    "Twelve astronauts walked on it between 1969 and 1972. They brought back rocks and dust. "
    "The surface is covered in craters and dark plains. A day there lasts about a month. "
    "It is slowly drifting away from Earth. Scientists still study how it formed."
)


def make_script(first_token_ms: float, tokens_per_s: float) -> list[dict[str, Any]]:
    words = ANSWER.split(" ")
    tokens = [words[0]] + [" " + word for word in words[1:]]
    step = 1000 / tokens_per_s
    return [
        {"text": token, "delay_ms": first_token_ms if index == 0 else step}
        for index, token in enumerate(tokens)
    ]


def first_unit_timeline(script: list[dict[str, Any]]) -> dict[str, float]:
    """When, on the script's own timeline, FIRST_SENTENCE is written and when it is known to be
    over (the first non-space character after it arrives). No project code is involved."""
    text, clock, written = "", 0.0, None
    for item in script:
        clock += item["delay_ms"]
        text += item["text"]
        if written is None and len(text) >= len(FIRST_SENTENCE):
            if not text.startswith(FIRST_SENTENCE):
                raise ValueError("the script does not start with FIRST_SENTENCE")
            written = clock
        if written is not None and text[len(FIRST_SENTENCE) :].strip():
            return {"written_ms": written, "decided_ms": clock}
    raise ValueError("nothing follows FIRST_SENTENCE in the script")


def physical_limit_ms(script: list[dict[str, Any]], tts: ToneTTS) -> float:
    """The first unit known complete on the script's timeline, plus its TTS time."""
    return first_unit_timeline(script)["decided_ms"] + 1000 * tts.delay_s(FIRST_SENTENCE)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(script_path: Path, args: argparse.Namespace, port: int) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "voicechat", "serve", "--port", str(port),
        "--llm", f"scripted:{script_path}", "--tts", "tone",
        "--tone-latency-ms", str(args.tts_latency_ms), "--tone-rtf", str(args.tts_rtf),
        "--tts-concurrency", str(args.tts_concurrency), "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(200):  # wait until it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.communicate()[1]}") from None
            time.sleep(0.05)
    raise SystemExit("server did not start")


async def run_answers(url: str, count: int, turns: int) -> list[dict[str, Any]]:
    """Ask `count` times, one after another, `turns` answers per conversation."""
    answers: list[dict[str, Any]] = []
    while len(answers) < count:
        answers += await run_conversation(url, min(turns, count - len(answers)))
    return answers


async def run_conversation(url: str, count: int) -> list[dict[str, Any]]:
    """One connection, `count` answers; keep each answer's events with arrival times."""
    answers = []
    async with ChatConnection(url) as connection:
        for index in range(count):
            sent = time.perf_counter()
            await connection.send_user_message(f"question {index}")
            events = []
            async for event in connection.events():
                event["_at_ms"] = 1000 * (time.perf_counter() - sent)
                if event["type"] == "audio.chunk":
                    event["audio"] = None  # keep memory flat
                events.append(event)
                if event["type"] == "response.done":
                    break
            answers.append({"events": events, "metrics": events[-1]["metrics"]})
    return answers


async def before_design_first_audio_ms(script: list[dict[str, Any]], tts: ToneTTS) -> float:
    """The seed's "before" design: the whole answer, then TTS of all of it, then send."""
    model = ScriptedChatModel(items=parse_script(script))
    start = time.perf_counter()
    text = "".join([chunk.content async for chunk in model.astream("question")])  # type: ignore[misc]
    speech = SpeechTextFilter()
    spoken = speech.feed(text) + speech.flush()
    async for _pcm in tts.synthesize(spoken):
        break
    return 1000 * (time.perf_counter() - start)


async def plot_one_answer(
    script: list[dict[str, Any]], tts: ToneTTS, limit: float, args: argparse.Namespace
) -> None:
    """One more answer, in-process with the pipeline's trace on, drawn as a timeline."""
    from langgraph.checkpoint.memory import InMemorySaver
    from timeline_plot import plot_timeline  # scripts/timeline_plot.py

    from voicechat.llm import LLMSettings, build_backend
    from voicechat.server import VoiceChatServer
    from voicechat.settings import PipelineSettings, ServerConfig

    trace: list[tuple[str, float, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.json"
        path.write_text(json.dumps(script))
        backend = build_backend(LLMSettings(spec=f"scripted:{path}"), InMemorySaver())
    settings = PipelineSettings(
        tts_concurrency=args.tts_concurrency, trace=lambda *event: trace.append(event)
    )
    async with VoiceChatServer(backend, tts, ServerConfig(port=0, pipeline=settings)) as server:
        async with ChatConnection(server.url) as connection:
            await connection.send_user_message("Tell me about the moon.")
            async for event in connection.events():
                if event["type"] == "response.done":
                    break
    start = next(at for kind, at, _ in trace if kind == "start")
    title = (
        f"one answer: LLM first token {args.first_token_ms:.0f} ms then "
        f"{args.tokens_per_s:.0f} tok/s; tone TTS {args.tts_latency_ms:.0f} ms + "
        f"{args.tts_rtf} x audio; {args.tts_concurrency} TTS in flight"
    )
    plot_timeline(trace, start, limit, title, args.plot)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--answers", type=int, default=50)
    parser.add_argument("--first-token-ms", type=float, default=200.0)
    parser.add_argument("--tokens-per-s", type=float, default=30.0)
    parser.add_argument("--tts-latency-ms", type=float, default=100.0)
    parser.add_argument("--tts-rtf", type=float, default=0.1)
    parser.add_argument("--tts-concurrency", type=int, default=2)
    parser.add_argument("--before-runs", type=int, default=3)
    parser.add_argument(
        "--turns", type=int, default=1, help="answers per conversation (history grows with it)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="save a timeline plot of one answer (PNG)")
    args = parser.parse_args()

    script = make_script(args.first_token_ms, args.tokens_per_s)
    tts = ToneTTS(latency_ms=args.tts_latency_ms, rtf=args.tts_rtf)
    limit = physical_limit_ms(script, tts)
    with tempfile.TemporaryDirectory() as tmp:
        script_path = Path(tmp) / "script.json"
        script_path.write_text(json.dumps(script))
        port = free_port()
        server = start_server(script_path, args, port)
        try:
            url = f"ws://127.0.0.1:{port}/v1/chat/stream"
            answers = asyncio.run(run_answers(url, args.answers, args.turns))
        finally:
            server.terminate()
            server.wait(timeout=30)
    before = [
        asyncio.run(before_design_first_audio_ms(script, tts)) for _ in range(args.before_runs)
    ]

    first_audio = [a["metrics"]["first_audio_ms"] for a in answers]
    overhead = [value - limit for value in first_audio]
    first_chunks = [next(e for e in a["events"] if e["type"] == "audio.chunk") for a in answers]
    client_first_audio = [chunk["_at_ms"] for chunk in first_chunks]
    client_overhead = [value - limit for value in client_first_audio]
    as_expected = sum(chunk["text"] == FIRST_SENTENCE for chunk in first_chunks)
    timeline = first_unit_timeline(script)
    llm_total = sum(item["delay_ms"] for item in script)
    result = {
        "answers": len(answers),
        "turns_per_conversation": args.turns,
        "llm_first_token_ms": args.first_token_ms,
        "llm_tokens_per_s": args.tokens_per_s,
        "llm_total_ms": round(llm_total, 1),
        "tts_latency_ms": args.tts_latency_ms,
        "tts_rtf": args.tts_rtf,
        "units": answers[0]["metrics"]["segments"],
        "first_sentence_written_ms": round(timeline["written_ms"], 1),
        "first_sentence_decided_ms": round(timeline["decided_ms"], 1),
        "first_unit_tts_ms": round(1000 * tts.delay_s(FIRST_SENTENCE), 1),
        "physical_limit_ms": round(limit, 1),
        "first_unit_as_expected": f"{as_expected}/{len(answers)}",
        "first_audio_ms_p50": round(statistics.median(first_audio), 1),
        "overhead_ms_p50": round(percentile(overhead, 50), 2),
        "overhead_ms_p99": round(percentile(overhead, 99), 2),
        "overhead_ms_max": round(max(overhead), 2),
        "client_first_audio_ms_p50": round(statistics.median(client_first_audio), 1),
        "client_overhead_ms_p50": round(percentile(client_overhead, 50), 2),
        "client_overhead_ms_p99": round(percentile(client_overhead, 99), 2),
        "client_overhead_ms_max": round(max(client_overhead), 2),
        "before_first_audio_ms": round(statistics.median(before), 1),
        "speedup_vs_before": round(statistics.median(before) / statistics.median(first_audio), 1),
    }
    if as_expected < len(answers):
        print(
            f"warning: {len(answers) - as_expected} answers did not start with the unit "
            f"{FIRST_SENTENCE!r}; the physical limit does not apply to them",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(key) for key in result)
        for key, value in result.items():
            print(f"{key:{width}s}  {value}")
    if args.plot:
        asyncio.run(plot_one_answer(script, tts, limit, args))
        print(f"timeline written to {args.plot}")


if __name__ == "__main__":
    main()

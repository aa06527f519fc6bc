"""Speech recognition under load (issue 24): sessions saying short turns as fast as they can
while another session asks questions. How big does the recognizer's backlog get, and how late
does the other session's transcript come?

    python scripts/bench_speech_load.py [--spammers 3] [--seconds 30] [--questions 3]
                                        [--tree DIR] [--json]

A `voicechat serve` process (scripted LLM, tone voice, Whisper tiny.en and Silero VAD in their
workers) on a free loopback port. Each spammer session sets `silence_ms` 200 and streams, in
real time (100 ms frames paced by the clock), "Yes." said by Piper followed by 260 ms of
silence, over and over, for --seconds. An asker session streams silence in real time too and,
from --ask-after on, every --ask-every seconds, says a question (tests/speech_fixtures.py);
its delay is from the send time of the frame holding the question's last sample to the arrival
of its `input_audio.transcript`. /healthz is read every 200 ms: the backlog is
`speech.stt_queued + speech.stt_in_flight` (a server without the scheduler: the Whisper
worker's `in_flight`, every request having been written to it). After the spammers stop, the
time until the backlog is empty (at most --drain-s).

`--tree DIR` runs the server from another checkout (e.g. `git archive <commit> | tar -x -C
DIR`) for a before/after comparison; the clients are this one's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/ (the Piper speech)
sys.path.insert(0, str(REPO / "scripts"))

from bench_concurrency import rss_mb  # noqa: E402
from bench_latency import free_port  # noqa: E402

from tests.speech_fixtures import QUESTIONS, pad, spoken_pcm  # noqa: E402
from voicechat.client.connection import ChatConnection  # noqa: E402

RATE = 16000
FRAME = 1600  # 100 ms
SAMPLE_EVERY_S = 0.2
QUESTION_MIN_MS = 1200  # a committed turn this long is one of the asker's questions


def start_server(tree: Path, port: int, script: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "voicechat", "serve", "--port", str(port),
        "--llm", f"scripted:{script}", "--tts", "tone", "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    env["PYTHONPATH"] = str(tree)
    server = subprocess.Popen(
        command, cwd=tree, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + 180  # the workers load and check their models first
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return server
        except httpx.HTTPError:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.communicate()[1]}") from None
            time.sleep(0.2)
    server.kill()
    raise SystemExit("server did not start")


def backlog_of(health: dict[str, Any]) -> tuple[int, int]:
    """(jobs waiting or in flight for the recognizer, requests in the Whisper worker)."""
    worker = int(health.get("workers", {}).get("whisper", {}).get("in_flight", 0))
    speech = health.get("speech")
    if speech is None:  # no scheduler: every request is written to the worker at once
        return worker, worker
    return int(speech["stt_queued"]) + int(speech["stt_in_flight"]), worker


async def stream(
    connection: ChatConnection, audio: np.ndarray, start: float, stop: asyncio.Event
) -> None:
    """`audio` as 100 ms frames in real time from `start` (loop clock), until it ends or
    `stop` is set; rate_limited answers are counted by the reader."""
    loop = asyncio.get_running_loop()
    pcm = audio.astype("<i2").tobytes()
    for index, offset in enumerate(range(0, len(pcm), FRAME * 2)):
        if stop.is_set():
            return
        await asyncio.sleep(max(0.0, start + index * FRAME / RATE - loop.time()))
        await connection.append_audio(pcm[offset : offset + FRAME * 2])


async def read_events(connection: ChatConnection, counts: Counter[str], on: Any = None) -> None:
    async for event in connection.events():
        kind = event["type"]
        counts[kind if kind != "error" else f"error:{event.get('code')}"] += 1
        if on is not None:
            on(event)


async def spammer(url: str, seconds: float, stop: asyncio.Event, counts: Counter[str]) -> None:
    yes = pad(spoken_pcm("Yes.", varied=True), 0, 0.26)
    audio = np.tile(yes, int(seconds * RATE / len(yes)) + 1)[: int(seconds * RATE)]
    async with ChatConnection(url) as connection:
        await connection.update_session(silence_ms=200)
        reader = asyncio.create_task(read_events(connection, counts))
        try:
            await stream(connection, audio, asyncio.get_running_loop().time(), asyncio.Event())
            await stop.wait()  # keep counting transcripts while the backlog drains
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def asker(
    url: str, args: argparse.Namespace, counts: Counter[str], asked: list[dict[str, Any]]
) -> None:
    """A live microphone: silence, and a question every --ask-every seconds."""
    loop = asyncio.get_running_loop()
    questions = [
        spoken_pcm(QUESTIONS[i % len(QUESTIONS)], varied=True) for i in range(args.questions)
    ]
    total_s = args.ask_after + args.questions * args.ask_every + args.wait_s
    audio = np.zeros(int(total_s * RATE), np.int16)
    ends = []
    for index, question in enumerate(questions):
        at = int((args.ask_after + index * args.ask_every) * RATE)
        audio[at : at + len(question)] = question
        ends.append((at + len(question)) / RATE)
    pending: list[dict[str, Any]] = []
    by_item: dict[str, dict[str, Any]] = {}
    done = asyncio.Event()

    def on(event: dict[str, Any]) -> None:
        if event["type"] == "input_audio.committed" and event["audio_ms"] >= QUESTION_MIN_MS:
            if pending:
                entry = pending.pop(0)
                by_item[event["item_id"]] = entry
        elif event["type"] == "input_audio.transcript" and event["item_id"] in by_item:
            entry = by_item.pop(event["item_id"])
            entry["delay_s"] = round(loop.time() - entry["speech_end"], 2)
            entry["stt_ms"] = event["stt_ms"]
            entry["text"] = event["text"]
            if all("delay_s" in e for e in asked):
                done.set()
        elif event["type"] == "error" and event.get("code") in ("stt_busy", "stt_failed"):
            for entry in by_item.values():
                entry.setdefault("errors", []).append(event.get("code"))

    async with ChatConnection(url) as connection:
        reader = asyncio.create_task(read_events(connection, counts, on))
        start = loop.time()
        for index, end in enumerate(ends):
            entry = {"question": QUESTIONS[index % len(QUESTIONS)], "speech_end": start + end}
            asked.append(entry)
            pending.append(entry)
        stop = asyncio.Event()
        mic = asyncio.create_task(stream(connection, audio, start, stop))
        try:
            async with asyncio.timeout(total_s + args.drain_s):
                await done.wait()
        except TimeoutError:
            pass
        finally:
            stop.set()
            for task in (mic, reader):
                task.cancel()
            await asyncio.gather(mic, reader, return_exceptions=True)
    for entry in asked:
        entry["speech_end"] = round(entry["speech_end"] - start, 2)


async def sample(port: int, server_pid: int, stop: asyncio.Event, out: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as client:
        while not stop.is_set():
            try:
                health = (await client.get(f"http://127.0.0.1:{port}/healthz", timeout=5)).json()
            except httpx.HTTPError:
                health = None
            if health is not None:
                backlog, worker = backlog_of(health)
                out["backlog_now"] = backlog
                out["backlog_max"] = max(out["backlog_max"], backlog)
                out["whisper_in_flight_max"] = max(out["whisper_in_flight_max"], worker)
                out["shed"] = health.get("speech", {}).get("stt_shed")
                whisper_pid = health.get("workers", {}).get("whisper", {}).get("pid")
                if whisper_pid:
                    out["whisper_rss_mb_max"] = max(out["whisper_rss_mb_max"], rss_mb(whisper_pid))
            out["server_rss_mb_max"] = max(out["server_rss_mb_max"], rss_mb(server_pid))
            await asyncio.sleep(SAMPLE_EVERY_S)


async def run(args: argparse.Namespace, port: int, server_pid: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/v1/chat/stream"
    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {
        "backlog_now": 0,
        "backlog_max": 0,
        "whisper_in_flight_max": 0,
        "whisper_rss_mb_max": 0.0,
        "server_rss_mb_max": rss_mb(server_pid),
        "server_rss_mb_start": rss_mb(server_pid),
    }
    stop_sampling, stop_spam = asyncio.Event(), asyncio.Event()
    sampler = asyncio.create_task(sample(port, server_pid, stop_sampling, stats))
    spam_counts = [Counter[str]() for _ in range(args.spammers)]
    asker_counts: Counter[str] = Counter()
    asked: list[dict[str, Any]] = []
    spammers = [
        asyncio.create_task(spammer(url, args.seconds, stop_spam, counts)) for counts in spam_counts
    ]
    asking = asyncio.create_task(asker(url, args, asker_counts, asked))
    started = loop.time()
    await asyncio.sleep(args.seconds)
    spam_end = loop.time()
    drained_at = None
    while loop.time() - spam_end < args.drain_s:
        await asyncio.sleep(SAMPLE_EVERY_S)
        if stats["backlog_now"] == 0 and loop.time() - spam_end > 2 * SAMPLE_EVERY_S:
            drained_at = loop.time()
            break
    stop_spam.set()
    await asyncio.gather(*spammers, asking)
    stop_sampling.set()
    await sampler
    total = sum(spam_counts, Counter())
    return {
        "spammers": args.spammers,
        "seconds": args.seconds,
        "backlog_max": stats["backlog_max"],
        "whisper_in_flight_max": stats["whisper_in_flight_max"],
        "drain_s": None if drained_at is None else round(drained_at - spam_end, 1),
        "backlog_left": stats["backlog_now"],
        "spam_turns": total["input_audio.committed"],
        "spam_transcribed": total["input_audio.transcript"],
        "spam_shed": total["error:stt_busy"],
        "spam_failed": total["error:stt_failed"],
        "spam_behind": total["error:rate_limited"],
        "asked": asked,
        "asker_errors": {k: v for k, v in asker_counts.items() if k.startswith("error:")},
        "server_rss_mb": [round(stats["server_rss_mb_start"]), round(stats["server_rss_mb_max"])],
        "whisper_rss_mb_max": round(stats["whisper_rss_mb_max"]),
        "elapsed_s": round(loop.time() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spammers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the spammers talk")
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--ask-after", type=float, default=6.0)
    parser.add_argument("--ask-every", type=float, default=8.0)
    parser.add_argument("--wait-s", type=float, default=5.0, help="silence after the last one")
    parser.add_argument("--drain-s", type=float, default=120.0, help="at most, after the spam")
    parser.add_argument("--tree", type=Path, default=REPO, help="the checkout to serve from")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    port = free_port()
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "answer.json"
        script.write_text(json.dumps(["Okay."]))
        server = start_server(args.tree.resolve(), port, script)
        try:
            result = asyncio.run(run(args, port, server.pid))
        finally:
            server.terminate()
            try:
                server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    result = {"tree": str(args.tree), "load_average_start": load, **result}
    if args.json:
        print(json.dumps(result))
        return
    print(f"tree {result['tree']}; load average at start {load} ({os.cpu_count()} cores)")
    print(
        f"{args.spammers} sessions saying 'yes' + 260 ms (silence_ms 200) for {args.seconds:g} s:"
        f" {result['spam_turns']} turns, {result['spam_transcribed']} transcribed,"
        f" {result['spam_shed']} shed (stt_busy), {result['spam_failed']} stt_failed,"
        f" {result['spam_behind']} frames rate_limited"
    )
    print(
        f"backlog max {result['backlog_max']} (Whisper worker in_flight max "
        f"{result['whisper_in_flight_max']}); after the spam stopped: "
        + (
            f"empty in {result['drain_s']} s"
            if result["drain_s"] is not None
            else f"{result['backlog_left']} left after {args.drain_s:g} s"
        )
    )
    for entry in result["asked"]:
        delay = entry.get("delay_s")
        print(
            f"  question at {entry['speech_end']:5.1f} s: transcript "
            + (f"{delay:.2f} s after its end (stt_ms {entry['stt_ms']})" if delay else "never")
            + (f", errors {entry['errors']}" if entry.get("errors") else "")
        )
    print(
        f"server RSS {result['server_rss_mb'][0]} -> max {result['server_rss_mb'][1]} MB; "
        f"Whisper worker RSS max {result['whisper_rss_mb_max']} MB; took {result['elapsed_s']} s"
    )


if __name__ == "__main__":
    main()

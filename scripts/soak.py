"""Soak: a `voicechat serve` process under hostile load for minutes; its memory over time.

    python scripts/soak.py [--minutes 3] [--clients 50] [--every 10] [--json]

Each client loop connects, holds a few turns and mixes what a real server meets: full answers,
barge-in, response.cancel, dropping the connection mid-answer, and malformed frames (bad JSON,
binary, unknown types, text over the limit). The server runs the scripted LLM and the tone voice,
fast, so a minute is a lot of work. Every --every seconds: answers, disconnects, errors, server
RSS and CPU, and /healthz. At the end: RSS after warm-up vs at the end, and whether the server
went back to 0 sessions and 0 answers in flight (exit 1 if not, or if it died).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from bench_concurrency import cpu_seconds, rss_mb
from bench_latency import free_port, make_script
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

WARM_UP_S = 10.0


async def read_until_done(ws: ClientConnection, stats: Counter[str]) -> None:
    """Read frames until a response.done; count what came."""
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "error":
            stats["errors_received"] += 1
        elif event["type"] == "response.done":
            stats[f"answers_{event['status']}"] += 1
            return


async def wait_for(ws: ClientConnection, kind: str) -> None:
    while json.loads(await ws.recv())["type"] != kind:
        pass


async def one_conversation(url: str, rng: random.Random, stats: Counter[str]) -> None:
    """A few turns, each one of the behaviours below, chosen at random."""
    async with connect(url, compression=None, max_size=2**22) as ws:
        await wait_for(ws, "session.created")
        for turn in range(rng.randint(1, 4)):
            action = rng.choice(["answer", "answer", "barge_in", "cancel", "drop", "junk"])
            stats[f"did_{action}"] += 1
            message = json.dumps({"type": "user.message", "text": f"turn {turn}"})
            if action == "answer":
                await ws.send(message)
                await read_until_done(ws, stats)
            elif action == "barge_in":
                await ws.send(message)
                await wait_for(ws, "audio.chunk")
                await ws.send(message)  # the first answer is cancelled, a second one runs
                await read_until_done(ws, stats)
                await read_until_done(ws, stats)
            elif action == "cancel":
                await ws.send(message)
                await wait_for(ws, "text.delta")
                await ws.send(json.dumps({"type": "response.cancel"}))
                await read_until_done(ws, stats)
            elif action == "drop":
                await ws.send(message)
                await wait_for(ws, "text.delta")
                ws.transport.abort()  # gone mid-answer, without a close frame
                return
            else:
                junk: list[str | bytes] = [
                    "{not json",
                    b"\x00\x01binary",
                    json.dumps({"type": "no.such.type"}),
                    json.dumps({"type": "user.message", "text": "x" * 5000}),
                ]
                for frame in junk:
                    await ws.send(frame)
                for _ in junk:
                    if json.loads(await ws.recv())["type"] == "error":
                        stats["errors_received"] += 1


async def client_loop(url: str, seed: int, stop: asyncio.Event, stats: Counter[str]) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            await one_conversation(url, rng, stats)
        except (ConnectionClosed, OSError) as exc:
            stats[f"client_saw_{type(exc).__name__}"] += 1


async def healthz(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}/healthz", timeout=10)).json()


async def soak(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/v1/chat/stream"
    stats: Counter[str] = Counter()
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(client_loop(url, seed, stop, stats)) for seed in range(args.clients)
    ]
    start = time.monotonic()
    rss_start: float | None = None
    cpu_before, wall_before = cpu_seconds(pid), start
    while time.monotonic() - start < args.minutes * 60:
        await asyncio.sleep(args.every)  # the reporting period
        elapsed = time.monotonic() - start
        if rss_start is None and elapsed >= WARM_UP_S:
            rss_start = rss_mb(pid)
        cpu_now, wall_now = cpu_seconds(pid), time.monotonic()
        cpu = 100 * (cpu_now - cpu_before) / (wall_now - wall_before)
        cpu_before, wall_before = cpu_now, wall_now
        health = await healthz(port)
        answers = sum(v for k, v in stats.items() if k.startswith("answers_"))
        print(
            f"{elapsed:6.0f} s  answers {answers:6d}  cancelled {stats['answers_cancelled']:5d}  "
            f"drops {stats['did_drop']:5d}  errors {stats['errors_received']:6d}  "
            f"RSS {rss_mb(pid):6.1f} MB  CPU {cpu:3.0f} %  "
            f"sessions {health['sessions']:3d}  in flight {health['responses_in_flight']:3d}",
            file=sys.stderr if args.json else sys.stdout,
            flush=True,
        )
    stop.set()
    await asyncio.gather(*clients)
    rss_end_loaded = rss_mb(pid)
    for _ in range(200):  # bounded wait for the server to settle
        health = await healthz(port)
        if health["sessions"] == 0 and health["responses_in_flight"] == 0:
            break
        await asyncio.sleep(0.1)
    rss_start = rss_start or rss_end_loaded
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "rss_mb_after_warm_up": round(rss_start, 1),
        "rss_mb_end": round(rss_end_loaded, 1),
        "rss_growth_mb": round(rss_end_loaded - rss_start, 1),
        "rss_growth_percent": round(100 * (rss_end_loaded - rss_start) / rss_start, 1),
        "settled_sessions": health["sessions"],
        "settled_in_flight": health["responses_in_flight"],
        "totals": dict(sorted(stats.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--memory", default="memory", help="the server's --memory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    script = make_script(50, 100)[:40]  # about four sentences at 100 tokens/s
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.json"
        path.write_text(json.dumps(script))
        server = subprocess.Popen(
            [sys.executable, "-m", "voicechat", "serve", "--port", str(port),
             "--llm", f"scripted:{path}", "--tts", "tone", "--tone-latency-ms", "20",
             "--max-text-chars", "1000", "--messages-per-minute", "100000",
             "--memory", args.memory,
             "--log-level", "warning"],
            env={k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")},
        )  # fmt: skip
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            summary = asyncio.run(soak(args, port, server.pid))
            alive = server.poll() is None
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    summary["server_alive"] = alive
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:22} {value}")
    healthy = alive and summary["settled_sessions"] == 0 and summary["settled_in_flight"] == 0
    sys.exit(0 if healthy else 1)


if __name__ == "__main__":
    main()

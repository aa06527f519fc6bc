"""Many sessions at once against one `voicechat serve` process on loopback: where is the knee?

For each level N, N clients connect, then send one message each, spread evenly over --arrival-s
(default 1 s). The server runs the scripted LLM (first token --first-token-ms, then
--tokens-per-s per session) and the tone TTS (--tts-latency-ms). Reported per level: overhead of
first audio over its physical limit (p50, p99, from the server's own metrics), errors, server CPU
(percent of one core) and RSS (per session, over the idle server).

    python scripts/bench_concurrency.py [--levels 1,10,50,100,200,300,500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_latency import free_port, make_script, percentile, physical_limit_ms
from websockets.asyncio.client import connect

from voicechat.tts.tone import ToneTTS

ANSWER_SENTENCES = 3
PROFILER = os.environ.get("BENCH_SERVER_WRAPPER", "").split()  # e.g. "py-spy record -o p.svg --"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def one_session(url: str, delay_s: float, opened: asyncio.Event) -> dict[str, Any]:
    """Connect, wait for everyone, send after `delay_s`, read (cheaply) until done."""
    try:
        async with connect(url, compression=None, max_size=2**22, open_timeout=60) as ws:
            await ws.recv()  # session.created
            await opened.wait()
            await asyncio.sleep(delay_s)
            await ws.send(json.dumps({"type": "user.message", "text": "Tell me about the moon."}))
            chunks = 0
            async for frame in ws:
                if frame.startswith('{"type":"audio.chunk"'):  # skip parsing Base64 audio
                    chunks += 1
                    continue
                event = json.loads(frame)
                if event["type"] == "error":
                    return {"error": event["code"]}
                if event["type"] == "response.done":
                    status = event["status"]
                    return {"metrics": event["metrics"], "status": status, "chunks": chunks}
    except Exception as exc:
        return {"error": type(exc).__name__}
    return {"error": "closed"}


async def run_level(url: str, sessions: int, arrival_s: float, pid: int) -> dict[str, Any]:
    opened = asyncio.Event()
    rss_idle = rss_mb(pid)
    tasks = [
        asyncio.create_task(one_session(url, arrival_s * i / max(1, sessions), opened))
        for i in range(sessions)
    ]
    while len(os.listdir(f"/proc/{pid}/fd")) < sessions and not all(  # noqa: ASYNC110
        t.done() for t in tasks
    ):
        await asyncio.sleep(0.05)  # polls another process's fd count: no event to wait on
    rss_connected = rss_mb(pid)
    cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
    opened.set()
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - wall_before
    return {
        "results": results,
        "cpu_percent": 100 * (cpu_seconds(pid) - cpu_before) / wall,
        "rss_idle_mb": rss_idle,
        "rss_connected_mb": rss_connected,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--levels", default="1,10,50,100,200,300,500")
    parser.add_argument("--arrival-s", type=float, default=1.0)
    parser.add_argument("--first-token-ms", type=float, default=200.0)
    parser.add_argument("--tokens-per-s", type=float, default=30.0)
    parser.add_argument("--tts-latency-ms", type=float, default=100.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    script = make_script(args.first_token_ms, args.tokens_per_s)
    ends = [i for i, item in enumerate(script) if item["text"].endswith(".")]
    script = script[: ends[ANSWER_SENTENCES - 1] + 1]
    tts = ToneTTS(latency_ms=args.tts_latency_ms)
    limit = physical_limit_ms(script, tts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.json"
        path.write_text(json.dumps(script))
        for level in [int(x) for x in args.levels.split(",")]:
            port = free_port()
            server = subprocess.Popen(
                [*PROFILER, sys.executable, "-m", "voicechat", "serve", "--port", str(port),
                 "--llm", f"scripted:{path}", "--tts", "tone",
                 "--tone-latency-ms", str(args.tts_latency_ms), "--log-level", "error"],
                env={k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")},
            )  # fmt: skip
            try:
                for _ in range(200):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                url = f"ws://127.0.0.1:{port}/v1/chat/stream"
                run = asyncio.run(run_level(url, level, args.arrival_s, server.pid))
            finally:
                server.terminate()
                server.wait(timeout=60)
            done = [r for r in run["results"] if r.get("status") == "completed"]
            overhead = [r["metrics"]["first_audio_ms"] - limit for r in done]
            rows.append(
                {
                    "sessions": level,
                    "completed": len(done),
                    "errors": level - len(done),
                    "overhead_ms_p50": round(percentile(overhead, 50), 1) if overhead else None,
                    "overhead_ms_p99": round(percentile(overhead, 99), 1) if overhead else None,
                    "server_cpu_percent": round(run["cpu_percent"]),
                    "rss_mb_per_session": round(
                        (run["rss_connected_mb"] - run["rss_idle_mb"]) / level, 3
                    ),
                    "server_rss_mb": round(run["rss_connected_mb"], 1),
                    "wall_s": round(run["wall_s"], 2),
                }
            )
            if not args.json:
                print(rows[-1], flush=True)
    if args.json:
        print(json.dumps({"physical_limit_ms": round(limit, 1), "levels": rows}))
    else:
        print(f"physical limit of first audio: {limit:.1f} ms")


if __name__ == "__main__":
    main()

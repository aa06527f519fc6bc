"""Many sessions at once against one `voicechat serve` process on loopback: where is the knee?

For each level N, N clients connect (the script waits until all N have their session, and
/healthz reports exactly N sessions), then send one message each, spread evenly over
--arrival-s (default 1 s). The server runs the scripted LLM (first token --first-token-ms, then
--tokens-per-s per session) and the tone TTS (--tts-latency-ms). Reported per level:

- overhead of first audio over its physical limit, p50 and p99, two ways side by side:
  at the client (from just before `send` to the first audio.chunk received: everything,
  including WAV/Base64 encoding, the outbound queue, the socket write and the client's own
  event loop) and the server's own `first_audio_ms` metric (its clock starts once the message
  has been read and stops before the first frame is encoded and queued);
- how late the client's own event loop wakes (a 10 ms ticker, p99): the share of the client
  figure that is the load generator's;
- errors; server CPU (percent of one core, from the first send until the last answer is done);
- server RSS: idle, with N sessions connected (before any answer), after all N answers (the
  sessions still open) and its peak (VmHWM); per session over the idle server.

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

from bench_latency import FIRST_SENTENCE, free_port, make_script, percentile, physical_limit_ms
from websockets.asyncio.client import connect

from voicechat.tts.tone import ToneTTS

ANSWER_SENTENCES = 3
PROFILER = os.environ.get("BENCH_SERVER_WRAPPER", "").split()  # e.g. "py-spy record -o p.svg --"
AUDIO_PREFIX = '{"type":"audio.chunk"'
TICK_S = 0.010


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status in MB: VmRSS (now) or VmHWM (peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def health_sessions(port: int) -> int:
    """The server's own count of open sessions, from GET /healthz."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
    finally:
        writer.close()
    return int(json.loads(body)["sessions"])


class Stage:
    """Counts sessions that have passed a point (or failed before it); wakes the waiter at N."""

    def __init__(self, target: int) -> None:
        self.count, self.ok, self.target, self.reached = 0, 0, target, asyncio.Event()

    def passed(self, ok: bool = True) -> None:
        self.count += 1
        self.ok += ok
        if self.count >= self.target:
            self.reached.set()


def first_unit_text(frame: str) -> str | None:
    """The unit text of an audio.chunk, from the JSON before its Base64 (cheap to parse)."""
    head = frame[: frame.find(',"audio":"')] + "}"
    try:
        return json.loads(head).get("text")
    except json.JSONDecodeError:
        return None


async def one_session(
    url: str,
    delay_s: float,
    connected: Stage,
    answered: Stage,
    go: asyncio.Event,
    release: asyncio.Event,
) -> dict[str, Any]:
    """Connect, wait for everyone, send after `delay_s`, read (cheaply) until done, then stay
    connected until `release` (so RSS can be sampled with every session still open)."""
    stages = [connected, answered]  # the ones this session has yet to pass
    result: dict[str, Any] = {"error": "closed"}
    try:
        async with connect(url, compression=None, max_size=2**22, open_timeout=60) as ws:
            await ws.recv()  # session.created: the server holds the session now
            stages.pop(0).passed()
            await go.wait()
            await asyncio.sleep(delay_s)
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "user.message", "text": "Tell me about the moon."}))
            chunks, first_audio_ms, first_text = 0, None, None
            async for frame in ws:
                if isinstance(frame, str) and frame.startswith(AUDIO_PREFIX):
                    if first_audio_ms is None:
                        first_audio_ms = 1000 * (time.perf_counter() - sent)
                        first_text = first_unit_text(frame)
                    chunks += 1  # the rest is not parsed: skip the Base64 audio
                    continue
                event = json.loads(frame)
                if event["type"] == "error":
                    result = {"error": event["code"]}
                    break
                if event["type"] == "response.done":
                    result = {
                        "metrics": event["metrics"],
                        "status": event["status"],
                        "chunks": chunks,
                        "client_first_audio_ms": first_audio_ms,
                        "first_unit": first_text,
                    }
                    break
            stages.pop(0).passed()
            await release.wait()
    except Exception as exc:
        result = {"error": type(exc).__name__}
    finally:
        for stage in stages:  # failed early: count it as past every remaining stage
            stage.passed(ok=False)
    return result


async def ticker(lateness_ms: list[float], stop: asyncio.Event) -> None:
    """How late this (the load generator's) event loop wakes for a 10 ms sleep."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lateness_ms.append(1000 * (time.perf_counter() - before - TICK_S))


async def run_level(
    url: str, port: int, sessions: int, arrival_s: float, pid: int
) -> dict[str, Any]:
    connected, answered = Stage(sessions), Stage(sessions)
    go, release, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    rss_idle = status_mb(pid)
    tasks = [
        asyncio.create_task(
            one_session(url, arrival_s * i / max(1, sessions), connected, answered, go, release)
        )
        for i in range(sessions)
    ]
    await connected.reached.wait()
    seen = await health_sessions(port)
    for _ in range(100):  # normally equal at once: each client had its session.created
        if seen == connected.ok:
            break
        await asyncio.sleep(0.05)
        seen = await health_sessions(port)
    rss_connected = status_mb(pid)
    lateness: list[float] = []
    tick = asyncio.create_task(ticker(lateness, stop))
    cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
    go.set()
    await answered.reached.wait()
    wall = time.perf_counter() - wall_before
    cpu = cpu_seconds(pid) - cpu_before
    stop.set()
    rss_answered, rss_peak = status_mb(pid), status_mb(pid, "VmHWM")
    release.set()
    results = await asyncio.gather(*tasks)
    await tick
    return {
        "results": results,
        "sessions_seen_by_server": seen,
        "cpu_percent": 100 * cpu / wall,
        "rss_idle_mb": rss_idle,
        "rss_connected_mb": rss_connected,
        "rss_answered_mb": rss_answered,
        "rss_peak_mb": rss_peak,
        "client_loop_late_ms_p99": percentile(lateness, 99) if lateness else None,
        "wall_s": wall,
    }


def p(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 1) if values else None


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
                run = asyncio.run(run_level(url, port, level, args.arrival_s, server.pid))
            finally:
                server.terminate()
                server.wait(timeout=60)
            done = [r for r in run["results"] if r.get("status") == "completed"]
            server_overhead = [r["metrics"]["first_audio_ms"] - limit for r in done]
            client_overhead = [r["client_first_audio_ms"] - limit for r in done]
            idle = run["rss_idle_mb"]
            rows.append(
                {
                    "sessions": level,
                    "sessions_seen_by_server": run["sessions_seen_by_server"],
                    "completed": len(done),
                    "errors": level - len(done),
                    "first_unit_as_expected": sum(r["first_unit"] == FIRST_SENTENCE for r in done),
                    "client_overhead_ms_p50": p(client_overhead, 50),
                    "client_overhead_ms_p99": p(client_overhead, 99),
                    "server_overhead_ms_p50": p(server_overhead, 50),
                    "server_overhead_ms_p99": p(server_overhead, 99),
                    "client_loop_late_ms_p99": (
                        None
                        if run["client_loop_late_ms_p99"] is None
                        else round(run["client_loop_late_ms_p99"], 1)
                    ),
                    "server_cpu_percent": round(run["cpu_percent"]),
                    "server_rss_mb_idle": round(idle, 1),
                    "server_rss_mb_connected": round(run["rss_connected_mb"], 1),
                    "server_rss_mb_answered": round(run["rss_answered_mb"], 1),
                    "server_rss_mb_peak": round(run["rss_peak_mb"], 1),
                    "rss_mb_per_session_connected": round(
                        (run["rss_connected_mb"] - idle) / level, 3
                    ),
                    "rss_mb_per_session_answered": round(
                        (run["rss_answered_mb"] - idle) / level, 3
                    ),
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

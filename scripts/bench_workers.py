"""What the worker processes cost and buy, measured on a real `voicechat serve` (local LLM + Piper).

    python scripts/bench_workers.py restart [--kills 5]
    python scripts/bench_workers.py probes [--probes 10,50,100,200] [--busy 2] [--seconds 10]
    python scripts/bench_workers.py ... [--pythonpath DIR]   (run another checkout's server)

restart: kill each worker with SIGKILL, `--kills` times in a row, time until /healthz shows a
fresh one ready (polled every 5 ms; the first kill restarts at once, later ones wait out the
backoff), and take the worker's own spawn -> ready time (load + self-check) from the log.

probes: while `--busy` sessions keep the local LLM and Piper busy with long answers, N other
connections each send a frame every 50 ms that the session answers at once (an unknown message
type -> `error`), and time the round trip. That round trip is the server's event loop answering
anyone while the models work: what every other session's text.delta waits behind. Prints p50,
p99 and max per N; the same script with `--pythonpath` of an older checkout measures the design
where the models ran in threads of the server process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect

LONG_PROMPT = "Tell me a long story about a dragon who learns to sing, with many details."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(pythonpath: str | None, log: list[str]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    server = subprocess.Popen(
        [sys.executable, "-m", "voicechat", "serve", "--port", str(port), "--llm", "local",
         "--tts", "piper", "--max-tokens", "400", "--log-level", "info"],
        env=env, stderr=subprocess.PIPE, text=True, cwd=pythonpath,  # -m looks in cwd first
    )  # fmt: skip
    assert server.stderr is not None
    for line in server.stderr:
        log.append(line)
        if "serving ws://" in line:
            break
    else:
        raise SystemExit("the server did not start:\n" + "".join(log[-20:]))

    def drain() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return server, port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def restart(args: argparse.Namespace) -> dict[str, Any]:
    log: list[str] = []
    server, port = start_server(args.pythonpath, log)
    health_url = f"http://127.0.0.1:{port}/healthz"
    results: dict[str, Any] = {}
    try:
        with httpx.Client(timeout=30) as http:
            for kind in ("llm", "piper", "espeak"):
                seen: list[float] = []
                for _ in range(args.kills):
                    pid = http.get(health_url).json()["workers"][kind]["pid"]
                    killed = time.perf_counter()
                    os.kill(pid, signal.SIGKILL)
                    while True:
                        worker = http.get(health_url).json()["workers"][kind]
                        if worker["state"] == "ready" and worker["pid"] not in (None, pid):
                            break
                        time.sleep(0.005)
                    seen.append(time.perf_counter() - killed)
                results[kind] = {
                    # one per kill; from the second kill within a minute on, the restart
                    # waits out its backoff first (0.5, 1, 2, 4 s...)
                    "kill_to_ready_s": [round(s, 3) for s in seen],
                }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    for kind, result in results.items():
        ready = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in log
                 if f"{kind} worker ready" in line]  # fmt: skip
        result["spawn_to_ready_s_p50"] = round(statistics.median(ready[1:] or ready), 3)
    return results


async def busy_session(url: str, stop: asyncio.Event, answers: list[int]) -> None:
    async with connect(url, max_size=None) as ws:
        while not stop.is_set():
            await ws.send(json.dumps({"type": "user.message", "text": LONG_PROMPT}))
            async for raw in ws:
                if json.loads(raw)["type"] == "response.done":
                    answers[0] += 1
                    break


async def probe_session(url: str, stop: asyncio.Event, samples: list[float]) -> None:
    async with connect(url) as ws:
        await ws.recv()  # session.created
        while not stop.is_set():
            sent = time.perf_counter()
            await ws.send('{"type": "probe.ping"}')
            while json.loads(await ws.recv())["type"] != "error":
                pass
            samples.append(1000 * (time.perf_counter() - sent))
            await asyncio.sleep(0.05)


async def probe_level(url: str, probes: int, busy: int, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    samples: list[float] = []
    answers = [0]
    busy_tasks = [asyncio.create_task(busy_session(url, stop, answers)) for _ in range(busy)]
    await asyncio.sleep(2.0)  # the models are working before the probes start
    probe_tasks = [asyncio.create_task(probe_session(url, stop, samples)) for _ in range(probes)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*probe_tasks, return_exceptions=True)
    for task in busy_tasks:
        task.cancel()
    await asyncio.gather(*busy_tasks, return_exceptions=True)
    return {
        "probes": probes,
        "round_trips": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "max_ms": round(max(samples), 2),
        "answers_completed": answers[0],
    }


def probes(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for count in [int(n) for n in args.probes.split(",")]:
        log: list[str] = []
        server, port = start_server(args.pythonpath, log)
        try:
            url = f"ws://127.0.0.1:{port}/v1/chat/stream"
            results.append(asyncio.run(probe_level(url, count, args.busy, args.seconds)))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["restart", "probes"])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--probes", default="10,50,100,200")
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pythonpath", help="run the server from this checkout instead")
    args = parser.parse_args()
    result = restart(args) if args.mode == "restart" else probes(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

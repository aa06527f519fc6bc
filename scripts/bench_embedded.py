"""The embedded stack measured for real: local GGUF LLM + Piper, in a `voicechat serve` process.

Prints each worker's start time (load + self-check, from the server's log), time to first text
and audio for a prompt (the server's metrics, and first audio at the client too), LLM tokens per
second, Piper's real-time factor, whether playback would underrun (each chunk arrives before the
audio before it has finished playing), and the RSS of the server and its worker processes
together.

LLM tokens/s counts text.delta frames (one per token the model streams) over the time between
the arrival of the first and the last delta at the client: (deltas - 1) / (last - first). The
answer's end (`total_ms`) is not used, as it comes after the last unit's synthesis and send.
The same model is also timed alone, in this process after the server has stopped (same prompt,
system prompt and sampling), from the timestamps of its first and last streamed token.

    python scripts/bench_embedded.py [--prompt "Tell me about the moon."] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from voicechat.client.connection import ChatConnection
from voicechat.settings import Sampling


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """The server's worker processes (its direct children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


async def one_answer(url: str, prompt: str) -> dict[str, Any]:
    async with ChatConnection(url) as conn:
        sent = time.perf_counter()
        await conn.send_user_message(prompt)
        deltas: list[float] = []  # arrival times of the text.delta frames
        arrivals: list[tuple[float, float]] = []
        audio_s = 0.0
        async for event in conn.events():
            now = time.perf_counter() - sent
            if event["type"] == "text.delta":
                deltas.append(now)
            elif event["type"] == "audio.chunk":
                arrivals.append((now, audio_s))
                audio_s += event["samples"] / event["sample_rate"]
            elif event["type"] == "response.done":
                break
    # Playback starts with the first chunk; chunk k must arrive before the audio before it ends.
    start = arrivals[0][0] if arrivals else 0.0
    late = [max(0.0, at - (start + played)) for at, played in arrivals]
    metrics = event["metrics"]
    return {
        "first_text_ms": metrics["first_text_ms"],
        "first_audio_ms": metrics["first_audio_ms"],
        "client_first_audio_ms": 1000 * arrivals[0][0] if arrivals else None,
        "total_ms": metrics["total_ms"],
        "deltas": len(deltas),
        "llm_s": deltas[-1] - deltas[0] if deltas else 0.0,  # first to last delta, at the client
        "audio_s": audio_s,
        "segments": metrics["segments"],
        "worst_late_ms": 1000 * max(late, default=0.0),
    }


def tokens_per_s(count: int, seconds: float) -> float | None:
    """Tokens per second between the first and the last of `count` tokens."""
    return (count - 1) / seconds if count > 1 and seconds > 0 else None


def llm_alone_tokens_per_s(prompt: str, runs: int) -> float:
    """The same model, prompt and sampling as the server's, in this process with nothing else
    running: tokens/s from the first to the last streamed token, median over `runs`."""
    from voicechat.engines.llama import LlamaEngine
    from voicechat.llm.local import DEFAULT_SYSTEM_PROMPT
    from voicechat.workers.embedded import default_model_path

    engine = LlamaEngine(str(default_model_path()))
    request = {
        "messages": [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 256,
        "sampling": dataclasses.asdict(Sampling()),  # the server's default (--sampling voice)
    }
    rates: list[float] = []
    stamps: list[float] = []
    for _ in range(runs):
        stamps.clear()
        engine.run(
            request,
            lambda reply: stamps.append(time.perf_counter()) if reply["text"] else None,
            lambda: False,
        )
        rate = tokens_per_s(len(stamps), stamps[-1] - stamps[0] if stamps else 0.0)
        if rate is not None:
            rates.append(rate)
    return statistics.median(rates)


def piper_rtf() -> float:
    """Piper's synthesis time per second of audio, measured in this process on sentences."""
    from voicechat.engines.piper import PiperEngine
    from voicechat.tts.piper import default_voice_path

    voice = PiperEngine(str(default_voice_path()))
    sentences = [
        "The Moon is Earth's only natural satellite.",
        "It orbits our planet about once every twenty seven days.",
        "Its gravity drives the tides of the oceans.",
    ]
    spent = audio = 0.0
    for text in sentences * 2:
        pieces: list[dict[str, Any]] = []
        start = time.perf_counter()
        voice.run({"text": text}, pieces.append, lambda: False)
        spent += time.perf_counter() - start
        audio += sum(len(piece["pcm"]) / 2 / piece["rate"] for piece in pieces)
    return spent / audio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--prompt", default="Tell me about the moon.")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "voicechat", "serve", "--port", str(port), "--llm", "local",
         "--tts", "piper", "--log-level", "info"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log: list[str] = []
    assert server.stderr is not None
    for line in server.stderr:
        log.append(line)
        if "serving ws://" in line:
            break
    ready_s = time.perf_counter() - started
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    processes = [server.pid, *children(server.pid)]
    rss_idle = sum(map(rss_mb, processes))
    url = f"ws://127.0.0.1:{port}/v1/chat/stream"
    try:
        runs = [asyncio.run(one_answer(url, args.prompt)) for _ in range(args.runs)]
        rss_after = sum(map(rss_mb, processes))
    finally:
        server.terminate()
        server.wait(timeout=30)

    def ready(kind: str) -> float | None:
        """Worker start -> ready: load plus self-check, from the server's log."""
        for line in log:
            match = re.search(rf"{kind} worker ready .* in ([0-9.]+) s", line)
            if match:
                return float(match.group(1))
        return None

    rates = [r for r in (tokens_per_s(r["deltas"], r["llm_s"]) for r in runs) if r is not None]
    result = {
        "runs": len(runs),
        "llm_worker_ready_s": ready("llm"),
        "voice_worker_ready_s": ready("piper"),
        "server_ready_s": round(ready_s, 2),
        "first_text_ms_p50": statistics.median(r["first_text_ms"] for r in runs),
        "first_audio_ms_p50": statistics.median(r["first_audio_ms"] for r in runs),
        "first_audio_ms_max": max(r["first_audio_ms"] for r in runs),
        "client_first_audio_ms_p50": round(
            statistics.median(r["client_first_audio_ms"] for r in runs), 1
        ),
        "total_ms_p50": statistics.median(r["total_ms"] for r in runs),
        "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
        "tokens_per_s_alone": round(llm_alone_tokens_per_s(args.prompt, 3), 1),
        "audio_s_p50": round(statistics.median(r["audio_s"] for r in runs), 2),
        "piper_rtf": round(piper_rtf(), 3),
        "worst_late_chunk_ms": round(max(r["worst_late_ms"] for r in runs), 1),
        "processes": len(processes),
        "rss_mb_idle_all_processes": round(rss_idle, 1),
        "rss_mb_after_all_processes": round(rss_after, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:{width}s}  {value}")


if __name__ == "__main__":
    main()

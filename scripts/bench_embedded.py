"""The embedded stack measured for real: local GGUF LLM + Piper, in a `voicechat serve` process.

Prints each worker's start time (load + self-check, from the server's log), time to first text
and audio for a prompt, LLM tokens per second, Piper's real-time factor, whether playback would
underrun (each chunk arrives before the audio before it has finished playing), and the RSS of
the server and its worker processes together.

    python scripts/bench_embedded.py [--prompt "Tell me about the moon."] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
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
        deltas, arrivals, audio_s = 0, [], 0.0
        async for event in conn.events():
            now = time.perf_counter() - sent
            if event["type"] == "text.delta":
                deltas += 1
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
        "total_ms": metrics["total_ms"],
        "deltas": deltas,
        "audio_s": audio_s,
        "segments": metrics["segments"],
        "worst_late_ms": 1000 * max(late, default=0.0),
    }


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

    generation_s = [(r["total_ms"] - r["first_text_ms"]) / 1000 for r in runs]
    result = {
        "runs": len(runs),
        "llm_worker_ready_s": ready("llm"),
        "voice_worker_ready_s": ready("piper"),
        "server_ready_s": round(ready_s, 2),
        "first_text_ms_p50": statistics.median(r["first_text_ms"] for r in runs),
        "first_audio_ms_p50": statistics.median(r["first_audio_ms"] for r in runs),
        "first_audio_ms_max": max(r["first_audio_ms"] for r in runs),
        "total_ms_p50": statistics.median(r["total_ms"] for r in runs),
        "tokens_per_s": round(
            statistics.median(
                r["deltas"] / g for r, g in zip(runs, generation_s, strict=True) if g > 0
            ),
            1,
        ),
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

"""The gapless player measured on a device paced like a sound card, with the real embedded models.

    python scripts/bench_player.py [--runs 5] [--device NAME] [--json]

Without --device it starts a private PulseAudio null sink (the same one the tests use, all state
in a temp dir; needs `bash scripts/setup.sh test`) and plays there. For each run it asks the
embedded server (SmolLM2 + Piper) one question with `ask --play` and reports what the player
measured: underruns, and the latency from a chunk's arrival at an idle player to its first sample
at the device's output.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.audio_env import (
    PACED_DEVICE,
    reinitialize_portaudio,
    start_pulse,
    write_alsa_config,
)
from voicechat.audio.player import AudioPlayer
from voicechat.cli import running_server
from voicechat.client.ask import ask
from voicechat.settings import BackendOptions, ServerConfig

PROMPTS = ["Tell me about the moon.", "What is rain?", "Describe a cat.", "Why is the sky blue?"]


async def measure(device: str, runs: int) -> list[dict[str, object]]:
    reports = []
    async with running_server(BackendOptions(), ServerConfig(port=0)) as server:
        for run in range(runs):
            out = io.StringIO()
            with AudioPlayer(device) as player:
                await ask(
                    PROMPTS[run % len(PROMPTS)],
                    server_url=server.url,
                    json_lines=True,
                    player=player,
                    stdout=out,
                )
            report = json.loads(out.getvalue().splitlines()[-1])
            report["audio_s"] = round(report["samples_played"] / report["sample_rate"], 2)
            reports.append(report)
            print(json.dumps(report), file=sys.stderr)
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", help="a PortAudio output (default: a private paced sink)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with ExitStack() as stack:
        device = args.device
        if device is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            os.environ["ALSA_CONFIG_PATH"] = str(write_alsa_config(directory / "alsa"))
            daemon = start_pulse(directory / "pulse")
            stack.callback(daemon.stop)
            os.environ.update(daemon.client_env)
            reinitialize_portaudio()
            device = PACED_DEVICE
        reports = asyncio.run(measure(device, args.runs))
    latencies = [r["arrival_to_sound_ms_p50"] for r in reports if r["arrival_to_sound_ms_p50"]]
    summary = {
        "runs": len(reports),
        "device": device,
        "audio_s_total": round(sum(r["audio_s"] for r in reports), 1),
        "underruns_total": sum(r["underruns"] for r in reports),
        "arrival_to_sound_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "arrival_to_sound_ms_max": max(r["arrival_to_sound_ms_max"] or 0 for r in reports),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:26} {value}")


if __name__ == "__main__":
    main()

"""Draw one answer's timeline: where the time to first audio goes (used by bench_latency --plot).

Rows, top to bottom: the LLM's text deltas, the speech units as they are cut, each unit's TTS
request (start to end), the audio chunks as they leave the server, and when each chunk would play
on a client that starts playing the first chunk at once and plays gaplessly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_timeline(
    trace: list[tuple[str, float, dict[str, Any]]],
    start: float,
    limit_ms: float,
    title: str,
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ms(at: float) -> float:
        return 1000 * (at - start)

    rows = {"text deltas": 4, "units cut": 3, "TTS requests": 2, "audio sent": 1, "playback": 0}
    fig, ax = plt.subplots(figsize=(12, 4.2))
    deltas = [ms(at) for kind, at, _ in trace if kind == "delta"]
    ax.scatter(deltas, [rows["text deltas"]] * len(deltas), marker="|", s=120, color="tab:gray")
    units = [(ms(at), info["index"]) for kind, at, info in trace if kind == "unit"]
    for at, index in units:
        ax.scatter([at], [rows["units cut"]], marker="v", color="tab:blue")
        ax.annotate(str(index), (at, rows["units cut"] + 0.15), ha="center", fontsize=7)
    starts = {info["index"]: ms(at) for kind, at, info in trace if kind == "tts_start"}
    for kind, at, info in trace:
        if kind == "tts_end" and info["index"] in starts:
            begin = starts[info["index"]]
            offset = 0.12 * (info["index"] % 3) - 0.12
            ax.plot([begin, ms(at)], [rows["TTS requests"] + offset] * 2, color="tab:orange", lw=4)
    audio = [(ms(at), info) for kind, at, info in trace if kind == "audio"]
    ax.scatter([a for a, _ in audio], [rows["audio sent"]] * len(audio), marker="o", s=14,
               color="tab:green")  # fmt: skip
    clock = audio[0][0] if audio else 0.0
    for sent, info in audio:
        clock = max(clock, sent)  # a chunk cannot play before it arrives
        ax.plot([clock, clock + 1000 * info["seconds"]], [rows["playback"]] * 2,
                color="tab:purple" if info["segment"] % 2 else "tab:pink", lw=6)  # fmt: skip
        clock += 1000 * info["seconds"]
    ax.axvline(limit_ms, color="red", ls="--", lw=1)
    ax.annotate(f"physical limit {limit_ms:.0f} ms", (limit_ms, 4.45), color="red", fontsize=8)
    if audio:
        ax.axvline(audio[0][0], color="tab:green", ls=":", lw=1)
        ax.annotate(f"first audio {audio[0][0]:.0f} ms", (audio[0][0], -0.55),
                    color="tab:green", fontsize=8)  # fmt: skip
    horizon = max((ms(at) for kind, at, _ in trace if kind in ("tts_end", "audio")), default=1.0)
    ax.set_xlim(0, horizon * 1.12)
    note = f"playback goes on until {clock / 1000:.1f} s"
    ax.annotate(note, (horizon * 1.1, rows["playback"] + 0.25), ha="right", fontsize=8,
                color="tab:purple")  # fmt: skip
    ax.set_yticks(list(rows.values()), list(rows.keys()))
    ax.set_ylim(-0.8, 4.8)
    ax.set_xlabel("ms since the user's message reached the server")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)

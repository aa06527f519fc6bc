#!/usr/bin/env python3
"""How fast the command line answers: `--help`, `--version`, a usage error, per command.

Each case runs the installed `voicechat` script (a new Python process, as a user types it)
N times and prints the median and the worst wall time. The target is under 0.3 s: the back
ends are imported only when a command runs (voicechat/cli.py imports Typer and settings only).

    python3 scripts/bench_cli.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

CASES = [
    ("voicechat --help", ["--help"]),
    ("voicechat --version", ["--version"]),
    ("voicechat serve --help", ["serve", "--help"]),
    ("voicechat ask --help", ["ask", "--help"]),
    ("voicechat talk --help", ["talk", "--help"]),
    ("voicechat doctor --help", ["doctor", "--help"]),
    ("usage error: serve --port x", ["serve", "--port", "x"]),
    ("usage error: ask (no message)", ["ask"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    command = shutil.which("voicechat")
    if command is None:
        print("bench_cli: `voicechat` is not on PATH; run `bash scripts/setup.sh`", file=sys.stderr)
        return 1
    rows = []
    for name, argv in CASES:
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([command, *argv], capture_output=True, check=False)
            times.append(time.perf_counter() - start)
        rows.append({"case": name, "median_s": statistics.median(times), "max_s": max(times)})
    if args.json:
        print(json.dumps({"runs": args.runs, "results": rows}))
        return 0
    print(f"{'case':<34} {'median':>8} {'max':>8}   ({args.runs} runs each)")
    for row in rows:
        print(f"{row['case']:<34} {row['median_s']:>7.3f}s {row['max_s']:>7.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

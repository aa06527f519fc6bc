"""Many sessions at once against `voicechat serve` on loopback: where is the knee?

For each level N, N clients connect (the script waits until all N have their session and the
server's /healthz reports N sessions: with several workers, each worker's count added up), then
send one message each, spread evenly over --arrival-s (default 1 s). Each answer is the first 3
sentences of bench_latency's script: first token after --first-token-ms, then --tokens-per-s per
session. Two back ends:

- default: the scripted LLM and the tone TTS (--tts-latency-ms) inside the server;
- --production: what operators deploy, `--llm openai` against scripts/openai_standin.py (an
  OpenAI-compatible server streaming the same text on the same timeline as `chat.completion.chunk`
  SSE events) and `--tts fish` against the Fish Speech double (tests/fish_double.py, run by
  scripts/fish_standin.py) with --tts-latency-ms before its first audio bytes; each stand-in in a
  process of its own (their CPU is reported apart, not as the server's).

The server is `voicechat serve --workers N` (--workers, default 1; `--workers 1,2` runs every
level once per count; with 1 no --workers flag is passed, as before the flag existed). Its CPU
and RSS are summed over the server process and all its descendants (found by walking
/proc/*/stat for their parent pid, at the start and at the end of each window; a child restarted
in between still counts, through its parent's cutime/cstime).

Columns, per level:

- sessions; errors (answers not completed);
- client p50/p99: overhead of first audio over its physical limit at the client, from just before
  `send` to the first audio.chunk received (everything: the server's work, WAV/Base64 encoding,
  the outbound queue, the socket write and the client's own event loop);
- server p50/p99: the same from the server's own `first_audio_ms` metric (its clock starts once
  the message has been read and stops before the first frame is encoded and queued);
- CPU %: server CPU (all its processes) in percent of one core, from the first send until the
  last answer is done; CPU s: the same in seconds (the kernel counts in 10 ms ticks per
  process: the figures of a level with few sessions are coarse);
- us/token: that CPU divided by the tokens streamed (sessions x script tokens), in microseconds;
- with --marginal each level runs twice, the second time with every token split in two (half
  the text each, half the delay: the same text, units and audio, twice the tokens);
  split us/tok is the split run's CPU per token and marginal us/tok
  = (CPU split - CPU normal) / extra tokens: what one more token costs;
- RSS MB: server RSS (all processes) with the N sessions connected before any answer -> after all
  N answers (sessions still open); RSS/sess: (after answers - idle) / N; the JSON also has the idle
  figure and the peak (sum of each process's VmHWM);
- loop late: how late the client's own 10 ms ticker woke, p99: the load generator's share;
- LLM / Fish stand-in CPU % (--production): the OpenAI stand-in's and the Fish double's CPU
  (percent of one core, same window);
- wall s: first send to last answer done.

Then, per worker count: "knee: largest level with client p99 overhead <= 50 ms: N sessions"
(that level and every lower one within 50 ms and without errors).

The physical limit of first audio is derived from the script, not from the code under test: the
first sentence is known complete when the first character after it arrives (on the script's
timeline), plus the voice's time to its first audio (tone: --tts-latency-ms with no time per
audio second; the Fish double: --tts-latency-ms before its first bytes, then the whole unit at
once). --production also measures both stand-ins directly once, as a check on that.

    python scripts/bench_concurrency.py [--levels 1,10,50,100,150,200,300,500] [--workers 1,2]
        [--tts-latency-ms 100] [--marginal | --split-tokens] [--production] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_latency import (
    FIRST_SENTENCE,
    first_unit_timeline,
    free_port,
    make_script,
    percentile,
    physical_limit_ms,
)
from websockets.asyncio.client import connect

from voicechat.tts.tone import ToneTTS

ANSWER_SENTENCES = 3
PROFILER = os.environ.get("BENCH_SERVER_WRAPPER", "").split()  # e.g. "py-spy record -o p.svg --"
AUDIO_PREFIX = '{"type":"audio.chunk"'
TICK_S = 0.010
KNEE_P99_MS = 50.0
SCRIPTS_DIR = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the server's processes ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...] (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants, from every /proc/*/stat's parent pid."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU of one process and of its children it has reaped (utime+stime+cutime+cstime)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process tree so far: live processes and every reaped child (a restarted worker's
    old process counts through its parent's cutime/cstime)."""
    return sum(cpu_seconds(pid) for pid in process_tree(root))


def status_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status in MB: VmRSS (now) or VmHWM (peak RSS)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    """One process's RSS now, in MB (scripts/soak.py imports it)."""
    return status_mb(pid)


def tree_status_mb(root: int, field: str = "VmRSS") -> float:
    return sum(status_mb(pid, field) for pid in process_tree(root))


# --- back ends -------------------------------------------------------------------------------


@dataclass
class Variant:
    """One script (normal or split) and how the server runs it."""

    name: str
    script: list[dict[str, Any]]
    limit_ms: float
    serve_args: list[str]
    helpers: dict[str, int] = field(default_factory=dict)  # stand-in name -> pid (CPU apart)
    checks: dict[str, float] = field(default_factory=dict)  # stand-ins measured directly

    @property
    def tokens(self) -> int:
        return sum(1 for item in self.script if item["text"])


def answer_script(args: argparse.Namespace) -> list[dict[str, Any]]:
    script = make_script(args.first_token_ms, args.tokens_per_s)
    ends = [i for i, item in enumerate(script) if item["text"].endswith(".")]
    return script[: ends[min(args.sentences, len(ends)) - 1] + 1]


def split_script(script: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every token in two halves, each after half the delay: the same text on the same timeline
    (each token's last character arrives when it did), twice the tokens."""
    split = []
    for item in script:
        text, half = item["text"], item["delay_ms"] / 2
        cut = (len(text) + 1) // 2
        if len(text) < 2:
            split.append(dict(item))
            continue
        split += [{"text": text[:cut], "delay_ms": half}, {"text": text[cut:], "delay_ms": half}]
    return split


def start_helper(command: list[str], what: str) -> tuple[subprocess.Popen[str], str]:
    """Start a stand-in; it prints `listening URL` once it accepts connections."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening "):
        process.kill()
        raise SystemExit(f"{what} did not start: {line!r}")
    return process, line.split()[1]


def make_variant(
    name: str,
    script: list[dict[str, Any]],
    args: argparse.Namespace,
    tmp: Path,
    stack: contextlib.ExitStack,
    fish: tuple[int, str] | None,
) -> Variant:
    path = tmp / f"script-{name}.json"
    path.write_text(json.dumps(script))
    if not args.production:
        tone = ToneTTS(latency_ms=args.tts_latency_ms)
        return Variant(
            name, script, physical_limit_ms(script, tone),
            ["--llm", f"scripted:{path}", "--tts", "tone",
             "--tone-latency-ms", str(args.tts_latency_ms)],
        )  # fmt: skip
    from fish_standin import first_audio_ms  # scripts/fish_standin.py

    assert fish is not None
    fish_pid, fish_url = fish
    llm, llm_url = start_helper(
        [sys.executable, str(SCRIPTS_DIR / "openai_standin.py"), "--script", str(path)],
        "the OpenAI stand-in",
    )
    stack.callback(stop_process, llm)
    limit = first_unit_timeline(script)["decided_ms"] + first_audio_ms(args.tts_latency_ms)
    variant = Variant(
        name, script, limit,
        ["--llm", "openai", "--openai-base-url", llm_url, "--openai-model", "standin",
         "--tts", "fish", "--fish-url", fish_url],
        helpers={"openai_standin": llm.pid, "fish_double": fish_pid},
    )  # fmt: skip
    variant.checks = probe_standins(llm_url, fish_url)
    return variant


def start_fish(args: argparse.Namespace, stack: contextlib.ExitStack) -> tuple[int, str] | None:
    if not args.production:
        return None
    fish, url = start_helper(
        [sys.executable, str(SCRIPTS_DIR / "fish_standin.py"),
         "--latency-ms", str(args.tts_latency_ms)],
        "the Fish Speech double",
    )  # fmt: skip
    stack.callback(stop_process, fish)
    return fish.pid, url


def probe_standins(llm_url: str, fish_url: str) -> dict[str, float]:
    """Each stand-in alone: the OpenAI stand-in's first content delta and the Fish double's
    first audio bytes for FIRST_SENTENCE, in ms from the request (asked twice, the second one
    reported: the first pays for the stand-ins' first request)."""
    import httpx
    import msgpack

    checks: dict[str, float] = {}
    with httpx.Client(timeout=30) as client:
        for _ in range(2):
            start = time.perf_counter()
            request = {"model": "standin", "stream": True, "messages": [{"role": "user",
                       "content": "Tell me about the moon."}]}  # fmt: skip
            with client.stream("POST", f"{llm_url}/chat/completions", json=request) as response:
                for line in response.iter_lines():
                    if '"content"' in line:
                        checks["openai_standin_first_token_ms"] = 1000 * (
                            time.perf_counter() - start
                        )
                        break
            start = time.perf_counter()
            body = msgpack.packb({"text": FIRST_SENTENCE, "format": "wav", "streaming": True})
            headers = {"Content-Type": "application/msgpack"}
            with client.stream("POST", f"{fish_url}/v1/tts", content=body, headers=headers) as r:
                next(r.iter_bytes())
                checks["fish_first_audio_bytes_ms"] = 1000 * (time.perf_counter() - start)
    return {key: round(value, 1) for key, value in checks.items()}


def stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the server ------------------------------------------------------------------------------


def start_server(variant: Variant, workers: int, port: int) -> subprocess.Popen[bytes]:
    workers_args = ["--workers", str(workers)] if workers != 1 else []  # 1: as before the flag
    return subprocess.Popen(
        [*PROFILER, sys.executable, "-m", "voicechat", "serve", "--port", str(port),
         *workers_args, *variant.serve_args, "--log-level", "error"],
        env={k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")},
    )  # fmt: skip


def wait_until_accepting(server: subprocess.Popen[bytes], port: int, workers: int) -> None:
    """Until the port accepts connections and (several workers) every worker listens on it."""
    deadline, listening = time.monotonic() + 60, 0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        listening = listening_sockets(port, server.pid)
        if listening >= workers:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise SystemExit(f"the server did not start: {listening} of {workers} workers listening")


def listening_sockets(port: int, root: int) -> int:
    """How many distinct listening sockets on `port` the server's processes hold (SO_REUSEPORT:
    one per worker)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            inodes.add(fields[9])
    held = set()
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        held.add(target[8:-1])
    return len(held)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, wait; any of its processes left over gets SIGKILL (by pid)."""
    tree = process_tree(server.pid)
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    for pid in tree[1:]:
        with contextlib.suppress(OSError):
            if _stat_fields(pid)[0] != "Z":
                print(f"warning: server process {pid} outlived its parent; killing it",
                      file=sys.stderr)  # fmt: skip
                os.kill(pid, signal.SIGKILL)


# --- the clients -----------------------------------------------------------------------------


async def health(port: int) -> dict[str, Any]:
    """GET /healthz on a new connection (with several workers: whichever the kernel picks)."""
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
    return dict(json.loads(body))


async def sessions_seen(port: int, expected: int, workers: int) -> int | None:
    """The server's own count of open sessions, from /healthz, polled until it reaches
    `expected` (at most 5 s)."""
    seen = None
    for _ in range(100):  # normally equal at once: each client had its session.created
        seen = await server_sessions(port, workers)
        if seen == expected:
            break
        await asyncio.sleep(0.05)
    return seen


async def server_sessions(port: int, workers: int) -> int | None:
    """Open sessions by /healthz. With several workers each answer is one worker's ("worker":
    {"index", "pid"}; the kernel picks which): ask until every worker has answered, add them up;
    None if some worker never did."""
    counts: dict[Any, int] = {}
    for _ in range(1 if workers == 1 else 30 * workers):
        body = await health(port)
        counts[(body.get("worker") or {}).get("index")] = int(body["sessions"])
        if len(counts) >= workers:
            return sum(counts.values())
    return None


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
            created = json.loads(await ws.recv())  # the server holds the session now
            stages.pop(0).passed()
            worker = created.get("worker")  # serve --workers N: which process holds it
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
                        "worker": worker,
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


def cpu_sample(pid: int, helpers: dict[str, int]) -> dict[str, float]:
    sample = {"server": tree_cpu_seconds(pid), "wall": time.perf_counter()}
    sample.update({name: cpu_seconds(helper) for name, helper in helpers.items()})
    return sample


async def run_level(
    url: str, port: int, sessions: int, arrival_s: float, pid: int, workers: int,
    helpers: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    """One level against a started server: connect all, then one answer each, measured."""
    connected, answered = Stage(sessions), Stage(sessions)
    go, release, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    rss_idle = tree_status_mb(pid)
    tasks = [
        asyncio.create_task(
            one_session(url, arrival_s * i / max(1, sessions), connected, answered, go, release)
        )
        for i in range(sessions)
    ]
    await connected.reached.wait()
    seen = await sessions_seen(port, connected.ok, workers)
    rss_connected = tree_status_mb(pid)
    lateness: list[float] = []
    tick = asyncio.create_task(ticker(lateness, stop))
    before = cpu_sample(pid, helpers)
    go.set()
    await answered.reached.wait()
    after = cpu_sample(pid, helpers)
    stop.set()
    rss_answered, rss_peak = tree_status_mb(pid), tree_status_mb(pid, "VmHWM")
    release.set()
    results = await asyncio.gather(*tasks)
    await tick
    wall = after["wall"] - before["wall"]
    return {
        "results": results,
        "sessions_seen_by_server": seen,
        "server_processes": len(process_tree(pid)),
        "cpu_s": after["server"] - before["server"],
        "helpers_cpu_percent": {
            name: round(100 * (after[name] - before[name]) / wall) for name in helpers
        },
        "rss_idle_mb": rss_idle,
        "rss_connected_mb": rss_connected,
        "rss_answered_mb": rss_answered,
        "rss_peak_mb": rss_peak,
        "client_loop_late_ms_p99": percentile(lateness, 99) if lateness else None,
        "wall_s": wall,
    }


def measure(variant: Variant, level: int, workers: int, arrival_s: float) -> dict[str, Any]:
    """A fresh server for one level of one variant; the level's figures."""
    port = free_port()
    server = start_server(variant, workers, port)
    try:
        wait_until_accepting(server, port, workers)
        url = f"ws://127.0.0.1:{port}/v1/chat/stream"
        run = asyncio.run(
            run_level(url, port, level, arrival_s, server.pid, workers, variant.helpers)
        )
    finally:
        stop_server(server)
    return summarize(run, variant, level, workers)


# --- figures ---------------------------------------------------------------------------------


def p(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 1) if values else None


def summarize(run: dict[str, Any], variant: Variant, level: int, workers: int) -> dict[str, Any]:
    done = [r for r in run["results"] if r.get("status") == "completed"]
    limit = variant.limit_ms
    server_overhead = [r["metrics"]["first_audio_ms"] - limit for r in done]
    client_overhead = [r["client_first_audio_ms"] - limit for r in done]
    idle = run["rss_idle_mb"]
    tokens = level * variant.tokens
    late = run["client_loop_late_ms_p99"]
    errors = [r["error"] for r in run["results"] if "error" in r]
    return {
        "workers": workers,
        "variant": variant.name,
        "sessions": level,
        "sessions_seen_by_server": run["sessions_seen_by_server"],
        "server_processes": run["server_processes"],
        "sessions_per_worker": (  # from session.created: how the kernel spread them
            dict(sorted(Counter(r["worker"] for r in done).items())) if workers > 1 else None
        ),
        "completed": len(done),
        "errors": level - len(done),
        "error_kinds": sorted(set(errors)),
        "first_unit_as_expected": sum(r["first_unit"] == FIRST_SENTENCE for r in done),
        "client_overhead_ms_p50": p(client_overhead, 50),
        "client_overhead_ms_p99": p(client_overhead, 99),
        "server_overhead_ms_p50": p(server_overhead, 50),
        "server_overhead_ms_p99": p(server_overhead, 99),
        "client_loop_late_ms_p99": None if late is None else round(late, 1),
        "server_cpu_percent": round(100 * run["cpu_s"] / run["wall_s"]),
        "server_cpu_s": round(run["cpu_s"], 3),
        "tokens": tokens,
        "cpu_us_per_token": round(1e6 * run["cpu_s"] / tokens, 1),
        "helpers_cpu_percent": run["helpers_cpu_percent"],
        "server_rss_mb_idle": round(idle, 1),
        "server_rss_mb_connected": round(run["rss_connected_mb"], 1),
        "server_rss_mb_answered": round(run["rss_answered_mb"], 1),
        "server_rss_mb_peak": round(run["rss_peak_mb"], 1),
        "rss_mb_per_session_connected": round((run["rss_connected_mb"] - idle) / level, 3),
        "rss_mb_per_session_answered": round((run["rss_answered_mb"] - idle) / level, 3),
        "wall_s": round(run["wall_s"], 2),
    }


def add_marginal(row: dict[str, Any], split: dict[str, Any]) -> None:
    """The split run's CPU per token and the marginal CPU of one more token, into `row`."""
    extra = split["tokens"] - row["tokens"]
    row["split"] = split
    row["cpu_us_per_token_split"] = split["cpu_us_per_token"]
    row["marginal_cpu_us_per_token"] = round(
        1e6 * (split["server_cpu_s"] - row["server_cpu_s"]) / extra, 1
    )


def within_target(row: dict[str, Any]) -> bool:
    p99 = row["client_overhead_ms_p99"]
    return row["errors"] == 0 and p99 is not None and p99 <= KNEE_P99_MS


def knee(rows: list[dict[str, Any]]) -> tuple[int | None, list[int]]:
    """The largest level that, with every lower level, kept the client p99 within the target
    and lost no answer; and any higher level that passed again (noise)."""
    ordered = sorted(rows, key=lambda row: row["sessions"])
    best = None
    for row in ordered:
        if not within_target(row):
            break
        best = row["sessions"]
    again = [
        row["sessions"] for row in ordered if within_target(row) and row["sessions"] > (best or 0)
    ]
    return best, again


def knee_line(workers: int, rows: list[dict[str, Any]]) -> str:
    best, again = knee(rows)
    text = (
        f"knee (--workers {workers}): largest level with client p99 overhead <= "
        f"{KNEE_P99_MS:.0f} ms: {best if best is not None else 'none'} sessions"
    )
    if again:
        text += f" (higher levels within it again, noise: {', '.join(map(str, again))})"
    return text


def table(rows: list[dict[str, Any]], production: bool) -> str:
    def pair(first: str, second: str, sep: str = " / ") -> Callable[[dict[str, Any]], str]:
        return lambda row: f"{row[first]}{sep}{row[second]}"

    columns: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("sessions", lambda r: r["sessions"]),
        ("client p50/p99 ms", pair("client_overhead_ms_p50", "client_overhead_ms_p99")),
        ("server p50/p99 ms", pair("server_overhead_ms_p50", "server_overhead_ms_p99")),
        ("errors", lambda r: r["errors"]),
        ("CPU %", lambda r: r["server_cpu_percent"]),
        ("CPU s", lambda r: r["server_cpu_s"]),
        ("us/token", lambda r: r["cpu_us_per_token"]),
    ]
    if any("split" in row for row in rows):
        columns += [
            ("split us/tok", lambda r: r.get("cpu_us_per_token_split", "")),
            ("marginal us/tok", lambda r: r.get("marginal_cpu_us_per_token", "")),
        ]
    columns += [
        ("RSS MB conn -> ans", pair("server_rss_mb_connected", "server_rss_mb_answered", " -> ")),
        ("RSS/sess MB", lambda r: r["rss_mb_per_session_answered"]),
        ("loop late ms", lambda r: r["client_loop_late_ms_p99"]),
    ]
    if production:
        columns.append(
            (
                "LLM / Fish stand-in CPU %",
                lambda r: " / ".join(map(str, r["helpers_cpu_percent"].values())),
            )
        )
    columns.append(("wall s", lambda r: r["wall_s"]))
    cells = [[str(get(row)) for _, get in columns] for row in rows]
    widths = [
        max(len(name), *(len(line[i]) for line in cells)) for i, (name, _) in enumerate(columns)
    ]
    lines = [" | ".join(name.rjust(w) for (name, _), w in zip(columns, widths, strict=True))]
    lines += [" | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def warn_first_unit(row: dict[str, Any]) -> None:
    odd = row["completed"] - row["first_unit_as_expected"]
    if odd:
        print(
            f"warning: {odd} answers at {row['sessions']} sessions did not start with the unit "
            f"{FIRST_SENTENCE!r}; the physical limit does not apply to them",
            file=sys.stderr,
        )


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--levels", default="1,10,50,100,150,200,300,500")
    parser.add_argument("--workers", default="1", help="server processes; a list runs each")
    parser.add_argument("--arrival-s", type=float, default=1.0)
    parser.add_argument("--first-token-ms", type=float, default=200.0)
    parser.add_argument("--tokens-per-s", type=float, default=30.0)
    parser.add_argument("--tts-latency-ms", type=float, default=100.0)
    parser.add_argument(
        "--sentences",
        type=int,
        default=ANSWER_SENTENCES,
        help="answer length (up to the whole script: longer answers make --marginal less noisy)",
    )
    parser.add_argument("--split-tokens", action="store_true", help="every token in two halves")
    parser.add_argument("--marginal", action="store_true", help="each level normal, then split")
    parser.add_argument("--production", action="store_true", help="openai + fish stand-ins")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.split_tokens and args.marginal:
        parser.error("--marginal runs both scripts already")
    return args


def main() -> None:
    args = parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # children inherit it
    levels = [int(x) for x in args.levels.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        fish = start_fish(args, stack)
        script = answer_script(args)
        names = (
            ["normal", "split"] if args.marginal else ["split" if args.split_tokens else "normal"]
        )
        variants = {
            name: make_variant(
                name, split_script(script) if name == "split" else script, args, Path(tmp),
                stack, fish,
            )
            for name in names
        }  # fmt: skip
        main_variant = variants[names[0]]
        for workers in worker_counts:
            for level in levels:
                row = measure(main_variant, level, workers, args.arrival_s)
                if "split" in variants and main_variant.name != "split":
                    add_marginal(row, measure(variants["split"], level, workers, args.arrival_s))
                warn_first_unit(row)
                rows.append(row)
                if not args.json:
                    print(summary_line(row), flush=True)
    report(args, rows, variants, worker_counts, time.monotonic() - started)


def summary_line(row: dict[str, Any]) -> str:
    return (
        f"workers {row['workers']} sessions {row['sessions']}: client p99 "
        f"{row['client_overhead_ms_p99']} ms, server CPU {row['server_cpu_percent']} %, "
        f"{row['cpu_us_per_token']} us/token, errors {row['errors']}"
    )


def report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    variants: dict[str, Variant],
    worker_counts: list[int],
    elapsed_s: float,
) -> None:
    knees = {w: knee([r for r in rows if r["workers"] == w])[0] for w in worker_counts}
    load = os.getloadavg()
    header = {
        "mode": "production: openai stand-in + Fish double"
        if args.production
        else "scripted + tone",
        "physical_limit_ms": {name: round(v.limit_ms, 1) for name, v in variants.items()},
        "tokens_per_answer": {name: v.tokens for name, v in variants.items()},
        "standin_checks": {name: v.checks for name, v in variants.items() if v.checks},
        "tts_latency_ms": args.tts_latency_ms,
        "load_average_at_end": [round(x, 2) for x in load],
        "run_s": round(elapsed_s, 1),
    }
    if args.json:
        print(json.dumps({**header, "knee_sessions": knees, "levels": rows}))
        return
    for key, value in header.items():
        print(f"{key}: {value}")
    for workers in worker_counts:
        mine = [r for r in rows if r["workers"] == workers]
        print(f"\n--workers {workers} ({mine[0]['server_processes']} server processes)")
        print(table(mine, args.production))
        print(knee_line(workers, mine))


if __name__ == "__main__":
    main()

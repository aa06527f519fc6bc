"""The browser client measured in headless Chromium against a real `voicechat serve` on loopback.

    python scripts/bench_web.py [--answers 10] [--loads 10] [--embedded] [--no-pulse] [--json]

Why: the page's own costs (decoding, the worklet, page weight) are invisible to the server-side
benchmarks; these are the numbers a user of the web client feels. Each section:

- latency: for a chunk that finds the player idle (the first chunk of each answer, the player
  drained before every question), the time from its WebSocket message event to the moment the
  worklet starts playing it, plus the context's outputLatency + baseLatency; p50/max. Scripted
  LLM + tone voice (one short sentence per answer, one unmeasured warm-up answer that creates the
  AudioContext and loads the worklet), and with --embedded the real SmolLM2 + Piper.
- decode: the page's own audio-core.js (imported from the page's origin) on a real 1 s chunk
  as the server sent it: Base64 (Uint8Array.fromBase64 and the fallback table decoder), WAV
  parse + int16 -> float32, and the resampler on 1 s 22050 -> 48000 Hz.
- underruns (--embedded): 5 questions typed into the page, each answer played to the end;
  the worklet's counters (exact: samples sent, received, played, dropped; underruns).
- page: the bytes of every response of a page load (CDP's network events), of the worklet's
  modules fetched on the first key press (CDP's Fetch domain: the Network domain misses them),
  and the static folder's total; time to interactive (navigation start -> the session
  connected: the composer is never disabled) over --loads fresh browser contexts.

How the start of playback is seen: the worklet's module is served with a small hook prepended
(through CDP's Fetch domain: Playwright neither routes nor reports AudioWorklet requests) that
posts {type: "bench.start", frame: currentFrame} in the render quantum where a dry queue starts
playing again; the page ignores message types it does not know. An init script (not subject to
the page's CSP) subclasses WebSocket and AudioWorkletNode to timestamp the chunk's message event
and the start message. "worklet start" is the arrival of that message on the main thread (an
upper bound by the postMessage hop); the latency adds outputLatency + baseLatency to it. A
cross-check maps the start frame to the output through AudioContext.getOutputTimestamp().

By default Chromium plays into a private PulseAudio null sink (a device paced like a sound
card, as the tests use; needs `bash scripts/setup.sh test`); --no-pulse leaves Chromium with no
sound server (its fake output). ~30 s on 2 cores; --embedded adds ~2.5 min.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/lib/chromium/chromium"  # Debian's; never `playwright install`
STATIC = ROOT / "voicechat" / "web" / "static"
SCRIPTED_ANSWER = [  # one unit of 1.62 s of tone: a 1 s chunk (decoded below) and a 0.62 s one
    {"text": "The moon", "delay_ms": 30},
    {"text": " is bright tonight.", "delay_ms": 30},
]
PROMPTS = [
    "Tell me about the moon.",
    "What is rain?",
    "Describe a cat.",
    "Why is the sky blue?",
    "What do bees do?",
]

# Runs before the page's scripts (Playwright's init scripts are not subject to the page's CSP).
INIT_SCRIPT = r"""
(() => {
  const bench = { chunks: [], starts: [], connectedAt: null, chunkAudio: null, socket: null };
  window.__bench = bench;

  const NativeSocket = window.WebSocket;
  window.WebSocket = class extends NativeSocket {
    constructor(...args) {
      super(...args);
      bench.socket ??= { created: performance.now() };  // the page's first connection
      const first = bench.socket;
      this.addEventListener("open", (event) => { first.open ??= event.timeStamp; });
      this.addEventListener("message", (event) => {  // added first: runs before the page's
        first.message ??= event.timeStamp;  // session.created
        const data = event.data;
        const cut = typeof data === "string" ? data.indexOf(',"audio":"') : -1;
        if (cut < 0) return;  // the server puts the Base64 last
        const head = JSON.parse(data.slice(0, cut) + "}");
        bench.chunks.push({ at: event.timeStamp, answer: head.response_id, seq: head.seq,
                            samples: head.samples, rate: head.sample_rate });
        if (!bench.chunkAudio && head.samples === head.sample_rate) {
          bench.chunkAudio = data.slice(cut + 10, data.length - 2);  // a whole second
        }
      });
    }
  };

  const NativeNode = window.AudioWorkletNode;
  if (NativeNode) window.AudioWorkletNode = class extends NativeNode {
    constructor(context, ...rest) {
      super(context, ...rest);
      this.port.addEventListener("message", (event) => {
        if (event.data.type !== "bench.start") return;
        const stamp = context.getOutputTimestamp();
        bench.starts.push({
          at: event.timeStamp, answer: event.data.answer, frame: event.data.frame,
          rate: context.sampleRate, outputLatency: context.outputLatency,
          baseLatency: context.baseLatency, stampContext: stamp.contextTime,
          stampPerformance: stamp.performanceTime,
        });
      });
    }
  };

  // Time to interactive: the moment the page marks its connection "connected".
  new MutationObserver(() => {
    const element = document.getElementById("connection");
    if (bench.connectedAt === null && element?.dataset.state === "connected") {
      bench.connectedAt = performance.now();
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
})();
"""

# Prepended to player-worklet.js: the render quantum in which a dry queue starts playing.
WORKLET_HOOK = """// scripts/bench_web.py: report where playback starts after a dry spell.
const benchRegister = globalThis.registerProcessor;
globalThis.registerProcessor = (name, Processor) => benchRegister(name, class extends Processor {
  process(inputs, outputs) {
    const before = this.queue.played;
    const result = super.process(inputs, outputs);
    if (this.benchDry !== false && this.queue.played > before) {
      const answer = this.queue.current ? this.queue.current.answer : null;
      this.port.postMessage({ type: "bench.start", frame: currentFrame, answer });
    }
    this.benchDry = this.queue.queued === 0;
    return result;
  }
});
"""

# The page's own decoder and resampler, timed in the page. performance.now() is coarsened
# (100 us without cross-origin isolation), so each timing runs a batch of at least ~2 ms and
# divides: max is the worst batch average for the fast operations.
DECODE_BENCH = r"""
async ([audio, timings]) => {
  const core = await import(new URL("audio-core.js", location.href).href);
  const bytes = core.decodeBase64Fallback(audio);
  const samples = core.parseWav(bytes).samples;
  const steady = new core.Resampler(22050, 48000);
  let sink = 0;
  const ops = {
    "base64 Uint8Array.fromBase64": () => Uint8Array.fromBase64(audio).length,
    "base64 fallback table decoder": () => core.decodeBase64Fallback(audio).length,
    "WAV parse + int16 -> float32": () => core.parseWav(bytes).samples.length,
    "whole chunk, fromBase64 (the page's path)": () =>
      core.parseWav(core.decodeBase64(audio)).samples.length,
    "whole chunk, fallback decoder": () =>
      core.parseWav(core.decodeBase64Fallback(audio)).samples.length,
    "resample 1 s 22050 -> 48000 (streaming)": () => steady.process(samples).length,
    "new Resampler(22050, 48000) (its table)": () => new core.Resampler(22050, 48000).table.length,
  };
  if (typeof Uint8Array.fromBase64 !== "function") delete ops["base64 Uint8Array.fromBase64"];
  let tick = Infinity;  // the timer's resolution, as seen
  for (let i = 0, last = performance.now(); i < 2000; i++) {
    const now = performance.now();
    if (now > last) tick = Math.min(tick, now - last);
    last = now;
  }
  const results = {};
  for (const [name, op] of Object.entries(ops)) {
    for (let i = 0; i < 3; i++) sink += op();  // warm up (JIT)
    let runs = 0;  // how many fit in 20 ms: a batch is ~2 ms
    for (const t = performance.now(); performance.now() - t < 20; runs++) sink += op();
    const batch = Math.max(1, Math.round(runs / 10));
    const each = [];
    for (let i = 0; i < timings; i++) {
      const start = performance.now();
      for (let k = 0; k < batch; k++) sink += op();
      each.push((performance.now() - start) / batch);
    }
    each.sort((a, b) => a - b);
    results[name] = { median_ms: each[each.length >> 1], max_ms: each[each.length - 1],
                      batch, timings };
  }
  return { results, sink, tickMs: tick, fromBase64: typeof Uint8Array.fromBase64 === "function",
           chunkSamples: samples.length, chunkBase64Chars: audio.length,
           userAgent: navigator.userAgent };
}
"""

# An answer has ended and every sample of it has left the queue; its playback start is known.
ANSWER_DONE = r"""
(index) => {
  const s = window.voicechat.state();
  const turn = s.turns[index];
  if (!turn || !turn.status || !turn.responseId) return false;
  const counts = s.player.answers[turn.responseId];
  const drained = turn.chunks === 0 || (counts && counts.received === counts.sent
    && counts.played + counts.dropped === counts.received && s.player.queued === 0);
  const started = turn.chunks === 0
    || window.__bench.starts.some((start) => start.answer === turn.responseId);
  return drained && started;
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def voicechat_server(*options: str, ready_s: float = 120.0) -> Iterator[str]:
    """`python -m voicechat serve` on a free loopback port; yields the page's URL once /healthz
    answers. Stopped (SIGTERM, then SIGKILL) however the block ends."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "voicechat", "serve", "--port", str(port),
             "--log-level", "warning", *options],
            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + ready_s
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(
                        f"voicechat serve exited ({server.returncode}):\n{log.read()}"
                    )
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("voicechat serve did not answer /healthz") from None
                    time.sleep(0.1)  # poll interval
            yield f"http://127.0.0.1:{port}/"
        finally:
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


@contextmanager
def private_sink() -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon with a null sink (the tests' helper); yields the client env."""
    from tests.audio_env import start_pulse

    with tempfile.TemporaryDirectory(prefix="voicechat-bench-web-") as directory:
        daemon = start_pulse(Path(directory))
        try:
            yield daemon.client_env
        finally:
            daemon.stop()


async def hook_worklet(context: Any, page: Any) -> None:
    """Serve player-worklet.js with WORKLET_HOOK prepended, through CDP's Fetch domain."""
    cdp = await context.new_cdp_session(page)

    async def paused(event: dict[str, Any]) -> None:
        request_id = event["requestId"]
        try:
            body = await cdp.send("Fetch.getResponseBody", {"requestId": request_id})
            text = (
                base64.b64decode(body["body"]).decode() if body["base64Encoded"] else body["body"]
            )
            headers = [h for h in event["responseHeaders"] if h["name"].lower() != "content-length"]
            await cdp.send("Fetch.fulfillRequest", {
                "requestId": request_id, "responseCode": event["responseStatusCode"],
                "responseHeaders": headers,
                "body": base64.b64encode((WORKLET_HOOK + text).encode()).decode(),
            })  # fmt: skip
        except Exception:
            await cdp.send("Fetch.continueRequest", {"requestId": request_id})
            raise

    cdp.on("Fetch.requestPaused", lambda event: asyncio.ensure_future(paused(event)))
    pattern = {"urlPattern": "*/player-worklet.js*", "requestStage": "Response"}
    await cdp.send("Fetch.enable", {"patterns": [pattern]})


class PageErrors:
    """Uncaught exceptions, console errors and CSP reports of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))


async def open_page(browser: Any, url: str, *, hooked: bool = True) -> tuple[Any, Any, PageErrors]:
    context = await browser.new_context(viewport={"width": 1000, "height": 700})
    await context.add_init_script(INIT_SCRIPT)
    page = await context.new_page()
    errors = PageErrors(page)
    if hooked:
        await hook_worklet(context, page)
    await page.goto(url)
    await page.wait_for_function("() => window.voicechat.state().connection.state === 'connected'")
    return context, page, errors


async def ask(page: Any, text: str, turn: int, timeout_s: float) -> dict[str, Any]:
    """Type a question, press Enter (real input events), wait until its answer has played out."""
    await page.fill("#message", text)
    await page.press("#message", "Enter")
    await page.wait_for_function(ANSWER_DONE, arg=turn, polling=100, timeout=timeout_s * 1000)
    return await page.evaluate("() => window.voicechat.state()")


def first_chunk_latency(bench: dict[str, Any], answer: str) -> dict[str, Any]:
    """The answer's first chunk (it found the player idle) to its first sample at the output."""
    chunk = next(c for c in bench["chunks"] if c["answer"] == answer and c["seq"] == 0)
    start = next(s for s in bench["starts"] if s["answer"] == answer)
    device_ms = 1000 * (start["outputLatency"] + start["baseLatency"])
    worklet_ms = start["at"] - chunk["at"]
    at_output = start["stampPerformance"] + 1000 * (
        start["frame"] / start["rate"] - start["stampContext"]
    )
    return {
        "worklet_start_ms": round(worklet_ms, 2),
        "output_latency_ms": round(1000 * start["outputLatency"], 2),
        "base_latency_ms": round(1000 * start["baseLatency"], 2),
        "to_output_ms": round(worklet_ms + device_ms, 2),
        "to_output_by_output_timestamp_ms": round(at_output - chunk["at"], 2),
    }


async def answers_run(
    browser: Any, url: str, prompts: list[str], *, warm_up: bool, timeout_s: float
) -> dict[str, Any]:
    """Ask `prompts` in one page, one after the other; per answer: latency, counters."""
    context, page, errors = await open_page(browser, url)
    try:
        turn = 1
        if warm_up:  # creates the AudioContext and loads the worklet: not an idle-player chunk
            await ask(page, prompts[0], turn, timeout_s)
            turn += 2
        per_answer = []
        underruns = (await page.evaluate("() => window.voicechat.state()"))["player"]["underruns"]
        for prompt in prompts:
            state = await ask(page, prompt, turn, timeout_s)
            answer = state["turns"][turn]
            bench = await page.evaluate("() => window.__bench")
            counts = state["player"]["answers"][answer["responseId"]]
            starts = [s for s in bench["starts"] if s["answer"] == answer["responseId"]]
            per_answer.append(
                {
                    "prompt": prompt,
                    "status": answer["status"],
                    "chunks": answer["chunks"],
                    "audio_s": round(counts["received"] / state["player"]["contextRate"], 2),
                    "counts": counts,
                    "underruns": state["player"]["underruns"] - underruns,
                    "restarts_after_dry": len(starts) - 1,  # chunks that found it dry again
                    "metrics": answer["metrics"],
                    **first_chunk_latency(bench, answer["responseId"]),
                }
            )
            underruns = state["player"]["underruns"]
            turn += 2
        keys = ["kind", "state", "contextRate", "received", "played", "dropped", "underruns"]
        return {
            "answers": per_answer,
            "player": {key: state["player"][key] for key in keys},
            "page_errors": errors.errors,
            "chunk_audio": bench["chunkAudio"],
        }
    finally:
        await context.close()


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def latency_summary(run: dict[str, Any]) -> dict[str, Any]:
    answers = run["answers"]
    keys = ["to_output_ms", "worklet_start_ms", "to_output_by_output_timestamp_ms"]
    result = {key: summary([a[key] for a in answers]) for key in keys}
    for key in ["output_latency_ms", "base_latency_ms"]:  # varies from answer to answer
        result[key] = sorted({min(a[key] for a in answers), max(a[key] for a in answers)})
    result["answers"] = len(answers)
    return result


async def decode_costs(browser: Any, url: str, chunk_audio: str | None) -> dict[str, Any]:
    if chunk_audio is None:  # no whole-second chunk seen: make one exactly as the server does
        import numpy as np

        from voicechat.audio.wav import encode_wav

        t = np.arange(22050) / 22050
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()
        chunk_audio = base64.b64encode(encode_wav(pcm, 22050)).decode()
    context, page, _ = await open_page(browser, url, hooked=False)
    try:
        return await page.evaluate(DECODE_BENCH, [chunk_audio, 100])
    finally:
        await context.close()


LOAD_MARKS = r"""
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const paint = performance.getEntriesByName("first-contentful-paint")[0];
  return {
    response_end_ms: nav.responseEnd,
    first_contentful_paint_ms: paint ? paint.startTime : null,
    dom_content_loaded_ms: nav.domContentLoadedEventEnd,
    load_ms: nav.loadEventEnd,
    socket_created_ms: window.__bench.socket.created,
    socket_open_ms: window.__bench.socket.open,
    session_created_ms: window.__bench.socket.message,
    interactive_ms: window.__bench.connectedAt,
  };
}
"""


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def loaded(page: Any) -> None:
    """The load event has fired and the session is connected."""
    await page.wait_for_function("() => window.__bench.connectedAt !== null")
    await page.wait_for_load_state("load")


async def page_weight(browser: Any, url: str) -> dict[str, Any]:
    """Every response of one page load in a fresh context (empty cache), from CDP's network
    events; then the worklet's files, fetched on the first key press (CDP's Network domain does
    not see a worklet's requests, its Fetch domain does: bodies only); then a reload."""
    context = await browser.new_context()
    await context.add_init_script(INIT_SCRIPT)
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    seen: dict[str, dict[str, Any]] = {}

    def response(event: dict[str, Any]) -> None:
        found = {"path": path_of(event["response"]["url"]), "status": event["response"]["status"]}
        seen.setdefault(event["requestId"], {}).update(found)

    def finished(event: dict[str, Any]) -> None:
        seen.setdefault(event["requestId"], {})["transfer_bytes"] = event["encodedDataLength"]

    worklet: list[dict[str, Any]] = []

    async def paused(event: dict[str, Any]) -> None:
        request_id = event["requestId"]
        body = await cdp.send("Fetch.getResponseBody", {"requestId": request_id})
        size = len(base64.b64decode(body["body"]) if body["base64Encoded"] else body["body"])
        worklet.append({"path": path_of(event["request"]["url"]), "body_bytes": size})
        await cdp.send("Fetch.continueRequest", {"requestId": request_id})

    cdp.on("Network.responseReceived", response)
    cdp.on("Network.loadingFinished", finished)
    cdp.on("Fetch.requestPaused", lambda event: asyncio.ensure_future(paused(event)))
    await cdp.send("Network.enable")
    try:
        await page.goto(url)
        await loaded(page)
        files = sorted((f for f in seen.values() if "path" in f), key=lambda f: f["path"])
        bodies = await page.evaluate("""() => performance.getEntriesByType("navigation")
          .concat(performance.getEntriesByType("resource"))
          .map((entry) => [entry.name, entry.encodedBodySize])""")
        for file in files:
            file["body_bytes"] = dict((path_of(u), size) for u, size in bodies).get(file["path"])
        everything = {"urlPattern": "*", "requestStage": "Response"}
        await cdp.send("Fetch.enable", {"patterns": [everything]})
        await page.press("#message", "Shift")  # the first gesture: AudioContext + worklet
        await page.wait_for_function("() => window.voicechat.state().player.kind !== 'none'")
        await cdp.send("Fetch.disable")
        seen.clear()
        await page.reload()
        await loaded(page)
        reload_bytes = sum(f.get("transfer_bytes", 0) for f in seen.values())
    finally:
        await context.close()
    static = [p for p in STATIC.rglob("*") if p.is_file()]
    return {
        "files": files,
        "page_load_bytes": sum(f["transfer_bytes"] for f in files),
        "page_load_body_bytes": sum(f["body_bytes"] or 0 for f in files),
        "after_first_gesture": sorted(worklet, key=lambda f: f["path"]),
        "after_first_gesture_body_bytes": sum(f["body_bytes"] for f in worklet),
        "reload_bytes": reload_bytes,
        "static_folder_bytes": sum(p.stat().st_size for p in static),
        "static_files": len(static),
    }


async def load_times(browser: Any, url: str, loads: int) -> dict[str, Any]:
    """From navigation start, p50/max over `loads` fresh contexts: time to interactive is the
    page marking its connection "connected" (the composer is never disabled)."""
    marks = []
    for _ in range(loads):
        context = await browser.new_context()
        await context.add_init_script(INIT_SCRIPT)
        try:
            page = await context.new_page()
            await page.goto(url)
            await loaded(page)
            marks.append(await page.evaluate(LOAD_MARKS))
        finally:
            await context.close()
    times = {key: summary([m[key] for m in marks if m[key] is not None]) for key in marks[0]}
    return {"loads": loads, **times}


async def run(args: argparse.Namespace, sound_env: dict[str, str]) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    result: dict[str, Any] = {"sound": "PulseAudio null sink" if sound_env else "no sound server"}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            ignore_default_args=["--mute-audio"],
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
            env={**os.environ, **sound_env},
        )
        try:
            result["chromium"] = browser.version
            with tempfile.TemporaryDirectory(prefix="voicechat-bench-web-") as directory:
                script = Path(directory) / "answer.json"
                script.write_text(json.dumps(SCRIPTED_ANSWER))
                with voicechat_server("--llm", f"scripted:{script}", "--tts", "tone") as url:
                    prompts = [PROMPTS[0]] * args.answers
                    scripted = await answers_run(browser, url, prompts, warm_up=True, timeout_s=60)
                    result["scripted"] = latency_summary(scripted)
                    result["scripted"]["underruns"] = scripted["player"]["underruns"]
                    result["scripted"]["page_errors"] = scripted["page_errors"]
                    result["decode"] = await decode_costs(browser, url, scripted["chunk_audio"])
                    result["page"] = await page_weight(browser, url)
                    result["page"].update(await load_times(browser, url, args.loads))
            if args.embedded:
                with voicechat_server("--llm", "local", "--tts", "piper") as url:
                    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.embedded_answers)]
                    embedded = await answers_run(
                        browser, url, prompts, warm_up=False, timeout_s=300
                    )
                result["embedded"] = latency_summary(embedded)
                result["embedded"]["player"] = embedded["player"]
                result["embedded"]["per_answer"] = embedded["answers"]
                result["embedded"]["page_errors"] = embedded["page_errors"]
        finally:
            await browser.close()
    return result


def print_table(result: dict[str, Any]) -> None:
    def row(label: str, value: Any) -> None:
        print(f"  {label:46s} {value}")

    def spread(section: dict[str, Any], key: str, digits: int = 2) -> str:
        return (
            f"p50 {section[key]['p50']:7.{digits}f} ms   max {section[key]['max']:7.{digits}f} ms"
        )

    def latency(name: str, section: dict[str, Any]) -> None:
        print(f"\n{name}, {section['answers']} answers:")
        print("  a chunk at an idle player -> its first sample at the output")
        row("message event -> worklet start + output/base", spread(section, "to_output_ms"))
        row("message event -> worklet start", spread(section, "worklet_start_ms"))
        row(
            "cross-check: getOutputTimestamp()", spread(section, "to_output_by_output_timestamp_ms")
        )
        ranges = [" - ".join(f"{v:.2f}" for v in section[key]) + " ms"
                  for key in ("output_latency_ms", "base_latency_ms")]  # fmt: skip
        row("outputLatency / baseLatency", " / ".join(ranges))
        row("page errors", section["page_errors"] or "none")

    print(f"Chromium {result['chromium']}, sound: {result['sound']}, run {result['run_s']} s")
    latency("scripted LLM + tone voice", result["scripted"])
    row("underruns", result["scripted"]["underruns"])
    if "embedded" in result:
        embedded = result["embedded"]
        latency("embedded SmolLM2 + Piper", embedded)
        audio = sum(a["audio_s"] for a in embedded["per_answer"])
        row("underruns", f"{embedded['player']['underruns']} over {audio:.1f} s of audio")
        for a in embedded["per_answer"]:
            c = a["counts"]
            counts = f"sent {c['sent']} received {c['received']} played {c['played']}"
            row(f"  {a['prompt']}", f"{a['status']}, {a['audio_s']:5.1f} s, {counts} "
                f"dropped {c['dropped']}, underruns {a['underruns']}")  # fmt: skip

    decode = result["decode"]
    chunk = f"{decode['chunkSamples']} samples, {decode['chunkBase64Chars']} Base64 characters"
    print(f"\ndecoding a real 1 s chunk ({chunk}); timer tick {decode['tickMs']:.3f} ms")
    for name, cost in decode["results"].items():
        row(name, f"median {cost['median_ms']:7.3f} ms   max {cost['max_ms']:7.3f} ms")

    page = result["page"]
    print("\npage weight (a fresh context: empty cache)")
    for file in page["files"]:
        row(f"  {file['path']} ({file['status']})",
            f"{file['transfer_bytes']:6d} B transferred, {file['body_bytes']} B body")  # fmt: skip
    row("page load", f"{page['page_load_bytes']} B ({page['page_load_body_bytes']} B of bodies)")
    worklet = ", ".join(f"{f['path']} {f['body_bytes']} B" for f in page["after_first_gesture"])
    row("first key press: the worklet (bodies)", worklet or "-")
    row("reload (revalidated by ETag)", f"{page['reload_bytes']} B")
    row("the static folder", f"{page['static_folder_bytes']} B in {page['static_files']} files")
    print(f"\npage load on loopback, {page['loads']} fresh contexts, from navigation start")
    for key in ["response_end_ms", "socket_created_ms", "first_contentful_paint_ms",
                "dom_content_loaded_ms", "load_ms", "socket_open_ms", "session_created_ms",
                "interactive_ms"]:  # fmt: skip
        row(key.removesuffix("_ms").replace("_", " "), spread(page, key, 1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--answers", type=int, default=10, help="scripted answers measured")
    parser.add_argument("--loads", type=int, default=10, help="page loads for time to interactive")
    parser.add_argument("--embedded", action="store_true", help="also the real SmolLM2 + Piper")
    parser.add_argument("--embedded-answers", type=int, default=5)
    parser.add_argument("--no-pulse", action="store_true", help="no private PulseAudio sink")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not Path(CHROMIUM).is_file():
        sys.exit(f"{CHROMIUM} missing: apt-get install chromium (scripts/setup.sh test)")

    started = time.perf_counter()
    try:
        with ExitStack() as stack:
            sound_env = {} if args.no_pulse else stack.enter_context(private_sink())
            result = asyncio.run(run(args, sound_env))
    except KeyboardInterrupt:  # everything started has been stopped on the way out
        sys.exit(130)
    result["run_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()

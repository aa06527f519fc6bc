"""Speech input measured on the embedded stack: voice-to-voice latency, what speculative
transcription saves, Whisper's accuracy and speed, and the CPU cost of idle listening.

    python scripts/bench_speech.py [voice|speculative|wer|idle] [options] [--json]

- voice (default): a real server on loopback, in this process, on the embedded defaults
  (`open_backends(BackendOptions())`: local SmolLM2, Piper, Whisper tiny.en, Silero VAD). Per
  question a fresh connection streams a microphone signal in real time, 20 ms frames paced by
  the event loop's clock (each frame is sent when its last sample has been "captured"): 0.5 s
  of silence, a question spoken by Piper (tests/speech_fixtures.py, in this process), then
  silence until the answer's first audio.chunk arrives; then the client cancels the answer
  (what follows is not measured) and reads to its response.done, so the next question finds the
  server idle. Latency runs from the end of the user's speech (the send time of the frame
  holding the last speech sample: the last 10 ms block within 40 dB of the clip's peak) to the
  first audio.chunk's arrival at the client, split at the events the client sees
  (speech_stopped, transcript, first text.delta). Playback device latency is counted as zero:
  this measures to the client's receipt. One unmeasured warm-up turn first. A typed baseline
  follows: the same questions as user.message, each on a fresh session, in a pass of their own
  (each question follows a different one: a repeated prompt would hit llama.cpp's prompt cache
  and answer in ~1 ms; --no-typed skips it). `--silence-ms 400,600,800` repeats the questions
  for each silence (session.update), as the turn-end wait dominates.
- speculative: the same turns with speculative transcription on and off, interleaved per
  question; "off" replaces `Listener._speculate` with a no-op in this process.
- wer: Whisper tiny.en and base through the real worker (`whisper_worker`, each model's default
  language: "en" for tiny.en, detected for base) on 10 sentences said by Piper and by espeak-ng
  (the project's espeak worker, voice en-us), 0.3 s of silence before and 0.1 s after; word
  error rate (speech_fixtures.corpus_wer) and real-time factor (the worker's decoding time /
  audio duration).
- idle: 1 and 10 sessions stream quiet room noise (~-70 dBFS) in real time, 20 ms frames, for
  --idle-s seconds; CPU time of the VAD worker (/proc/<pid>/stat) and of the server (this
  process minus the thread that runs the clients) per second of audio per session.

The client runs in the server's process (its own thread for `idle`). The machine may be shared:
the load average at the start of each part is printed with it. Run times on 2 cores at load
~3: voice ~1 min per silence value (+15 s start), speculative ~1.7 min, wer ~1.2 min, idle ~1 min.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests/

from tests.speech_fixtures import QUESTIONS, corpus_wer, pad, spoken_pcm, word_error_rate
from voicechat.client.connection import ChatConnection
from voicechat.config import open_backends
from voicechat.server import VoiceChatServer
from voicechat.settings import BackendOptions, ServerConfig
from voicechat.speech.listener import Listener
from voicechat.speech.models import default_language
from voicechat.workers.embedded import espeak_worker, whisper_worker

RATE = 16000
FRAME = 320  # 20 ms, as a microphone delivers it
LEAD_S = 0.5  # silence before each question
END_DB = 40  # speech ends with the last 10 ms block within this many dB of the clip's peak
TARGET_MS = 1200  # voice-to-voice p50 target
TURN_TIMEOUT_S = 60.0
MAX_TRAILING_S = 20.0  # the microphone gives up after this much silence with no answer

VOICE_QUESTIONS = [
    *QUESTIONS,
    "What is the tallest mountain in the world?",
    "How do bees make honey?",
    "Where do penguins live?",
    "What is the boiling point of water?",
    "Can you recommend a good book?",
]
WARMUP_QUESTION = "Hello, how are you today?"
WER_SENTENCES = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Tell me a short joke about cats.",
    "Why is the sky blue?",
    "Name three fruits that are red.",
    "The train to Boston leaves at seven thirty tomorrow morning.",
    "Please remind me to buy milk, eggs and bread after work.",
    "How far is the moon from the earth in kilometers?",
    "My sister moved to Seattle last year and loves the rain.",
    "Can you explain how a rainbow forms after a storm?",
]
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# --- helpers ------------------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def p50_max(values: list[float], digits: int = 1) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None, "mean": None}
    return {
        "p50": round(statistics.median(values), digits),
        "max": round(max(values), digits),
        "mean": round(statistics.fmean(values), digits),
    }


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


BLOCK = RATE // 100  # 10 ms


def loud_blocks(samples: np.ndarray) -> np.ndarray:
    """The indices of the 10 ms blocks whose RMS is within END_DB of the clip's peak."""
    x = samples.astype(np.float64)
    floor = np.abs(x).max() * 10 ** (-END_DB / 20)
    blocks = len(x) // BLOCK
    rms = np.sqrt(np.mean(x[: blocks * BLOCK].reshape(blocks, BLOCK) ** 2, axis=1))
    return np.flatnonzero(rms >= floor)


def speech_end_sample(samples: np.ndarray) -> int:
    """One past the last sample of speech: the end of the last 10 ms block within END_DB of
    the peak (Piper fades out over ~150 ms of near-silence)."""
    loud = loud_blocks(samples)
    return int((loud[-1] + 1) * BLOCK) if loud.size else len(samples)


def cpu_seconds(stat_path: str) -> float:
    """utime + stime of a process or thread from its /proc stat file."""
    with open(stat_path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


@asynccontextmanager
async def embedded_server() -> AsyncIterator[VoiceChatServer]:
    """The embedded defaults, as `voicechat serve` runs them, on a free loopback port."""
    async with AsyncExitStack() as stack:
        backends = await open_backends(BackendOptions(), stack)
        server = VoiceChatServer(
            backends.chat,
            backends.tts,
            ServerConfig(port=0),
            backends.workers,
            speech=backends.speech,
        )
        await server.start()
        try:
            yield server
        finally:
            await server.shutdown()


@contextmanager
def speculation(on: bool) -> Iterator[None]:
    """Speculative transcription as the product has it, or (off) a no-op in its place."""
    original = Listener._speculate
    if not on:
        Listener._speculate = lambda self, at_ms: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Listener._speculate = original  # type: ignore[method-assign]


def print_table(title: str, rows: list[tuple[str, Any, Any]], head: tuple[str, str, str]) -> None:
    width = max(len(row[0]) for row in rows)
    print(title)
    print(f"  {'':{width}s}  {head[1]:>9s}  {head[2]:>9s}")
    for name, a, b in rows:
        print(f"  {name:{width}s}  {fmt(a):>9s}  {fmt(b):>9s}")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


# --- one spoken turn ----------------------------------------------------------------------------


async def voice_turn(url: str, text: str, speech: np.ndarray, silence_ms: int) -> dict[str, Any]:
    """Speak `speech` into a fresh session in real time; times of every step, in seconds on
    the event loop's clock relative to the end of speech."""
    loop = asyncio.get_running_loop()
    lead = round(LEAD_S * RATE)
    signal = np.concatenate([np.zeros(lead, np.int16), speech])
    end = lead + speech_end_sample(speech)  # one past the last speech sample
    end_frame = (end - 1) // FRAME
    pcm = signal.astype("<i2").tobytes()
    silence = bytes(2 * FRAME)
    marks: dict[str, float] = {}
    lag = [0.0]  # the latest any frame left after its due time
    events: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    answered = asyncio.Event()

    async with ChatConnection(url) as connection:
        await connection.update_session(silence_ms=silence_ms)
        while (await connection.next_event())["type"] != "session.updated":
            pass

        async def microphone() -> None:
            start = loop.time()
            frame = 0
            while not answered.is_set():
                due = start + (frame + 1) * FRAME / RATE  # its last sample is captured now
                await asyncio.sleep(max(0.0, due - loop.time()))
                if answered.is_set():
                    return
                piece = pcm[2 * frame * FRAME : 2 * (frame + 1) * FRAME]
                piece += silence[len(piece) :]
                now = loop.time()
                lag[0] = max(lag[0], now - due)
                if frame == end_frame:
                    marks["speech_end"] = now
                await connection.append_audio(piece)
                frame += 1
                if (frame * FRAME - end) / RATE > MAX_TRAILING_S:
                    return

        mic = asyncio.create_task(microphone())
        try:
            async with asyncio.timeout(TURN_TIMEOUT_S):
                async for event in connection.events():
                    kind = event["type"]
                    if kind not in events:
                        events[kind] = event
                        marks[kind] = loop.time()
                        if kind == "audio.chunk":  # what follows is not measured
                            answered.set()
                            await connection.cancel()
                    if kind == "audio.chunk":
                        event["audio"] = None
                    if kind == "error":
                        errors.append(event)
                    if kind == "response.done":
                        break
                    if kind == "error" and event.get("code") in ("no_speech", "stt_failed"):
                        break  # this turn gets no answer
        except TimeoutError:
            errors.append({"code": "timeout", "message": f"no response.done in {TURN_TIMEOUT_S} s"})
        finally:
            answered.set()
            mic.cancel()
            await asyncio.gather(mic, return_exceptions=True)

    def since(kind: str, origin: str = "speech_end") -> float | None:
        if kind not in marks or origin not in marks:
            return None
        return ms(marks[kind] - marks[origin])

    transcript = events.get("input_audio.transcript", {})
    stopped = events.get("input_audio.speech_stopped", {})
    metrics = events.get("response.done", {}).get("metrics", {})
    heard = transcript.get("text")
    return {
        "question": text,
        "transcript": heard,
        "wer": round(word_error_rate(text, heard), 3) if heard is not None else None,
        "total_ms": since("audio.chunk"),
        "turn_end_wait_ms": since("input_audio.speech_stopped"),
        "transcription_ms": since("input_audio.transcript", "input_audio.speech_stopped"),
        "end_to_transcript_ms": since("input_audio.transcript"),
        "stt_ms": transcript.get("stt_ms"),
        "first_text_ms": since("text.delta", "input_audio.transcript"),
        "text_to_audio_ms": since("audio.chunk", "text.delta"),
        "transcript_to_audio_ms": since("audio.chunk", "input_audio.transcript"),
        "server_first_text_ms": metrics.get("first_text_ms"),
        "server_first_audio_ms": metrics.get("first_audio_ms"),
        # The detected pause start against the true end of speech, on the audio clock.
        "vad_end_error_ms": (
            round(stopped["audio_end_ms"] - 1000 * end / RATE, 1) if stopped else None
        ),
        "speech_s": round(len(speech) / RATE, 2),
        "status": events.get("response.done", {}).get("status"),
        "errors": [f"{e.get('code')}: {e.get('message')}" for e in errors],
        "pacing_lag_ms": ms(lag[0]),
    }


PARTS = [  # (key, label) in the order the parts happen
    ("total_ms", "end of speech -> first audio.chunk (total)"),
    ("turn_end_wait_ms", "  turn-end wait: end of speech -> speech_stopped"),
    ("transcription_ms", "  transcription: speech_stopped -> transcript"),
    ("stt_ms", "    server stt_ms (0 = speculative transcript ready)"),
    ("first_text_ms", "  LLM first text: transcript -> first text.delta"),
    ("text_to_audio_ms", "  first unit + TTS: first text.delta -> first audio"),
    ("transcript_to_audio_ms", "  (transcript -> first audio.chunk)"),
    ("server_first_audio_ms", "  (server metrics first_audio_ms, from its turn end)"),
    ("vad_end_error_ms", "VAD: speech_stopped audio_end_ms - true speech end"),
    ("pacing_lag_ms", "microphone: latest frame after its due time"),
    ("typed_first_text_ms", "typed baseline: user.message -> first text.delta"),
    ("typed_total_ms", "typed baseline: user.message -> first audio.chunk"),
]


async def typed_turn(url: str, text: str) -> dict[str, Any]:
    """The same question typed (user.message) into a fresh session: the answer's own latency,
    without the ear."""
    loop = asyncio.get_running_loop()
    marks: dict[str, float] = {}
    async with ChatConnection(url) as connection:
        sent = loop.time()
        await connection.send_user_message(text)
        async with asyncio.timeout(TURN_TIMEOUT_S):
            async for event in connection.events():
                if event["type"] not in marks:
                    marks[event["type"]] = loop.time()
                    if event["type"] == "audio.chunk":
                        await connection.cancel()  # what follows is not measured
                if event["type"] == "response.done":
                    break
    return {
        kind: ms(marks[name] - sent) if name in marks else None
        for kind, name in (("typed_first_text_ms", "text.delta"), ("typed_total_ms", "audio.chunk"))
    }


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in turns if t["total_ms"] is not None]
    summary = {key: p50_max([t[key] for t in ok if t.get(key) is not None]) for key, _ in PARTS}
    summary["turns"] = len(turns)
    summary["answered"] = len(ok)
    summary["transcript_wer"] = round(
        corpus_wer([(t["question"], t["transcript"] or "") for t in turns]), 3
    )
    return summary


def spoken_questions(count: int) -> list[tuple[str, np.ndarray]]:
    texts = [VOICE_QUESTIONS[i % len(VOICE_QUESTIONS)] for i in range(count)]
    return [(text, spoken_pcm(text, varied=True)) for text in texts]


# --- voice ------------------------------------------------------------------------------------


async def run_voice(args: argparse.Namespace) -> dict[str, Any]:
    questions = spoken_questions(args.questions)
    warmup = spoken_pcm(WARMUP_QUESTION, varied=True)
    result: dict[str, Any] = {"runs": []}
    started = time.perf_counter()
    async with embedded_server() as server:
        result["server_start_s"] = round(time.perf_counter() - started, 1)
        await voice_turn(server.url, WARMUP_QUESTION, warmup, args.silence_ms[0])
        for silence_ms in args.silence_ms:
            turns = []
            for text, speech in questions:
                turns.append(await voice_turn(server.url, text, speech, silence_ms))
                if not args.json:
                    show_turn(turns[-1])
            if args.typed:  # a pass of its own: each question follows another, as spoken ones do
                for turn in turns:
                    turn.update(await typed_turn(server.url, turn["question"]))
            result["runs"].append(
                {"silence_ms": silence_ms, "summary": summarize(turns), "turns": turns}
            )
    return result


def show_turn(turn: dict[str, Any]) -> None:
    problems = "; ".join(turn["errors"])
    print(
        f"  {turn['question'][:36]:36s} total {fmt(turn['total_ms']):>6s} ms  "
        f"heard {turn['transcript']!r}{'  ' + problems if problems else ''}",
        flush=True,
    )


def print_voice(result: dict[str, Any]) -> None:
    print(
        f"server (open_backends + start) ready in {result['server_start_s']} s; "
        "one unmeasured warm-up turn"
    )
    for run in result["runs"]:
        summary = run["summary"]
        rows = [(label, summary[key]["p50"], summary[key]["max"]) for key, label in PARTS]
        print_table(
            f"\nvoice-to-voice, silence_ms {run['silence_ms']}: {summary['answered']}/"
            f"{summary['turns']} answered, transcript WER {summary['transcript_wer']:.1%} "
            "(ms; playback device latency counted as 0: measured to the client's receipt)",
            rows,
            ("", "p50", "max"),
        )
        p50 = summary["total_ms"]["p50"]
        verdict = "met" if p50 is not None and p50 <= TARGET_MS else "NOT met"
        print(f"  target p50 <= {TARGET_MS} ms: {verdict}")


# --- speculative --------------------------------------------------------------------------------


async def run_speculative(args: argparse.Namespace) -> dict[str, Any]:
    questions = spoken_questions(args.questions)
    warmup = spoken_pcm(WARMUP_QUESTION, varied=True)
    silence_ms = args.silence_ms[0]
    turns: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    async with embedded_server() as server:
        await voice_turn(server.url, WARMUP_QUESTION, warmup, silence_ms)
        for index, (text, speech) in enumerate(questions):
            order = ("on", "off") if index % 2 == 0 else ("off", "on")  # interleaved: fair drift
            for mode in order:
                with speculation(mode == "on"):
                    turns[mode].append(await voice_turn(server.url, text, speech, silence_ms))
                if not args.json:
                    print(f"  [{mode:3s}]", end="")
                    show_turn(turns[mode][-1])
    modes = {}
    for mode, done in turns.items():
        summary = summarize(done)
        modes[mode] = {
            "stt_ms": summary["stt_ms"],
            "transcription_ms": summary["transcription_ms"],
            "end_to_transcript_ms": p50_max(
                [t["end_to_transcript_ms"] for t in done if t["end_to_transcript_ms"] is not None]
            ),
            "total_ms": summary["total_ms"],
            "stt_ms_zero": sum(t["stt_ms"] == 0 for t in done),
            "turns": len(done),
            "transcript_wer": summary["transcript_wer"],
        }
    saved = {
        key: {
            stat: round(modes["off"][key][stat] - modes["on"][key][stat], 1)
            for stat in ("mean", "p50")
            if modes["off"][key][stat] is not None and modes["on"][key][stat] is not None
        }
        for key in ("stt_ms", "end_to_transcript_ms", "total_ms")
    }
    return {"silence_ms": silence_ms, "modes": modes, "saved": saved, "turns": turns}


def print_speculative(result: dict[str, Any]) -> None:
    on, off, saved = result["modes"]["on"], result["modes"]["off"], result["saved"]
    rows = []
    for key, label in (
        ("stt_ms", "server stt_ms"),
        ("transcription_ms", "speech_stopped -> transcript (client)"),
        ("end_to_transcript_ms", "end of speech -> transcript (client)"),
        ("total_ms", "end of speech -> first audio.chunk"),
    ):
        for stat in ("mean", "p50", "max"):
            rows.append((f"{label} {stat}", on[key][stat], off[key][stat]))
    print_table(
        f"\nspeculative transcription, silence_ms {result['silence_ms']}, "
        f"{on['turns']} turns each (ms)",
        rows,
        ("", "on", "off"),
    )
    print(f"  turns with stt_ms 0: on {on['stt_ms_zero']}/{on['turns']}, "
          f"off {off['stt_ms_zero']}/{off['turns']}")  # fmt: skip
    for key, values in saved.items():
        print(f"  saved by speculation, {key}: mean {values.get('mean')} ms, "
              f"p50 {values.get('p50')} ms")  # fmt: skip


# --- wer ----------------------------------------------------------------------------------------


async def espeak_clips(sentences: list[str]) -> list[np.ndarray]:
    """The sentences said by espeak-ng (en-us) in the project's espeak worker, at 16 kHz."""
    import soxr

    worker = espeak_worker()
    try:
        await worker.start()
        clips = []
        for text in sentences:
            async with aclosing(worker.stream({"text": text, "voice": "en-us"})) as replies:
                reply = await anext(replies)
            samples = np.frombuffer(reply["pcm"], "<i2")
            clips.append(soxr.resample(samples, int(reply["rate"]), RATE).astype(np.int16))
        return clips
    finally:
        await worker.aclose()


async def transcribe_all(model: str, clips: list[np.ndarray]) -> dict[str, Any]:
    language = default_language(model)
    worker = whisper_worker(model, language)
    try:
        await worker.start()
        rows = []
        for samples in clips:
            request: dict[str, Any] = {"pcm": samples.astype("<i2").tobytes()}
            if language:
                request["language"] = language
            started = time.perf_counter()
            async with aclosing(worker.stream(request)) as replies:
                reply = await anext(replies)
            wall = time.perf_counter() - started
            audio_s = len(samples) / RATE
            rows.append(
                {
                    "text": reply["text"],
                    "language": reply["language"],
                    "audio_s": round(audio_s, 2),
                    "decode_s": reply["seconds"],
                    "wall_s": round(wall, 3),
                    "rtf": round(reply["seconds"] / audio_s, 3),
                }
            )
        return {"language": language, "start_s": worker.last_start_s, "rows": rows}
    finally:
        await worker.aclose()


async def run_wer(args: argparse.Namespace) -> dict[str, Any]:
    sentences = WER_SENTENCES
    voices = {
        "piper": [pad(spoken_pcm(text, varied=True), 0.3, 0.1) for text in sentences],
        "espeak": [pad(clip, 0.3, 0.1) for clip in await espeak_clips(sentences)],
    }
    models = {}
    for model in args.models:
        runs = {voice: await transcribe_all(model, clips) for voice, clips in voices.items()}
        all_rows = [row for run in runs.values() for row in run["rows"]]
        models[model] = {
            "language": runs["piper"]["language"],
            "worker_start_s": round(runs["piper"]["start_s"] or 0, 2),
            "wer": {
                voice: round(
                    corpus_wer(list(zip(sentences, [r["text"] for r in run["rows"]], strict=True))),
                    3,
                )
                for voice, run in runs.items()
            },
            "wer_all": round(
                corpus_wer(
                    [
                        (text, row["text"])
                        for run in runs.values()
                        for text, row in zip(sentences, run["rows"], strict=True)
                    ]
                ),
                3,
            ),
            "rtf": {
                stat: value
                for stat, value in p50_max([r["rtf"] for r in all_rows], 3).items()
                if stat != "mean"
            },
            "decode_s": p50_max([r["decode_s"] for r in all_rows], 3),
            "wall_s": p50_max([r["wall_s"] for r in all_rows], 3),
            "misheard": [
                {"voice": voice, "reference": text, "heard": row["text"]}
                for voice, run in runs.items()
                for text, row in zip(sentences, run["rows"], strict=True)
                if word_error_rate(text, row["text"]) > 0
            ],
            "rows": runs,
        }
    audio = [len(c) / RATE for clips in voices.values() for c in clips]
    return {
        "sentences": len(sentences),
        "audio_s": p50_max(audio, 2),
        "models": models,
    }


def print_wer(result: dict[str, Any]) -> None:
    print(
        f"\nWhisper through its worker: {result['sentences']} sentences x 2 voices, "
        f"{result['audio_s']['p50']:.1f} s median clip (0.3 s silence before, 0.1 s after)"
    )
    print(
        f"  {'model':8s} {'language':8s} {'WER piper':>9s} {'WER espeak':>10s} {'WER all':>8s} "
        f"{'RTF p50':>8s} {'RTF max':>8s} {'decode p50':>10s} {'max':>6s} {'start':>6s}"
    )
    for model, m in result["models"].items():
        print(
            f"  {model:8s} {m['language'] or 'detect':8s} {m['wer']['piper']:>9.1%} "
            f"{m['wer']['espeak']:>10.1%} {m['wer_all']:>8.1%} {m['rtf']['p50']:>8.3f} "
            f"{m['rtf']['max']:>8.3f} {m['decode_s']['p50']:>9.2f}s {m['decode_s']['max']:>5.2f}s "
            f"{m['worker_start_s']:>5.1f}s"
        )
    for model, m in result["models"].items():
        for miss in m["misheard"]:
            print(f"  {model} {miss['voice']}: {miss['reference']!r} -> {miss['heard']!r}")


# --- idle ---------------------------------------------------------------------------------------


async def idle_sessions(url: str, count: int, seconds: float) -> dict[str, Any]:
    """`count` sessions streaming quiet noise in real time for `seconds`; then a clear each, so
    the listener has judged every frame before this returns."""
    loop = asyncio.get_running_loop()
    noise = np.random.default_rng(1).normal(0, 10, round(seconds * RATE) + FRAME)
    pcm = np.clip(noise, -32768, 32767).astype("<i2").tobytes()
    frames = round(seconds * RATE / FRAME)
    events: list[str] = []

    async def one(connection: ChatConnection, start: float) -> float:
        lag = 0.0
        for frame in range(frames):
            due = start + (frame + 1) * FRAME / RATE
            await asyncio.sleep(max(0.0, due - loop.time()))
            lag = max(lag, loop.time() - due)
            await connection.append_audio(pcm[2 * frame * FRAME : 2 * (frame + 1) * FRAME])
        await connection.clear_audio()
        async with asyncio.timeout(30):
            while (event := await connection.next_event())["type"] != "input_audio.cleared":
                events.append(event["type"])
        return lag

    async with AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(ChatConnection(url)) for _ in range(count)]
        start = loop.time()
        lags = await asyncio.gather(*(one(c, start) for c in connections))
    return {"pacing_lag_ms": ms(max(lags)), "unexpected_events": events}


def clients_thread(url: str, count: int, seconds: float) -> dict[str, Any]:
    """Run the clients on an event loop of their own in this thread; its CPU time too."""
    stat = f"/proc/self/task/{threading.get_native_id()}/stat"
    before = cpu_seconds(stat)
    result = asyncio.run(idle_sessions(url, count, seconds))
    result["client_cpu_s"] = cpu_seconds(stat) - before
    return result


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    async with embedded_server() as server:
        vad = server.workers["vad"]
        whisper = server.workers["whisper"]
        for count in args.sessions:
            vad_pid = vad.pid
            assert vad_pid is not None, "the VAD worker is not running"
            processes = {
                "vad": f"/proc/{vad_pid}/stat",
                "whisper": f"/proc/{whisper.pid}/stat",
                "process": "/proc/self/stat",
            }
            before = {name: cpu_seconds(path) for name, path in processes.items()}
            started = time.perf_counter()
            clients = await asyncio.to_thread(clients_thread, server.url, count, args.idle_s)
            wall = time.perf_counter() - started
            used = {name: cpu_seconds(path) - before[name] for name, path in processes.items()}
            if vad.pid != vad_pid:
                raise SystemExit("the VAD worker restarted during the measurement")
            server_cpu = used["process"] - clients["client_cpu_s"]
            audio_s = count * args.idle_s  # session-seconds of audio
            runs.append(
                {
                    "sessions": count,
                    "audio_s_per_session": args.idle_s,
                    "wall_s": round(wall, 1),
                    "vad_cpu_s": round(used["vad"], 2),
                    "server_cpu_s": round(server_cpu, 2),
                    "client_cpu_s": round(clients["client_cpu_s"], 2),
                    "whisper_cpu_s": round(used["whisper"], 2),
                    "vad_ms_per_audio_s": round(1000 * used["vad"] / audio_s, 2),
                    "server_ms_per_audio_s": round(1000 * server_cpu / audio_s, 2),
                    "vad_core_share": round(used["vad"] / wall, 4),
                    "server_core_share": round(server_cpu / wall, 4),
                    "pacing_lag_ms": clients["pacing_lag_ms"],
                    "unexpected_events": clients["unexpected_events"],
                }
            )
    return {"clock_tick_s": 1 / CLOCK_TICK, "runs": runs}


def print_idle(result: dict[str, Any]) -> None:
    print(
        "\nidle listening: quiet noise (~-70 dBFS) in 20 ms frames, real time; CPU per second of "
        f"audio per session (ms/s = 0.1 % of a core; /proc resolution {result['clock_tick_s']} s)"
    )
    print(
        f"  {'sessions':>8s} {'audio s':>7s} {'VAD ms/s':>9s} {'server ms/s':>11s} "
        f"{'VAD % core':>10s} {'server % core':>13s} {'clients CPU s':>13s} {'whisper CPU s':>13s}"
        f" {'lag ms':>7s}"
    )
    for run in result["runs"]:
        print(
            f"  {run['sessions']:>8d} {run['audio_s_per_session']:>7.0f} "
            f"{run['vad_ms_per_audio_s']:>9.2f} {run['server_ms_per_audio_s']:>11.2f} "
            f"{100 * run['vad_core_share']:>10.1f} {100 * run['server_core_share']:>13.1f} "
            f"{run['client_cpu_s']:>13.2f} {run['whisper_cpu_s']:>13.2f} "
            f"{run['pacing_lag_ms']:>7.1f}"
        )
        if run["unexpected_events"]:
            print(f"    unexpected events: {run['unexpected_events']}")
    print("  server = this process minus the clients' thread (the clients run in the same process)")


# --- main ---------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "part", nargs="?", default="voice", choices=("voice", "speculative", "wer", "idle")
    )
    parser.add_argument(
        "--silence-ms",
        type=int_list,
        default=[600],
        help="silence that ends a turn; a list (400,600,800) runs the questions for each "
        "(speculative: the first)",
    )
    parser.add_argument("--questions", type=int, default=len(VOICE_QUESTIONS))
    parser.add_argument(
        "--no-typed",
        dest="typed",
        action="store_false",
        help="voice: skip the typed baseline (each question also sent as a user.message)",
    )
    parser.add_argument(
        "--models", type=lambda t: t.split(","), default=["tiny.en", "base"], help="wer: models"
    )
    parser.add_argument("--sessions", type=int_list, default=[1, 10], help="idle: sessions")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle: seconds of audio")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    args.started = time.perf_counter()
    load = load_average()
    if not args.json:
        print(f"{args.part}: load average at start {load} ({os.cpu_count()} cores)", flush=True)
    run, show = {
        "voice": (run_voice, print_voice),
        "speculative": (run_speculative, print_speculative),
        "wer": (run_wer, print_wer),
        "idle": (run_idle, print_idle),
    }[args.part]
    result = asyncio.run(run(args))
    result = {
        "part": args.part,
        "load_average_start": load,
        "load_average_end": load_average(),
        "cpus": os.cpu_count(),
        "elapsed_s": round(time.perf_counter() - args.started, 1),
        **result,
    }
    if args.json:
        print(json.dumps(result))
    else:
        show(result)
        print(
            f"\n{args.part} took {result['elapsed_s']} s; load average at the end "
            f"{result['load_average_end']}"
        )


if __name__ == "__main__":
    main()

"""What the embedded model's answers sound like: loops, mid-sentence ends, silence, length.

Starts one `voicechat serve` per configuration (the embedded SmolLM2 by default; Piper, or the
tone voice with --tts tone when only the text matters) and plays a fixed conversation set to it,
each conversation on a fresh connection, turn after turn. The set holds the cases of issue 21
("What should I cook tonight? Give me two ideas." then "Tell me more about the first one.";
"Say hello again in one short sentence." after a cancelled answer). Per configuration it prints:

  loops        answers whose text repeats more than 15 % of its word trigrams
  mid-sentence answers cut short (a limit or the loop guard: `truncated`) whose spoken text does
               not end with a sentence mark (. ! ? … 。！？)
  no end mark  answers that ended by themselves without a sentence mark (code, a trailing
               "for example:"): not cut, but listed so that nothing is hidden
  silent       completed answers that sent no audio at all
  words        word count of the answer (response.done's text) p50 and max
  max repeat   the highest share of repeated word trigrams in any answer
  truncated    how many answers a guard or limit ended early, by reason

Cancelled answers (the set cancels one on purpose) are listed but not counted.

Configurations:
  before   --no-loop-guard --max-speech-seconds 0 --sampling plain  (as before issue 21)
  after    the defaults (loop guard, 40 s speech budget, the voice sampling)
  other    taken as extra `serve` flags: "--no-loop-guard --sampling plain,repeat_penalty=1.1"

    python scripts/bench_answers.py                       # before and after, Piper
    python scripts/bench_answers.py --tts tone after      # text metrics only, faster
    python scripts/bench_answers.py --json answers.json   # every answer, for reading
    python scripts/bench_answers.py --from-json answers.json  # the table again, from a run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

from voicechat.client.connection import ChatConnection
from voicechat.loop_guard import repeated_trigram_share, words
from voicechat.segmenter import ends_sentence
from voicechat.speech_text import to_speech_text

LOOP_SHARE = 0.15
CANCEL = "cancel:"  # a turn sent and cancelled as soon as its first text arrives

CONVERSATIONS: list[list[str]] = [
    [
        "What should I cook tonight? Give me two ideas.",
        "Tell me more about the first one.",
        "How long does it take to make?",
        "Can you suggest a dessert to go with it?",
    ],
    [
        CANCEL + "Tell me a long story about a dragon.",
        "Say hello again in one short sentence.",
        "What is the capital of France?",
        "And what is it famous for?",
    ],
    [
        "Hello! Who are you?",
        "What can you help me with?",
        "Say hello again in one short sentence.",
        "Tell me a joke.",
    ],
    [
        "Explain how a rainbow forms.",
        "Why is the sky blue?",
        "And why are sunsets red?",
        "Summarize all that in one sentence.",
    ],
    [
        "I want to start running. Any tips?",
        "How often should I run each week?",
        "What should I eat before a run?",
        "What if my knees hurt?",
    ],
    [
        "Give me three tips for sleeping better.",
        "Tell me more about the second tip.",
        "Is coffee in the afternoon bad for sleep?",
    ],
    [
        "What is the difference between a virus and a bacterium?",
        "How do vaccines work?",
        "Explain that to a five-year-old.",
    ],
    [
        "Plan a weekend trip to the mountains for me.",
        "What should I pack?",
        "What if it rains?",
        "Tell me more about the first day.",
    ],
    [
        "Write a short poem about the sea.",
        "Now one about the moon.",
        "Send me some flower emoji.",
    ],
    [
        "Write a Python function that adds two numbers.",
        "Now explain it in plain words.",
    ],
]

BEFORE = "--no-loop-guard --max-speech-seconds 0 --sampling plain"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(tts: str, extra: list[str]) -> tuple[subprocess.Popen[str], str]:
    """A `voicechat serve` on a free port (speech input off: the set is typed); its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICECHAT_")}
    command = [sys.executable, "-m", "voicechat", "serve", "--port", str(port), "--llm", "local",
               "--tts", tts, "--stt", "none", "--log-level", "info", *extra]  # fmt: skip
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    for line in server.stderr:
        if "serving ws://" in line:
            break
    else:
        raise SystemExit(f"the server did not start: {shlex.join(command)}")
    threading.Thread(target=lambda: [None for _ in server.stderr or ()], daemon=True).start()
    return server, f"ws://127.0.0.1:{port}/v1/chat/stream"


async def one_turn(conn: ChatConnection, text: str) -> dict[str, Any]:
    """Send one turn; return its response.done and what came with it."""
    cancel = text.startswith(CANCEL)
    text = text.removeprefix(CANCEL)
    await conn.send_user_message(text)
    chunks = 0
    streamed = ""
    async with asyncio.timeout(600):
        async for event in conn.events():
            kind = event["type"]
            if kind == "text.delta":
                streamed += event["text"]
                if cancel and streamed.strip():
                    await conn.cancel()
                    cancel = False
            elif kind == "audio.chunk":
                chunks += 1
            elif kind == "response.done":
                return {"prompt": text, "streamed": streamed, "chunks": chunks, "done": event}
    raise AssertionError("unreachable")


async def play_set(url: str) -> list[dict[str, Any]]:
    answers = []
    for number, conversation in enumerate(CONVERSATIONS):
        async with ChatConnection(url) as conn:
            for turn in conversation:
                answer = await one_turn(conn, turn)
                answer["conversation"] = number
                answers.append(answer)
                done = answer["done"]
                print(
                    f"  [{number}] {answer['prompt'][:40]!r}: {done['status']}"
                    f"{' ' + done['truncated'] if done.get('truncated') else ''},"
                    f" {len(words(done['text']))} words",
                    file=sys.stderr,
                    flush=True,
                )
    return answers


def judge(answer: dict[str, Any]) -> dict[str, Any]:
    """The measures of one answer, from its response.done."""
    done = answer["done"]
    text = done["text"]
    spoken = to_speech_text(text).strip()
    share = repeated_trigram_share(text)
    unfinished = bool(spoken) and not ends_sentence(spoken)
    cut = bool(done.get("truncated"))
    return {
        "status": done["status"],
        "words": len(words(text)),
        "repeat_share": round(share, 3),
        "loops": share > LOOP_SHARE,
        "mid_sentence": unfinished and cut,
        "no_end_mark": unfinished and not cut and done["status"] == "completed",
        "silent": done["status"] == "completed" and answer["chunks"] == 0,
        "truncated": done.get("truncated"),
        "audio_s": round(done["metrics"]["audio_ms"] / 1000, 1),
    }


def summary(answers: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [judge(answer) for answer in answers]
    counted = [j for j in judged if j["status"] != "cancelled"]
    count = len(counted)
    word_counts = [j["words"] for j in counted]
    return {
        "answers": count,
        "loops": sum(j["loops"] for j in counted),
        "mid_sentence": sum(j["mid_sentence"] for j in counted),
        "no_end_mark": sum(j["no_end_mark"] for j in counted),
        "silent": sum(j["silent"] for j in counted),
        "words_p50": statistics.median(word_counts),
        "words_max": max(word_counts),
        "max_repeat_share": max(j["repeat_share"] for j in counted),
        "audio_s_p50": statistics.median(j["audio_s"] for j in counted),
        "audio_s_max": max(j["audio_s"] for j in counted),
        "truncated": dict(Counter(j["truncated"] for j in counted if j["truncated"])),
    }


def percent(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f} %)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=["before", "after"])
    parser.add_argument("--tts", default="piper", help="piper (default) or tone")
    parser.add_argument("--json", metavar="PATH", help="write every answer and its measures")
    parser.add_argument("--from-json", metavar="PATH", help="judge the answers of an earlier run")
    args = parser.parse_args()

    results: dict[str, Any] = {}
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as saved:
            results = json.load(saved)
        for result in results.values():
            result["summary"] = summary(result["answers"])
    for name in [] if args.from_json else args.configs:
        extra = {"before": BEFORE, "after": ""}.get(name, name)
        print(f"{name}: voicechat serve --tts {args.tts} {extra}", file=sys.stderr, flush=True)
        server, url = start_server(args.tts, shlex.split(extra))
        started = time.perf_counter()
        try:
            answers = asyncio.run(play_set(url))
        finally:
            server.terminate()
            server.wait(timeout=30)
        results[name] = {
            "flags": extra,
            "seconds": round(time.perf_counter() - started),
            "summary": summary(answers),
            "answers": [{**answer, "measures": judge(answer)} for answer in answers],
        }

    columns = ["loops", "mid-sentence", "silent", "no end mark"]
    print(
        f"{'config':<10} {'answers':>7}  " + "  ".join(f"{c:>12}" for c in columns)
        + f"  {'words p50/max':>13}  {'max repeat':>10}  {'audio s p50/max':>15}  truncated"
    )  # fmt: skip
    for name, result in results.items():
        s = result["summary"]
        n = s["answers"]
        shares = [s[key] for key in ("loops", "mid_sentence", "silent", "no_end_mark")]
        print(
            f"{name[:10]:<10} {n:>7}  " + "  ".join(f"{percent(k, n):>12}" for k in shares)
            + f"  {s['words_p50']:>6g}/{s['words_max']:<6}  {100 * s['max_repeat_share']:>9.0f}%"
            + f"  {s['audio_s_p50']:>7g}/{s['audio_s_max']:<7g}  {s['truncated'] or '-'}"
        )  # fmt: skip
        if name not in ("before", "after"):
            print(f"{'':<10} ({result['flags']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()

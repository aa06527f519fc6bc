"""How the native engines' thread settings fare when other processes want the cores too.

On a 2-core machine the embedded LLM, the end-of-turn model, Whisper and Piper share the cores.
Their worker threads wait for each other at every step: libgomp (llama.cpp) and onnxruntime
(Piper) spin while they wait, so a thread descheduled by another process stalls the others.
This script times, beside 0, 1 and 2 busy processes (that it starts and stops), with the
embedded models, each case in a fresh process (libgomp reads its wait policy at load):

- turn: one end-of-turn call (engines/turn.py: a ~15-token prompt, the logits of its end);
- prompt: time to the first token of an answer to a short chat (what a spoken question sends);
- decode: the next 32 tokens of that answer;
- piper: one first speech unit (~60 characters) synthesised by the embedded voice.

with each one's thread settings and wait policy (OMP_WAIT_POLICY for llama.cpp; onnxruntime's
session.intra_op.allow_spinning for Piper).

    python scripts/bench_engine_threads.py [--runs 10] [--cases turn,prompt,decode,piper]
        [--busy-nice 5]

--busy-nice runs the busy processes at that niceness: the embedded LLM's worker runs at
LLM_NICE (workers/embedded.py), so `--cases piper --busy-nice 5` shows Piper beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

HOG = "import os, sys; os.nice(int(sys.argv[1]))\nwhile True: pass"
CHAT = [
    {
        "role": "system",
        "content": "You are a friendly voice assistant. Answer in one or two short "
        "spoken sentences, without lists or markdown.",
    },
    {"role": "user", "content": "Hi, I just got a puppy."},
    {"role": "assistant", "content": "Congratulations! What kind of puppy is it?"},
    {"role": "user", "content": "A beagle. What should I feed her in the first few weeks?"},
]
FIRST_UNIT = "Puppies need a food made for growing dogs, in small meals."
# case -> the settings compared: (label, environment, options)
LLAMA_VARIANTS: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("1 thread", {}, {"threads": 1}),
    ("2 threads, spin", {"OMP_WAIT_POLICY": "ACTIVE"}, {"threads": 2}),
    ("2 threads, sleep", {"OMP_WAIT_POLICY": "PASSIVE"}, {"threads": 2}),
]
VARIANTS: dict[str, list[tuple[str, dict[str, str], dict[str, Any]]]] = {
    "turn": LLAMA_VARIANTS,
    "prompt": LLAMA_VARIANTS,
    "decode": LLAMA_VARIANTS,
    "piper": [
        ("default (spin)", {}, {"spinning": True}),
        ("no spinning", {}, {"spinning": False}),
        ("1 thread", {}, {"spinning": False, "threads": 1}),
    ],
}


@contextmanager
def busy_processes(count: int, nice: int = 0) -> Iterator[None]:
    hogs = [subprocess.Popen([sys.executable, "-c", HOG, str(nice)]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def llama_call(case: str, threads: int) -> Callable[[], object]:
    from llama_cpp import Llama

    from voicechat.engines.turn import end_of_turn_prompt
    from voicechat.workers.embedded import default_model_path

    llama = Llama(model_path=str(default_model_path()), n_ctx=512 if case == "turn" else 4096,
                  n_threads=threads, n_threads_batch=threads, verbose=False)  # fmt: skip
    if case == "turn":
        prompt = end_of_turn_prompt("I need a name for my new puppy, something short and friendly")

        def turn() -> object:
            tokens = llama.tokenize(prompt.encode(), add_bos=False, special=True)
            llama.reset()
            llama.eval(tokens)
            return None

        return turn

    def answer(tokens: int) -> Callable[[], object]:
        def call() -> object:
            llama.reset()  # no prompt cache: every answer reads its whole prompt
            stream = llama.create_chat_completion(
                messages=CHAT, max_tokens=tokens, temperature=0, stream=True
            )
            return sum(1 for _ in stream)

        return call

    if case == "prompt":
        return answer(1)
    first, whole = answer(1), answer(33)
    first()

    def decode() -> object:  # the 32 tokens after the first one
        started = time.perf_counter()
        first()
        prompt_s = time.perf_counter() - started
        started = time.perf_counter()
        whole()
        return time.perf_counter() - started - prompt_s

    return decode


def piper_call(spinning: bool, threads: int = 0) -> Callable[[], object]:
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    from voicechat.tts.piper import default_voice_path

    path = str(default_voice_path())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    with open(f"{path}.json", encoding="utf-8") as config:
        voice = PiperVoice(
            config=PiperConfig.from_dict(json.load(config)),
            session=onnxruntime.InferenceSession(
                path, sess_options=options, providers=["CPUExecutionProvider"]
            ),
        )

    def call() -> object:
        return sum(len(chunk.audio_int16_bytes) for chunk in voice.synthesize(FIRST_UNIT))

    return call


def measure(case: str, options: dict[str, Any], runs: int) -> None:
    """In this (fresh) process: time `runs` calls and print them as JSON."""
    if case == "piper":
        call = piper_call(options["spinning"], options.get("threads", 0))
    else:
        call = llama_call(case, options["threads"])
    call()  # warm
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        result = call()
        seconds.append(result if case == "decode" else time.perf_counter() - started)
    print(json.dumps(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cases", default="turn,prompt,decode,piper")
    parser.add_argument("--busy-nice", type=int, default=0, help="the busy processes' niceness")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # CASE:OPTIONS_JSON, in a child
    args = parser.parse_args()
    if args.measure:
        case, _, options = args.measure.partition(":")
        measure(case, json.loads(options), args.runs)
        return
    print(f"{'busy':>4}  {'case':<7} {'settings':<17} {'p50 ms':>7}  {'max ms':>7}")
    for busy in (0, 1, 2):
        with busy_processes(busy, args.busy_nice):
            for case in args.cases.split(","):
                for label, environment, options in VARIANTS[case]:
                    run = subprocess.run(
                        [sys.executable, __file__, "--runs", str(args.runs),
                         "--measure", f"{case}:{json.dumps(options)}"],
                        env={**os.environ, **environment}, capture_output=True, text=True,
                        check=True,
                    )  # fmt: skip
                    seconds = json.loads(run.stdout.strip().splitlines()[-1])
                    print(f"{busy:>4}  {case:<7} {label:<17} "
                          f"{statistics.median(seconds) * 1000:>7.0f}  {max(seconds) * 1000:>7.0f}",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

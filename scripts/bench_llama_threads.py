"""How llama.cpp's thread settings fare when other processes want the cores too.

On a 2-core machine the embedded LLM, the end-of-turn model, Whisper and Piper share the cores.
ggml's worker threads spin at every barrier of a batch: when one of them is descheduled, the
others wait on it. This script times, beside 0, 1 and 2 busy processes (that it starts and
stops), with the embedded SmolLM2 GGUF:

- turn: one end-of-turn call (engines/turn.py: a ~15-token prompt, the logits of its end);
- answer: time to the first token of an answer to a short chat (the prompt a spoken question
  sends: system prompt + a few turns), as the LLM worker runs it.

Each for n_threads_batch = 1 and 2 (llama-cpp-python's default is every core).

    python scripts/bench_llama_threads.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from llama_cpp import Llama

from voicechat.engines.turn import end_of_turn_prompt
from voicechat.workers.embedded import default_model_path

HOG = "while True: pass"
CHAT = [
    {"role": "system", "content": "You are a friendly voice assistant. Answer in one or two short "
     "spoken sentences, without lists or markdown."},  # fmt: skip
    {"role": "user", "content": "Hi, I just got a puppy."},
    {"role": "assistant", "content": "Congratulations! What kind of puppy is it?"},
    {"role": "user", "content": "A beagle. What should I feed her in the first few weeks?"},
]


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def timed(call: Callable[[], object], runs: int) -> list[float]:
    call()  # warm
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def turn_call(llama: Llama) -> Callable[[], object]:
    prompt = end_of_turn_prompt("I need a name for my new puppy, something short and friendly")

    def call() -> object:
        tokens = llama.tokenize(prompt.encode(), add_bos=False, special=True)
        llama.reset()
        llama.eval(tokens)
        return None

    return call


def answer_call(llama: Llama) -> Callable[[], object]:
    def call() -> object:
        llama.reset()  # no prompt cache: every answer reads its whole prompt
        stream = llama.create_chat_completion(messages=CHAT, max_tokens=1, temperature=0, stream=True)
        for _ in stream:
            break
        return None

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    model = str(default_model_path())
    print(f"{'busy':>4}  {'case':<7} {'batch threads':>13}  {'p50 ms':>7}  {'max ms':>7}")
    for busy in (0, 1, 2):
        with busy_processes(busy):
            for case, n_threads, n_ctx in (("turn", 1, 512), ("answer", None, 4096)):
                for batch_threads in (1, 2):
                    llama = Llama(model_path=model, n_ctx=n_ctx, n_threads=n_threads,
                                  n_threads_batch=batch_threads, verbose=False)  # fmt: skip
                    call = turn_call(llama) if case == "turn" else answer_call(llama)
                    seconds = timed(call, args.runs)
                    print(f"{busy:>4}  {case:<7} {batch_threads:>13}  "
                          f"{statistics.median(seconds) * 1000:>7.0f}  {max(seconds) * 1000:>7.0f}",
                          flush=True)  # fmt: skip
                    llama.close()


if __name__ == "__main__":
    main()

"""End of turn by meaning, inside its worker process: SmolLM2-135M (the embedded LLM's GGUF,
its own llama.cpp instance) reads what the user said so far and gives the probability that the
next token is `<|im_end|>`, i.e. that the user's message is over.

Zero-shot, as LiveKit's turn detector does with a fine-tuned model of the same family: the text
is lower-cased and its trailing punctuation stripped (Whisper punctuates fragments too), and no
system prompt is given. A short context: a call reads ~20 tokens, as one batch on two threads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

END_TOKEN = "<|im_end|>"
TRAILING = " \t\n.,!?;:…-—\"'"


def end_of_turn_prompt(text: str) -> str:
    """The chat template up to the user's words, as the model would continue it."""
    words = " ".join(text.split()).lower().rstrip(TRAILING)
    return f"<|im_start|>user\n{words}"


class EndOfTurnEngine:
    """Inside the turn worker: log10 P(end of message | the words so far)."""

    def __init__(self, model_path: str, n_threads: int = 1) -> None:
        from llama_cpp import Llama  # only the worker process loads llama.cpp

        started = time.perf_counter()
        self.model_path = Path(model_path)
        # One thread, also for the prompt (all a call reads, one batch; llama-cpp-python's
        # default would read it on every core): the held answer starts beside the verdict, and
        # on two cores each gets one. Two threads made a call 63 ms alone against 99, but took
        # the answer's core while it read its prompt (python scripts/bench_engine_threads.py;
        # docs/performance.md, "Conversation feel").
        self._llama = Llama(
            model_path=model_path, n_ctx=512, n_batch=256, n_threads=n_threads,
            n_threads_batch=1, verbose=False,
        )  # fmt: skip
        tokens = self._llama.tokenize(END_TOKEN.encode(), add_bos=False, special=True)
        if len(tokens) != 1:
            raise RuntimeError(f"{self.model_path.name} has no single {END_TOKEN} token")
        self._end = tokens[0]
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        return {"model": self.model_path.name, "load_seconds": round(self.load_seconds, 3)}

    def self_check(self) -> None:
        finished = self.log10_end("What is the capital of France?")
        unfinished = self.log10_end("What is the capital of")
        if not finished > unfinished:
            raise RuntimeError(f"end-of-turn check failed: {finished:.2f} <= {unfinished:.2f}")

    def log10_end(self, text: str) -> float:
        import llama_cpp
        import numpy as np

        llama = self._llama
        tokens = llama.tokenize(end_of_turn_prompt(text).encode(), add_bos=False, special=True)
        tokens = tokens[-(llama.n_ctx() - 8) :]  # a very long turn: its end is what matters
        llama.reset()
        llama.eval(tokens)
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(llama.n_vocab(),)
        ).astype(np.float64)
        top = float(logits.max())
        log_sum = top + math.log(float(np.exp(logits - top).sum()))
        return (float(logits[self._end]) - log_sum) / math.log(10)

    def run(
        self, request: dict[str, Any], emit: Callable[[dict[str, Any]], None], cancelled: Any
    ) -> None:
        started = time.perf_counter()
        value = self.log10_end(str(request["text"]))
        emit({"log10_p": round(value, 3), "seconds": round(time.perf_counter() - started, 4)})

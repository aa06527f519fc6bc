"""Tokens per second of the llama.cpp build Python imports: prompt evaluation and generation.

    python scripts/bench_llama_build.py [--runs 5] [--threads N]
    PYTHONPATH=/tmp/native-site python scripts/bench_llama_build.py   (compare another build)

Loads the embedded SmolLM2-135M-Instruct GGUF in this process and, `--runs` times: evaluates a
fixed prompt of about 300 tokens from scratch (prompt tokens/s), then generates 128 tokens
greedily (generation tokens/s). Prints the build's CPU features (llama_print_system_info) and
the median and worst run of each, to compare the portable build from scripts/setup.sh with one
built for this CPU (CMAKE_ARGS="-DGGML_NATIVE=ON" pip wheel --no-cache-dir llama-cpp-python).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import llama_cpp

from voicechat.engines.llama import SELF_CHECK_PROMPT
from voicechat.workers.embedded import default_model_path

GENERATE_TOKENS = 128


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    llm = llama_cpp.Llama(
        model_path=str(default_model_path()), n_ctx=2048, n_threads=args.threads, verbose=False
    )
    prompt = llm.tokenize((SELF_CHECK_PROMPT + " ").encode() * 4)
    prompt_rates, generate_rates = [], []
    for _ in range(args.runs):
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        prompt_rates.append(len(prompt) / (time.perf_counter() - started))
        started = time.perf_counter()
        made = 0
        for token in llm.generate([], temp=0.0, reset=False):
            made += 1
            if made == GENERATE_TOKENS or token == llm.token_eos():
                break
        generate_rates.append(made / (time.perf_counter() - started))
    result = {
        "build": llama_cpp.llama_print_system_info().decode().strip(),
        "library": llama_cpp.__file__,
        "prompt_tokens": len(prompt),
        "prompt_tok_s_p50": round(statistics.median(prompt_rates), 1),
        "prompt_tok_s_min": round(min(prompt_rates), 1),
        "generate_tok_s_p50": round(statistics.median(generate_rates), 1),
        "generate_tok_s_min": round(min(generate_rates), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

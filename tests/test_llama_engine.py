"""The LLM engine reads the system prompt when it starts, so the first answer does not.

The real SmolLM2 GGUF in the test process (the server runs it in its worker).
"""

from __future__ import annotations

from typing import Any

import pytest

from voicechat.engines.llama import LlamaEngine
from voicechat.llm.local import DEFAULT_SYSTEM_PROMPT
from voicechat.workers.embedded import default_model_path


def answer(engine: LlamaEngine, system_prompt: str, question: str) -> str:
    replies: list[dict[str, Any]] = []
    request = {
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": question},
        ],
        "max_tokens": 4,
        "sampling": {"temperature": 0.0},
    }
    engine.run(request, replies.append, lambda: False)
    return "".join(str(reply.get("text", "")) for reply in replies)


@pytest.mark.parametrize("warm", [True, False])
def test_the_first_answer_reuses_the_system_prompt_read_at_start(warm: bool) -> None:
    engine = LlamaEngine(
        str(default_model_path()), n_ctx=512, system_prompt=DEFAULT_SYSTEM_PROMPT if warm else None
    )
    engine.self_check()
    llama = engine._llama
    cached = list(llama._input_ids)  # what the KV cache holds before the first answer
    system_tokens = len(llama.tokenize(DEFAULT_SYSTEM_PROMPT.encode(), add_bos=False))
    assert answer(engine, DEFAULT_SYSTEM_PROMPT, "What is the capital of France?")
    shared = llama.longest_token_prefix(cached, list(llama._input_ids))
    if warm:  # the answer's prompt begins with what was read at start: llama.cpp reuses it
        assert DEFAULT_SYSTEM_PROMPT in llama.detokenize(cached).decode()
        assert shared > system_tokens
    else:
        assert cached == [] and shared == 0

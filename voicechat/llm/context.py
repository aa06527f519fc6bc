"""Fit a conversation into the model's context window before it is sent to the model.

The stored history (the checkpointer) keeps every turn; only what goes to the model is cut. What
is kept: the system prompt, then the newest turns that fit, starting with a user message, with
`answer_tokens` (max_tokens) left free for the answer. Older turns are left out whole (no turn is
cut in half). A newest user message that does not fit on its own raises `ContextOverflow`: that
answer fails with a message that says so, and the next, shorter message is answered.

Tokens are counted by the back end: the local model's worker counts them with the model's own
tokenizer; an OpenAI-compatible server gets an estimate (see `estimate_tokens`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from langchain_core.messages import BaseMessage, HumanMessage, trim_messages

# What the chat template adds around each message (ChatML: <|im_start|>, role, newline,
# <|im_end|>, newline = 5 tokens for SmolLM2), rounded up.
MESSAGE_OVERHEAD_TOKENS = 6
# The generation prompt, a BOS token and a template's default system prompt (SmolLM2's, when
# the system prompt is empty: about 20 tokens), rounded up.
PROMPT_OVERHEAD_TOKENS = 32

# Tokens per message text (content only), in the order given.
CountTokens = Callable[[Sequence[str]], Awaitable[list[int]]]


class ContextOverflow(ValueError):
    """The newest user message alone does not fit in the model's context window."""


@dataclass(frozen=True)
class ContextWindow:
    """A model's context: `tokens` in all, `answer_tokens` of them kept for the answer."""

    tokens: int
    answer_tokens: int
    count: CountTokens

    @property
    def prompt_budget(self) -> int:
        """Tokens the messages may take: the window less the answer and the template."""
        return self.tokens - self.answer_tokens - PROMPT_OVERHEAD_TOKENS


def message_text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


async def fit_to_context(messages: list[BaseMessage], window: ContextWindow) -> list[BaseMessage]:
    """The messages to send: the system prompt (if first) and the newest turns that fit.

    Raises ContextOverflow when the newest user message does not fit with the system prompt."""
    counts = await window.count([message_text(m) for m in messages])
    tokens = {id(m): n + MESSAGE_OVERHEAD_TOKENS for m, n in zip(messages, counts, strict=True)}
    total = sum(tokens.values())
    if total <= window.prompt_budget:
        return messages  # the usual case: everything fits

    def count(chosen: list[BaseMessage]) -> int:
        return sum(tokens[id(m)] for m in chosen)

    kept = trim_messages(
        messages,
        max_tokens=window.prompt_budget,
        token_counter=count,
        strategy="last",
        include_system=True,
        start_on="human",
        allow_partial=False,
    )
    newest_user = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
    if newest_user is not None and not any(m is newest_user for m in kept):
        raise ContextOverflow(
            f"the message is too long for the model's context window: about "
            f"{tokens[id(newest_user)]} tokens, and at most "
            f"{window.prompt_budget - (count(kept) if kept else 0)} fit"
        )
    return kept


def estimate_tokens(text: str) -> int:
    """A cautious token count without the model's tokenizer: one token per 3 characters of
    ASCII text (English averages about 4) and one per other character (CJK text is about 1 to
    2 per character in common tokenizers; this under-counts only unusual text)."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return (ascii_chars + 2) // 3 + (len(text) - ascii_chars)


async def estimate_counts(texts: Sequence[str]) -> list[int]:
    """`CountTokens` by `estimate_tokens`, for back ends whose tokenizer we do not have."""
    return [estimate_tokens(text) for text in texts]

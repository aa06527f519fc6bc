"""End of turn by meaning: is the user's thought finished? (The model: engines/turn.py.)

The listener asks when a pause begins and the speculative transcript is ready; the verdict sets
how much silence ends the turn (turns.py). The model reads English only: for another language
the verdict is None and silence decides. Thresholds by `eagerness`, on log10 P(<|im_end|>):
measured on SmolLM2-135M, unfinished sentences score below -7.4 and finished ones above -6.6
(scripts/bench_conversation.py and tests/test_end_of_turn.py hold the cases).
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass

from voicechat.workers import Worker

log = logging.getLogger(__name__)

LOW, MEDIUM, HIGH = "low", "medium", "high"
EAGERNESS = (LOW, MEDIUM, HIGH)


@dataclass(frozen=True)
class Eagerness:
    """How soon a turn ends: the verdict's threshold and the silences it sets (turns.py)."""

    threshold: float  # log10 P(end) at or above it: the thought is finished
    complete_ms: int  # silence that ends a finished thought
    incomplete_ms: int  # silence that ends an unfinished one: the most a pause may last


EAGERNESS_RULES = {
    HIGH: Eagerness(threshold=-7.4, complete_ms=0, incomplete_ms=1500),
    MEDIUM: Eagerness(threshold=-7.0, complete_ms=350, incomplete_ms=2500),
    LOW: Eagerness(threshold=-6.6, complete_ms=500, incomplete_ms=3500),
}


def judges_language(language: str | None) -> bool:
    """Can the text model judge a turn in this language (None: not known yet, try)?"""
    return language is None or language.split("-")[0].lower() == "en"


class EndOfTurnModel:
    """The turn worker, shared by every session; one short request at a time."""

    name = "smollm2-eot"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def log10_end(self, text: str) -> float:
        """log10 P(the user's message ends after `text`); WorkerError if the worker failed."""
        async with aclosing(self.worker.stream({"text": text})) as replies:
            async for reply in replies:
                return float(reply["log10_p"])
        raise RuntimeError("the end-of-turn worker sent no answer")

    async def complete(self, text: str, eagerness: str) -> bool:
        value = await self.log10_end(text)
        complete = value >= EAGERNESS_RULES[eagerness].threshold
        log.debug("end of turn: %r: log10 p %.2f: %s", text, value, complete)
        return complete

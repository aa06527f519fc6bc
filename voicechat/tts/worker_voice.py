"""A TTSEngine whose synthesis runs in a worker process (Piper, or one espeak-ng voice).

A worker that fails a unit, or dies while speaking it, costs that unit (`TTSError`, which the
client sees as `tts_failed`); the answer goes on, and the worker is restarted behind it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from voicechat.tts.base import Pcm, TTSError
from voicechat.workers import Worker, WorkerError


class WorkerVoice:
    """TTSEngine over a `Worker`; `fields` are sent with every unit (e.g. the espeak voice)."""

    def __init__(self, worker: Worker, name: str, **fields: Any) -> None:
        self.worker = worker
        self.name = name
        self._fields = fields

    async def synthesize(self, text: str) -> AsyncGenerator[Pcm, None]:
        try:
            async with aclosing(self.worker.stream({"text": text, **self._fields})) as replies:
                async for reply in replies:
                    yield Pcm(reply["pcm"], int(reply["rate"]))
        except WorkerError as exc:
            raise TTSError(str(exc)) from None

    async def aclose(self) -> None:
        """The worker is shared by several voices and closed by its owner (config.Backends)."""

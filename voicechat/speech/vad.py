"""Voice activity: speech probabilities per 32 ms window from the Silero worker."""

from __future__ import annotations

from contextlib import aclosing

from voicechat.workers import Worker


class SileroVAD:
    """Silero in its worker process (`voicechat/engines/silero.py`); one stream per session."""

    name = "silero"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def probabilities(self, stream: str, pcm16: bytes) -> list[float]:
        """One probability per complete window of the stream's audio so far; WorkerError if
        the worker failed (its state for every stream is then gone)."""
        async with aclosing(self.worker.stream({"stream": stream, "pcm": pcm16})) as replies:
            async for reply in replies:
                return [float(p) for p in reply["probabilities"]]
        return []

    async def close(self, stream: str) -> None:
        async with aclosing(self.worker.stream({"stream": stream, "close": True})) as replies:
            async for _ in replies:
                pass

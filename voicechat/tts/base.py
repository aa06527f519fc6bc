"""The one seam every TTS engine sits behind (Fish Speech, Piper, tone)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Pcm:
    """A piece of audio: 16-bit little-endian signed mono samples at `sample_rate`."""

    data: bytes
    sample_rate: int

    @property
    def samples(self) -> int:
        return len(self.data) // 2


class TTSError(Exception):
    """One unit could not be synthesised; the answer goes on without it.

    `server_fault`: the engine itself failed (down, 5xx, garbage) rather than refusing this
    text; repeated server faults make an engine rest instead of being retried at once.
    """

    def __init__(self, message: str, *, server_fault: bool = True) -> None:
        super().__init__(message)
        self.server_fault = server_fault


@runtime_checkable
class TTSEngine(Protocol):
    """Text in, PCM pieces out. A non-streaming engine yields once."""

    name: str

    def synthesize(self, text: str) -> AsyncGenerator[Pcm, None]:
        """Yield the audio of `text` in order; raise TTSError when the unit is lost."""
        ...

    async def aclose(self) -> None:
        """Release connections, models and threads."""
        ...

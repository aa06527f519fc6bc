"""A warning that may repeat thousands of times a second (a cap refusing every newcomer, a dead
VAD failing every frame of every session) logs one line when it starts, then at most one per
interval while it goes on, with how many times it happened since the last line."""

from __future__ import annotations

import logging
import time


class RepeatedWarning:
    """Call it each time the thing happens; it decides whether that makes a log line."""

    def __init__(self, logger: logging.Logger, message: str, interval_s: float) -> None:
        self.logger = logger
        self.message = message  # %-formatted with the call's arguments, then the count
        self.interval_s = interval_s
        self._last: float | None = None
        self._count = 0  # since the last line
        self.total = 0  # since the start

    def __call__(self, *args: object) -> None:
        self.total += 1
        self._count += 1
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval_s:
            self.logger.warning(self.message, *args, self._count)
            self._last, self._count = now, 0

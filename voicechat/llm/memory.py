"""Conversation memory: the LangGraph checkpointer that keeps every conversation (thread).

`--memory memory[:N]` (default) keeps the N most recently used (default 1000) in this process, so a
long-running server does not grow without bound; `sqlite:PATH` in a file that survives
restarts (one machine); `postgres://...` in PostgreSQL, which several voicechat processes behind
a load balancer can share.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

DEFAULT_MAX_CONVERSATIONS = 1000

log = logging.getLogger(__name__)


class MemoryConfigError(ValueError):
    """A --memory value that cannot be used."""


class BoundedMemorySaver(InMemorySaver):
    """In-process memory that forgets the least recently used conversations past a limit."""

    def __init__(self, max_conversations: int = DEFAULT_MAX_CONVERSATIONS) -> None:
        super().__init__()
        self.max_conversations = max_conversations
        self._recent: OrderedDict[str, None] = OrderedDict()

    def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        saved = super().put(config, checkpoint, metadata, new_versions)
        thread_id = str(config["configurable"]["thread_id"])
        self._recent.pop(thread_id, None)
        self._recent[thread_id] = None
        while len(self._recent) > self.max_conversations:
            oldest, _ = self._recent.popitem(last=False)
            self.delete_thread(oldest)
        return saved

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        return self.put(config, checkpoint, metadata, new_versions)

    @property
    def conversations(self) -> int:
        return len(self._recent)


SETUP_ATTEMPTS = 5


# Any fixed 64-bit number: the advisory lock every voicechat server takes around setup().
SETUP_LOCK_KEY = 0x766F696365636874  # "voicecht"


async def _set_up_again_on(
    collisions: tuple[type[Exception], ...],
    set_up: Callable[[], Awaitable[None]],
    collided: Callable[[Exception], bool] = lambda exc: True,
) -> None:
    """Run `set_up` (LangGraph's idempotent setup(), however it is guarded) up to
    SETUP_ATTEMPTS times while it fails with one of `collisions` that `collided` accepts:
    another server creating the same tables at the same instant. The loser runs it again."""
    for attempt in range(1, SETUP_ATTEMPTS + 1):
        try:
            await set_up()
            return
        except collisions as exc:
            if not collided(exc) or attempt == SETUP_ATTEMPTS:
                raise
            log.warning("memory set-up collided with another server's (%s): setting it up "
                        "again (%d of %d)", exc, attempt + 1, SETUP_ATTEMPTS)  # fmt: skip
            await asyncio.sleep(0.1 * attempt)


async def _set_up_postgres(saver: Any) -> None:
    """Create the checkpointer's tables if missing. LangGraph's setup() is idempotent but not
    safe to run twice at the same instant: servers starting together on a new database collided
    on a duplicate key or name, or deadlocked (seen on a loaded machine). So they take turns: a
    PostgreSQL advisory lock, held by this connection's session, around setup(). Should a
    collision still happen (a server of another version, without the lock), the loser runs it
    again: by then the tables are there, and setup() goes on from the migration it finds."""
    import psycopg

    async def locked_set_up() -> None:
        await saver.conn.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK_KEY,))
        try:
            await saver.setup()
        finally:
            await saver.conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))

    await _set_up_again_on(
        (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject,
         psycopg.errors.DuplicateTable, psycopg.errors.DeadlockDetected),
        locked_set_up,
    )  # fmt: skip


async def _set_up_sqlite(saver: Any) -> None:
    """Create the tables if missing, again while the file is busy. `serve --workers N` starts
    N processes on one new file at once: when two connections both read the schema and both
    want to write it, SQLite answers one of them "database is locked" at once, without waiting
    (it would deadlock). Seen on a loaded machine: the loser's server exited."""
    await _set_up_again_on(
        (sqlite3.OperationalError,), saver.setup, lambda exc: "locked" in str(exc)
    )


async def open_checkpointer(spec: str, stack: AsyncExitStack) -> BaseCheckpointSaver[Any]:
    """Open the checkpointer named by `spec`; `stack` closes it on shutdown."""
    if spec == "memory" or spec.startswith("memory:"):
        count = spec.removeprefix("memory").removeprefix(":") or str(DEFAULT_MAX_CONVERSATIONS)
        if not count.isdigit() or int(count) < 1:
            raise MemoryConfigError(f"--memory memory:N needs a positive number, not {count!r}")
        return BoundedMemorySaver(int(count))
    if spec.startswith("sqlite:"):
        path = spec.removeprefix("sqlite:")
        if not path:
            raise MemoryConfigError("--memory sqlite needs a file: sqlite:PATH")
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        saver = await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(path))
        await _set_up_sqlite(saver)
        return saver
    if spec.startswith(("postgres://", "postgresql://")):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        try:
            saver = await stack.enter_async_context(AsyncPostgresSaver.from_conn_string(spec))
            await _set_up_postgres(saver)
        except Exception as exc:  # psycopg's OperationalError and friends
            raise MemoryConfigError(f"cannot use PostgreSQL memory: {exc}") from None
        return saver
    raise MemoryConfigError(
        f"unknown --memory {spec!r}; use memory, sqlite:PATH or postgres://USER@HOST/DB"
    )

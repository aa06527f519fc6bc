"""Conversation memory: the LangGraph checkpointer that keeps every conversation (thread).

`--memory memory` (default) keeps them in this process; `sqlite:PATH` in a file that survives
restarts (one machine); `postgres://...` in PostgreSQL, which several voicechat processes behind
a load balancer can share.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver


class MemoryConfigError(ValueError):
    """A --memory value that cannot be used."""


async def open_checkpointer(spec: str, stack: AsyncExitStack) -> BaseCheckpointSaver[Any]:
    """Open the checkpointer named by `spec`; `stack` closes it on shutdown."""
    if spec == "memory":
        return InMemorySaver()
    if spec.startswith("sqlite:"):
        path = spec.removeprefix("sqlite:")
        if not path:
            raise MemoryConfigError("--memory sqlite needs a file: sqlite:PATH")
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        saver = await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(path))
        await saver.setup()
        return saver
    if spec.startswith(("postgres://", "postgresql://")):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        try:
            saver = await stack.enter_async_context(AsyncPostgresSaver.from_conn_string(spec))
            await saver.setup()
        except Exception as exc:  # psycopg's OperationalError and friends
            raise MemoryConfigError(f"cannot use PostgreSQL memory: {exc}") from None
        return saver
    raise MemoryConfigError(
        f"unknown --memory {spec!r}; use memory, sqlite:PATH or postgres://USER@HOST/DB"
    )

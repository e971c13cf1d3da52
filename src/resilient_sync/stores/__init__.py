"""Queue and idempotency stores.

- ``MemoryQueueStore`` / ``MemoryIdempotencyStore``: in-process, for tests.
- ``SQLiteQueueStore`` / ``SQLiteIdempotencyStore``: the durable embedded default.
- ``PostgresQueueStore`` / ``PostgresIdempotencyStore``: many workers on many
  machines (``pip install 'resilient-sync[postgres]'``).

``open_stores(url)`` opens a matching pair from a URL.

The values a store exchanges with the dispatcher (``Completion``,
``DestinationState``, ``IdempotencyRecord``, ``IdempotencyState``, ``Page``,
``QueueStats``) are exported here for people writing their own store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._model import (
    Completion,
    DestinationState,
    IdempotencyRecord,
    IdempotencyState,
    Page,
    QueueStats,
)
from ._memory import MemoryIdempotencyStore, MemoryQueueStore
from ._open import open_stores
from ._sqlite import SQLiteIdempotencyStore, SQLiteQueueStore

if TYPE_CHECKING:
    from ._postgres import PostgresIdempotencyStore, PostgresQueueStore

__all__ = [
    "Completion",
    "DestinationState",
    "IdempotencyRecord",
    "IdempotencyState",
    "MemoryIdempotencyStore",
    "MemoryQueueStore",
    "Page",
    "PostgresIdempotencyStore",
    "PostgresQueueStore",
    "QueueStats",
    "SQLiteIdempotencyStore",
    "SQLiteQueueStore",
    "open_stores",
]


def __getattr__(name: str) -> Any:
    """The PostgreSQL stores, imported on first use so that psycopg stays optional."""
    if name in ("PostgresIdempotencyStore", "PostgresQueueStore"):
        from . import _postgres  # noqa: PLC0415 - lazy: psycopg is an optional extra

        return getattr(_postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

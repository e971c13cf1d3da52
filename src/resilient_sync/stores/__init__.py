"""Queue and idempotency stores.

- ``MemoryQueueStore`` / ``MemoryIdempotencyStore``: in-process, for tests.
- ``SQLiteQueueStore`` / ``SQLiteIdempotencyStore``: the durable embedded default.
- ``PostgresQueueStore`` / ``PostgresIdempotencyStore``: many workers on many
  machines (``pip install 'resilient-sync[postgres]'``).

``open_stores(url)`` opens a matching pair from a URL.
"""

from __future__ import annotations

from ._memory import MemoryIdempotencyStore, MemoryQueueStore
from ._open import open_stores

__all__ = ["MemoryIdempotencyStore", "MemoryQueueStore", "open_stores"]

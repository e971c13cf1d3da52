"""``open_stores(url)``: one entry point for every ``--db`` URL."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import unquote

from .._protocols import IdempotencyStore, QueueStore
from ._memory import MemoryIdempotencyStore, MemoryQueueStore
from ._sqlite import open_pair

__all__ = ["open_stores", "sqlite_path"]

_EXPECTED = "expected memory://, sqlite:///relative.db, sqlite:////absolute.db or postgresql://..."


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL (SQLAlchemy's convention).

    ``sqlite:///sync.db`` is ``sync.db`` relative to the working directory;
    ``sqlite:////var/lib/sync.db`` is the absolute ``/var/lib/sync.db``.
    Percent-escapes are decoded (``%20`` is a space).
    """
    scheme, sep, rest = url.partition("://")
    if sep == "" or scheme.lower() != "sqlite":
        raise ValueError(f"not a sqlite:// URL: {url!r}; {_EXPECTED}")
    if not rest.startswith("/"):
        raise ValueError(
            f"invalid SQLite URL {url!r}: a host is not allowed; write sqlite:///relative.db "
            "(three slashes) or sqlite:////absolute/path.db (four)"
        )
    if "?" in rest or "#" in rest:
        raise ValueError(
            f"invalid SQLite URL {url!r}: query parameters are not supported; pass "
            "synchronous= and busy_timeout= to open_stores() instead"
        )
    path = unquote(rest[1:])
    if not path or path.endswith("/") or path == ":memory:":
        raise ValueError(
            f"invalid SQLite URL {url!r}: it names no file; e.g. sqlite:///sync.db "
            "(use memory:// for an in-memory queue)"
        )
    return path


def open_stores(
    url: str, *, read_only: bool = False, **options: Any
) -> tuple[QueueStore, IdempotencyStore]:
    """Open a queue store and an idempotency store from a URL.

    - ``memory://``: in-process stores (nothing survives the process);
    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: both
      stores in one SQLite file, on one connection; ``options`` are passed
      to the stores (``synchronous="NORMAL"``, ``busy_timeout=30``);
    - ``postgresql://user@host:5432/db`` (needs the ``postgres`` extra);
      ``options`` are passed to the PostgreSQL stores.

    With ``read_only`` (the operator's read commands) nothing is created,
    migrated or written: a missing SQLite file, a file or schema without the
    library's tables, or one at another schema version is a
    :class:`~resilient_sync.StoreError` that says so.

    Raises ``ValueError`` for a URL it cannot use, naming it.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"invalid store URL {url!r}; {_EXPECTED}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        if options:
            raise TypeError(f"memory:// takes no options, got {sorted(options)}")
        return MemoryQueueStore(), MemoryIdempotencyStore()
    if scheme == "sqlite":
        return open_pair(sqlite_path(url), read_only=read_only, **options)
    if scheme in ("postgresql", "postgres"):
        if read_only:
            options["read_only"] = True
        return _open_postgres(url, **options)
    raise ValueError(f"unsupported store URL scheme {scheme!r} in {url!r}; {_EXPECTED}")


def _open_postgres(url: str, **options: Any) -> tuple[QueueStore, IdempotencyStore]:
    """The PostgreSQL branch, imported lazily so that psycopg stays optional.

    Uses ``._postgres.open_pair(url, **options)`` when the module defines it
    (e.g. to share one pool), else one ``PostgresQueueStore`` and one
    ``PostgresIdempotencyStore`` on the URL.
    """
    try:
        module = importlib.import_module("._postgres", __package__)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in ("psycopg", "psycopg_pool"):
            raise ImportError(
                "postgresql:// stores need psycopg 3: pip install 'resilient-sync[postgres]'"
            ) from exc
        raise
    opener = getattr(module, "open_pair", None)
    if opener is not None:
        pair: tuple[QueueStore, IdempotencyStore] = opener(url, **options)
        return pair
    return module.PostgresQueueStore(url, **options), module.PostgresIdempotencyStore(
        url, **options
    )

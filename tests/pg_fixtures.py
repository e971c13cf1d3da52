"""The PostgreSQL fixtures; load with ``pytest_plugins = ["pg_fixtures"]``.

Kept apart from ``pg_support`` (plain helpers, imported as usual) because a
plugin module must not be imported before pytest registers it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pg_support import drop_schema, new_schema_name, require_postgres


@pytest.fixture
def pg_dsn() -> str:
    """The test server's DSN (skips without one)."""
    return require_postgres()


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema name, dropped after the test."""
    name = new_schema_name()
    try:
        yield name
    finally:
        drop_schema(name)


@pytest.fixture
def pg_stores(pg_dsn: str, pg_schema: str) -> Iterator[tuple[Any, Any]]:
    """A ``(PostgresQueueStore, PostgresIdempotencyStore)`` pair on a fresh schema."""
    from resilient_sync.stores._postgres import PostgresIdempotencyStore, PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    idempotency = PostgresIdempotencyStore(pg_dsn, schema=pg_schema)
    try:
        yield queue, idempotency
    finally:
        queue.close()
        idempotency.close()

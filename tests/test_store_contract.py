"""The store contract suites, run against every store that ships.

To add a backend, add a param to ``stores`` and open the pair in its branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from resilient_sync import IdempotencyStore, QueueStore
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, open_stores
from resilient_sync.testing.contract import IdempotencyStoreContract, QueueStoreContract

Pair = tuple[QueueStore, IdempotencyStore]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """A fresh queue store and idempotency store of one backend."""
    if request.param == "memory":
        pair: Pair = (MemoryQueueStore(), MemoryIdempotencyStore())
    elif request.param == "sqlite":
        pair = open_stores(f"sqlite:///{tmp_path / 'contract.db'}")
    elif request.param == "postgres":
        from pg_support import drop_schema, new_schema_name, require_postgres

        dsn, schema = require_postgres(), new_schema_name("rs_contract")
        request.addfinalizer(lambda: drop_schema(schema))  # noqa: PT021 - also if opening fails
        pair = open_stores(f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}")
    else:  # pragma: no cover - a param without a branch
        raise AssertionError(f"no branch for backend {request.param!r}")
    yield pair
    pair[0].close()
    pair[1].close()


class TestQueueStore(QueueStoreContract):
    @pytest.fixture
    def store(self, stores: Pair) -> QueueStore:
        return stores[0]


class TestIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    def store(self, stores: Pair) -> IdempotencyStore:
        return stores[1]

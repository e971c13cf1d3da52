"""The versioned migrations: from scratch they give the current schema
(``sql/postgres/schema.sql``), they run once, and workers opening a fresh
schema together do not race."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pg_support import (
    admin_connection,
    drop_schema,
    new_schema_name,
    operator_audit,
)
from resilient_sync import StoreError

pytestmark = pytest.mark.postgres
pytest_plugins = ["pg_fixtures"]

CATALOG = {
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type, is_nullable,
               column_default, is_identity, identity_generation
        FROM information_schema.columns WHERE table_schema = %(s)s
        ORDER BY table_name, ordinal_position""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %(s)s
        ORDER BY tablename, indexname""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = to_regnamespace(%(s)s)
        ORDER BY 1, 2""",
    "sequences": """
        SELECT sequence_name, data_type, start_value, increment, cycle_option
        FROM information_schema.sequences WHERE sequence_schema = %(s)s
        ORDER BY sequence_name""",
    "migrations": "SELECT version, name FROM {schema}.schema_migrations ORDER BY version",
    "triggers": """
        SELECT event_object_table, trigger_name, action_timing, event_manipulation,
               action_orientation, action_condition, action_statement
        FROM information_schema.triggers WHERE trigger_schema = %(s)s
        ORDER BY 1, 2, 4""",
    "functions": """
        SELECT p.proname, pg_get_functiondef(p.oid)
        FROM pg_proc AS p WHERE p.pronamespace = to_regnamespace(%(s)s)
        ORDER BY 1""",
}


def catalog(schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the schema holds, with its name replaced by ``S`` so two can be compared."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with admin_connection() as conn:
        for part, query in CATALOG.items():
            rows = conn.execute(query.replace("{schema}", f'"{schema}"'), {"s": schema}).fetchall()
            out[part] = [
                tuple(v.replace(schema, "S") if isinstance(v, str) else v for v in row)
                for row in rows
            ]
    return out


@pytest.fixture
def other_schema(pg_dsn: str) -> Iterator[str]:
    name = new_schema_name("rs_ref")
    try:
        yield name
    finally:
        drop_schema(name)


def test_migrations_from_scratch_give_the_current_schema(
    pg_dsn: str, pg_schema: str, other_schema: str
) -> None:
    from resilient_sync.stores._postgres import PostgresQueueStore, migrations, schema_sql

    assert [v for v, _, _ in migrations(pg_schema)] == list(
        range(1, len(migrations(pg_schema)) + 1)
    ), "migrations are numbered 0001, 0002 ... without gaps"
    PostgresQueueStore(pg_dsn, schema=pg_schema).close()
    with admin_connection() as conn:
        conn.execute(schema_sql(other_schema))
    migrated, reference = catalog(pg_schema), catalog(other_schema)
    assert migrated["columns"], "the migrations created nothing"
    for part in CATALOG:
        assert migrated[part] == reference[part], f"{part} differ from schema.sql"


def test_a_schema_made_from_schema_sql_opens_without_migrating(pg_dsn: str, pg_schema: str) -> None:
    from resilient_sync.stores._postgres import PostgresQueueStore, schema_sql

    with pytest.raises(StoreError, match="version 0"):
        PostgresQueueStore(pg_dsn, schema=pg_schema, migrate=False)
    with admin_connection() as conn:
        conn.execute(schema_sql(pg_schema))
    PostgresQueueStore(pg_dsn, schema=pg_schema, migrate=False).close()


def test_migrations_run_once_and_workers_opening_together_do_not_race(
    pg_dsn: str, pg_schema: str
) -> None:
    from resilient_sync.stores._postgres import PostgresIdempotencyStore, PostgresQueueStore

    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_one(i: int) -> None:
        start.wait()
        try:
            kind = PostgresQueueStore if i % 2 else PostgresIdempotencyStore
            kind(pg_dsn, schema=pg_schema).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    from resilient_sync.stores._postgres import migrations

    assert catalog(pg_schema)["migrations"] == [(v, n) for v, n, _ in migrations(pg_schema)]


def test_a_schema_newer_than_the_library_is_refused(pg_dsn: str, pg_schema: str) -> None:
    from resilient_sync.stores._postgres import PostgresQueueStore

    PostgresQueueStore(pg_dsn, schema=pg_schema).close()
    with admin_connection() as conn:
        conn.execute(
            f"INSERT INTO \"{pg_schema}\".schema_migrations (version, name) VALUES (999, 'future')"
        )
    with pytest.raises(StoreError, match="newer than this resilient_sync knows"):
        PostgresQueueStore(pg_dsn, schema=pg_schema)


def test_a_schema_2_queue_keeps_its_ordering_keys_after_migrating(
    pg_dsn: str, pg_schema: str
) -> None:
    """Schema 3 marks the deliveries waiting behind their ordering key: a
    queue written by the release before it (schema 2), with keys parked,
    in flight and waiting, is marked as if written today, and each key goes
    on in order."""
    from datetime import datetime, timedelta, timezone

    from resilient_sync import DeliveryStatus
    from resilient_sync.stores import Completion
    from resilient_sync.stores._postgres import PostgresQueueStore, _load_queries, migrations

    q = _load_queries(pg_schema)
    s = f'"{pg_schema}"'
    now = datetime.now(timezone.utc)
    rows = [  # (event id, destination, key, status)
        ("a0", "pos", "A", "succeeded"),
        ("a1", "pos", "A", "needs_action"),
        ("a2", "pos", "A", "pending"),
        ("a3", "pos", "A", "retry_scheduled"),
        ("b1", "pos", "B", "in_flight"),  # its worker died: the lease has run out
        ("b2", "pos", "B", "pending"),
        ("c1", "crm", "A", "pending"),  # the same key at another destination
        ("u1", "pos", None, "pending"),
    ]
    with admin_connection() as conn:
        conn.execute(q["bootstrap"])
        for version, name, text in migrations(pg_schema)[:2]:
            conn.execute(text)
            conn.execute(q["record_migration"], {"version": version, "name": name})
        for seq, (event_id, destination, key, status) in enumerate(rows, start=1):
            conn.execute(
                f"""INSERT INTO {s}.deliveries (id, seq, event_id, destination, ordering_key,
                event, status, idempotency_key, attempts, created_at, updated_at, lease_token,
                lease_owner, lease_expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, %s,
                %s, %s, %s, %s)""",
                [
                    f"id-{event_id}",
                    seq,
                    event_id,
                    destination,
                    key,
                    f'{{"id": "{event_id}", "type": "t", "payload": {{}}, "ordering_key": '
                    + ("null" if key is None else f'"{key}"')
                    + "}",
                    status,
                    f"k-{event_id}",
                    now,
                    now,
                    7 if status == "in_flight" else 0,
                    "dead-worker" if status == "in_flight" else None,
                    now - timedelta(minutes=1) if status == "in_flight" else None,
                ],
            )
        conn.execute(f"SELECT setval('{pg_schema}.delivery_seq', 100)")

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)  # migrates to the newest
    try:
        with admin_connection() as conn:
            flags = dict(conn.execute(f"SELECT event_id, key_waits FROM {s}.deliveries"))
        assert {e for e, waits in flags.items() if waits} == {"a2", "a3", "b2"}

        def claim() -> list[Any]:
            lease = now + timedelta(minutes=5)
            return list(queue.claim(now=now, limit=10, lease_until=lease, worker="w"))

        first = claim()
        assert sorted(d.event.id for d in first) == ["b1", "c1", "u1"]
        b1 = next(d for d in first if d.event.id == "b1")
        done = Completion(
            delivery_id=b1.id,
            lease_token=b1.lease_token,
            status=DeliveryStatus.SUCCEEDED,
            finished_at=now,
        )
        assert queue.complete([done]) == [True]
        assert [d.event.id for d in claim()] == ["b2"]
        resolved = queue.transition(
            ["id-a1"],
            from_status={DeliveryStatus.NEEDS_ACTION},
            to_status=DeliveryStatus.RESOLVED,
            audit=operator_audit("resolve", now),
            now=now,
        )
        assert resolved == ["id-a1"]
        assert [d.event.id for d in claim()] == ["a2"]  # a3 waits for a2 in turn
    finally:
        queue.close()


def test_a_delivery_left_marked_waiting_without_a_key_is_claimed_after_migrating(
    pg_dsn: str, pg_schema: str
) -> None:
    """Before schema 4, an edit that removed the ordering key of a delivery
    waiting behind its key left it marked as waiting, and the claim never
    handed it out. A schema-3 queue holding such a delivery is cleared when
    it migrates."""
    from datetime import datetime, timedelta, timezone

    from resilient_sync.stores._postgres import PostgresQueueStore, _load_queries, migrations

    q = _load_queries(pg_schema)
    now = datetime.now(timezone.utc)
    with admin_connection() as conn:
        conn.execute(q["bootstrap"])
        for version, name, text in migrations(pg_schema)[:3]:
            conn.execute(text)
            conn.execute(q["record_migration"], {"version": version, "name": name})
        conn.execute(
            f"""INSERT INTO "{pg_schema}".deliveries (id, seq, event_id, destination, event,
            status, idempotency_key, created_at, updated_at, key_waits)
            VALUES ('d1', 1, 'e1', 'pos', '{{"id": "e1", "type": "t", "payload": {{}}}}',
            'pending', 'k1', %s, %s, true)""",
            [now, now],
        )
    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)  # migrates to the newest
    try:
        claimed = queue.claim(now=now, limit=10, lease_until=now + timedelta(minutes=5), worker="w")
        assert [d.id for d in claimed] == ["d1"]
    finally:
        queue.close()


def test_a_schema_4_queue_claims_what_is_due_after_migrating(pg_dsn: str, pg_schema: str) -> None:
    """Schema 5 reads the claimable deliveries through two indexes instead of
    one (those waiting with no due time in seq order, the others in the
    order they fall due). A queue written at schema 4, with deliveries of
    every kind, is claimed as before after migrating: what is due, oldest
    first, and next_due is the first time one of the others falls due."""
    from datetime import datetime, timedelta, timezone

    from resilient_sync import DeliveryStatus
    from resilient_sync.stores import Completion
    from resilient_sync.stores._postgres import PostgresQueueStore, _load_queries, migrations

    q = _load_queries(pg_schema)
    s = f'"{pg_schema}"'
    now = datetime.now(timezone.utc)
    minute = timedelta(minutes=1)
    rows = [  # (event id, destination, key, status, next_attempt_at, lease_expires_at)
        ("p-none", "pos", None, "pending", None, None),
        ("p-due", "pos", None, "pending", now - minute, None),
        ("r-later", "pos", None, "retry_scheduled", now + 60 * minute, None),
        ("r-due", "pos", None, "retry_scheduled", now - timedelta(seconds=1), None),
        ("f-expired", "pos", None, "in_flight", None, now - minute),
        ("f-live", "pos", None, "in_flight", None, now + 30 * minute),
        ("k1", "pos", "K", "retry_scheduled", now + 10 * minute, None),  # the key's head
        ("k2", "pos", "K", "pending", now - minute, None),  # due, but waits behind k1
        ("c-none", "crm", None, "retry_scheduled", None, None),
        ("done", "pos", None, "succeeded", None, None),
    ]
    with admin_connection() as conn:
        conn.execute(q["bootstrap"])
        for version, name, text in migrations(pg_schema)[:4]:
            conn.execute(text)
            conn.execute(q["record_migration"], {"version": version, "name": name})
        for seq, (event_id, destination, key, status, due, lease_end) in enumerate(rows, 1):
            conn.execute(
                f"""INSERT INTO {s}.deliveries (id, seq, event_id, destination, ordering_key,
                event, status, idempotency_key, attempts, next_attempt_at, created_at,
                updated_at, lease_token, lease_owner, lease_expires_at) VALUES (%s, %s, %s, %s,
                %s, %s, %s, %s, 1, %s, %s, %s, %s, %s, %s)""",
                [
                    f"id-{event_id}",
                    seq,
                    event_id,
                    destination,
                    key,
                    f'{{"id": "{event_id}", "type": "t", "payload": {{}}, "ordering_key": '
                    + ("null" if key is None else f'"{key}"')
                    + "}",
                    status,
                    f"k-{event_id}",
                    due,
                    now - 60 * minute,
                    now - 60 * minute,  # written an hour ago
                    7 if lease_end else 0,
                    "dead-worker" if lease_end else None,
                    lease_end,
                ],
            )
        conn.execute(f"SELECT setval('{pg_schema}.delivery_seq', 100)")

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)  # migrates to the newest
    try:
        indexes = {name for _, name, _ in catalog(pg_schema)["indexes"]}
        assert {"deliveries_claim_ready", "deliveries_claim_timed"} <= indexes
        assert "deliveries_claim_heads" not in indexes
        lease = now + timedelta(minutes=5)
        claimed = queue.claim(now=now, limit=10, lease_until=lease, worker="w")
        assert [d.event.id for d in claimed] == ["p-none", "p-due", "r-due", "f-expired", "c-none"]
        assert queue.attempts("id-f-expired")[-1].action == "lease_expired"
        assert queue.next_due() == lease  # the leases just taken
        done = [
            Completion(
                delivery_id=d.id,
                lease_token=d.lease_token,
                status=DeliveryStatus.SUCCEEDED,
                finished_at=now,
            )
            for d in claimed
        ]
        assert queue.complete(done) == [True] * 5
        assert queue.next_due() == now + 10 * minute  # k1 (k2 waits behind it)
        assert queue.claim(now=lease, limit=10, lease_until=lease, worker="w") == []
    finally:
        queue.close()

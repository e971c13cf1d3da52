"""What the SQLite stores add to the contract: files, migrations, URLs, the
outbox join, several connections, and clear errors for a locked, read-only,
full or corrupted database. (The contract itself: tests/test_store_contract.py.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from resilient_sync import (
    AsyncDispatcher,
    Attempt,
    Delivery,
    DeliveryStatus,
    Dispatcher,
    Event,
    IdempotencyStore,
    InvalidEventError,
    QueueStore,
    StoreError,
)
from resilient_sync.stores import Completion, SQLiteIdempotencyStore, SQLiteQueueStore, open_stores
from resilient_sync.stores._common import NEXT_DUE_WINDOW
from resilient_sync.stores._open import sqlite_path
from resilient_sync.stores._sqlite import (
    PROMOTE_PER_CLAIM,
    Q,
    _us,
    migrations,
    parse_queries,
    split_statements,
)
from resilient_sync.testing import FakeClock, RecordingDestination
from resilient_sync.testing.contract import LEASE, T0, make_delivery

SQL_DIR = Path(__file__).resolve().parents[1] / "src/resilient_sync/stores/sql/sqlite"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sync.db"


@pytest.fixture
def queue(db: Path) -> Iterator[SQLiteQueueStore]:
    store = SQLiteQueueStore(db)
    yield store
    store.close()


def _pragma(store: Any, name: str) -> Any:
    with store._db.read("test") as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


def _schema(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """Every object of the schema, its SQL without comments and spacing."""
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    out = []
    for kind, name, sql in rows:
        text = re.sub(r"--[^\n]*", "", sql or "")
        out.append((kind, name, " ".join(text.split())))
    return out


# -- migrations and SQL files ---------------------------------------------------


def test_migrating_from_scratch_yields_the_current_schema(db: Path, tmp_path: Path) -> None:
    SQLiteQueueStore(db).close()
    migrated = sqlite3.connect(db)
    reference = sqlite3.connect(tmp_path / "reference.db")
    reference.executescript((SQL_DIR / "schema.sql").read_text())
    assert _schema(migrated) == _schema(reference)
    counters = "SELECT name, value FROM resilient_sync_counters"
    assert migrated.execute(counters).fetchall() == reference.execute(counters).fetchall()
    versions = migrated.execute("SELECT version, name FROM resilient_sync_migrations").fetchall()
    assert versions == [(m.version, m.name) for m in migrations()]
    migrated.close()
    reference.close()


def test_migrations_run_once_and_leave_user_version_to_the_application(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 42")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.close()
    for _ in range(2):
        SQLiteQueueStore(db).close()
        SQLiteIdempotencyStore(db).close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (42,)
    assert conn.execute("SELECT COUNT(*) FROM resilient_sync_migrations").fetchone() == (
        len(migrations()),
    )
    assert conn.execute("SELECT COUNT(*) FROM orders").fetchone() == (0,)
    conn.close()


def test_a_file_from_a_newer_version_is_refused(db: Path) -> None:
    SQLiteQueueStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO resilient_sync_migrations VALUES (999, 'future', '2030-01-01T00:00:00Z')"
        )
    conn.close()
    with pytest.raises(StoreError, match=r"version 999, newer .*upgrade resilient_sync") as info:
        SQLiteQueueStore(db)
    assert str(db) in str(info.value)


def _succeeded(claimed: Delivery) -> Completion:
    """The outcome "delivered" of a claimed delivery."""
    return Completion(
        delivery_id=claimed.id,
        lease_token=claimed.lease_token,
        status=DeliveryStatus.SUCCEEDED,
        finished_at=T0,
    )


#: the columns each migration after schema 3 added to the deliveries, in order
_LATER_COLUMNS = {4: ("open_key",), 5: ("key_waits",)}


@pytest.mark.parametrize("version", [3, 4])
def test_an_older_file_keeps_its_ordering_keys_after_migrating(
    db: Path, tmp_path: Path, version: int
) -> None:
    """Schema 4 moved "is an older delivery of my key still open?" to a new
    column, schema 5 marks the deliveries waiting behind their key: a queue
    written before either must keep its keys' order and its finished
    deliveries must not hold a key."""
    clock = FakeClock(T0)
    later = {c for v, cols in _LATER_COLUMNS.items() if v > version for c in cols}
    current = SQLiteQueueStore(tmp_path / "current.db")
    current.enqueue(
        [
            make_delivery("done", ordering_key="A"),
            make_delivery("a1", ordering_key="A"),
            make_delivery("a2", ordering_key="A"),
            make_delivery("b1", ordering_key="B"),
        ]
    )
    (done,) = current.claim(now=T0, limit=1, lease_until=T0 + LEASE, worker="w")
    current.complete([_succeeded(done)])
    with current._db.read("test") as conn:
        cur = conn.execute("SELECT * FROM resilient_sync_deliveries ORDER BY seq")
        names = [c[0] for c in cur.description if c[0] not in later]
        rows = [row[: len(names)] for row in cur.fetchall()]
    current.close()
    assert [c[0] for c in cur.description][len(names) :] == [
        c for v in sorted(_LATER_COLUMNS) if v > version for c in _LATER_COLUMNS[v]
    ], "the later columns are no longer the last ones"

    old = sqlite3.connect(db, isolation_level=None)
    for migration in migrations()[:version]:
        for statement in migration.statements:
            old.execute(statement)
        old.execute(Q.record_migration, {"version": migration.version, "name": migration.name})
    old.executemany(
        f"INSERT INTO resilient_sync_deliveries ({', '.join(names)}) "
        f"VALUES ({', '.join('?' * len(names))})",
        rows,
    )
    old.close()

    queue = SQLiteQueueStore(db)
    try:
        with queue._db.read("test") as conn:
            flags = dict(conn.execute("SELECT event_id, key_waits FROM resilient_sync_deliveries"))
        # the migration marked the one delivery behind an unfinished one of its key
        assert flags == {"done": 0, "a1": 0, "a2": 1, "b1": 0}
        claimed = queue.claim(now=clock.now(), limit=10, lease_until=T0 + LEASE, worker="w")
        assert [d.event.id for d in claimed] == ["a1", "b1"]
        a1 = claimed[0]
        queue.complete([_succeeded(a1)])
        again = queue.claim(now=clock.now(), limit=10, lease_until=T0 + LEASE, worker="w")
        assert [d.event.id for d in again] == ["a2"]
    finally:
        queue.close()


def test_a_process_refuses_to_write_once_a_newer_version_migrated_its_file(db: Path) -> None:
    """A process that had the file open when a newer resilient_sync migrated
    it must not go on writing rows in the old format (schema 4's claim reads
    a column that older writers leave unset): each write is refused with what
    to do, and nothing of it is written, submits joined to the caller's
    transaction included."""
    queue, idem = open_stores(f"sqlite:///{db}")
    dispatcher = Dispatcher(queue, idem, [RecordingDestination("pos")])
    dispatcher.submit(Event("before", "t", {}))
    with sqlite3.connect(db) as newer:  # what a newer release's migration leaves
        newer.execute("CREATE TABLE resilient_sync_future (a INTEGER)")
        newer.execute(
            "INSERT INTO resilient_sync_migrations VALUES (?, 'future', '2030-01-01T00:00:00Z')",
            (len(migrations()) + 1,),
        )
    newer.close()
    try:
        with pytest.raises(StoreError, match=r"migrated the file to schema version") as info:
            dispatcher.submit(Event("after", "t", {}))
        assert "restart this process with the upgraded resilient_sync" in str(info.value)
        assert "nothing was written" in str(info.value)
        with pytest.raises(StoreError, match=r"migrated the file to schema version"):
            dispatcher.run_once()
        outbox = sqlite3.connect(db, isolation_level=None)
        outbox.execute("BEGIN IMMEDIATE")
        outbox.execute("CREATE TABLE orders (id INTEGER)")
        with pytest.raises(StoreError, match=r"migrated the file to schema version"):
            dispatcher.submit(Event("joined", "t", {}), transaction=outbox)
        outbox.execute("COMMIT")  # the caller's own rows are theirs to keep
        outbox.close()
        with sqlite3.connect(db) as check:
            rows = check.execute(
                "SELECT event_id, status FROM resilient_sync_deliveries ORDER BY seq"
            ).fetchall()
            assert check.execute("SELECT COUNT(*) FROM orders").fetchone() == (0,)
        check.close()
        assert rows == [("before", "pending")]
    finally:
        queue.close()
        idem.close()


@pytest.mark.parametrize(
    "key",
    ["cust\x00-1", "cust-\ud800", "\x1b[31mcust\x1b[0m", "c" * 5_000_000],
    ids=["nul", "lone-surrogate", "ansi-escape", "5MB"],
)
def test_a_hostile_ordering_key_never_reaches_the_open_key_index(db: Path, key: str) -> None:
    """The ordering key is copied into ``open_key`` (schema 4): the one gate
    for ids and keys refuses it before anything is written, through
    ``submit()`` and through the store called directly, and the order of the
    key's good deliveries is untouched."""
    queue, idem = open_stores(f"sqlite:///{db}")
    try:
        dispatcher = Dispatcher(queue, idem, [RecordingDestination("pos")])
        dispatcher.submit(Event("a1", "t", {}, ordering_key="cust-1"))
        with pytest.raises(InvalidEventError, match="ordering_key") as info:
            dispatcher.submit(Event("bad", "t", {}, ordering_key=key))
        assert "\x1b" not in str(info.value)
        assert len(str(info.value)) < 1000
        with pytest.raises(InvalidEventError, match="ordering_key"):
            queue.enqueue([make_delivery("bad", ordering_key=key)])
        dispatcher.submit(Event("a2", "t", {}, ordering_key="cust-1"))
        with queue._db.read("test") as conn:
            rows = conn.execute(
                "SELECT event_id, open_key FROM resilient_sync_deliveries ORDER BY seq"
            ).fetchall()
        assert rows == [("a1", "cust-1"), ("a2", "cust-1")]
        later = datetime.now(timezone.utc) + timedelta(seconds=1)
        claimed = queue.claim(now=later, limit=10, lease_until=later + LEASE, worker="w")
        assert [d.event.id for d in claimed] == ["a1"]
    finally:
        queue.close()
        idem.close()


def test_the_refusal_after_a_newer_migration_shows_the_path_escaped(tmp_path: Path) -> None:
    """The refusal names the file; a path holding an ESC is shown escaped,
    never as a terminal control sequence."""
    db = tmp_path / "sync\x1b[31m.db"
    queue, idem = open_stores(f"sqlite:///{quote(str(db))}")
    try:
        with sqlite3.connect(db) as newer:
            newer.execute(
                "INSERT INTO resilient_sync_migrations VALUES (?, 'future', 'x')",
                (len(migrations()) + 1,),
            )
        newer.close()
        with pytest.raises(StoreError, match="migrated the file") as info:
            Dispatcher(queue, idem, [RecordingDestination("pos")]).submit(Event("e", "t", {}))
        assert "\x1b" not in str(info.value)
        assert "\\x1b" in str(info.value)
    finally:
        queue.close()
        idem.close()


def test_the_applications_own_tables_in_the_file_do_not_stop_writes(db: Path) -> None:
    """The check of a newer schema reads our migrations, not SQLite's schema
    counter: the application creating its tables (the outbox) changes
    nothing."""
    queue, idem = open_stores(f"sqlite:///{db}")
    dispatcher = Dispatcher(queue, idem, [RecordingDestination("pos")])
    dispatcher.submit(Event("e1", "t", {}))
    with sqlite3.connect(db) as app:
        app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    app.close()
    dispatcher.submit(Event("e2", "t", {}))
    assert dispatcher.run_until_idle().succeeded == 2
    queue.close()
    idem.close()


def test_processes_racing_to_create_a_file_migrate_it_once(db: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from resilient_sync.stores import SQLiteQueueStore
        SQLiteQueueStore(sys.argv[1]).close()
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(db)], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate()[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM resilient_sync_migrations").fetchone() == (
        len(migrations()),
    )
    conn.close()


def test_sql_files_parse() -> None:
    for migration in migrations():
        assert migration.statements
        assert all(sqlite3.complete_statement(s) for s in migration.statements)
    queries = parse_queries((SQL_DIR / "queries.sql").read_text())
    assert "claim_candidates" in queries
    assert all(sql and "-- name" not in sql for sql in queries.values())
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE t (a);\nSELECT 1")
    assert split_statements("-- c\nSELECT 1;\n-- trailing comment\n") == ["-- c\nSELECT 1;"]


def test_hot_queries_use_their_indexes(queue: SQLiteQueueStore) -> None:
    """The claim walks the partial index of claimable rows (never the whole
    table) and checks ordering-key heads through their index."""

    def plan(sql: str, params: Any) -> str:
        with queue._db.read("test") as conn:
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return "\n".join(row[-1] for row in rows)

    claim = plan(Q.claim_candidates, {"now": 0, "destinations": None, "limit": 10})
    assert "USING INDEX resilient_sync_deliveries_ready (key_waits=? AND destination=?)" in claim
    assert "USING COVERING INDEX resilient_sync_deliveries_key" in claim
    promote = plan(Q.claim_promote, {"now": 0, "promote": 10})
    assert "USING COVERING INDEX resilient_sync_deliveries_timed" in promote
    operator_queue = plan(
        "\n".join([Q.list_deliveries, Q.list_where_needs_action, Q.list_order]),
        {"after": 0, "limit": 10},
    )
    assert "resilient_sync_deliveries_needs_action" in operator_queue
    assert "resilient_sync_audit_errors" in plan(Q.audit_errors, {"since": None, "limit": 10})
    assert "resilient_sync_audit_delivery" in plan(Q.attempts, ("d1",))
    # no read of the operator's or the worker's scans the history of finished deliveries
    for name, params in (
        ("stats_open", {}),
        ("created_at", (1,)),
        ("stats_finished", {}),
        ("error_counts", {"since": 0, "until": 1, "width": 1}),
        ("next_due", {"window": 1000}),
        ("in_flight_tokens", ("[]",)),
    ):
        text = plan(getattr(Q, name), params)
        assert "SCAN resilient_sync_deliveries\n" not in text + "\n", (name, text)
        assert not any(
            line.strip() in ("SCAN resilient_sync_deliveries", "SCAN resilient_sync_audit")
            for line in text.splitlines()
        ), (name, text)


def _program(queue: SQLiteQueueStore, sql: str) -> list[tuple[Any, ...]]:
    """A statement's bytecode (``EXPLAIN``), with every ``?N`` bound to 0."""
    with queue._db.read("test") as conn:
        params = (0,) * max(int(n) for n in re.findall(r"\?(\d+)", sql))
        return list(conn.execute("EXPLAIN " + sql, params).fetchall())


def _written_indexes(queue: SQLiteQueueStore, sql: str) -> set[str]:
    """The tables and indexes a statement opens for writing."""
    with queue._db.read("test") as conn:
        roots = dict(conn.execute("SELECT rootpage, name FROM sqlite_master WHERE rootpage > 0"))
    return {
        roots[row[3]] for row in _program(queue, sql) if row[1] == "OpenWrite" and row[3] in roots
    }


def test_a_claim_writes_no_page_of_the_ordering_key_index(queue: SQLiteQueueStore) -> None:
    """With many deliveries queued per key, each claimed row's entry in the
    "older open delivery of my key?" index sits on a page of its own: a claim
    that rewrote them wrote a page per claimed row (measured: 100 of the 125
    pages of a claim of 100 at 1M queued). Only finishing a delivery (or
    moving its key) changes that index."""
    claim = _written_indexes(queue, Q.claim_delivery)
    assert "resilient_sync_deliveries" in claim
    assert "resilient_sync_deliveries_key" not in claim, claim
    assert "resilient_sync_deliveries_key" in _written_indexes(queue, Q.complete_delivery)
    # a delivery without a key leaves the key index (and its triggers) alone
    unkeyed = _written_indexes(queue, Q.complete_delivery_unkeyed)
    assert "resilient_sync_deliveries_key" not in unkeyed, unkeyed
    assert "resilient_sync_deliveries_key" in _written_indexes(queue, Q.transition_delivery)


def test_a_delivery_left_marked_waiting_without_a_key_is_claimed_after_migrating(
    db: Path,
) -> None:
    """Before schema 6, an edit that removed the ordering key of a delivery
    waiting behind its key left it marked as waiting, and the claim never
    handed it out. A file at schema 5 holding such a delivery is cleared
    when it migrates."""
    old = sqlite3.connect(db, isolation_level=None)
    for migration in migrations()[:5]:
        for statement in migration.statements:
            old.execute(statement)
        old.execute(Q.record_migration, {"version": migration.version, "name": migration.name})
    t0 = _us(T0)
    old.execute(
        "INSERT INTO resilient_sync_deliveries (id, event_id, destination, ordering_key, event,"
        " status, idempotency_key, next_attempt_at, due_at, created_at, updated_at, open_key,"
        " key_waits) VALUES ('d1', 'e1', 'pos', NULL, ?1, 'pending', 'k1', ?2, ?2, ?2, ?2,"
        " NULL, 1)",
        ('{"id": "e1", "type": "t", "payload": {}}', t0),
    )
    old.close()
    queue = SQLiteQueueStore(db)
    try:
        claimed = queue.claim(now=T0, limit=10, lease_until=T0 + LEASE, worker="w")
        assert [d.id for d in claimed] == ["d1"]
    finally:
        queue.close()


def test_a_file_at_schema_6_keeps_every_delivery_claimable_at_its_time(db: Path) -> None:
    """Schema 7 tells ready rows from those waiting for their time by the
    sign of ``due_at``: migrating marks the rows already due as ready and
    leaves the others to fall due, so each is claimed as before, in order."""
    old = sqlite3.connect(db, isolation_level=None)
    for migration in migrations()[:6]:
        for statement in migration.statements:
            old.execute(statement)
        old.execute(Q.record_migration, {"version": migration.version, "name": migration.name})
    t0, far = _us(T0), _us(datetime(2100, 1, 1, tzinfo=timezone.utc))
    rows = [  # (event id, status, next_attempt_at, due_at, lease end)
        ("scheduled", "retry_scheduled", far, far, None),
        ("due", "pending", t0, t0, None),
        ("leased", "in_flight", None, far, far),
        ("expired", "in_flight", None, t0, t0),
        ("at-once", "pending", None, 0, None),
        ("ancient", "pending", -t0, -t0, None),  # due in 1916: long past, not "from 2032"
    ]
    for event_id, status, next_at, due_at, lease in rows:
        old.execute(
            "INSERT INTO resilient_sync_deliveries (id, event_id, destination, event, status,"
            " idempotency_key, next_attempt_at, due_at, created_at, updated_at, lease_token,"
            " lease_owner, lease_expires_at) VALUES (?1, ?1, 'pos', ?2, ?3, ?1, ?4, ?5, ?6, ?6,"
            " ?7, ?8, ?9)",
            (
                event_id,
                json.dumps({"id": event_id, "type": "t", "payload": {}}),
                status,
                next_at,
                due_at,
                t0,
                1 if lease else 0,
                "gone" if lease else None,
                lease,
            ),
        )
    old.close()
    queue = SQLiteQueueStore(db)
    try:
        assert queue.next_due() == T0
        claimed = queue.claim(now=T0, limit=10, lease_until=T0 + LEASE, worker="w")
        assert [d.id for d in claimed] == ["due", "expired", "at-once", "ancient"]
        assert queue.next_due() == T0 + LEASE
        end = datetime(2100, 1, 1, tzinfo=timezone.utc)
        claimed = queue.claim(now=end, limit=10, lease_until=end + LEASE, worker="w")
        assert [d.id for d in claimed] == [
            "scheduled",
            "due",
            "leased",
            "expired",
            "at-once",
            "ancient",
        ]
    finally:
        queue.close()


def test_a_mass_of_retries_falling_due_together_is_made_ready_a_bounded_part_per_claim(
    queue: SQLiteQueueStore,
) -> None:
    """A claim makes at most ``PROMOTE_PER_CLAIM`` of the deliveries whose
    time has come ready (the earliest first), so that 2,500 retries falling
    due at once do not hold the write lock for all of them in one claim; the
    rest follow at the next claims, and every one is claimed, oldest first."""
    later = T0 + timedelta(hours=1)
    n = 2 * PROMOTE_PER_CLAIM + 500
    queue.enqueue([make_delivery(f"e{i:05}", next_attempt_at=later) for i in range(n)])

    def ready() -> int:
        with queue._db.read("test") as conn:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM resilient_sync_deliveries WHERE due_at <= 0"
            ).fetchone()
        return int(count)

    lease = {"now": later, "lease_until": later + LEASE, "worker": "w"}
    first = queue.claim(limit=10, **lease)
    assert [d.event.id for d in first] == [f"e{i:05}" for i in range(10)]
    assert ready() == PROMOTE_PER_CLAIM - 10
    claimed = [d.event.id for d in first]
    while batch := queue.claim(limit=400, **lease):
        claimed += [d.event.id for d in batch]
    assert claimed == [f"e{i:05}" for i in range(n)]


def _vm_steps(queue: SQLiteQueueStore, sql: str, params: Any) -> tuple[int, list[Any]]:
    """SQLite virtual-machine steps (in thousands) of one query, and its rows:
    a count of the work done that no machine's speed changes."""

    def read() -> list[Any]:
        with queue._db.read("test") as conn:
            return list(conn.execute(sql, params).fetchall())

    return _steps(queue, read)


def _steps(queue: SQLiteQueueStore, call: Callable[[], Any]) -> tuple[int, Any]:
    """SQLite virtual-machine steps (in thousands) of what ``call`` has the
    store's connection do (a claim: all its statements), and what it returns."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    with queue._db.lock:  # the store's one connection, reentrant
        conn = queue._db._connection()
        conn.set_progress_handler(tick, 1000)
        try:
            result = call()
        finally:
            conn.set_progress_handler(None, 0)
    return steps, result


def _claim_steps(queue: SQLiteQueueStore) -> int:
    """Steps of one claim's candidate query (see ``_vm_steps``)."""
    params = {"now": _us(T0 + LEASE), "destinations": None, "limit": 100}
    steps, rows = _vm_steps(queue, Q.claim_candidates, params)
    assert len(rows) == 1
    return steps


def test_a_claim_reads_none_of_the_deliveries_waiting_behind_their_key(
    queue: SQLiteQueueStore,
) -> None:
    """With every delivery queued behind one ordering key, a claim hands out
    one of them, and its cost must not grow with how many wait behind it:
    before schema 5 it tested each waiting row against the key's index (15 ms
    a claim at 20,000 queued against 0.6 ms after)."""
    queue.enqueue([make_delivery(f"e{i}", ordering_key="A") for i in range(200)])
    shallow = _claim_steps(queue)
    queue.enqueue([make_delivery(f"f{i}", ordering_key="A") for i in range(5000)])
    deep = _claim_steps(queue)
    assert deep <= shallow + 2, (shallow, deep)


def test_an_idle_poll_finds_the_next_due_time_in_one_step_however_deep(
    queue: SQLiteQueueStore,
) -> None:
    """``next_due``, which an idle worker asks at every empty claim, reads the
    first entry of the index of deliveries waiting for their time, however
    many are queued (reading them all took 22 ms a call at 100,000 scheduled
    for a retry), and it is exact: a delivery behind thousands of others that
    falls due sooner is the one it reports (schema 6 read a window of the
    oldest 1,000 and missed it)."""
    later = T0 + timedelta(minutes=10)
    queue.enqueue(
        [
            make_delivery(f"e{i}", next_attempt_at=later + timedelta(milliseconds=i))
            for i in range(2 * NEXT_DUE_WINDOW)
        ]
    )
    shallow, _ = _vm_steps(queue, Q.next_due, {"window": NEXT_DUE_WINDOW})
    queue.enqueue(
        [
            make_delivery(f"f{i}", next_attempt_at=later + timedelta(milliseconds=i))
            for i in range(10 * NEXT_DUE_WINDOW)
        ]
    )
    deep, _ = _vm_steps(queue, Q.next_due, {"window": NEXT_DUE_WINDOW})
    assert deep <= shallow + 2, (shallow, deep)
    assert queue.next_due() == later
    sooner = T0 + timedelta(minutes=1)
    (last,) = queue.enqueue([make_delivery("last", next_attempt_at=sooner)])
    assert last.seq > 12 * NEXT_DUE_WINDOW
    assert queue.next_due() == sooner


def _backlog(queue: SQLiteQueueStore, kind: str, n: int) -> None:
    """``n`` deliveries no claim at ``T0`` may take, of one ``kind``."""
    later = T0 + timedelta(hours=1)
    for start in range(0, n, 2000):
        ids = range(start, min(n, start + 2000))
        if kind == "scheduled":  # retries scheduled for later, after an outage
            queue.enqueue([make_delivery(f"b{i}", next_attempt_at=later) for i in ids])
        else:
            queue.enqueue([make_delivery(f"b{i}", destination="down") for i in ids])
    if kind == "in_flight":  # leased by other workers, their leases running
        while queue.claim(now=T0, limit=1000, lease_until=later, worker="other"):
            pass
    elif kind == "paused":
        queue.set_destination("down", now=T0, paused=True, paused_reason="maintenance")
    elif kind == "held":  # the circuit breaker of a destination that is down
        queue.set_destination("down", now=T0, hold_until=later, hold_reason="circuit open")


@pytest.mark.parametrize("kind", ["scheduled", "in_flight", "paused", "held"])
def test_a_claim_reads_none_of_the_deliveries_it_cannot_take(tmp_path: Path, kind: str) -> None:
    """After an outage the front of the queue holds what no claim may take:
    retries scheduled for later, deliveries leased by other workers, the
    backlog of a destination that is paused or held by its circuit breaker.
    Before schema 7 every claim walked past them in submission order to the
    due deliveries behind them: with 100,000 in front, an empty claim took
    7.5-12 ms and a claim of 100 due ones 8.5-13.5 ms (0.04 and 1.5 ms now).
    The claim's work (all its statements) must not grow with them."""
    cost: dict[int, tuple[int, int]] = {}
    for n in (200, 10_000):
        queue = SQLiteQueueStore(tmp_path / f"{n}.db")
        try:
            _backlog(queue, kind, n)
            queue.enqueue([make_delivery(f"due{i}") for i in range(150)])
            lease = {"now": T0, "lease_until": T0 + LEASE, "worker": "w"}
            full, claimed = _steps(queue, functools.partial(queue.claim, limit=100, **lease))
            assert [d.event.id for d in claimed] == [f"due{i}" for i in range(100)]
            assert len(queue.claim(limit=100, **lease)) == 50
            empty, nothing = _steps(queue, functools.partial(queue.claim, limit=100, **lease))
            assert nothing == []
            cost[n] = (full, empty)
        finally:
            queue.close()
    (full, empty), (deep_full, deep_empty) = cost[200], cost[10_000]
    assert deep_full <= full + 3, cost
    assert deep_empty <= empty + 3, cost


@pytest.mark.parametrize(
    "name",
    [
        "insert_delivery",
        "claim_delivery",
        "complete_delivery",
        "complete_delivery_unkeyed",
        "transition_delivery",
    ],
)
def test_a_statement_run_once_per_delivery_builds_no_temporary_table(
    queue: SQLiteQueueStore, name: str
) -> None:
    """``x IN ('a', 'b', ...)`` in SQLite builds a temporary b-tree each time
    the statement runs: in the per-row statements of an ``executemany`` it
    cost about 30,000 CPU instructions per delivery (bench/instructions.py)."""
    opcodes = [row[1] for row in _program(queue, getattr(Q, name))]
    assert "OpenEphemeral" not in opcodes


# -- the file ------------------------------------------------------------------


def test_deliveries_survive_closing_and_reopening(db: Path) -> None:
    clock = FakeClock(T0)
    queue, idempotency = open_stores(f"sqlite:///{db}")
    pos = RecordingDestination("pos")
    dispatcher = Dispatcher(queue, idempotency, [pos], clock=clock)
    dispatcher.submit_many([Event(f"e{i}", "t", {"i": i}) for i in range(5)])
    dispatcher.run_once(limit=2)
    queue.close()
    idempotency.close()

    queue, idempotency = open_stores(f"sqlite:///{db}")
    assert queue.stats().by_status == {DeliveryStatus.SUCCEEDED: 2, DeliveryStatus.PENDING: 3}
    dispatcher = Dispatcher(queue, idempotency, [pos], clock=clock)
    dispatcher.run_until_idle()
    assert queue.stats().by_status == {DeliveryStatus.SUCCEEDED: 5}
    assert len(pos.applied) == 5
    assert len(queue.audit()) == 5
    queue.close()
    idempotency.close()


def test_the_wal_and_the_durability_setting_are_applied(tmp_path: Path) -> None:
    for mode, level in (("FULL", 2), ("normal", 1), ("EXTRA", 3)):
        store = SQLiteQueueStore(tmp_path / f"{mode}.db", synchronous=mode)
        assert _pragma(store, "journal_mode") == "wal"
        assert _pragma(store, "synchronous") == level
        assert store.synchronous == mode.upper()
        store.close()
    default = SQLiteIdempotencyStore(tmp_path / "default.db")
    assert _pragma(default, "synchronous") == 2
    assert "synchronous='FULL'" in repr(default)
    default.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"synchronous": "OFF"}, ValueError, "synchronous must be one of FULL, NORMAL, EXTRA"),
        ({"busy_timeout": -1}, ValueError, "busy_timeout"),
    ],
)
def test_bad_options_are_refused(
    db: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        SQLiteQueueStore(db, **kwargs)


@pytest.mark.parametrize("path", ["", ":memory:", "file:x.db?mode=memory"])
def test_a_store_needs_a_real_file(path: str) -> None:
    with pytest.raises(ValueError, match="need a file path"):
        SQLiteQueueStore(path)


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "sync.db"
    with pytest.raises(StoreError, match="cannot open the file") as info:
        SQLiteQueueStore(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_both_stores_share_one_connection_until_both_are_closed(db: Path) -> None:
    queue, idempotency = open_stores(f"sqlite:///{db}")
    assert isinstance(queue, SQLiteQueueStore)
    assert isinstance(idempotency, SQLiteIdempotencyStore)
    assert queue._db is idempotency._db
    queue.enqueue([make_delivery("e1")])
    queue.close()
    queue.close()
    assert "closed" in repr(queue)
    idempotency.finish([("k", "fp", 1)], now=T0, expires_at=T0 + LEASE)  # still open
    with pytest.raises(StoreError, match="closed"):
        queue.stats()
    idempotency.close()
    with pytest.raises(StoreError, match="closed"):
        idempotency.get("k", now=T0)


def test_separate_connections_see_each_other_and_claim_disjointly(db: Path) -> None:
    """Several store objects (own connections, like several processes) on one
    file: writes are visible to all, concurrent claims never overlap."""
    stores = [SQLiteQueueStore(db) for _ in range(3)]
    stores[0].enqueue([make_delivery(f"e{i}") for i in range(150)])
    assert stores[2].stats().total == 150
    seen: list[list[str]] = [[] for _ in stores]
    barrier = threading.Barrier(len(stores))

    def work(index: int) -> None:
        barrier.wait()
        while got := stores[index].claim(
            now=T0, limit=5, lease_until=T0 + LEASE, worker=f"w{index}"
        ):
            seen[index].extend(d.id for d in got)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in seen for i in ids]
    assert len(everything) == 150
    assert len(set(everything)) == 150
    for store in stores:
        store.close()


def test_a_forked_child_opens_its_own_connection(queue: SQLiteQueueStore) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork() on this platform")
    queue.enqueue([make_delivery("parent")])
    pid = os.fork()
    if pid == 0:  # the child: use the inherited store object, then leave at once
        code = 1
        try:
            queue.enqueue([make_delivery("child")])
            code = 0 if queue.stats().total == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert {d.event.id for d in queue.list()} == {"parent", "child"}


# -- open_stores URLs ------------------------------------------------------------


def test_open_stores_relative_and_absolute_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    queue, idempotency = open_stores("sqlite:///relative.db")
    assert (tmp_path / "relative.db").exists()
    queue.close()
    idempotency.close()
    absolute = tmp_path / "sub dir" / "absolute.db"
    absolute.parent.mkdir()
    assert str(absolute).startswith("/")
    queue, idempotency = open_stores(f"sqlite:///{absolute}", synchronous="NORMAL")
    assert absolute.exists()
    assert isinstance(queue, SQLiteQueueStore)
    assert queue.synchronous == "NORMAL"
    queue.close()
    idempotency.close()
    assert sqlite_path("sqlite:////var/lib/sync.db") == "/var/lib/sync.db"
    assert sqlite_path("sqlite:///data/sync.db") == "data/sync.db"
    assert sqlite_path("sqlite:///my%20sync.db") == "my sync.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://host/sync.db", "a host is not allowed"),
        ("sqlite:///", "names no file"),
        ("sqlite:///data/", "names no file"),
        ("sqlite:///:memory:", "names no file"),
        ("sqlite:///sync.db?mode=ro", "query parameters are not supported"),
        ("sqlite:sync.db", "invalid store URL"),
        ("mysql://localhost/db", "unsupported store URL scheme 'mysql'"),
        ("sync.db", "invalid store URL"),
    ],
)
def test_open_stores_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        open_stores(url)
    assert url in str(info.value)


# -- the transactional outbox ------------------------------------------------------


def test_enqueue_joins_the_callers_transaction(db: Path, queue: SQLiteQueueStore) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    conn.commit()

    def rolled_back() -> None:
        with conn:
            conn.execute("INSERT INTO orders VALUES ('o1')")
            queue.enqueue([make_delivery("o1")], cursor=("shop", "1"), transaction=conn)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        rolled_back()
    assert queue.stats().total == 0
    assert queue.get_cursor("shop") is None
    assert conn.execute("SELECT COUNT(*) FROM orders").fetchone() == (0,)

    with conn:
        conn.execute("INSERT INTO orders VALUES ('o2')")
        (inserted,) = queue.enqueue([make_delivery("o2")], transaction=conn)
        assert queue.get(inserted.id) is None  # not committed yet: invisible to others
    assert queue.get(inserted.id) == inserted
    assert conn.execute("SELECT id FROM orders").fetchall() == [("o2",)]
    conn.close()


def test_enqueue_refuses_a_transaction_it_cannot_join(
    db: Path, tmp_path: Path, queue: SQLiteQueueStore
) -> None:
    with pytest.raises(TypeError, match="'dict'"):
        queue.enqueue([make_delivery("e1")], transaction={})
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("BEGIN")
    with pytest.raises(ValueError, match=r"other\.db"):
        queue.enqueue([make_delivery("e1")], transaction=other)
    other.close()
    idle = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(ValueError, match="no open transaction"):
        queue.enqueue([make_delivery("e1")], transaction=idle)
    idle.close()
    assert queue.stats().total == 0


def test_the_dispatcher_passes_the_transaction_through(db: Path) -> None:
    queue, idempotency = open_stores(f"sqlite:///{db}")
    dispatcher = Dispatcher(queue, idempotency, [RecordingDestination("pos")])
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT)")
        conn.execute("INSERT INTO orders VALUES ('o1')")
        dispatcher.submit(Event("o1", "order.paid", {}), transaction=conn)
    assert queue.stats().total == 1
    conn.close()
    queue.close()
    idempotency.close()


# -- failures: clear errors that name the file, nothing committed is lost -------


def _assert_names_the_file(error: StoreError, db: Path) -> None:
    assert str(db) in str(error)
    assert isinstance(error.__cause__, sqlite3.Error)


def test_a_locked_database_is_a_clear_error_and_loses_nothing(db: Path) -> None:
    queue = SQLiteQueueStore(db, busy_timeout=0.05)
    queue.enqueue([make_delivery("committed")])
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match=r"locked.*busy_timeout=0.05s.*wrote nothing") as info:
        queue.enqueue([make_delivery("blocked")])
    _assert_names_the_file(info.value, db)
    with pytest.raises(StoreError, match="locked"):
        queue.claim(now=T0, limit=1, lease_until=T0 + LEASE, worker="w1")
    assert [d.event.id for d in queue.list()] == ["committed"]  # reads never wait (WAL)
    blocker.execute("ROLLBACK")
    blocker.close()
    queue.enqueue([make_delivery("later")])
    assert [d.event.id for d in queue.list()] == ["committed", "later"]
    queue.close()


def _chattr(flag: str, path: Path) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None or os.geteuid() != 0:
        return False
    return (
        subprocess.run([chattr, flag, str(path)], capture_output=True, check=False).returncode == 0
    )


def test_a_read_only_database_is_a_clear_error_and_loses_nothing(db: Path) -> None:
    queue = SQLiteQueueStore(db)
    queue.enqueue([make_delivery("committed")])
    queue.close()
    if os.geteuid() == 0:  # root ignores permission bits: make the file immutable instead
        if not _chattr("+i", db):
            pytest.skip("cannot make the file read-only (chattr +i failed)")
    else:
        db.chmod(0o444)
    try:
        queue = SQLiteQueueStore(db)  # opening for reading works
        assert [d.event.id for d in queue.list()] == ["committed"]
        with pytest.raises(StoreError, match=r"read-only.*wrote nothing") as info:
            queue.enqueue([make_delivery("refused")])
        _assert_names_the_file(info.value, db)
        queue.close()
    finally:
        if os.geteuid() == 0:
            _chattr("-i", db)
        else:
            db.chmod(0o644)
    queue = SQLiteQueueStore(db)
    assert [d.event.id for d in queue.list()] == ["committed"]
    queue.enqueue([make_delivery("accepted")])
    assert queue.stats().total == 2
    queue.close()


FULL_DISK_SCRIPT = """
import json, os, sys
from resilient_sync import StoreError
from resilient_sync.stores import SQLiteQueueStore
from resilient_sync.testing.contract import make_delivery

directory = sys.argv[1]
filler = os.path.join(directory, "filler")
with open(filler, "wb") as f:
    f.write(b"x" * 256 * 1024)
path = os.path.join(directory, "sync.db")
queue = SQLiteQueueStore(path)
committed, error = 0, None
for batch in range(10_000):
    try:
        batch_of = [make_delivery(f"e{batch}-{i}", payload={"pad": "y" * 400}) for i in range(20)]
        queue.enqueue(batch_of)
    except StoreError as exc:
        error = str(exc)
        break
    committed += 20
readable = queue.stats().total
os.remove(filler)
queue.enqueue([make_delivery("after-freeing-space")])
queue.close()
queue = SQLiteQueueStore(path)
print(json.dumps({"committed": committed, "error": error, "path": path,
                  "readable": readable, "after": queue.stats().total}))
"""


def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    """A real full file system: a 2 MiB tmpfs in a private mount namespace."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux, root and unshare to mount a small tmpfs")
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FULL_DISK_SCRIPT)
    command = (
        f"mount -t tmpfs -o size=2m tmpfs '{mountpoint}' && "
        f"exec '{sys.executable}' '{script}' '{mountpoint}'"
    )
    probe = subprocess.run(
        [unshare, "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{mountpoint}'"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
    result = subprocess.run(
        [unshare, "-m", "sh", "-c", command], capture_output=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["committed"] > 0
    assert report["error"] is not None
    assert report["path"] in report["error"]
    assert "disk is full" in report["error"]
    assert report["readable"] == report["committed"]
    assert report["after"] == report["committed"] + 1


def _corrupt_every_page_but_the_schema(db: Path) -> None:
    """Overwrite every page except those of the schema and of the migrations
    table, so the file still opens but every store table is garbage."""
    conn = sqlite3.connect(db)
    try:
        keep = {
            page
            for (page,) in conn.execute(
                "SELECT pageno FROM dbstat "
                "WHERE name IN ('sqlite_schema', 'sqlite_master', 'resilient_sync_migrations')"
            )
        }
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find the schema's pages")
    finally:
        conn.close()
    data = bytearray(db.read_bytes())
    size = int.from_bytes(data[16:18], "big") or 65536
    for number in range(1, len(data) // size + 1):
        if number not in keep:
            data[(number - 1) * size : number * size] = b"\xa5" * size
    db.write_bytes(bytes(data))


def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(db: Path) -> None:
    garbage = b"this is not a database, it is a shopping list\n" * 200
    db.write_bytes(garbage)
    with pytest.raises(StoreError, match="corrupted or is not a SQLite database") as info:
        SQLiteQueueStore(db)
    _assert_names_the_file(info.value, db)
    with pytest.raises(StoreError, match="corrupted"):
        open_stores(f"sqlite:///{db}")
    assert db.read_bytes() == garbage


QUEUE_CALLS: list[tuple[str, Callable[[QueueStore], Any]]] = [
    ("enqueue", lambda s: s.enqueue([make_delivery("new")])),
    ("claim", lambda s: s.claim(now=T0, limit=5, lease_until=T0 + LEASE, worker="w")),
    ("complete", lambda s: s.complete([])),  # nothing to do: must not even fail
    ("get", lambda s: s.get("x")),
    ("list", lambda s: s.list()),
    ("attempts", lambda s: s.attempts("x")),
    ("audit", lambda s: s.audit()),
    ("stats", lambda s: s.stats()),
    ("next_due", lambda s: s.next_due()),
    ("get_cursor", lambda s: s.get_cursor("shop")),
    ("destinations", lambda s: s.destinations()),
    ("set_destination", lambda s: s.set_destination("pos", now=T0, paused=True)),
    (
        "transition",
        lambda s: s.transition(
            ["x"],
            from_status=[DeliveryStatus.NEEDS_ACTION],
            to_status=DeliveryStatus.PENDING,
            audit=Attempt(
                delivery_id=None,
                destination="",
                action="retry",
                actor="ops",
                started_at=T0,
                finished_at=T0,
            ),
            now=T0,
        ),
    ),
]
IDEMPOTENCY_CALLS: list[tuple[str, Callable[[IdempotencyStore], Any]]] = [
    ("begin", lambda s: s.begin([("k", "fp")], now=T0, lock_until=T0 + LEASE)),
    ("finish", lambda s: s.finish([("k", "fp", 1)], now=T0, expires_at=T0 + LEASE)),
    ("release", lambda s: s.release(["k"])),
    ("get", lambda s: s.get("k", now=T0)),
]


def test_no_sqlite3_error_slips_through_a_corrupted_file(db: Path) -> None:
    """Every method of both stores raises StoreError naming the file (never a
    bare sqlite3 error) when the pages under it are damaged."""
    queue, idempotency = open_stores(f"sqlite:///{db}")
    queue.enqueue([make_delivery(f"e{i}", payload={"pad": "z" * 300}) for i in range(200)])
    idempotency.finish([(f"k{i}", "fp", i) for i in range(200)], now=T0, expires_at=T0 + LEASE)
    queue.close()
    idempotency.close()
    _corrupt_every_page_but_the_schema(db)
    before = db.read_bytes()
    queue, idempotency = open_stores(f"sqlite:///{db}")
    failures = []
    for name, call in QUEUE_CALLS:
        if name == "complete":
            assert call(queue) == []
            continue
        with pytest.raises(StoreError) as info:
            call(queue)
        _assert_names_the_file(info.value, db)
        failures.append(name)
    for name, call in IDEMPOTENCY_CALLS:
        with pytest.raises(StoreError) as info:
            call(idempotency)
        _assert_names_the_file(info.value, db)
        failures.append(name)
    assert "corrupted" in str(info.value)
    queue.close()
    idempotency.close()
    assert db.read_bytes() == before
    assert len(failures) == len(QUEUE_CALLS) - 1 + len(IDEMPOTENCY_CALLS)


def test_a_failed_transaction_rolls_back_and_the_store_keeps_working(
    queue: SQLiteQueueStore,
) -> None:
    """A write that fails half-way (here: a result that is not JSON) changes
    nothing, and the connection is usable afterwards."""
    queue.enqueue([make_delivery("e1"), make_delivery("e2")])
    one, two = queue.claim(now=T0, limit=2, lease_until=T0 + LEASE, worker="w")
    good = Completion(
        delivery_id=one.id,
        lease_token=one.lease_token,
        status=DeliveryStatus.SUCCEEDED,
        finished_at=T0,
        result={"ok": True},
    )
    bad = Completion(
        delivery_id=two.id,
        lease_token=two.lease_token,
        status=DeliveryStatus.SUCCEEDED,
        finished_at=T0,
        result={1, 2},
    )
    with pytest.raises(TypeError, match="set"):
        queue.complete([good, bad])
    assert queue.stats().by_status == {DeliveryStatus.IN_FLIGHT: 2}
    assert queue.complete([good]) == [True]
    assert json.loads(json.dumps(queue.get(one.id).result)) == {"ok": True}  # type: ignore[union-attr]


def test_leases_from_the_dispatcher_clock_are_exact(db: Path) -> None:
    """Times round-trip to the microsecond (stored as integers)."""
    queue = SQLiteQueueStore(db)
    queue.enqueue([make_delivery("e1")])
    until = T0 + timedelta(seconds=30, microseconds=123457)
    (claimed,) = queue.claim(now=T0, limit=1, lease_until=until, worker="w")
    stored = queue.get(claimed.id)
    assert stored is not None
    assert stored.lease_expires_at == until
    assert queue.next_due() == until
    queue.close()


def test_idempotency_locks_skip_the_fsync_but_never_weaken_the_connection(db: Path) -> None:
    """begin/release commit at NORMAL; the connection is back at FULL after
    them, also when they fail."""
    queue, idempotency = open_stores(f"sqlite:///{db}", busy_timeout=0.05)
    idempotency.begin([("k1", "fp")], now=T0, lock_until=T0 + LEASE)
    idempotency.release(["k1"])
    assert _pragma(idempotency, "synchronous") == 2
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="locked"):
        idempotency.begin([("k2", "fp")], now=T0, lock_until=T0 + LEASE)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert _pragma(idempotency, "synchronous") == 2
    assert _pragma(queue, "synchronous") == 2  # the same connection
    idempotency.finish([("k2", "fp", None)], now=T0, expires_at=T0 + LEASE)
    record = idempotency.get("k2", now=T0)
    assert record is not None
    queue.close()
    idempotency.close()


def test_the_async_dispatcher_drives_the_sqlite_stores(db: Path) -> None:
    """Store calls from asyncio.to_thread (several at once) on one connection."""

    async def main() -> None:
        queue, idempotency = open_stores(f"sqlite:///{db}")
        pos = RecordingDestination("pos")
        dispatcher = AsyncDispatcher(queue, idempotency, [pos], concurrency=8, batch_size=16)
        await dispatcher.submit_many([Event(f"e{i}", "t", {"i": i}) for i in range(60)])
        report = await dispatcher.run_until_idle()
        assert report.succeeded == 60
        assert len(pos.applied) == 60
        assert queue.stats().by_status == {DeliveryStatus.SUCCEEDED: 60}
        queue.close()
        idempotency.close()

    asyncio.run(main())


def test_a_batch_takes_two_commits_when_the_stores_share_the_file(tmp_path: Path) -> None:
    """claim + idempotency locks in one commit (no fsync), keys + outcomes in one
    durable commit: the stores of one file join one transaction."""
    queue, idempotency = open_stores(f"sqlite:///{tmp_path / 'sync.db'}")
    dispatcher = Dispatcher(queue, idempotency, [RecordingDestination("pos")])
    dispatcher.submit_many([Event(f"e{i}", "t", {}) for i in range(10)])
    statements: list[str] = []
    conn = queue._db._conn  # type: ignore[attr-defined]
    conn.set_trace_callback(statements.append)
    assert dispatcher.run_once().succeeded == 10
    conn.set_trace_callback(None)
    commits = [s for s in statements if s.strip().upper() == "COMMIT"]
    assert len(commits) == 2, statements
    queue.close()
    idempotency.close()


def test_a_claim_whose_keys_cannot_be_taken_is_undone_with_them(tmp_path: Path) -> None:
    queue, idempotency = open_stores(f"sqlite:///{tmp_path / 'sync.db'}")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("idempotency store unreachable")

    dispatcher = Dispatcher(queue, idempotency, [RecordingDestination("pos")])
    dispatcher.submit(Event("e1", "t", {}))
    idempotency.begin = broken  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        dispatcher.run_once()
    (delivery,) = queue.list().items
    assert (delivery.status, delivery.attempts, delivery.lease_token) == (
        DeliveryStatus.PENDING,
        0,
        0,
    )
    queue.close()
    idempotency.close()


def test_none_is_bound_through_one_adapter_and_an_applications_own_is_kept(db: Path) -> None:
    """The store registers a ``None -> None`` adapter with the sqlite3 module
    (without one, every ``None`` bound costs two failed attribute look-ups
    and a formatted ``AttributeError``): empty columns are still NULL, the
    application's own sqlite3 use binds None as before, and an adapter for
    None the application registered first is kept. In a subprocess: the
    registry belongs to the process."""
    script = textwrap.dedent(
        f"""
        import sqlite3, sys
        from resilient_sync.stores import SQLiteQueueStore
        from resilient_sync.testing.contract import make_delivery

        key = (type(None), sqlite3.PrepareProtocol)
        if sys.argv[1] == "theirs":
            def theirs(value):
                return None
            sqlite3.register_adapter(type(None), theirs)
        path = {str(db)!r} + "." + sys.argv[1]
        store = SQLiteQueueStore(path)
        (stored,) = store.enqueue([make_delivery("e1")])
        store.close()
        conn = sqlite3.connect(path)
        row = conn.execute(
            "SELECT typeof(last_error), typeof(result), typeof(lease_owner)"
            " FROM resilient_sync_deliveries"
        ).fetchone()
        assert row == ("null", "null", "null"), row
        conn.execute("CREATE TABLE mine (a)")
        conn.execute("INSERT INTO mine VALUES (?)", (None,))
        assert conn.execute("SELECT typeof(a) FROM mine").fetchone() == ("null",)
        adapter = sqlite3.adapters[key]
        print(adapter.__name__ if sys.argv[1] == "theirs" else adapter(None))
        """
    )
    ours = subprocess.run(
        [sys.executable, "-c", script, "ours"], capture_output=True, text=True, check=False
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip() == "None"
    theirs = subprocess.run(
        [sys.executable, "-c", script, "theirs"], capture_output=True, text=True, check=False
    )
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout.strip() == "theirs"

"""Regression tests for the hardening issue, store side: retention and trends
(item 6), lost replies on PostgreSQL (item 8), files the CLI must only read
(item 9), and the smaller store findings (item 10)."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from resilient_sync import (
    DeliveryStatus,
    Dispatcher,
    Event,
    IdempotencyStore,
    MappingError,
    Operator,
    QueueStore,
    StoreError,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, open_stores
from resilient_sync.testing import FakeClock, RecordingDestination

SUCCEEDED = DeliveryStatus.SUCCEEDED
PENDING = DeliveryStatus.PENDING
IN_FLIGHT = DeliveryStatus.IN_FLIGHT
NEEDS_ACTION = DeliveryStatus.NEEDS_ACTION

Pair = tuple[QueueStore, IdempotencyStore]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    if request.param == "memory":
        pair: Pair = (MemoryQueueStore(), MemoryIdempotencyStore())
    elif request.param == "sqlite":
        pair = open_stores(f"sqlite:///{tmp_path / 'stores.db'}")
    else:
        from pg_support import drop_schema, new_schema_name, require_postgres

        dsn, schema = require_postgres(), new_schema_name("rs_hards")
        request.addfinalizer(lambda: drop_schema(schema))  # noqa: PT021 - also if opening fails
        pair = open_stores(f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}")
    yield pair
    pair[0].close()
    pair[1].close()


class Sometimes:
    name = "pos"

    def deliver(self, event: Event, context: Any) -> Any:
        if event.payload.get("sku") == "bad":
            raise MappingError("unknown SKU")
        return {"id": event.id}


# -- 6. retention, trends counted by the store ----------------------------------------


def test_purge_removes_old_finished_deliveries_keys_and_audit_in_batches(stores: Pair) -> None:
    queue, idempotency = stores
    clock = FakeClock()
    dispatcher = Dispatcher(queue, idempotency, [Sometimes()], clock=clock, idempotency_ttl=86400)
    dispatcher.submit_many([Event(f"old-{i}", "t", {}) for i in range(25)])
    dispatcher.submit(Event("bad", "t", {"sku": "bad"}))
    dispatcher.run_until_idle()
    clock.advance(timedelta(days=31))
    dispatcher.submit(Event("new", "t", {}))
    dispatcher.run_until_idle()
    op = Operator(queue, clock=clock)
    dry = op.purge(timedelta(days=30), dry_run=True)
    assert (dry.deliveries, dry.dry_run) == (25, True)
    assert queue.stats().total == 27
    progress: list[int] = []
    report = op.purge(
        timedelta(days=30), idempotency=idempotency, batch=10, actor="ada", progress=progress.append
    )
    assert report.deliveries == 25
    assert report.idempotency_keys == 25  # expired after a day
    assert progress == [10, 20, 25]
    left = sorted(d.event.id for d in queue.list().items)
    assert left == ["bad", "new"]  # needs-action and recent ones stay
    assert queue.stats().by_destination["pos"] == {
        DeliveryStatus.SUCCEEDED: 1,
        DeliveryStatus.NEEDS_ACTION: 1,
    }
    record = queue.audit(limit=1)[0]
    assert (record.action, record.actor) == ("purge", "ada")
    assert record.details["deliveries"] == 25
    assert op.purge(timedelta(days=30)).deliveries == 0


def test_error_trend_is_counted_by_the_store_not_loaded(stores: Pair) -> None:
    queue, idempotency = stores
    clock = FakeClock()
    dispatcher = Dispatcher(queue, idempotency, [Sometimes()], clock=clock)
    for hour in range(3):
        dispatcher.submit_many(
            [Event(f"h{hour}-{i}", "t", {"sku": "bad"}) for i in range(hour + 1)]
        )
        dispatcher.run_until_idle()
        clock.advance(timedelta(hours=1))

    class NoLoading:
        """The queue, but loading audit records is forbidden."""

        def __getattr__(self, name: str) -> Any:
            if name in ("audit", "attempts"):
                raise AssertionError(f"error_trend loaded records through {name}()")
            return getattr(queue, name)

    op = Operator(NoLoading(), clock=clock)  # type: ignore[arg-type]
    trend = op.error_trend(bucket=timedelta(hours=1), since=clock.now() - timedelta(hours=3))
    assert [b.total for b in trend] == [1, 2, 3, 0]
    assert all(set(b.counts) <= {MappingError.category} for b in trend)


# -- 8. lost replies on PostgreSQL -------------------------------------------------------


class LosesTheReply:
    """Wraps a psycopg cursor: the first time the named query runs, it commits
    and then the connection breaks before the reply is read."""

    def __init__(self, cursor: Any, query: str, armed: list[bool]) -> None:
        self._cursor = cursor
        self._query = query
        self._armed = armed

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        result = self._cursor.execute(query, params, **kwargs)
        if self._armed and self._armed[0] and query == self._query:
            import psycopg

            self._armed[0] = False
            self._cursor.connection.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def test_a_lone_surrogate_handed_to_a_sql_store_is_refused_by_name(stores: Pair) -> None:
    """An audit text with a lone surrogate, passed to a store directly (the
    dispatcher and the operator API replace it first): the SQL stores say
    which character, as a ValueError, and write nothing (they raised the
    driver's UnicodeEncodeError). The memory store holds any str."""
    from datetime import datetime, timezone

    from resilient_sync import Attempt

    queue, idem = stores
    if isinstance(queue, MemoryQueueStore):
        pytest.skip("the memory store holds any str")
    dispatcher = Dispatcher(queue, idem, [RecordingDestination("pos")])
    dispatcher.submit(Event("e1", "t", {}))
    (row,) = queue.list().items
    now = datetime.now(timezone.utc)
    before = queue.attempts(row.id)
    for field in ("reason", "actor"):
        text = {"reason": "fixed \ud800 by hand", "actor": "operator:\udfff"}[field]
        record = Attempt(
            delivery_id=row.id,
            destination="pos",
            action="edit",
            actor=text if field == "actor" else "operator:ada",
            started_at=now,
            finished_at=now,
            reason=text if field == "reason" else None,
        )
        move = {
            "from_status": [DeliveryStatus.PENDING],
            "to_status": DeliveryStatus.NEEDS_ACTION,
            "audit": record,
            "now": now,
        }
        code = re.escape("U+D800" if field == "reason" else "U+DFFF")
        with pytest.raises(ValueError, match=f"{code} \\(a lone surrogate\\).*nothing was written"):
            queue.transition([row.id], **move)
        with pytest.raises(ValueError, match=code):
            queue.add_audit([record])
    after = queue.get(row.id)
    assert after is not None
    assert after.status is DeliveryStatus.PENDING
    assert queue.attempts(row.id) == before


def test_a_claim_for_destinations_no_store_can_hold_finds_nothing(stores: Pair) -> None:
    """A worker's destination filter holding a NUL or a lone surrogate (which
    no destination name can hold), a 5 MB name, an ANSI escape or a token
    claims nothing, on every store alike, and leaves the queue as it was (a
    NUL reached PostgreSQL, which refused it as a StoreError)."""
    from resilient_sync.testing.contract import LEASE, T0, make_delivery

    queue, _ = stores
    queue.enqueue([make_delivery("e1")])
    lease = {"now": T0, "lease_until": T0 + LEASE, "worker": "w"}
    hostile = ["\udc80", "a\x00b", "x" * 5_000_000, "\x1b[31mpos", "Bearer sk_live_abc"]
    for name in hostile:
        assert queue.claim(limit=5, destinations=[name], **lease) == [], repr(name[:12])
    assert queue.claim(limit=5, destinations=hostile, **lease) == []
    assert [d.event.id for d in queue.claim(limit=5, destinations=[*hostile, "pos"], **lease)] == [
        "e1"
    ]


@pytest.mark.parametrize(
    "key",
    ["cust\x00-1", "cust-\ud800", "\x1b[31mcust\x1b[0m", "c" * 5_000_000],
    ids=["nul", "lone-surrogate", "ansi-escape", "5MB"],
)
@pytest.mark.parametrize("how", ["corrected by complete", "edited by transition"])
def test_a_replacing_event_with_a_hostile_ordering_key_is_refused_by_every_store(
    stores: Pair, key: str, how: str
) -> None:
    """A corrected or edited event replaces the stored one, and its ordering
    key steers the ordering of its key (the key_waits flags, the key locks):
    handed to a store directly, it meets the same gate as an enqueue, and
    nothing is written. The key's deliveries go on in order."""
    from pg_support import operator_audit
    from resilient_sync import InvalidEventError
    from resilient_sync.stores import Completion
    from resilient_sync.testing.contract import LEASE, T0, make_delivery

    queue, _ = stores
    queue.enqueue([make_delivery("e1", ordering_key="A"), make_delivery("e2", ordering_key="A")])
    (held,) = queue.claim(now=T0, limit=5, lease_until=T0 + LEASE, worker="w")
    hostile = Event("e1", "customer.created", {"id": "e1"}, ordering_key=key)
    waiting = next(d for d in queue.list().items if d.event.id == "e2")
    corrected = Completion(
        delivery_id=held.id,
        lease_token=held.lease_token,
        status=DeliveryStatus.RETRY_SCHEDULED,
        finished_at=T0,
        next_attempt_at=T0,
        event=hostile,
    )
    replace = {
        "corrected by complete": lambda: queue.complete([corrected]),
        "edited by transition": lambda: queue.transition(
            [waiting.id],
            from_status=[DeliveryStatus.PENDING],
            to_status=DeliveryStatus.PENDING,
            audit=operator_audit("edit"),
            now=T0,
            event=hostile,
        ),
    }[how]
    with pytest.raises(InvalidEventError, match=r"ordering_key.*nothing was written") as info:
        replace()
    assert info.value.field == "ordering_key"
    assert "\x1b" not in str(info.value)
    assert len(str(info.value)) < 1000
    rows = [(d.event.id, d.status, d.event.ordering_key) for d in queue.list().items]
    assert rows == [("e1", DeliveryStatus.IN_FLIGHT, "A"), ("e2", DeliveryStatus.PENDING, "A")]
    done = Completion(
        delivery_id=held.id,
        lease_token=held.lease_token,
        status=DeliveryStatus.SUCCEEDED,
        finished_at=T0,
    )
    assert queue.complete([done]) == [True]
    claimed = queue.claim(now=T0, limit=5, lease_until=T0 + LEASE, worker="w")
    assert [d.event.id for d in claimed] == ["e2"]


def test_text_the_client_encoding_lacks_is_not_called_a_surrogate() -> None:
    """The store's encoding error names the character and, for a LATIN1
    client encoding, says so rather than blaming a lone surrogate."""
    from resilient_sync.stores._common import unencodable

    try:
        "order 中".encode("latin-1")
    except UnicodeEncodeError as exc:
        error = unencodable("PostgreSQL queue store", "enqueue deliveries", exc)
    assert "U+4E2D" in str(error)
    assert "client encoding (latin-1)" in str(error)
    assert "surrogate" not in str(error)
    try:
        "fixed \ud800".encode("utf-8")
    except UnicodeEncodeError as exc:
        error = unencodable("PostgreSQL queue store", "move deliveries", exc)
    assert "U+D800 (a lone surrogate)" in str(error)


@pytest.mark.postgres
def test_a_committed_complete_whose_reply_is_lost_counts_as_applied() -> None:
    from pg_support import drop_schema, new_schema_name, require_postgres
    from resilient_sync.stores._postgres import PostgresIdempotencyStore, PostgresQueueStore

    dsn, schema = require_postgres(), new_schema_name("rs_lost")
    armed = [False]

    class Flaky(PostgresQueueStore):
        def _cursor(self, conn: Any) -> Any:
            return LosesTheReply(super()._cursor(conn), self._queries["complete"], armed)

    queue = Flaky(dsn, schema=schema)
    idempotency = PostgresIdempotencyStore(dsn, schema=schema)
    try:
        escalated: list[str] = []
        dispatcher = Dispatcher(
            queue,
            idempotency,
            [Sometimes()],
            clock=FakeClock(),
            on_needs_action=lambda d: escalated.append(d.event.id),
        )
        dispatcher.submit_many([Event("ok", "t", {}), Event("bad", "t", {"sku": "bad"})])
        armed[0] = True
        report = dispatcher.run_once()
        assert armed == [False]  # the fault happened
        assert (report.succeeded, report.needs_action, report.lost_lease) == (1, 1, 0)
        assert escalated == ["bad"]
    finally:
        queue.close()
        idempotency.close()
        drop_schema(schema)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("key", "statement"),
    [(None, "enqueue_and_notify"), ("customer-1", "enqueue")],
    ids=["one statement", "keyed, pipelined"],
)
def test_a_committed_enqueue_whose_reply_is_lost_is_reported_as_inserted(
    key: str | None, statement: str
) -> None:
    """Without an ordering key the enqueue is one statement, committed when
    the reply is lost; with one, a pipelined transaction that the lost
    connection ends before its commit. Either way the retry reports the
    event inserted, once."""
    from pg_support import drop_schema, new_schema_name, require_postgres
    from resilient_sync import Producer
    from resilient_sync.stores._postgres import PostgresQueueStore

    dsn, schema = require_postgres(), new_schema_name("rs_lost")
    armed = [False]

    class Flaky(PostgresQueueStore):
        def _cursor(self, conn: Any) -> Any:
            return LosesTheReply(super()._cursor(conn), self._queries[statement], armed)

    queue = Flaky(dsn, schema=schema)
    try:
        armed[0] = True
        result = Producer(queue, ["pos"]).submit(Event("e1", "t", {}, ordering_key=key))
        assert armed == [False]
        assert (len(result), result.skipped) == (1, 0)
        assert queue.stats().total == 1
    finally:
        queue.close()
        drop_schema(schema)


@pytest.mark.postgres
def test_a_read_only_postgres_store_keeps_the_urls_own_options() -> None:
    """Read-only sessions add their setting to the URL's ``options`` instead of
    replacing them (a ``statement_timeout`` was lost; found by a red-team pass)."""
    from pg_support import drop_schema, new_schema_name, require_postgres
    from resilient_sync.stores._postgres import PostgresQueueStore

    dsn, schema = require_postgres(), new_schema_name("rs_ro")
    writer = PostgresQueueStore(dsn, schema=schema)
    sep = "&" if "?" in dsn else "?"
    reader = PostgresQueueStore(
        f"{dsn}{sep}options=-c%20statement_timeout%3D1234", schema=schema, read_only=True
    )
    try:
        with reader.pool.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert reader.stats().total == 0
    finally:
        reader.close()
        writer.close()
        drop_schema(schema)


# -- 9. files the CLI only reads ------------------------------------------------------


def test_a_read_only_open_never_creates_migrates_or_writes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="no resilient_sync queue"):
        open_stores(f"sqlite:///{empty}", read_only=True)
    assert empty.stat().st_size == 0
    assert not Path(f"{empty}-wal").exists()

    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    before = other.read_bytes()
    with pytest.raises(StoreError, match="no resilient_sync queue"):
        open_stores(f"sqlite:///{other}", read_only=True)
    assert other.read_bytes() == before

    with pytest.raises(StoreError, match="no such file"):
        open_stores(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)
    assert not (tmp_path / "missing.db").exists()


def test_a_read_only_open_reads_a_read_only_file(tmp_path: Path) -> None:
    db = tmp_path / "sync.db"
    queue, idem = open_stores(f"sqlite:///{db}")
    Dispatcher(queue, idem, [RecordingDestination("pos")]).submit(Event("e1", "t", {}))
    queue.close()
    idem.close()
    for path in tmp_path.iterdir():
        path.chmod(0o444)
    try:
        reader, idem = open_stores(f"sqlite:///{db}", read_only=True)
        assert reader.stats().total == 1
        with pytest.raises(StoreError, match="read-only"):
            Dispatcher(reader, idem, [RecordingDestination("pos")]).submit(Event("e2", "t", {}))
        reader.close()
        idem.close()
    finally:
        for path in tmp_path.iterdir():
            path.chmod(0o644)


def test_new_queue_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        queue, idem = open_stores(f"sqlite:///{tmp_path / 'sync.db'}")
        Dispatcher(queue, idem, [RecordingDestination("pos")]).submit(Event("e1", "t", {}))
        queue.close()
        idem.close()
    finally:
        os.umask(old)
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


@pytest.mark.postgres
def test_a_read_only_open_never_creates_a_postgres_schema() -> None:
    from pg_support import admin_connection, new_schema_name, require_postgres

    dsn, schema = require_postgres(), new_schema_name("rs_typo")
    with pytest.raises(StoreError, match="no resilient_sync queue"):
        open_stores(f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}", read_only=True)
    with admin_connection() as conn:
        row = conn.execute("SELECT to_regnamespace(%s)", [schema]).fetchone()
    assert row == (None,)


# -- 10. smaller findings ---------------------------------------------------------------


def test_a_submit_after_the_sqlite_file_was_deleted_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "sync.db"
    queue, idem = open_stores(f"sqlite:///{db}")
    dispatcher = Dispatcher(queue, idem, [RecordingDestination("pos")])
    dispatcher.submit(Event("e1", "t", {}))
    for path in tmp_path.iterdir():
        path.unlink()
    with pytest.raises(StoreError, match="deleted or replaced"):
        dispatcher.submit(Event("e2", "t", {}))
    queue.close()
    idem.close()


@pytest.mark.postgres
def test_a_search_path_in_the_url_selects_the_schema_or_is_refused() -> None:
    from pg_support import drop_schema, new_schema_name, require_postgres

    dsn, schema = require_postgres(), new_schema_name("rs_path")
    sep = "&" if "?" in dsn else "?"
    try:
        # every spelling the server takes (found by a red-team pass: the last
        # two were ignored, and the default schema was used)
        for options in (
            f"-c%20search_path%3D{schema}",
            f"--search_path%3D{schema}",
            f"-c%20SEARCH_PATH%3D{schema}",
            f"--search-path%3D{schema}",
        ):
            queue, idem = open_stores(f"{dsn}{sep}options={options}")
            assert queue.schema == schema, options  # type: ignore[attr-defined]
            queue.close()
            idem.close()
        with pytest.raises(ValueError, match="invalid schema name"):
            open_stores(f"{dsn}{sep}schema={schema}%0A")
        with pytest.raises(ValueError, match=r"\?schema="):
            open_stores(f"{dsn}{sep}search_path={schema},public")
    finally:
        drop_schema(schema)


@pytest.mark.postgres
def test_the_other_url_parameters_reach_the_server_as_written() -> None:
    """Beside ``?schema=`` (or a search_path), the URL's other parameters are
    passed on as libpq reads them: ``%20`` is a space and ``+`` a plus sign.
    They were decoded and re-encoded as a form, so ``options=-c%20x%3D1``
    reached the server as the setting "+x" (every connection refused)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    from pg_support import drop_schema, new_schema_name, require_postgres

    dsn, schema = require_postgres(), new_schema_name("rs_opts")
    sep = "&" if "?" in dsn else "?"
    # the same server with an empty host part, as for a unix socket
    # ("postgresql:///db?host=/run/postgresql"): the "//" must survive
    parts = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if k != "dbname"}
    hostless = f"postgresql:///{conninfo_to_dict(dsn).get('dbname', '')}?" + "&".join(
        f"{k}={quote(v, safe='')}" for k, v in parts.items()
    )
    try:
        for base, where in (
            (f"{dsn}{sep}", f"schema={schema}&options=-c%20statement_timeout%3D4321"),
            (
                f"{dsn}{sep}",
                f"options=-c%20statement_timeout%3D4321%20-c%20search_path%3D{schema}",
            ),
            (f"{hostless}&", f"schema={schema}&options=-c%20statement_timeout%3D4321"),
        ):
            url = f"{base}{where}&application_name=shop+pos%2Fv1"
            queue, idem = open_stores(url)
            try:
                assert queue.schema == schema  # type: ignore[attr-defined]
                got = queue._run(  # type: ignore[attr-defined]
                    "read the settings",
                    lambda conn: conn.execute(
                        "SELECT current_setting('statement_timeout'), "
                        "current_setting('application_name')"
                    ).fetchone(),
                    atomic=False,
                )
                assert got == ("4321ms", "shop+pos/v1"), where
            finally:
                queue.close()
                idem.close()
    finally:
        drop_schema(schema)


def test_the_heartbeat_keeps_a_long_delivery_leased(tmp_path: Path) -> None:
    """A delivery that runs longer than its lease is not taken over meanwhile."""
    import threading
    import time

    db = f"sqlite:///{tmp_path / 'sync.db'}"
    started = threading.Event()
    calls: list[str] = []

    class Slow:
        name = "pos"

        def deliver(self, event: Event, context: Any) -> Any:
            calls.append(event.id)
            started.set()
            time.sleep(2.5)  # five times the lease
            return None

    q1, i1 = open_stores(db)
    q2, i2 = open_stores(db)
    slow = Dispatcher(q1, i1, [Slow()], lease=0.5)
    other = Dispatcher(q2, i2, [Slow()], lease=0.5)
    slow.submit(Event("e1", "t", {}))
    worker = threading.Thread(target=slow.run_once)
    worker.start()
    assert started.wait(5)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert other.run_once().claimed == 0  # never taken over
        time.sleep(0.1)
    worker.join(10)
    assert calls == ["e1"]
    assert q1.list().items[0].status is DeliveryStatus.SUCCEEDED
    for thing in (slow, other, q1, i1, q2, i2):
        thing.close()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_the_heartbeat_keeps_the_idempotency_key_locked_too(tmp_path: Path, store: str) -> None:
    """Two events sharing one idempotency key, the first slower than its lease:
    the second must wait for the key (then replay the first's result), never
    be sent while the first still runs (found by a red-team pass: the lock
    ended with the original lease while the delivery's lease was extended)."""
    import threading
    import time

    if store == "memory":
        q1: Any = MemoryQueueStore()
        i1: Any = MemoryIdempotencyStore()
        q2, i2 = q1, i1
    else:
        q1, i1 = open_stores(f"sqlite:///{tmp_path / 'sync.db'}")
        q2, i2 = open_stores(f"sqlite:///{tmp_path / 'sync.db'}")
    calls: list[tuple[float, str]] = []
    lock = threading.Lock()

    class Slow:
        name = "pos"

        def deliver(self, event: Event, context: Any) -> Any:
            with lock:
                calls.append((time.monotonic(), event.id))
            time.sleep(3.0)  # 2.5 times the lease (beats every 0.5 s)
            return {"ok": event.id}

    one = Dispatcher(q1, i1, [Slow()], lease=1.2, batch_size=1, poll_interval=0.05)
    two = Dispatcher(q2, i2, [Slow()], lease=1.2, batch_size=1, poll_interval=0.05)
    one.submit(Event("e1", "t", {"a": 1}, idempotency_key="K"))
    one.submit(Event("e2", "t", {"a": 1}, idempotency_key="K"))
    stop = threading.Event()
    workers = [threading.Thread(target=d.run_forever, args=(stop,)) for d in (one, two)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(d.status is DeliveryStatus.SUCCEEDED for d in q1.list().items):
            break
        time.sleep(0.05)
    stop.set()
    for w in workers:
        w.join(10)
    assert len(calls) == 1, calls  # the second event replayed the first's result
    results = {d.event.id: d.result for d in q1.list().items}
    assert results == {"e1": {"ok": calls[0][1]}, "e2": {"ok": calls[0][1]}}
    for thing in {id(x): x for x in (one, two, q1, i1, q2, i2)}.values():
        thing.close()


@pytest.mark.postgres
def test_leases_are_judged_by_the_database_clock_not_a_fast_worker_clock() -> None:
    from datetime import datetime, timezone

    from pg_support import drop_schema, new_schema_name, require_postgres
    from resilient_sync import SystemClock
    from resilient_sync._clock import DatabaseClock

    dsn, schema = require_postgres(), new_schema_name("rs_clock")
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"

    def ten_minutes_fast() -> datetime:
        return datetime.now(timezone.utc) + timedelta(minutes=10)

    class FastClock(SystemClock):
        def now(self) -> datetime:
            return ten_minutes_fast()

    queue, idem = open_stores(url)
    try:
        honest = Dispatcher(queue, idem, [RecordingDestination("pos")], lease=300)
        assert isinstance(honest.clock, DatabaseClock)  # the default on PostgreSQL
        honest.submit_many([Event(f"e{i}", "t", {}) for i in range(20)])
        now = honest.clock.now()
        until = now + timedelta(seconds=300)
        leased = queue.claim(now=now, limit=20, lease_until=until, worker="A")
        assert len(leased) == 20
        corrected = Dispatcher(
            queue,
            idem,
            [RecordingDestination("pos")],
            clock=DatabaseClock(queue.database_time, local=ten_minutes_fast),  # type: ignore[attr-defined]
        )
        assert corrected.run_once().claimed == 0  # the leases still run, by the server's clock
        # what the finding saw: judged by the fast worker's own clock, all 20 are taken over
        uncorrected = Dispatcher(queue, idem, [RecordingDestination("pos")], clock=FastClock())
        assert uncorrected.run_once().claimed == 20
    finally:
        queue.close()
        idem.close()
        drop_schema(schema)


def test_an_idle_sqlite_worker_wakes_within_milliseconds_of_a_submit_elsewhere(
    tmp_path: Path,
) -> None:
    """A submit from another process wakes the waiting worker (FIFO beside the file)."""
    import subprocess
    import sys
    import time

    db = tmp_path / "sync.db"
    queue, idem = open_stores(f"sqlite:///{db}")
    queue.wait_for_work(0.1)  # type: ignore[attr-defined]  # the first call starts listening
    script = (
        "import sys, time\n"
        "from resilient_sync import Event, Producer\n"
        "from resilient_sync.stores import open_stores\n"
        f"q, i = open_stores('sqlite:///{db}')\n"
        "time.sleep(0.5)\n"
        "Producer(q, ['pos']).submit(Event('e1', 't', {}))\n"
        "print(time.time(), flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        queue.wait_for_work(10)  # type: ignore[attr-defined]
        woke = time.time()
        waited = time.monotonic() - started
        out, _ = child.communicate(timeout=20)
    finally:
        child.kill()
    submitted = float(out.strip())
    assert waited < 5  # woken, not timed out
    assert woke - submitted < 0.2  # milliseconds in practice; generous for a busy machine
    assert queue.stats().total == 1
    queue.close()
    idem.close()
    assert list((tmp_path / "sync.db.wake").iterdir()) == []  # its FIFO is removed on close


def test_run_forever_stops_between_deliveries_and_hands_back_the_rest(tmp_path: Path) -> None:
    import threading

    stop = threading.Event()
    seen: list[str] = []

    class StopsAfterTwo:
        name = "pos"

        def deliver(self, event: Event, context: Any) -> Any:
            seen.append(event.id)
            if len(seen) == 2:
                stop.set()  # as a SIGTERM handler would, mid-batch
            return None

    queue, idem = open_stores(f"sqlite:///{tmp_path / 'sync.db'}")
    dispatcher = Dispatcher(queue, idem, [StopsAfterTwo()])
    dispatcher.submit_many([Event(f"e{i}", "t", {}) for i in range(10)])
    report = dispatcher.run_forever(stop)
    assert seen == ["e0", "e1"]
    assert (report.succeeded, report.released) == (2, 8)
    statuses = {d.event.id: d for d in queue.list().items}
    assert all(statuses[f"e{i}"].status is DeliveryStatus.PENDING for i in range(2, 10))
    assert all(statuses[f"e{i}"].attempts == 0 for i in range(2, 10))  # no budget spent
    queue.close()
    idem.close()


# --- found by a red-team pass of the SQLite store ------------------------------------------


def test_a_relative_path_survives_a_change_of_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon that detaches changes directory: the store keeps its file (it
    refused every submit as "deleted or replaced while open")."""
    from resilient_sync import Event, Producer

    monkeypatch.chdir(tmp_path)
    queue, idem = open_stores("sqlite:///sync.db")
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        Producer(queue, ["pos"]).submit(Event("e1", "t", {}))
        assert queue.stats().total == 1
        assert not (elsewhere / "sync.db").exists()
    finally:
        queue.close()
        idem.close()


class _InterruptedBegin:
    """A connection that raises KeyboardInterrupt right after ``BEGIN IMMEDIATE``
    succeeded, as Ctrl-C does when it lands while BEGIN waited for the lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        result = self.conn.execute(sql, *args)
        if self.armed and sql == "BEGIN IMMEDIATE":
            self.armed = False
            raise KeyboardInterrupt
        return result


def test_ctrl_c_while_a_claim_waits_for_the_lock_leaves_no_transaction_and_full_sync(
    tmp_path: Path,
) -> None:
    """The claim's commit runs at synchronous=NORMAL; an interrupt right after
    its BEGIN left the write lock held and NORMAL in place, so later submits
    returned without an fsync."""
    from resilient_sync import Event, Producer

    db = tmp_path / "sync.db"
    queue, idem = open_stores(f"sqlite:///{db}")
    try:
        Producer(queue, ["pos"]).submit(Event("e1", "t", {}))
        database = queue._db  # type: ignore[attr-defined]
        real = database._conn
        database._conn = _InterruptedBegin(real)
        now = FakeClock().now()
        with pytest.raises(KeyboardInterrupt):
            queue.claim(now=now, limit=10, lease_until=now + timedelta(minutes=5), worker="w")
        assert not real.in_transaction
        assert real.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        other = sqlite3.connect(db, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock is free
            other.execute("ROLLBACK")
        finally:
            other.close()
        Producer(queue, ["pos"]).submit(Event("e2", "t", {}))
        assert queue.stats().total == 2
    finally:
        queue.close()
        idem.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_wake_directory_writable_by_others_is_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another local user who made ``<file>.wake`` first could remove the
    workers' FIFOs or plant links: the worker polls instead, and says so once."""
    db = tmp_path / "sync.db"
    wake = tmp_path / "sync.db.wake"
    wake.mkdir()
    wake.chmod(0o777)
    queue, idem = open_stores(f"sqlite:///{db}")
    try:
        for _ in range(3):
            queue.wait_for_work(0.05)  # type: ignore[attr-defined]
        assert list(wake.iterdir()) == []  # no FIFO made there
        warnings = [r for r in caplog.records if "cannot listen for new work" in r.message]
        assert len(warnings) == 1
        assert "only it can write to" in warnings[0].getMessage()
        # polling still wakes on a submit, also one through this very store
        import threading
        import time

        from resilient_sync import Event, Producer

        threading.Timer(0.2, Producer(queue, ["pos"]).submit, [Event("e1", "t", {})]).start()
        started = time.monotonic()
        queue.wait_for_work(5)  # type: ignore[attr-defined]
        assert time.monotonic() - started < 2.5
    finally:
        queue.close()
        idem.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_wake_up_never_writes_through_a_link_or_into_a_plain_file(tmp_path: Path) -> None:
    from resilient_sync import Event, Producer

    db = tmp_path / "sync.db"
    queue, idem = open_stores(f"sqlite:///{db}")
    try:
        queue.wait_for_work(0.01)  # type: ignore[attr-defined]  # listening: the dir exists
        wake = tmp_path / "sync.db.wake"
        target = tmp_path / "settings.conf"
        target.write_text("secret settings")
        (wake / "planted-link").symlink_to(target)
        (wake / "planted-file").write_text("plain")
        Producer(queue, ["pos"]).submit(Event("e1", "t", {}))
        assert target.read_text() == "secret settings"
        assert (wake / "planted-file").read_text() == "plain"
        queue.wait_for_work(5)  # type: ignore[attr-defined]  # still woken by its own FIFO
    finally:
        queue.close()
        idem.close()


@pytest.mark.parametrize(
    "outcome",
    [
        "succeeded\x00",
        "succeeded\ud800",
        "\x1b[31msucceeded\x1b[0m",
        "s" * 5_000_000,
        "sk_live_" + "a" * 24,
    ],
    ids=["nul", "lone-surrogate", "ansi-escape", "5MB", "token"],
)
def test_an_audit_record_with_a_hostile_outcome_is_refused_by_every_store(
    stores: Pair, outcome: str
) -> None:
    """An audit record's outcome is stored as a status's value and read back
    as the status: anything else is refused before anything is written, and
    the error shows the value escaped, capped and with tokens redacted."""
    import attrs

    from resilient_sync.testing.contract import T0, _record, make_delivery

    queue, _ = stores
    (delivery,) = queue.enqueue([make_delivery("e1")])
    hostile = attrs.evolve(_record(delivery, T0), outcome=outcome)
    with pytest.raises(ValueError, match="outcome must be a DeliveryStatus") as info:
        queue.add_audit([_record(delivery, T0), hostile])
    message = str(info.value)
    for raw in ("\x1b", "\x00", "\ud800"):
        assert raw not in message
    assert len(message) < 400
    assert "a" * 24 not in message
    assert queue.audit() == []


def _malformed_calls(queue: Any, idempotency: Any) -> list[tuple[str, Any]]:
    """Calls a direct store caller could make with one malformed argument,
    each after valid parts of the same batch (found by a red-team pass: the
    memory store applied those parts, then raised; PostgreSQL took a key)."""
    import attrs

    from resilient_sync import ErrorCategory, ErrorInfo
    from resilient_sync._model import Completion
    from resilient_sync.testing.contract import LEASE, T0, _record, make_delivery

    first, second = queue.claim(now=T0, limit=2, lease_until=T0 + LEASE, worker="w")
    done = Completion(
        delivery_id=first.id, lease_token=first.lease_token, status=SUCCEEDED, finished_at=T0
    )
    record = _record(first, T0, outcome=SUCCEEDED)
    error = ErrorInfo(category=ErrorCategory.DATA_FORMAT, message="bad")
    return [
        ("cursor", lambda: queue.enqueue([make_delivery("n1")], cursor=("src",))),
        (
            "last_error",
            lambda: queue.enqueue(
                [
                    make_delivery("n2"),
                    attrs.evolve(make_delivery("n3"), status=NEEDS_ACTION, last_error="oops"),
                ]
            ),
        ),
        ("attempts", lambda: queue.enqueue([attrs.evolve(make_delivery("n4"), attempts="3")])),
        (
            "status",
            lambda: queue.enqueue(
                [attrs.evolve(make_delivery("n5"), status=ErrorCategory.TRANSIENT)]
            ),
        ),
        (
            "error",
            lambda: queue.complete(
                [
                    done,
                    attrs.evolve(
                        done,
                        delivery_id=second.id,
                        lease_token=second.lease_token,
                        status=NEEDS_ACTION,
                        error="oops",
                    ),
                ]
            ),
        ),
        (
            "category",
            lambda: queue.complete(
                [attrs.evolve(done, status=NEEDS_ACTION, error=attrs.evolve(error, category="x"))]
            ),
        ),
        ("IN_FLIGHT", lambda: queue.complete([attrs.evolve(done, status=IN_FLIGHT)])),
        ("status", lambda: queue.complete([attrs.evolve(done, status="succeeded")])),
        ("lease_token", lambda: queue.complete([attrs.evolve(done, lease_token="1")])),
        (
            "to_status",
            lambda: queue.transition(
                [first.id], from_status={IN_FLIGHT}, to_status="bogus", audit=record, now=T0
            ),
        ),
        (
            "IN_FLIGHT",
            lambda: queue.transition(
                [first.id], from_status={IN_FLIGHT}, to_status=IN_FLIGHT, audit=record, now=T0
            ),
        ),
        (
            "from_status",
            lambda: queue.transition(
                [first.id], from_status="in_flight", to_status=PENDING, audit=record, now=T0
            ),
        ),
        (
            "ids",
            lambda: queue.transition(
                first.id, from_status={IN_FLIGHT}, to_status=PENDING, audit=record, now=T0
            ),
        ),
        ("error", lambda: queue.add_audit([record, attrs.evolve(record, error="oops")])),
        ("details", lambda: queue.add_audit([attrs.evolve(record, details={"x": {1, 2}})])),
        (
            "leases",
            lambda: queue.extend_leases(
                [(first.id, first.lease_token), (first.id,)], until=T0 + 2 * LEASE
            ),
        ),
        ("paused", lambda: queue.set_destination("pos", now=T0, paused="no")),
        ("name", lambda: queue.set_destination(None, now=T0, paused=True)),
        ("limit", lambda: queue.claim(now=T0, limit=2.5, lease_until=T0 + LEASE, worker="w")),
        (
            "entries",
            lambda: idempotency.begin([("k1", "fp"), ("k2",)], now=T0, lock_until=T0 + LEASE),
        ),
        ("entries", lambda: idempotency.begin([(5, "fp")], now=T0, lock_until=T0 + LEASE)),
        (
            "entries",
            lambda: idempotency.finish([("k3", "fp", 1), None], now=T0, expires_at=T0 + LEASE),
        ),
        (
            "result",
            lambda: idempotency.finish(
                [("k4", "fp", 1), ("k5", "fp", {1, 2})], now=T0, expires_at=T0 + LEASE
            ),
        ),
        ("keys", lambda: idempotency.release("k1")),
        ("bucket", lambda: queue.error_counts(since=T0, until=T0 + LEASE, bucket=3600)),
        ("search", lambda: queue.list(search=5)),
        ("delivery_id", lambda: queue.get(5)),
    ]


def test_a_malformed_argument_is_refused_by_every_store_with_nothing_changed(
    stores: Pair,
) -> None:
    """One malformed argument (a wrong type, a status a claim cannot take
    back, a tuple of the wrong shape, a result that is not JSON) is refused
    with ``TypeError`` or ``ValueError`` naming it, on every store alike,
    and no part of the call is applied: no delivery, audit record,
    destination state or idempotency key changes."""
    from resilient_sync.testing.contract import T0, make_delivery

    queue, idempotency = stores
    queue.enqueue([make_delivery(f"e{n}") for n in range(3)])
    calls = _malformed_calls(queue, idempotency)
    keys = ("k1", "k2", "k3", "k4", "k5", "5")

    def state() -> Any:
        deliveries = sorted(queue.list(limit=100).items, key=lambda d: d.seq)
        held = [idempotency.get(key, now=T0) for key in keys]
        return deliveries, queue.audit(), queue.destinations(), queue.stats(), held

    before = state()
    for name, call in calls:
        with pytest.raises((TypeError, ValueError), match=name):
            call()
        assert state() == before, name


def test_statuses_are_read_alike_as_members_or_values(stores: Pair) -> None:
    """``list(status=...)`` and ``transition(from_status=...)`` take statuses
    as members or their values, in any collection, on every store (the
    memory store matched a set of values against nothing), and refuse one
    bare status or ``str``, whose letters a store would otherwise test."""
    from resilient_sync.testing.contract import LEASE, T0, _record, make_delivery

    queue, _ = stores
    (delivery,) = queue.enqueue([make_delivery("e1")])
    assert [d.id for d in queue.list(status={"pending"}).items] == [delivery.id]
    assert [d.id for d in queue.list(status=("pending", DeliveryStatus.IN_FLIGHT)).items] == [
        delivery.id
    ]
    for bare in ("pending", DeliveryStatus.PENDING):
        with pytest.raises(TypeError, match="status must be a collection"):
            queue.list(status=bare)
    assert [d.id for d in queue.list(category="data_format").items] == []
    with pytest.raises(TypeError, match="category"):
        queue.list(category="bogus")
    (claimed,) = queue.claim(now=T0, limit=1, lease_until=T0 + LEASE, worker="w")
    moved = queue.transition(
        [claimed.id],
        from_status={"in_flight"},
        to_status=PENDING,
        audit=_record(claimed, T0, action="retry"),
        now=T0,
    )
    assert moved == [claimed.id]


def test_batches_given_as_generators_are_read_once_and_applied(stores: Pair) -> None:
    """A batch handed in as a generator (ids, completions, key entries) is
    checked and applied whole: the check reads it once, into a list, and the
    store applies that list (a check that iterated the generator itself
    would leave the store nothing to apply)."""
    from resilient_sync._model import Completion
    from resilient_sync.testing.contract import LEASE, T0, _record, make_delivery

    queue, idempotency = stores
    queue.enqueue([make_delivery(f"e{n}") for n in range(3)])
    first, second, third = queue.claim(now=T0, limit=3, lease_until=T0 + LEASE, worker="w")
    records = idempotency.begin(
        ((key, "fp") for key in ("k1", "k2")), now=T0, lock_until=T0 + LEASE
    )
    assert [r.key for r in records] == ["k1", "k2"]
    idempotency.finish(((key, "fp", None) for key in ("k1",)), now=T0, expires_at=T0 + LEASE)
    idempotency.release(key for key in ("k2",))
    assert idempotency.get("k2", now=T0) is None
    assert idempotency.get("k1", now=T0) is not None
    done = (
        Completion(delivery_id=d.id, lease_token=d.lease_token, status=SUCCEEDED, finished_at=T0)
        for d in (first, second)
    )
    assert queue.complete(done) == [True, True]
    moved = queue.transition(
        (i for i in [third.id]),
        from_status=[IN_FLIGHT],
        to_status=PENDING,
        audit=_record(third, T0, action="retry"),
        now=T0,
    )
    assert moved == [third.id]
    assert queue.stats().by_status == {SUCCEEDED: 2, PENDING: 1}


@pytest.mark.parametrize(
    "hostile",
    ["\udc80", "a\x00b", "x" * 5_000_000, "\x1b[31mpos", "Bearer sk_live_abcdefghijklmnopqrstuvwx"],
    ids=["surrogate", "nul", "5mb", "ansi", "token"],
)
def test_a_refused_argument_is_shown_escaped_capped_and_redacted(
    stores: Pair, hostile: str
) -> None:
    """The errors of the stores' argument checks show the refused value
    through the one gate for outside text: no raw control character or lone
    surrogate, a few hundred characters at most, tokens redacted; and the
    call changes nothing."""
    import attrs

    from resilient_sync._model import Completion
    from resilient_sync.testing.contract import LEASE, T0, _record, make_delivery

    queue, idempotency = stores
    queue.enqueue([make_delivery("e1")])
    (claimed,) = queue.claim(now=T0, limit=1, lease_until=T0 + LEASE, worker="w")
    record = _record(claimed, T0, outcome=SUCCEEDED)
    calls = [
        lambda: queue.transition(
            [claimed.id], from_status=[hostile], to_status=PENDING, audit=record, now=T0
        ),
        lambda: queue.list(category=hostile),
        lambda: queue.set_destination("pos", now=T0, paused=hostile),
        lambda: queue.add_audit([attrs.evolve(record, details={hostile: {1, 2}})]),
        lambda: queue.add_audit([attrs.evolve(record, error=hostile)]),
        lambda: queue.complete(
            [Completion(delivery_id=hostile, lease_token="1", status=SUCCEEDED, finished_at=T0)]
        ),
        lambda: queue.enqueue([attrs.evolve(make_delivery("e2"), status=hostile)]),
        lambda: idempotency.finish([(hostile, "fp", {1, 2})], now=T0, expires_at=T0 + LEASE),
        lambda: idempotency.begin([(hostile, 5)], now=T0, lock_until=T0 + LEASE),
    ]
    before = (queue.list(limit=10).items, queue.audit(), queue.destinations())
    for call in calls:
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        message = str(info.value)
        for raw in ("\x1b", "\x00", "\udc80"):
            assert raw not in message, message[:200]
        assert len(message) < 600, message[:200]
        assert "sk_live_abcdefghijklmnopqrstuvwx" not in message
    assert (queue.list(limit=10).items, queue.audit(), queue.destinations()) == before
    assert idempotency.get(hostile, now=T0) is None

"""What only the PostgreSQL stores do: SQL-level races, the outbox, LISTEN/NOTIFY,
error translation and reconnection. The protocol itself is proven by the
shared contract suite (tests/test_store_contract.py)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from pg_support import (
    PG_DSN,
    admin_connection,
    operator_audit,
    terminate_backends,
    with_params,
)
from resilient_sync import (
    Delivery,
    DeliveryStatus,
    Dispatcher,
    Event,
    StoreError,
)
from resilient_sync.testing import FakeClock, RecordingDestination

pytestmark = pytest.mark.postgres
pytest_plugins = ["pg_fixtures"]

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
LEASE_5M = timedelta(minutes=5)


def delivery(event_id: str, key: str | None = None, destination: str = "pos") -> Delivery:
    return Delivery(
        id=uuid.uuid4().hex,
        event=Event(event_id, "customer.created", {"n": event_id}, ordering_key=key),
        destination=destination,
        status=DeliveryStatus.PENDING,
        idempotency_key=f"key-{event_id}-{destination}",
        next_attempt_at=T0,
        created_at=T0,
        updated_at=T0,
    )


def claim(queue: Any, worker: str = "w1", limit: int = 10, at: datetime = T0) -> list[Delivery]:
    result: list[Delivery] = queue.claim(
        now=at, limit=limit, lease_until=at + timedelta(seconds=60), worker=worker
    )
    return result


# -- packaging ----------------------------------------------------------------------


def test_importing_the_library_never_needs_psycopg() -> None:
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "psycopg_pool"):
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import resilient_sync, resilient_sync.stores, resilient_sync.testing
for attempt in (
    "from resilient_sync.stores import PostgresQueueStore",
    "resilient_sync.stores.open_stores('postgresql://127.0.0.1/test')",
):
    try:
        exec(attempt)
    except ImportError as exc:
        print("ERROR:", exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    errors = [line for line in out.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2, out.stdout + out.stderr
    assert all("pip install 'resilient-sync[postgres]'" in line for line in errors)


# -- errors --------------------------------------------------------------------------


def test_an_unreachable_server_is_a_store_error_naming_it_without_the_password() -> None:
    from resilient_sync.stores._postgres import PostgresQueueStore

    with pytest.raises(StoreError) as info:
        PostgresQueueStore(
            "postgresql://ada:s3cret-pw@127.0.0.1:1/test", schema="nowhere", pool_timeout=0.5
        )
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert (
        "connecting fails" in message
    )  # the server's (or the OS's) own answer, not just a timeout
    assert "s3cret-pw" not in message
    assert info.value.__cause__ is not None


def test_an_invalid_conninfo_is_a_value_error_without_the_password() -> None:
    from resilient_sync.stores._postgres import PostgresQueueStore

    with pytest.raises(ValueError, match="bogus") as info:
        PostgresQueueStore("host=127.0.0.1 bogus=1 password=s3cret-pw")
    assert "s3cret-pw" not in str(info.value)


def test_a_failing_statement_is_a_store_error_chained_to_psycopg(pg_stores: Any) -> None:
    import psycopg

    queue, _ = pg_stores
    with admin_connection() as conn:
        conn.execute(f'DROP TABLE "{queue.schema}".cursors')
    with pytest.raises(StoreError, match="cursors") as info:
        queue.get_cursor("crm")
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)
    assert queue.schema in str(info.value)


def test_invalid_schema_names_are_refused_before_any_sql() -> None:
    from resilient_sync.stores._postgres import PostgresQueueStore

    with pytest.raises(ValueError, match="invalid schema name"):
        PostgresQueueStore(PG_DSN, schema='x"; DROP TABLE y; --')


def test_a_closed_store_says_so(pg_stores: Any) -> None:
    queue, idempotency = pg_stores
    queue.close()
    queue.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        queue.get("nope")
    idempotency.close()
    with pytest.raises(StoreError, match="closed"):
        idempotency.release(["k"])


# -- claims ----------------------------------------------------------------------------


def test_the_database_refuses_two_in_flight_deliveries_of_one_key(pg_stores: Any) -> None:
    import psycopg

    queue, _ = pg_stores
    queue.enqueue([delivery("e1", "k"), delivery("e2", "k")])
    with admin_connection() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(f"UPDATE \"{queue.schema}\".deliveries SET status = 'in_flight'")


def test_a_key_held_by_a_worker_is_not_handed_out_even_to_an_older_retried_delivery(
    pg_stores: Any,
) -> None:
    queue, _ = pg_stores
    first, second = queue.enqueue([delivery("e1", "k"), delivery("e2", "k")])
    (held,) = claim(queue)
    assert held.id == first.id
    queue.complete(
        [
            _done(held, DeliveryStatus.DISCARDED),
        ]
    )
    (now_held,) = claim(queue, worker="w2")
    assert now_held.id == second.id
    # An operator re-queues the discarded older delivery while w2 holds the key:
    moved = queue.transition(
        [first.id],
        from_status=[DeliveryStatus.DISCARDED],
        to_status=DeliveryStatus.PENDING,
        audit=operator_audit("retry"),
        now=T0,
    )
    assert moved == [first.id]
    assert claim(queue, worker="w3") == []
    queue.complete([_done(now_held, DeliveryStatus.SUCCEEDED)])
    assert [d.id for d in claim(queue, worker="w3")] == [first.id]


def test_an_expired_holder_of_a_key_is_reclaimed_before_an_older_requeued_delivery(
    pg_stores: Any,
) -> None:
    queue, _ = pg_stores
    first, second = queue.enqueue([delivery("e1", "k"), delivery("e2", "k")])
    (held,) = claim(queue)
    queue.complete([_done(held, DeliveryStatus.DISCARDED)])
    (crashed,) = claim(queue, worker="crashed")
    assert crashed.id == second.id
    queue.transition(
        [first.id],
        from_status=[DeliveryStatus.DISCARDED],
        to_status=DeliveryStatus.PENDING,
        audit=operator_audit("retry"),
        now=T0,
    )
    later = T0 + timedelta(seconds=61)  # the crashed worker's lease is over
    (reclaimed,) = claim(queue, worker="w2", at=later)
    assert reclaimed.id == second.id  # the key's holder finishes first
    assert queue.complete([_done(reclaimed, DeliveryStatus.SUCCEEDED)]) == [True]
    assert [d.id for d in claim(queue, worker="w2", at=later)] == [first.id]


def _done(d: Delivery, status: DeliveryStatus) -> Any:
    from resilient_sync.stores import Completion

    return Completion(delivery_id=d.id, lease_token=d.lease_token, status=status, finished_at=T0)


@pytest.mark.parametrize("kind", ["new", "retries that fell due"])
@pytest.mark.parametrize("isolation", ["read committed", "repeatable read"])
def test_concurrent_claimers_never_share_a_delivery_or_a_key(
    pg_dsn: str, pg_schema: str, isolation: str, kind: str
) -> None:
    """Four stores claim and complete 300 deliveries at once. With the
    server's default isolation at repeatable read (a database or role set
    so), claims that met each other's updates failed with a serialization
    error (found by a red-team pass): a claim runs at read committed, as a
    completion does. The deliveries are new (read through the claim's index
    in seq order) or retries that fell due (through its index by due time,
    then each row by its seq)."""
    from resilient_sync.stores._postgres import PostgresQueueStore

    escaped = isolation.replace(" ", "\\ ")  # libpq options: a space is escaped
    dsn = with_params(pg_dsn, options=f"-c default_transaction_isolation={escaped}")
    stores = [PostgresQueueStore(dsn, schema=pg_schema) for _ in range(4)]
    try:
        written = T0 - timedelta(hours=1) if kind == "retries that fell due" else T0
        stores[0].enqueue(
            [
                attrs.evolve(
                    delivery(f"e{i}", key=f"k{i % 7}" if i % 3 else None),
                    status=(
                        DeliveryStatus.RETRY_SCHEDULED
                        if kind == "retries that fell due"
                        else DeliveryStatus.PENDING
                    ),
                    updated_at=written,
                    next_attempt_at=T0 - timedelta(seconds=i % 50),
                )
                for i in range(300)
            ]
        )
        seen: dict[str, str] = {}
        lock = threading.Lock()
        errors: list[BaseException] = []

        def worker(store: Any, name: str) -> None:
            try:
                while True:
                    got = claim(store, worker=name, limit=5)
                    if not got:
                        if store.next_due() is None:
                            return
                        continue
                    keys = [d.ordering_key for d in got if d.ordering_key]
                    assert len(keys) == len(set(keys)), "one claim returned two of a key"
                    with lock:
                        for d in got:
                            assert d.id not in seen, f"{d.id}: {seen.get(d.id)} and {name}"
                            seen[d.id] = name
                    store.complete([_done(d, DeliveryStatus.SUCCEEDED) for d in got])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s, f"w{i}")) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(seen) == 300
        assert stores[0].stats().by_status == {DeliveryStatus.SUCCEEDED: 300}
    finally:
        for s in stores:
            s.close()


def test_an_expired_lease_is_reclaimed_with_an_audit_record(pg_stores: Any) -> None:
    queue, _ = pg_stores
    (d,) = queue.enqueue([delivery("e1", "k")])
    (first,) = claim(queue, worker="crashed")
    later = T0 + timedelta(seconds=61)
    (again,) = claim(queue, worker="w2", at=later)
    assert again.id == d.id
    assert again.attempts == 2
    assert again.lease_token > first.lease_token
    (record,) = queue.attempts(d.id)
    assert record.action == "lease_expired"
    assert record.actor == "worker:w2"
    assert "crashed" in (record.reason or "")
    assert queue.complete([_done(first, DeliveryStatus.SUCCEEDED)]) == [False]
    assert queue.complete([_done(again, DeliveryStatus.SUCCEEDED)]) == [True]


def test_complete_applies_a_batch_in_one_statement_fenced_per_delivery(pg_stores: Any) -> None:
    queue, _ = pg_stores
    queue.enqueue([delivery(f"e{i}") for i in range(3)])
    a, b, c = claim(queue)
    stale = _done(b, DeliveryStatus.SUCCEEDED)
    stale = type(stale)(
        delivery_id=b.id, lease_token=b.lease_token - 100, status=stale.status, finished_at=T0
    )
    ok_a = _done(a, DeliveryStatus.SUCCEEDED)
    assert queue.complete([ok_a, stale, ok_a, _done(c, DeliveryStatus.NEEDS_ACTION)]) == [
        True,
        False,
        False,
        True,
    ]
    assert queue.get(b.id).status is DeliveryStatus.IN_FLIGHT


def test_next_due_ignores_what_time_alone_cannot_release(pg_stores: Any) -> None:
    queue, _ = pg_stores
    queue.enqueue([delivery("e1", "k"), delivery("e2", "k")])
    (held,) = claim(queue)
    queue.complete([_done(held, DeliveryStatus.NEEDS_ACTION)])
    assert queue.next_due() is None  # e2 waits for a person to act on e1, not for time
    queue.enqueue([delivery("e3", destination="crm")])
    queue.set_destination("crm", now=T0, paused=True, paused_reason="token revoked")
    assert queue.next_due() is None
    queue.set_destination("crm", now=T0, paused=False)
    assert queue.next_due() == T0


# -- ordering of concurrent enqueues ------------------------------------------------------


def test_enqueues_of_one_key_are_ordered_by_commit(pg_stores: Any) -> None:
    """A later-committed enqueue of a key never gets a lower seq than an earlier one."""
    queue, _ = pg_stores
    done = threading.Event()
    with admin_connection() as outer:
        outer.autocommit = False
        queue.enqueue([delivery("first", "k")], transaction=outer)

        def second() -> None:
            queue.enqueue([delivery("second", "k")])
            done.set()

        thread = threading.Thread(target=second)
        thread.start()
        _wait_for_advisory_lock_waiter()
        assert not done.is_set()  # blocked on the key until the first commits
        outer.commit()
    thread.join(30)
    assert done.is_set()
    seqs = {d.event.id: d.seq for d in queue.list().items}
    assert seqs["first"] < seqs["second"]


def _key_waits(queue: Any) -> dict[str, bool]:
    return dict(
        queue._run(
            "read key_waits",
            lambda conn: conn.execute(
                f'SELECT event_id, key_waits FROM "{queue.schema}".deliveries'
            ).fetchall(),
            atomic=False,
        )
    )


def test_a_key_finishing_while_its_next_delivery_is_enqueued_lets_that_one_go(
    pg_stores: Any,
) -> None:
    """e2 is enqueued (in a transaction still open) while e1, the only other
    delivery of its key, is in flight: e2 waits behind it. e1's completion
    then waits for e2's commit (the key's lock) before it lets the key's
    next delivery go, so it sees e2 and lets it go. Without the wait it
    would find no next delivery, and e2 would wait for ever."""
    queue, _ = pg_stores
    queue.enqueue([delivery("e1", "k")])
    (e1,) = claim(queue)
    done = threading.Event()
    with admin_connection() as outer:
        outer.autocommit = False
        queue.enqueue([delivery("e2", "k")], transaction=outer)

        def finish() -> None:
            queue.complete([_done(e1, DeliveryStatus.SUCCEEDED)])
            done.set()

        thread = threading.Thread(target=finish)
        thread.start()
        _wait_for_advisory_lock_waiter()
        assert not done.is_set()  # the completion waits for the enqueue of its key
        outer.commit()
    thread.join(30)
    assert done.is_set()
    assert _key_waits(queue) == {"e1": False, "e2": False}
    assert [d.event.id for d in claim(queue)] == ["e2"]


def test_an_enqueue_at_a_stricter_isolation_never_marks_a_delivery_waiting(
    pg_stores: Any,
) -> None:
    """Under REPEATABLE READ the enqueue's snapshot may predate a commit that
    finished the key's last delivery, so it cannot tell that its delivery
    waits: it never marks it (the claim still checks the order)."""
    queue, _ = pg_stores
    queue.enqueue([delivery("e1", "k")])
    with admin_connection() as outer:
        outer.autocommit = False
        outer.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        queue.enqueue([delivery("e2", "k")], transaction=outer)
        outer.commit()
    assert _key_waits(queue) == {"e1": False, "e2": False}
    (e1,) = claim(queue)  # e2 still waits for e1: the claim checks each row it reads
    assert e1.event.id == "e1"
    queue.complete([_done(e1, DeliveryStatus.SUCCEEDED)])
    assert [d.event.id for d in claim(queue)] == ["e2"]


def test_a_key_left_at_a_stricter_isolation_is_refused_clearly(pg_stores: Any) -> None:
    """SQL of another program that finishes a keyed delivery under
    REPEATABLE READ could miss the key's next delivery: refused, naming
    what to do, instead of leaving that delivery waiting."""
    import psycopg

    queue, _ = pg_stores
    queue.enqueue([delivery("e1", "k"), delivery("e2", "k")])
    with admin_connection() as conn:
        conn.autocommit = False
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.errors.RaiseException, match="needs READ COMMITTED"):
            conn.execute(
                f"UPDATE \"{queue.schema}\".deliveries SET status = 'discarded' "
                "WHERE event_id = 'e1'"
            )
        conn.rollback()
    assert _key_waits(queue) == {"e1": False, "e2": True}


def test_an_insert_that_drew_its_seq_early_never_hides_the_oldest(pg_stores: Any) -> None:
    """An insert whose seq was drawn before a later one of its key committed
    (another writer that does not take the key's lock first: a process of
    an older release, SQL of another program) is the older one: it must not
    be marked as waiting behind the younger."""
    queue, _ = pg_stores
    s = f'"{queue.schema}"'
    with admin_connection() as early:
        (seq,) = early.execute(f"SELECT nextval('{s}.delivery_seq')").fetchone()
        queue.enqueue([delivery("young", "k")])
        early.execute(
            f"""INSERT INTO {s}.deliveries (id, seq, event_id, destination, ordering_key, event,
            status, idempotency_key, created_at, updated_at)
            VALUES ('old', %s, 'old', 'pos', 'k', '{{"id":"old","type":"t","payload":{{}}}}',
            'pending', 'key-old', now(), now())""",
            [seq],
        )
        early.commit()
    # "young" could not know: it is not marked, and the claim's check holds it back
    assert _key_waits(queue) == {"young": False, "old": False}
    assert [d.seq for d in claim(queue)] == [seq]


def test_a_deadlock_with_an_outbox_transaction_is_retried(pg_stores: Any) -> None:
    """An application transaction that submits two ordering keys in two calls
    (against the one order the library takes their locks in) while a worker
    completes a delivery of each: PostgreSQL breaks the deadlock by aborting
    one side. When it is the worker's, the completion is sent again (nothing
    of it was written) instead of losing the batch's outcomes."""
    import psycopg

    queue, _ = pg_stores
    s = f'"{queue.schema}"'
    with admin_connection() as conn:
        la, lb = conn.execute(
            f"SELECT {s}.ordering_key_lock('pos', 'A'), {s}.ordering_key_lock('pos', 'B')"
        ).fetchone()
    first, second = ("A", "B") if la > lb else ("B", "A")  # the worker locks the other first
    queue.enqueue([delivery("a1", "A"), delivery("b1", "B")])
    held = claim(queue)
    outcome: dict[str, Any] = {}
    with admin_connection() as app:
        app.autocommit = False
        queue.enqueue([delivery("x1", first)], transaction=app)

        def worker() -> None:
            done = [_done(d, DeliveryStatus.SUCCEEDED) for d in held]
            try:
                outcome["worker"] = queue.complete(done)
            except StoreError as exc:  # what the retry must prevent: reported below
                outcome["worker"] = exc

        thread = threading.Thread(target=worker)
        thread.start()
        _wait_for_advisory_lock_waiter()
        try:
            queue.enqueue([delivery("x2", second)], transaction=app)
            app.commit()
            outcome["app"] = "committed"
        except StoreError as exc:
            outcome["app"] = exc
            app.rollback()
        thread.join(60)
    if isinstance(outcome["app"], StoreError):  # the application's side was rolled back
        assert isinstance(outcome["app"].__cause__, psycopg.errors.DeadlockDetected), outcome
    assert outcome["worker"] == [True, True], outcome
    statuses = {d.event.id: d.status for d in queue.list().items}
    assert statuses["a1"] is statuses["b1"] is DeliveryStatus.SUCCEEDED
    if outcome["app"] == "committed":
        assert {d.event.id for d in claim(queue)} == {"x1", "x2"}


def _wait_for_advisory_lock_waiter() -> None:
    with admin_connection() as conn:
        for _ in range(600):
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            if row and row[0] > 0:
                return
            threading.Event().wait(0.05)
    raise AssertionError("the second enqueue never waited for the key's lock")


# -- the transactional outbox --------------------------------------------------------------


def _customers(conn: Any, schema: str) -> None:
    conn.execute(f'CREATE TABLE "{schema}".customers (id text PRIMARY KEY, email text)')


def test_outbox_commits_with_the_callers_transaction(pg_stores: Any) -> None:
    queue, idempotency = pg_stores
    import psycopg

    pos = RecordingDestination("pos")
    dispatcher = Dispatcher(queue, idempotency, [pos], clock=FakeClock(T0))
    with psycopg.connect(PG_DSN) as conn:
        _customers(conn, queue.schema)
        conn.commit()
        conn.execute(f'INSERT INTO "{queue.schema}".customers VALUES (%s, %s)', ["c1", "a@x.io"])
        dispatcher.submit(Event("c1", "customer.created", {"id": "c1"}), transaction=conn)
        assert queue.list().items == []  # not visible before the caller commits
        conn.commit()
    assert [d.event.id for d in queue.list().items] == ["c1"]
    dispatcher.run_until_idle()
    assert [e.id for e in pos.applied] == ["c1"]


def test_outbox_rolls_back_with_the_callers_transaction(pg_stores: Any) -> None:
    queue, idempotency = pg_stores
    import psycopg

    dispatcher = Dispatcher(queue, idempotency, [RecordingDestination("pos")], clock=FakeClock(T0))
    with psycopg.connect(PG_DSN) as conn:
        _customers(conn, queue.schema)
        conn.commit()

        def save_customer() -> None:
            with conn.transaction():
                conn.execute(f'INSERT INTO "{queue.schema}".customers VALUES (%s, %s)', ["c1", "a"])
                dispatcher.submit(Event("c1", "customer.created", {}), transaction=conn)
                raise RuntimeError("the web request failed after saving")

        with pytest.raises(RuntimeError):
            save_customer()
        count = conn.execute(f'SELECT count(*) FROM "{queue.schema}".customers').fetchone()
    assert count == (0,)
    assert queue.list().items == []
    assert queue.next_due() is None


def test_outbox_on_an_autocommit_connection_writes_atomically(pg_stores: Any) -> None:
    queue, _ = pg_stores
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        inserted = queue.enqueue([delivery("e1"), delivery("e2")], transaction=conn)
    assert len(inserted) == 2
    assert len(queue.list().items) == 2


def test_outbox_refuses_what_it_cannot_join(pg_stores: Any) -> None:
    queue, _ = pg_stores
    import psycopg

    with pytest.raises(TypeError, match=r"psycopg\.Connection"):
        queue.enqueue([delivery("e1")], transaction=queue.pool)
    import sqlite3

    lite = sqlite3.connect(":memory:")
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        queue.enqueue([delivery("e1")], transaction=lite)
    lite.close()
    with psycopg.connect(PG_DSN) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(StoreError, match="aborted"):
            queue.enqueue([delivery("e1")], transaction=conn)
        conn.rollback()
        conn.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(StoreError, match="caller's transaction") as info:
            queue.enqueue([delivery("e1")], transaction=conn)
        assert isinstance(info.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
        conn.rollback()
    assert queue.list().items == []


# -- waking up on new work -----------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "customer-1"], ids=["one statement", "keyed, pipelined"])
def test_wait_for_work_wakes_on_enqueue_and_times_out_otherwise(
    pg_stores: Any, key: str | None
) -> None:
    """Both ways an enqueue is written (one statement that also notifies, or a
    pipelined transaction that locks the ordering key first) wake a waiting
    worker."""
    queue, _ = pg_stores
    queue.wait_for_work(5)  # first call connects the listener and returns at once
    queue.wait_for_work(0.01)  # nothing new: times out
    woke = threading.Event()

    def waiter() -> None:
        queue.wait_for_work(60)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    queue.enqueue([delivery("e1", key)])
    thread.join(30)
    assert woke.is_set()


def test_wait_for_work_survives_a_killed_listener(pg_dsn: str, pg_schema: str) -> None:
    from resilient_sync.stores._postgres import PostgresQueueStore

    app = f"rs_listener_{uuid.uuid4().hex[:8]}"
    queue = PostgresQueueStore(with_params(pg_dsn, application_name=app), schema=pg_schema)
    try:
        queue.wait_for_work(5)
        assert terminate_backends(app) >= 1
        queue.wait_for_work(5)  # notices the dead connection and returns
        queue.wait_for_work(5)  # listens again
        woke = threading.Event()
        thread = threading.Thread(target=lambda: (queue.wait_for_work(60), woke.set()))
        thread.start()
        queue.enqueue([delivery("e1")])
        thread.join(30)
        assert woke.is_set()
    finally:
        queue.close()


def test_close_wakes_a_waiting_worker_quietly(
    pg_stores: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue, _ = pg_stores
    queue.wait_for_work(5)  # connect the listener
    returned = threading.Event()
    thread = threading.Thread(target=lambda: (queue.wait_for_work(60), returned.set()))
    thread.start()
    _wait_for_listener_wait()
    queue.close()
    thread.join(30)
    assert returned.is_set()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def _wait_for_listener_wait() -> None:
    """Until some backend sits idle in LISTEN (the waiter is blocked on it)."""
    with admin_connection() as conn:
        for _ in range(600):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' "
                "AND state = 'idle'"
            ).fetchone()
            if row and row[0] > 0:
                return
            threading.Event().wait(0.05)
    raise AssertionError("no listening connection showed up")


# -- connections lost between calls ----------------------------------------------------


def test_killed_pool_connections_are_replaced_transparently(pg_dsn: str, pg_schema: str) -> None:
    from resilient_sync.stores._postgres import PostgresIdempotencyStore, PostgresQueueStore

    app = f"rs_pool_{uuid.uuid4().hex[:8]}"
    dsn = with_params(pg_dsn, application_name=app)
    queue = PostgresQueueStore(dsn, schema=pg_schema, pool_min_size=2)
    idempotency = PostgresIdempotencyStore(dsn, schema=pg_schema)
    try:
        queue.enqueue([delivery("e1")])
        assert terminate_backends(app) >= 1
        assert len(claim(queue)) == 1
        assert terminate_backends(app) >= 1
        (record,) = idempotency.begin([("k", "fp")], now=T0, lock_until=T0 + timedelta(60))
        assert record.state.value == "new"
    finally:
        queue.close()
        idempotency.close()


def test_after_a_reconnect_a_reused_delivery_id_is_not_reported_as_inserted(
    pg_dsn: str, pg_schema: str
) -> None:
    """An enqueue retried on a new connection looks up the rows its first run
    may have committed by delivery id. A row under the same id that is an
    older one (a direct caller reusing an id: another event, or another
    creation time) is already known, not inserted by this call; the rows
    this call did write are reported once."""
    import attrs

    from resilient_sync.stores._postgres import PostgresQueueStore

    app = f"rs_reuse_{uuid.uuid4().hex[:8]}"
    queue = PostgresQueueStore(
        with_params(pg_dsn, application_name=app), schema=pg_schema, pool_max_size=1
    )
    try:
        old = delivery("e-old")
        assert [d.id for d in queue.enqueue([old])] == [old.id]
        for key in (None, "customer-1"):  # one statement, and the pipelined form
            assert terminate_backends(app) >= 1  # the next call finds its connection dead
            new = delivery(f"e-new-{key}", key)
            reused = attrs.evolve(old, created_at=T0 + timedelta(hours=1))
            got = queue.enqueue([new, reused])
            assert [d.id for d in got] == [new.id], key
        assert queue.stats().total == 3
    finally:
        queue.close()


def test_open_pair_shares_one_pool_and_reads_the_schema_from_the_url(pg_schema: str) -> None:
    from resilient_sync.stores._postgres import open_pair

    queue, idempotency = open_pair(f"{PG_DSN}?schema={pg_schema}&connect_timeout=5")
    try:
        assert queue.schema == idempotency.schema == pg_schema
        assert queue.pool is idempotency.pool
        queue.close()
        assert not queue.pool.closed  # still used by the idempotency store
        assert idempotency.get("k", now=T0) is None
    finally:
        queue.close()
        idempotency.close()
    assert idempotency.pool.closed


# -- asyncio ---------------------------------------------------------------------------


def test_the_async_dispatcher_runs_on_the_sync_store_including_run_forever(
    pg_stores: Any,
) -> None:
    """Store calls run in a worker thread (asyncio.to_thread), so the loop never blocks;
    an idle run_forever waits in wait_for_work and wakes on the enqueue's NOTIFY."""
    import asyncio

    from resilient_sync import AsyncDispatcher

    queue, idempotency = pg_stores
    seen: list[str] = []

    class AsyncPos:
        name = "pos"

        async def deliver(self, event: Event, context: Any) -> Any:
            seen.append(event.id)
            if len(seen) == 3:
                stop.set()
            return {"id": event.id}

    stop = asyncio.Event()
    dispatcher = AsyncDispatcher(queue, idempotency, [AsyncPos()], poll_interval=30)

    async def main() -> None:
        await dispatcher.submit(Event("a1", "t", {}, ordering_key="k"))
        runner = asyncio.create_task(dispatcher.run_forever(stop))
        await asyncio.sleep(0.2)  # let it go idle, waiting for work
        await dispatcher.submit_many([Event(f"a{i}", "t", {}, ordering_key="k") for i in (2, 3)])
        await asyncio.wait_for(runner, 20)  # far less than poll_interval: woken by NOTIFY

    asyncio.run(main())
    assert seen == ["a1", "a2", "a3"]


def _insert_deliveries(
    conn: Any,
    schema: str,
    count: int,
    *,
    destination: str = "'pos'",
    status: str = "'pending'",
    next_attempt_at: str = "NULL",
    lease_expires_at: str = "NULL",
    updated_at: str = "now()",
    first: int = 1,
) -> None:
    """``count`` rows straight into the deliveries table, numbered (and their
    seq) from ``first`` on (``g`` is the row number in the SQL expressions
    for the destination, the status and the times; a row with a lease end
    is leased by "w0")."""
    conn.execute(
        f'''INSERT INTO "{schema}".deliveries (id, seq, event_id, destination, event,
        status, idempotency_key, next_attempt_at, lease_token, lease_owner, lease_expires_at,
        created_at, updated_at)
        SELECT md5(g::text), g, 'e' || g, {destination}, '{{"id":"x","type":"t","payload":{{}}}}',
        {status}, 'k' || g, x.next_attempt_at,
        CASE WHEN x.lease_expires_at IS NULL THEN 0 ELSE 1 END,
        CASE WHEN x.lease_expires_at IS NOT NULL THEN 'w0' END, x.lease_expires_at, now(),
        {updated_at}
        FROM generate_series({first}, {first + count - 1}) AS g,
        LATERAL (SELECT ({next_attempt_at})::timestamptz AS next_attempt_at,
                        ({lease_expires_at})::timestamptz AS lease_expires_at) AS x'''
    )


def _plans(
    conn: Any, sql: str, params: dict[str, Any], *, analyze: bool = False, setup: str = ""
) -> dict[str, str]:
    """EXPLAIN of ``sql`` as PostgreSQL plans it with these values (an unnamed
    statement) and as the generic plan it reuses once psycopg has prepared
    the statement (``PREPARE`` + ``plan_cache_mode = force_generic_plan``).
    With ``analyze``, each runs (in a transaction rolled back) and reports
    what it read. ``setup`` runs first in the custom plan's transaction (the
    settings the store sends before the statement)."""
    import psycopg.sql

    how = "EXPLAIN (ANALYZE, TIMING OFF) " if analyze else "EXPLAIN "
    with conn.transaction(force_rollback=True):
        if setup:
            conn.execute(setup)
        custom = "\n".join(row[0] for row in conn.execute(how + sql, params).fetchall())
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    text = re.sub(r"%%|%\((\w+)\)[sb]", number, sql)
    kinds = {bool: "boolean", int: "bigint", str: "text", list: "text[]", datetime: "timestamptz"}
    typed = [kinds[type(params[name])] for name in order]
    types = f"({', '.join(typed)})" if typed else ""
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE plan_check {types} AS {text}")
        # EXECUTE is a utility statement: its arguments go as literals, not parameters
        args = psycopg.sql.SQL(", ").join(
            psycopg.sql.SQL("{}::{}").format(
                psycopg.sql.Literal(params[name]), psycopg.sql.SQL(kind)
            )
            for name, kind in zip(order, typed, strict=True)
        )
        explain = psycopg.sql.SQL(how + "EXECUTE plan_check{}").format(
            psycopg.sql.SQL("({})").format(args) if order else psycopg.sql.SQL("")
        )
        generic = "\n".join(row[0] for row in conn.execute(explain).fetchall())
        conn.execute("DEALLOCATE plan_check")
    return {"custom": custom, "generic": generic}


def _assert_flat(name: str, plans: dict[str, str]) -> None:
    for kind, plan in plans.items():
        assert "Seq Scan on deliveries" not in plan, (name, kind, plan)
        assert "Seq Scan on audit" not in plan, (name, kind, plan)
        # a JIT compile costs more than the statement (50-100 ms a claim)
        assert "JIT:" not in plan, (name, kind, plan)


def test_hot_queries_never_scan_the_history(pg_dsn: str, pg_schema: str) -> None:
    """With 50,000 finished deliveries and a few open ones, the claim, the
    operator queue, stats, the oldest waiting one, the error trend and next_due
    read through indexes: no sequential scan of the deliveries or the audit,
    in the plan for the values at hand nor in the generic plan PostgreSQL
    reuses for a prepared statement (where the claim once crossed
    jit_above_cost)."""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    q = queue._queries
    now = datetime.now(timezone.utc)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            _insert_deliveries(
                conn,
                pg_schema,
                50000,
                status="CASE WHEN g % 500 = 0 THEN 'needs_action' WHEN g > 49900 THEN 'pending' "
                "ELSE 'succeeded' END",
            )
            conn.execute(
                f'''INSERT INTO "{pg_schema}".audit (delivery_id, destination, action, actor,
                started_at, finished_at) SELECT md5(g::text), 'pos', 'deliver', 'w', now(), now()
                FROM generate_series(1, 50000) AS g'''
            )
            conn.execute(f'ANALYZE "{pg_schema}".deliveries')
            conn.execute(f'ANALYZE "{pg_schema}".audit')
            lease = {"now": now, "limit": 100, "lease_until": now, "worker": "w"}
            # the claim and next_due are never prepared (prepare=False): only their
            # plans for the values count
            for name, some in (("claim", None), ("claim of some destinations", ["crm", "pos"])):
                plans = _plans(
                    conn,
                    q["claim"],
                    {**lease, "all_destinations": some is None, "destinations": some or []},
                    setup=q["claim_settings"],
                )
                _assert_flat(name, {"custom": plans["custom"]})
            plans = _plans(conn, q["next_due"], {}, setup=q["claim_settings"])
            _assert_flat("next_due", {"custom": plans["custom"]})
            checks = {
                "operator queue": (
                    "\n".join([q["list"], q["list_where_needs_action"], q["list_order"]]),
                    {"after": 0, "limit": 51},
                ),
                "stats_open": (q["stats_open"], {}),
                "stats_oldest_waiting": (q["stats_oldest_waiting"], {}),
                "error_counts": (q["error_counts"], {"since": now, "until": now, "width": 3600}),
            }
            for name, (sql, params) in checks.items():
                _assert_flat(name, _plans(conn, sql, params))
    finally:
        queue.close()


@pytest.mark.parametrize(
    ("layout", "analysed"),
    [("unkeyed", False), ("unkeyed", True), ("keyed", True), ("rare destination", True)],
)
def test_an_idle_poll_finds_the_first_due_time_without_reading_the_queue(
    pg_dsn: str, pg_schema: str, layout: str, analysed: bool
) -> None:
    """100,000 deliveries scheduled for a retry in ten minutes (under 1,000
    ordering keys, or with 1,000 more for a second destination behind them),
    and one of them, the 90,000th, due sooner: ``next_due``, which an idle
    worker asks at every empty claim, reports it (keyed, it waits behind its
    key's head, so the oldest head's time), reading a few pages. It
    read the oldest 1,000 (``NEXT_DUE_WINDOW``; all of them took 225 ms a
    call, growing with the queue), so it missed that one (the worker claimed
    it at its next poll); before the statistics were analysed, it read 4,800
    pages (30 ms) for that."""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    later = datetime.now(timezone.utc) + timedelta(minutes=10)
    key = "'k' || mod(g, 1000)" if layout == "keyed" else "NULL"
    destination = "CASE WHEN g > 100000 THEN 'rare' ELSE 'pos' END"
    total = 101000 if layout == "rare destination" else 100000
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                f"""INSERT INTO "{pg_schema}".deliveries (id, seq, event_id, destination,
                event, status, idempotency_key, ordering_key, next_attempt_at, created_at,
                updated_at)
                SELECT md5(g::text), g, 'e' || g, {destination},
                '{{"id":"x","type":"t","payload":{{}}}}', 'retry_scheduled', 'k' || g, {key},
                %s + g * interval '1 millisecond', now(), now()
                FROM generate_series(1, {total}) AS g""",
                [later],
            )
            # further back than the oldest 1,000 (a key's head when keyed): due in a minute
            sooner = later - timedelta(minutes=9)
            conn.execute(
                f'UPDATE "{pg_schema}".deliveries SET next_attempt_at = %s WHERE seq = 90000',
                [sooner],
            )
            if analysed:
                conn.execute(f'ANALYZE "{pg_schema}".deliveries')
            with conn.transaction(force_rollback=True):
                conn.execute(queue._queries["claim_settings"])
                rows = conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + queue._queries["next_due"]
                ).fetchall()
            plan = "\n".join(row[0] for row in rows)
        found = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
        assert found is not None, plan
        assert int(found.group(1)) + int(found.group(2) or 0) < 100, plan
        assert "Seq Scan on deliveries" not in plan, plan
        # keyed, it waits behind the oldest of its key, which time alone does not release
        assert queue.next_due() == (later + timedelta(milliseconds=1) if key != "NULL" else sooner)
    finally:
        queue.close()


def test_next_due_counts_a_held_destinations_deliveries_from_the_end_of_the_hold(
    pg_stores: Any,
) -> None:
    """The claim passes over a held destination until the hold ends: its
    deliveries, due or not, in flight or not, count from then."""
    queue, _ = pg_stores
    hold_end = T0 + timedelta(minutes=10)
    queue.enqueue([delivery("e1")])
    assert len(claim(queue)) == 1  # in flight until T0 + 60 s
    queue.set_destination("pos", now=T0, hold_until=hold_end, hold_reason="rate limited")
    assert queue.next_due() == hold_end  # it was the lease's end, T0 + 60 s
    queue.enqueue([_waiting("e2", DeliveryStatus.PENDING, None)])
    assert queue.next_due() == hold_end
    queue.enqueue([_waiting("e3", DeliveryStatus.RETRY_SCHEDULED, hold_end + LEASE_5M)])
    assert queue.next_due() == hold_end
    queue.enqueue([_waiting("e4", DeliveryStatus.RETRY_SCHEDULED, T0, destination="crm")])
    assert queue.next_due() == T0  # another destination


def test_the_claim_is_planned_for_its_values_every_time(pg_dsn: str, pg_schema: str) -> None:
    """The claim is prepared once per connection (parsing its long text at
    every call cost 0.4 ms of 2.4) but PostgreSQL plans it for the values at
    hand each time and never settles on a generic plan: a generic plan
    (tried with the limit and the names written into the text) could not
    estimate how many rows are due; at 100k waiting rows it costed the claim
    at the whole index and JIT-compiled it, 1.3 s a claim against 10 ms."""
    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema, pool_max_size=1)
    try:
        queue.enqueue([delivery(f"e{i}") for i in range(40)])
        now = datetime.now(timezone.utc)
        lease = {"now": now, "lease_until": now + timedelta(minutes=5), "worker": "w"}
        for _ in range(20):  # PostgreSQL tries a generic plan from the 6th run on
            assert len(queue.claim(limit=1, **lease)) == 1
            assert len(queue.claim(limit=1, destinations=["pos"], **lease)) == 1
        plans = queue._run(
            "read the prepared statements",
            lambda conn: conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE %s",
                ["/* resilient_sync claim */%"],
            ).fetchall(),
            atomic=False,
        )
        # prepared (one statement per type of the destinations' array), and
        # never planned generically: the claim's settings force custom plans
        assert plans, "the claim was not prepared"
        assert all(generic == 0 for generic, _ in plans), plans
        assert sum(custom for _, custom in plans) == 40, plans

        def setting(conn: Any) -> Any:
            with conn.transaction(force_rollback=True):
                conn.execute(queue._queries["claim_settings"])
                return conn.execute("SHOW plan_cache_mode").fetchone()

        assert queue._run("read the claim's settings", setting, atomic=False) == (
            "force_custom_plan",
        )
    finally:
        queue.close()


def test_an_idle_poll_is_planned_once_per_connection(pg_dsn: str, pg_schema: str) -> None:
    """``next_due`` has no parameter, so its plan is the same at every idle
    poll: the store prepares it and the server reuses the plan (planning it
    each time cost 0.9 ms of 1.5, after every empty claim)."""
    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema, pool_max_size=1)
    try:
        queue.enqueue([delivery("e1")])
        for _ in range(10):
            assert queue.next_due() is not None
        plans = queue._run(
            "read the prepared statements",
            lambda conn: conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE %s",
                ["/* resilient_sync next_due */%"],
            ).fetchall(),
            atomic=False,
        )
        assert plans == [(10, 0)]
    finally:
        queue.close()


def test_a_pool_without_prepared_statements_gets_none(pg_dsn: str, pg_schema: str) -> None:
    """A pool made with ``prepare_threshold=None`` (for a PgBouncer older
    than 1.21 in transaction mode, as the many-workers guide says) gets no
    prepared statement, not even the claim's or the idle poll's, which the
    store otherwise prepares at their first run (psycopg lets the pool's
    setting win over ``prepare=True``)."""
    from psycopg_pool import ConnectionPool

    from resilient_sync.stores._postgres import PostgresQueueStore

    pool: ConnectionPool[Any] = ConnectionPool(
        pg_dsn,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True, "prepare_threshold": None},
        open=True,
    )
    queue = PostgresQueueStore(pool, schema=pg_schema)
    try:
        queue.enqueue([delivery(f"e{i}") for i in range(3)])
        now = datetime.now(timezone.utc)
        for _ in range(3):
            queue.claim(now=now, limit=1, lease_until=now + timedelta(minutes=5), worker="w")
            queue.next_due()
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    finally:
        queue.close()
        pool.close()


def test_a_rare_destinations_claim_skips_the_others_backlog(pg_dsn: str, pg_schema: str) -> None:
    """100,000 deliveries wait for "pos", 1,000 for "rare": a worker serving
    "rare" claims without walking the "pos" backlog. (A reused generic plan,
    tried before release, assumed the names match half the table and
    filtered out every "pos" row in seq order: 107 ms a claim at 200k rows,
    against 30 ms planned with the values.)"""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema, pool_max_size=1)
    now = datetime.now(timezone.utc)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            _insert_deliveries(
                conn,
                pg_schema,
                101000,
                destination="CASE WHEN g > 100000 THEN 'rare' ELSE 'pos' END",
            )
            conn.execute(f'ANALYZE "{pg_schema}".deliveries')
        lease = {"now": now, "lease_until": now + timedelta(minutes=5), "worker": "w"}
        for _ in range(12):  # more than psycopg's prepare threshold
            assert {
                d.destination for d in queue.claim(limit=10, destinations=["rare"], **lease)
            } == {"rare"}
        params = {**lease, "limit": 10, "all_destinations": False, "destinations": ["rare"]}
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            plan = _plans(
                conn,
                queue._queries["claim"],
                params,
                analyze=True,
                setup=queue._queries["claim_settings"],
            )["custom"]
        removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
        assert sum(removed) < 5000, plan
    finally:
        queue.close()


def _claim_buffers(
    conn: Any, queue: Any, now: datetime, destinations: tuple[str, ...] | None = ("pos",)
) -> tuple[int, str]:
    """Pages the claim of 100 reads to choose what it hands out (its
    ``candidates``, in EXPLAIN ANALYZE, rolled back; the update of the rows
    it takes comes on top), and its plan. ``destinations`` None: a claim
    for all of them (their names found in the claim's indexes, which counts
    among the pages)."""
    params = {
        "now": now,
        "limit": 100,
        "lease_until": now + timedelta(minutes=5),
        "worker": "w",
        "all_destinations": destinations is None,
        "destinations": list(destinations or ()),
    }
    with conn.transaction(force_rollback=True):
        conn.execute(queue._queries["claim_settings"])
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + queue._queries["claim"], params
        ).fetchall()
    plan = "\n".join(row[0] for row in rows)
    found = re.search(r"CTE candidates\n.*?Buffers: shared hit=(\d+)(?: read=(\d+))?", plan, re.S)
    assert found is not None, plan
    return int(found.group(1)) + int(found.group(2) or 0), plan


@pytest.mark.parametrize("due", ["no due time", "due when written", "overdue retries"])
@pytest.mark.parametrize("analysed", [False, True])
def test_a_burst_is_claimed_through_the_index_whatever_the_statistics(
    pg_dsn: str, pg_schema: str, analysed: bool, due: str
) -> None:
    """20,000 deliveries arrive at once: before autovacuum has analysed them,
    the planner believes the queue is nearly empty, and a claim that walked
    every destination's deliveries at once read them all through a bitmap
    and sorted them (175 ms a claim at 100,000 rows, 3 ms analysed). Each
    destination's own index hands them out in order: a claim of 100 reads a
    few pages, analysed or not, whether they wait with no due time (an
    operator's retry), with one (as submitted: due when created), or are
    retries that fell due since (then it reads the 1,000 due longest ago,
    in the order they fell due, and hands out the oldest of them)."""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            _insert_deliveries(
                conn,
                pg_schema,
                20000,
                next_attempt_at="NULL" if due == "no due time" else "now() - interval '1 second'",
                updated_at="now() - interval '1 hour'" if due == "overdue retries" else "now()",
                status="'retry_scheduled'" if due == "overdue retries" else "'pending'",
            )
            if analysed:
                conn.execute(f'ANALYZE "{pg_schema}".deliveries')
            pages, plan = _claim_buffers(conn, queue, datetime.now(timezone.utc))
        assert "Bitmap Heap Scan on deliveries" not in plan, plan
        # reading the 20,000 rows takes about 1,000; of overdue retries, the claim
        # reads the 1,000 due longest ago (about 450)
        assert pages < (600 if due == "overdue retries" else 300), plan
    finally:
        queue.close()


_NOT_YET_DUE = {
    # 100,000 deliveries in front of the due ones, due in an hour: retries
    # scheduled after an outage, or deliveries in flight on live leases
    "scheduled retries": {
        "status": "'retry_scheduled'",
        "next_attempt_at": "now() + interval '1 hour'",
    },
    "live leases": {"status": "'in_flight'", "lease_expires_at": "now() + interval '1 hour'"},
}


@pytest.mark.parametrize("front", list(_NOT_YET_DUE))
@pytest.mark.parametrize("analysed", [False, True])
def test_a_claim_reads_none_of_the_deliveries_not_yet_due(
    pg_dsn: str, pg_schema: str, analysed: bool, front: str
) -> None:
    """100,000 deliveries due in an hour in front of 100 due ones (with no due
    time, due when written, and retries that fell due). The claim walked each
    destination's deliveries in seq order and kept the due ones, so it read
    the 100,000 at every claim: an empty claim read 2,900 pages (27 ms), and
    so did one of the 100 behind them, growing with the backlog. It reads
    each destination's deliveries with a due time in the order they fall
    due, up to now: a few pages, analysed or not, for all destinations or
    one, and the 100 due are handed out, oldest first."""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            _insert_deliveries(conn, pg_schema, 100000, **_NOT_YET_DUE[front])
            if analysed:
                conn.execute(f'ANALYZE "{pg_schema}".deliveries')
            for destinations in (("pos",), None):
                pages, plan = _claim_buffers(conn, queue, datetime.now(timezone.utc), destinations)
                handed_out = plan.split("CTE candidates\n")[1].splitlines()[0]
                assert "actual rows=0 " in handed_out, plan
                assert pages < 100, plan  # reading the 100,000 took 2,900
            _insert_deliveries(
                conn,
                pg_schema,
                100,
                first=100001,
                next_attempt_at="CASE WHEN g % 3 > 0 THEN now() - interval '1 second' END",
                updated_at="CASE WHEN g % 3 = 2 THEN now() - interval '1 hour' ELSE now() END",
            )
            if analysed:
                conn.execute(f'ANALYZE "{pg_schema}".deliveries')
            for destinations in (("pos",), None):
                pages, plan = _claim_buffers(conn, queue, datetime.now(timezone.utc), destinations)
                assert pages < 300, plan  # 3,000 before
        now = datetime.now(timezone.utc)
        claimed = queue.claim(now=now, limit=200, lease_until=now + LEASE_5M, worker="w")
        assert [d.seq for d in claimed] == list(range(100001, 100101))
    finally:
        queue.close()


def _retry(d: Delivery, at: datetime) -> Any:
    from resilient_sync.stores import Completion

    return Completion(
        delivery_id=d.id,
        lease_token=d.lease_token,
        status=DeliveryStatus.RETRY_SCHEDULED,
        finished_at=T0,
        next_attempt_at=at,
    )


def _waiting(
    event_id: str,
    status: DeliveryStatus,
    due: datetime | None,
    key: str | None = None,
    destination: str = "pos",
) -> Delivery:
    return attrs.evolve(delivery(event_id, key, destination), status=status, next_attempt_at=due)


def test_due_deliveries_from_both_claim_indexes_are_claimed_oldest_first(
    pg_stores: Any,
) -> None:
    """Deliveries due when written (no due time, or one no later than when
    they were written) and the others (a retry scheduled for later) come
    from the claim's two indexes: handed out together, in seq order, and cut
    to the limit in that order."""
    queue, _ = pg_stores
    at = T0 + timedelta(minutes=1)
    rows = queue.enqueue(
        [
            _waiting("e1", DeliveryStatus.RETRY_SCHEDULED, T0 + timedelta(seconds=30)),
            _waiting("e2", DeliveryStatus.PENDING, None),
            _waiting("e3", DeliveryStatus.PENDING, T0),
            _waiting("e4", DeliveryStatus.RETRY_SCHEDULED, None),
            _waiting("e5", DeliveryStatus.RETRY_SCHEDULED, at + timedelta(seconds=1)),
            _waiting("e6", DeliveryStatus.PENDING, T0 - timedelta(seconds=1)),
        ]
    )
    assert [d.id for d in claim(queue, limit=3, at=at)] == [rows[0].id, rows[1].id, rows[2].id]
    assert [d.id for d in claim(queue, limit=3, at=at)] == [rows[3].id, rows[5].id]
    assert [d.id for d in claim(queue, at=at + timedelta(seconds=1))] == [rows[4].id]


def test_the_oldest_due_goes_first_whenever_it_fell_due(pg_stores: Any) -> None:
    """Of the deliveries with a due time, the claim reads those that fell due
    first, and hands out the oldest of them: a lease that ran out after a
    newer delivery's retry time is still reclaimed first, and an older retry
    due later goes before a newer one due sooner (found by the key-heads
    fuzz test when the claim took those due longest ago)."""
    queue, _ = pg_stores
    (stalled,) = queue.enqueue([delivery("e1")])
    assert len(claim(queue, worker="crashed")) == 1  # a lease until T0 + 60 s
    older, newer = queue.enqueue(
        [
            _waiting("e2", DeliveryStatus.RETRY_SCHEDULED, T0 + timedelta(seconds=50)),
            _waiting("e3", DeliveryStatus.RETRY_SCHEDULED, T0 + timedelta(seconds=10)),
        ]
    )
    at = T0 + timedelta(seconds=61)
    assert [d.id for d in claim(queue, limit=1, at=at)] == [stalled.id]
    assert [d.id for d in claim(queue, limit=1, at=at)] == [older.id]
    assert [d.id for d in claim(queue, limit=1, at=at)] == [newer.id]


def test_a_delivery_is_claimable_exactly_when_its_time_comes(pg_stores: Any) -> None:
    """A retry is claimed from its due time on, not a microsecond before; a
    lease that ran out is reclaimed from its end on, with its audit record."""
    queue, _ = pg_stores
    tick = timedelta(microseconds=1)
    retry_at = T0 + timedelta(seconds=30)
    (d,) = queue.enqueue([_waiting("e1", DeliveryStatus.RETRY_SCHEDULED, retry_at)])
    assert claim(queue, at=retry_at - tick) == []
    (leased,) = claim(queue, worker="crashed", at=retry_at)  # a lease of 60 s
    assert leased.id == d.id
    lease_end = retry_at + timedelta(seconds=60)
    assert claim(queue, worker="w2", at=lease_end - tick) == []
    (again,) = claim(queue, worker="w2", at=lease_end)
    assert again.id == d.id
    assert again.attempts == 2
    (record,) = queue.attempts(d.id)
    assert record.action == "lease_expired"
    assert "crashed" in (record.reason or "")


@pytest.mark.parametrize("flag", ["marked waiting", "not marked"])
def test_a_head_waiting_for_its_retry_holds_back_its_key_from_the_due_time_index(
    pg_stores: Any, flag: str
) -> None:
    """The head of a key is a retry scheduled for later; the next delivery
    of the key is due: it is not claimed until the head has gone. The flag
    that keeps it out of the claim's indexes may be false on a delivery
    that waits (an enqueue at a stricter isolation leaves it so): then the
    claim's check of the key's head stops it."""
    queue, _ = pg_stores
    head, second = queue.enqueue([delivery("e1", "k"), delivery("e2", "k")])
    if flag == "not marked":
        with admin_connection() as conn:
            conn.execute(
                f'UPDATE "{queue.schema}".deliveries SET key_waits = false WHERE id = %s',
                [second.id],
            )
    (held,) = claim(queue)
    retry_at = T0 + timedelta(seconds=30)
    assert queue.complete([_retry(held, retry_at)]) == [True]
    assert claim(queue, at=T0 + timedelta(seconds=10)) == []
    assert queue.next_due() == retry_at
    (again,) = claim(queue, at=retry_at)
    assert again.id == head.id
    assert claim(queue, at=retry_at) == []
    assert queue.complete([_done(again, DeliveryStatus.SUCCEEDED)]) == [True]
    assert [d.id for d in claim(queue, at=retry_at)] == [second.id]


@pytest.mark.parametrize("analysed", [False, True])
def test_outcomes_and_heartbeats_find_their_deliveries_by_id_whatever_the_statistics(
    pg_dsn: str, pg_schema: str, analysed: bool
) -> None:
    """20,000 deliveries queued, 100 of them claimed: the statement that
    records their outcomes, and the lease heartbeat's, find each by its id
    (the plans read in the transaction the store sends them in, rolled
    back). Before autovacuum had analysed the burst, the planner believed
    few deliveries were open and found the 100 in flight by reading every
    open one through a bitmap of ``deliveries_claimable``; analysed while
    few were in flight, it read the whole table. Either way it kept 100 of
    the 20,000 rows it read (11 ms a batch), a cost that grew with the
    queue."""
    import psycopg

    from resilient_sync import Attempt, DeliveryStatus
    from resilient_sync.stores import Completion
    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    now = datetime.now(timezone.utc)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            _insert_deliveries(conn, pg_schema, 20000)
            if analysed:
                conn.execute(f'ANALYZE "{pg_schema}".deliveries')
        claimed = queue.claim(
            now=now, limit=100, lease_until=now + timedelta(minutes=5), worker="w"
        )
        assert len(claimed) == 100
        done = [
            Completion(
                delivery_id=d.id,
                lease_token=d.lease_token,
                status=DeliveryStatus.SUCCEEDED,
                finished_at=now,
                audit=(
                    Attempt(
                        delivery_id=d.id,
                        destination=d.destination,
                        action="deliver",
                        actor="worker:w",
                        started_at=now,
                        finished_at=now,
                        number=1,
                        outcome=DeliveryStatus.SUCCEEDED,
                    ),
                ),
            )
            for d in claimed
        ]
        params = {**queue._complete_params(done), "channel": queue.channel}
        with (
            psycopg.connect(pg_dsn, autocommit=True) as conn,
            conn.transaction(force_rollback=True),
        ):
            conn.execute(queue._queries["keys_handled"])
            conn.execute(queue._queries["by_id_settings"])
            beat = {
                "ids": [d.id for d in claimed],
                "tokens": [d.lease_token for d in claimed],
                "until": now + timedelta(minutes=10),
            }
            # the heartbeat first: it finds the 100 still in flight
            rows = conn.execute(
                "EXPLAIN (ANALYZE, TIMING OFF) " + queue._queries["extend_leases"], beat
            ).fetchall()
            rows += [("--",)]
            rows += conn.execute(
                "EXPLAIN (ANALYZE, TIMING OFF) " + queue._queries["complete"], params
            ).fetchall()
        plan = "\n".join(row[0] for row in rows)
        heartbeat_plan, complete_plan = plan.split("\n--\n")
        for each in (complete_plan, heartbeat_plan):
            assert "Index Scan using deliveries_pkey on deliveries t " in each, each
            assert "Bitmap Heap Scan on deliveries" not in each, each
            assert "Seq Scan on deliveries" not in each, each
            removed = [int(n) for n in re.findall(r"Rows Removed by (?:Join )?Filter: (\d+)", each)]
            assert sum(removed) < 1000, each  # the 100 among 20,000 open ones: 19,900
        until = now + timedelta(minutes=10)
        leases = [(d.id, d.lease_token) for d in claimed]
        assert queue.extend_leases(leases, until=until) == [True] * 100
        assert queue.complete(done) == [True] * 100
    finally:
        queue.close()


def test_a_statement_failing_in_a_round_trip_leaves_the_connection_usable(
    pg_dsn: str, pg_schema: str
) -> None:
    """A completion and a keyed enqueue send their statements as one
    transaction in one round trip. psycopg prepares a statement at its sixth
    use and, in a pipeline, counts it as prepared before the server answers;
    when an earlier statement of the trip fails (here: a key's lock held
    elsewhere past ``lock_timeout``), the server skips the preparation.
    Without a rollback resetting psycopg's record, every later completion on
    that connection failed with "prepared statement does not exist" (found by
    a red-team pass). And no statement of a trip draws a warning."""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    dsn = with_params(pg_dsn, options="-c lock_timeout=300")
    queue = PostgresQueueStore(dsn, schema=pg_schema, pool_min_size=1, pool_max_size=1)
    now = datetime.now(timezone.utc)
    lease = {"now": now, "lease_until": now + timedelta(minutes=5), "worker": "w"}

    def hold(key: str) -> Any:
        """Another session holding the key's lock (an outbox transaction, say)."""
        blocker = psycopg.connect(pg_dsn)
        blocker.execute(
            f'SELECT pg_advisory_xact_lock("{pg_schema}".ordering_key_lock(%s, %s))', ["pos", key]
        )
        return blocker

    notices: list[str] = []
    with queue.pool.connection() as conn:  # the pool's one connection
        conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    try:
        queue.enqueue([delivery(f"e{i}", key=f"k{i}") for i in range(10)])
        claimed = queue.claim(limit=100, **lease)
        assert len(claimed) == 10
        for d in claimed[:5]:
            assert queue.complete([_done(d, DeliveryStatus.SUCCEEDED)]) == [True]
        blocker = hold(claimed[5].event.ordering_key or "")
        try:
            with pytest.raises(StoreError, match="lock timeout"):
                queue.complete([_done(claimed[5], DeliveryStatus.SUCCEEDED)])
        finally:
            blocker.close()
        assert [queue.complete([_done(d, DeliveryStatus.SUCCEEDED)]) for d in claimed[5:]] == [
            [True]
        ] * 5
        for i in range(10, 15):  # the keyed enqueue, used five times by now
            assert len(queue.enqueue([delivery(f"e{i}", key="k")])) == 1
        blocker = hold("k")
        try:
            with pytest.raises(StoreError, match="lock timeout"):
                queue.enqueue([delivery("e15", key="k")])
        finally:
            blocker.close()
        assert len(queue.enqueue([delivery("e16", key="k")])) == 1
        with psycopg.connect(pg_dsn) as conn:
            (count,) = conn.execute(
                f'SELECT count(*) FROM "{pg_schema}".deliveries WHERE ordering_key = %s', ["k"]
            ).fetchone()
        assert count == 6  # five, then e16: nothing of the failed e15
        # each trip is a transaction block: no "SET TRANSACTION can only be
        # used in transaction blocks" warning in the server's log per completion
        assert notices == []
    finally:
        queue.close()


def test_key_locks_wait_for_no_fsync_and_claims_and_outcomes_do(
    pg_dsn: str, pg_schema: str
) -> None:
    """An idempotency begin and a release commit without waiting for the WAL
    to reach the disk (what a crash of the server undoes, the lease and the
    lock's end handle, as after a worker's crash); a claim (its lease token
    must never be handed out twice), an enqueue, a finish and a completion
    wait for it. Counted by the server's own WAL fsyncs: 100 begins and
    releases took 100 when each waited, a few now."""
    import time

    import psycopg

    from resilient_sync.stores import PostgresIdempotencyStore, PostgresQueueStore

    name = f"rs_fsync_{uuid.uuid4().hex[:8]}"
    dsn = with_params(pg_dsn, application_name=name)
    now = datetime.now(timezone.utc)
    lease = {"now": now, "lease_until": now + timedelta(minutes=5), "worker": "w"}

    def fsyncs(work: Any) -> int:
        """WAL fsyncs while ``work`` runs on stores of its own (closed after it,
        so that their server processes exit and report what they did)."""
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            before = admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
            queue = PostgresQueueStore(dsn, schema=pg_schema, pool_max_size=1)
            keys = PostgresIdempotencyStore(dsn, schema=pg_schema, pool_max_size=1)
            try:
                work(queue, keys)
            finally:
                queue.close()
                keys.close()
            for _ in range(100):
                (left,) = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]
                ).fetchone()
                if left == 0:
                    break
                time.sleep(0.05)
            after = admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
        return int(after[0]) - int(before[0])

    def lock(queue: Any, keys: Any) -> None:
        for i in range(50):
            keys.begin([(f"pos\x1fk{i}", "f")], now=now, lock_until=lease["lease_until"])
            keys.release([f"pos\x1fk{i}"])

    def record(queue: Any, keys: Any) -> None:
        queue.enqueue([delivery(f"r{i}") for i in range(30)])
        claimed = queue.claim(limit=100, **lease)
        assert len(claimed) == 30
        for d in claimed:
            keys.finish([(f"pos\x1f{d.id}", "f", None)], now=now, expires_at=lease["lease_until"])
            assert queue.complete([_done(d, DeliveryStatus.SUCCEEDED)]) == [True]

    relaxed = fsyncs(lock)  # 100 commits
    assert relaxed < 25, relaxed
    durable = fsyncs(record)  # 62 durable commits: the enqueue, the claim, 30 of each
    assert durable >= 50, durable


@pytest.mark.parametrize("history", [False, True])
def test_a_claim_reads_none_of_the_deliveries_waiting_behind_one_key(
    pg_dsn: str, pg_schema: str, history: bool
) -> None:
    """20,000 deliveries queued behind one ordering key (after 20,000
    finished ones, or none), the statistics analysed: the claim hands out
    the oldest and reads a few pages. It used to test every waiting one
    against the key's index (312 ms a claim at 20,000), and once analysed,
    "is an older delivery of this key unfinished?" was planned as a walk in
    seq order that read the whole history before the oldest one."""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            if history:
                _insert_deliveries(conn, pg_schema, 20000, status="'succeeded'")
            conn.execute(
                f"""INSERT INTO "{pg_schema}".deliveries (id, seq, event_id, destination, event,
                status, idempotency_key, ordering_key, created_at, updated_at)
                SELECT md5('k' || g::text), 100000 + g, 'k' || g, 'pos',
                '{{"id":"x","type":"t","payload":{{}}}}', 'pending', 'kk' || g, 'one-key',
                now(), now() FROM generate_series(1, 20000) AS g"""
            )
            conn.execute(f'ANALYZE "{pg_schema}".deliveries')
            waiting = conn.execute(
                f'SELECT count(*) FROM "{pg_schema}".deliveries WHERE key_waits'
            ).fetchone()
            assert waiting == (19999,)  # every one but the oldest, marked as it was written
            pages, plan = _claim_buffers(conn, queue, datetime.now(timezone.utc))
        assert pages < 100, plan  # a walk of the key's 20,000 takes about 600
        claimed = queue.claim(
            now=datetime.now(timezone.utc),
            limit=100,
            lease_until=datetime.now(timezone.utc) + timedelta(minutes=5),
            worker="w",
        )
        assert [d.seq for d in claimed] == [100001]  # the oldest of the key
    finally:
        queue.close()


def test_a_key_behind_another_keys_deep_queue_is_claimed_without_reading_it(
    pg_dsn: str, pg_schema: str
) -> None:
    """20,000 deliveries of key B queued, then one of key A, analysed: the
    claim asks "is this the oldest unfinished delivery of A?" through A's
    part of deliveries_open_by_key, not a walk in seq order through B's
    20,000 (17 ms a claim at 100,000 before)."""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                f"""INSERT INTO "{pg_schema}".deliveries (id, seq, event_id, destination, event,
                status, idempotency_key, ordering_key, created_at, updated_at)
                SELECT 'b' || g, g, 'b' || g, 'pos', '{{"id":"x","type":"t","payload":{{}}}}',
                'pending', 'kb' || g, CASE WHEN g <= 20000 THEN 'B' ELSE 'A' END, now(), now()
                FROM generate_series(1, 20001) AS g"""
            )
            conn.execute(f'ANALYZE "{pg_schema}".deliveries')
            pages, plan = _claim_buffers(conn, queue, datetime.now(timezone.utc))
        assert pages < 100, plan
        now = datetime.now(timezone.utc)
        claimed = queue.claim(now=now, limit=100, lease_until=now + LEASE_5M, worker="w")
        assert sorted(d.seq for d in claimed) == [1, 20001]
    finally:
        queue.close()


def test_a_deep_keyed_queue_is_claimed_through_indexes(pg_dsn: str, pg_schema: str) -> None:
    """100,000 pending deliveries over 1,000 ordering keys, one in flight: the
    claim reads the heads of the keys through indexes. (Without "ordering_key
    IS NOT NULL" in the in-flight check, PostgreSQL hashed that subquery over a
    sequential scan of the whole table on every claim: 31 ms at 200k rows.)"""
    import psycopg

    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema)
    now = datetime.now(timezone.utc)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                f'''INSERT INTO "{pg_schema}".deliveries (id, seq, event_id, destination, event,
                status, idempotency_key, ordering_key, created_at, updated_at, lease_token,
                lease_owner, lease_expires_at)
                SELECT md5(g::text), g, 'e' || g, 'pos', '{{"id":"x","type":"t","payload":{{}}}}',
                CASE WHEN g = 1 THEN 'in_flight' ELSE 'pending' END, 'k' || g,
                'key-' || (g % 1000), now(), now(),
                CASE WHEN g = 1 THEN 1 ELSE 0 END, CASE WHEN g = 1 THEN 'w' END,
                CASE WHEN g = 1 THEN now() + interval '1 hour' END
                FROM generate_series(1, 100000) AS g'''
            )
            conn.execute(f'ANALYZE "{pg_schema}".deliveries')
            params = {
                "now": now,
                "limit": 100,
                "lease_until": now,
                "worker": "w",
                "all_destinations": False,
                "destinations": ["pos"],
            }
            plans = _plans(
                conn, queue._queries["claim"], params, setup=queue._queries["claim_settings"]
            )
            _assert_flat("keyed claim", {"custom": plans["custom"]})
    finally:
        queue.close()


def test_queries_are_sent_without_their_comments() -> None:
    """The statements go out without the comments that explain them (psycopg
    parses a text longer than 4 KiB again at every execution), with a tag
    naming each; a ``--`` inside a string or a quoted name is not a comment,
    and text this cannot read safely is sent as written."""
    from resilient_sync.stores._postgres import _load_queries, _minify

    queries = _load_queries("s")
    assert queries["complete"].startswith("/* resilient_sync complete */ WITH c AS (")
    assert all("\n--" not in sql and not sql.startswith("--") for sql in queries.values())
    assert len(queries["complete"].encode()) <= 4096
    assert _minify("SELECT 'a -- b', \"c--d\" -- gone\n  , 'it''s -- kept' -- gone\n\n-- x\n") == (
        "SELECT 'a -- b', \"c--d\"\n, 'it''s -- kept'"
    )
    for odd in ("SELECT E'\\' -- x' -- y", "SELECT $$ -- $$ -- c", "SELECT 'open -- x"):
        assert _minify(odd) == odd


def test_the_enqueue_that_wakes_the_workers_has_a_tag_of_its_own(
    pg_dsn: str, pg_schema: str
) -> None:
    """Made of the enqueue and a fragment, it is told apart from the plain
    enqueue in ``pg_stat_statements`` by its own tag."""
    from resilient_sync.stores._postgres import PostgresQueueStore

    queue = PostgresQueueStore(pg_dsn, schema=pg_schema, pool_max_size=1)
    try:
        sql = queue._queries["enqueue_and_notify"]
        assert sql.startswith("/* resilient_sync enqueue_and_notify */ WITH inserted AS (")
        assert sql.count("/* resilient_sync") == 1
        assert "pg_notify" in sql
        assert len(queue.enqueue([delivery("e1")])) == 1
    finally:
        queue.close()

"""Cost per event at queue depth and history size, on every store.

For each store (memory, SQLite, PostgreSQL), keyed (``ordering_key`` set,
1,000 distinct keys, as customer ids would be) and unkeyed, and each size
(10k, 100k, 1M rows):

- **depth**: that many deliveries queued (``PENDING``);
- **history**: that many finished deliveries (``SUCCEEDED``, each with its
  audit record and its completed idempotency key) plus a small queue of
  1,100 (1,000 measured, 100 to warm up);

then a ``Dispatcher(batch_size=100)`` with a no-op destination runs one batch
to warm up and ``--measure`` more events (claim, idempotency begin, deliver,
idempotency finish, complete with its audit record) with ``run_once``; the
figure is the wall time per event, in microseconds (the median of
``--repeat`` runs; after each run the queue is topped up with as many new
events as were taken, so the depth stays put). Each row also gives its ratio
to the 10k figure of the same store and kind. The JSON keeps the time per
store call (claim, begin, finish, complete).

How the rows are made (1M through the public API would take too long):

- one **template** is made through the public API (``submit``, and for the
  history ``run_until_idle``), then its rows are read back: the delivery,
  and for the history its audit record and idempotency key;
- SQL stores: ``INSERT ... SELECT`` copies of the template into the store's
  own tables (column lists read from the database, so every column the store
  wrote is copied), with fresh values where rows must differ: delivery id
  (time-ordered, like the library's), event id (also inside the event JSON),
  ordering key (and SQLite's copy of it, ``open_key``, and its ``key_waits``
  flag, set as the store's insert sets it), a random idempotency key; each
  audit row and idempotency key points at its copy. Afterwards
  SQLite checkpoints its WAL; PostgreSQL runs ``VACUUM ANALYZE`` on the
  three tables (autovacuum is off on the bench server, and a long-lived
  database would have been vacuumed);
- memory: the depth is made with ``Dispatcher.submit_many``; the history
  with the store protocol: ``enqueue`` deliveries already in flight, then
  ``complete`` them (each with an audit record), and ``finish`` their keys.

Sizes grow in place: the same queue goes from 10k to 100k to 1M.

    .venv/bin/python bench/scale.py [--sizes 10000,100000] [--stores memory,sqlite,postgres]
                                    [--keys 1000]

``--keys 1`` queues every keyed delivery behind one key: the claim hands out
one delivery at a time, and must not read the ones waiting behind it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from common import PAYLOAD, PG_DSN, NoOp, log, pg_schema, succeeded

from resilient_sync import Delivery, DeliveryStatus, Dispatcher, Event
from resilient_sync.stores import open_stores

KEYS = 1000
TEMPLATE_EVENT = "bench-template"
TEMPLATE_KEY = "bench-template-key"
CHUNK = 100_000  # rows per INSERT statement / transaction while building


class Timed:
    """A store wrapper that adds up the seconds spent in each method."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds: dict[str, float] = defaultdict(float)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


def event(n: int, keyed: bool) -> Event:
    return Event(
        f"bench-e{n}", "order.paid", dict(PAYLOAD, n=n), f"bench-k{n % KEYS}" if keyed else None
    )


class Scenario:
    """One store, keyed or not, depth or history; grows in place."""

    def __init__(self, store: str, keyed: bool, kind: str) -> None:
        self.store, self.keyed, self.kind = store, keyed, kind
        self.next_n = 1  # event numbers handed out so far
        self.rows = 0  # depth: deliveries queued; history: finished deliveries
        self.queue: Any = None
        self.idempotency: Any = None
        self.submitter: Dispatcher | None = None

    # public API -------------------------------------------------------------------------

    def submit(self, count: int) -> None:
        assert self.submitter is not None
        events = [event(self.next_n + i, self.keyed) for i in range(count)]
        self.next_n += count
        for first in range(0, count, 100):
            self.submitter.submit_many(events[first : first + 100])

    def grow_to(self, size: int) -> None:
        missing = size - self.rows
        if missing > 0:
            self.add(missing)
            self.rows = size
        if self.kind == "history":
            self.submit(1100)  # the small queue: 100 to warm up, 1,000 measured

    def add(self, count: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.queue.close()
        self.idempotency.close()


class MemoryScenario(Scenario):
    def open(self) -> None:
        from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore

        self.queue, self.idempotency = MemoryQueueStore(), MemoryIdempotencyStore()
        self.submitter = Dispatcher(self.queue, self.idempotency, [NoOp()])

    def add(self, count: int) -> None:
        if self.kind == "depth":
            for first in range(0, count, 10_000):
                self.submit(min(10_000, count - first))
            return
        now = datetime.now(timezone.utc)
        lease = now + timedelta(hours=1)
        for first in range(0, count, 10_000):
            numbers = range(self.next_n, self.next_n + min(10_000, count - first))
            self.next_n += len(numbers)
            flying = [
                Delivery(
                    id=f"{int(now.timestamp() * 1000):012x}{n:020x}",
                    event=event(n, self.keyed),
                    destination="noop",
                    status=DeliveryStatus.IN_FLIGHT,
                    idempotency_key=secrets.token_hex(16),
                    attempts=1,
                    created_at=now,
                    updated_at=now,
                    lease_token=1,
                    lease_owner="builder",
                    lease_expires_at=lease,
                )
                for n in numbers
            ]
            self.queue.enqueue(flying)
            self.queue.complete([succeeded(d.id, 1, now, "builder") for d in flying])
            self.idempotency.finish(
                [(f"noop\x1f{d.idempotency_key}", "f" * 64, None) for d in flying],
                now=now,
                expires_at=now + timedelta(days=30),
            )


class SQLScenario(Scenario):
    """What SQLite and PostgreSQL share: a template read back, then copied in SQL."""

    deliveries = audit = keys = ""
    template: dict[str, dict[str, Any]]

    def make_template(self) -> None:
        assert self.submitter is not None
        template = Event(
            TEMPLATE_EVENT, "order.paid", dict(PAYLOAD, n=0), TEMPLATE_KEY if self.keyed else None
        )
        self.submitter.submit(template)
        if self.kind == "history":
            report = self.submitter.run_until_idle()
            assert report.succeeded == 1, report
        self.template = self.read_template()

    def read_template(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def delivery_overrides(self) -> dict[str, str]:
        raise NotImplementedError


class SQLiteScenario(SQLScenario):
    deliveries = "resilient_sync_deliveries"
    audit = "resilient_sync_audit"
    keys = "resilient_sync_idempotency"

    def open(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-scale-")
        self.path = Path(self.tmp.name, "sync.db")
        self.queue, self.idempotency = open_stores(f"sqlite:///{self.path}")
        self.submitter = Dispatcher(self.queue, self.idempotency, [NoOp()])
        self.make_template()

    def close(self) -> None:
        super().close()
        self.tmp.cleanup()

    def _row(self, conn: sqlite3.Connection, table: str, where: str, arg: Any) -> dict[str, Any]:
        cur = conn.execute(f"SELECT * FROM {table} WHERE {where}", (arg,))
        names = [c[0] for c in cur.description]
        row = cur.fetchone()
        assert row is not None, (table, where, arg)
        return dict(zip(names, row, strict=True))

    def read_template(self) -> dict[str, dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            d = self._row(conn, self.deliveries, "event_id = ?", TEMPLATE_EVENT)
            out = {"deliveries": d}
            if self.kind == "history":
                out["audit"] = self._row(conn, self.audit, "delivery_id = ?", d["id"])
                out["keys"] = self._row(
                    conn, self.keys, "key LIKE '%' || ? || '%'", d["idempotency_key"]
                )
        return out

    def add(self, count: int) -> None:
        t = self.template
        d = t["deliveries"]
        overrides = {
            "seq": None,  # AUTOINCREMENT
            "id": f"printf('%s%020x', '{d['id'][:12]}', n)",
            "event_id": "'bench-e' || n",
            "ordering_key": f"'bench-k' || (n % {KEYS})" if self.keyed else "NULL",
            "event": (
                f"replace(replace(:event, '\"{TEMPLATE_EVENT}\"', '\"bench-e' || n || '\"'),"
                f" '\"{TEMPLATE_KEY}\"', '\"bench-k' || (n % {KEYS}) || '\"')"
            ),
            "idempotency_key": "lower(hex(randomblob(16)))",
        }
        if d.get("open_key") is not None:  # schema 4: the key of an unfinished delivery
            overrides["open_key"] = overrides["ordering_key"]
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            conn.execute("PRAGMA busy_timeout = 30000")
            for first in range(0, count, CHUNK):
                last = min(count, first + CHUNK)
                (before,) = conn.execute(
                    f"SELECT COALESCE(MAX(seq), 0) FROM {self.deliveries}"
                ).fetchone()
                conn.execute("BEGIN IMMEDIATE")
                cols, exprs, params = _copy_columns(d, overrides)
                conn.execute(
                    f"WITH RECURSIVE s(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM s"
                    f" WHERE n < :last) INSERT INTO {self.deliveries} ({cols})"
                    f" SELECT {exprs} FROM s",
                    {**params, "first": self.next_n + first, "last": self.next_n + last - 1},
                )
                if self.kind == "history":
                    self._history_rows(conn, before)
                if "key_waits" in d and self.keyed:  # schema 5: as the store's insert sets it
                    conn.execute(
                        f"UPDATE {self.deliveries} AS d SET key_waits = 1 WHERE d.seq > :before"
                        " AND d.open_key IS NOT NULL AND d.status IN ('pending', 'retry_scheduled')"
                        f" AND EXISTS (SELECT 1 FROM {self.deliveries} AS o"
                        " WHERE o.destination = d.destination AND o.open_key = d.open_key"
                        " AND o.seq < d.seq AND o.open_key IS NOT NULL)",
                        {"before": before},
                    )
                conn.execute("COMMIT")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.next_n += count

    def _history_rows(self, conn: sqlite3.Connection, before: int) -> None:
        a, k = self.template["audit"], self.template["keys"]
        cols, exprs, params = _copy_columns(
            a, {"id": None, "delivery_id": "d.id", "delivery_seq": "d.seq"}
        )
        conn.execute(
            f"INSERT INTO {self.audit} ({cols}) SELECT {exprs} FROM {self.deliveries} AS d"
            " WHERE d.seq > :before",
            {**params, "before": before},
        )
        tkey, tidem = k["key"], self.template["deliveries"]["idempotency_key"]
        assert tidem in tkey, (tkey, tidem)
        cols, exprs, params = _copy_columns(k, {"key": "replace(:key, :tidem, d.idempotency_key)"})
        conn.execute(
            f"INSERT INTO {self.keys} ({cols}) SELECT {exprs} FROM {self.deliveries} AS d"
            " WHERE d.seq > :before",
            {**params, "tidem": tidem, "before": before},
        )


def _copy_columns(
    template: dict[str, Any], overrides: dict[str, str | None]
) -> tuple[str, str, dict[str, Any]]:
    """Column list, select list and parameters: each column of ``template`` is
    copied as a parameter unless ``overrides`` gives an SQL expression for it
    (None: leave the column out, the database fills it)."""
    cols, exprs, params = [], [], {}
    for name, value in template.items():
        if name in overrides:
            expr = overrides[name]
            if expr is None:
                continue
            params[name] = value  # expressions may use the template's value as :name
        else:
            expr = f":{name}"
            params[name] = value
        cols.append(name)
        exprs.append(expr)
    return ", ".join(cols), ", ".join(exprs), params


class PostgresScenario(SQLScenario):
    def open(self) -> None:
        import psycopg

        self._schema_cm = pg_schema(f"scale_{self.kind}")
        self.schema = self._schema_cm.__enter__()
        s = f'"{self.schema}"'
        self.deliveries, self.audit, self.keys = (
            f"{s}.deliveries",
            f"{s}.audit",
            f"{s}.idempotency_keys",
        )
        self.queue, self.idempotency = open_stores(f"{PG_DSN}?schema={self.schema}")
        self.submitter = Dispatcher(self.queue, self.idempotency, [NoOp()])
        self.conn = psycopg.connect(PG_DSN, autocommit=True)
        self.make_template()

    def close(self) -> None:
        super().close()
        self.conn.close()
        self._schema_cm.__exit__(None, None, None)

    def _types(self, table: str) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attidentity <> '' FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [table],
        ).fetchall()
        return {name: ("identity" if ident else typ) for name, typ, ident in rows}

    def _row(self, table: str, where: str, arg: Any) -> dict[str, Any]:
        types = self._types(table)
        names = [n for n, t in types.items() if t != "identity"]
        select = ", ".join(f"{n}::text" for n in names)
        row = self.conn.execute(f"SELECT {select} FROM {table} WHERE {where}", [arg]).fetchone()
        assert row is not None, (table, where, arg)
        self.casts[table] = types
        return dict(zip(names, row, strict=True))

    def read_template(self) -> dict[str, dict[str, Any]]:
        self.casts: dict[str, dict[str, str]] = {}
        d = self._row(self.deliveries, "event_id = %s", TEMPLATE_EVENT)
        out = {"deliveries": d}
        if self.kind == "history":
            out["audit"] = self._row(self.audit, "delivery_id = %s", d["id"])
            out["keys"] = self._row(self.keys, "strpos(key, %s) > 0", d["idempotency_key"])
        return out

    def _sql(
        self, table: str, template: dict[str, Any], overrides: dict[str, str | None]
    ) -> tuple[str, str, dict[str, Any]]:
        types = self.casts[table]
        cols, exprs, params = [], [], {}
        for name, value in template.items():
            expr = overrides.get(name, f"%({name})s")
            params[name] = value
            if expr is None:
                continue
            cols.append(name)
            exprs.append(f"CAST({expr} AS {types[name]})")
        return ", ".join(cols), ", ".join(exprs), params

    def add(self, count: int) -> None:
        d = self.template["deliveries"]
        overrides: dict[str, str | None] = {
            "seq": f"nextval('\"{self.schema}\".delivery_seq')",
            "id": "%(id_prefix)s || lpad(to_hex(n), 20, '0')",
            "event_id": "'bench-e' || n",
            "ordering_key": f"'bench-k' || mod(n, {KEYS})" if self.keyed else "NULL",
            "event": (
                f"replace(replace(%(event)s, '\"{TEMPLATE_EVENT}\"', '\"bench-e' || n || '\"'),"
                f" '\"{TEMPLATE_KEY}\"', '\"bench-k' || mod(n, {KEYS}) || '\"')"
            ),
            "idempotency_key": "md5(n::text || random()::text)",
        }
        for first in range(0, count, CHUNK):
            last = min(count, first + CHUNK)
            (before,) = self.conn.execute(
                f"SELECT COALESCE(MAX(seq), 0) FROM {self.deliveries}"
            ).fetchone()  # type: ignore[misc]
            cols, exprs, params = self._sql(self.deliveries, d, overrides)
            with self.conn.transaction():
                self.conn.execute(
                    f"INSERT INTO {self.deliveries} ({cols}) SELECT {exprs}"
                    " FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n ORDER BY n",
                    {
                        **params,
                        "id_prefix": d["id"][:12],
                        "first": self.next_n + first,
                        "last": self.next_n + last - 1,
                    },
                )
                if self.kind == "history":
                    self._history_rows(before)
        self.next_n += count
        for table in (self.deliveries, self.audit, self.keys):
            self.conn.execute(f"VACUUM ANALYZE {table}")

    def _history_rows(self, before: int) -> None:
        a, k = self.template["audit"], self.template["keys"]
        cols, exprs, params = self._sql(self.audit, a, {"delivery_id": "d.id"})
        self.conn.execute(
            f"INSERT INTO {self.audit} ({cols}) SELECT {exprs} FROM {self.deliveries} AS d"
            " WHERE d.seq > %(before)s ORDER BY d.seq",
            {**params, "before": before},
        )
        tkey, tidem = k["key"], self.template["deliveries"]["idempotency_key"]
        assert tidem in tkey, (tkey, tidem)
        cols, exprs, params = self._sql(
            self.keys, k, {"key": "replace(%(key)s, %(tidem)s, d.idempotency_key)"}
        )
        self.conn.execute(
            f"INSERT INTO {self.keys} ({cols}) SELECT {exprs} FROM {self.deliveries} AS d"
            " WHERE d.seq > %(before)s",
            {**params, "tidem": tidem, "before": before},
        )


SCENARIOS: dict[str, type[Scenario]] = {
    "memory": MemoryScenario,
    "sqlite": SQLiteScenario,
    "postgres": PostgresScenario,
}


def measure(scenario: Scenario, events: int, repeat: int, budget: float) -> dict[str, Any]:
    """Microseconds per event to claim, deliver and complete ``events`` at the head.

    A run stops early (after at least one batch) once it has taken ``budget``
    seconds, and a slow first run is not repeated: a store whose cost grows with
    the table would otherwise keep the suite busy for hours.
    """
    queue, idempotency = Timed(scenario.queue), Timed(scenario.idempotency)
    dispatcher = Dispatcher(queue, idempotency, [NoOp()], batch_size=100)
    # a keyed claim hands out at most one delivery per key (--keys below 100:
    # fewer, and the template's own key may add one)
    few = scenario.keyed and KEYS < 100
    warm = dispatcher.run_once()
    assert warm.succeeded == 100 or (few and warm.succeeded > 0), warm
    if scenario.kind == "depth":
        scenario.submit(warm.succeeded)
    runs: list[tuple[float, int, dict[str, float]]] = []
    for run in range(repeat):
        queue.seconds.clear()
        idempotency.seconds.clear()
        done = 0
        started = time.perf_counter()
        while done < events:
            report = dispatcher.run_once()
            assert report.succeeded == 100 or (few and report.succeeded > 0), report
            done += report.succeeded
            if time.perf_counter() - started > budget:
                break
        elapsed = time.perf_counter() - started
        calls = {f"queue.{k}": v for k, v in queue.seconds.items()}
        calls.update({f"idempotency.{k}": v for k, v in idempotency.seconds.items()})
        runs.append((elapsed / done * 1e6, done, {k: v / done * 1e6 for k, v in calls.items()}))
        if scenario.kind == "depth" or run < repeat - 1:
            scenario.submit(
                done
            )  # top up (untimed): the depth stays put, the history has its queue
        if elapsed > budget:
            break
    median = statistics.median_low([cost for cost, _, _ in runs])
    _, done, split = next(r for r in runs if r[0] == median)
    return {
        "us_per_event": median,
        "events": done,
        "runs": [cost for cost, _, _ in runs],
        "split_us": split,
    }


@contextlib.contextmanager
def scenario(store: str, keyed: bool, kind: str) -> Iterator[Scenario]:
    s = SCENARIOS[store](store, keyed, kind)
    s.open()  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.close()
        gc.collect()


def run(
    stores: list[str], sizes: list[int], events: int, repeat: int, budget: float
) -> dict[str, Any]:
    """Results keyed ``"store/keyed|unkeyed/depth|history/size"``."""
    results: dict[str, Any] = {}
    for store in stores:
        for keyed in (False, True):
            for kind in ("depth", "history"):
                with scenario(store, keyed, kind) as s:
                    for size in sizes:
                        started = time.perf_counter()
                        s.grow_to(size)
                        built = time.perf_counter() - started
                        result = measure(s, events, repeat, budget)
                        result["build_s"] = built
                        label = f"{store}/{'keyed' if keyed else 'unkeyed'}/{kind}/{size}"
                        results[label] = result
                        cost = result["us_per_event"]
                        log(f"  scale {label}: {cost:.1f} us/event (built in {built:.1f} s)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--stores", default="memory,sqlite,postgres")
    parser.add_argument("--measure", type=int, default=1000, help="events measured per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--budget", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument(
        "--keys", type=int, default=KEYS, help="distinct ordering keys of the keyed queues"
    )
    args = parser.parse_args()
    if args.keys < 1:
        parser.error("--keys must be at least 1")
    globals()["KEYS"] = args.keys
    sizes = [int(s) for s in args.sizes.split(",")]
    results = run(args.stores.split(","), sizes, args.measure, args.repeat, args.budget)
    print(f"{'us/event':<40}" + "".join(f"{s:>12,}" for s in sizes))
    for prefix in sorted({k.rsplit("/", 1)[0] for k in results}):
        print(
            f"{prefix:<40}"
            + "".join(f"{results[f'{prefix}/{s}']['us_per_event']:>12.1f}" for s in sizes)
        )


if __name__ == "__main__":
    main()

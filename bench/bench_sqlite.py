"""Events/s of the SQLite store end to end, next to the raw sqlite3 limit.

    .venv/bin/python bench/bench_sqlite.py [--events 20000] [--batch 100]
                                           [--sync FULL NORMAL] [--profile]

For each durability setting, two runs on fresh files in the same process:

- **end to end**: ``Dispatcher.submit_many`` in batches of ``--batch``, then
  ``run_until_idle`` (claim, idempotency check, deliver to a no-op
  destination, idempotency record, complete with its audit record), on
  ``open_stores("sqlite:///...", synchronous=...)``;
- **raw**: the same rows written by plain ``sqlite3`` statements into the same
  schema (tables and indexes), with the same durability and batch size, in
  three transactions per batch, committed as the store commits them: insert
  the deliveries (durable); update them to claimed (committed without an
  fsync, as the store commits claims: a lost claim only makes the delivery
  due again); update them to done and insert their audit and idempotency rows
  (durable).

It prints events/s of both and their ratio (the target: end to end >= 70 %
of raw at batch size 100 with synchronous=FULL), and, to show where the time
goes, the rate of the same store calls made directly on prebuilt values
(no dispatcher: no validation, ids, fingerprints, flow or audit objects).
Each line is the median of ``--repeat`` interleaved runs. ``--profile``
prints where the end-to-end time goes (cProfile, by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import PAYLOAD, NoOp, succeeded

from resilient_sync import DeliveryStatus, Dispatcher, Event
from resilient_sync._core import new_delivery
from resilient_sync.stores import SQLiteQueueStore, open_stores

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def events(total: int) -> list[Event]:
    return [Event(f"order-{i}", "order.paid", dict(PAYLOAD, n=i)) for i in range(total)]


def end_to_end(
    path: Path, total: int, batch: int, synchronous: str
) -> tuple[float, dict[str, float]]:
    queue, idempotency = open_stores(f"sqlite:///{path}", synchronous=synchronous)
    dispatcher = Dispatcher(queue, idempotency, [NoOp()], batch_size=batch)
    todo = events(total)
    start = time.perf_counter()
    for i in range(0, total, batch):
        dispatcher.submit_many(todo[i : i + batch])
    submitted = time.perf_counter()
    report = dispatcher.run_until_idle()
    done = time.perf_counter()
    assert report.succeeded == total, report
    assert queue.stats().by_status == {DeliveryStatus.SUCCEEDED: total}
    assert len(queue.audit(limit=total + 1)) == total
    queue.close()
    idempotency.close()
    phases = {"submit": submitted - start, "run": done - submitted}
    return total / (done - start), phases


def store_only(path: Path, total: int, batch: int, synchronous: str) -> float:
    """The same store calls as end to end, on prebuilt values: no dispatcher."""
    queue, idempotency = open_stores(f"sqlite:///{path}", synchronous=synchronous)
    now = datetime.now(timezone.utc)
    lease, ttl = now + timedelta(seconds=300), now + timedelta(days=30)
    plan = [new_delivery(event, "noop", now) for event in events(total)]
    start = time.perf_counter()
    for i in range(0, total, batch):
        queue.enqueue(plan[i : i + batch])
    while claimed := queue.claim(now=now, limit=batch, lease_until=lease, worker="w"):
        keys = [(d.idempotency_key, "f" * 64) for d in claimed]
        idempotency.begin(keys, now=now, lock_until=lease)
        idempotency.finish([(k, f, None) for k, f in keys], now=now, expires_at=ttl)
        queue.complete([succeeded(d.id, d.lease_token, now, "w") for d in claimed])
    elapsed = time.perf_counter() - start
    assert queue.stats().by_status == {DeliveryStatus.SUCCEEDED: total}
    queue.close()
    idempotency.close()
    return total / elapsed


def raw(path: Path, total: int, batch: int, synchronous: str) -> float:
    SQLiteQueueStore(path).close()  # the same schema: tables and indexes
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    relax_claims = synchronous.upper() != "NORMAL"
    now = us(datetime.now(timezone.utc))
    token = 0
    start = time.perf_counter()
    for first in range(0, total, batch):
        numbers = range(first, min(total, first + batch))
        ids = [uuid.uuid4().hex for _ in numbers]
        keys = [f"noop\x1f{uuid.uuid4()}" for _ in numbers]  # random, as derived keys are
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO resilient_sync_deliveries (id, event_id, destination, ordering_key,"
            " event, status, idempotency_key, attempts, next_attempt_at, due_at, created_at,"
            " updated_at) VALUES (?, ?, 'noop', NULL, ?, 'pending', ?, 0, ?, ?, ?, ?)",
            [
                (
                    delivery_id,
                    f"order-{n}",
                    json.dumps({"id": f"order-{n}", "type": "order.paid", "payload": PAYLOAD}),
                    key,
                    now,
                    -now,  # due_at: ready since now, as the store writes it (schema 7)
                    now,
                    now,
                )
                for delivery_id, key, n in zip(ids, keys, numbers, strict=True)
            ],
        )
        conn.execute("COMMIT")
        if relax_claims:  # as the store does: a claim commits without an fsync
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "UPDATE resilient_sync_deliveries SET status = 'in_flight', attempts = attempts + 1,"
            " lease_token = ?, lease_owner = 'raw', lease_expires_at = ?, due_at = ?,"
            " updated_at = ? WHERE id = ?",
            [
                (token + k, now + 300, now + 300, now, delivery_id)
                for k, delivery_id in enumerate(ids)
            ],
        )
        token += len(ids)
        conn.execute("COMMIT")
        if relax_claims:
            conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "UPDATE resilient_sync_deliveries SET status = 'succeeded', next_attempt_at = NULL,"
            " due_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
            " WHERE id = ?",
            [(now, delivery_id) for delivery_id in ids],
        )
        conn.executemany(
            "INSERT INTO resilient_sync_audit (delivery_id, delivery_seq, destination, action,"
            " actor, started_at, finished_at, number, outcome) VALUES (?1, (SELECT seq FROM"
            " resilient_sync_deliveries WHERE id = ?1), 'noop', 'deliver', 'worker:raw', ?2,"
            " ?2, 1, 'succeeded')",
            [(delivery_id, now) for delivery_id in ids],
        )
        conn.executemany(
            "INSERT INTO resilient_sync_idempotency (key, fingerprint, result, expires_at)"
            " VALUES (?, ?, NULL, ?)",
            [(key, "f" * 64, now + 10**12) for key in keys],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return total / elapsed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--sync", nargs="+", default=["FULL", "NORMAL"])
    parser.add_argument(
        "--repeat", type=int, default=3, help="raw/end-to-end pairs per setting (median shown)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the end-to-end runs")
    args = parser.parse_args(argv)

    print(
        f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, "
        f"{args.events} events, batch size {args.batch}, WAL, "
        f"median of {args.repeat} interleaved pairs"
    )
    print(
        f"{'synchronous':<12} {'raw ev/s':>10} {'end-to-end ev/s':>16} {'ratio':>7}"
        f"   {'store calls only':>16} {'ratio':>7}   end-to-end phases"
    )
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        for mode in args.sync:
            runs = []
            for run in range(args.repeat):
                raw_rate = raw(Path(tmp, f"raw-{mode}-{run}.db"), args.events, args.batch, mode)
                if profiler is not None:
                    profiler.enable()
                rate, phases = end_to_end(
                    Path(tmp, f"e2e-{mode}-{run}.db"), args.events, args.batch, mode
                )
                if profiler is not None:
                    profiler.disable()
                alone = store_only(
                    Path(tmp, f"store-{mode}-{run}.db"), args.events, args.batch, mode
                )
                runs.append((rate / raw_rate, raw_rate, rate, alone, phases))
                for path in Path(tmp).iterdir():
                    path.unlink()
            ratio, raw_rate, rate, alone, phases = statistics.median_low(runs)
            split = ", ".join(f"{k} {v:.2f}s" for k, v in phases.items())
            print(
                f"{mode:<12} {raw_rate:>10,.0f} {rate:>16,.0f} {ratio:>7.0%}"
                f"   {alone:>16,.0f} {alone / raw_rate:>7.0%}   {split}"
            )
    if profiler is not None:
        # BENCH_SORT=cumulative / BENCH_TOP=50 change the profile listing
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats(os.environ.get("BENCH_SORT", "tottime"))
        stats.print_stats(int(os.environ.get("BENCH_TOP", "30")))


if __name__ == "__main__":
    main(sys.argv[1:])

"""PostgreSQL stores: enqueue and drain throughput with 1, 2 and 4 worker
processes, each next to the raw PostgreSQL limit measured in the same run.

    .venv/bin/python bench/bench_postgres.py [--events 5000] [--batch 100]

Throughput: ``--events`` deliveries are enqueued first with
``Dispatcher.submit_many`` in batches of ``--batch`` (timed: the enqueue
rate), then W worker processes, started and connected beforehand, drain them
together with ``Dispatcher.run_once`` and a destination that does nothing. The raw
baseline does the same inserts and updates per batch with plain psycopg and
no library: claim ``--batch`` rows with ``FOR UPDATE SKIP LOCKED``, take their
idempotency keys, mark them completed, mark the rows done and append an audit
row, one statement each on an autocommit connection, so as many transactions
(commits) as the library uses (four per batch), with the same
``synchronous_commit``.

Latency (submit->delivered on an idle queue, across processes) is measured
by ``bench/latency.py``, which this script calls for its last lines.

Each configuration gets its own schema, dropped at the end. Numbers depend
on the machine (cores, disk fsync); the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import psycopg
from common import PG_DSN, NoOp, drain, wait_for_go

DSN = PG_DSN

RAW_SCHEMA = """
CREATE SCHEMA {s};
CREATE TABLE {s}.jobs (
    id text PRIMARY KEY, seq bigserial UNIQUE, payload json NOT NULL, status text NOT NULL,
    attempts int NOT NULL DEFAULT 0, lease_token bigint NOT NULL DEFAULT 0, lease_owner text,
    lease_expires_at timestamptz, result json, updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON {s}.jobs (seq) WHERE status IN ('pending', 'in_flight');
CREATE SEQUENCE {s}.tokens;
CREATE TABLE {s}.keys (key text PRIMARY KEY, state text NOT NULL, fingerprint text,
    result json, locked_until timestamptz, expires_at timestamptz);
CREATE TABLE {s}.audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_id text,
    action text, actor text, started_at timestamptz, finished_at timestamptz, outcome text);
"""
RAW_CLAIM = """
UPDATE {s}.jobs AS t SET status = 'in_flight', attempts = t.attempts + 1,
    lease_token = nextval('{s}.tokens'), lease_owner = %(w)s,
    lease_expires_at = now() + interval '5 minutes', updated_at = now()
FROM (SELECT id FROM {s}.jobs WHERE status = 'pending' ORDER BY seq LIMIT %(n)s
      FOR UPDATE SKIP LOCKED) AS c
WHERE t.id = c.id RETURNING t.id, t.payload::text, t.lease_token"""
RAW_BEGIN = """
INSERT INTO {s}.keys (key, state, fingerprint, locked_until)
SELECT k, 'in_progress', 'fp', now() + interval '5 minutes' FROM unnest(%(keys)s::text[]) AS k
ON CONFLICT (key) DO NOTHING"""
RAW_FINISH = """
UPDATE {s}.keys SET state = 'completed', result = 'null', locked_until = NULL,
    expires_at = now() + interval '30 days' WHERE key = ANY(%(keys)s::text[])"""
RAW_COMPLETE = """
WITH done AS (
    UPDATE {s}.jobs AS t SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL,
        updated_at = now()
    FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS c(id, token)
    WHERE t.id = c.id AND t.status = 'in_flight' AND t.lease_token = c.token RETURNING t.id)
INSERT INTO {s}.audit (job_id, action, actor, started_at, finished_at, outcome)
SELECT id, 'deliver', %(w)s, now(), now(), 'succeeded' FROM done"""


def quoted(schema: str) -> str:
    return f'"{schema}"'


def drop(schema: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {quoted(schema)} CASCADE")


# -- worker processes (roles for common.start) --------------------------------------------


def lib_worker(schema: str, batch: int) -> None:
    from resilient_sync import Dispatcher
    from resilient_sync.stores import open_stores

    queue, idempotency = open_stores(f"{DSN}?schema={schema}")
    dispatcher = Dispatcher(queue, idempotency, [NoOp()], batch_size=batch)
    wait_for_go()
    while not dispatcher.run_once().idle:
        pass
    queue.close()
    idempotency.close()


def raw_worker(schema: str, batch: int) -> None:
    s = quoted(schema)
    worker = f"raw-{os.getpid()}"
    # autocommit: each statement is its own transaction (one commit each), as in the library
    with psycopg.connect(DSN, autocommit=True) as conn:
        wait_for_go()
        while True:
            rows = conn.execute(RAW_CLAIM.format(s=s), {"w": worker, "n": batch}).fetchall()
            if not rows:
                break
            keys = [f"key-{r[0]}" for r in rows]
            conn.execute(RAW_BEGIN.format(s=s), {"keys": keys})
            conn.execute(RAW_FINISH.format(s=s), {"keys": keys})
            conn.execute(
                RAW_COMPLETE.format(s=s),
                {"ids": [r[0] for r in rows], "tokens": [r[2] for r in rows], "w": worker},
            )


# -- the bench process --------------------------------------------------------------------


def lib_throughput(workers: int, events: int, batch: int) -> tuple[float, float]:
    """(enqueue events/s with submit_many in batches of ``batch``, drain events/s)."""
    from common import PAYLOAD

    from resilient_sync import Dispatcher, Event
    from resilient_sync.stores import open_stores

    schema = f"bench_lib_{uuid.uuid4().hex[:8]}"
    queue, idempotency = open_stores(f"{DSN}?schema={schema}")
    try:
        dispatcher = Dispatcher(queue, idempotency, [NoOp()])
        todo = [Event(f"e{i}", "order.paid", dict(PAYLOAD, n=i)) for i in range(events)]
        started = time.perf_counter()
        for first in range(0, events, batch):
            dispatcher.submit_many(todo[first : first + batch])
        enqueued = time.perf_counter() - started
        seconds = drain("bench_postgres:lib_worker", workers, schema=schema, batch=batch)
        done = queue.stats().by_status
        if sum(n for status, n in done.items() if status.value == "succeeded") != events:
            raise SystemExit(f"not all deliveries succeeded: {done}")
        return events / enqueued, events / seconds
    finally:
        queue.close()
        idempotency.close()
        drop(schema)


def raw_throughput(workers: int, events: int, batch: int) -> float:
    schema = f"bench_raw_{uuid.uuid4().hex[:8]}"
    s = quoted(schema)
    try:
        with psycopg.connect(DSN) as conn:
            conn.execute(RAW_SCHEMA.format(s=s))
            conn.execute(
                f"INSERT INTO {s}.jobs (id, payload, status) "
                "SELECT 'e' || i, json_build_object('i', i), 'pending' "
                "FROM generate_series(0, %s - 1) AS i",
                [events],
            )
        seconds = drain("bench_postgres:raw_worker", workers, schema=schema, batch=batch)
        with psycopg.connect(DSN) as conn:
            row = conn.execute(f"SELECT count(*) FROM {s}.jobs WHERE status = 'succeeded'")
            if row.fetchone() != (events,):
                raise SystemExit("raw: not every job was completed")
        return events / seconds
    finally:
        drop(schema)


def main() -> None:
    import latency
    from common import percentile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()

    with psycopg.connect(DSN) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    print(
        f"PostgreSQL {version[0] if version else '?'} at {DSN.split('@')[-1]}, "
        f"synchronous_commit={sync[0] if sync else '?'}, batch {args.batch}, "
        f"{args.events} events, {os.cpu_count()} CPUs"
    )
    print()
    print(
        f"{'throughput (events/s)':<24}{'enqueue':>10}{'library':>10}{'raw PG':>10}"
        f"{'library/raw':>14}"
    )
    for workers in [int(w) for w in args.workers.split(",")]:
        enqueue, lib = lib_throughput(workers, args.events, args.batch)
        raw = raw_throughput(workers, args.events, args.batch)
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        print(
            f"{label:<24}{enqueue:>10,.0f}{lib:>10,.0f}{raw:>10,.0f}{lib / raw:>14.2f}", flush=True
        )
    print()
    lib_ms, raw_ms = latency.postgres(args.samples), latency.postgres_raw(args.samples)
    print(f"{'submit->delivered (ms)':<24}{'library':>10}{'raw PG':>10}{'library/raw':>14}")
    for label, q in (("p50", 50.0), ("p99", 99.0)):
        lib, raw = percentile(lib_ms, q), percentile(raw_ms, q)
        print(f"{label:<24}{lib:>10.2f}{raw:>10.2f}{lib / raw:>14.2f}")
    print(f"({len(lib_ms)} samples each, idle queue, one worker waiting on LISTEN/NOTIFY)")


if __name__ == "__main__":
    main()

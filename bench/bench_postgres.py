"""PostgreSQL stores: throughput with 1, 2 and 4 worker processes, and
submit->delivered latency on an idle queue, each next to the raw PostgreSQL
limit measured in the same run.

    .venv/bin/python bench/bench_postgres.py [--events 5000] [--batch 100]

Throughput: ``--events`` deliveries are enqueued first (not timed), then W
worker processes, started and connected beforehand, drain them together with
``Dispatcher.run_once`` and a destination that does nothing. The raw
baseline does the same inserts and updates per batch with plain psycopg and
no library: claim ``--batch`` rows with ``FOR UPDATE SKIP LOCKED``, take their
idempotency keys, mark them completed, mark the rows done and append an audit
row, one statement each on an autocommit connection, so as many transactions
(commits) as the library uses (four per batch), with the same
``synchronous_commit``.

Latency: one worker runs ``Dispatcher.run_forever`` on an idle queue and
wakes on LISTEN/NOTIFY; the bench submits one event at a time and measures
from the start of ``submit()`` to the moment the destination's ``deliver``
is called (in the worker process; same machine, same wall clock). The raw
baseline is one ``INSERT`` + ``NOTIFY`` statement committed by the bench and a
listening process that claims the row with ``SKIP LOCKED``.

Each configuration gets its own schema, dropped at the end. Numbers depend
on the machine (cores, disk fsync); the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

DSN = os.environ.get("RESILIENT_SYNC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
HERE = os.path.abspath(__file__)

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


# -- worker processes (this file run with --role) --------------------------------------


class Nothing:
    """A destination that does nothing: the library's own cost is measured."""

    name = "pos"

    def deliver(self, event: Any, context: Any) -> None:
        return None


class Announce:
    """Tells the bench (NOTIFY bench_delivered) when ``deliver`` was called."""

    name = "pos"

    def __init__(self) -> None:
        self.conn = psycopg.connect(DSN, autocommit=True)

    def deliver(self, event: Any, context: Any) -> None:
        at = time.time_ns()
        self.conn.execute("SELECT pg_notify('bench_delivered', %s)", [f"{event.id} {at}"])


def wait_for_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go' on stdin")


def lib_worker(schema: str, batch: int) -> None:
    from resilient_sync import Dispatcher
    from resilient_sync.stores import open_stores

    queue, idempotency = open_stores(f"{DSN}?schema={schema}")
    dispatcher = Dispatcher(queue, idempotency, [Nothing()], batch_size=batch)
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


def lib_listener(schema: str) -> None:
    import threading

    from resilient_sync import Dispatcher
    from resilient_sync.stores import PostgresIdempotencyStore, PostgresQueueStore

    queue = PostgresQueueStore(DSN, schema=schema)
    idempotency = PostgresIdempotencyStore(queue.pool, schema=schema)
    dispatcher = Dispatcher(queue, idempotency, [Announce()], poll_interval=1.0)
    stop = threading.Event()

    def stop_on_input() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=stop_on_input, daemon=True).start()
    queue.wait_for_work(0)  # connect the listener before saying ready
    print("ready", flush=True)
    dispatcher.run_forever(stop)
    queue.close()
    idempotency.close()


def raw_listener(schema: str) -> None:
    s = quoted(schema)
    listen = psycopg.connect(DSN, autocommit=True)
    listen.execute(f'LISTEN "raw_{schema}"')
    conn = psycopg.connect(DSN, autocommit=True)
    announce = psycopg.connect(DSN, autocommit=True)
    print("ready", flush=True)
    for _ in listen.notifies():
        rows = conn.execute(RAW_CLAIM.format(s=s), {"w": "raw", "n": 100}).fetchall()
        at = time.time_ns()
        for row in rows:
            if row[1] == '"stop"':
                return
            announce.execute("SELECT pg_notify('bench_delivered', %s)", [f"{row[0]} {at}"])


# -- the bench process --------------------------------------------------------------------


def spawn(role: str, schema: str, batch: int, count: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, HERE, "--role", role, "--schema", schema, "--batch", str(batch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"{role} did not start (said {line!r})")
    return procs


def go(procs: list[subprocess.Popen[str]]) -> float:
    """Release the workers; returns the seconds until all exited."""
    start = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        if p.wait(300) != 0:
            raise SystemExit(f"a worker failed with exit code {p.returncode}")
    return time.perf_counter() - start


def lib_throughput(workers: int, events: int, batch: int) -> float:
    from resilient_sync import Dispatcher, Event
    from resilient_sync.stores import open_stores

    schema = f"bench_lib_{uuid.uuid4().hex[:8]}"
    queue, idempotency = open_stores(f"{DSN}?schema={schema}")
    try:
        dispatcher = Dispatcher(queue, idempotency, [Nothing()])
        for start in range(0, events, 1000):
            chunk = range(start, min(start + 1000, events))
            dispatcher.submit_many([Event(f"e{i}", "customer.updated", {"i": i}) for i in chunk])
        seconds = go(spawn("lib-worker", schema, batch, workers))
        done = queue.stats().by_status
        if sum(n for status, n in done.items() if status.value == "succeeded") != events:
            raise SystemExit(f"not all deliveries succeeded: {done}")
        return events / seconds
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
        seconds = go(spawn("raw-worker", schema, batch, workers))
        with psycopg.connect(DSN) as conn:
            row = conn.execute(f"SELECT count(*) FROM {s}.jobs WHERE status = 'succeeded'")
            if row.fetchone() != (events,):
                raise SystemExit("raw: not every job was completed")
        return events / seconds
    finally:
        drop(schema)


def measure_latency(
    role: str, schema: str, samples: int, submit: Callable[[str], None]
) -> list[float]:
    (proc,) = spawn(role, schema, 1, 1)
    latencies: list[float] = []
    with psycopg.connect(DSN, autocommit=True) as listen:
        listen.execute("LISTEN bench_delivered")
        for i in range(samples + 5):
            time.sleep(0.005)  # an idle queue: the worker is asleep waiting for work
            event_id = f"lat{i}"
            started = time.time_ns()
            submit(event_id)
            for note in listen.notifies(timeout=10):
                got, at = note.payload.split()
                if got == event_id:
                    if i >= 5:  # the first few warm up connections and prepared statements
                        latencies.append((int(at) - started) / 1e6)
                    break
            else:
                raise SystemExit(f"{role}: {event_id} was not delivered within 10 s")
    assert proc.stdin is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    if role == "raw-listener":
        submit("stop")
    proc.wait(30)
    return latencies


def lib_latency(samples: int) -> list[float]:
    from resilient_sync import Dispatcher, Event
    from resilient_sync.stores import open_stores

    schema = f"bench_lat_{uuid.uuid4().hex[:8]}"
    queue, idempotency = open_stores(f"{DSN}?schema={schema}")
    try:
        dispatcher = Dispatcher(queue, idempotency, [Nothing()])

        def submit(event_id: str) -> None:
            dispatcher.submit(Event(event_id, "customer.updated", {"n": 1}))

        return measure_latency("lib-listener", schema, samples, submit)
    finally:
        queue.close()
        idempotency.close()
        drop(schema)


def raw_latency(samples: int) -> list[float]:
    schema = f"bench_rawlat_{uuid.uuid4().hex[:8]}"
    s = quoted(schema)
    with psycopg.connect(DSN) as setup:
        setup.execute(RAW_SCHEMA.format(s=s))
    conn = psycopg.connect(DSN, autocommit=True)

    def submit(event_id: str) -> None:  # one statement: insert and notify, one commit
        payload = '"stop"' if event_id == "stop" else '{"n": 1}'
        conn.execute(
            f"WITH job AS (INSERT INTO {s}.jobs (id, payload, status) "
            "VALUES (%s, %s, 'pending') RETURNING id) "
            "SELECT pg_notify(%s, id) FROM job",
            [event_id, payload, f"raw_{schema}"],
        )

    try:
        return measure_latency("raw-listener", schema, samples, submit)
    finally:
        conn.close()
        drop(schema)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        roles: dict[str, Callable[[], None]] = {
            "lib-worker": lambda: lib_worker(args.schema, args.batch),
            "raw-worker": lambda: raw_worker(args.schema, args.batch),
            "lib-listener": lambda: lib_listener(args.schema),
            "raw-listener": lambda: raw_listener(args.schema),
        }
        roles[args.role]()
        return

    with psycopg.connect(DSN) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    print(
        f"PostgreSQL {version[0] if version else '?'} at {DSN.split('@')[-1]}, "
        f"synchronous_commit={sync[0] if sync else '?'}, batch {args.batch}, "
        f"{args.events} events, {os.cpu_count()} CPUs"
    )
    print()
    print(f"{'throughput (events/s)':<24}{'library':>10}{'raw PG':>10}{'library/raw':>14}")
    for workers in [int(w) for w in args.workers.split(",")]:
        lib = lib_throughput(workers, args.events, args.batch)
        raw = raw_throughput(workers, args.events, args.batch)
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        print(f"{label:<24}{lib:>10,.0f}{raw:>10,.0f}{lib / raw:>14.2f}", flush=True)
    print()
    lib_ms, raw_ms = lib_latency(args.samples), raw_latency(args.samples)
    print(f"{'submit->delivered (ms)':<24}{'library':>10}{'raw PG':>10}{'library/raw':>14}")
    for label, q in (("p50", 50.0), ("p99", 99.0)):
        lib, raw = percentile(lib_ms, q), percentile(raw_ms, q)
        print(f"{label:<24}{lib:>10.2f}{raw:>10.2f}{lib / raw:>14.2f}")
    print(f"({len(lib_ms)} samples each, idle queue, one worker waiting on LISTEN/NOTIFY)")


if __name__ == "__main__":
    main()

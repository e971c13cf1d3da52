"""Idle latency, submit -> delivered: how long an event waits on an idle queue.

- **SQLite** and **PostgreSQL**, across processes: a worker process runs
  ``Dispatcher.run_forever`` on an idle queue; this process submits one event
  at a time with ``Dispatcher.submit`` on its own stores. A sample is the
  time from just before ``submit()`` to the moment the worker's destination
  is called (``time.time_ns()`` in both processes: same machine, same clock;
  the worker writes ``<event id> <ns>`` to its stdout). Between samples the
  bench sleeps a random time (up to one poll interval more than 5 ms), so a
  submit lands anywhere in the worker's idle wait.
- SQLite workers wake on a submit through ``SQLiteQueueStore.wait_for_work``
  (a FIFO per waiting worker beside the database file); ``poll_interval``,
  the fallback wait, is still the measurement's parameter and shown in each
  row (the library's default is 1 s), to show that it no longer sets the
  latency. PostgreSQL workers wake on LISTEN/NOTIFY; the raw reference is one
  ``INSERT`` + ``NOTIFY`` statement and a listener that claims the row with
  ``SKIP LOCKED``, no library.
- **memory**, in one process: ``run_forever`` in a thread, ``submit`` from
  the main thread; the raw reference is a ``queue.Queue`` handed between
  two threads.

The first samples of each run (5, or 1 with a poll interval of 0.1 s or more)
warm up connections and are dropped.

    .venv/bin/python bench/latency.py [--samples 100] [--poll-interval 1.0]
"""

from __future__ import annotations

import argparse
import queue as queues
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import PG_DSN, NoOp, percentile, pg_schema, start


def warm_up(poll_interval: float) -> int:
    """Samples dropped first: they warm up connections and prepared statements
    (one is enough when each sample waits a slow poll anyway)."""
    return 1 if poll_interval >= 0.1 else 5


class Announce:
    """Tells the bench when ``deliver`` was called: ``<event id> <ns>`` on stdout."""

    name = "noop"

    def deliver(self, event: Any, context: Any) -> None:
        sys.stdout.write(f"{event.id} {time.time_ns()}\n")
        sys.stdout.flush()


# -- worker processes (roles for common.start) --------------------------------------------


def lib_worker(url: str, poll_interval: float) -> None:
    """``run_forever`` on ``url`` until "stop" (or EOF) on stdin."""
    from resilient_sync import Dispatcher
    from resilient_sync.stores import open_stores

    queue, idempotency = open_stores(url)
    dispatcher = Dispatcher(queue, idempotency, [Announce()], poll_interval=poll_interval)
    stop = threading.Event()

    def stop_on_input() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=stop_on_input, daemon=True).start()
    waiter = getattr(queue, "wait_for_work", None)
    if waiter is not None:
        waiter(0)  # connect the listener before saying ready
    print("ready", flush=True)
    dispatcher.run_forever(stop)
    queue.close()
    idempotency.close()


def raw_pg_listener(schema: str) -> None:
    import psycopg
    from bench_postgres import RAW_CLAIM, quoted

    s = quoted(schema)
    listen = psycopg.connect(PG_DSN, autocommit=True)
    listen.execute(f'LISTEN "raw_{schema}"')
    conn = psycopg.connect(PG_DSN, autocommit=True)
    print("ready", flush=True)
    for _ in listen.notifies():
        rows = conn.execute(RAW_CLAIM.format(s=s), {"w": "raw", "n": 100}).fetchall()
        at = time.time_ns()
        for row in rows:
            if row[1] == '"stop"':
                return
            sys.stdout.write(f"{row[0]} {at}\n")
        sys.stdout.flush()


# -- measuring ------------------------------------------------------------------------------


def _gap(poll_interval: float) -> Callable[[], float]:
    rng = random.Random(7)
    return lambda: 0.005 + rng.uniform(0, poll_interval)


def across_processes(
    proc: subprocess.Popen[str],
    submit: Callable[[str], None],
    samples: int,
    gap: Callable[[], float],
    warm: int,
) -> list[float]:
    """Milliseconds from submit to delivery, for events delivered by ``proc``."""
    delivered: queues.Queue[tuple[str, int]] = queues.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event_id, at = line.split()
            delivered.put((event_id, int(at)))

    threading.Thread(target=read, daemon=True).start()
    return collect(submit, delivered, samples, gap, warm)


def collect(
    submit: Callable[[str], None],
    delivered: queues.Queue[tuple[str, int]],
    samples: int,
    gap: Callable[[], float],
    warm: int,
) -> list[float]:
    """Submit one event at a time; milliseconds until it shows up in ``delivered``."""
    latencies: list[float] = []
    for i in range(samples + warm):
        time.sleep(gap())
        event_id = f"lat{i}"
        started = time.time_ns()
        submit(event_id)
        while True:
            try:
                got, at = delivered.get(timeout=30)
            except queues.Empty:
                raise SystemExit(f"{event_id} was not delivered within 30 s") from None
            if got == event_id:
                break
        if i >= warm:
            latencies.append((at - started) / 1e6)
    return latencies


def _lib(
    url: str, samples: int, poll_interval: float, gap: Callable[[], float], warm: int
) -> list[float]:
    from resilient_sync import Dispatcher, Event
    from resilient_sync.stores import open_stores

    queue, idempotency = open_stores(url)  # creates the schema before the worker opens it
    (proc,) = start("latency:lib_worker", url=url, poll_interval=poll_interval)
    try:
        dispatcher = Dispatcher(queue, idempotency, [NoOp()])

        def submit(event_id: str) -> None:
            dispatcher.submit(Event(event_id, "order.paid", {"n": 1}))

        return across_processes(proc, submit, samples, gap, warm)
    finally:
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(60)
        queue.close()
        idempotency.close()


def sqlite(samples: int, poll_interval: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        url = f"sqlite:///{Path(tmp, 'sync.db')}"
        return _lib(url, samples, poll_interval, _gap(poll_interval), warm_up(poll_interval))


def postgres(samples: int, poll_interval: float = 1.0) -> list[float]:
    with pg_schema("lat") as schema:
        return _lib(f"{PG_DSN}?schema={schema}", samples, poll_interval, _gap(0.005), warm_up(0))


def postgres_raw(samples: int) -> list[float]:
    import psycopg
    from bench_postgres import RAW_SCHEMA, quoted

    with pg_schema("rawlat") as schema:
        s = quoted(schema)
        with psycopg.connect(PG_DSN) as setup:
            setup.execute(RAW_SCHEMA.format(s=s))
        conn = psycopg.connect(PG_DSN, autocommit=True)
        (proc,) = start("latency:raw_pg_listener", schema=schema)

        def submit(event_id: str) -> None:  # one statement: insert and notify, one commit
            payload = '"stop"' if event_id == "stop" else '{"n": 1}'
            conn.execute(
                f"WITH job AS (INSERT INTO {s}.jobs (id, payload, status) "
                "VALUES (%s, %s, 'pending') RETURNING id) "
                "SELECT pg_notify(%s, id) FROM job",
                [event_id, payload, f"raw_{schema}"],
            )

        try:
            return across_processes(proc, submit, samples, _gap(0.005), warm_up(0))
        finally:
            submit("stop")
            proc.wait(60)
            conn.close()


def memory(samples: int, poll_interval: float) -> list[float]:
    """In one process: ``run_forever`` in a thread on the memory stores."""
    from resilient_sync import Dispatcher, Event
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore

    delivered: queues.Queue[tuple[str, int]] = queues.Queue()

    class Record:
        name = "noop"

        def deliver(self, event: Any, context: Any) -> None:
            delivered.put((event.id, time.time_ns()))

    dispatcher = Dispatcher(
        MemoryQueueStore(), MemoryIdempotencyStore(), [Record()], poll_interval=poll_interval
    )
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run_forever, args=(stop,))
    thread.start()

    def submit(event_id: str) -> None:
        dispatcher.submit(Event(event_id, "order.paid", {"n": 1}))

    try:
        return collect(submit, delivered, samples, _gap(poll_interval), warm_up(poll_interval))
    finally:
        stop.set()
        thread.join(poll_interval + 5)


def memory_raw(samples: int) -> list[float]:
    """The floor in one process: a ``queue.Queue`` handed to a waiting thread."""
    handoff: queues.Queue[str] = queues.Queue()
    delivered: queues.Queue[tuple[str, int]] = queues.Queue()

    def consume() -> None:
        while (item := handoff.get()) != "stop":
            delivered.put((item, time.time_ns()))

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        return collect(handoff.put, delivered, samples, _gap(0.005), warm_up(0))
    finally:
        handoff.put("stop")
        thread.join(5)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    runs = {
        f"memory (poll_interval={args.poll_interval:g}s)": memory(args.samples, args.poll_interval),
        "memory raw queue.Queue": memory_raw(args.samples),
        f"SQLite (poll_interval={args.poll_interval:g}s)": sqlite(args.samples, args.poll_interval),
        "PostgreSQL (LISTEN/NOTIFY)": postgres(args.samples),
        "PostgreSQL raw INSERT+NOTIFY": postgres_raw(args.samples),
    }
    print(f"{'submit->delivered (ms)':<36}{'p50':>10}{'p99':>10}")
    for label, values in runs.items():
        s = summary(values)
        print(f"{label:<36}{s['p50']:>10.2f}{s['p99']:>10.2f}")


if __name__ == "__main__":
    main()

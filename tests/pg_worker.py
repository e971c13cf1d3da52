"""One worker process for tests/test_postgres_workers.py (run as a script).

    python tests/pg_worker.py DSN SCHEMA NAME EXPECTED BATCH_SIZE

Runs ``Dispatcher.run_forever`` (waking on LISTEN/NOTIFY) against the schema
until ``EXPECTED`` deliveries were logged by all workers together. Its
destination writes one row per call to ``<schema>.delivery_log`` with the
worker's name and the wall-clock start and end of the call; the log's
identity column orders the calls of every worker on one timeline. Prints the
run report as JSON; exits 2 if the work was not done within the deadline.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import psycopg

from resilient_sync import DeliveryContext, Dispatcher, Event
from resilient_sync.stores._postgres import PostgresIdempotencyStore, PostgresQueueStore

DEADLINE = 90.0


class LoggingDestination:
    """Records every call in the database (its own connection, autocommit)."""

    name = "pos"

    def __init__(self, dsn: str, schema: str, worker: str) -> None:
        self.worker = worker
        self.insert = (
            f'INSERT INTO "{schema}".delivery_log '
            "(delivery_id, event_id, ordering_key, worker, attempt, started_ns, finished_ns) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET synchronous_commit = off")  # a log, not the queue

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        started = time.time_ns()
        self.conn.execute(
            self.insert,
            [
                context.delivery_id,
                event.id,
                event.ordering_key,
                self.worker,
                context.attempt,
                started,
                time.time_ns(),
            ],
        )
        return {"worker": self.worker}


def main(dsn: str, schema: str, name: str, expected: int, batch_size: int) -> int:
    queue = PostgresQueueStore(dsn, schema=schema)
    idempotency = PostgresIdempotencyStore(queue.pool, schema=schema)
    destination = LoggingDestination(dsn, schema, name)
    dispatcher = Dispatcher(
        queue, idempotency, [destination], batch_size=batch_size, worker_id=name, poll_interval=0.5
    )
    stop = threading.Event()
    done = threading.Event()

    def watch() -> None:
        count = f'SELECT count(*) FROM "{schema}".delivery_log'
        with psycopg.connect(dsn, autocommit=True) as conn:
            give_up = time.monotonic() + DEADLINE
            while time.monotonic() < give_up:
                row = conn.execute(count).fetchone()
                if row is not None and row[0] >= expected:
                    done.set()
                    break
                time.sleep(0.1)
        stop.set()  # run_forever notices within poll_interval

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    report = dispatcher.run_forever(stop)
    watcher.join()
    queue.close()
    idempotency.close()
    destination.conn.close()
    print(json.dumps({"worker": name, "claimed": report.claimed, "succeeded": report.succeeded}))
    return 0 if done.is_set() else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))

"""Processes for tests/test_sqlite_crash.py (run as scripts, killed with SIGKILL).

    python sqlite_crash_worker.py submitter DIR TOTAL
    python sqlite_crash_worker.py worker DIR NAME
    python sqlite_crash_worker.py claimer DIR NAME

DIR holds ``queue.db`` (the queue and idempotency stores), ``effects.db`` (the
remote system: one row per applied effect) and ``deliveries.log`` (one line
per delivery the remote system received, appended with O_APPEND).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from resilient_sync import (
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    Event,
    RetryableError,
    RetryPolicy,
    SystemClock,
)
from resilient_sync.stores import Completion, SQLiteQueueStore, open_stores

LEASE = 2.0  # seconds: a killed worker's deliveries are claimed again after it
KEYS = 40  # ordering keys (customers)


def event(number: int) -> Event:
    """Event ``number`` of the crash test: an order of customer ``number % KEYS``."""
    return Event(f"e{number}", "order.paid", {"n": number}, ordering_key=f"c{number % KEYS}")


class NumberedSource:
    """Events 0 .. total-1, in pages; the cursor is the next number."""

    name = "orders"

    def __init__(self, total: int) -> None:
        self.total = total

    def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
        start = int(cursor or 0)
        stop = min(self.total, start + limit)
        time.sleep(0.05)  # spread the submissions over the run (and the kills)
        return [event(n) for n in range(start, stop)], str(stop)


class RemoteSystem:
    """A destination that dedupes by idempotency key, like a well-behaved API.

    Every call is logged (O_APPEND, one line); the effect is applied in its
    own transaction only if the key was never applied before. Now and then it
    fails before doing anything (a transient outage).
    """

    name = "pos"

    def __init__(self, directory: Path) -> None:
        self.log = os.open(directory / "deliveries.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self.db = sqlite3.connect(directory / "effects.db", isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS effects ("
            " applied INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,"
            " event_id TEXT NOT NULL, customer TEXT NOT NULL, n INTEGER NOT NULL)"
        )

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        if random.random() < 0.03:
            raise RetryableError("POS briefly unavailable")
        os.write(self.log, f"{context.idempotency_key} {event.id}\n".encode())
        self.db.execute("BEGIN IMMEDIATE")
        seen = self.db.execute(
            "SELECT applied FROM effects WHERE key = ?", (context.idempotency_key,)
        ).fetchone()
        if seen is None:
            self.db.execute(
                "INSERT INTO effects (key, event_id, customer, n) VALUES (?, ?, ?, ?)",
                (context.idempotency_key, event.id, event.ordering_key, event.payload["n"]),
            )
        self.db.execute("COMMIT")
        return {"duplicate": seen is not None}


def submitter(directory: Path, total: int) -> None:
    queue, idempotency = open_stores(f"sqlite:///{directory / 'queue.db'}")
    dispatcher = Dispatcher(queue, idempotency, [RemoteSystem(directory)])
    dispatcher.pull(NumberedSource(total), limit=50)


def worker(directory: Path, name: str) -> None:
    queue, idempotency = open_stores(f"sqlite:///{directory / 'queue.db'}")
    dispatcher = Dispatcher(
        queue,
        idempotency,
        [RemoteSystem(directory)],
        retry=RetryPolicy(max_attempts=1000, initial_delay=0.05, max_delay=0.2, deadline=None),
        batch_size=10,
        lease=LEASE,
        worker_id=name,
    )
    while True:
        if dispatcher.run_once().idle:
            time.sleep(0.02)


def claimer(directory: Path, name: str) -> None:
    """Claim, hold, then complete or hand back, until nothing is left; report."""
    rng = random.Random(name)
    queue = SQLiteQueueStore(directory / "queue.db")
    holds = sqlite3.connect(directory / "holds.db", isolation_level=None, timeout=30)
    holds.execute("PRAGMA journal_mode=WAL")
    report: dict[str, Any] = {"claims": [], "violations": [], "refused": 0, "succeeded": 0}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = queue_now()
        claimed = queue.claim(
            now=now, limit=rng.randint(1, 8), lease_until=now + timedelta(hours=1), worker=name
        )
        if not claimed:
            if queue.stats().by_status.get(DeliveryStatus.SUCCEEDED, 0) == queue.stats().total:
                break
            time.sleep(0.002)
            continue
        for d in claimed:
            report["claims"].append([d.id, d.lease_token])
            try:  # nobody else may hold it now
                holds.execute("INSERT INTO holds (delivery_id, holder) VALUES (?, ?)", (d.id, name))
            except sqlite3.IntegrityError:
                other = holds.execute(
                    "SELECT holder FROM holds WHERE delivery_id = ?", (d.id,)
                ).fetchone()
                report["violations"].append([d.id, other])
        time.sleep(rng.random() * 0.003)
        holds.executemany(
            "DELETE FROM holds WHERE delivery_id = ? AND holder = ?",
            [(d.id, name) for d in claimed],
        )
        outcomes = [
            Completion(
                delivery_id=d.id,
                lease_token=d.lease_token,
                status=DeliveryStatus.SUCCEEDED,
                finished_at=queue_now(),
            )
            if rng.random() < 0.7
            else Completion(
                delivery_id=d.id,
                lease_token=d.lease_token,
                status=DeliveryStatus.PENDING,
                finished_at=queue_now(),
                next_attempt_at=queue_now(),
                count_attempt=False,
            )
            for d in claimed
        ]
        for outcome, ok in zip(outcomes, queue.complete(outcomes), strict=True):
            if not ok:
                report["refused"] += 1
            elif outcome.status is DeliveryStatus.SUCCEEDED:
                report["succeeded"] += 1
    print(json.dumps(report))


def queue_now() -> datetime:
    return SystemClock().now()


def main(argv: list[str]) -> None:
    role, directory = argv[0], Path(argv[1])
    if role == "submitter":
        submitter(directory, int(argv[2]))
    elif role == "worker":
        worker(directory, argv[2])
    elif role == "claimer":
        claimer(directory, argv[2])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

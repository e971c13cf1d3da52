"""huey's ``SqliteHuey``: enqueue N tasks, then let its consumer run them.

Configured as huey's documentation shows it, with its defaults: WAL, the
SQLite library's default ``synchronous`` (``fsync=None`` leaves it alone:
FULL with this build, checked at run time), one worker thread (the
consumer's default). huey has no batch enqueue: each task call is one
committed insert; each dequeue is one ``BEGIN EXCLUSIVE`` transaction that
selects and deletes the row. The task does nothing and returns None (no
result is stored).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from pathlib import Path
from typing import Any

from huey import SqliteHuey

SETTINGS = "SqliteHuey defaults (WAL, synchronous=SQLite default), consumer: 1 worker thread"


def run(path: Path, total: int, payloads: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds to enqueue ``total`` tasks, and for the consumer to run them all."""
    huey = SqliteHuey("bench", filename=str(path))
    count = itertools.count(1)
    done = threading.Event()

    @huey.task()
    def noop(payload: dict[str, Any]) -> None:
        if next(count) == total:
            done.set()

    started = time.perf_counter()
    for payload in payloads:
        noop(payload)
    enqueued = time.perf_counter() - started
    if huey.pending_count() != total:
        raise SystemExit(f"huey: {huey.pending_count()} tasks queued, expected {total}")

    consumer = huey.create_consumer(workers=1, worker_type="thread", periodic=False)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started = time.perf_counter()
    consumer.start()  # installs signal handlers: put ours back afterwards
    try:
        if not done.wait(timeout=600):
            raise SystemExit("huey: the consumer did not finish in 600 s")
        processed = time.perf_counter() - started
    finally:
        consumer.stop(graceful=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if huey.pending_count() != 0:
        raise SystemExit("huey: tasks left in the queue")
    huey.storage.close()
    return {"enqueue_s": enqueued, "process_s": processed}

"""persist-queue's ``SQLiteAckQueue``: put N items, then get and ack each.

Its defaults: WAL, the SQLite library's default ``synchronous`` (FULL with
this build), ``auto_commit=True`` (the ack queue refuses anything else), so
each ``put``, ``get`` (marks the row unacked) and ``ack`` is one committed
transaction. Acked rows stay in the table, as they do by default. There is
no batch put.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from persistqueue import Empty, SQLiteAckQueue

SETTINGS = "SQLiteAckQueue defaults (WAL, synchronous=SQLite default, auto_commit=True)"


def run(path: Path, total: int, payloads: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds to put ``total`` items, and to get and ack them all."""
    queue = SQLiteAckQueue(str(path), multithreading=False)
    started = time.perf_counter()
    for payload in payloads:
        queue.put(payload)
    enqueued = time.perf_counter() - started
    done = 0
    started = time.perf_counter()
    while True:
        try:
            item = queue.get(block=False)
        except Empty:
            break
        queue.ack(item)  # delivered to a no-op
        done += 1
    processed = time.perf_counter() - started
    if done != total or queue.acked_count() != total:
        raise SystemExit(f"persist-queue: {done} processed, {queue.acked_count()} acked")
    queue.close()
    return {"enqueue_s": enqueued, "process_s": processed}

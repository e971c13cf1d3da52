"""Worker memory: the RSS of a worker process as it drains N events.

The queue is filled first (``submit_many``, batches of 1,000, in this
process); then one worker process (``Dispatcher(batch_size=100).run_once``
until idle, a no-op destination) reports its resident set size (psutil)
after opening the stores, after its first batch ("before"), every tenth of
the way, and at the end ("after"). A flat worker's RSS does not grow with
the number of events processed: the target is after <= 1.10 x before.

    .venv/bin/python bench/rss.py [--events 100000] [--stores sqlite,postgres]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import psutil
from common import PAYLOAD, PG_DSN, NoOp, go, pg_schema, say_result, start, wait_for_go

from resilient_sync import Dispatcher, Event
from resilient_sync.stores import open_stores

MIB = 1024 * 1024


def worker(url: str, total: int) -> None:
    """A role for ``common.start``: drain the queue at ``url``, reporting RSS in MiB."""
    process = psutil.Process()
    queue, idempotency = open_stores(url)
    dispatcher = Dispatcher(queue, idempotency, [NoOp()], batch_size=100)
    rss: dict[int, float] = {}
    opened = process.memory_info().rss / MIB
    wait_for_go()
    done = 0
    step = max(100, total // 10)
    while True:
        report = dispatcher.run_once()
        if report.idle:
            break
        done += report.succeeded
        if done == 100 or done % step == 0:
            rss[done] = process.memory_info().rss / MIB
    rss[done] = process.memory_info().rss / MIB
    queue.close()
    idempotency.close()
    say_result({"opened": opened, "processed": done, "rss_mib": rss})


def measure(url: str, total: int) -> dict[str, Any]:
    queue, idempotency = open_stores(url)
    try:
        dispatcher = Dispatcher(queue, idempotency, [NoOp()])
        for first in range(0, total, 1000):
            dispatcher.submit_many(
                Event(f"order-{i}", "order.paid", dict(PAYLOAD, n=i))
                for i in range(first, min(total, first + 1000))
            )
        seconds, (result,) = go(start("rss:worker", url=url, total=total))
    finally:
        queue.close()
        idempotency.close()
    if result["processed"] != total:
        raise SystemExit(f"worker processed {result['processed']} of {total}")
    series = {int(k): v for k, v in result["rss_mib"].items()}
    return {
        "opened_mib": result["opened"],
        "before_mib": series[100],
        "after_mib": series[total],
        "series_mib": series,
        "drain_s": seconds,
    }


def sqlite(total: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        return measure(f"sqlite:///{Path(tmp, 'sync.db')}", total)


def postgres(total: int) -> dict[str, Any]:
    with pg_schema("rss") as schema:
        return measure(f"{PG_DSN}?schema={schema}", total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    for store in args.stores.split(","):
        result = {"sqlite": sqlite, "postgres": postgres}[store](args.events)
        print(
            f"{store:<9} opened {result['opened_mib']:.1f} MiB, after the first batch "
            f"{result['before_mib']:.1f} MiB, after {args.events:,} "
            f"{result['after_mib']:.1f} MiB ({result['after_mib'] / result['before_mib']:.2f}x)"
        )
        print("          " + ", ".join(f"{k:,}: {v:.1f}" for k, v in result["series_mib"].items()))


if __name__ == "__main__":
    main()

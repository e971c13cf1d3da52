"""The library's own work per delivery, on the memory stores.

N events (built beforehand: that is the caller's work) are submitted with
``Dispatcher.submit_many`` in batches of 100, then ``run_until_idle``
delivers them to a destination that does nothing: no I/O anywhere, so the
time is the library's (validation, ids, keys, fingerprints, the flow, the
idempotency records, audit records, the store's bookkeeping). Reported in
microseconds per delivery, the median of ``--repeat`` runs, at 1k and 100k
events (a flat library costs the same at both).

    .venv/bin/python bench/overhead.py [--sizes 1000,100000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import sys
import time

from common import PAYLOAD, NoOp

from resilient_sync import Dispatcher, Event
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore


def once(total: int, profiler: cProfile.Profile | None = None) -> float:
    """Microseconds per delivery for ``total`` events, submit to done."""
    dispatcher = Dispatcher(MemoryQueueStore(), MemoryIdempotencyStore(), [NoOp()])
    events = [Event(f"order-{i}", "order.paid", dict(PAYLOAD, n=i)) for i in range(total)]
    gc.collect()
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    for first in range(0, total, 100):
        dispatcher.submit_many(events[first : first + 100])
    report = dispatcher.run_until_idle()
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    assert report.succeeded == total, report
    return elapsed / total * 1e6


def run(sizes: list[int], repeat: int) -> dict[int, dict[str, object]]:
    out: dict[int, dict[str, object]] = {}
    for size in sizes:
        runs = [once(size) for _ in range(repeat)]
        out[size] = {"us_per_delivery": statistics.median_low(runs), "runs": runs}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the largest size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for size, result in run(sizes, args.repeat).items():
        print(f"{size:>9,} events: {result['us_per_delivery']:8.1f} us/delivery")
    if args.profile:
        profiler = cProfile.Profile()
        once(max(sizes), profiler)
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()

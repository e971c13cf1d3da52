"""The library's own work per delivery, on the memory stores.

N events (built beforehand: that is the caller's work) are submitted with
``Dispatcher.submit_many`` in batches of 100, then ``run_until_idle``
delivers them to a destination that does nothing: no I/O anywhere, so the
time is the library's (validation, ids, keys, fingerprints, the flow, the
idempotency records, audit records, the store's bookkeeping). Reported in
microseconds per delivery, the median of ``--repeat`` runs, at 1k and 100k
events (a flat library costs the same at both).

``--floor`` also times, one by one, the operations any implementation of
the contract does per delivery whatever its bookkeeping (see ``floor``), and
prints their sum next to the figure at the first size: what is left between
the two is the library's bookkeeping (stores, flow, locks, report).

    .venv/bin/python bench/overhead.py [--sizes 1000,100000] [--repeat 3] [--profile] [--floor]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

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


def floor_operations() -> dict[str, tuple[int, Callable[[], Any]]]:
    """What the contract makes every delivery cost, whatever the bookkeeping
    around it: per name, how many times a delivery needs it and the call.

    - ``check_event``: ``submit()`` checks the ids and the payload (naming
      the field that is wrong) and keeps its own copy of the payload;
    - ``new_id``, ``base_key``: the delivery's id, and its idempotency key
      derived from the event id and the destination (stable everywhere);
    - ``event_to_json``: the store's copy of the event (the text a SQL store
      writes, and the memory store keeps, so that nobody changes the queue
      by changing what they hold; a deep copy costs about the same);
    - ``fingerprint``: the hash of type and payload the idempotency store
      compares, so a reused key with another payload is caught;
    - ``event_from_json``: the destination's own copy of the event;
    - the values the protocols hand over: the ``Delivery`` ``submit()``
      returns and the one ``claim`` hands out, the ``IdempotencyRecord`` of
      ``begin``, the ``DeliveryContext`` the destination gets, the
      ``Completion`` and its ``Attempt`` (the audit record);
    - three clock readings: the submit time, the attempt's start and end.

    Left out: every lock, look-up, heap, counter, generator step and report,
    so the sum is a floor no implementation of these promises goes under
    (on CPython, on this machine).
    """
    from resilient_sync import Attempt, Delivery, DeliveryStatus
    from resilient_sync._core import base_key, new_id
    from resilient_sync._json import check_event, event_from_json, event_to_json, fingerprint
    from resilient_sync._model import (
        Completion,
        DeliveryContext,
        IdempotencyRecord,
        IdempotencyState,
    )

    submitted = Event("order-1", "order.paid", dict(PAYLOAD, n=1))  # the caller's
    event = check_event(submitted)
    text = event_to_json(event)
    now = datetime.now(timezone.utc)

    def delivery() -> Delivery:
        return Delivery(
            id="0" * 32,
            event=event,
            destination="noop",
            status=DeliveryStatus.PENDING,
            idempotency_key="k",
            created_at=now,
            updated_at=now,
        )

    def attempt() -> Attempt:
        return Attempt(
            delivery_id="0" * 32,
            destination="noop",
            action="deliver",
            actor="worker:w",
            started_at=now,
            finished_at=now,
            number=1,
            outcome=DeliveryStatus.SUCCEEDED,
        )

    return {
        "check_event": (1, lambda: check_event(submitted)),
        "new_id": (1, new_id),
        "base_key": (1, lambda: base_key(event, "noop")),
        "event_to_json": (1, lambda: event_to_json(event)),
        "fingerprint": (1, lambda: fingerprint(event)),
        "event_from_json": (1, lambda: event_from_json(text)),
        "Delivery": (2, delivery),
        "IdempotencyRecord": (
            1,
            lambda: IdempotencyRecord(
                key="k", state=IdempotencyState.NEW, fingerprint="f", locked_until=now
            ),
        ),
        "DeliveryContext": (
            1,
            lambda: DeliveryContext(
                delivery_id="0" * 32, destination="noop", idempotency_key="k", attempt=1
            ),
        ),
        "Completion": (
            1,
            lambda: Completion(
                delivery_id="0" * 32,
                lease_token=1,
                status=DeliveryStatus.SUCCEEDED,
                finished_at=now,
                audit=(),
            ),
        ),
        "Attempt": (1, attempt),
        "clock reading": (3, lambda: datetime.now(timezone.utc)),
    }


def floor(repeat: int = 5, number: int = 20000) -> dict[str, float]:
    """Microseconds per delivery of each operation of ``floor_operations``
    (the best of ``repeat`` timings, times the count a delivery needs)."""
    out: dict[str, float] = {}
    for name, (times, call) in floor_operations().items():
        best = min(timeit.repeat(call, number=number, repeat=repeat)) / number
        out[name] = best * times * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the largest size")
    parser.add_argument(
        "--floor", action="store_true", help="time the operations every delivery needs, alone"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = run(sizes, args.repeat)
    for size, result in results.items():
        print(f"{size:>9,} events: {result['us_per_delivery']:8.1f} us/delivery")
    if args.floor:
        parts = floor()
        for name, cost in parts.items():
            print(f"  {name:<20}{cost:6.2f} us")
        total = sum(parts.values())
        ours = float(results[sizes[0]]["us_per_delivery"])  # type: ignore[arg-type]
        print(
            f"floor: {total:.1f} us/delivery; the library at {sizes[0]:,} events: "
            f"{ours:.1f} us ({ours / total:.2f}x the floor)"
        )
    if args.profile:
        profiler = cProfile.Profile()
        once(max(sizes), profiler)
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()

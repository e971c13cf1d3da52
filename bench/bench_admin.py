"""Render times of the admin panel's pages at 1,000 and 100,000 deliveries,
on SQLite and PostgreSQL: the overview and the deliveries list should cost the
same however long the history is (paged queries, indexes, counters; no full
scans).

    .venv/bin/python bench/bench_admin.py [--sizes 1000 100000] [--repeat 15]
                                          [--backends sqlite postgres]

For each backend and size, a fresh queue is built fast: the history is
submitted with ``Dispatcher.submit_many`` in batches of 5,000, then marked
delivered in bulk with one SQL ``UPDATE`` in the store's own tables (the
stores' triggers keep their counters), spread over the last 30 days, with
one ``deliver`` audit record each (and a failed attempt before it for 1 %);
PostgreSQL then gets the ``VACUUM ANALYZE`` autovacuum would give it.
Then the same live part on every size goes through a real dispatcher: 40
events, a few of which fail (needs action in five categories, a paused
destination, a waiting delivery), so every section of the overview has
something to show.

Each page is requested through the ASGI interface (httpx.ASGITransport, in
process, signed in as an operator) ``--repeat`` times after three warm-up
requests; the median is printed, with the ratio of the largest size to the
smallest (the target: under 2x). Filters that match few rows of a long
history (a rare destination on SQLite, an event type, a text search) walk
it until a page is full: their times are printed too, outside the target.

``RESILIENT_SYNC_BENCH_PG`` names the PostgreSQL server (default
``postgresql://postgres@127.0.0.1:5432/test``); each run gets its own schema,
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from resilient_sync import (
    DataFormatError,
    Dispatcher,
    DuplicateError,
    Event,
    MappingError,
    PermissionDeniedError,
    RetryableError,
    RetryPolicy,
)
from resilient_sync.admin import Login, create_app
from resilient_sync.stores import open_stores
from resilient_sync.testing import FlakyDestination

DSN = os.environ.get("RESILIENT_SYNC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BATCH = 5_000
LIVE = 40
PAGES = {
    "overview": "/",
    "list": "/deliveries",
    "sync failed": "/deliveries?status=needs_action",
    "list, 2nd page": None,  # the cursor of the first page, filled in per queue
}
#: Filters that match few rows of a long history, and walk it in submission
#: order until a page is full (no index serves them): shown, not in the target.
RARE = {
    "destination crm": "/deliveries?destination=crm",
    "event type": "/deliveries?type=customer.created",
    "text search": "/deliveries?q=l3%40example.com",
}


def history(count: int) -> Iterator[list[Event]]:
    for start in range(0, count, BATCH):
        yield [
            Event(
                f"order-{n}",
                "order.created",
                {"order": f"#{100000 + n}", "email": f"c{n % 9973}@example.com", "total": n % 500},
            )
            for n in range(start, min(start + BATCH, count))
        ]


def live_part(queue: Any, idempotency: Any) -> None:
    """40 events of today through a real dispatcher; a few fail."""
    fails: dict[str, list[Exception]] = {
        "live-1": [DataFormatError("phone is invalid", field="phone")],
        "live-2": [MappingError("unknown SKU 'TEE-XXL'", field="lines[0].sku")],
        "live-3": [RetryableError("POS down (HTTP 503)")] * 2,
        "live-4": [DuplicateError("email taken", field="email", details={"existing": {"id": 7}})],
        "live-5": [RetryableError("POS down (HTTP 503)")],
    }
    pos = FlakyDestination("pos", per_event=fails)
    crm = FlakyDestination("crm", per_event={"live-6": [PermissionDeniedError("token revoked")]})
    dispatcher = Dispatcher(
        queue, idempotency, [pos, crm], retry=RetryPolicy(max_attempts=1, jitter=False)
    )
    events = [
        Event(f"live-{n}", "customer.created", {"email": f"l{n}@example.com", "phone": "+3161"})
        for n in range(LIVE)
    ]
    dispatcher.submit_many(events, to="pos")
    dispatcher.submit_many(events[:8], to="crm")
    dispatcher.run_until_idle()


def submit(queue: Any, idempotency: Any, count: int) -> None:
    dispatcher = Dispatcher(queue, idempotency, [FlakyDestination("pos")])
    for events in history(count):
        dispatcher.submit_many(events, to="pos")


# -- SQLite ---------------------------------------------------------------------------

SQLITE_DONE = """
UPDATE resilient_sync_deliveries
SET status = 'succeeded', due_at = NULL, next_attempt_at = NULL, attempts = 1,
    result = '{"remote_id": "r"}',
    created_at = :now - (:top - seq) * :step,
    updated_at = :now - (:top - seq) * :step + 1000000
WHERE status = 'pending'
"""
SQLITE_AUDIT = """
INSERT INTO resilient_sync_audit (delivery_id, delivery_seq, destination, action, actor,
    started_at, finished_at, number, outcome, reason, error, error_category)
SELECT id, seq, destination, 'deliver', 'worker:bench', updated_at - 500000, updated_at, 1,
       CASE WHEN :failed THEN NULL ELSE 'succeeded' END,
       CASE WHEN :failed THEN 'POS down (HTTP 503)' END,
       CASE WHEN :failed THEN '{"category":"transient","message":"POS down (HTTP 503)"}' END,
       CASE WHEN :failed THEN 'transient' END
FROM resilient_sync_deliveries
WHERE status = 'succeeded' AND (NOT :failed OR seq % 100 = 0)
ORDER BY seq
"""


@contextmanager
def sqlite_queue(count: int) -> Iterator[tuple[Any, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "admin.db"
        queue, idempotency = open_stores(f"sqlite:///{path}", synchronous="NORMAL")
        try:
            submit(queue, idempotency, count)
            now = (datetime.now(timezone.utc) - EPOCH) // timedelta(microseconds=1)
            step = int(timedelta(days=30) / timedelta(microseconds=1) / max(count, 1))
            conn = sqlite3.connect(path)
            with conn:
                (top,) = conn.execute("SELECT MAX(seq) FROM resilient_sync_deliveries").fetchone()
                conn.execute(SQLITE_DONE, {"now": now, "top": top, "step": step})
                conn.execute(SQLITE_AUDIT, {"failed": True})
                conn.execute(SQLITE_AUDIT, {"failed": False})
            conn.execute("ANALYZE")
            conn.close()
            live_part(queue, idempotency)
            yield queue, idempotency
        finally:
            queue.close()
            idempotency.close()


# -- PostgreSQL ----------------------------------------------------------------------

PG_DONE = """
UPDATE {s}.deliveries
SET status = 'succeeded', next_attempt_at = NULL, attempts = 1, result = '{{"remote_id": "r"}}',
    created_at = now() - (%(top)s - seq) * %(step)s * interval '1 microsecond',
    updated_at = now() - (%(top)s - seq) * %(step)s * interval '1 microsecond'
                 + interval '1 second'
WHERE status = 'pending'
"""
PG_AUDIT = """
INSERT INTO {s}.audit (delivery_id, destination, action, actor, started_at, finished_at,
    number, outcome, reason, error, error_category)
SELECT id, destination, 'deliver', 'worker:bench', updated_at - interval '0.5 second',
       updated_at, 1,
       CASE WHEN %(failed)s THEN NULL ELSE 'succeeded' END,
       CASE WHEN %(failed)s THEN 'POS down (HTTP 503)' END,
       CASE WHEN %(failed)s
            THEN '{{"category":"transient","message":"POS down (HTTP 503)"}}'::json END,
       CASE WHEN %(failed)s THEN 'transient' END
FROM {s}.deliveries
WHERE status = 'succeeded' AND (NOT %(failed)s OR seq %% 100 = 0)
ORDER BY seq
"""


@contextmanager
def postgres_queue(count: int) -> Iterator[tuple[Any, Any]]:
    import psycopg

    schema = f"rs_bench_admin_{uuid.uuid4().hex[:8]}"
    queue, idempotency = open_stores(DSN, schema=schema)
    try:
        submit(queue, idempotency, count)
        step = int(timedelta(days=30) / timedelta(microseconds=1) / max(count, 1))
        with psycopg.connect(DSN, autocommit=True) as conn:
            row = conn.execute(f'SELECT MAX(seq) FROM "{schema}".deliveries').fetchone()
            top = row[0] if row else 0
            s = f'"{schema}"'
            conn.execute(PG_DONE.format(s=s), {"top": top, "step": step})  # type: ignore[arg-type]
            for failed in (True, False):
                conn.execute(PG_AUDIT.format(s=s), {"failed": failed})  # type: ignore[arg-type]
            # what autovacuum does to a live queue: the bulk update's dead row
            # versions leave the indexes (a bench must not time MVCC bloat)
            conn.execute(f"VACUUM ANALYZE {s}.deliveries")
            conn.execute(f"VACUUM ANALYZE {s}.audit")
        live_part(queue, idempotency)
        yield queue, idempotency
    finally:
        queue.close()
        idempotency.close()
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- timing --------------------------------------------------------------------------


class Client:
    """An operator signed in to one panel, through the ASGI interface."""

    def __init__(self, app: Any) -> None:
        transport = httpx.ASGITransport(app=app)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://bench")
        self.pages: dict[str, str] = {}

    async def start(self) -> None:
        form = await self.http.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        signed = await self.http.post(
            "/login",
            data={"csrf_token": token.group(1), "name": "bench", "secret": "bench-password"},
        )
        assert signed.status_code == 303, signed.text[:300]
        first = await self.http.get("/deliveries")
        found = re.search(r'href="(/deliveries\?[^"]*cursor=[^"]+)" rel="next"', first.text)
        assert found is not None
        self.pages = {k: v for k, v in {**PAGES, **RARE}.items() if v is not None}
        self.pages["list, 2nd page"] = found.group(1).replace("&amp;", "&")

    async def time(self, path: str) -> float:
        started = time.perf_counter()
        response = await self.http.get(path)
        took = time.perf_counter() - started
        assert response.status_code == 200, (path, response.status_code)
        return took * 1000


async def timings(apps: dict[int, Any], repeat: int) -> dict[int, dict[str, float]]:
    """Median ms per size and page; the sizes take turns, so that a slower
    moment of a shared machine weighs on every size alike."""
    clients = {size: Client(app) for size, app in apps.items()}
    for client in clients.values():
        await client.start()
    samples: dict[int, dict[str, list[float]]] = {size: {} for size in apps}
    for round_ in range(repeat + 3):
        for name in PAGES:
            for size, client in clients.items():
                took = await client.time(client.pages[name])
                if round_ >= 3:
                    samples[size].setdefault(name, []).append(took)
    for round_ in range(4):
        for name in RARE:
            for size, client in clients.items():
                took = await client.time(client.pages[name])
                if round_ >= 1:
                    samples[size].setdefault(name, []).append(took)
    for client in clients.values():
        await client.http.aclose()
    return {
        size: {name: statistics.median(values) for name, values in pages.items()}
        for size, pages in samples.items()
    }


def measure(
    make: Callable[[int], Any], sizes: list[int], repeat: int
) -> tuple[dict[int, float], dict[int, dict[str, float]]]:
    built: dict[int, float] = {}
    apps: dict[int, Any] = {}
    with ExitStack() as stack:
        for size in sizes:
            started = time.perf_counter()
            queue, idempotency = stack.enter_context(make(size))
            built[size] = time.perf_counter() - started
            assert queue.stats().total == size + LIVE + 8
            apps[size] = create_app(
                queue,
                login=Login(users={"bench": ("bench-password", "operator")}),
                idempotency=idempotency,
                secret_key="bench-secret-0123456789",  # noqa: S106 - a bench's own
            )
        return built, asyncio.run(timings(apps, repeat))


def main(argv: list[str]) -> None:
    logging.getLogger("resilient_sync").setLevel(logging.CRITICAL)  # the live part's failures
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    args = parser.parse_args(argv)
    makers = {"sqlite": sqlite_queue, "postgres": postgres_queue}
    print(f"admin panel render times (median of {args.repeat}, ms, in process over ASGI)")
    worst = 0.0
    for backend in args.backends:
        built, results = measure(makers[backend], args.sizes, args.repeat)
        for size in args.sizes:
            cells = "  ".join(f"{name} {results[size][name]:6.1f}" for name in PAGES)
            print(f"{backend:8} {size:>8,} deliveries (built in {built[size]:5.1f}s)  {cells}")
        for size in args.sizes:
            cells = "  ".join(f"{name} {results[size][name]:6.1f}" for name in RARE)
            print(f"{backend:8} {size:>8,} rare matches, not in the target:  {cells}")
        small, large = min(args.sizes), max(args.sizes)
        if small != large:
            ratios = {n: results[large][n] / results[small][n] for n in PAGES}
            worst = max(worst, *ratios.values())
            cells = "  ".join(f"{name} x{r:.2f}" for name, r in ratios.items())
            print(f"{backend:8} {large:,} / {small:,}: {cells}")
    verdict = "within" if worst < 2 else "NOT within"
    print(f"largest ratio x{worst:.2f}: {verdict} the 2x target")


if __name__ == "__main__":
    main(sys.argv[1:])

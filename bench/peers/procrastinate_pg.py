"""procrastinate: defer N jobs in batches, then drain them with W worker processes.

As procrastinate documents it: ``App(connector=PsycopgConnector(...))`` (its
async psycopg 3 pool), an ``async`` task (so that ``concurrency`` runs jobs
side by side), ``run_worker_async(wait=False)`` (exits once the queue is
caught up), ``batch_defer_async`` for enqueue (one statement per batch).
Defaults otherwise: jobs are kept (``delete_jobs="never"``), every table is
logged, the server's ``synchronous_commit``. Everything lives in a database
of its own, dropped after the run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from common import PAYLOAD, say_result, wait_for_go
from procrastinate import App, PsycopgConnector

SETTINGS = "PsycopgConnector (async pool), async task, batch_defer_async, wait=False, defaults"
QUEUE = "bench"


def make_app(dsn: str) -> tuple[App, Any]:
    app = App(connector=PsycopgConnector(conninfo=dsn))
    done = {"n": 0}

    @app.task(name="noop", queue=QUEUE)
    async def noop(**payload: Any) -> None:
        done["n"] += 1

    return app, (noop, done)


def install(dsn: str) -> None:
    app, _ = make_app(dsn)

    async def main() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    asyncio.run(main())


def reset(dsn: str) -> None:
    """No jobs, events or workers left (between configurations)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers "
            "RESTART IDENTITY CASCADE"
        )


def enqueue(dsn: str, total: int, batch: int) -> float:
    """Seconds to defer ``total`` jobs, ``batch`` per statement."""
    app, (noop, _) = make_app(dsn)
    payloads = [dict(PAYLOAD, n=i) for i in range(total)]

    async def main() -> float:
        async with app.open_async():
            started = time.perf_counter()
            for first in range(0, total, batch):
                await noop.batch_defer_async(*payloads[first : first + batch])
            return time.perf_counter() - started

    return asyncio.run(main())


def worker(dsn: str, concurrency: int) -> None:
    """One worker process (a role for ``common.start``): drain the queue, then exit."""
    app, (_, done) = make_app(dsn)

    async def main() -> None:
        async with app.open_async():
            await app.check_connection_async()
            wait_for_go()
            await app.run_worker_async(
                queues=[QUEUE], concurrency=concurrency, wait=False, install_signal_handlers=False
            )
        say_result(done["n"])

    asyncio.run(main())


def processed(dsn: str) -> tuple[int, int]:
    """(jobs not finished, jobs succeeded)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status <> 'succeeded'),"
            " count(*) FILTER (WHERE status = 'succeeded') FROM procrastinate_jobs"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

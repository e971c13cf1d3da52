"""pgqueuer: enqueue N jobs in batches, then drain them with W worker processes.

As pgqueuer recommends and its own ``tools/benchmark.py`` does it: the
asyncpg driver (its fastest), one connection per ``QueueManager``, an
``async`` entrypoint, ``run(batch_size=..., mode=drain)`` on uvloop (its
CLI's loop), default durability ``durable`` (every table logged, the
server's ``synchronous_commit``). Enqueue uses its batch form (lists: one
statement per batch). A finished job is deleted from the queue table and
logged to ``pgqueuer_log`` (buffered, flushed per ``batch_size``).
Everything lives in a database of its own, dropped after the run.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import uvloop
from common import PAYLOAD, say_result, wait_for_go
from pgqueuer import PgQueuer, Queries
from pgqueuer.db import AsyncpgDriver
from pgqueuer.types import QueueExecutionMode

SETTINGS = "asyncpg driver, uvloop, async entrypoint, durability=durable (default), drain mode"


def install(dsn: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    uvloop.run(main())


def reset(dsn: str) -> None:
    """An empty queue, log and statistics (between configurations)."""

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            queries = Queries(AsyncpgDriver(conn))
            await queries.clear_queue()
            await queries.clear_queue_log()
            await queries.clear_statistics_log()
        finally:
            await conn.close()

    uvloop.run(main())


def enqueue(dsn: str, total: int, batch: int) -> float:
    """Seconds to enqueue ``total`` jobs, ``batch`` per statement."""
    payloads = [json.dumps(dict(PAYLOAD, n=i)).encode() for i in range(total)]

    async def main() -> float:
        conn = await asyncpg.connect(dsn)
        try:
            queries = Queries(AsyncpgDriver(conn))
            started = time.perf_counter()
            for first in range(0, total, batch):
                chunk = payloads[first : first + batch]
                await queries.enqueue(["noop"] * len(chunk), chunk, [0] * len(chunk))
            return time.perf_counter() - started
        finally:
            await conn.close()

    return uvloop.run(main())


def worker(dsn: str, batch_size: int) -> None:
    """One worker process (a role for ``common.start``): drain the queue, then exit."""

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        pgq = PgQueuer(AsyncpgDriver(conn))
        done = 0

        @pgq.entrypoint("noop")
        async def noop(job: Any) -> None:
            nonlocal done
            done += 1

        wait_for_go()
        await pgq.run(batch_size=batch_size, mode=QueueExecutionMode.drain)
        await conn.close()
        say_result(done)

    uvloop.run(main())


def processed(dsn: str) -> tuple[int, int]:
    """(jobs still queued, jobs logged as successful)."""

    async def main() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            queued = await conn.fetchval("SELECT count(*) FROM pgqueuer")
            ok = await conn.fetchval(
                "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
            )
            return int(queued), int(ok)
        finally:
            await conn.close()

    return asyncio.run(main())

"""A user's application for ``resilient-sync worker`` and ``pull`` tests.

``resilient-sync worker cli_apps:build_dispatcher --app-dir tests`` imports
this module the way it imports a user's ``myapp.sync``. It is configured by
environment variables, as a deployed worker is:

- ``RS_TEST_DB``: the store URL;
- ``RS_TEST_MARKS``: a folder where the slow destination writes a file per
  delivery it starts (``<event id>.started``) and finishes (``.finished``);
- ``RS_TEST_DELAY``: seconds each delivery takes;
- ``RS_TEST_SOURCE``: a JSON-lines file of events for the pull tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resilient_sync import AsyncDispatcher, DeliveryContext, Dispatcher, Event, RetryPolicy
from resilient_sync.stores import open_stores


def _marks() -> Path:
    return Path(os.environ["RS_TEST_MARKS"])


def _delay() -> float:
    return float(os.environ.get("RS_TEST_DELAY", "0.3"))


class SlowDestination:
    """Takes ``RS_TEST_DELAY`` seconds per delivery and leaves marks."""

    name = "pos"

    def deliver(self, event: Event, context: DeliveryContext) -> dict[str, Any]:
        (_marks() / f"{event.id}.started").touch()
        time.sleep(_delay())
        (_marks() / f"{event.id}.finished").touch()
        return {"pos_id": f"P-{event.id}"}


class AsyncSlowDestination:
    """The asyncio twin of :class:`SlowDestination`."""

    name = "pos"

    async def deliver(self, event: Event, context: DeliveryContext) -> dict[str, Any]:
        (_marks() / f"{event.id}.started").touch()
        await asyncio.sleep(_delay())
        (_marks() / f"{event.id}.finished").touch()
        return {"pos_id": f"P-{event.id}"}


def build_dispatcher() -> Dispatcher:
    """The factory ``resilient-sync worker cli_apps:build_dispatcher`` calls."""
    queue, idempotency = open_stores(os.environ["RS_TEST_DB"])
    return Dispatcher(
        queue,
        idempotency,
        [SlowDestination()],
        retry=RetryPolicy(max_attempts=3),
        batch_size=10,
        lease=60,
        poll_interval=0.2,
    )


async def build_async_dispatcher() -> AsyncDispatcher:
    """An ``async def`` factory (it runs in the worker's event loop)."""
    queue, idempotency = open_stores(os.environ["RS_TEST_DB"])
    return AsyncDispatcher(
        queue,
        idempotency,
        [AsyncSlowDestination()],
        retry=RetryPolicy(max_attempts=3),
        batch_size=10,
        concurrency=1,
        lease=60,
        poll_interval=0.2,
    )


NOT_A_DISPATCHER = 42


class FileSource:
    """Events from a JSON-lines file; the cursor is the number of lines read."""

    def __init__(self, name: str = "shop-file") -> None:
        self.name = name

    def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
        lines = Path(os.environ["RS_TEST_SOURCE"]).read_text().splitlines()
        start = int(cursor or 0)
        page = lines[start : start + limit]
        events = [Event(row["id"], row["type"], row["payload"]) for row in map(json.loads, page)]
        return events, str(start + len(page))


#: ``resilient-sync pull cli_apps:source``: a Source object.
source = FileSource()


def other_source() -> FileSource:
    """``resilient-sync pull cli_apps:other_source``: a factory (another cursor)."""
    return FileSource("shop-file-again")


#: planted in a failing factory's message: the CLI's one line must not carry it
HOSTILE_TOKEN = "sk_live_hostileFactoryToken1234"


def failing_factory() -> Dispatcher:
    """``resilient-sync worker cli_apps:failing_factory``: fails with a message
    holding an ANSI escape, a NUL, a lone surrogate, a token and 5 MB."""
    raise RuntimeError(
        f"\x1b[2J\x1b]0;pwned\x07 \x00 \ud800 Authorization: Bearer {HOSTILE_TOKEN} "
        + "x" * 5_000_000
    )

"""AsyncDispatcher: the same flows as coroutines, async and sync destinations,
bounded concurrency, run_forever stopping on an asyncio.Event."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from core_support import POLICY, event
from resilient_sync import (
    AsyncDispatcher,
    DataFormatError,
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    DuplicateError,
    ErrorCategory,
    Event,
    InvalidEventError,
    MappingError,
    Operator,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RunReport,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock, RecordingDestination


@attrs.define
class AsyncHarness:
    clock: FakeClock
    queue: MemoryQueueStore
    idempotency: MemoryIdempotencyStore
    dispatcher: AsyncDispatcher
    operator: Operator

    def delivery(self, event_id: str, destination: str | None = None) -> Delivery:
        (found,) = [
            d
            for d in self.queue.list(limit=1000).items
            if d.event.id == event_id and destination in (None, d.destination)
        ]
        return found

    async def drain(self) -> None:
        for _ in range(100):
            report = await self.dispatcher.run_until_idle()
            if not report.idle:
                continue
            due = [
                d.next_attempt_at
                for d in self.queue.list(
                    status=[DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED], limit=1000
                ).items
                if d.next_attempt_at is not None and d.next_attempt_at > self.clock.now()
            ]
            due += [
                s.hold_until
                for s in self.queue.destinations().values()
                if s.hold_until is not None and s.hold_until > self.clock.now()
            ]
            if not due:
                return
            self.clock.set(min(due))
        raise AssertionError("still busy")


def aharness(*destinations: Any, **kwargs: Any) -> AsyncHarness:
    clock = FakeClock()
    queue, idem = MemoryQueueStore(), MemoryIdempotencyStore()
    kwargs.setdefault("retry", POLICY)
    dispatcher = AsyncDispatcher(queue, idem, list(destinations), clock=clock, **kwargs)
    return AsyncHarness(clock, queue, idem, dispatcher, Operator(queue, clock=clock))


class AsyncPos:
    """An async destination that fails each event (or only event ``only``)
    ``fail`` times with ``error()``."""

    def __init__(
        self, fail: int = 0, error: Any = None, *, only: str | None = None, name: str = "pos"
    ) -> None:
        self.name = name
        self.fail = fail
        self.error = error
        self.only = only
        self.calls: list[tuple[str, str]] = []

    async def deliver(self, e: Event, context: DeliveryContext) -> Any:
        await asyncio.sleep(0)
        self.calls.append((e.id, context.idempotency_key))
        if self.only not in (None, e.id):
            return {"remote_id": f"pos:{e.id}"}
        if sum(1 for i, _ in self.calls if i == e.id) <= self.fail:
            raise self.error()
        return {"remote_id": f"pos:{e.id}"}


def test_async_destination_retried_with_the_same_key_then_succeeds() -> None:
    async def main() -> None:
        pos = AsyncPos(fail=2, error=lambda: TimeoutError("timed out"))
        h = aharness(pos)
        created = await h.dispatcher.submit(event("e1"))
        assert len(created) == 1
        report = await h.dispatcher.run_until_idle()
        assert report == RunReport(claimed=1, retry_scheduled=1)
        await h.drain()
        d = h.delivery("e1")
        assert d.status is DeliveryStatus.SUCCEEDED
        assert d.result == {"remote_id": "pos:e1"}
        assert [k for _, k in pos.calls] == [d.idempotency_key] * 3

    asyncio.run(main())


def test_sync_destinations_work_too_and_run_off_the_loop() -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        threads: list[int] = []

        class SyncPos(RecordingDestination):
            def deliver(self, e: Event, context: DeliveryContext) -> Any:
                threads.append(threading.get_ident())
                return super().deliver(e, context)

        pos = SyncPos("pos")
        h = aharness(pos, AsyncPos(name="crm"))
        await h.dispatcher.submit_many([event("e1"), event("e2")], to="pos")
        report = await h.dispatcher.run_until_idle()
        assert report.succeeded == 2
        assert [e.id for e in pos.applied] == ["e1", "e2"]
        assert loop_thread not in threads  # never blocks the event loop

    asyncio.run(main())


@pytest.mark.parametrize(
    ("error", "status", "category"),
    [
        (lambda: DuplicateError("exists"), DeliveryStatus.NEEDS_ACTION, ErrorCategory.DUPLICATE),
        (lambda: MappingError("no SKU"), DeliveryStatus.NEEDS_ACTION, ErrorCategory.MAPPING),
        (
            lambda: DataFormatError("bad", field="phone"),
            DeliveryStatus.NEEDS_ACTION,
            ErrorCategory.DATA_FORMAT,
        ),
        (
            lambda: RateLimitedError(retry_after=90),
            DeliveryStatus.RETRY_SCHEDULED,
            ErrorCategory.RATE_LIMITED,
        ),
        (lambda: ValueError("bug"), DeliveryStatus.RETRY_SCHEDULED, ErrorCategory.UNEXPECTED),
    ],
)
def test_categories_reach_their_state(error: Any, status: DeliveryStatus, category: Any) -> None:
    async def main() -> None:
        h = aharness(AsyncPos(fail=1, error=error))
        await h.dispatcher.submit(event("e1"))
        await h.dispatcher.run_until_idle()
        d = h.delivery("e1")
        assert d.status is status
        assert d.last_error is not None
        assert d.last_error.category is category

    asyncio.run(main())


def test_permission_pauses_and_resume_releases() -> None:
    async def main() -> None:
        pos = AsyncPos(fail=1, error=lambda: PermissionDeniedError("revoked"), only="e1")
        h = aharness(pos)
        await h.dispatcher.submit_many([event("e1"), event("e2")])
        await h.dispatcher.run_until_idle()
        assert h.operator.destinations()["pos"].paused
        assert [i for i, _ in pos.calls] == ["e1"]
        h.operator.resume("pos", actor="alice")
        await h.drain()
        assert h.delivery("e2").status is DeliveryStatus.SUCCEEDED
        assert h.delivery("e1").status is DeliveryStatus.NEEDS_ACTION

    asyncio.run(main())


def test_async_hooks_are_awaited() -> None:
    class Pos:
        name = "pos"

        async def deliver(self, e: Event, context: DeliveryContext) -> Any:
            if e.id == "dup":
                raise DuplicateError("exists")
            if e.payload.get("phone", "").startswith("0"):
                raise DataFormatError("bad phone", field="phone")
            return {"id": e.id}

        async def resolve_duplicate(self, e: Event, error: Exception) -> Any:
            await asyncio.sleep(0)
            return {"id": "existing"}

        async def fix_data(self, e: Event, error: Exception) -> Event | None:
            await asyncio.sleep(0)
            return attrs.evolve(e, payload={"phone": "+44" + e.payload["phone"][1:]})

    async def main() -> None:
        h = aharness(Pos())
        await h.dispatcher.submit_many([event("dup"), Event("fmt", "t", {"phone": "0123"})])
        report = await h.dispatcher.run_once()
        assert report.succeeded == 2
        assert h.delivery("dup").result == {"id": "existing"}
        assert h.delivery("fmt").event.payload == {"phone": "+44123"}

    asyncio.run(main())


def test_ordering_per_key_holds() -> None:
    async def main() -> None:
        pos = AsyncPos()
        failing = {"a1": 2}

        async def deliver(e: Event, context: DeliveryContext) -> Any:
            if failing.get(e.id, 0) > 0:
                failing[e.id] -= 1
                pos.calls.append((e.id, "fail"))
                raise RetryableError("down")
            pos.calls.append((e.id, "ok"))
            return None

        pos.deliver = deliver  # type: ignore[method-assign]
        h = aharness(pos, concurrency=4)
        await h.dispatcher.submit_many(
            [
                event("a1", ordering_key="A"),
                event("b1", ordering_key="B"),
                event("a2", ordering_key="A"),
            ]
        )
        await h.drain()
        a_calls = [c for c in pos.calls if c[0].startswith("a")]
        assert a_calls == [("a1", "fail"), ("a1", "fail"), ("a1", "ok"), ("a2", "ok")]

    asyncio.run(main())


def test_at_most_concurrency_deliveries_run_at_once() -> None:
    limit = 3

    class Counting:
        name = "pos"

        def __init__(self) -> None:
            self.active = 0
            self.peak = 0
            self.full = asyncio.Event()

        async def deliver(self, e: Event, context: DeliveryContext) -> Any:
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active == limit:
                self.full.set()
            try:
                # the first `limit` deliveries wait until all of them run at once
                await asyncio.wait_for(self.full.wait(), timeout=10)
                for _ in range(5):
                    await asyncio.sleep(0)  # give others every chance to start
                return None
            finally:
                self.active -= 1

    async def main() -> None:
        pos = Counting()
        h = aharness(pos, concurrency=limit)
        await h.dispatcher.submit_many([event(f"e{i}") for i in range(10)])
        report = await h.dispatcher.run_until_idle()
        assert report.succeeded == 10
        assert pos.peak == limit

    asyncio.run(main())


def test_run_forever_stops_on_an_asyncio_event() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        pos = AsyncPos(fail=2, error=lambda: RetryableError("down"))
        h = aharness(pos)
        await h.dispatcher.submit(event("e1"))

        async def watch() -> None:
            while h.delivery("e1").status is not DeliveryStatus.SUCCEEDED:
                await asyncio.sleep(0)
            stop.set()

        watcher = asyncio.create_task(watch())
        report = await asyncio.wait_for(h.dispatcher.run_forever(stop), timeout=20)
        await watcher
        assert report.succeeded == 1
        assert report.retry_scheduled == 2
        assert len(pos.calls) == 3

    asyncio.run(main())


def test_async_run_forever_does_not_spin_while_a_key_is_stuck() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        pos = AsyncPos(fail=99, error=lambda: MappingError("no SKU"))
        h = aharness(pos, poll_interval=3)
        await h.dispatcher.submit_many(
            [event("a1", ordering_key="A"), event("a2", ordering_key="A")]
        )
        start = h.clock.now()

        async def stop_later() -> None:
            while (h.clock.now() - start).total_seconds() < 30:
                await asyncio.sleep(0)
            stop.set()

        stopper = asyncio.create_task(stop_later())
        await asyncio.wait_for(h.dispatcher.run_forever(stop), timeout=20)
        await stopper
        assert len(pos.calls) == 1

    asyncio.run(main())


def test_async_on_needs_action_is_awaited() -> None:
    async def main() -> None:
        seen: list[str] = []

        async def escalate(d: Delivery) -> None:
            await asyncio.sleep(0)
            seen.append(d.event.id)

        h = aharness(AsyncPos(fail=9, error=lambda: MappingError("x")), on_needs_action=escalate)
        await h.dispatcher.submit_many([event("e1"), event("e2")])
        await h.dispatcher.run_until_idle()
        assert sorted(seen) == ["e1", "e2"]

    asyncio.run(main())


def test_async_submit_many_is_all_or_nothing_and_pull_accepts_async_sources() -> None:
    class AsyncSource:
        name = "feed"

        def __init__(self) -> None:
            self.events = [event("s1"), event("s2"), event("s3")]

        async def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
            start = int(cursor or 0)
            page = self.events[start : start + limit]
            return page, str(start + len(page))

    async def main() -> None:
        h = aharness(AsyncPos())
        with pytest.raises(InvalidEventError, match="#1"):
            await h.dispatcher.submit_many([event("ok"), Event("bad", "t", {"x": b"1"})])
        assert len(h.queue.list()) == 0
        assert await h.dispatcher.pull(AsyncSource(), limit=2) == 3  # type: ignore[arg-type]
        assert h.queue.get_cursor("feed") == "3"
        assert (await h.dispatcher.run_until_idle()).succeeded == 3

    asyncio.run(main())

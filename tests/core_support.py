"""Shared helpers for the core tests (memory stores, fake clock), public API only."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from resilient_sync import (
    Attempt,
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    Event,
    Operator,
    RetryPolicy,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock

#: A deterministic policy: 1 s, 2 s, 4 s ... capped at 60 s, five attempts, no deadline.
POLICY = RetryPolicy(
    max_attempts=5, initial_delay=1, multiplier=2, max_delay=60, deadline=None, jitter=False
)


def every_delivery(queue: Any) -> list[Delivery]:
    """Every delivery of ``queue``, in submission order (walks every page)."""
    out: list[Delivery] = []
    cursor: str | None = None
    while True:
        page = queue.list(limit=100, cursor=cursor)
        out.extend(page.items)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


@attrs.define
class Harness:
    """A dispatcher on memory stores with a fake clock, and an operator on the same queue."""

    clock: FakeClock
    queue: MemoryQueueStore
    idempotency: MemoryIdempotencyStore
    dispatcher: Dispatcher
    operator: Operator

    def delivery(self, event_id: str, destination: str | None = None) -> Delivery:
        """The one delivery of ``event_id`` (to ``destination`` when given)."""
        found = [
            d
            for d in self.all()
            if d.event.id == event_id and (destination is None or d.destination == destination)
        ]
        assert len(found) == 1, f"expected one delivery of {event_id!r}, found {found!r}"
        return found[0]

    def all(self) -> list[Delivery]:
        """Every delivery, in submission order (walks every page)."""
        return every_delivery(self.queue)

    def status(self, event_id: str, destination: str | None = None) -> DeliveryStatus:
        return self.delivery(event_id, destination).status

    def audit(self, event_id: str, destination: str | None = None) -> list[Attempt]:
        return self.operator.attempts(self.delivery(event_id, destination).id)

    def next_wake(self) -> datetime | None:
        """The earliest future time at which something may become due
        (a retry, an expiring lease, the end of a destination hold)."""
        now = self.clock.now()
        times: list[datetime | None] = []
        for d in self.all():
            if d.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED):
                times.append(d.next_attempt_at)
            elif d.status is DeliveryStatus.IN_FLIGHT:
                times.append(d.lease_expires_at)
        times += [s.hold_until for s in self.queue.destinations().values() if not s.paused]
        future = [t for t in times if t is not None and t > now]
        return min(future) if future else None

    def drain(self, max_rounds: int = 200) -> None:
        """Run until nothing more can happen without a person, jumping the clock
        to each next due time (retries, holds)."""
        for _ in range(max_rounds):
            report = self.dispatcher.run_until_idle()
            if not report.idle:
                continue
            wake = self.next_wake()
            if wake is None:
                return
            self.clock.set(wake)
        raise AssertionError(f"still busy after {max_rounds} rounds")


def harness(
    *destinations: Any,
    retry: RetryPolicy | None = None,
    **kwargs: Any,
) -> Harness:
    clock = kwargs.pop("clock", None) or FakeClock()
    queue = MemoryQueueStore()
    idempotency = MemoryIdempotencyStore()
    dispatcher = Dispatcher(
        queue,
        idempotency,
        list(destinations),
        retry=retry if retry is not None else POLICY,
        clock=clock,
        **kwargs,
    )
    return Harness(
        clock=clock,
        queue=queue,
        idempotency=idempotency,
        dispatcher=dispatcher,
        operator=Operator(queue, clock=clock),
    )


def event(event_id: str, ordering_key: str | None = None, **payload: Any) -> Event:
    return Event(
        event_id, "customer.updated", payload or {"id": event_id}, ordering_key=ordering_key
    )


class Scripted:
    """A destination whose outcome per call is decided by ``behave(event, n)``
    (n = how many times this event was attempted, from 1); logs every call."""

    def __init__(
        self,
        name: str = "pos",
        behave: Callable[[Event, int], Any] | None = None,
    ) -> None:
        self.name = name
        self.behave = behave
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []  # (event id, key, "ok" | error type)
        self.counts: dict[str, int] = {}

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        with self.lock:
            n = self.counts[event.id] = self.counts.get(event.id, 0) + 1
        try:
            result = self.behave(event, n) if self.behave else None
        except Exception as exc:
            with self.lock:
                self.log.append((event.id, context.idempotency_key, type(exc).__name__))
            raise
        with self.lock:
            self.log.append((event.id, context.idempotency_key, "ok"))
        return result if result is not None else {"remote_id": f"{self.name}:{event.id}"}

    def ids(self, outcome: str | None = None) -> list[str]:
        with self.lock:
            return [e for e, _, o in self.log if outcome is None or o == outcome]

    def keys(self, event_id: str) -> list[str]:
        with self.lock:
            return [k for e, k, _ in self.log if e == event_id]


def fail_times(times: int, error: Callable[[], Exception]) -> Callable[[Event, int], Any]:
    """A ``behave`` that fails each event's first ``times`` attempts."""

    def behave(_event: Event, n: int) -> Any:
        if n <= times:
            raise error()
        return None

    return behave

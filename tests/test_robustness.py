"""Failures outside the destination never cost the rest of a batch, and never
consume a retry budget without an attempt."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
import pytest

from resilient_sync import (
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    Event,
    InvalidEventError,
    PermissionDeniedError,
    StoreError,
)
from resilient_sync._core import new_delivery
from resilient_sync.stores import (
    DestinationState,
    IdempotencyRecord,
    MemoryIdempotencyStore,
    MemoryQueueStore,
)
from resilient_sync.testing import FakeClock, RecordingDestination


class Cyclic:
    """Returns a result that contains itself for one event."""

    name = "pos"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        self.calls.append(event.id)
        if event.id == "bad":
            loop: list[Any] = []
            loop.append(loop)
            return loop
        return {"id": event.id}


def test_a_cyclic_result_is_recorded_and_the_batch_completes() -> None:
    queue = MemoryQueueStore()
    pos = Cyclic()
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [pos], clock=FakeClock())
    dispatcher.submit_many([Event("bad", "t", {}), Event("good", "t", {})])
    report = dispatcher.run_until_idle()
    assert report.succeeded == 2
    assert pos.calls == ["bad", "good"]  # each delivered once
    bad = next(d for d in queue.list().items if d.event.id == "bad")
    assert bad.status is DeliveryStatus.SUCCEEDED  # delivered once: never redone
    assert "nested too deeply" in (queue.attempts(bad.id)[-1].reason or "")


class FailingBegin(MemoryIdempotencyStore):
    def begin(
        self, entries: Sequence[tuple[str, str]], *, now: datetime, lock_until: datetime
    ) -> list[IdempotencyRecord]:
        raise StoreError("idempotency store unreachable")


def test_a_failing_idempotency_store_hands_the_batch_back_unattempted() -> None:
    queue = MemoryQueueStore()
    pos = RecordingDestination("pos")
    dispatcher = Dispatcher(queue, FailingBegin(), [pos], clock=FakeClock())
    dispatcher.submit_many([Event("a", "t", {}), Event("b", "t", {})])
    for _ in range(3):
        with pytest.raises(StoreError, match="unreachable"):
            dispatcher.run_once()
    for delivery in queue.list().items:
        assert delivery.status is DeliveryStatus.PENDING
        assert delivery.attempts == 0  # no budget spent on attempts never made
    assert pos.calls == []


class FailingPause(MemoryQueueStore):
    def set_destination(self, name: str, **kwargs: Any) -> DestinationState:
        raise StoreError("cannot write the destination state")


def test_a_failed_pause_is_logged_and_the_outcomes_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = FailingPause()

    class Revoked(RecordingDestination):
        def deliver(self, event: Event, context: DeliveryContext) -> Any:
            if event.id == "first":
                raise PermissionDeniedError("token revoked")
            return super().deliver(event, context)

    pos = Revoked("pos")
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [pos], clock=FakeClock())
    dispatcher.submit_many([Event("first", "t", {}), Event("second", "t", {})])
    with caplog.at_level(logging.ERROR, logger="resilient_sync"):
        report = dispatcher.run_once()
    assert (report.needs_action, report.released) == (1, 1)  # second waits, not lost
    assert pos.applied == []
    assert any("could not pause" in r.getMessage() for r in caplog.records)


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class ReturnsUnprintable:
    name = "pos"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        self.calls.append(event.id)
        return Unprintable() if event.id == "odd" else {"id": event.id}


def test_a_result_that_cannot_even_be_printed_is_stored_as_a_placeholder() -> None:
    queue = MemoryQueueStore()
    pos = ReturnsUnprintable()
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [pos], clock=FakeClock())
    dispatcher.submit_many([Event("odd", "t", {}), Event("fine", "t", {})])
    report = dispatcher.run_once()  # does not raise
    assert report.succeeded == 2
    assert pos.calls == ["odd", "fine"]  # the effect happened once: never redone
    odd = next(d for d in queue.list().items if d.event.id == "odd")
    assert "Unprintable" in odd.result
    assert "Unprintable" in (queue.attempts(odd.id)[-1].reason or "")


class Uncopyable:
    def __deepcopy__(self, memo: Any) -> Any:
        raise RuntimeError("cannot copy me")


def test_the_memory_store_refuses_what_submit_refuses() -> None:
    queue = MemoryQueueStore()
    clock = FakeClock()
    with pytest.raises(InvalidEventError, match=r"payload\.x is a Uncopyable"):
        queue.enqueue([new_delivery(Event("odd", "t", {"x": Uncopyable()}), "pos", clock.now())])
    with pytest.raises(InvalidEventError, match="U\\+0000"):
        queue.enqueue([new_delivery(Event("odd\x00", "t", {}), "pos", clock.now())])
    assert queue.stats().total == 0


class HandsOutUnprocessable(MemoryQueueStore):
    """A third-party store that hands out an event no store could hold."""

    def claim(self, **kwargs: Any) -> list[Delivery]:
        claimed = super().claim(**kwargs)
        return [
            attrs.evolve(d, event=attrs.evolve(d.event, payload={"x": Uncopyable()}))
            if d.event.id == "odd"
            else d
            for d in claimed
        ]


def test_an_unprocessable_claimed_event_parks_alone_and_the_batch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = HandsOutUnprocessable()
    pos = RecordingDestination("pos")
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [pos], clock=FakeClock())
    dispatcher.submit_many([Event("odd", "t", {}), Event("fine", "t", {})])
    with caplog.at_level(logging.ERROR, logger="resilient_sync"):
        report = dispatcher.run_once()  # does not raise
    assert (report.succeeded, report.needs_action) == (1, 1)
    odd = next(d for d in queue.list().items if d.event.id == "odd")
    assert odd.status is DeliveryStatus.NEEDS_ACTION
    assert odd.last_error is not None
    assert "internal error" in odd.last_error.message
    assert queue.attempts(odd.id)[-1].action == "internal_error"
    assert [e.id for e in pos.applied] == ["fine"]
    assert any("internal error" in r.getMessage() for r in caplog.records)
    assert dispatcher.run_until_idle().claimed == 0  # parked, not retried in a loop

"""Failures outside the destination never cost the rest of a batch, and never
consume a retry budget without an attempt."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest

from resilient_sync import (
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    Event,
    PermissionDeniedError,
    StoreError,
)
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
    assert isinstance(bad.result, str)  # its repr, with the reason in the audit trail
    assert "cycle" in (queue.attempts(bad.id)[-1].reason or "")


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


def test_an_internal_failure_on_one_delivery_keeps_the_rest_of_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = MemoryQueueStore()
    pos = ReturnsUnprintable()
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [pos], clock=FakeClock())
    dispatcher.submit_many([Event("odd", "t", {}), Event("fine", "t", {})])
    with caplog.at_level(logging.ERROR, logger="resilient_sync"):
        report = dispatcher.run_once()  # does not raise
    assert (report.succeeded, report.retry_scheduled) == (1, 1)
    odd = next(d for d in queue.list().items if d.event.id == "odd")
    assert odd.status is DeliveryStatus.RETRY_SCHEDULED
    assert odd.last_error is not None
    assert "internal error" in odd.last_error.message
    assert queue.attempts(odd.id)[-1].action == "internal_error"
    assert any("internal error" in r.getMessage() for r in caplog.records)

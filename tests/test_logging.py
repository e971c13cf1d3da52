"""Structured logging: every per-delivery record carries the same fields, and a
``resolve_duplicate`` lookup that fails for a passing reason is retried."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from resilient_sync import (
    CircuitBreaker,
    DataFormatError,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    DuplicateError,
    ErrorCategory,
    Event,
    Operator,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
)
from resilient_sync._dispatcher import LOG_FIELDS
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock, FlakyDestination


def dispatcher(dest: Any, clock: FakeClock, **kwargs: Any) -> Dispatcher:
    return Dispatcher(
        MemoryQueueStore(),
        MemoryIdempotencyStore(),
        [dest],
        retry=RetryPolicy(max_attempts=3, initial_delay=1, jitter=False),
        clock=clock,
        **kwargs,
    )


def test_every_delivery_record_has_the_stable_fields(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    pos = FlakyDestination(
        "pos",
        per_event={
            "retry": [RetryableError("HTTP 503")],
            "bad": [DataFormatError("phone is invalid", field="phone")],
            "slow": [RateLimitedError("HTTP 429", retry_after=5)],
            "revoked": [PermissionDeniedError("token revoked")],
        },
    )
    d = dispatcher(pos, clock)
    d.submit_many([Event(i, "t", {}) for i in ("ok", "retry", "bad", "revoked")])
    with caplog.at_level(logging.DEBUG, logger="resilient_sync"):
        d.run_until_idle()
        Operator(d.queue, clock=clock).resume("pos", actor="ada")
        d.submit(Event("slow", "t", {}))
        d.run_until_idle()
    records = [r for r in caplog.records if r.name == "resilient_sync"]
    per_delivery = [r for r in records if hasattr(r, "delivery_id")]
    assert len(per_delivery) >= 5
    for record in per_delivery:
        for name in LOG_FIELDS:
            assert hasattr(record, name), (name, record.getMessage())
        assert record.destination == "pos"  # type: ignore[attr-defined]
        assert record.attempt == 1  # type: ignore[attr-defined]
    by_event = {r.event_id: r for r in per_delivery if r.msg.startswith("delivery")}  # type: ignore[attr-defined]
    assert by_event["ok"].levelno == logging.DEBUG
    assert (by_event["ok"].status, by_event["ok"].category) == ("succeeded", None)  # type: ignore[attr-defined]
    assert by_event["retry"].levelno == logging.INFO
    assert by_event["retry"].category == "transient"  # type: ignore[attr-defined]
    assert by_event["bad"].levelno == logging.WARNING
    assert by_event["bad"].status == "needs_action"  # type: ignore[attr-defined]
    messages = [r.getMessage() for r in records]
    assert any(
        m.startswith("destination pos paused until an operator resumes it") for m in messages
    )
    paused = next(r for r in records if r.getMessage().startswith("destination pos paused"))
    assert paused.levelno == logging.ERROR
    assert any(m.startswith("destination pos held until") for m in messages)


def test_a_circuit_opening_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    pos = FlakyDestination("pos", [RetryableError("HTTP 503")] * 3)
    d = dispatcher(pos, clock, circuit=CircuitBreaker(threshold=3, cool_off=30))
    d.submit_many([Event(f"e{n}", "t", {}) for n in range(3)])
    with caplog.at_level(logging.INFO, logger="resilient_sync"):
        d.run_until_idle()
    (held,) = [r for r in caplog.records if "(circuit_open)" in r.getMessage()]
    assert held.levelno == logging.WARNING
    assert held.destination == "pos"  # type: ignore[attr-defined]


class DuplicatePos:
    """Says "already taken"; its lookup fails with ``lookup_errors`` first."""

    name = "pos"

    def __init__(self, *lookup_errors: Exception) -> None:
        self.lookup_errors = list(lookup_errors)
        self.lookups = 0

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        raise DuplicateError("email has already been taken", field="email")

    def resolve_duplicate(self, event: Event, error: Exception) -> Any:
        self.lookups += 1
        if self.lookup_errors:
            raise self.lookup_errors.pop(0)
        return {"remote_id": "pos-7"}


def test_a_lookup_that_fails_transiently_is_retried_then_links() -> None:
    clock = FakeClock()
    pos = DuplicatePos(RetryableError("search API answered 503"))
    d = dispatcher(pos, clock)
    (delivery,) = d.submit(Event("c1", "customer.created", {"email": "a@example.com"}))
    d.run_until_idle()
    op = Operator(d.queue, clock=clock)
    waiting = op.get(delivery.id)
    assert waiting.status is DeliveryStatus.RETRY_SCHEDULED
    assert waiting.last_error is not None
    assert waiting.last_error.category is ErrorCategory.TRANSIENT
    clock.advance(60)
    d.run_until_idle()
    done = op.get(delivery.id)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.result == {"remote_id": "pos-7"}
    assert pos.lookups == 2


def test_a_lookup_refused_for_permission_pauses_the_destination() -> None:
    clock = FakeClock()
    d = dispatcher(DuplicatePos(PermissionDeniedError("token revoked")), clock)
    (delivery,) = d.submit(Event("c1", "customer.created", {"email": "a@example.com"}))
    d.run_until_idle()
    op = Operator(d.queue, clock=clock)
    parked = op.get(delivery.id)
    assert parked.status is DeliveryStatus.NEEDS_ACTION
    assert parked.last_error is not None
    assert parked.last_error.category is ErrorCategory.PERMISSION
    assert op.destinations()["pos"].paused


def test_a_lookup_that_fails_otherwise_still_asks_a_person() -> None:
    clock = FakeClock()
    d = dispatcher(DuplicatePos(LookupError("no search API")), clock)
    (delivery,) = d.submit(Event("c1", "customer.created", {"email": "a@example.com"}))
    d.run_until_idle()
    parked = Operator(d.queue, clock=clock).get(delivery.id)
    assert parked.status is DeliveryStatus.NEEDS_ACTION
    assert parked.last_error is not None
    assert parked.last_error.category is ErrorCategory.DUPLICATE
    assert "resolve_duplicate failed" in parked.last_error.message

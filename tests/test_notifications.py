"""on_event and on_needs_action hooks, and the per-destination circuit breaker."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from core_support import Scripted, event, fail_times, harness
from resilient_sync import (
    CircuitBreaker,
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    DispatchEvent,
    ErrorCategory,
    Event,
    MappingError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
    RunReport,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock


def test_on_event_reports_every_outcome_and_destination_change() -> None:
    def behave(e: Event, n: int) -> Any:
        if e.id == "retry" and n == 1:
            raise RetryableError("down")
        if e.id == "stuck":
            raise MappingError("no SKU")
        if e.id == "slow":
            raise RateLimitedError("slow down", retry_after=10)
        return None

    events: list[DispatchEvent] = []
    h = harness(Scripted("pos", behave), on_event=events.append, batch_size=1)
    h.dispatcher.submit_many([event("ok"), event("retry"), event("stuck"), event("slow")])
    h.dispatcher.run_until_idle()
    kinds = [(e.kind, e.category) for e in events]
    assert kinds == [
        ("succeeded", None),
        ("retry_scheduled", ErrorCategory.TRANSIENT),
        ("needs_action", ErrorCategory.MAPPING),
        ("rate_limited", None),
        ("retry_scheduled", ErrorCategory.RATE_LIMITED),
    ]
    ok = events[0]
    assert ok.destination == "pos"
    assert ok.delivery_id == h.delivery("ok").id
    assert ok.attempt == 1
    assert ok.duration is not None
    assert ok.duration >= 0
    assert events[2].reason == "no SKU"
    assert events[3].reason is not None
    assert "slow down" in events[3].reason


def test_on_event_reports_a_pause() -> None:
    events: list[DispatchEvent] = []
    pos = Scripted("pos", fail_times(9, lambda: PermissionDeniedError("revoked")))
    h = harness(pos, on_event=events.append)
    h.dispatcher.submit_many([event("e1"), event("e2")])
    h.dispatcher.run_until_idle()
    kinds = [e.kind for e in events]
    assert "paused" in kinds
    assert kinds.count("needs_action") == 1
    assert kinds.count("released") == 1  # e2 was handed back unattempted


def test_on_needs_action_is_called_once_per_delivery_entering_needs_action() -> None:
    seen: list[Delivery] = []
    pos = Scripted("pos", fail_times(99, lambda: MappingError("no SKU")))
    h = harness(pos, on_needs_action=seen.append)
    h.dispatcher.submit_many([event("e1"), event("e2")])
    h.drain()
    assert sorted(d.event.id for d in seen) == ["e1", "e2"]
    assert all(d.status is DeliveryStatus.NEEDS_ACTION for d in seen)
    assert all(d.last_error is not None for d in seen)
    # nothing new happens: no second call
    h.clock.advance(3600)
    h.drain()
    assert len(seen) == 2
    # an operator retry that fails again is a new entry into NEEDS_ACTION
    h.operator.retry(h.delivery("e1").id, actor="alice")
    h.drain()
    assert [d.event.id for d in seen[2:]] == ["e1"]


def test_on_needs_action_fires_after_retries_are_exhausted_only() -> None:
    seen: list[str] = []
    pos = Scripted("pos", fail_times(99, lambda: RetryableError("down")))
    h = harness(
        pos,
        retry=RetryPolicy(max_attempts=4, jitter=False),
        on_needs_action=lambda d: seen.append(d.id),
    )
    h.dispatcher.submit(event("e1"))
    h.drain()
    assert seen == [h.delivery("e1").id]
    assert len(pos.ids()) == 4


def test_raising_hooks_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken_needs_action(d: Delivery) -> None:
        raise RuntimeError("pager service down")

    def broken_on_event(e: DispatchEvent) -> None:
        raise RuntimeError("metrics backend down")

    pos = Scripted("pos", fail_times(99, lambda: MappingError("no SKU")))
    h = harness(pos, on_needs_action=broken_needs_action, on_event=broken_on_event)
    h.dispatcher.submit_many([event("e1"), event("e2")])
    with caplog.at_level(logging.ERROR, logger="resilient_sync"):
        report = h.dispatcher.run_until_idle()
    assert report.needs_action == 2
    assert h.status("e1") is DeliveryStatus.NEEDS_ACTION
    messages = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("on_needs_action failed" in r.getMessage() for r in messages) == 2
    assert sum("on_event hook failed" in r.getMessage() for r in messages) == 2
    assert all(r.exc_info is not None for r in messages)  # with the traceback


def test_needs_action_and_retries_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    def behave(e: Event, n: int) -> Any:
        raise MappingError("no SKU") if e.id == "m" else RetryableError("down")

    h = harness(Scripted("pos", behave))
    h.dispatcher.submit_many([event("m"), event("r")])
    with caplog.at_level(logging.INFO, logger="resilient_sync"):
        h.dispatcher.run_until_idle()
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "needs action" in warning[0].getMessage()
    assert "no SKU" in warning[0].getMessage()
    assert any("retry at" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


# --- circuit breaker ----------------------------------------------------------


def test_the_circuit_opens_after_consecutive_transient_failures_and_probes_once() -> None:
    down = {"yes": True}

    def behave(e: Event, n: int) -> Any:
        if down["yes"]:
            raise RetryableError("503 Service Unavailable")
        return None

    pos = Scripted("pos", behave)
    crm = Scripted("crm")
    events: list[DispatchEvent] = []
    policy = RetryPolicy(max_attempts=10, initial_delay=1, max_delay=1, jitter=False)
    h = harness(
        pos,
        crm,
        retry=policy,
        circuit=CircuitBreaker(threshold=3, cool_off=30),
        batch_size=1,
        on_event=events.append,
    )
    h.dispatcher.submit_many([event(f"e{i}") for i in range(6)], to="pos")
    h.dispatcher.submit(event("c1"), to="crm")
    h.dispatcher.run_until_idle()
    # three failures open the circuit; the other three deliveries are not attempted
    assert pos.ids() == ["e0", "e1", "e2"]
    assert crm.ids("ok") == ["c1"]  # other destinations are unaffected
    state = h.operator.destinations()["pos"]
    assert state.hold_until == h.clock.now() + timedelta(seconds=30)
    assert state.hold_reason is not None
    assert "circuit open" in state.hold_reason
    assert "503 Service Unavailable" in state.hold_reason
    assert "circuit_open" in [e.kind for e in events]

    # during the cool-off nothing is attempted, even when retries fall due
    h.clock.advance(29)
    h.dispatcher.run_until_idle()
    assert len(pos.ids()) == 3

    # after the cool-off: exactly one probe; it fails, the circuit opens again
    h.clock.advance(1)
    h.dispatcher.run_until_idle()
    assert len(pos.ids()) == 4
    state = h.operator.destinations()["pos"]
    assert state.hold_until == h.clock.now() + timedelta(seconds=30)

    # the API is back: one probe succeeds, the circuit closes and the rest flows
    down["yes"] = False
    h.clock.advance(30)
    h.drain()
    assert sorted(pos.ids("ok")) == [f"e{i}" for i in range(6)]
    assert all(d.status is DeliveryStatus.SUCCEEDED for d in h.all())
    # deliveries that waited behind the circuit used no attempts for it
    assert h.delivery("e5").attempts == 1


def test_the_probe_is_a_single_delivery_even_in_one_batch() -> None:
    down = {"yes": True}

    def behave(e: Event, n: int) -> Any:
        if down["yes"]:
            raise RetryableError("down")
        return None

    pos = Scripted("pos", behave)
    policy = RetryPolicy(max_attempts=10, initial_delay=1, max_delay=1, jitter=False)
    h = harness(pos, retry=policy, circuit=CircuitBreaker(threshold=2, cool_off=10))
    h.dispatcher.submit_many([event(f"e{i}") for i in range(5)])
    report = h.dispatcher.run_once()
    assert report.retry_scheduled == 2
    assert report.released == 3
    h.clock.advance(10)
    report = h.dispatcher.run_once()  # everything is due now: one probe only
    assert report.claimed == 5
    assert report.retry_scheduled == 1
    assert report.released == 4


def test_non_transient_outcomes_do_not_open_the_circuit() -> None:
    pos = Scripted("pos", fail_times(99, lambda: MappingError("no SKU")))
    h = harness(pos, circuit=CircuitBreaker(threshold=2, cool_off=60))
    h.dispatcher.submit_many([event(f"e{i}") for i in range(5)])
    h.dispatcher.run_until_idle()
    assert len(pos.ids()) == 5
    assert "pos" not in h.operator.destinations()


def test_circuit_breaker_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(threshold=0)
    with pytest.raises(ValueError, match="cool_off"):
        CircuitBreaker(cool_off=0)
    assert CircuitBreaker(cool_off=timedelta(minutes=1)).cool_off == 60.0


def test_a_probe_handed_back_unattempted_frees_the_probe_slot() -> None:
    # Worker two is delivering `a` (idempotency key K) when worker one's circuit
    # half-opens and picks `b` (same key K) as its probe: b is handed back
    # unattempted. The circuit must then let another delivery probe (it used to
    # refuse every delivery forever, and run_until_idle spun on them).
    clock = FakeClock()
    queue, idem = MemoryQueueStore(), MemoryIdempotencyStore()

    def behave(e: Event, n: int) -> Any:
        if e.id == "y":
            raise RetryableError("down", retry_after=60)
        return None

    one = Dispatcher(
        queue,
        idem,
        [Scripted("pos", behave)],
        clock=clock,
        circuit=CircuitBreaker(threshold=1, cool_off=10),
        worker_id="one",
    )
    seen: dict[str, Any] = {}

    class SlowPos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            # while worker two holds key K: y opens worker one's circuit ...
            one.submit_many([event("y"), Event("b", "t", {}, idempotency_key="K")])
            assert one.run_once().retry_scheduled == 1
            clock.advance(10)
            # ... whose probe is b, which cannot be attempted now
            seen["probe"] = one.run_once()
            one.submit(event("c"))
            seen["after"] = one.run_until_idle(max_batches=5)
            return None

    two = Dispatcher(queue, idem, [SlowPos()], clock=clock, worker_id="two")
    two.submit(Event("a", "t", {}, idempotency_key="K"))
    assert two.run_once().succeeded == 1
    assert seen["probe"] == RunReport(claimed=1, released=1)
    assert seen["after"].succeeded == 1
    (c,) = [d for d in queue.list() if d.event.id == "c"]
    assert c.status is DeliveryStatus.SUCCEEDED


def test_a_probe_whose_outcome_never_comes_back_frees_its_slot_after_a_cool_off() -> None:
    """A half-open probe cancelled mid-flight (``asyncio.wait_for`` around
    ``run_once``) reports nothing: the circuit must not stay half-open for ever."""
    from resilient_sync._circuit import Circuits

    clock = FakeClock()
    circuits = Circuits({"pos": CircuitBreaker(threshold=1, cool_off=10)})
    assert circuits.failure("pos", clock.now()) is not None  # open
    clock.advance(11)
    assert circuits.admit("pos", clock.now())  # the probe
    assert not circuits.admit("pos", clock.now())  # one at a time
    clock.advance(5)
    assert not circuits.admit("pos", clock.now())
    clock.advance(6)  # a cool-off since the probe, and no outcome: presumed lost
    assert circuits.admit("pos", clock.now())
    circuits.success("pos")
    assert circuits.admit("pos", clock.now())

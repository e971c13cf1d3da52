"""waiting_for: what a delivery waits for, in words, most important first."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from resilient_sync import Delivery, DeliveryStatus, ErrorCategory, ErrorInfo, Event
from resilient_sync._runbook import advice_for
from resilient_sync._waiting import waiting_for
from resilient_sync.stores import DestinationState, IdempotencyRecord, IdempotencyState

NOW = datetime(2026, 11, 22, 10, 30, tzinfo=timezone.utc)


def delivery(status: DeliveryStatus = DeliveryStatus.PENDING, **changes: Any) -> Delivery:
    base = Delivery(
        id="d-1",
        event=Event("e-1", "customer.created", {"a": 1}, ordering_key="cust-7"),
        destination="pos",
        status=status,
        idempotency_key="k",
        created_at=NOW - timedelta(hours=1),
        updated_at=NOW - timedelta(minutes=5),
    )
    return attrs.evolve(base, **changes)


def test_final_deliveries_wait_for_nothing() -> None:
    for status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.RESOLVED, DeliveryStatus.DISCARDED):
        assert waiting_for(delivery(status), now=NOW) == []


def test_a_delivery_that_needs_action_waits_for_a_person_doing_what_the_runbook_says() -> None:
    error = ErrorInfo(category=ErrorCategory.MAPPING, message="unknown SKU")
    waits = waiting_for(delivery(DeliveryStatus.NEEDS_ACTION, last_error=error), now=NOW)
    assert waits == [f"a person: {advice_for(ErrorCategory.MAPPING).action}"]
    assert waiting_for(delivery(DeliveryStatus.NEEDS_ACTION), now=NOW) == [
        "a person: re-sync, resolve or discard it"
    ]


def test_in_flight_names_the_worker_and_its_lease() -> None:
    live = delivery(
        DeliveryStatus.IN_FLIGHT,
        lease_owner="worker:a",
        lease_expires_at=NOW + timedelta(seconds=30),
    )
    assert waiting_for(live, now=NOW) == [
        "worker:a is delivering it now (leased until 2026-11-22 10:30:30Z (in 30s))"
    ]
    lost = attrs.evolve(live, lease_expires_at=NOW - timedelta(seconds=5))
    assert waiting_for(lost, now=NOW) == [
        (
            "worker:a claimed it, but the lease ran out at 2026-11-22 10:29:55Z (5s ago); it is "
            "claimed again"
        )
    ]


def test_everything_that_holds_a_waiting_delivery_back_in_order() -> None:
    blocker = delivery(DeliveryStatus.NEEDS_ACTION, id="d-0")
    waiting = delivery(
        DeliveryStatus.RETRY_SCHEDULED,
        next_attempt_at=NOW + timedelta(minutes=4),
        last_error=ErrorInfo(category=ErrorCategory.TRANSIENT, message="503"),
    )
    state = DestinationState(
        name="pos",
        paused=True,
        paused_reason="token revoked",
        hold_until=NOW + timedelta(seconds=20),
        hold_reason="circuit open after 5 failures",
    )
    lock = IdempotencyRecord(
        key="k",
        state=IdempotencyState.IN_PROGRESS,
        fingerprint="f",
        locked_until=NOW + timedelta(seconds=50),
    )
    assert waiting_for(waiting, now=NOW, destination=state, blocker=blocker, key_record=lock) == [
        (
            "destination pos to be resumed: it is paused (token revoked); an operator resumes it "
            "once the cause is fixed"
        ),
        (
            "destination pos is held back until 2026-11-22 10:30:20Z (in 20s): circuit open after "
            "5 failures (it resumes by itself)"
        ),
        (
            "blocked behind d-0, which needs action: a person must re-sync, resolve or discard "
            "it first (same ordering key 'cust-7')"
        ),
        "another attempt holds its idempotency key until 2026-11-22 10:30:50Z (in 50s)",
        "due at 2026-11-22 10:34:00Z (in 4m): the next retry after a transient error",
    ]


def test_a_due_delivery_waits_for_a_worker() -> None:
    old_hold = DestinationState(name="pos", hold_until=NOW - timedelta(seconds=1))
    done_key = IdempotencyRecord(key="k", state=IdempotencyState.COMPLETED, fingerprint="f")
    assert waiting_for(delivery(), now=NOW, destination=old_hold, key_record=done_key) == [
        (
            "a worker: it is due now and the next worker run delivers it (if it stays here, "
            "check that a worker serving this destination is running)"
        )
    ]

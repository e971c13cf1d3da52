"""``Operator.edit``: correct a payload by hand, audited, under the revised key."""

from __future__ import annotations

from typing import Any

import pytest

from resilient_sync import (
    DataFormatError,
    DeliveryNotFoundError,
    DeliveryStatus,
    Dispatcher,
    Event,
    Operator,
    RetryableError,
    RetryPolicy,
)
from resilient_sync._edit import apply_edits, parse_path
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock, FlakyDestination


class Setup:
    def __init__(self, failures: dict[str, list[BaseException | None]]) -> None:
        self.clock = FakeClock()
        self.queue = MemoryQueueStore()
        self.pos = FlakyDestination("pos", per_event=failures)
        self.dispatcher = Dispatcher(
            self.queue,
            MemoryIdempotencyStore(),
            [self.pos],
            retry=RetryPolicy(max_attempts=1, jitter=False),
            clock=self.clock,
        )
        self.operator = Operator(self.queue, clock=self.clock)

    def submit(self, event_id: str, payload: Any) -> str:
        (delivery,) = self.dispatcher.submit(Event(event_id, "customer.created", payload))
        return delivery.id


def rejected_phone() -> tuple[Setup, str]:
    s = Setup({"c1": [DataFormatError("phone is invalid", field="phone")]})
    delivery_id = s.submit("c1", {"email": "ada@example.com", "phone": "12 34", "tags": ["a"]})
    s.dispatcher.run_until_idle()
    assert s.operator.get(delivery_id).status is DeliveryStatus.NEEDS_ACTION
    return s, delivery_id


def test_edit_and_retry_delivers_the_corrected_payload_under_the_revised_key() -> None:
    s, delivery_id = rejected_phone()
    before = s.operator.get(delivery_id)
    edited = s.operator.edit(delivery_id, {"phone": "+31201234567"}, actor="ada", retry=True)
    assert edited.status is DeliveryStatus.PENDING
    assert edited.attempts == 0
    assert edited.event.payload == {
        "email": "ada@example.com",
        "phone": "+31201234567",
        "tags": ["a"],
    }
    assert edited.idempotency_key.startswith(before.idempotency_key + ":")
    record = s.operator.attempts(delivery_id)[-1]
    assert record.action == "edit"
    assert record.actor == "ada"
    assert record.outcome is DeliveryStatus.PENDING
    assert record.details["before"] == {"payload.phone": "12 34"}
    assert record.details["after"] == {"payload.phone": "+31201234567"}
    assert record.details["idempotency_key"] == {
        "before": before.idempotency_key,
        "after": edited.idempotency_key,
    }
    s.dispatcher.run_until_idle()
    done = s.operator.get(delivery_id)
    assert done.status is DeliveryStatus.SUCCEEDED
    (applied,) = s.pos.applied
    assert applied.payload["phone"] == "+31201234567"
    assert s.pos.keys[-1] == edited.idempotency_key


def test_the_same_correction_gives_the_same_key() -> None:
    s1, id1 = rejected_phone()
    s2, id2 = rejected_phone()
    k1 = s1.operator.edit(id1, {"phone": "+31201234567"}).idempotency_key
    k2 = s2.operator.edit(id2, {"phone": "+31201234567"}).idempotency_key
    assert k1 == k2


def test_edit_without_retry_keeps_it_waiting_for_a_person() -> None:
    s, delivery_id = rejected_phone()
    edited = s.operator.edit(delivery_id, {"phone": "+31201234567"}, note="customer called")
    assert edited.status is DeliveryStatus.NEEDS_ACTION
    assert s.operator.attempts(delivery_id)[-1].reason == "edited payload.phone: customer called"
    assert s.dispatcher.run_until_idle().claimed == 0
    assert s.operator.retry(delivery_id) == [delivery_id]
    s.dispatcher.run_until_idle()
    assert s.operator.get(delivery_id).status is DeliveryStatus.SUCCEEDED


def test_edit_refuses_after_an_error_whose_outcome_may_be_applied() -> None:
    s = Setup({"c1": [RetryableError("read timeout")]})
    delivery_id = s.submit("c1", {"phone": "12"})
    s.dispatcher.run_until_idle()
    with pytest.raises(ValueError, match="may have applied the original payload"):
        s.operator.edit(delivery_id, {"phone": "+31201234567"})
    assert s.operator.get(delivery_id).event.payload == {"phone": "12"}
    edited = s.operator.edit(delivery_id, {"phone": "+31201234567"}, force=True)
    assert edited.event.payload == {"phone": "+31201234567"}
    assert s.operator.attempts(delivery_id)[-1].details["forced"] is True


def test_a_pending_never_attempted_delivery_can_be_edited_and_stays_due() -> None:
    s = Setup({})
    delivery_id = s.submit("c1", {"phone": "12"})
    edited = s.operator.edit(delivery_id, {"phone": "+31201234567"})
    assert edited.status is DeliveryStatus.PENDING
    s.dispatcher.run_until_idle()
    assert s.pos.applied[0].payload == {"phone": "+31201234567"}


@pytest.mark.parametrize(
    ("changes", "remove", "message"),
    [
        ({"phone": "12 34"}, (), "changes nothing"),
        ({"address.city": "Delft"}, (), "payload.address does not exist"),
        ({"tags[3]": "b"}, (), r"payload.tags\[3\] does not exist"),
        ({"phone": float("nan")}, (), "JSON cannot represent"),
        ({"": 1}, (), "non-empty"),
        ({"a..b": 1}, (), "invalid payload path"),
        ({}, ("missing",), "payload.missing does not exist"),
    ],
)
def test_bad_edits_name_what_is_wrong_and_change_nothing(
    changes: dict[str, Any], remove: tuple[str, ...], message: str
) -> None:
    s, delivery_id = rejected_phone()
    before = s.operator.get(delivery_id)
    with pytest.raises(ValueError, match=message):
        s.operator.edit(delivery_id, changes, remove=remove)
    assert s.operator.get(delivery_id) == before


def test_only_waiting_deliveries_can_be_edited() -> None:
    s = Setup({})
    delivery_id = s.submit("c1", {"phone": "+31201234567"})
    s.dispatcher.run_until_idle()
    with pytest.raises(ValueError, match="is succeeded; only"):
        s.operator.edit(delivery_id, {"phone": "+31"})
    with pytest.raises(DeliveryNotFoundError):
        s.operator.edit("nope", {"phone": "+31"})


def test_paths_and_edits() -> None:
    assert parse_path("lines[2].sku") == ["lines", 2, "sku"]
    assert parse_path("payload.customer.phone") == ["customer", "phone"]
    payload = {"lines": [{"sku": "A"}, {"sku": "B"}], "n": 1}
    result = apply_edits(payload, {"lines[1].sku": "C"}, remove=["n"], add={"note": "new"})
    assert result.payload == {"lines": [{"sku": "A"}, {"sku": "C"}], "note": "new"}
    assert payload == {"lines": [{"sku": "A"}, {"sku": "B"}], "n": 1}  # untouched
    assert result.before == {"payload.lines[1].sku": "B", "payload.note": None, "payload.n": 1}
    assert result.after == {"payload.lines[1].sku": "C", "payload.note": "new", "payload.n": None}
    assert result.added == ["payload.note"]
    assert result.removed == ["payload.n"]

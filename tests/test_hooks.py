"""The destination hooks: resolve_duplicate and fix_data."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from core_support import event, harness
from resilient_sync import (
    DataFormatError,
    DeliveryContext,
    DeliveryStatus,
    DuplicateError,
    ErrorCategory,
    Event,
    MappingError,
    RetryableError,
)


class DuplicatePos:
    """Rejects new customers whose email exists; can look the existing one up."""

    name = "pos"

    def __init__(self, lookup: Any) -> None:
        self.lookup = lookup
        self.delivered: list[str] = []
        self.hook_calls: list[tuple[str, str]] = []

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        self.delivered.append(event.id)
        raise DuplicateError(f"email {event.payload['email']} has already been taken")

    def resolve_duplicate(self, event: Event, error: Exception) -> Any:
        self.hook_calls.append((event.id, str(error)))
        if isinstance(self.lookup, Exception):
            raise self.lookup
        return self.lookup


def customer(event_id: str = "c1") -> Event:
    return Event(event_id, "customer.created", {"email": "ada@example.com", "phone": "555 0101"})


def test_resolve_duplicate_links_to_the_existing_record_and_succeeds() -> None:
    pos = DuplicatePos({"remote_id": "pos-42"})
    h = harness(pos)
    h.dispatcher.submit(customer())
    report = h.dispatcher.run_until_idle()
    assert report.succeeded == 1
    d = h.delivery("c1")
    assert d.status is DeliveryStatus.SUCCEEDED
    assert d.result == {"remote_id": "pos-42"}
    assert pos.hook_calls == [("c1", "email ada@example.com has already been taken")]
    actions = [(a.action, a.outcome) for a in h.audit("c1")]
    assert actions[-1] == ("resolve_duplicate", DeliveryStatus.SUCCEEDED)
    linked = h.audit("c1")[-1]
    # the result is stored once, on the delivery; the audit names it in the reason
    assert "pos-42" in (linked.reason or "")
    assert "result" not in linked.details
    assert linked.reason is not None
    assert "linked" in linked.reason
    # never attempted again
    h.clock.advance(3600)
    h.drain()
    assert pos.delivered == ["c1"]


@pytest.mark.parametrize(
    ("lookup", "reason"),
    [
        (None, "no existing record"),
        (LookupError("search API down"), "search API down"),
        (object(), "not JSON-serialisable"),
    ],
)
def test_resolve_duplicate_without_a_link_needs_action(lookup: Any, reason: str) -> None:
    pos = DuplicatePos(lookup)
    h = harness(pos)
    h.dispatcher.submit(customer())
    h.drain()
    d = h.delivery("c1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.last_error is not None
    assert d.last_error.category is ErrorCategory.DUPLICATE
    assert "potential duplicate" in d.last_error.message
    hook_record = next(a for a in h.audit("c1") if a.action == "resolve_duplicate")
    assert hook_record.reason is not None
    assert reason in hook_record.reason or reason in d.last_error.message
    assert pos.delivered == ["c1"]  # never retried on its own


class FixingPos:
    """Rejects a phone with spaces; its fix_data returns what ``fixer`` makes."""

    name = "pos"

    def __init__(self, fixer: Any) -> None:
        self.fixer = fixer
        self.received: list[tuple[dict[str, Any], str]] = []
        self.fix_calls = 0

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        self.received.append((dict(event.payload), context.idempotency_key))
        if " " in event.payload["phone"]:
            raise DataFormatError("phone must be E.164", field="phone")
        return {"remote_id": "pos-1"}

    def fix_data(self, event: Event, error: Exception) -> Event | None:
        self.fix_calls += 1
        assert isinstance(error, DataFormatError)
        result: Event | None = self.fixer(event)
        return result


def e164(event: Event) -> Event:
    payload = dict(event.payload, phone="+1" + event.payload["phone"].replace(" ", ""))
    return attrs.evolve(event, payload=payload)


def test_fix_data_corrects_and_retries_at_once_within_the_same_run() -> None:
    pos = FixingPos(e164)
    h = harness(pos)
    h.dispatcher.submit(customer())
    report = h.dispatcher.run_once()
    assert report.succeeded == 1
    assert report.claimed == 1
    assert [p["phone"] for p, _ in pos.received] == ["555 0101", "+15550101"]
    d = h.delivery("c1")
    assert d.status is DeliveryStatus.SUCCEEDED
    assert d.attempts == 1
    # the stored event is the corrected one, with the key it was delivered under
    assert d.event.payload["phone"] == "+15550101"
    assert d.event.id == "c1"
    assert d.idempotency_key == pos.received[-1][1]
    fix = next(a for a in h.audit("c1") if a.action == "fix_data")
    assert fix.details["before"] == {"payload.phone": "555 0101"}
    assert fix.details["after"] == {"payload.phone": "+15550101"}
    assert fix.details["changed"] == ["payload.phone"]
    assert [a.action for a in h.audit("c1")] == ["deliver", "fix_data", "deliver"]
    assert h.audit("c1")[-1].outcome is DeliveryStatus.SUCCEEDED


def test_a_correction_that_moves_the_event_to_another_key_does_not_stall_the_old_key() -> None:
    """fix_data may correct the ordering key too; what waited behind the event
    on its old key is delivered (the memory store used to stall that key)."""

    def to_real_customer(event: Event) -> Event:
        return attrs.evolve(e164(event), ordering_key="cust-2")

    pos = FixingPos(to_real_customer)
    h = harness(pos)
    first = Event("a", "customer.created", {"phone": "555 0101"}, ordering_key="cust-1")
    second = Event("b", "customer.created", {"phone": "+15550102"}, ordering_key="cust-1")
    h.dispatcher.submit_many([first, second])
    h.dispatcher.run_until_idle()
    assert h.delivery("a").status is DeliveryStatus.SUCCEEDED
    assert h.delivery("a").event.ordering_key == "cust-2"
    assert h.delivery("b").status is DeliveryStatus.SUCCEEDED
    assert [p["phone"] for p, _ in pos.received] == ["555 0101", "+15550101", "+15550102"]


def test_a_corrected_event_that_then_fails_transiently_is_retried_as_corrected() -> None:
    calls = {"n": 0}

    class Pos(FixingPos):
        def deliver(self, event: Event, context: DeliveryContext) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                self.received.append((dict(event.payload), context.idempotency_key))
                raise TimeoutError("POS timed out")
            return super().deliver(event, context)

    pos = Pos(e164)
    h = harness(pos)
    h.dispatcher.submit(customer())
    h.dispatcher.run_until_idle()
    d = h.delivery("c1")
    assert d.status is DeliveryStatus.RETRY_SCHEDULED
    assert d.event.payload["phone"] == "+15550101"
    h.drain()
    assert h.status("c1") is DeliveryStatus.SUCCEEDED
    # the corrected payload went out twice under one key (a timeout may have applied it)
    (_, first), (p2, k2), (p3, k3) = pos.received
    assert p2 == p3
    assert k2 == k3 != first
    assert pos.fix_calls == 1


def _nan_phone(event: Event) -> Event:
    return attrs.evolve(event, payload=dict(event.payload, phone=math.nan))


@pytest.mark.parametrize(
    ("fixer", "reason"),
    [
        (lambda e: None, "no correction"),
        (_nan_phone, "payload.phone"),
        (lambda e: attrs.evolve(e, id="c2", payload={"phone": "+1"}), "changed the event id"),
        (lambda e: e, "unchanged"),
        (lambda e: {"phone": "+1"}, "must return an Event"),
        (lambda e: (_ for _ in ()).throw(ValueError("fixer crashed")), "fixer crashed"),
    ],
)
def test_fix_data_without_a_usable_correction_needs_action(fixer: Any, reason: str) -> None:
    pos = FixingPos(fixer)
    h = harness(pos)
    h.dispatcher.submit(customer())
    h.drain()
    d = h.delivery("c1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.last_error is not None
    assert d.last_error.category is ErrorCategory.DATA_FORMAT
    assert d.last_error.field == "phone"
    assert d.event.payload["phone"] == "555 0101"  # nothing replaced
    fix = next(a for a in h.audit("c1") if a.action == "fix_data")
    assert fix.reason is not None
    assert reason in fix.reason
    assert len(pos.received) == 1
    assert pos.fix_calls == 1


def test_fix_data_cannot_loop_forever() -> None:
    def worse(e: Event) -> Event:
        return attrs.evolve(e, payload=dict(e.payload, phone=e.payload["phone"] + " 0"))

    pos = FixingPos(worse)
    h = harness(pos)
    h.dispatcher.submit(customer())
    h.drain()
    d = h.delivery("c1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.last_error is not None
    assert d.last_error.field == "phone"
    assert 1 < len(pos.received) <= 5
    assert pos.fix_calls == len(pos.received) - 1


def test_hooks_are_looked_up_by_name_and_only_called_for_their_category() -> None:
    class Both:
        name = "pos"

        def __init__(self) -> None:
            self.hooks: list[str] = []

        def deliver(self, event: Event, context: DeliveryContext) -> Any:
            raise DataFormatError("bad", field="x") if event.id == "a" else DuplicateError()

        def resolve_duplicate(self, event: Event, error: Exception) -> Any:
            self.hooks.append(f"resolve_duplicate:{event.id}")
            return {"linked": True}

        def fix_data(self, event: Event, error: Exception) -> Event | None:
            self.hooks.append(f"fix_data:{event.id}")
            return None

    pos = Both()
    h = harness(pos)
    h.dispatcher.submit_many([event("a"), event("b")])
    h.drain()
    assert sorted(pos.hooks) == ["fix_data:a", "resolve_duplicate:b"]
    assert h.status("a") is DeliveryStatus.NEEDS_ACTION
    assert h.status("b") is DeliveryStatus.SUCCEEDED


def test_fix_data_may_correct_the_event_it_was_given_in_place() -> None:
    def in_place(e: Event) -> Event:
        e.payload["phone"] = "+15550101"
        return e

    pos = FixingPos(in_place)
    h = harness(pos)
    h.dispatcher.submit(customer())
    assert h.dispatcher.run_once().succeeded == 1
    fix = next(a for a in h.audit("c1") if a.action == "fix_data")
    assert fix.details["before"] == {"payload.phone": "555 0101"}
    assert fix.details["after"] == {"payload.phone": "+15550101"}


class LooksFirst:
    """A POS that never reports duplicates (Stripe-like); finds customers by e-mail."""

    name = "pos"

    def __init__(self, existing: dict[str, str], lookup_error: Exception | None = None) -> None:
        self.existing = existing
        self.lookup_error = lookup_error
        self.created: list[str] = []
        self.lookups: list[tuple[str, str]] = []

    def find_existing(self, event: Event, context: DeliveryContext) -> Any:
        self.lookups.append((event.id, context.idempotency_key))
        if self.lookup_error is not None:
            raise self.lookup_error
        found = self.existing.get(event.payload["email"])
        return {"pos_customer_id": found} if found else None

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        self.created.append(event.id)
        self.existing[event.payload["email"]] = f"C-{event.id}"
        return {"pos_customer_id": f"C-{event.id}"}


def test_find_existing_links_instead_of_creating_a_second_record() -> None:
    pos = LooksFirst({"ada@example.com": "C-old"})
    h = harness(pos)
    h.dispatcher.submit(Event("web-1", "customer.created", {"email": "ada@example.com"}))
    h.dispatcher.submit(Event("web-2", "customer.created", {"email": "bob@example.com"}))
    h.drain()
    assert pos.created == ["web-2"]  # ada was linked, not created twice
    ada = h.delivery("web-1")
    assert ada.status is DeliveryStatus.SUCCEEDED
    assert ada.result == {"pos_customer_id": "C-old"}
    actions = [(a.action, a.outcome) for a in h.audit("web-1")]
    assert actions == [("find_existing", DeliveryStatus.SUCCEEDED)]
    assert "C-old" in (h.audit("web-1")[0].reason or "")
    assert [a.action for a in h.audit("web-2")] == ["find_existing", "deliver"]
    # a second event of the same person (another event id, another key) links too
    h.dispatcher.submit(Event("web-3", "customer.created", {"email": "bob@example.com"}))
    h.drain()
    assert pos.created == ["web-2"]
    assert h.delivery("web-3").result == {"pos_customer_id": "C-web-2"}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RetryableError("search API down"), DeliveryStatus.RETRY_SCHEDULED),
        (MappingError("no customer search for this tenant"), DeliveryStatus.NEEDS_ACTION),
    ],
)
def test_a_failing_lookup_is_classified_like_a_failed_attempt(
    error: Exception, status: DeliveryStatus
) -> None:
    pos = LooksFirst({}, lookup_error=error)
    h = harness(pos)
    h.dispatcher.submit(Event("web-1", "customer.created", {"email": "ada@example.com"}))
    h.dispatcher.run_once()
    d = h.delivery("web-1")
    assert d.status is status
    assert pos.created == []  # nothing created without looking first
    assert d.last_error is not None
    assert d.last_error.message.startswith("find_existing failed")
    assert h.audit("web-1")[-1].action == "find_existing"

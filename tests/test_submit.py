"""submit()/submit_many(): one delivery per event id and destination, fan-out,
and bad events rejected with nothing enqueued."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import pytest

from core_support import Harness, event, harness
from resilient_sync import DeliveryStatus, Event, InvalidEventError
from resilient_sync.testing import RecordingDestination


def two() -> tuple[Harness, RecordingDestination, RecordingDestination]:
    pos, crm = RecordingDestination("pos"), RecordingDestination("crm")
    return harness(pos, crm), pos, crm


def test_submit_fans_out_to_every_destination() -> None:
    h, pos, crm = two()
    created = h.dispatcher.submit(event("e1"))
    assert sorted(d.destination for d in created) == ["crm", "pos"]
    assert all(d.status is DeliveryStatus.PENDING for d in created)
    h.drain()
    assert [e.id for e in pos.applied] == ["e1"]
    assert [e.id for e in crm.applied] == ["e1"]


@pytest.mark.parametrize(("to", "expected"), [("crm", ["crm"]), (["crm", "pos"], ["crm", "pos"])])
def test_submit_to_named_destinations_only(to: Any, expected: list[str]) -> None:
    h, pos, crm = two()
    created = h.dispatcher.submit(event("e1"), to=to)
    assert sorted(d.destination for d in created) == expected
    h.drain()
    assert len(crm.applied) == 1
    assert len(pos.applied) == (1 if "pos" in expected else 0)


def test_unknown_destination_is_a_clear_error_and_enqueues_nothing() -> None:
    h, _, _ = two()
    with pytest.raises(ValueError, match=r"unknown destination 'erp'.*crm, pos"):
        h.dispatcher.submit(event("e1"), to=["pos", "erp"])
    with pytest.raises(ValueError, match="unknown destination 'erp'"):
        h.dispatcher.submit_many([event("e2")], to="erp")
    assert h.all() == []


def test_the_same_event_id_is_delivered_exactly_once_per_destination() -> None:
    h, pos, crm = two()
    first = h.dispatcher.submit(event("e1", name="Ada"))
    assert len(first) == 2
    # again, in a batch with a new event, with a changed payload, and twice in one batch
    again = h.dispatcher.submit_many(
        [event("e1", name="Changed"), event("e2"), event("e2"), event("e1")]
    )
    assert [(d.event.id, d.destination) for d in again] == [("e2", "pos"), ("e2", "crm")]
    assert h.dispatcher.submit(event("e1")) == []
    h.drain()
    assert h.dispatcher.submit(event("e1")) == []  # also after it was delivered
    h.drain()
    for dest in (pos, crm):
        assert sorted(e.id for e in dest.applied) == ["e1", "e2"]
        assert len(dest.calls) == 2
        # the first submission wins
        assert next(e for e in dest.applied if e.id == "e1").payload == {"name": "Ada"}
    assert len(h.all()) == 4


def test_a_later_submit_to_another_destination_adds_only_that_delivery() -> None:
    h, pos, crm = two()
    h.dispatcher.submit(event("e1"), to="pos")
    added = h.dispatcher.submit(event("e1"))
    assert [d.destination for d in added] == ["crm"]
    h.drain()
    assert len(pos.applied) == len(crm.applied) == 1


class Opaque:
    pass


BAD_PAYLOADS: list[tuple[Any, str]] = [
    ({"items": [{"price": 1.0}, {"price": 2.0}, {"price": math.nan}]}, "payload.items[2].price"),
    ({"total": math.inf}, "payload.total"),
    ({"total": -math.inf}, "payload.total"),
    ({"avatar": b"\x89PNG"}, "payload.avatar"),
    ({"tags": {"a", "b"}}, "payload.tags"),
    ({"customer": {"when": Opaque()}}, "payload.customer.when"),
    ({"when": datetime(2024, 1, 1, tzinfo=timezone.utc)}, "payload.when"),
    ({"by_id": {1: "x"}}, "payload.by_id"),
    (math.nan, "payload"),
]


@pytest.mark.parametrize(("payload", "path"), BAD_PAYLOADS)
def test_non_json_payloads_are_rejected_naming_the_path(payload: Any, path: str) -> None:
    h, pos, _ = two()
    with pytest.raises(InvalidEventError) as info:
        h.dispatcher.submit(Event("e1", "order.created", payload))
    assert info.value.field == path
    assert path in str(info.value)
    assert "e1" in str(info.value)
    assert h.all() == []
    h.drain()
    assert pos.calls == []


def test_submit_many_is_all_or_nothing_and_names_index_id_and_path() -> None:
    h, _, _ = two()
    good = [event(f"ok{i}") for i in range(3)]
    bad = Event("bad-7", "order.created", {"items": [{}, {}, {"price": math.nan}]})
    with pytest.raises(InvalidEventError) as info:
        h.dispatcher.submit_many([good[0], good[1], bad, good[2]])
    message = str(info.value)
    assert "#2" in message
    assert "bad-7" in message
    assert "payload.items[2].price" in message
    assert info.value.field == "payload.items[2].price"
    assert isinstance(info.value, ValueError)  # also catchable as a ValueError
    assert h.all() == []
    # a generator is accepted too, and the valid batch goes through in order
    created = h.dispatcher.submit_many(e for e in good)
    assert [d.event.id for d in created] == ["ok0", "ok0", "ok1", "ok1", "ok2", "ok2"]


def test_metadata_must_be_json_too() -> None:
    h, _, _ = two()
    with pytest.raises(InvalidEventError) as info:
        h.dispatcher.submit(Event("e1", "t", {}, metadata={"trace": {1, 2}}))
    assert info.value.field == "metadata.trace"
    assert h.all() == []


def test_naive_occurred_at_is_rejected_and_aware_is_kept() -> None:
    h, pos, _ = two()
    with pytest.raises(InvalidEventError, match="timezone-aware") as info:
        h.dispatcher.submit(Event("e1", "t", {}, occurred_at=datetime(2024, 5, 1, 12, 0)))
    assert info.value.field == "occurred_at"
    assert h.all() == []
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    h.dispatcher.submit(Event("e1", "t", {}, occurred_at=when), to="pos")
    h.drain()
    assert pos.applied[0].occurred_at == when


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Event("", "t", {}), "id"),
        (Event("  ", "t", {}), "id"),
        (Event("e1", "", {}), "type"),
        (Event("e1", "t", {}, ordering_key=""), "ordering_key"),
        (Event("e1", "t", {}, idempotency_key=""), "idempotency_key"),
        (Event("x" * 300, "t", {}), "id"),
    ],
)
def test_ids_and_keys_must_be_non_empty_strings(bad: Event, field: str) -> None:
    h, _, _ = two()
    with pytest.raises(InvalidEventError) as info:
        h.dispatcher.submit(bad)
    assert info.value.field == field
    assert h.all() == []


def test_something_that_is_not_an_event_is_rejected() -> None:
    h, _, _ = two()
    not_an_event: Any = {"id": "e1", "type": "t", "payload": {}}
    with pytest.raises(InvalidEventError, match="expected an Event, got dict"):
        h.dispatcher.submit(not_an_event)
    assert h.all() == []


def test_tuples_are_stored_as_lists_and_the_destination_sees_plain_json() -> None:
    h, pos, _ = two()
    h.dispatcher.submit(Event("e1", "t", {"lines": ({"sku": "A"}, {"sku": "B"})}), to="pos")
    h.drain()
    assert pos.applied[0].payload == {"lines": [{"sku": "A"}, {"sku": "B"}]}
    assert h.delivery("e1").event.payload == {"lines": [{"sku": "A"}, {"sku": "B"}]}


def test_event_is_immutable() -> None:
    e = event("e1")
    with pytest.raises(AttributeError):
        e.id = "e2"  # type: ignore[misc]


@pytest.mark.parametrize("to", [[], ()])
def test_an_empty_to_is_an_error_not_a_silent_drop(to: Any) -> None:
    h, _, _ = two()
    with pytest.raises(ValueError, match="no destination"):
        h.dispatcher.submit(event("e1"), to=to)
    with pytest.raises(ValueError, match="no destination"):
        h.dispatcher.submit_many([event("e1")], to=to)
    assert h.all() == []

"""Operator.list and Operator.retry_all take every filter of QueueStore.list
(the admin panel's deliveries page filters on all of them), and retry_all
reports its progress per batch."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from core_support import Harness, Scripted, harness
from resilient_sync import DataFormatError, DeliveryStatus, Event


def populated() -> Harness:
    def fail(e: Event, n: int) -> None:
        if e.id.startswith("bad"):
            raise DataFormatError("bad phone", field="phone")

    h = harness(Scripted("pos", fail))
    h.dispatcher.submit_many(
        [
            Event("bad-1", "customer.created", {"email": "ann@example.com"}),
            Event("bad-2", "order.created", {"email": "bob@example.com"}),
        ]
    )
    h.dispatcher.run_until_idle()
    h.clock.advance(3600)
    h.dispatcher.submit_many([Event("bad-3", "customer.created", {"email": "cat@example.com"})])
    h.dispatcher.run_until_idle()
    return h


def ids(page: Any) -> list[str]:
    return [d.event.id for d in page]


def test_list_filters_on_until_event_type_and_search() -> None:
    h = populated()
    op = h.operator
    now = h.clock.now()
    assert ids(op.list(event_type="customer.created")) == ["bad-1", "bad-3"]
    assert ids(op.list(search="BOB@")) == ["bad-2"]
    assert ids(op.list(until=now - timedelta(minutes=30))) == ["bad-1", "bad-2"]
    assert ids(op.list(since=now - timedelta(minutes=30))) == ["bad-3"]
    assert ids(op.list(search="")) == ["bad-1", "bad-2", "bad-3"]


def test_retry_all_honours_the_filters_and_reports_progress() -> None:
    h = populated()
    op = h.operator
    assert op.retry_all(event_type="customer.created", dry_run=True) == [
        h.delivery("bad-1").id,
        h.delivery("bad-3").id,
    ]
    calls: list[tuple[int, int]] = []
    moved = op.retry_all(search="cat@", actor="ann", progress=lambda d, t: calls.append((d, t)))
    assert moved == [h.delivery("bad-3").id]
    assert calls == [(1, 1)]
    assert h.delivery("bad-3").status is DeliveryStatus.PENDING
    assert h.delivery("bad-1").status is DeliveryStatus.NEEDS_ACTION

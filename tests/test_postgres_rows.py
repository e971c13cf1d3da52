"""The PostgreSQL outcome statement takes its rows as JSON (``complete``,
idempotency ``begin``/``finish``): hostile text still reaches the database
only through the gate, times come back exact to the microsecond, and a row
the database cannot hold fails the whole batch with nothing written."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from resilient_sync import (
    Attempt,
    DeliveryStatus,
    Dispatcher,
    Event,
    RetryPolicy,
    StoreError,
)
from resilient_sync.stores import Completion

pytestmark = pytest.mark.postgres
pytest_plugins = ["pg_fixtures"]

SECRET = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
HOSTILE = {
    "surrogate": "lone \ud800 surrogate",
    "nul": "a \x00 nul",
    "ansi": "\x1b[31mred\x1b[0m \x1b]0;title\x07",
    "token": f"Authorization: Bearer {SECRET}",
    "5mb": "x" * 5_000_000,
}


class Hostile:
    """Fails with, or returns, one hostile text."""

    def __init__(self, text: str, *, fail: bool) -> None:
        self.name = "pos"
        self.text = text
        self.fail = fail

    def deliver(self, event: Event, context: Any) -> Any:
        if self.fail:
            raise ValueError(self.text)
        return {"note": self.text}


def _stored_texts(queue: Any, delivery_id: str) -> list[str]:
    delivery = queue.get(delivery_id)
    texts = [str(delivery.result), str(delivery.last_error)]
    for record in queue.attempts(delivery_id):
        texts += [str(record.reason), str(record.error), str(dict(record.details))]
    return texts


@pytest.mark.parametrize("fail", [True, False], ids=["raised", "returned"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_text_from_a_destination_is_stored_through_the_gate(
    pg_stores: tuple[Any, Any], kind: str, fail: bool
) -> None:
    queue, idempotency = pg_stores
    dest = Hostile(HOSTILE[kind], fail=fail)
    dispatcher = Dispatcher(queue, idempotency, [dest], retry=RetryPolicy(max_attempts=1))
    (delivery,) = dispatcher.submit(Event("e1", "customer.created", {"n": 1}))
    report = dispatcher.run_until_idle()
    assert report.claimed == 1
    stored = queue.get(delivery.id)
    assert stored.status is (DeliveryStatus.NEEDS_ACTION if fail else DeliveryStatus.SUCCEEDED)
    for text in _stored_texts(queue, delivery.id):
        assert "\x00" not in text
        assert "\x1b" not in text
        assert "\x07" not in text
        assert not any("\ud800" <= ch <= "\udfff" for ch in text)
        assert SECRET not in text
        assert len(text) < 100_000
    if fail:  # the reason is still there, only made safe
        assert stored.last_error is not None
        assert stored.last_error.message


def _claimed(pg_stores: tuple[Any, Any], n: int) -> tuple[Any, list[Any], datetime]:
    """``n`` events submitted and claimed at once: the store, the claimed deliveries, now."""
    queue, idempotency = pg_stores
    dispatcher = Dispatcher(queue, idempotency, [Hostile("ok", fail=False)])
    deliveries = dispatcher.submit_many([Event(f"e{i}", "t", {}) for i in range(n)])
    now = deliveries[0].created_at
    claimed = queue.claim(now=now, limit=n, lease_until=now + timedelta(minutes=5), worker="w")
    return queue, claimed, now


def _deliver_record(delivery_id: str, started: datetime, finished: datetime, **kw: Any) -> Attempt:
    return Attempt(
        delivery_id=delivery_id,
        destination="pos",
        action="deliver",
        actor="worker:w",
        started_at=started,
        finished_at=finished,
        **kw,
    )


@pytest.mark.parametrize(
    "offset",
    [
        timedelta(hours=5),
        timedelta(hours=-12),
        timedelta(minutes=19, seconds=32),  # local mean time, as old tz data gives
        timedelta(seconds=1, microseconds=250),  # Python allows it; PostgreSQL parses none
    ],
    ids=["+05", "-12", "lmt", "fraction-of-a-second"],
)
def test_times_come_back_exact_to_the_microsecond(
    pg_stores: tuple[Any, Any], offset: timedelta
) -> None:
    queue, (claimed,), _ = _claimed(pg_stores, 1)
    now = datetime(2026, 11, 29, 23, 59, 59, 999_999, tzinfo=timezone(offset))
    later = now + timedelta(microseconds=1)
    record = _deliver_record(
        claimed.id, now, later, number=1, outcome=DeliveryStatus.RETRY_SCHEDULED
    )
    completion = Completion(
        delivery_id=claimed.id,
        lease_token=claimed.lease_token,
        status=DeliveryStatus.RETRY_SCHEDULED,
        finished_at=later,
        next_attempt_at=later + timedelta(microseconds=1),
        audit=(record,),
    )
    assert queue.complete([completion]) == [True]
    stored = queue.get(claimed.id)
    assert stored.updated_at == later
    assert stored.next_attempt_at == later + timedelta(microseconds=1)
    (attempt,) = [a for a in queue.attempts(claimed.id) if a.action == "deliver"]
    assert (attempt.started_at, attempt.finished_at) == (now, later)


def test_a_row_the_database_cannot_hold_writes_nothing(pg_stores: tuple[Any, Any]) -> None:
    """Called directly (past the dispatcher's gate), a NUL in a reason is
    refused by the database: the batch raises and nothing of it is written."""
    queue, claimed, now = _claimed(pg_stores, 2)
    completions = [
        Completion(
            delivery_id=d.id,
            lease_token=d.lease_token,
            status=DeliveryStatus.SUCCEEDED,
            finished_at=now,
            audit=(_deliver_record(d.id, now, now, reason=reason),),
        )
        for d, reason in zip(claimed, ["fine", "a \x00 nul"], strict=True)
    ]
    with pytest.raises((StoreError, ValueError)):
        queue.complete(completions)
    for d in claimed:
        assert queue.get(d.id).status is DeliveryStatus.IN_FLIGHT
        assert [a.action for a in queue.attempts(d.id)] == []


def test_a_batch_larger_than_a_jsonb_value_is_recorded(pg_stores: tuple[Any, Any]) -> None:
    """A jsonb value holds at most 256 MB: results (``max_result_bytes`` may be
    raised) and corrected events travel apart from the rows, so a batch whose
    values add up to more is recorded whole, as typed arrays allowed (1 GB).
    (Idempotency ``finish`` sends its results apart the same way; at this size
    it would add 18 s to the suite.)"""
    queue, claimed, now = _claimed(pg_stores, 3)
    big = ["a" * 90_000_000, "b" * 90_000_000, "c" * 90_000_000]  # 270 MB in all
    completions = [
        Completion(
            delivery_id=d.id,
            lease_token=d.lease_token,
            status=DeliveryStatus.SUCCEEDED,
            finished_at=now,
            result={"body": text},
            audit=(),
        )
        for d, text in zip(claimed, big, strict=True)
    ]
    assert queue.complete(completions) == [True, True, True]
    stored = queue.get(claimed[2].id)
    assert stored.status is DeliveryStatus.SUCCEEDED
    assert stored.result == {"body": big[2]}

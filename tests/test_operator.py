"""Operator: find, inspect, fix, re-sync and audit deliveries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from core_support import Harness, Scripted, event, harness
from resilient_sync import (
    DataFormatError,
    DeliveryNotFoundError,
    DeliveryStatus,
    ErrorCategory,
    Event,
    MappingError,
    RetryableError,
)
from resilient_sync.testing import RecordingDestination


def outcomes(e: Event, n: int) -> Any:
    """Events say how they fail by their id prefix."""
    if e.id.startswith("map"):
        raise MappingError("unknown SKU")
    if e.id.startswith("fmt"):
        raise DataFormatError("bad phone", field="phone")
    if e.id.startswith("down"):
        raise RetryableError("POS down")
    return None


def populated() -> tuple[Harness, Scripted, Scripted]:
    pos, crm = Scripted("pos", outcomes), Scripted("crm")
    h = harness(pos, crm)
    h.dispatcher.submit_many(
        [event("ok1"), event("map1"), event("fmt1"), event("map2"), event("down1")], to="pos"
    )
    h.dispatcher.submit_many([event("ok2"), event("ok3")], to="crm")
    h.dispatcher.run_until_idle()
    return h, pos, crm


def ids(items: Any) -> list[str]:
    return [d.event.id for d in items]


def test_list_filters_by_status_destination_and_category() -> None:
    h, _, _ = populated()
    op = h.operator
    assert ids(op.list(status=DeliveryStatus.NEEDS_ACTION)) == ["map1", "fmt1", "map2"]
    assert ids(op.list(status="needs_action", category="mapping")) == ["map1", "map2"]
    assert ids(op.list(category=ErrorCategory.DATA_FORMAT)) == ["fmt1"]
    assert ids(op.list(destination="crm")) == ["ok2", "ok3"]
    assert ids(op.list(status=["succeeded", DeliveryStatus.RETRY_SCHEDULED])) == [
        "ok1",
        "down1",
        "ok2",
        "ok3",
    ]
    assert ids(op.list(status="succeeded", destination="pos")) == ["ok1"]
    assert ids(op.list(destination="nowhere")) == []
    assert ids(op.list(category="transient")) == ["down1"]
    with pytest.raises(ValueError, match="bogus"):
        op.list(status="bogus")


def test_list_pages_with_a_cursor_in_submission_order() -> None:
    h = harness(Scripted("pos"))
    h.dispatcher.submit_many([event(f"e{i:02}") for i in range(23)])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = h.operator.list(limit=10, cursor=cursor)
        assert len(page) <= 10
        seen += ids(page)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert seen == [f"e{i:02}" for i in range(23)]
    # a filtered page walk
    first = h.operator.list(limit=23)
    assert len(first) == 23
    assert first.next_cursor is None
    with pytest.raises(ValueError, match="cursor"):
        h.operator.list(cursor="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        h.operator.list(limit=0)


def test_get_and_attempts_of_an_unknown_id_name_the_id() -> None:
    h, _, _ = populated()
    for call in (h.operator.get, h.operator.attempts):
        with pytest.raises(DeliveryNotFoundError, match="no-such-id") as info:
            call("no-such-id")
        assert isinstance(info.value, LookupError)
        assert info.value.delivery_id == "no-such-id"


def test_get_and_attempts_show_the_history() -> None:
    h, _, _ = populated()
    d = h.delivery("down1")
    assert h.operator.get(d.id) == d
    (attempt,) = h.operator.attempts(d.id)
    assert attempt.action == "deliver"
    assert attempt.category is ErrorCategory.TRANSIENT
    assert attempt.outcome is DeliveryStatus.RETRY_SCHEDULED
    assert attempt.reason == "POS down"
    assert attempt.duration >= timedelta(0)


def test_retry_resets_the_budget_keeps_the_key_and_is_audited() -> None:
    h, pos, _ = populated()
    d = h.delivery("map1")
    assert h.operator.retry([d.id], actor="alice", note="SKU mapped") == [d.id]
    after = h.delivery("map1")
    assert after.status is DeliveryStatus.PENDING
    assert after.attempts == 0
    assert after.next_attempt_at is None  # due at once, whatever the dispatcher's clock
    assert after.idempotency_key == d.idempotency_key
    record = h.audit("map1")[-1]
    assert (record.action, record.actor, record.reason) == ("retry", "alice", "SKU mapped")
    assert record.outcome is DeliveryStatus.PENDING
    assert record.destination == "pos"
    assert record.delivery_id == d.id
    h.dispatcher.run_until_idle()  # still unmapped: back to needs action, same key
    assert pos.keys("map1") == [d.idempotency_key, d.idempotency_key]


def test_actions_skip_deliveries_they_do_not_apply_to() -> None:
    h, _, _ = populated()
    ok = h.delivery("ok1").id
    assert h.operator.retry(ok, actor="bob") == []
    assert h.operator.resolve(ok, actor="bob") == []
    assert h.operator.discard(ok, actor="bob") == []
    assert h.status("ok1") is DeliveryStatus.SUCCEEDED
    assert [a.action for a in h.audit("ok1")] == ["deliver"]


def test_an_unknown_id_in_a_batch_changes_nothing() -> None:
    h, _, _ = populated()
    known = h.delivery("map1").id
    for action in (h.operator.retry, h.operator.resolve, h.operator.discard):
        with pytest.raises(DeliveryNotFoundError, match="ghost"):
            action([known, "ghost"])
    assert h.status("map1") is DeliveryStatus.NEEDS_ACTION
    assert [a.action for a in h.audit("map1")] == ["deliver"]


def test_resolve_and_discard_are_final_and_audited_with_the_actor() -> None:
    h, pos, _ = populated()
    m1, m2 = h.delivery("map1").id, h.delivery("map2").id
    assert h.operator.resolve([m1], note="created by hand in the POS", actor="carol") == [m1]
    assert h.operator.discard(m2, note="test order", actor="dave") == [m2]
    h.drain()
    assert h.status("map1") is DeliveryStatus.RESOLVED
    assert h.status("map2") is DeliveryStatus.DISCARDED
    r1, r2 = h.audit("map1")[-1], h.audit("map2")[-1]
    assert (r1.action, r1.actor, r1.reason) == ("resolve", "carol", "created by hand in the POS")
    assert (r2.action, r2.actor, r2.reason) == ("discard", "dave", "test order")
    assert pos.ids().count("map1") == 1  # never attempted again
    # a discarded delivery can be revived
    assert h.operator.retry(m2, actor="dave") == [m2]
    assert h.status("map2") is DeliveryStatus.PENDING


def test_an_actor_must_be_named() -> None:
    h, _, _ = populated()
    with pytest.raises(ValueError, match="actor"):
        h.operator.retry(h.delivery("map1").id, actor=" ")


def test_retry_all_dry_run_changes_nothing() -> None:
    h, _, _ = populated()
    would = h.operator.retry_all(dry_run=True, actor="erin")
    assert sorted(would) == sorted(h.delivery(i).id for i in ("map1", "fmt1", "map2"))
    assert [d.status for d in h.operator.list(status="needs_action")] == [
        DeliveryStatus.NEEDS_ACTION
    ] * 3
    assert all(a.action == "deliver" for a in h.queue.audit())


def test_retry_all_with_filters() -> None:
    h, _, _ = populated()
    moved = h.operator.retry_all(category="mapping", destination="pos", actor="erin")
    assert sorted(moved) == sorted([h.delivery("map1").id, h.delivery("map2").id])
    assert h.status("fmt1") is DeliveryStatus.NEEDS_ACTION
    assert {a.actor for a in h.queue.audit() if a.action == "retry"} == {"erin"}
    assert len([a for a in h.queue.audit() if a.action == "retry"]) == 2
    assert h.operator.retry_all(destination="crm", actor="erin") == []
    # retry a scheduled retry now
    moved = h.operator.retry_all(status="retry_scheduled", actor="erin")
    assert moved == [h.delivery("down1").id]
    # succeeded deliveries are never re-sent by retry_all
    assert h.operator.retry_all(status="succeeded", actor="erin") == []


def test_stats_count_by_destination_status_and_category() -> None:
    h, _, _ = populated()
    stats = h.operator.stats()
    assert stats.total == 7
    assert dict(stats.by_destination["pos"]) == {
        DeliveryStatus.SUCCEEDED: 1,
        DeliveryStatus.NEEDS_ACTION: 3,
        DeliveryStatus.RETRY_SCHEDULED: 1,
    }
    assert dict(stats.by_destination["crm"]) == {DeliveryStatus.SUCCEEDED: 2}
    assert dict(stats.needs_action["pos"]) == {
        ErrorCategory.MAPPING: 2,
        ErrorCategory.DATA_FORMAT: 1,
    }
    assert stats.by_status[DeliveryStatus.SUCCEEDED] == 3
    assert stats.oldest_waiting == h.delivery("down1").created_at


def test_recent_errors_newest_first() -> None:
    h, _, _ = populated()
    h.clock.advance(10)
    h.dispatcher.run_until_idle()  # down1 fails again
    recent = h.operator.recent_errors(limit=2)
    assert len(recent) == 2
    assert recent[0].finished_at >= recent[1].finished_at
    assert recent[0].delivery_id == h.delivery("down1").id
    assert all(r.error is not None for r in h.operator.recent_errors())
    assert len(h.operator.recent_errors()) == 5


def test_error_trend_counts_failures_per_bucket_and_category() -> None:
    def behave(e: Event, n: int) -> Any:
        raise RetryableError("down") if e.id.startswith("t") else MappingError("no SKU")

    h = harness(Scripted("pos", behave))
    start = h.clock.now()
    h.dispatcher.submit_many([event("t1"), event("m1")])
    h.dispatcher.run_until_idle()  # bucket 0: 1 transient, 1 mapping
    h.clock.advance(timedelta(hours=2, minutes=30))
    h.dispatcher.run_until_idle()  # bucket 2: t1 again
    trend = h.operator.error_trend(bucket=timedelta(hours=1), since=start)
    assert [b.start for b in trend] == [start + timedelta(hours=i) for i in range(3)]
    assert trend[0].counts == {ErrorCategory.TRANSIENT: 1, ErrorCategory.MAPPING: 1}
    assert trend[1].counts == {}
    assert trend[2].counts == {ErrorCategory.TRANSIENT: 1}
    assert [b.total for b in trend] == [2, 0, 1]
    # the default window covers the last 24 buckets, oldest first
    default = h.operator.error_trend(bucket=3600)
    assert sum(b.total for b in default) == 3
    assert default == sorted(default, key=lambda b: b.start)
    with pytest.raises(ValueError, match="bucket"):
        h.operator.error_trend(bucket=0)


def test_pause_and_resume_a_destination() -> None:
    pos = Scripted("pos")
    h = harness(pos)
    state = h.operator.pause("pos", note="POS maintenance", actor="frank")
    assert state.paused
    assert state.paused_reason == "POS maintenance"
    h.dispatcher.submit(event("e1"))
    h.clock.advance(3600)
    h.dispatcher.run_until_idle()
    assert pos.ids() == []
    assert h.operator.destinations()["pos"].paused
    h.operator.resume("pos", actor="frank")
    h.dispatcher.run_until_idle()
    assert pos.ids("ok") == ["e1"]
    actions = [(a.action, a.actor, a.destination) for a in reversed(h.queue.audit())]
    assert actions[:2] == [("pause", "frank", "pos"), ("resume", "frank", "pos")]


def test_operator_on_the_system_clock_re_syncs_for_a_fake_clock_dispatcher() -> None:
    """Operator(queue) with no clock still makes a retry due for a dispatcher
    whose clock is far from the wall clock (a re-sync is due at once)."""
    from resilient_sync import Dispatcher, Operator, RetryPolicy
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
    from resilient_sync.testing import FakeClock, FlakyDestination

    clock = FakeClock()  # 2024, years behind the operator's wall clock
    queue = MemoryQueueStore()
    pos = FlakyDestination("pos", [MappingError("unknown SKU")])
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [pos], clock=clock)
    dispatcher.submit(Event("o1", "order.created", {"sku": "MUG"}))
    assert dispatcher.run_until_idle().needs_action == 1
    stuck = queue.list().items[0]

    assert Operator(queue).retry([stuck.id], actor="alice") == [stuck.id]
    assert dispatcher.run_until_idle().succeeded == 1
    assert [e.id for e in pos.applied] == ["o1"]
    _ = RetryPolicy  # imported for the reader: the default policy is used


def test_a_re_sync_gives_a_fresh_deadline_not_only_fresh_attempts() -> None:
    """A delivery re-synced long after its deadline is retried again under the
    policy, counting the deadline from the re-sync, not from submission."""
    from resilient_sync import Dispatcher, Operator, RetryPolicy
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
    from resilient_sync.testing import FakeClock, FlakyDestination

    clock = FakeClock()
    queue = MemoryQueueStore()
    down = RetryableError("POS down")
    pos = FlakyDestination("pos", [down, down, down, down])
    policy = RetryPolicy(max_attempts=10, initial_delay=60, jitter=False, deadline=3600)
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [pos], retry=policy, clock=clock)
    operator = Operator(queue, clock)
    dispatcher.submit(Event("c1", "customer.created", {}))
    dispatcher.run_until_idle()
    clock.advance(timedelta(hours=2))  # past the deadline: the next failure parks it
    dispatcher.run_until_idle()
    parked = queue.list().items[0]
    assert parked.status is DeliveryStatus.NEEDS_ACTION
    assert "deadline" in (parked.last_error.message if parked.last_error else "")

    clock.advance(timedelta(days=3))  # the operator re-syncs days later
    operator.retry([parked.id], actor="alice")
    dispatcher.run_until_idle()  # fails again: a fresh budget, so a retry is scheduled
    again = queue.get(parked.id)
    assert again is not None
    assert again.status is DeliveryStatus.RETRY_SCHEDULED
    clock.advance(60)
    dispatcher.run_until_idle()  # the 4th scripted failure; still inside the new hour
    clock.advance(120)
    dispatcher.run_until_idle()
    assert [e.id for e in pos.applied] == ["c1"]


def test_stats_by_status_takes_the_status_or_its_value() -> None:
    h = harness(RecordingDestination("pos"))
    h.dispatcher.submit_many([event("e1"), event("e2")])
    h.dispatcher.run_until_idle()
    by_status = h.operator.stats().by_status
    assert by_status[DeliveryStatus.SUCCEEDED] == by_status["succeeded"] == 2
    assert "succeeded" in by_status
    assert "needs_action" not in by_status
    assert by_status.get("needs_action", 0) == 0
    assert by_status.get("no-such-status") is None
    with pytest.raises(KeyError):
        by_status["no-such-status"]

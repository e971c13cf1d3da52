"""Leases: a crashed worker's deliveries are claimed again; a late worker is fenced off;
the idempotency key survives it all, and a completed key is never redone."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import pytest

from core_support import Harness, event, harness
from resilient_sync import (
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    DispatchEvent,
    Event,
    MappingError,
)
from resilient_sync.stores import Completion, MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock, RecordingDestination

LEASE = 60.0


def crashed_claim(h: Harness, worker: str = "crashed-worker") -> Any:
    """A worker claims everything due, then dies without a word."""
    now = h.clock.now()
    return h.queue.claim(
        now=now, limit=10, lease_until=now + timedelta(seconds=LEASE), worker=worker
    )


def test_an_expired_lease_is_claimed_again_and_the_late_worker_is_refused() -> None:
    pos = RecordingDestination("pos")
    h = harness(pos, lease=LEASE)
    h.dispatcher.submit(event("e1"))
    (stale,) = crashed_claim(h)
    assert stale.status is DeliveryStatus.IN_FLIGHT
    assert stale.lease_owner == "crashed-worker"

    # while the lease is live, nobody else touches the delivery
    h.clock.advance(LEASE - 1)
    assert h.dispatcher.run_until_idle().idle
    assert pos.calls == []

    h.clock.advance(1)
    report = h.dispatcher.run_until_idle()
    assert report.succeeded == 1
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.SUCCEEDED
    assert d.attempts == 2  # the crashed attempt counts
    assert d.lease_token != stale.lease_token
    expired = [a for a in h.audit("e1") if a.action == "lease_expired"]
    assert len(expired) == 1
    assert expired[0].reason is not None
    assert "crashed-worker" in expired[0].reason
    assert pos.calls[0][1].idempotency_key == stale.idempotency_key

    # the crashed worker wakes up and tries to record its outcome
    late = Completion(
        delivery_id=stale.id,
        lease_token=stale.lease_token,
        status=DeliveryStatus.NEEDS_ACTION,
        finished_at=h.clock.now(),
    )
    assert h.queue.complete([late]) == [False]
    after = h.delivery("e1")
    assert after == d


def test_the_late_worker_cannot_reschedule_a_delivery_now_held_by_another() -> None:
    h = harness(RecordingDestination("pos"), lease=LEASE)
    h.dispatcher.submit(event("e1"))
    (stale,) = crashed_claim(h, "w-old")
    h.clock.advance(LEASE)
    (fresh,) = crashed_claim(h, "w-new")
    assert fresh.lease_token > stale.lease_token
    late = Completion(
        delivery_id=stale.id,
        lease_token=stale.lease_token,
        status=DeliveryStatus.RETRY_SCHEDULED,
        finished_at=h.clock.now(),
        next_attempt_at=h.clock.now() + timedelta(hours=1),
    )
    assert h.queue.complete([late]) == [False]
    now_ = h.delivery("e1")
    assert now_.status is DeliveryStatus.IN_FLIGHT
    assert now_.lease_owner == "w-new"
    ok = Completion(
        delivery_id=fresh.id,
        lease_token=fresh.lease_token,
        status=DeliveryStatus.SUCCEEDED,
        finished_at=h.clock.now(),
        result={"id": 1},
    )
    assert h.queue.complete([ok]) == [True]
    assert h.status("e1") is DeliveryStatus.SUCCEEDED


class Crash(BaseException):
    """A worker dying mid-delivery (not an error the dispatcher may catch)."""


def test_the_key_is_stable_across_a_crash_mid_delivery() -> None:
    keys: list[str] = []
    crash = {"next": True}

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            keys.append(context.idempotency_key)
            if crash["next"]:
                crash["next"] = False
                raise Crash
            return {"id": 7}

    h = harness(Pos(), lease=LEASE)
    h.dispatcher.submit(event("e1"))
    with pytest.raises(Crash):
        h.dispatcher.run_once()
    assert h.status("e1") is DeliveryStatus.IN_FLIGHT
    h.clock.advance(LEASE)
    assert h.dispatcher.run_until_idle().succeeded == 1
    assert len(keys) == 2
    assert keys[0] == keys[1] == h.delivery("e1").idempotency_key


def test_the_key_is_stable_across_an_operator_retry() -> None:
    fail = {"on": True}
    keys: list[str] = []

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            keys.append(context.idempotency_key)
            if fail["on"]:
                raise MappingError("unknown SKU")
            return None

    h = harness(Pos())
    h.dispatcher.submit(event("e1"))
    h.drain()
    fail["on"] = False
    h.operator.retry(h.delivery("e1").id, actor="alice")
    h.drain()
    assert h.status("e1") is DeliveryStatus.SUCCEEDED
    assert len(keys) == 2
    assert keys[0] == keys[1]


class CrashOnComplete(MemoryQueueStore):
    """A queue store whose next ``complete`` dies: the process crashed after the
    idempotency store recorded the success but before the queue did."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_next = True

    def complete(self, completions: Any) -> list[bool]:
        if self.crash_next:
            self.crash_next = False
            raise Crash
        return super().complete(completions)


def test_a_completed_key_is_a_no_op_after_a_crash_before_the_queue_recorded_it() -> None:
    clock = FakeClock()
    queue, idem = CrashOnComplete(), MemoryIdempotencyStore()
    pos = RecordingDestination("pos", result={"remote_id": "P-9"})
    dispatcher = Dispatcher(queue, idem, [pos], clock=clock, lease=LEASE)
    (d,) = dispatcher.submit(event("e1"))
    with pytest.raises(Crash):
        dispatcher.run_once()
    assert len(pos.calls) == 1
    stuck = queue.get(d.id)
    assert stuck is not None
    assert stuck.status is DeliveryStatus.IN_FLIGHT  # the queue never heard of the success

    clock.advance(LEASE)
    replay = Dispatcher(queue, idem, [pos], clock=clock, lease=LEASE)  # a restarted worker
    assert replay.run_until_idle().succeeded == 1
    assert len(pos.calls) == 1  # not called again
    done = queue.get(d.id)
    assert done is not None
    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.result == {"remote_id": "P-9"}
    actions = [a.action for a in queue.attempts(d.id)]
    assert actions == ["lease_expired", "replay"]


def test_a_worker_that_outlives_its_lease_loses_its_outcome() -> None:
    clock = FakeClock()
    queue, idem = MemoryQueueStore(), MemoryIdempotencyStore()
    pos = RecordingDestination("pos")
    events: list[DispatchEvent] = []
    rescuer = Dispatcher(queue, idem, [pos], clock=clock, lease=LEASE, worker_id="rescuer")

    class Stalled:
        """Hangs past its lease; meanwhile another worker takes over."""

        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            clock.advance(LEASE + 1)
            assert rescuer.run_once().succeeded == 1
            return pos.deliver(e, context)

    slow = Dispatcher(
        queue, idem, [Stalled()], clock=clock, lease=LEASE, worker_id="slow", on_event=events.append
    )
    (d,) = slow.submit(event("e1"))
    report = slow.run_once()
    assert report.lost_lease == 1
    assert report.succeeded == 0
    assert [e.kind for e in events] == ["lost_lease"]
    stored = queue.get(d.id)
    assert stored is not None
    assert stored.status is DeliveryStatus.SUCCEEDED
    assert stored.attempts == 2
    # both workers sent the same key: the destination applied the effect once
    assert len(pos.calls) == 2
    assert len(pos.applied) == 1
    assert len(set(pos.keys)) == 1


def test_a_poison_event_that_kills_its_worker_is_not_retried_forever() -> None:
    calls: list[int] = []

    cured: list[str] = []

    class Poison:
        name = "pos"
        poisoned = True

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            if not self.poisoned:
                cured.append(context.idempotency_key)
                return None
            calls.append(context.attempt)
            raise Crash  # e.g. the process runs out of memory on this payload

    seen: list[str] = []
    poison = Poison()
    h = harness(poison, lease=LEASE, on_needs_action=lambda d: seen.append(d.id))
    h.dispatcher.submit(event("e1"))
    for _ in range(10):
        with contextlib.suppress(Crash):
            h.dispatcher.run_once()
        h.clock.advance(LEASE)
    budget = h.dispatcher.retry.max_attempts
    assert calls == list(range(1, budget + 1))
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.attempts == budget
    assert d.last_error is not None
    assert "crashed" in d.last_error.message
    assert seen == [d.id]
    assert h.audit("e1")[-1].action == "give_up"
    # a person fixes the cause and re-syncs it: delivered under the same key
    poison.poisoned = False
    h.operator.retry(d.id, actor="alice")
    assert h.dispatcher.run_until_idle().succeeded == 1
    assert cured == [d.idempotency_key]

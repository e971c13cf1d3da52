"""Order where it matters: strict per (destination, ordering_key), and only per key."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from core_support import Harness, Scripted, event, harness
from resilient_sync import DeliveryStatus, Event, MappingError, RetryableError


def test_same_key_is_attempted_in_submission_order_despite_retries() -> None:
    # e1 fails twice before it goes through; e2 and e3 must wait for it
    def behave(e: Event, n: int) -> Any:
        if e.id == "e1" and n <= 2:
            raise RetryableError("POS down")
        return None

    pos = Scripted("pos", behave)
    h = harness(pos, concurrency=4)
    h.dispatcher.submit_many([event(f"e{i}", ordering_key="cust-1") for i in (1, 2, 3)])
    h.dispatcher.run_until_idle()
    assert pos.ids() == ["e1"]
    assert h.status("e2") is DeliveryStatus.PENDING
    h.drain()
    assert pos.ids() == ["e1", "e1", "e1", "e2", "e3"]
    assert pos.ids("ok") == ["e1", "e2", "e3"]


def test_a_stuck_key_holds_back_only_itself() -> None:
    def behave(e: Event, n: int) -> Any:
        if e.id == "a1":
            raise MappingError("unknown SKU")
        return None

    pos = Scripted("pos", behave)
    crm = Scripted("crm")
    h = harness(pos, crm, concurrency=2)
    h.dispatcher.submit_many(
        [
            event("a1", ordering_key="A"),
            event("b1", ordering_key="B"),
            event("a2", ordering_key="A"),
            event("u1"),
            event("b2", ordering_key="B"),
            event("a3", ordering_key="A"),
        ]
    )
    h.drain()
    assert h.status("a1", "pos") is DeliveryStatus.NEEDS_ACTION
    assert h.status("a2", "pos") is DeliveryStatus.PENDING
    assert h.status("a3", "pos") is DeliveryStatus.PENDING
    assert sorted(pos.ids("ok")) == ["b1", "b2", "u1"]
    assert pos.ids("ok").index("b1") < pos.ids("ok").index("b2")
    # the same key at another destination is independent
    crm_ok = crm.ids("ok")
    assert sorted(crm_ok) == ["a1", "a2", "a3", "b1", "b2", "u1"]
    assert [e for e in crm_ok if e.startswith("a")] == ["a1", "a2", "a3"]
    # waiting behind the stuck head costs no attempts
    assert h.delivery("a2", "pos").attempts == 0


def _stuck(h: Harness) -> str:
    h.dispatcher.submit_many([event(f"a{i}", ordering_key="A") for i in (1, 2, 3)], to="pos")
    h.drain()
    assert h.status("a1") is DeliveryStatus.NEEDS_ACTION
    assert h.status("a2") is DeliveryStatus.PENDING
    return h.delivery("a1").id


@pytest.mark.parametrize("action", ["resolve", "discard", "retry"])
def test_the_key_moves_on_once_the_operator_handles_the_head(action: str) -> None:
    broken = {"a1": True}

    def behave(e: Event, n: int) -> Any:
        if broken.get(e.id):
            raise MappingError("unknown SKU")
        return None

    pos = Scripted("pos", behave)
    h = harness(pos)
    head = _stuck(h)
    broken["a1"] = False  # the mapping was added
    if action == "resolve":
        assert h.operator.resolve(head, note="created by hand", actor="alice") == [head]
    elif action == "discard":
        assert h.operator.discard(head, note="test order", actor="alice") == [head]
    else:
        assert h.operator.retry(head, actor="alice") == [head]
    h.drain()
    expected = ["a1", "a2", "a3"] if action == "retry" else ["a2", "a3"]
    assert pos.ids("ok") == expected
    final = {"resolve": "resolved", "discard": "discarded", "retry": "succeeded"}[action]
    assert h.status("a1").value == final


def test_a_failing_head_holds_its_key_even_while_retry_scheduled() -> None:
    def behave(e: Event, n: int) -> Any:
        if e.id == "a1" and n == 1:
            raise RetryableError("down")
        return None

    pos = Scripted("pos", behave)
    h = harness(pos)
    h.dispatcher.submit_many([event("a1", ordering_key="A"), event("a2", ordering_key="A")])
    h.dispatcher.run_until_idle()
    assert h.status("a1") is DeliveryStatus.RETRY_SCHEDULED
    assert h.status("a2") is DeliveryStatus.PENDING
    # time passes, but not enough for the retry: a2 still waits
    h.clock.advance(0.5)
    h.dispatcher.run_until_idle()
    assert pos.ids() == ["a1"]
    h.drain()
    assert pos.ids("ok") == ["a1", "a2"]


def test_order_per_key_holds_with_a_concurrent_pool_and_random_failures() -> None:
    # Deterministic pseudo-random failures; a shared log proves that no event
    # of a key was attempted before the previous one of that key succeeded.
    keys = ["k1", "k2", "k3", "k4"]
    events = [event(f"{k}-{i}", ordering_key=k) for i in range(6) for k in keys]
    events += [event(f"free-{i}") for i in range(6)]
    lock = threading.Lock()
    attempted: list[str] = []

    def behave(e: Event, n: int) -> Any:
        with lock:
            attempted.append(e.id)
        if (sum(map(ord, e.id)) + n) % 3 == 0 and n < 3:
            raise RetryableError("flaky")
        return None

    pos = Scripted("pos", behave)
    h = harness(pos, concurrency=4, batch_size=10)
    h.dispatcher.submit_many(events)
    h.drain()
    assert all(d.status is DeliveryStatus.SUCCEEDED for d in h.all())
    succeeded = pos.ids("ok")
    for k in keys:
        wanted = [f"{k}-{i}" for i in range(6)]
        assert [e for e in succeeded if e.startswith(f"{k}-")] == wanted
        # every attempt of k-i happened after k-(i-1) succeeded
        seen_ok: set[str] = set()
        for eid, _, outcome in pos.log:
            if not eid.startswith(f"{k}-"):
                continue
            index = int(eid.split("-")[1])
            if index > 0:
                assert f"{k}-{index - 1}" in seen_ok, f"{eid} attempted before its predecessor"
            if outcome == "ok":
                seen_ok.add(eid)
    assert any(o != "ok" for _, _, o in pos.log)  # failures did happen


def test_keyed_deliveries_of_one_key_never_run_at_the_same_time() -> None:
    # With a pool of 4 and only one key, at most one delivery is ever in flight.
    lock = threading.Lock()
    active = {"now": 0, "max": 0}

    class Slow:
        name = "pos"

        def deliver(self, e: Event, context: Any) -> Any:
            with lock:
                active["now"] += 1
                active["max"] = max(active["max"], active["now"])
            try:
                return {"ok": e.id}
            finally:
                with lock:
                    active["now"] -= 1

    h = harness(Slow(), concurrency=4)
    h.dispatcher.submit_many([event(f"e{i}", ordering_key="one") for i in range(8)])
    report = h.dispatcher.run_once()
    assert report.claimed == 1  # only the head of the key is claimable
    h.drain()
    assert active["max"] == 1
    assert all(d.status is DeliveryStatus.SUCCEEDED for d in h.all())

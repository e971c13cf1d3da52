"""The testing kit: FakeClock, RecordingDestination, FlakyDestination."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from core_support import event, harness
from resilient_sync import (
    DeliveryContext,
    DeliveryStatus,
    Event,
    MappingError,
    RetryableError,
    SystemClock,
)
from resilient_sync.testing import FakeClock, FlakyDestination, RecordingDestination


def ctx(key: str) -> DeliveryContext:
    return DeliveryContext(delivery_id="d", destination="pos", idempotency_key=key, attempt=1)


def test_fake_clock_is_aware_utc_and_moves_only_when_told() -> None:
    start = datetime(2024, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    clock = FakeClock(start)
    assert clock.now() == start
    assert clock.now().utcoffset() == timedelta(0)
    assert clock.now() == clock.now()
    clock.advance(90)
    clock.advance(timedelta(minutes=1))
    assert clock.now() - start == timedelta(seconds=150)
    clock.sleep(10)
    assert clock.now() - start == timedelta(seconds=160)
    asyncio.run(clock.asleep(5))
    assert clock.now() - start == timedelta(seconds=165)
    clock.set(start + timedelta(hours=1))
    assert clock.now() == start + timedelta(hours=1)
    assert FakeClock().now().tzinfo is not None


@pytest.mark.parametrize(
    "bad",
    [
        lambda c: c.advance(-1),
        lambda c: c.set(datetime(2000, 1, 1, tzinfo=timezone.utc)),
        lambda c: c.set(datetime(2030, 1, 1)),
    ],
)
def test_fake_clock_refuses_to_go_back_or_be_naive(bad: object) -> None:
    clock = FakeClock()
    before = clock.now()
    with pytest.raises(ValueError, match=r"backwards|timezone-aware"):
        bad(clock)  # type: ignore[operator]
    assert clock.now() == before
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        clock.advance("10")  # type: ignore[arg-type]


def test_system_clock_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_recording_destination_applies_each_key_once() -> None:
    dest = RecordingDestination("pos")
    e = Event("e1", "t", {})
    first = dest.deliver(e, ctx("k1"))
    assert dest.deliver(e, ctx("k1")) == first
    dest.deliver(Event("e2", "t", {}), ctx("k2"))
    assert len(dest.calls) == 3
    assert [x.id for x in dest.applied] == ["e1", "e2"]
    assert [x.id for x in dest.events] == ["e1", "e2"]
    assert dest.keys == ["k1", "k1", "k2"]
    assert dest.effects_per_key == {"k1": 1, "k2": 1}


def test_recording_destination_results() -> None:
    fixed = RecordingDestination("pos", result={"ok": True})
    assert fixed.deliver(Event("e1", "t", {}), ctx("k")) == {"ok": True}
    numbered = RecordingDestination("pos", result=lambda e, n: f"{e.id}#{n}")
    numbered.deliver(Event("a", "t", {}), ctx("k1"))
    assert numbered.deliver(Event("b", "t", {}), ctx("k2")) == "b#2"


def test_flaky_destination_follows_its_scripts() -> None:
    flaky = FlakyDestination(
        "pos",
        [RetryableError("down"), None, MappingError("no SKU")],
        per_event={"vip": [RetryableError("vip down"), RetryableError("vip down")]},
    )
    with pytest.raises(RetryableError, match="down"):
        flaky.deliver(Event("a", "t", {}), ctx("ka"))
    flaky.deliver(Event("a", "t", {}), ctx("ka"))  # None lets it through
    for _ in range(2):
        with pytest.raises(RetryableError, match="vip down"):
            flaky.deliver(Event("vip", "t", {}), ctx("kv"))
    # its own script is used up: back to the shared one
    with pytest.raises(MappingError):
        flaky.deliver(Event("vip", "t", {}), ctx("kv"))
    flaky.deliver(Event("vip", "t", {}), ctx("kv"))
    flaky.deliver(Event("b", "t", {}), ctx("kb"))  # every script is used up
    assert [e.id for e in flaky.applied] == ["a", "vip", "b"]
    assert [e.id for e, _ in flaky.failures] == ["a", "vip", "vip", "vip"]
    assert len(flaky.calls) == 7


def test_flaky_failing_then_succeeding_through_a_dispatcher() -> None:
    flaky = FlakyDestination.failing(3, RetryableError("down"), name="pos")
    h = harness(flaky)
    h.dispatcher.submit(event("e1"))
    h.drain()
    assert h.status("e1") is DeliveryStatus.SUCCEEDED
    assert len(flaky.calls) == 4
    assert len(set(flaky.keys)) == 1
    assert flaky.effects_per_key == {h.delivery("e1").idempotency_key: 1}

"""The retry policy: delays, Retry-After, the budget and the deadline,
observed through the dispatcher with a fake clock, plus property tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_support import Scripted, event, fail_times, harness
from resilient_sync import (
    DeliveryStatus,
    ErrorCategory,
    Event,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
)
from resilient_sync.testing import FlakyDestination


def test_delays_grow_by_the_multiplier_until_the_cap() -> None:
    policy = RetryPolicy(
        max_attempts=8, initial_delay=1.5, multiplier=3, max_delay=100, deadline=None, jitter=False
    )
    pos = FlakyDestination.failing(100, RetryableError("POS down"), name="pos")
    h = harness(pos, retry=policy)
    h.dispatcher.submit(event("e1"))
    seen: list[float] = []
    for _ in range(7):
        report = h.dispatcher.run_until_idle()
        assert report.retry_scheduled == 1
        d = h.delivery("e1")
        assert d.status is DeliveryStatus.RETRY_SCHEDULED
        assert d.next_attempt_at is not None
        seen.append((d.next_attempt_at - h.clock.now()).total_seconds())
        # not a moment early
        h.clock.set(d.next_attempt_at - timedelta(microseconds=1))
        assert h.dispatcher.run_until_idle().idle
        h.clock.set(d.next_attempt_at)
    expected = [min(1.5 * 3**n, 100) for n in range(7)]
    assert seen == pytest.approx(expected)
    assert seen == [policy.delay(n) for n in range(1, 8)]
    h.dispatcher.run_until_idle()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.attempts == 8
    assert len(pos.calls) == 8


def test_timedelta_settings_are_accepted() -> None:
    policy = RetryPolicy(
        initial_delay=timedelta(seconds=2),
        max_delay=timedelta(minutes=1),
        deadline=timedelta(hours=1),
        jitter=False,
    )
    assert policy.delay(1) == 2.0
    assert policy.delay(20) == 60.0
    assert policy.deadline == 3600.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"initial_delay": -1}, "initial_delay"),
        ({"multiplier": 0}, "multiplier"),
        ({"max_delay": -5}, "max_delay"),
        ({"deadline": -1}, "deadline"),
        ({"max_retry_after": -1}, "max_retry_after"),
        ({"initial_delay": math.nan}, "initial_delay"),
        ({"multiplier": math.nan}, "multiplier"),
        ({"multiplier": math.inf}, "multiplier"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"deadline": math.inf}, "deadline"),
        ({"max_retry_after": math.nan}, "max_retry_after"),
    ],
)
def test_invalid_policies_are_refused_naming_the_setting(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RetryPolicy(**kwargs)


def test_jitter_must_be_a_bool_or_callable() -> None:
    with pytest.raises(TypeError, match="jitter"):
        RetryPolicy(jitter="yes")  # type: ignore[arg-type]


def test_custom_jitter_is_applied_and_clamped() -> None:
    half = RetryPolicy(initial_delay=10, max_delay=100, jitter=lambda s: s / 2)
    assert half.delay(1) == 5.0
    wild = RetryPolicy(initial_delay=10, max_delay=100, jitter=lambda s: s * 50)
    assert wild.delay(3) == 100.0
    negative = RetryPolicy(initial_delay=10, max_delay=100, jitter=lambda s: -s)
    assert negative.delay(1) == 0.0


def test_retry_after_is_a_floor_and_holds_the_whole_destination() -> None:
    pos = Scripted("pos", _first_call_of("e1", lambda: RateLimitedError(retry_after=120)))
    h = harness(pos)
    h.dispatcher.submit(event("e1"))
    h.dispatcher.run_until_idle()
    limited = h.delivery("e1")
    assert limited.status is DeliveryStatus.RETRY_SCHEDULED
    assert limited.next_attempt_at == h.clock.now() + timedelta(seconds=120)
    assert limited.last_error is not None
    assert limited.last_error.category is ErrorCategory.RATE_LIMITED
    assert limited.last_error.retry_after == 120
    held = h.operator.destinations()["pos"]
    assert held.hold_until == h.clock.now() + timedelta(seconds=120)
    assert held.hold_reason is not None
    assert "rate limited" in held.hold_reason

    # another event to the same destination waits too
    h.dispatcher.submit(event("e2"))
    h.clock.advance(119)
    assert h.dispatcher.run_until_idle().idle
    assert pos.ids() == ["e1"]
    h.clock.advance(1)
    report = h.dispatcher.run_until_idle()
    assert report.succeeded == 2
    assert pos.ids("ok") == ["e1", "e2"]


def test_a_rate_limit_holds_back_the_rest_of_the_same_batch() -> None:
    pos = Scripted("pos", _first_call_of("e1", lambda: RateLimitedError(retry_after=30)))
    other = Scripted("crm")
    h = harness(pos, other)
    h.dispatcher.submit_many([event("e1"), event("e2"), event("e3")])
    report = h.dispatcher.run_once()
    assert report.claimed == 6
    assert report.retry_scheduled == 1
    assert report.released == 2  # e2 and e3 to pos were handed back unattempted
    assert pos.ids() == ["e1"]
    assert sorted(other.ids("ok")) == ["e1", "e2", "e3"]
    # handing back costs no attempt
    assert h.delivery("e2", "pos").attempts == 0
    assert h.delivery("e2", "pos").status is DeliveryStatus.PENDING
    h.clock.advance(30)
    h.dispatcher.run_until_idle()
    assert pos.ids("ok") == ["e1", "e2", "e3"]


def test_retry_after_is_capped_by_max_retry_after() -> None:
    policy = RetryPolicy(initial_delay=1, max_retry_after=300, jitter=False)
    pos = Scripted("pos", lambda e, n: _raise(RateLimitedError(retry_after=86_400)))
    h = harness(pos, retry=policy)
    h.dispatcher.submit(event("e1"))
    h.dispatcher.run_until_idle()
    d = h.delivery("e1")
    assert d.next_attempt_at == h.clock.now() + timedelta(seconds=300)
    assert h.operator.destinations()["pos"].hold_until == h.clock.now() + timedelta(seconds=300)


def test_a_transient_error_with_retry_after_is_honoured_without_holding_others() -> None:
    pos = Scripted("pos", _first_call_of("e1", lambda: RetryableError("busy", retry_after=45)))
    h = harness(pos)
    h.dispatcher.submit_many([event("e1"), event("e2")])
    h.dispatcher.run_until_idle()
    assert h.delivery("e1").next_attempt_at == h.clock.now() + timedelta(seconds=45)
    assert h.status("e2") is DeliveryStatus.SUCCEEDED


def test_the_budget_ends_in_needs_action_retries_exhausted() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=1, jitter=False, deadline=None)
    pos = Scripted("pos", fail_times(99, lambda: RetryableError("POS down")))
    h = harness(pos, retry=policy)
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.attempts == 3
    assert d.next_attempt_at is None
    assert d.last_error is not None
    assert d.last_error.category is ErrorCategory.TRANSIENT
    assert "retries exhausted" in d.last_error.message
    assert "POS down" in d.last_error.message
    assert len(pos.ids()) == 3


def test_max_attempts_one_means_no_retry() -> None:
    pos = Scripted("pos", fail_times(99, lambda: RetryableError("down")))
    h = harness(pos, retry=RetryPolicy(max_attempts=1))
    h.dispatcher.submit(event("e1"))
    h.drain()
    assert h.status("e1") is DeliveryStatus.NEEDS_ACTION
    assert len(pos.ids()) == 1


def test_no_retry_is_scheduled_past_the_deadline() -> None:
    policy = RetryPolicy(
        max_attempts=100, initial_delay=10, multiplier=2, max_delay=1000, deadline=30, jitter=False
    )
    pos = Scripted("pos", fail_times(99, lambda: RetryableError("down")))
    h = harness(pos, retry=policy)
    start = h.clock.now()
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    # t=0 fails -> retry at 10; t=10 fails -> retry at 30 (== deadline, allowed);
    # t=30 fails -> next would be t=70 > 30: stop
    assert len(pos.ids()) == 3
    assert h.clock.now() - start == timedelta(seconds=30)
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.last_error is not None
    assert "deadline" in d.last_error.message


def _raise(exc: Exception) -> Any:
    raise exc


def _first_call_of(event_id: str, error: Callable[[], Exception]) -> Callable[[Event, int], Any]:
    def behave(e: Event, n: int) -> Any:
        if e.id == event_id and n == 1:
            raise error()
        return None

    return behave


# --- property tests ---------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 12),
    initial_delay=st.floats(0, 100, allow_nan=False),
    multiplier=st.floats(1, 5, allow_nan=False),
    max_delay=st.floats(0, 5000, allow_nan=False),
    deadline=st.none() | st.floats(0, 20_000, allow_nan=False),
    jitter=st.booleans(),
    max_retry_after=st.floats(0, 10_000, allow_nan=False),
)


@given(
    initial=st.floats(0, 1000, allow_nan=False),
    multiplier=st.floats(1, 10, allow_nan=False),
    cap=st.floats(0, 10_000, allow_nan=False),
)
def test_schedule_without_jitter_is_monotone_and_capped(
    initial: float, multiplier: float, cap: float
) -> None:
    policy = RetryPolicy(initial_delay=initial, multiplier=multiplier, max_delay=cap, jitter=False)
    delays = [policy.delay(n) for n in range(1, 30)]
    assert all(0 <= d <= cap for d in delays)
    assert delays == sorted(delays)
    assert delays[0] == pytest.approx(min(initial, cap))
    for n, d in enumerate(delays):
        assert d == pytest.approx(min(initial * multiplier**n, cap))


@given(
    initial=st.floats(0, 1000, allow_nan=False),
    multiplier=st.floats(1, 10, allow_nan=False),
    cap=st.floats(0, 10_000, allow_nan=False),
    n=st.integers(1, 40),
)
def test_schedule_with_jitter_stays_within_zero_and_the_cap(
    initial: float, multiplier: float, cap: float, n: int
) -> None:
    policy = RetryPolicy(initial_delay=initial, multiplier=multiplier, max_delay=cap, jitter=True)
    plain = RetryPolicy(initial_delay=initial, multiplier=multiplier, max_delay=cap, jitter=False)
    d = policy.delay(n)
    assert 0 <= d <= cap
    assert d <= plain.delay(n)


class AlwaysFails:
    """Fails every attempt with a scripted list of errors (cycled)."""

    name = "pos"

    def __init__(self, errors: Sequence[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    def deliver(self, event: Any, context: Any) -> Any:
        self.calls += 1
        raise self.errors[(self.calls - 1) % len(self.errors)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=policies,
    retry_afters=st.lists(
        st.none() | st.floats(0, 20_000, allow_nan=False), min_size=1, max_size=5
    ),
)
def test_dispatcher_schedule_respects_policy_retry_after_and_deadline(
    policy: RetryPolicy, retry_afters: list[float | None]
) -> None:
    errors: list[RetryableError] = [
        RateLimitedError(retry_after=ra) if ra is not None else RetryableError("down")
        for ra in retry_afters
    ]
    dest = AlwaysFails(errors)
    h = harness(dest, retry=policy)
    h.dispatcher.submit(event("e1"))
    created = h.delivery("e1").created_at
    for attempt in range(1, policy.max_attempts + 1):
        report = h.dispatcher.run_once()
        assert report.claimed == 1
        d = h.delivery("e1")
        now = h.clock.now()
        error = errors[(attempt - 1) % len(errors)]
        if d.status is DeliveryStatus.NEEDS_ACTION:
            assert d.last_error is not None
            assert "retries exhausted" in d.last_error.message
            # stopped early only because of the deadline
            if attempt < policy.max_attempts:
                assert policy.deadline is not None
                assert "deadline" in d.last_error.message
            break
        assert d.status is DeliveryStatus.RETRY_SCHEDULED
        assert attempt < policy.max_attempts
        assert d.next_attempt_at is not None
        delay = (d.next_attempt_at - now).total_seconds()
        floor = 0.0
        if error.retry_after is not None:
            floor = min(error.retry_after, policy.max_retry_after)
        assert delay >= floor - 1e-6
        assert delay <= max(policy.max_delay, floor) + 1e-6
        if policy.jitter is None:
            assert delay == pytest.approx(max(policy.delay(attempt), floor), abs=1e-6)
        if policy.deadline is not None:
            assert d.next_attempt_at <= created + timedelta(seconds=policy.deadline)
        h.clock.set(max([d.next_attempt_at, *_holds(h)]))
    else:
        pytest.fail("the budget did not end the retries")
    assert dest.calls <= policy.max_attempts
    assert h.dispatcher.run_until_idle().idle


def _holds(h: Any) -> list[Any]:
    return [s.hold_until for s in h.queue.destinations().values() if s.hold_until is not None]

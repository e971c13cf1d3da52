"""The retry policy: how long to wait before the next attempt, and when to stop.

Pure functions, no I/O. The schedule comes from ``backoff.expo`` and the jitter
from ``backoff.full_jitter``; a retry is a saved ``next_attempt_at``, never a
sleep in the worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
import backoff

from ._clock import MAX_SECONDS, to_seconds
from ._model import ErrorCategory

__all__ = ["RetryDecision", "RetryPolicy", "backoff_delay", "decide_retry"]

Jitter = Callable[[float], float]


def _seconds(value: float | timedelta) -> float:
    try:
        return to_seconds(value)
    except ValueError as exc:
        raise ValueError(f"RetryPolicy: {exc}") from None


def _optional_seconds(value: float | timedelta | None) -> float | None:
    return None if value is None else _seconds(value)


_FULL_JITTER: Jitter = backoff.full_jitter


def _jitter(value: bool | Jitter | None) -> Jitter | None:
    if value is True:
        return _FULL_JITTER
    if value is False or value is None:
        return None
    if not callable(value):
        raise TypeError(f"jitter must be a bool or a callable(seconds) -> seconds, got {value!r}")
    return value


def _positive(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value <= 1_000:  # also refuses NaN and infinity
        raise ValueError(
            f"RetryPolicy.{attribute.name} must be a number > 0 and at most 1000, got {value!r}"
        )


def _non_negative(_inst: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not 0 <= value <= MAX_SECONDS:  # also refuses NaN and infinity
        raise ValueError(
            f"RetryPolicy.{attribute.name} must be a number of seconds >= 0 and at most 100 "
            f"years, got {value!r}"
        )


def _at_least_one(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise ValueError(
            f"RetryPolicy.{attribute.name} must be an int >= 1 and at most 1,000,000, got {value!r}"
        )


@attrs.frozen
class RetryPolicy:
    """How retries are spaced and when they stop (the retry budget).

    Args:
        max_attempts: attempts in all, the first included (every failed
            attempt counts, 429s too); then NEEDS_ACTION.
        initial_delay: delay before the first retry (seconds or timedelta).
        multiplier: each retry waits ``multiplier`` times longer.
        max_delay: cap of one delay.
        deadline: no retry is scheduled later than this long after the
            delivery was submitted (None: no deadline).
        jitter: ``True`` for ``backoff.full_jitter`` (a random delay between 0
            and the computed one), ``False`` for none, or any
            ``callable(seconds) -> seconds`` (e.g. ``backoff.random_jitter``).
        max_retry_after: cap of a destination's ``Retry-After``.
        retry_unexpected: whether UNEXPECTED errors are retried like
            TRANSIENT ones (True) or need action at once (False).
    """

    max_attempts: int = attrs.field(default=8, validator=_at_least_one)
    initial_delay: float = attrs.field(default=1.0, converter=_seconds, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, converter=float, validator=_positive)
    max_delay: float = attrs.field(default=600.0, converter=_seconds, validator=_non_negative)
    deadline: float | None = attrs.field(
        default=86_400.0, converter=_optional_seconds, validator=_non_negative
    )
    jitter: Jitter | None = attrs.field(default=_FULL_JITTER, converter=_jitter)
    max_retry_after: float = attrs.field(
        default=3_600.0, converter=_seconds, validator=_non_negative
    )
    retry_unexpected: bool = True

    def delay(self, retry_number: int) -> float:
        """The delay before retry number ``retry_number`` (1 = the first retry)."""
        return backoff_delay(self, retry_number)


def backoff_delay(policy: RetryPolicy, retry_number: int) -> float:
    """Delay before retry ``retry_number`` (>= 1), from ``backoff.expo``.

    Without jitter the schedule is ``initial_delay * multiplier ** (n - 1)``,
    capped at ``max_delay``; with jitter, the jitter function is applied to it
    and the result clamped to ``[0, max_delay]``.
    """
    if retry_number < 1:
        raise ValueError(f"retry_number starts at 1, got {retry_number}")
    gen = backoff.expo(
        base=policy.multiplier, factor=policy.initial_delay, max_value=policy.max_delay
    )
    gen.send(None)  # prime, as backoff's own decorators do
    value = float(next(itertools.islice(gen, retry_number - 1, None)))
    value = min(value, policy.max_delay)
    if policy.jitter is not None:
        value = min(max(0.0, float(policy.jitter(value))), policy.max_delay)
    return value


@attrs.frozen(kw_only=True)
class RetryDecision:
    """``retry_at`` is set when a retry is scheduled; otherwise ``reason``
    says why the budget is spent."""

    retry_at: datetime | None
    reason: str | None = None


_RETRYABLE = frozenset({ErrorCategory.TRANSIENT, ErrorCategory.RATE_LIMITED})


def is_retryable(category: ErrorCategory, policy: RetryPolicy) -> bool:
    """Whether the policy retries this category at all."""
    return category in _RETRYABLE or (
        category is ErrorCategory.UNEXPECTED and policy.retry_unexpected
    )


def decide_retry(
    policy: RetryPolicy,
    *,
    attempts: int,
    created_at: datetime,
    now: datetime,
    retry_after: float | None = None,
) -> RetryDecision:
    """When to retry after ``attempts`` failed attempts, or why not.

    ``retry_after`` (seconds, from the destination) is a floor under the
    backoff delay, capped at ``policy.max_retry_after``.
    """
    if attempts >= policy.max_attempts:
        return RetryDecision(retry_at=None, reason=f"retries exhausted after {attempts} attempts")
    delay = backoff_delay(policy, attempts)
    if retry_after is not None:
        delay = max(delay, min(max(0.0, retry_after), policy.max_retry_after))
    retry_at = now + timedelta(seconds=delay)
    if policy.deadline is not None and retry_at > created_at + timedelta(seconds=policy.deadline):
        return RetryDecision(
            retry_at=None,
            reason=(
                f"retries exhausted: deadline of {timedelta(seconds=policy.deadline)} "
                f"reached after {attempts} attempts"
            ),
        )
    return RetryDecision(retry_at=retry_at)

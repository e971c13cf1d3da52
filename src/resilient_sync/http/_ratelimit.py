"""Client-side rate limiting per destination: a steady rate, a burst, and a
slow-down after the destination says "429 Too Many Requests".

The limiter is a token bucket written as GCRA (the "generic cell rate
algorithm"): one number, the theoretical arrival time, instead of a token
count and a refill timer. It reads time only from the ``now`` it is given
(the destination's injected clock), so ``FakeClock`` drives it exactly.

How long a worker waits is a decision made here, not a sleep hidden in it:
:meth:`RateLimiter.reserve` returns the seconds until the request's slot. A
slot within ``max_wait`` is kept and the destination sleeps that long (on its
clock); a later slot is refused with :class:`~resilient_sync.RateLimitedError`
so the dispatcher hands the delivery back and holds the whole destination for
that long, instead of parking a worker.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime

import attrs

from .._errors import RateLimitedError

__all__ = ["RateLimit", "RateLimiter"]

#: Each success after a 429 gives back this share of the configured rate.
_RECOVERY_STEP = 0.05


def _positive_or_none(
    _inst: object, attribute: attrs.Attribute[float | None], value: object
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"RateLimit.{attribute.name} must be a number > 0, got {value!r}")
    if math.isinf(value):
        raise ValueError(f"RateLimit.{attribute.name} must be finite, got {value!r}")


def _burst(_inst: object, _attr: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"RateLimit.burst must be an int >= 1, got {value!r}")


def _max_wait(_inst: object, _attr: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"RateLimit.max_wait must be a number >= 0, got {value!r}")


def _slow_down(_inst: object, _attr: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"RateLimit.slow_down must be in (0, 1], got {value!r}")


@attrs.frozen
class RateLimit:
    """Settings of a destination's client-side rate limit.

    Args:
        rate: requests per second, steady state (``None``: no steady limit;
            the limiter still honours the pause a 429 asks for).
        burst: requests that may go at once after a quiet spell.
        max_wait: the longest a worker waits for a slot (seconds); a request
            whose slot is further away is handed back to the dispatcher with
            ``RateLimitedError(retry_after=...)``, which holds the whole
            destination that long.
        slow_down: after a 429 the rate is multiplied by this (0.5 halves it,
            down to 1/16 of ``rate``); each success then gives back 5% of
            ``rate`` (additive increase, multiplicative decrease, as TCP does).

    >>> RateLimit(2.0, burst=5)
    RateLimit(rate=2.0, burst=5, max_wait=1.0, slow_down=0.5)
    """

    rate: float | None = attrs.field(validator=_positive_or_none)
    burst: int = attrs.field(default=1, validator=_burst)
    max_wait: float = attrs.field(default=1.0, validator=_max_wait)
    slow_down: float = attrs.field(default=0.5, validator=_slow_down)


class RateLimiter:
    """The state of one destination's rate limit; thread-safe, no I/O.

    ``reserve(now)`` books the next slot and says how long to wait for it;
    ``throttled(now, retry_after)`` records a 429 (no slot before
    ``now + retry_after``, and a slower rate); ``succeeded()`` records a
    success (the rate recovers step by step).
    """

    def __init__(self, limit: RateLimit | None = None) -> None:
        self.limit = limit if limit is not None else RateLimit(None)
        self._lock = threading.Lock()
        self._rate = self.limit.rate
        self._tat = -math.inf  # theoretical arrival time (epoch seconds)

    @property
    def current_rate(self) -> float | None:
        """Requests per second allowed now (lower than configured after a 429)."""
        with self._lock:
            return self._rate

    def next_slot(self, now: datetime) -> float:
        """Seconds from ``now`` until a request could go (0 when it could go now)."""
        with self._lock:
            return max(0.0, self._start(now.timestamp()) - now.timestamp())

    def _interval(self) -> float:
        return 0.0 if self._rate is None else 1.0 / self._rate

    def _tolerance(self) -> float:
        return (self.limit.burst - 1) * self._interval()

    def _start(self, t: float) -> float:
        return max(t, self._tat - self._tolerance())

    def reserve(self, now: datetime, *, destination: str = "destination") -> float:
        """Book a slot: the seconds to wait for it (0: go now).

        Raises :class:`~resilient_sync.RateLimitedError` (``retry_after`` =
        the wait) without booking when the slot is more than ``max_wait``
        away.
        """
        t = now.timestamp()
        with self._lock:
            start = self._start(t)
            wait = start - t
            if wait > self.limit.max_wait:
                rate = "" if self._rate is None else f" of {self._rate:g}/s"
                raise RateLimitedError(
                    f"client-side rate limit{rate} of {destination}: next slot in {wait:.1f}s; "
                    "handed back without sending",
                    retry_after=wait,
                    sent=False,
                )
            self._tat = max(self._tat, start) + self._interval()
            return max(0.0, wait)

    def throttled(self, now: datetime, retry_after: float | None) -> None:
        """Record a 429: no slot before ``now + retry_after``; slow the rate down."""
        t = now.timestamp()
        with self._lock:
            if self._rate is not None and self.limit.rate is not None:
                floor = self.limit.rate / 16
                self._rate = max(floor, self._rate * self.limit.slow_down)
            if retry_after is not None and retry_after > 0:
                self._tat = max(self._tat, t + retry_after + self._tolerance())

    def succeeded(self) -> None:
        """Record a success: recover 5% of the configured rate."""
        configured = self.limit.rate
        if configured is None:
            return
        with self._lock:
            if self._rate is not None and self._rate < configured:
                self._rate = min(configured, self._rate + configured * _RECOVERY_STEP)

    def __repr__(self) -> str:
        return f"RateLimiter({self.limit!r}, current_rate={self._rate!r})"

"""Time: the only place that reads the wall clock or sleeps."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

__all__ = [
    "MAX_SECONDS",
    "DatabaseClock",
    "FakeClock",
    "SystemClock",
    "duration",
    "to_seconds",
]


#: The longest duration accepted anywhere (a century): longer ones would
#: overflow a date when added to now.
MAX_SECONDS = 100 * 366 * 86_400.0


def to_seconds(value: float | timedelta) -> float:
    """Seconds from a number or a ``timedelta``."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected seconds (a number) or a timedelta, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(
            f"a duration of about 10**{int(value).bit_length() * 3 // 10} seconds is longer "
            "than any date can hold"
        ) from None


def duration(value: float | timedelta, name: str, *, zero: bool = False) -> float:
    """``value`` in seconds if it is a usable duration: finite, > 0 (>= 0 with
    ``zero``) and at most a century; else ``ValueError`` naming ``name``."""
    seconds = to_seconds(value)
    low_ok = seconds >= 0 if zero else seconds > 0
    if not (low_ok and seconds <= MAX_SECONDS):  # also refuses NaN
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a duration {bound} and at most 100 years, got {value!r}")
    return seconds


class SystemClock:
    """The real clock: ``now()`` is timezone-aware UTC."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        """Block the thread for ``seconds`` (nothing for 0 or less)."""
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Wait ``seconds`` without blocking the event loop."""
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class DatabaseClock(SystemClock):
    """The system clock set to a database server's clock.

    Workers on several machines judge leases by one clock, the database's,
    so a worker whose own clock runs ten minutes fast does not take over
    deliveries whose leases are still running. ``now()`` is the local clock
    plus the offset to ``source()`` (e.g. ``PostgresQueueStore.database_time``),
    measured at first use and again every ``refresh`` seconds, halfway through
    the round trip. If the database cannot be read, the last offset is kept
    (zero at first) and a warning is logged. ``local`` replaces the local
    clock (for tests of a machine whose clock is wrong).
    """

    def __init__(
        self,
        source: Callable[[], datetime],
        *,
        refresh: float = 60.0,
        local: Callable[[], datetime] | None = None,
    ) -> None:
        self._source = source
        self._refresh = refresh
        self._local = local if local is not None else _utcnow
        self._offset = timedelta(0)
        self._measured_at = -float("inf")
        self._lock = threading.Lock()

    @property
    def offset(self) -> timedelta:
        """The database's clock minus the local one, as last measured."""
        return self._offset

    def _measure(self) -> None:
        before = time.monotonic()
        local = self._local()
        try:
            remote = self._source()
        except Exception as exc:  # noqa: BLE001 - keep the last offset; the store reports its error
            logging.getLogger("resilient_sync").warning(
                "could not read the database clock (%s: %s); keeping the last offset of %ss",
                type(exc).__name__,
                exc,
                self._offset.total_seconds(),
            )
            self._measured_at = time.monotonic()
            return
        trip = time.monotonic() - before
        self._offset = remote - (local + timedelta(seconds=trip / 2))
        self._measured_at = time.monotonic()

    def now(self) -> datetime:
        """The database's current time (local clock plus the measured offset)."""
        if time.monotonic() - self._measured_at >= self._refresh:
            first = self._measured_at == -float("inf")
            if self._lock.acquire(blocking=first):  # the first reading is waited for
                try:
                    if time.monotonic() - self._measured_at >= self._refresh:
                        self._measure()
                finally:
                    self._lock.release()
        return self._local() + self._offset

    def __repr__(self) -> str:
        return f"DatabaseClock(offset={self._offset.total_seconds():+.3f}s)"


class FakeClock:
    """A clock that only moves when told to, for instant, deterministic tests.

    >>> clock = FakeClock(datetime(2024, 1, 1, tzinfo=timezone.utc))
    >>> clock.advance(90)
    >>> clock.now().isoformat()
    '2024-01-01T00:01:30+00:00'

    ``sleep(seconds)`` advances the clock instead of blocking. Thread-safe.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = datetime(2024, 1, 1, tzinfo=timezone.utc)
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"FakeClock needs a timezone-aware start, got naive {start!r}")
        self._now = start.astimezone(timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The fake current time (timezone-aware UTC); 2024-01-01 00:00 UTC
        unless another ``start`` was given."""
        with self._lock:
            return self._now

    def advance(self, seconds: float | timedelta) -> None:
        """Move the clock forward by ``seconds`` (a number or a timedelta)."""
        delta = to_seconds(seconds)
        if delta < 0:
            raise ValueError(f"a clock cannot go backwards (advance({seconds!r}))")
        with self._lock:
            self._now += timedelta(seconds=delta)

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (not earlier than now)."""
        if when.tzinfo is None:
            raise ValueError(f"FakeClock.set needs a timezone-aware datetime, got {when!r}")
        with self._lock:
            if when < self._now:
                raise ValueError(f"a clock cannot go backwards ({when} < {self._now})")
            self._now = when.astimezone(timezone.utc)

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` at once, without blocking."""
        if seconds > 0:
            self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, then yield to the event loop once."""
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"

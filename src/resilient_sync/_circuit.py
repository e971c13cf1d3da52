"""Circuit breaker per destination: stop hammering an API that is down.

After ``threshold`` consecutive transient failures a destination's circuit
opens: the dispatcher holds the destination back in the queue store for
``cool_off`` (so every worker and the operator see it, with the reason), then
lets one delivery through as a probe (half-open). A success closes the
circuit; a failure opens it again. Pure state, no I/O; thread-safe.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import attrs

from ._clock import to_seconds

__all__ = ["CircuitBreaker", "CircuitState"]


def _threshold(_inst: object, _attr: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"CircuitBreaker.threshold must be an int >= 1, got {value!r}")


def _cool_off(value: float | timedelta) -> float:
    seconds = to_seconds(value)
    if seconds <= 0:
        raise ValueError(f"CircuitBreaker.cool_off must be > 0, got {value!r}")
    return seconds


@attrs.frozen
class CircuitBreaker:
    """Settings of the per-destination circuit breaker (``Dispatcher(circuit=...)``).

    Off unless given, to the dispatcher or as a destination's
    ``circuit_breaker`` attribute. Only TRANSIENT failures count (not 429s,
    which hold the destination on their own, nor UNEXPECTED errors); any
    other outcome closes the circuit. Each dispatcher counts failures in its
    own memory; the hold it sets when the circuit opens is in the queue
    store, so every worker and the operator see it.

    Args:
        threshold: consecutive TRANSIENT failures that open the circuit.
        cool_off: how long an open circuit holds the destination back
            (seconds or timedelta) before one probe is let through.
    """

    threshold: int = attrs.field(default=5, validator=_threshold)
    cool_off: float = attrs.field(default=30.0, converter=_cool_off)


@attrs.frozen(kw_only=True)
class CircuitState:
    """One destination's circuit: ``closed``, ``open`` (until) or ``half_open``."""

    failures: int = 0
    open_until: datetime | None = None
    probing: bool = False
    #: when the probe in flight was let through (a probe whose outcome never
    #: came back, e.g. cancelled, frees its slot after one cool-off)
    probe_since: datetime | None = None

    def phase(self, now: datetime) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if now < self.open_until else "half_open"


class Circuits:
    """The circuits of one dispatcher's destinations (each with its own settings)."""

    def __init__(self, settings: dict[str, CircuitBreaker | None]) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._states: dict[str, CircuitState] = {}

    def guards(self, destination: str) -> bool:
        """Whether ``destination`` has a circuit breaker (without one, every
        call here is a no-op, and callers need not read the clock for it)."""
        return self.settings.get(destination) is not None

    def state(self, destination: str) -> CircuitState:
        with self._lock:
            return self._states.get(destination, CircuitState())

    def admit(self, destination: str, now: datetime) -> bool:
        """May a delivery to ``destination`` be attempted now?

        Closed: yes. Open: no. Half-open: yes for exactly one probe at a time.
        """
        if not self.guards(destination):
            return True
        with self._lock:
            state = self._states.get(destination, CircuitState())
            phase = state.phase(now)
            if phase == "closed":
                return True
            if phase == "open":
                return False
            if state.probing and state.probe_since is not None:
                settings = self.settings[destination]
                assert settings is not None  # noqa: S101 - checked above
                if now < state.probe_since + timedelta(seconds=settings.cool_off):
                    return False  # one probe at a time, until it is presumed lost
            self._states[destination] = attrs.evolve(state, probing=True, probe_since=now)
            return True

    def cancel_probe(self, destination: str) -> None:
        """The admitted delivery was handed back unattempted: free the probe slot."""
        with self._lock:
            state = self._states.get(destination)
            if state is not None and state.probing:
                self._states[destination] = attrs.evolve(state, probing=False, probe_since=None)

    def success(self, destination: str) -> None:
        """The destination answered (any non-transient outcome): close the circuit."""
        with self._lock:
            self._states.pop(destination, None)

    def failure(self, destination: str, now: datetime) -> datetime | None:
        """Record a transient failure; returns the hold end if the circuit (re)opened."""
        settings = self.settings.get(destination)
        if settings is None:
            return None
        with self._lock:
            state = self._states.get(destination, CircuitState())
            failures = state.failures + 1
            if state.probing or failures >= settings.threshold:
                until = now + timedelta(seconds=settings.cool_off)
                self._states[destination] = CircuitState(failures=failures, open_until=until)
                return until
            self._states[destination] = attrs.evolve(state, failures=failures)
            return None

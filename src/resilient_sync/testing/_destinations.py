"""Destinations for tests: record what arrives, fail on cue."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._model import DeliveryContext, Event

__all__ = ["FlakyDestination", "RecordingDestination"]


class RecordingDestination:
    """Records every delivery; applies each idempotency key's effect once.

    Like a well-behaved remote API: a repeat of a key already applied returns
    the first result without a second effect. ``calls`` lists every call,
    ``applied`` every effect (so ``len(applied)`` counts effects),
    ``effects_per_key`` proves "no duplicates".

    >>> dest = RecordingDestination("pos")
    >>> dest.deliver(Event("e1", "customer.created", {}), _ctx("k1"))
    {'remote_id': 'pos-1'}
    >>> dest.deliver(Event("e1", "customer.created", {}), _ctx("k1"))
    {'remote_id': 'pos-1'}
    >>> len(dest.calls), len(dest.applied)
    (2, 1)
    """

    def __init__(
        self,
        name: str = "recording",
        result: Any | Callable[[Event, int], Any] = None,
    ) -> None:
        self.name = name
        self._result = result
        self._lock = threading.Lock()
        self.calls: list[tuple[Event, DeliveryContext]] = []
        self.applied: list[Event] = []
        self._results: dict[str, Any] = {}
        self.effects_per_key: dict[str, int] = {}

    @property
    def events(self) -> list[Event]:
        """The events whose effect was applied, in order."""
        with self._lock:
            return list(self.applied)

    @property
    def keys(self) -> list[str]:
        """The idempotency key of every call, in order (repeats included)."""
        with self._lock:
            return [context.idempotency_key for _, context in self.calls]

    def _make_result(self, event: Event, number: int) -> Any:
        if callable(self._result):
            return self._result(event, number)
        if self._result is not None:
            return self._result
        return {"remote_id": f"{self.name}-{number}"}

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        """Record the call; apply the effect unless ``context.idempotency_key``
        was applied before, and return that key's result.

        The result is ``result`` (or ``result(event, n)`` when callable, ``n``
        counting effects from 1), by default ``{"remote_id": "<name>-<n>"}``.
        """
        with self._lock:
            self.calls.append((event, context))
            key = context.idempotency_key
            if key in self._results:
                return self._results[key]
            self.applied.append(event)
            self.effects_per_key[key] = self.effects_per_key.get(key, 0) + 1
            result = self._make_result(event, len(self.applied))
            self._results[key] = result
            return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self.applied)} applied)"


Script = Iterable[BaseException | None]


class FlakyDestination(RecordingDestination):
    """A :class:`RecordingDestination` that raises scripted errors first.

    Each call takes the next item of the event's own script (``per_event``),
    else of the shared script (``errors``): an exception is raised, ``None``
    lets the call through. Once the scripts are used up, every call succeeds.

    >>> from resilient_sync import RetryableError
    >>> flaky = FlakyDestination("pos", [RetryableError("POS down"), None])
    >>> flaky.deliver(Event("e1", "t", {}), _ctx("k1"))
    Traceback (most recent call last):
    ...
    resilient_sync._errors.RetryableError: POS down
    >>> flaky.deliver(Event("e1", "t", {}), _ctx("k1"))
    {'remote_id': 'pos-1'}
    """

    def __init__(
        self,
        name: str = "flaky",
        errors: Script = (),
        *,
        per_event: Mapping[str, Script] | None = None,
        result: Any | Callable[[Event, int], Any] = None,
    ) -> None:
        super().__init__(name, result)
        self._script: deque[BaseException | None] = deque(errors)
        self._per_event = {k: deque(v) for k, v in (per_event or {}).items()}
        self.failures: list[tuple[Event, BaseException]] = []

    @classmethod
    def failing(cls, times: int, error: BaseException, name: str = "flaky") -> FlakyDestination:
        """Fail the first ``times`` calls with ``error``, then succeed."""
        return cls(name, [error] * times)

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        """Raise the next scripted error (recorded in ``calls`` and
        ``failures``, no effect applied), or deliver like
        :class:`RecordingDestination`."""
        with self._lock:
            script = self._per_event.get(event.id)
            step: BaseException | None = None
            if script:
                step = script.popleft()
            elif self._script:
                step = self._script.popleft()
            if step is not None:
                self.calls.append((event, context))
                self.failures.append((event, step))
        if step is not None:
            raise step
        return super().deliver(event, context)


def _ctx(key: str) -> DeliveryContext:
    """A context for doctests."""
    return DeliveryContext(delivery_id="d1", destination="pos", idempotency_key=key, attempt=1)

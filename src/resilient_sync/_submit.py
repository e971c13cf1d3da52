"""Submission: turn events into queued deliveries (``Producer`` and the dispatchers).

A web process that only enqueues needs no destination objects: a
:class:`Producer` knows the destination *names* and the queue store. The
dispatchers submit the same way (they inherit the same steps); workers then
claim the deliveries of the destinations they serve.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from ._clock import SystemClock
from ._core import new_delivery
from ._errors import InvalidEventError
from ._json import check_event, check_name
from ._model import Delivery, Event
from ._protocols import Clock, QueueStore, Source
from ._text import one_line
from .stores._common import already_checked

__all__ = ["Producer", "Submitted"]

logger = logging.getLogger("resilient_sync")


class Submitted(list[Delivery]):
    """What ``submit``/``submit_many`` return: the deliveries enqueued (a list),
    and ``skipped``, how many (event, destination) pairs were already known
    (an event id submitted before is not enqueued again)."""

    skipped: int

    def __init__(self, inserted: Iterable[Delivery] = (), *, skipped: int = 0) -> None:
        super().__init__(inserted)
        self.skipped = skipped

    def __repr__(self) -> str:
        return f"Submitted({list.__repr__(self)}, skipped={self.skipped})"


def _tx(transaction: Any) -> dict[str, Any]:
    """Pass ``transaction`` on only when given, so stores without it still work."""
    return {} if transaction is None else {"transaction": transaction}


class _Submitter:
    """The submission steps shared by :class:`Producer` and the dispatchers."""

    queue: QueueStore
    clock: Clock
    _names: tuple[str, ...]

    def _targets(self, to: str | Sequence[str] | None) -> list[str]:
        if to is None:
            return list(self._names)
        if isinstance(to, str):
            names = [to]
        elif isinstance(to, Iterable):
            names = list(to)
        else:
            raise TypeError(
                f"to= takes a destination name or a list of names, got {type(to).__name__}"
            )
        if not names:
            # an empty to= would drop the event without a word
            raise ValueError("to= names no destination; pass None for all of them")
        # the plan carries our own checked names, never the caller's objects: a
        # str subclass whose __eq__ says yes to every name must not reach a store
        canonical = {name: name for name in self._names}
        targets: list[str] = []
        for name in names:
            found = canonical.get(name) if isinstance(name, str) else None
            if found is None:
                known = ", ".join(sorted(self._names))
                # the caller's text through the gate: escaped, redacted, capped
                raise ValueError(f"unknown destination '{one_line(name)}' (known: {known})")
            targets.append(found)
        return targets

    def _plan(self, events: Iterable[Event], to: str | Sequence[str] | None) -> list[Delivery]:
        targets = self._targets(to)
        now = self.clock.now()
        plan: list[Delivery] = []
        for index, event in enumerate(events):
            try:
                checked = check_event(event)
            except InvalidEventError as exc:
                label = getattr(event, "id", None)
                if not isinstance(label, str):
                    label = None
                raise InvalidEventError(
                    f"event #{index} (id {label!r}): {exc}; nothing was enqueued", field=exc.field
                ) from exc
            plan.extend(new_delivery(checked, dest, now) for dest in targets)
        return plan

    def _enqueue(
        self,
        plan: list[Delivery],
        *,
        cursor: tuple[str, str | None] | None = None,
        transaction: Any = None,
    ) -> Submitted:
        kwargs = _tx(transaction)
        if cursor is not None:
            kwargs["cursor"] = cursor
        with already_checked(plan):  # _plan checked every event with the stores' rules
            inserted = self.queue.enqueue(plan, **kwargs)
        return self._submitted(plan, inserted)

    @staticmethod
    def _submitted(plan: Sequence[Delivery], inserted: list[Delivery]) -> Submitted:
        result = Submitted(inserted, skipped=len(plan) - len(inserted))
        if result.skipped:
            logger.info(
                "submit: %d of %d deliveries were already known (same event id and "
                "destination) and were not enqueued again",
                result.skipped,
                len(plan),
            )
        return result


class _SyncSubmitting(_Submitter):
    """``submit``, ``submit_many`` and ``pull`` for threads (``Producer``, ``Dispatcher``)."""

    def submit(
        self, event: Event, to: str | Sequence[str] | None = None, *, transaction: Any = None
    ) -> Submitted:
        """Enqueue ``event`` for every destination (or those named in ``to``).

        Durable once it returns (for durable stores). Raises
        :class:`InvalidEventError` naming the offending field, with nothing
        enqueued. Returns the new deliveries (a list); an event id already
        submitted to a destination is not enqueued again, and the result's
        ``skipped`` says how many were skipped so. ``transaction`` joins the
        caller's own transaction where the store supports it (the outbox
        pattern; see ``QueueStore.enqueue``).
        """
        return self._enqueue(self._plan([event], to), transaction=transaction)

    def submit_many(
        self,
        events: Iterable[Event],
        to: str | Sequence[str] | None = None,
        *,
        transaction: Any = None,
    ) -> Submitted:
        """Enqueue many events in one transaction: all of them, or none."""
        return self._enqueue(self._plan(list(events), to), transaction=transaction)

    def pull(
        self, source: Source, *, limit: int = 100, to: str | Sequence[str] | None = None
    ) -> int:
        """Read ``source`` from its saved cursor until it has nothing new.

        Each page and the cursor after it are saved in one transaction.
        Returns the number of deliveries enqueued (events already known are
        skipped). An invalid event stops the pull with
        :class:`InvalidEventError`; the cursor stays before its page.
        """
        total = 0
        cursor = self.queue.get_cursor(source.name)
        while True:
            events, next_cursor = source.read(cursor, limit)
            if not events:
                if next_cursor is not None and next_cursor != cursor:
                    self.queue.enqueue([], cursor=(source.name, next_cursor))
                return total
            plan = self._plan(list(events), to)
            total += len(self._enqueue(plan, cursor=(source.name, next_cursor)))
            if next_cursor == cursor:
                return total
            cursor = next_cursor


def destination_names(destinations: str | Iterable[str]) -> tuple[str, ...]:
    """Validated, distinct destination names."""
    names = [destinations] if isinstance(destinations, str) else list(destinations)
    seen: list[str] = []
    for name in names:
        check_name(name, "destination name")
        if name in seen:
            raise ValueError(f"destination {name!r} is named twice")
        seen.append(name)
    if not seen:
        raise ValueError("name at least one destination")
    return tuple(seen)


class Producer(_SyncSubmitting):
    """Submits events for destinations known by name, without their objects.

    For the process that only enqueues (a web app receiving webhooks, a
    script backfilling events): it needs the queue store and the names of the
    destinations; the workers that deliver have the destination objects.
    Deliveries to a name no worker serves wait in the queue (``status``
    shows them, the "oldest waiting" alert catches them).

    >>> from resilient_sync import Event, Producer
    >>> from resilient_sync.stores import MemoryQueueStore
    >>> with Producer(MemoryQueueStore(), ["pos", "crm"]) as producer:
    ...     done = producer.submit(Event("cust-1", "customer.created", {"email": "a@b.c"}))
    ...     again = producer.submit(Event("cust-1", "customer.created", {"email": "a@b.c"}))
    >>> len(done), len(again), again.skipped
    (2, 0, 2)

    Args:
        queue: the queue store the workers read.
        destinations: the destination names events go to (``to=`` picks
            among them); a name not listed is refused at submit time.
        clock: ``SystemClock()`` by default.
    """

    def __init__(
        self,
        queue: QueueStore,
        destinations: str | Iterable[str],
        *,
        clock: Clock | None = None,
    ) -> None:
        self.queue = queue
        self._names = destination_names(destinations)
        self.clock = clock if clock is not None else SystemClock()

    @property
    def destinations(self) -> tuple[str, ...]:
        """The destination names this producer submits to."""
        return self._names

    def close(self) -> None:
        """Nothing to release (the queue store is the caller's to close)."""

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Producer({self.queue!r}, {list(self._names)!r})"

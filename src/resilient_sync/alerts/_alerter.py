"""The :class:`Alerter`: evaluates rules, deduplicates, notifies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import attrs

from .._clock import SystemClock, to_seconds
from .._protocols import Clock, QueueStore
from .._redact import redact
from ._alert import Alert
from ._notify import Notifier
from ._rules import AlertRule, QueueView, default_rules

__all__ = ["Alerter"]

logger = logging.getLogger("resilient_sync.alerts")


@runtime_checkable
class _HasQueue(Protocol):
    """A dispatcher or an operator: it has a queue store and a clock."""

    @property
    def queue(self) -> QueueStore: ...

    @property
    def clock(self) -> Clock: ...


@attrs.frozen(kw_only=True)
class _Sent:
    alert: Alert
    first_seen: datetime
    sent_at: datetime
    count: int


class Alerter:
    """Reads the queue store, turns rule findings into deduplicated alerts.

    Call :meth:`check` periodically (every minute, from a thread, a cron job
    or next to ``run_forever``). Each rule reports the conditions that hold
    now, one per rule/destination/category (the alert's ``key``), already
    summarised: 500 failures are one alert with ``count=500``. Per key:

    - the first time it holds, every notifier gets it;
    - while it holds, an update goes out only if its count grew and at least
      ``min_interval`` passed since the last message (``new`` says how many
      are new), and a reminder every ``repeat_after``;
    - when it stops holding, one ``resolved`` alert (unless ``send_resolved``
      is False).

    A notifier that raises is logged; if no notifier took an alert, it is
    tried again at the next check. A rule that raises is logged and its
    alerts are kept as they were. The dedup state lives in this object (one
    alerter per process).

    Args:
        queue: the queue store to read, or the ``Dispatcher``,
            ``AsyncDispatcher`` or ``Operator`` whose queue store (and clock)
            to use.
        notifiers: where alerts go.
        rules: the rules (default: :func:`default_rules`).
        clock: time source; default: the clock of the dispatcher or
            operator given as ``queue`` (so a ``FakeClock`` given once
            reaches the rules too), else the system clock.
        min_interval: the least time between two messages about one key.
        repeat_after: remind about a condition that still holds this often.
        send_resolved: tell when a condition cleared.
        db: a ``--db`` URL to put in the suggested CLI commands.
    """

    def __init__(
        self,
        queue: QueueStore | _HasQueue,
        notifiers: Iterable[Notifier],
        rules: Iterable[AlertRule] | None = None,
        clock: Clock | None = None,
        *,
        min_interval: float | timedelta = timedelta(minutes=5),
        repeat_after: float | timedelta = timedelta(hours=4),
        send_resolved: bool = True,
        db: str | None = None,
    ) -> None:
        owner_clock: Clock | None = None
        if isinstance(queue, _HasQueue):  # a dispatcher or an operator: its store and clock
            owner_clock = queue.clock
            queue = queue.queue
        self.queue: QueueStore = queue
        self.notifiers = list(notifiers)
        for notifier in self.notifiers:
            if not callable(getattr(notifier, "notify", None)):
                raise TypeError(f"{notifier!r} has no notify(alert) method")
        self.rules = list(rules) if rules is not None else default_rules()
        self._clock_given = clock is not None
        if clock is None:
            clock = owner_clock if owner_clock is not None else SystemClock()
        self.clock: Clock = clock
        self.min_interval = timedelta(seconds=to_seconds(min_interval))
        self.repeat_after = timedelta(seconds=to_seconds(repeat_after))
        self.send_resolved = send_resolved
        self.db = redact(db) if db is not None else None
        self._state: dict[str, _Sent] = {}
        self._lock = threading.Lock()

    def use_clock(self, clock: Clock) -> None:
        """Adopt a dispatcher's or operator's clock, unless one was given to
        the constructor (as the HTTP destinations do)."""
        if not self._clock_given:
            self.clock = clock

    @property
    def active(self) -> list[Alert]:
        """The conditions that held at the last check and were notified."""
        with self._lock:
            return [sent.alert for sent in self._state.values()]

    def check(self) -> list[Alert]:
        """Evaluate every rule once; notify what is new, grew, is due a
        reminder or cleared. Returns the alerts sent (to at least one notifier)."""
        with self._lock:
            now = self.clock.now()
            view = QueueView(self.queue, now, self.db)
            current: dict[str, Alert] = {}
            failed_rules: set[str] = set()
            for rule in self.rules:
                name = getattr(rule, "name", type(rule).__name__)
                try:
                    found = list(rule.evaluate(view))
                except Exception:
                    logger.exception("alert rule %s failed; its alerts are kept as they were", name)
                    failed_rules.add(name)
                    continue
                for alert in found:
                    current.setdefault(alert.key, attrs.evolve(alert, at=now))
            sent = [a for a in self._due(current, now) if self._send(a)]
            for alert in sent:
                if not alert.resolved:
                    previous = self._state.get(alert.key)
                    self._state[alert.key] = _Sent(
                        alert=alert,
                        first_seen=previous.first_seen if previous else now,
                        sent_at=now,
                        count=alert.count,
                    )
            for key in [k for k in self._state if k not in current]:
                if self._state[key].alert.rule in failed_rules:
                    continue
                cleared = self._state.pop(key)
                if self.send_resolved:
                    alert = self._resolved(cleared, now)
                    if self._send(alert):
                        sent.append(alert)
            return sent

    def _due(self, current: dict[str, Alert], now: datetime) -> Sequence[Alert]:
        due = []
        for key, alert in current.items():
            previous = self._state.get(key)
            if previous is None:
                due.append(attrs.evolve(alert, new=alert.count, first_seen=now))
                continue
            grew = alert.count > previous.count
            elapsed = now - previous.sent_at
            if (grew and elapsed >= self.min_interval) or elapsed >= self.repeat_after:
                due.append(
                    attrs.evolve(
                        alert,
                        new=max(alert.count - previous.count, 0),
                        first_seen=previous.first_seen,
                    )
                )
        return due

    def _resolved(self, cleared: _Sent, now: datetime) -> Alert:
        old = cleared.alert
        return attrs.evolve(
            old,
            severity="info",
            resolved=True,
            title=f"resolved: {old.title}",
            details=f"First seen {cleared.first_seen.isoformat()}, cleared {now.isoformat()}.",
            count=0,
            new=0,
            first_seen=cleared.first_seen,
            at=now,
        )

    def _send(self, alert: Alert) -> bool:
        delivered = not self.notifiers  # without notifiers, check()'s result is the output
        for notifier in self.notifiers:
            delivered = self._try(notifier, alert) or delivered
        return delivered

    def _try(self, notifier: Notifier, alert: Alert) -> bool:
        try:
            notifier.notify(alert)
        except Exception as exc:  # noqa: BLE001 - logged; other notifiers still get it
            logger.error(
                "notifier %r could not send alert %s: %s",
                notifier,
                alert.key,
                redact(f"{type(exc).__name__}: {exc}"),
            )
            return False
        return True

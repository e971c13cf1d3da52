"""Alert rules: conditions read from the queue store, each a summary alert."""

from __future__ import annotations

import builtins
import shlex
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime, timedelta
from functools import cached_property
from typing import Protocol, runtime_checkable

from .._clock import to_seconds
from .._model import (
    Attempt,
    Delivery,
    DeliveryStatus,
    DestinationState,
    ErrorCategory,
    QueueStats,
)
from .._protocols import QueueStore
from .._runbook import advice_for, next_commands
from ._alert import Alert

__all__ = [
    "AlertRule",
    "DestinationRule",
    "ErrorRateRule",
    "NeedsActionRule",
    "OldestWaitingRule",
    "QueueView",
    "default_rules",
]


def _age(delta: timedelta) -> str:
    seconds = int(max(delta.total_seconds(), 0))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class QueueView:
    """What rules read during one ``Alerter.check()``; each read is made once.

    Attributes:
        queue: the queue store.
        now: the check's time (from the alerter's clock).
        db: the ``--db`` URL to show in suggested commands, or None.
    """

    def __init__(self, queue: QueueStore, now: datetime, db: str | None = None) -> None:
        self.queue = queue
        self.now = now
        self.db = db
        self._audit: dict[datetime, builtins.list[Attempt]] = {}

    @cached_property
    def stats(self) -> QueueStats:
        """``queue.stats()``."""
        return self.queue.stats()

    @cached_property
    def destinations(self) -> dict[str, DestinationState]:
        """``queue.destinations()``."""
        return self.queue.destinations()

    def audit(self, window: timedelta) -> builtins.list[Attempt]:
        """Audit records of the last ``window``, newest first."""
        since = self.now - window
        if since not in self._audit:
            self._audit[since] = self.queue.audit(since=since)
        return self._audit[since]

    def needing_action(
        self, destination: str, category: ErrorCategory, limit: int = 3
    ) -> builtins.list[Delivery]:
        """A few deliveries that need action (oldest first)."""
        page = self.queue.list(
            status=[DeliveryStatus.NEEDS_ACTION],
            destination=destination,
            category=category,
            limit=limit,
        )
        return list(page.items)

    def command(self, text: str) -> str:
        """A CLI command with ``--db`` when the view has one."""
        if self.db is None:
            return text
        return text.replace("resilient-sync ", f"resilient-sync --db {shlex.quote(self.db)} ", 1)


@runtime_checkable
class AlertRule(Protocol):
    """A condition worth telling a person about.

    ``evaluate(view)`` returns the alerts that hold *now* (one per
    destination/category it concerns, each summarising all its cases); the
    :class:`Alerter` decides which are new, which grew and which cleared.
    """

    name: str

    def evaluate(self, view: QueueView) -> Iterable[Alert]:
        """The alerts that hold now."""
        ...


def _window(value: float | timedelta) -> timedelta:
    seconds = to_seconds(value)
    if seconds <= 0:
        raise ValueError(f"a window must be > 0, got {value!r}")
    return timedelta(seconds=seconds)


class NeedsActionRule:
    """Deliveries wait for a person: one alert per destination and category.

    ``MAPPING`` and ``PERMISSION`` are critical (a person must change
    something outside the queue), the others warnings.

    Args:
        categories: only these categories (default: all).
        min_count: alert from this many deliveries on.
    """

    name = "needs_action"

    def __init__(
        self, categories: Collection[ErrorCategory | str] | None = None, min_count: int = 1
    ) -> None:
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count!r}")
        self.categories = (
            frozenset(ErrorCategory(c) for c in categories) if categories is not None else None
        )
        self.min_count = min_count

    def evaluate(self, view: QueueView) -> Iterator[Alert]:
        for destination, counts in sorted(view.stats.needs_action.items()):
            for category in ErrorCategory:
                count = counts.get(category, 0)
                if count < self.min_count:
                    continue
                if self.categories is not None and category not in self.categories:
                    continue
                yield self._alert(view, destination, category, count)

    def _alert(
        self, view: QueueView, destination: str, category: ErrorCategory, count: int
    ) -> Alert:
        examples = view.needing_action(destination, category)
        advice = advice_for(category)
        lines = [f"Meaning: {advice.meaning}."]
        for d in examples:
            error = d.last_error
            field = f" [{error.field}]" if error and error.field else ""
            message = " ".join((error.message if error else "").split())
            lines.append(f"- {d.event.type} {d.event.id}{field}: {message} (delivery {d.id})")
        if count > len(examples):
            lines.append(f"- ... and {count - len(examples)} more")
        first = examples[0] if examples else None
        commands = next_commands(
            category,
            delivery_id=first.id if first else "ID",
            destination=destination,
            field=first.last_error.field if first and first.last_error else None,
            db=view.db,
        )
        listing = view.command(
            f"resilient-sync list --status needs_action --destination {shlex.quote(destination)} "
            f"--category {category.value}"
        )
        return Alert(
            rule=self.name,
            severity="critical" if category.escalates else "warning",
            title=(
                f"{_plural(count, 'delivery', 'deliveries')} to {destination} "
                f"{'needs' if count == 1 else 'need'} action ({category.value})"
            ),
            details="\n".join(lines),
            action=advice.action,
            commands=(listing, *commands),
            destination=destination,
            category=category,
            count=count,
            delivery_ids=tuple(d.id for d in examples),
        )


class ErrorRateRule:
    """Too many attempts fail: the share of failed delivery attempts over the
    last ``window`` reaches ``threshold`` (per destination).

    Args:
        threshold: failed share, 0 < threshold <= 1 (default 0.25).
        window: how far back to look (default 15 minutes).
        min_attempts: ignore destinations with fewer attempts in the window,
            so one failure out of two is not an alarm (default 20).
    """

    name = "error_rate"

    def __init__(
        self,
        threshold: float = 0.25,
        window: float | timedelta = timedelta(minutes=15),
        min_attempts: int = 20,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if min_attempts < 1:
            raise ValueError(f"min_attempts must be >= 1, got {min_attempts!r}")
        self.threshold = threshold
        self.window = _window(window)
        self.min_attempts = min_attempts

    def evaluate(self, view: QueueView) -> Iterator[Alert]:
        totals: dict[str, int] = {}
        failed: dict[str, builtins.list[Attempt]] = {}
        for record in view.audit(self.window):
            if record.action != "deliver":
                continue
            totals[record.destination] = totals.get(record.destination, 0) + 1
            if record.error is not None:
                failed.setdefault(record.destination, []).append(record)
        for destination in sorted(totals):
            total = totals[destination]
            errors = failed.get(destination, [])
            if total < self.min_attempts or len(errors) / total < self.threshold:
                continue
            by_category: dict[str, int] = {}
            for record in errors:
                assert record.error is not None  # noqa: S101 - filtered above
                name = record.error.category.value
                by_category[name] = by_category.get(name, 0) + 1
            breakdown = ", ".join(f"{k} {v}" for k, v in sorted(by_category.items()))
            latest = errors[0].error
            assert latest is not None  # noqa: S101 - filtered above
            yield Alert(
                rule=self.name,
                severity="warning",
                title=(
                    f"{destination}: {len(errors)} of {total} attempts failed in the last "
                    f"{_age(self.window)} ({len(errors) / total:.0%}, alert at "
                    f"{self.threshold:.0%})"
                ),
                details=(
                    f"By category: {breakdown}.\nLatest: {latest.category.value}: "
                    f"{' '.join(latest.message.split())}"
                ),
                action=(
                    "transient and rate-limited failures are retried by themselves; if the "
                    "rate stays high, check the destination (status page, credentials, quota) "
                    "and what the errors have in common"
                ),
                commands=(
                    view.command("resilient-sync trend --bucket 1m --since 1h"),
                    view.command("resilient-sync recent"),
                ),
                destination=destination,
                count=len(errors),
            )


class OldestWaitingRule:
    """Deliveries wait too long: the oldest ``PENDING`` or ``RETRY_SCHEDULED``
    delivery was submitted more than ``max_age`` ago (default 1 hour)."""

    name = "oldest_waiting"

    def __init__(self, max_age: float | timedelta = timedelta(hours=1)) -> None:
        self.max_age = _window(max_age)

    def evaluate(self, view: QueueView) -> Iterator[Alert]:
        oldest = view.stats.oldest_waiting
        if oldest is None or view.now - oldest <= self.max_age:
            return
        counts = view.stats.by_status
        waiting = counts.get(DeliveryStatus.PENDING, 0) + counts.get(
            DeliveryStatus.RETRY_SCHEDULED, 0
        )
        halted = sorted(
            name
            for name, state in view.destinations.items()
            if state.paused or (state.hold_until is not None and state.hold_until > view.now)
        )
        details = f"{_plural(waiting, 'delivery is', 'deliveries are')} waiting."
        if halted:
            details += f" Paused or held: {', '.join(halted)}."
        yield Alert(
            rule=self.name,
            severity="warning",
            title=(
                f"the oldest waiting delivery was submitted {_age(view.now - oldest)} ago "
                f"(alert after {_age(self.max_age)})"
            ),
            details=details,
            action=(
                "check that a worker is running and that no destination is paused or held; a "
                "delivery also waits behind an older one of its ordering key that needs action"
            ),
            commands=(
                view.command("resilient-sync status"),
                view.command("resilient-sync list --status pending,retry_scheduled"),
            ),
            count=1,
        )


class DestinationRule:
    """A destination stopped: it is paused (a permission error, or an
    operator), or its circuit opened in the last ``window`` (default 15
    minutes) after repeated transient failures."""

    name = "destination"

    def __init__(self, window: float | timedelta = timedelta(minutes=15)) -> None:
        self.window = _window(window)

    def evaluate(self, view: QueueView) -> Iterator[Alert]:
        for name, state in sorted(view.destinations.items()):
            if state.paused:
                yield self._paused(view, name, state)
        openings: dict[str, builtins.list[Attempt]] = {}
        for record in view.audit(self.window):
            if record.action == "circuit_open":
                openings.setdefault(record.destination, []).append(record)
        for name, state in view.destinations.items():
            held = state.hold_until is not None and state.hold_until > view.now
            if held and "circuit" in (state.hold_reason or "") and name not in openings:
                openings[name] = []
        for name in sorted(openings):
            records = openings[name]
            current = view.destinations.get(name)
            reason = records[0].reason if records else (current.hold_reason if current else None)
            times = len(records) or 1
            yield Alert(
                rule="circuit_open",
                severity="warning",
                title=(
                    f"circuit open for {name}: it opened {_plural(times, 'time', 'times')} "
                    f"in the last {_age(self.window)}"
                ),
                details=(
                    f"Last reason: {' '.join((reason or 'unknown').split())}\n"
                    "Deliveries to it wait and are retried when the circuit closes."
                ),
                action="check the destination's health; nothing is lost while it is down",
                commands=(
                    view.command("resilient-sync status"),
                    view.command("resilient-sync recent"),
                ),
                destination=name,
                count=times,
            )

    def _paused(self, view: QueueView, name: str, state: DestinationState) -> Alert:
        reason = " ".join((state.paused_reason or "no reason given").split())
        permission = view.stats.needs_action.get(name, {}).get(ErrorCategory.PERMISSION, 0)
        waiting = view.stats.by_destination.get(name, {})
        queued = waiting.get(DeliveryStatus.PENDING, 0) + waiting.get(
            DeliveryStatus.RETRY_SCHEDULED, 0
        )
        commands = [view.command(f"resilient-sync resume {shlex.quote(name)}")]
        if permission:
            commands.append(
                view.command(
                    "resilient-sync retry-all --category permission "
                    f"--destination {shlex.quote(name)}"
                )
            )
        return Alert(
            rule="destination_paused",
            severity="critical",
            title=f"{name} is paused: {reason}",
            details=(
                f"Nothing is sent to {name} until it is resumed; "
                f"{_plural(queued, 'delivery waits', 'deliveries wait')}"
                + (f", {permission} failed with the permission error." if permission else ".")
            ),
            action=(
                "fix the cause (a permission error: renew the token or grant the permission), "
                "then resume the destination and re-sync what failed"
            ),
            commands=tuple(commands),
            destination=name,
            count=1,
        )


def default_rules() -> builtins.list[AlertRule]:
    """Every built-in rule with its defaults."""
    return [NeedsActionRule(), ErrorRateRule(), OldestWaitingRule(), DestinationRule()]

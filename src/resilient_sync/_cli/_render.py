"""Text and JSON views of the queue for the CLI (and the demo).

Pure functions: they take model values and return lines (text) or
JSON-ready dicts; nothing here reads a store or prints.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .._format import CATEGORY_ORDER, STATUS_ORDER, fmt_age, fmt_ago, fmt_time
from .._model import (
    Attempt,
    Delivery,
    DeliveryStatus,
    DestinationState,
    ErrorInfo,
    Event,
    QueueStats,
)
from .._operator import TrendBucket
from .._runbook import advice_for, commands_for

__all__ = [
    "STATUS_ORDER",
    "attempt_json",
    "counts_line",
    "delivery_json",
    "error_json",
    "fmt_age",
    "fmt_time",
    "render_attempts",
    "render_deliveries",
    "render_delivery",
    "render_recent",
    "render_status",
    "render_trend",
    "stats_json",
    "table",
    "trend_json",
]

_CATEGORY_ORDER = CATEGORY_ORDER
_UTC = timezone.utc
_ago = fmt_ago


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _clip(text: str, width: int | None) -> str:
    if width is None or len(text) <= width:
        return text
    return text[: max(width - 1, 1)] + "…"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    right: Iterable[int] = (),
    max_width: int | None = None,
) -> list[str]:
    """Rows under headers, columns padded; the last column is clipped to
    ``max_width`` characters of line length (when given)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right_cols = set(right)

    def line(values: Sequence[str]) -> str:
        parts = []
        last = len(values) - 1
        for i, value in enumerate(values):
            if i in right_cols:
                parts.append(value.rjust(widths[i]))
            elif i == last:
                parts.append(value)
            else:
                parts.append(value.ljust(widths[i]))
        text = "  ".join(parts).rstrip()
        return _clip(text, max_width)

    return [line(list(headers)), *(line(row) for row in cells)]


# -- JSON views --------------------------------------------------------------


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def error_json(error: ErrorInfo | None) -> dict[str, Any] | None:
    """An :class:`ErrorInfo` as JSON."""
    if error is None:
        return None
    return {
        "category": error.category.value,
        "message": error.message,
        "field": error.field,
        "exception_type": error.exception_type,
        "retry_after": error.retry_after,
    }


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "payload": event.payload,
        "ordering_key": event.ordering_key,
        "idempotency_key": event.idempotency_key,
        "occurred_at": _iso(event.occurred_at),
        "metadata": dict(event.metadata),
    }


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """A delivery as JSON (the ``--json`` shape of ``list`` and ``show``)."""
    return {
        "id": delivery.id,
        "destination": delivery.destination,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "idempotency_key": delivery.idempotency_key,
        "next_attempt_at": _iso(delivery.next_attempt_at),
        "last_error": error_json(delivery.last_error),
        "result": delivery.result,
        "created_at": _iso(delivery.created_at),
        "updated_at": _iso(delivery.updated_at),
        "event": _event_json(delivery.event),
    }


def attempt_json(record: Attempt) -> dict[str, Any]:
    """An audit record as JSON."""
    return {
        "id": record.id,
        "delivery_id": record.delivery_id,
        "destination": record.destination,
        "action": record.action,
        "actor": record.actor,
        "number": record.number,
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "duration": record.duration.total_seconds(),
        "outcome": record.outcome.value if record.outcome is not None else None,
        "reason": record.reason,
        "error": error_json(record.error),
        "details": dict(record.details),
    }


def _state_json(state: DestinationState | None, now: datetime) -> dict[str, Any]:
    held = state is not None and state.hold_until is not None and state.hold_until > now
    return {
        "paused": bool(state and state.paused),
        "paused_reason": state.paused_reason if state and state.paused else None,
        "held": held,
        "hold_until": _iso(state.hold_until) if held and state else None,
        "hold_reason": state.hold_reason if held and state else None,
    }


def stats_json(stats: QueueStats, now: datetime) -> dict[str, Any]:
    """``status --json``."""
    names = sorted(set(stats.by_destination) | set(stats.destinations))
    destinations = {}
    for name in names:
        counts = stats.by_destination.get(name, {})
        needs = stats.needs_action.get(name, {})
        destinations[name] = {
            "counts": {s.value: counts.get(s, 0) for s in STATUS_ORDER},
            "needs_action": {c.value: n for c, n in sorted(needs.items()) if n},
            **_state_json(stats.destinations.get(name), now),
        }
    totals = stats.by_status
    oldest = stats.oldest_waiting
    return {
        "total": stats.total,
        "counts": {s.value: totals.get(s, 0) for s in STATUS_ORDER},
        "needs_action": totals.get(DeliveryStatus.NEEDS_ACTION, 0),
        "oldest_waiting": _iso(oldest),
        "oldest_waiting_age": (now - oldest).total_seconds() if oldest else None,
        "destinations": destinations,
        "now": _iso(now),
    }


def trend_json(buckets: Sequence[TrendBucket], width: timedelta) -> dict[str, Any]:
    """``trend --json``."""
    return {
        "bucket_seconds": width.total_seconds(),
        "buckets": [
            {
                "start": _iso(b.start),
                "total": b.total,
                "counts": {c.value: n for c, n in sorted(b.counts.items())},
            }
            for b in buckets
        ],
    }


# -- text views ----------------------------------------------------------------


def render_status(stats: QueueStats, now: datetime, *, db: str | None = None) -> list[str]:
    """The ``status`` screen: counts, what needs action, oldest waiting, halts."""
    totals = stats.by_status
    needing = totals.get(DeliveryStatus.NEEDS_ACTION, 0)
    where = f" at {db}" if db else ""
    lines = [
        f"Queue{where}: {stats.total} deliveries, {needing} need action  (now {fmt_time(now)})",
        "",
    ]
    names = sorted(set(stats.by_destination) | set(stats.destinations))
    if not names:
        return [*lines, "The queue is empty: nothing was submitted yet."]
    rows = []
    for name in names:
        counts = stats.by_destination.get(name, {})
        rows.append([name, *(counts.get(s, 0) for s in STATUS_ORDER)])
    if len(names) > 1:
        rows.append(["(all)", *(totals.get(s, 0) for s in STATUS_ORDER)])
    lines += table(
        ["DESTINATION", *(s.value.upper() for s in STATUS_ORDER)],
        rows,
        right=range(1, len(STATUS_ORDER) + 1),
    )
    need_rows = []
    for name in names:
        for category in _CATEGORY_ORDER:
            count = stats.needs_action.get(name, {}).get(category, 0)
            if count:
                need_rows.append([name, category.value, count, advice_for(category).action])
    if need_rows:
        lines += ["", "Needs action, by category:"]
        lines += table(["DESTINATION", "CATEGORY", "COUNT", "WHAT TO DO"], need_rows, right=[2])
        lines.append("  list them: resilient-sync list --status needs_action [--category CATEGORY]")
    lines.append("")
    if stats.oldest_waiting is not None:
        lines.append(
            f"Oldest waiting delivery: submitted {fmt_time(stats.oldest_waiting)} "
            f"({_ago(stats.oldest_waiting, now)})"
        )
    else:
        lines.append("Oldest waiting delivery: none waiting")
    paused = [s for s in stats.destinations.values() if s.paused]
    held = [
        s
        for s in stats.destinations.values()
        if s.hold_until is not None and s.hold_until > now and not s.paused
    ]
    for state in sorted(paused, key=lambda s: s.name):
        lines.append(
            f"PAUSED {state.name} since {fmt_time(state.updated_at)}: "
            f"{_one_line(state.paused_reason) or 'no reason given'}"
        )
        lines.append(f"  when fixed: resilient-sync resume {state.name}")
    for state in sorted(held, key=lambda s: s.name):
        lines.append(
            f"HELD {state.name} until {fmt_time(state.hold_until)} "
            f"({_ago(state.hold_until, now)}): {_one_line(state.hold_reason)}"
        )
    if not paused and not held:
        lines.append("Destinations: none paused, no open circuit or rate-limit hold")
    return lines


def _category(delivery: Delivery) -> str:
    return delivery.last_error.category.value if delivery.last_error else "-"


def render_deliveries(
    deliveries: Sequence[Delivery], now: datetime, *, max_width: int | None = None
) -> list[str]:
    """The ``list`` table."""
    if not deliveries:
        return ["No deliveries match."]
    rows = []
    for d in deliveries:
        error = d.last_error
        reason = ""
        if error is not None and d.status is not DeliveryStatus.SUCCEEDED:
            field = f"[{error.field}] " if error.field else ""
            reason = field + _one_line(error.message)
        rows.append(
            [
                d.id,
                d.destination,
                d.status.value,
                _category(d),
                d.attempts,
                _ago(d.updated_at, now),
                f"{d.event.type} {d.event.id}",
                reason,
            ]
        )
    return table(
        ["ID", "DESTINATION", "STATUS", "CATEGORY", "TRIES", "UPDATED", "EVENT", "REASON"],
        rows,
        right=[4],
        max_width=max_width,
    )


def _detail(record: Attempt) -> str:
    details = dict(record.details)
    if record.action in ("edit", "fix_data") and "after" in details:
        before = details.get("before") or {}
        after = details.get("after") or {}
        changes = [
            f"{path}: {json.dumps(before.get(path))} -> {json.dumps(value)}"
            for path, value in after.items()
        ]
        return "; ".join(changes)
    return ""


def render_attempts(
    records: Sequence[Attempt], *, max_width: int | None = None, indent: str = ""
) -> list[str]:
    """The audit trail of one delivery, oldest first."""
    if not records:
        return [f"{indent}No audit records."]
    rows = []
    for r in records:
        reason = _one_line(r.reason)
        if r.error is not None and r.error.field:
            reason = f"[{r.error.field}] {reason}"
        extra = _detail(r)
        if extra:
            reason = f"{reason} ({extra})" if reason else extra
        rows.append(
            [
                r.number,
                fmt_time(r.finished_at),
                r.action,
                r.actor,
                r.outcome.value if r.outcome is not None else "-",
                r.error.category.value if r.error else "-",
                f"{r.duration.total_seconds() * 1000:.0f}ms",
                reason,
            ]
        )
    lines = table(
        ["#", "WHEN", "ACTION", "ACTOR", "OUTCOME", "CATEGORY", "TOOK", "REASON"],
        rows,
        right=[0, 6],
        max_width=max_width,
    )
    return [indent + line for line in lines]


def _pretty(value: Any, indent: str) -> list[str]:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return [indent + line for line in text.splitlines()]


def render_delivery(
    delivery: Delivery,
    records: Sequence[Attempt],
    now: datetime,
    *,
    db: str | None = None,
    max_width: int | None = None,
) -> list[str]:
    """The ``show`` screen: the event, the last error, what to do, every attempt."""
    d = delivery
    e = d.event
    lines = [
        f"Delivery    {d.id}",
        f"Status      {d.status.value}"
        + (f" ({d.last_error.category.value})" if d.last_error else "")
        + f", {d.attempts} attempt(s) since the last re-sync",
        f"Destination {d.destination}",
        f"Event       {e.id}  type {e.type}"
        + (f"  ordering key {e.ordering_key}" if e.ordering_key else ""),
        f"Idem. key   {d.idempotency_key}",
        f"Created     {fmt_time(d.created_at)} ({_ago(d.created_at, now)})",
        f"Updated     {fmt_time(d.updated_at)} ({_ago(d.updated_at, now)})",
    ]
    if d.next_attempt_at is not None and not d.status.is_final:
        lines.append(f"Next try    {fmt_time(d.next_attempt_at)} ({_ago(d.next_attempt_at, now)})")
    error = d.last_error
    if error is not None:
        lines.append(f"Last error  {error.category.value}: {_one_line(error.message)}")
        if error.field:
            lines.append(f"Field       {error.field}")
        if error.exception_type:
            lines.append(f"Exception   {error.exception_type}")
    if d.result is not None:
        lines.append(f"Result      {json.dumps(d.result, ensure_ascii=False, sort_keys=True)}")
    lines += ["", "Payload:", *_pretty(e.payload, "  ")]
    if e.metadata:
        lines += ["Metadata:", *_pretty(dict(e.metadata), "  ")]
    lines += ["", f"Audit trail ({len(records)} records):"]
    lines += render_attempts(records, max_width=max_width, indent="  ")
    if d.status is DeliveryStatus.NEEDS_ACTION and error is not None:
        advice = advice_for(error.category)
        lines += [
            "",
            f"What it means: {advice.meaning}.",
            f"What to do:    {advice.action}.",
            *(f"  {command}" for command in commands_for(d, db)),
        ]
    return lines


_SPARKS = "▁▂▃▄▅▆▇█"
_ASCII_SPARKS = ".:-=+*#@"


def render_trend(
    buckets: Sequence[TrendBucket],
    width: timedelta,
    *,
    unicode: bool = True,
) -> list[str]:
    """Failed attempts per bucket and category: one sparkline row per category.

    Each column is one time bucket; the block height is the count relative
    to the largest count in any cell (a zero is ``·``, or ``' '`` in ASCII).
    """
    if not buckets:
        return ["No time buckets."]
    sparks = _SPARKS if unicode else _ASCII_SPARKS
    zero = "·" if unicode else " "
    start, end = buckets[0].start, buckets[-1].start + width
    span = f"{fmt_time(start)} to {fmt_time(end)}"
    categories = [c for c in _CATEGORY_ORDER if any(b.counts.get(c) for b in buckets)]
    header = f"Failed attempts per {fmt_age(width)} by category, {span}"
    if not categories:
        return [header, "", "No failed attempts in this period."]
    peak = max(max(b.counts.values(), default=0) for b in buckets)
    peak_total = max(b.total for b in buckets)

    def spark(values: Sequence[int], top: int) -> str:
        out = []
        for value in values:
            if value <= 0:
                out.append(zero)
            else:
                level = min(len(sparks) - 1, max(0, round(value / top * len(sparks)) - 1))
                out.append(sparks[level])
        return "".join(out)

    label_width = max(len("total"), *(len(c.value) for c in categories))
    cols = len(buckets)
    axis = _axis(buckets, cols)
    lines = [header, f"(one column per {fmt_age(width)}; tallest block = {peak} failures)", ""]
    lines.append(" " * (label_width + 2) + axis)
    for category in categories:
        values = [b.counts.get(category, 0) for b in buckets]
        lines.append(f"{category.value.ljust(label_width)}  {spark(values, peak)}  {sum(values)}")
    totals = [b.total for b in buckets]
    lines.append(f"{'total'.ljust(label_width)}  {spark(totals, peak_total)}  {sum(totals)}")
    return lines


def _axis(buckets: Sequence[TrendBucket], cols: int) -> str:
    """Time labels under the first, middle and last column where they fit."""
    if cols == 0:
        return ""
    span = buckets[-1].start - buckets[0].start
    fmt = "%H:%M:%S" if span < timedelta(minutes=10) else "%H:%M"
    if span >= timedelta(days=2):
        fmt = "%m-%d"
    first = buckets[0].start.astimezone(_UTC).strftime(fmt)
    last = buckets[-1].start.astimezone(_UTC).strftime(fmt)
    if cols < len(first) + len(last) + 2:
        return f"{first}→" if cols >= len(first) + 1 else ""
    return first + " " * (cols - len(first) - len(last)) + last


def render_recent(
    records: Sequence[Attempt], now: datetime, *, max_width: int | None = None
) -> list[str]:
    """The ``recent`` table: the latest failed attempts, newest first."""
    if not records:
        return ["No failed attempts recorded."]
    rows = []
    for r in records:
        error = r.error
        message = _one_line(error.message if error else r.reason)
        if error is not None and error.field:
            message = f"[{error.field}] {message}"
        rows.append(
            [
                _ago(r.finished_at, now),
                r.destination,
                r.delivery_id or "-",
                r.action,
                error.category.value if error else "-",
                message,
            ]
        )
    return table(
        ["WHEN", "DESTINATION", "DELIVERY", "ACTION", "CATEGORY", "ERROR"],
        rows,
        max_width=max_width,
    )


def counts_line(counts: Mapping[str, int]) -> str:
    """``a 3 · b 5`` for non-zero counts."""
    return " · ".join(f"{k} {v}" for k, v in counts.items() if v)

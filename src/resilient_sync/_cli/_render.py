"""Text and JSON views of the queue for the CLI (and the demo).

Pure functions: they take model values and return lines (text) or
JSON-ready dicts; nothing here reads a store or prints.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .._format import CATEGORY_ORDER, STATUS_ORDER, fmt_age, fmt_ago, fmt_time
from .._model import (
    Attempt,
    Delivery,
    DeliveryStatus,
    DestinationState,
    ErrorCategory,
    ErrorInfo,
    Event,
    QueueStats,
)
from .._operator import TrendBucket
from .._runbook import advice_for, commands_for
from .._text import for_terminal

__all__ = [
    "STATUS_ORDER",
    "attempt_json",
    "counts_line",
    "delivery_json",
    "error_json",
    "fmt_age",
    "fmt_ago",
    "fmt_time",
    "render_attempts",
    "render_deliveries",
    "render_delivery",
    "render_recent",
    "render_status",
    "render_trend",
    "stats_json",
    "table",
    "terminal_json",
    "trend_json",
]

_CATEGORY_ORDER = CATEGORY_ORDER
_UTC = timezone.utc
_ago = fmt_ago


def _one_line(text: str | None) -> str:
    """Outside text as one terminal-safe line (whitespace folded)."""
    return " ".join(for_terminal(text or "").split())


def _cell(text: Any) -> str:
    """An outside name or id, terminal-safe and on one line, as it is (a
    newline or tab in it is shown as ``\\n``/``\\t``, never folded)."""
    return for_terminal(text).replace("\n", "\\n").replace("\t", "\\t")


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def terminal_json(value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """JSON text that is safe on a terminal and still the same JSON.

    ``json`` escapes the C0 controls (ESC, BEL ...) itself; this escapes what
    it leaves as is with ``ensure_ascii=False``: DEL and the C1 controls
    (``\\x9b`` is a CSI on some terminals), direction overrides, line
    separators and lone surrogates (which would not even encode). Parsing
    the text gives back exactly ``value``.
    """
    text = json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=sort_keys)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


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
    wrap: bool = False,
) -> list[str]:
    """Rows under headers, columns padded. With ``max_width``, a last column
    that does not fit is clipped, or with ``wrap`` continued on the next
    lines under itself (when at least 20 characters of it fit on a line)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right_cols = set(right)
    last = len(headers) - 1
    start = sum(widths[:last]) + 2 * last
    folding = wrap and max_width is not None and max_width - start >= 20

    def line(values: Sequence[str]) -> list[str]:
        parts = []
        for i, value in enumerate(values):
            if i in right_cols:
                parts.append(value.rjust(widths[i]))
            elif i == last:
                parts.append(value)
            else:
                parts.append(value.ljust(widths[i]))
        text = "  ".join(parts).rstrip()
        if max_width is None or len(text) <= max_width:
            return [text]
        if not folding or len(values) <= last:
            return [_clip(text, max_width)]
        head = "  ".join(parts[:last])
        chunks = textwrap.wrap(values[last], width=max_width - start, break_on_hyphens=False)
        pad = " " * start
        return [f"{head}  {chunks[0]}", *(pad + chunk for chunk in chunks[1:])]

    out = line(list(headers))
    for row in cells:
        out += line(row)
    return out


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
        "remote_field": error.remote_field,
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


def render_status(
    stats: QueueStats, now: datetime, *, db: str | None = None, max_width: int | None = None
) -> list[str]:
    """The ``status`` screen: counts, what needs action, oldest waiting, halts.

    The counts are one row per destination, or one row per status when that
    is too wide for ``max_width``."""
    totals = stats.by_status
    needing = totals.get(DeliveryStatus.NEEDS_ACTION, 0)
    where = f" at {_cell(db)}" if db else ""
    counts_text = f"{stats.total} deliveries, {needing} need action  (now {fmt_time(now)})"
    first = f"Queue{where}: {counts_text}"
    if max_width is not None and len(first) > max_width:
        lines = [f"Queue{where}:", f"  {counts_text}", ""]
    else:
        lines = [first, ""]
    names = sorted(set(stats.by_destination) | set(stats.destinations))
    if not names:
        return [*lines, "The queue is empty: nothing was submitted yet."]
    rows: list[list[Any]] = []
    for name in names:
        counts = stats.by_destination.get(name, {})
        rows.append([_cell(name), *(counts.get(s, 0) for s in STATUS_ORDER)])
    if len(names) > 1:
        rows.append(["(all)", *(totals.get(s, 0) for s in STATUS_ORDER)])
    counts_table = table(
        ["DESTINATION", *(s.value.upper() for s in STATUS_ORDER)],
        rows,
        right=range(1, len(STATUS_ORDER) + 1),
    )
    if max_width is not None and max(len(line) for line in counts_table) > max_width:
        columns = [str(row[0]) for row in rows]
        counts_table = table(
            ["STATUS", *columns],
            [[s.value, *(row[i + 1] for row in rows)] for i, s in enumerate(STATUS_ORDER)],
            right=range(1, len(columns) + 1),
            max_width=max_width,
        )
    lines += counts_table
    need_rows = []
    for name in names:
        for category in _CATEGORY_ORDER:
            count = stats.needs_action.get(name, {}).get(category, 0)
            if count:
                need_rows.append([_cell(name), category.value, count, advice_for(category).action])
    if need_rows:
        lines += ["", "Needs action, by category:"]
        lines += table(
            ["DESTINATION", "CATEGORY", "COUNT", "WHAT TO DO"],
            need_rows,
            right=[2],
            max_width=max_width,
            wrap=True,
        )
        lines.append("  list them: resilient-sync list --status needs_action [--category CATEGORY]")
    lines.append("")
    if stats.oldest_waiting is not None:
        lines.append(
            f"Oldest waiting delivery: submitted {fmt_time(stats.oldest_waiting)} "
            f"({fmt_ago(stats.oldest_waiting, now)})"
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
            f"PAUSED {_cell(state.name)} since {fmt_time(state.updated_at)}: "
            f"{_one_line(state.paused_reason) or 'no reason given'}"
        )
        lines.append(f"  when fixed: resilient-sync resume {_cell(shlex.quote(state.name))}")
    for state in sorted(held, key=lambda s: s.name):
        lines.append(
            f"HELD {_cell(state.name)} until {fmt_time(state.hold_until)} "
            f"({fmt_ago(state.hold_until, now)}): {_one_line(state.hold_reason)}"
        )
    if not paused and not held:
        lines.append("Destinations: none paused, no open circuit or rate-limit hold")
    return lines


def _category(delivery: Delivery) -> str:
    return delivery.last_error.category.value if delivery.last_error else "-"


#: Shows a delivery id (the CLI passes the shortest unique prefix).
ShortId = Callable[[str], str]


def _reason(delivery: Delivery) -> str:
    error = delivery.last_error
    if error is None or delivery.status is DeliveryStatus.SUCCEEDED:
        return ""
    field = f"[{_cell(error.field)}] " if error.field else ""
    return field + _one_line(error.message)


#: The least room the one-line ``list`` layout leaves for REASON; with less,
#: each delivery takes two lines (the event and the reason on the second).
MIN_REASON = 30


def render_deliveries(
    deliveries: Sequence[Delivery],
    now: datetime,
    *,
    max_width: int | None = None,
    short: ShortId | None = None,
) -> list[str]:
    """The ``list`` table.

    One line per delivery when it fits ``max_width`` (the reason clipped, but
    at least :data:`MIN_REASON` characters of it); on a narrower terminal
    two lines per delivery: the ids and states, then the event and the whole
    reason (wrapped), so EVENT and REASON stay visible at 80 columns.
    """
    if not deliveries:
        return ["No deliveries match."]
    show = short or (lambda delivery_id: delivery_id)
    heads = [
        [
            _cell(show(d.id)),
            _cell(d.destination),
            d.status.value,
            _category(d),
            d.attempts,
            fmt_ago(d.updated_at, now),
        ]
        for d in deliveries
    ]
    events = [_cell(f"{d.event.type} {d.event.id}") for d in deliveries]
    reasons = [_reason(d) for d in deliveries]
    headers = ["ID", "DESTINATION", "STATUS", "CATEGORY", "TRIES", "UPDATED"]
    wide = table(
        [*headers, "EVENT", "REASON"],
        [[*h, e, r] for h, e, r in zip(heads, events, reasons, strict=True)],
        right=[4],
    )
    if max_width is None or max(len(line) for line in wide) <= max_width:
        return wide
    without_reason = table(
        [*headers, "EVENT"], [[*h, e] for h, e in zip(heads, events, strict=True)], right=[4]
    )
    if max(len(line) for line in without_reason) + 2 + MIN_REASON <= max_width:
        return table(
            [*headers, "EVENT", "REASON"],
            [[*h, e, r] for h, e, r in zip(heads, events, reasons, strict=True)],
            right=[4],
            max_width=max_width,
            wrap=True,
        )
    return stacked(
        table(["ID", "DEST", *headers[2:]], heads, right=[4]),
        "EVENT: REASON",
        [
            f"{event}: {reason}" if reason else event
            for event, reason in zip(events, reasons, strict=True)
        ],
        max_width,
    )


def stacked(first: Sequence[str], label: str, seconds: Sequence[str], max_width: int) -> list[str]:
    """A table for narrow terminals: each row of ``first`` (header included)
    followed by its second line, indented and wrapped (``label`` under the
    header)."""
    lines = [_clip(first[0], max_width), f"  {label}"]
    for line, text in zip(first[1:], seconds, strict=True):
        lines.append(_clip(line, max_width))
        lines += textwrap.wrap(
            text,
            width=max(max_width, 20),
            initial_indent="  ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        ) or ["  "]
    return lines


def _detail(record: Attempt) -> str:
    details = dict(record.details)
    if record.action in ("edit", "fix_data") and "after" in details:
        before = details.get("before") or {}
        after = details.get("after") or {}
        if not isinstance(before, dict) or not isinstance(after, dict):
            return ""
        changes = [
            f"{_cell(path)}: {terminal_json(before.get(path), indent=None)} -> "
            f"{terminal_json(value, indent=None)}"
            for path, value in after.items()
        ]
        return "; ".join(changes)
    return ""


def render_attempts(
    records: Sequence[Attempt], *, max_width: int | None = None, indent: str = ""
) -> list[str]:
    """The audit trail of one delivery, oldest first (two lines per record
    when one does not fit ``max_width``: the actor and reason go second)."""
    if not records:
        return [f"{indent}No audit records."]
    heads, actors, reasons = [], [], []
    for r in records:
        reason = _one_line(r.reason)
        if r.error is not None and r.error.field:
            reason = f"[{_cell(r.error.field)}] {reason}"
        extra = _detail(r)
        if extra:
            reason = f"{reason} ({extra})" if reason else extra
        heads.append(
            [
                r.number,
                fmt_time(r.finished_at),
                _cell(r.action),
                r.outcome.value if r.outcome is not None else "-",
                r.error.category.value if r.error else "-",
                f"{r.duration.total_seconds() * 1000:.0f}ms",
            ]
        )
        actors.append(_cell(r.actor))
        reasons.append(reason)
    headers = ["#", "WHEN", "ACTION", "OUTCOME", "CATEGORY", "TOOK"]
    width = None if max_width is None else max_width - len(indent)
    rows = [[*h[:3], a, *h[3:], r] for h, a, r in zip(heads, actors, reasons, strict=True)]
    lines = table(
        ["#", "WHEN", "ACTION", "ACTOR", "OUTCOME", "CATEGORY", "TOOK", "REASON"],
        rows,
        right=[0, 6],
    )
    if width is not None and max(len(line) for line in lines) > width:
        if lines[0].index("REASON") + 20 <= width:
            lines = table(
                ["#", "WHEN", "ACTION", "ACTOR", "OUTCOME", "CATEGORY", "TOOK", "REASON"],
                rows,
                right=[0, 6],
                max_width=width,
                wrap=True,
            )
        else:
            lines = stacked(
                table(headers, heads, right=[0, 5]),
                "ACTOR: REASON",
                [f"{a}: {r}" if r else a for a, r in zip(actors, reasons, strict=True)],
                width,
            )
    return [indent + line for line in lines]


def _pretty(value: Any, indent: str) -> list[str]:
    text = terminal_json(value, indent=2, sort_keys=True)
    return [indent + line for line in text.splitlines()]


def _labelled(label: str, text: str, max_width: int | None) -> list[str]:
    """``Label       text``, the text wrapped under itself to fit ``max_width``."""
    pad = " " * 12
    first = label.ljust(11) + " "
    if max_width is None or len(first) + len(text) <= max_width or max_width < 40:
        return [first + text]
    return textwrap.wrap(
        text,
        width=max_width,
        initial_indent=first,
        subsequent_indent=pad,
        break_on_hyphens=False,
        break_long_words=False,
    )


def render_delivery(
    delivery: Delivery,
    records: Sequence[Attempt],
    now: datetime,
    *,
    db: str | None = None,
    max_width: int | None = None,
    waiting: Sequence[str] = (),
    short: ShortId | None = None,
) -> list[str]:
    """The ``show`` screen: the event, the last error, what it waits for,
    what to do, every attempt. ``waiting`` says why a delivery that is not
    final has not gone yet (the CLI works it out from the store)."""
    d = delivery
    e = d.event
    lines = [
        f"Delivery    {_cell(d.id)}",
        f"Status      {d.status.value}"
        + (f" ({d.last_error.category.value})" if d.last_error else "")
        + f", {d.attempts} attempt(s) since the last re-sync",
        f"Destination {_cell(d.destination)}",
        f"Event       {_cell(e.id)}  type {_cell(e.type)}"
        + (f"  ordering key {_cell(e.ordering_key)}" if e.ordering_key else ""),
        f"Idem. key   {_cell(d.idempotency_key)}",
        f"Created     {fmt_time(d.created_at)} ({fmt_ago(d.created_at, now)})",
        f"Updated     {fmt_time(d.updated_at)} ({fmt_ago(d.updated_at, now)})",
    ]
    if d.next_attempt_at is not None and not d.status.is_final:
        lines.append(
            f"Next try    {fmt_time(d.next_attempt_at)} ({fmt_ago(d.next_attempt_at, now)})"
        )
    for number, reason in enumerate(waiting):
        lines += _labelled("Waiting" if number == 0 else "", _one_line(reason), max_width)
    error = d.last_error
    if error is not None:
        lines += _labelled(
            "Last error", f"{error.category.value}: {_one_line(error.message)}", max_width
        )
        if error.field:
            lines.append(f"Field       {_cell(error.field)}")
        if error.remote_field and error.remote_field != error.field:
            lines.append(f"Remote name {_cell(error.remote_field)}")
        if error.exception_type:
            lines.append(f"Exception   {_cell(error.exception_type)}")
    if d.result is not None:
        lines.append(f"Result      {terminal_json(d.result, indent=None, sort_keys=True)}")
    lines += ["", "Payload:", *_pretty(e.payload, "  ")]
    if e.metadata:
        lines += ["Metadata:", *_pretty(dict(e.metadata), "  ")]
    lines += ["", f"Audit trail ({len(records)} records):"]
    lines += render_attempts(records, max_width=max_width, indent="  ")
    if d.status is DeliveryStatus.NEEDS_ACTION and error is not None:
        advice = advice_for(error.category)
        shown = short(d.id) if short is not None else d.id
        lines += [
            "",
            f"What it means: {advice.meaning}.",
            f"What to do:    {advice.action}.",
            *(f"  {_cell(command.replace(d.id, shown))}" for command in commands_for(d, db)),
        ]
    return lines


_SPARKS = "▁▂▃▄▅▆▇█"
_ASCII_SPARKS = ".:-=+*#@"


_NICE = [
    timedelta(seconds=n)
    for n in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
] + [timedelta(days=n) for n in (1, 2, 7, 14, 30)]


def _nice(k: int, width: timedelta) -> int:
    """The smallest multiple of ``width`` at least ``k`` times it that is a
    round duration (15m, 1h, 6h, 1d ...), else ``k``."""
    for nice in _NICE:
        n = nice / width
        if n >= k and n == int(n):
            return int(n)
    return k


def _merge(buckets: Sequence[TrendBucket], k: int) -> list[TrendBucket]:
    """Every ``k`` consecutive buckets as one (counts summed)."""
    merged = []
    for start in range(0, len(buckets), k):
        group = buckets[start : start + k]
        counts: dict[ErrorCategory, int] = {}
        for bucket in group:
            for category, n in bucket.counts.items():
                counts[category] = counts.get(category, 0) + n
        merged.append(TrendBucket(start=group[0].start, counts=counts))
    return merged


def render_trend(
    buckets: Sequence[TrendBucket],
    width: timedelta,
    *,
    unicode: bool = True,
    max_width: int | None = None,
) -> list[str]:
    """Failed attempts per bucket and category: one sparkline row per category.

    Each column is one time bucket; the block height is the count relative
    to the largest count in any cell (a zero is ``·``, or ``' '`` in ASCII).
    When there are more buckets than ``max_width`` has room for, neighbouring
    buckets share a column (the header says how wide a column is). The time
    axis shows dates when the range crosses midnight.
    """
    if not buckets:
        return ["No time buckets."]
    sparks = _SPARKS if unicode else _ASCII_SPARKS
    zero = "·" if unicode else " "
    start, end = buckets[0].start, buckets[-1].start + width
    categories = [c for c in _CATEGORY_ORDER if any(b.counts.get(c) for b in buckets)]
    label_width = max([len("total"), *(len(c.value) for c in categories)])
    if max_width is not None:
        room = max(max_width - label_width - 2 - 2 - len(str(sum(b.total for b in buckets))), 8)
        if len(buckets) > room:
            k = _nice(math.ceil(len(buckets) / room), width)
            buckets, width = _merge(buckets, k), width * k
    header = f"Failed attempts per {fmt_age(width)} by category"
    span = f"from {fmt_time(start)} to {fmt_time(end)}"
    if not categories:
        return [header, span, "", "No failed attempts in this period."]
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

    cols = len(buckets)
    axis = _axis(buckets, width, cols, unicode=unicode)
    lines = [header, f"{span} (tallest block = {peak} failure{'' if peak == 1 else 's'})", ""]
    lines.append(" " * (label_width + 2) + axis)
    for category in categories:
        values = [b.counts.get(category, 0) for b in buckets]
        lines.append(f"{category.value.ljust(label_width)}  {spark(values, peak)}  {sum(values)}")
    totals = [b.total for b in buckets]
    lines.append(f"{'total'.ljust(label_width)}  {spark(totals, peak_total)}  {sum(totals)}")
    return lines


def _axis(
    buckets: Sequence[TrendBucket], width: timedelta, cols: int, *, unicode: bool = True
) -> str:
    """Time labels (UTC) under the first and last column where they fit; with
    the date when the range crosses midnight."""
    if cols == 0:
        return ""
    first_at = buckets[0].start.astimezone(_UTC)
    last_at = buckets[-1].start.astimezone(_UTC)
    span = last_at - first_at
    fmt = "%H:%M:%S" if span < timedelta(minutes=10) and width < timedelta(minutes=1) else "%H:%M"
    if first_at.date() != (last_at + width).date():
        fmt = "%m-%d" if span >= timedelta(days=2) else "%m-%d %H:%M"
    first, last = first_at.strftime(fmt), last_at.strftime(fmt)
    arrow = "→" if unicode else ">"
    if cols < len(first) + len(last) + 2:
        return f"{first}{arrow}" if cols >= len(first) + 1 else ""
    return first + " " * (cols - len(first) - len(last)) + last


def render_recent(
    records: Sequence[Attempt],
    now: datetime,
    *,
    max_width: int | None = None,
    short: ShortId | None = None,
) -> list[str]:
    """The ``recent`` table: the latest failed attempts, newest first."""
    if not records:
        return ["No failed attempts recorded."]
    show = short or (lambda delivery_id: delivery_id)
    rows = []
    for r in records:
        error = r.error
        message = _one_line(error.message if error else r.reason)
        if error is not None and error.field:
            message = f"[{_cell(error.field)}] {message}"
        delivery_id = r.delivery_id
        rows.append(
            [
                fmt_ago(r.finished_at, now),
                _cell(r.destination),
                _cell(show(delivery_id)) if delivery_id else "-",
                _cell(r.action),
                error.category.value if error else "-",
                message,
            ]
        )
    return table(
        ["WHEN", "DESTINATION", "DELIVERY", "ACTION", "CATEGORY", "ERROR"],
        rows,
        max_width=max_width,
        wrap=True,
    )


def counts_line(counts: Mapping[str, int]) -> str:
    """``a 3 · b 5`` for non-zero counts."""
    return " · ".join(f"{k} {v}" for k, v in counts.items() if v)

"""What the admin pages show, computed from model values (no I/O, no HTML).

The handlers in ``_app.py`` read the queue and hand the values here; the
templates only lay these out (Jinja2 escapes every text they print).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import attrs

from .._edit import parse_path
from .._format import CATEGORY_ORDER, fmt_time
from .._model import Attempt, Delivery, DeliveryStatus, ErrorCategory
from .._operator import RETRYABLE_BY_OPERATOR, TrendBucket
from .._text import clean, one_line

__all__ = [
    "CATEGORY_COLORS",
    "CATEGORY_LABELS",
    "PAGE_SIZES",
    "RANGES",
    "BadInput",
    "Bar",
    "Chart",
    "EditForm",
    "ErrorGroup",
    "Filters",
    "JsonLine",
    "Match",
    "TimelineEntry",
    "as_form_value",
    "chart_window",
    "duplicate_match",
    "field_value",
    "group_errors",
    "json_lines",
    "parse_edit_form",
    "parse_filters",
    "parse_range",
    "pretty",
    "retry_problem",
    "short_id",
    "timeline",
    "trend_chart",
]

_UTC = timezone.utc

#: What each category is called on the pages.
CATEGORY_LABELS = {
    ErrorCategory.TRANSIENT: "temporary error",
    ErrorCategory.RATE_LIMITED: "rate limited",
    ErrorCategory.DUPLICATE: "potential duplicate",
    ErrorCategory.DATA_FORMAT: "data rejected",
    ErrorCategory.MAPPING: "missing mapping",
    ErrorCategory.PERMISSION: "permission refused",
    ErrorCategory.UNEXPECTED: "unexpected error",
}
#: The bar colours of the trend chart (readable on white, distinct in grey).
CATEGORY_COLORS = {
    ErrorCategory.TRANSIENT: "#4e79a7",
    ErrorCategory.RATE_LIMITED: "#f28e2b",
    ErrorCategory.DUPLICATE: "#b07aa1",
    ErrorCategory.DATA_FORMAT: "#e15759",
    ErrorCategory.MAPPING: "#edc948",
    ErrorCategory.PERMISSION: "#76b7b2",
    ErrorCategory.UNEXPECTED: "#59a14f",
}
#: Page sizes offered on the deliveries page.
PAGE_SIZES = (20, 50, 100, 200)
#: The trend chart's ranges and their default bucket.
RANGES = {"24h": (timedelta(hours=24), "hour"), "7d": (timedelta(days=7), "day")}
RANGES["30d"] = (timedelta(days=30), "day")
_BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
_MAX_INPUT = 200


class BadInput(ValueError):
    """Input a person typed that cannot be used; the message says why."""


def short_id(delivery_id: str) -> str:
    """The part of a delivery id people tell apart: ids start with their
    creation time, so their last 8 characters (random) are shown."""
    return delivery_id[-8:] if len(delivery_id) > 12 else delivery_id


def _shown(value: str) -> str:
    """A person's input, safe to repeat in a message (one line, capped)."""
    return one_line(value, limit=80)


# -- the deliveries filters ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class Filters:
    """The deliveries page's filters, parsed; ``form`` keeps what was typed."""

    statuses: tuple[DeliveryStatus, ...] = ()
    destination: str | None = None
    category: ErrorCategory | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None
    cursor: str | None = None
    limit: int = 50
    form: Mapping[str, Any] = attrs.field(factory=dict)

    def query(self, **changes: Any) -> str:
        """The query string of these filters (``cursor`` and others replaced)."""
        params: dict[str, Any] = {
            "status": [s.value for s in self.statuses],
            "destination": self.destination or "",
            "category": self.category.value if self.category else "",
            "type": self.event_type or "",
            "from": self.form.get("from", ""),
            "to": self.form.get("to", ""),
            "q": self.search or "",
            "limit": str(self.limit),
            "cursor": self.cursor or "",
        }
        params.update(changes)
        cleaned = {k: v for k, v in params.items() if v not in ("", None, [])}
        return urlencode(cleaned, doseq=True)

    @property
    def retry_statuses(self) -> tuple[DeliveryStatus, ...]:
        """The statuses "Re-sync all matching" works on (default: needs action)."""
        return self.statuses or (DeliveryStatus.NEEDS_ACTION,)

    @property
    def retry_scope(self) -> str:
        """What "Re-sync all matching" applies to, in words."""
        return attrs.evolve(self, statuses=self.retry_statuses).describe()

    @property
    def is_failed_view(self) -> bool:
        return self.statuses == (DeliveryStatus.NEEDS_ACTION,)

    def describe(self) -> str:
        """``status needs_action, destination pos, ...`` for a confirmation."""
        parts = []
        if self.statuses:
            parts.append("status " + ", ".join(s.value for s in self.statuses))
        if self.destination:
            parts.append(f"destination {self.destination}")
        if self.category:
            parts.append(f"category {self.category.value}")
        if self.event_type:
            parts.append(f"event type {self.event_type}")
        if self.since:
            parts.append(f"updated from {fmt_time(self.since)}")
        if self.until:
            parts.append(f"updated before {fmt_time(self.until)}")
        if self.search:
            parts.append(f"containing {self.search!r}")
        return ", ".join(parts) or "no filter"


def _parse_when(text: str, name: str, *, end: bool) -> datetime:
    value = text.strip()
    try:
        if len(value) == 10:  # a date: the whole day
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=_UTC)
            return day + timedelta(days=1) if end else day
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise BadInput(
            f"{name} {_shown(text)!r} is not a date; write 2026-11-22 or 2026-11-22T10:30 (UTC)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=_UTC)


def parse_filters(
    get: Callable[[str], str | None],
    getlist: Callable[[str], list[str]],
    *,
    destinations: Iterable[str],
    default_limit: int = 50,
) -> tuple[Filters, list[str]]:
    """The filters of a query string (``get``/``getlist`` of its params) and
    the problems found in them; with problems, list nothing."""
    problems: list[str] = []
    form: dict[str, Any] = {}
    statuses: list[DeliveryStatus] = []
    known_statuses = {s.value: s for s in DeliveryStatus}
    for raw in getlist("status"):
        value = raw.strip().lower().replace("-", "_")
        if not value:
            continue
        if value not in known_statuses:
            problems.append(f"unknown status {_shown(raw)!r}; known: {', '.join(known_statuses)}")
        elif known_statuses[value] not in statuses:
            statuses.append(known_statuses[value])
    form["status"] = [s.value for s in statuses]

    destination = (get("destination") or "").strip() or None
    known = sorted(set(destinations))
    if destination is not None and destination not in known:
        problems.append(
            f"unknown destination {_shown(destination)!r}; known: {', '.join(known) or 'none yet'}"
        )
    form["destination"] = destination or ""

    category = None
    raw_category = (get("category") or "").strip()
    if raw_category:
        try:
            category = ErrorCategory(raw_category.lower().replace("-", "_"))
        except ValueError:
            names = ", ".join(c.value for c in ErrorCategory)
            problems.append(f"unknown category {_shown(raw_category)!r}; known: {names}")
    form["category"] = category.value if category else ""

    event_type = (get("type") or "").strip()[:_MAX_INPUT] or None
    search = (get("q") or "").strip()[:_MAX_INPUT] or None
    form["type"], form["q"] = event_type or "", search or ""

    since = until = None
    raw_from, raw_to = (get("from") or "").strip(), (get("to") or "").strip()
    form["from"], form["to"] = raw_from[:40], raw_to[:40]
    try:
        since = _parse_when(raw_from, "from", end=False) if raw_from else None
    except BadInput as exc:
        problems.append(str(exc))
    try:
        until = _parse_when(raw_to, "to", end=True) if raw_to else None
    except BadInput as exc:
        problems.append(str(exc))
    if since is not None and until is not None and since >= until:
        problems.append(f"'from' ({raw_from}) must be before 'to' ({raw_to})")

    limit = default_limit
    raw_limit = (get("limit") or "").strip()
    if raw_limit:
        if raw_limit.isdigit() and int(raw_limit) in PAGE_SIZES:
            limit = int(raw_limit)
        else:
            sizes = ", ".join(str(n) for n in PAGE_SIZES)
            problems.append(f"page size {_shown(raw_limit)!r} is not one of {sizes}")
    cursor = (get("cursor") or "").strip() or None
    if cursor is not None and not (cursor.startswith("s") and cursor[1:].isdigit()):
        problems.append(
            f"invalid page cursor {_shown(cursor)!r}; use the page links (start again from "
            "the first page)"
        )
        cursor = None
    filters = Filters(
        statuses=tuple(statuses),
        destination=destination,
        category=category,
        event_type=event_type,
        since=since,
        until=until,
        search=search,
        cursor=cursor,
        limit=limit,
        form=form,
    )
    return filters, problems


def retry_problem(filters: Filters) -> str | None:
    """Why "Re-sync all matching" cannot apply to these filters, or None."""
    wrong = [s for s in filters.retry_statuses if s not in RETRYABLE_BY_OPERATOR]
    if not wrong:
        return None
    allowed = ", ".join(sorted(s.value for s in RETRYABLE_BY_OPERATOR))
    return (
        f"{', '.join(s.value for s in wrong)} deliveries cannot be re-synced; "
        f"only {allowed} deliveries can (filter on one of those statuses)"
    )


# -- the payload, with the offending field marked ---------------------------------


@attrs.frozen
class JsonLine:
    """One line of a pretty-printed JSON value; ``marked`` lines are the field."""

    indent: int
    text: str
    marked: bool = False


_MAX_LINES = 2000


def _parts(field: str | None) -> list[str | int] | None:
    if not field:
        return None
    try:
        return parse_path(field)
    except ValueError:
        return None


def json_lines(value: Any, field: str | None = None) -> tuple[list[JsonLine], bool]:
    """``value`` as indented JSON lines with the lines of ``field`` (a payload
    path like ``customer.phone`` or ``lines[0].sku``) marked; the second
    item says whether the field was found."""
    target = _parts(field)
    lines: list[JsonLine] = []
    found = False

    def inside(path: list[str | int]) -> bool:
        return target is not None and path[: len(target)] == target

    def emit(item: Any, path: list[str | int], head: str, tail: str, depth: int) -> None:
        nonlocal found
        if len(lines) >= _MAX_LINES:
            return
        mark = inside(path)
        if mark and target is not None and len(path) == len(target):
            found = True
        if isinstance(item, dict) and item:
            lines.append(JsonLine(depth, head + "{", mark))
            keys = list(item)
            for i, key in enumerate(keys):
                comma = "," if i < len(keys) - 1 else ""
                label = json.dumps(str(key), ensure_ascii=False) + ": "
                emit(item[key], [*path, str(key)], label, comma, depth + 1)
            lines.append(JsonLine(depth, "}" + tail, mark))
        elif isinstance(item, list) and item:
            lines.append(JsonLine(depth, head + "[", mark))
            for i, element in enumerate(item):
                comma = "," if i < len(item) - 1 else ""
                emit(element, [*path, i], "", comma, depth + 1)
            lines.append(JsonLine(depth, "]" + tail, mark))
        else:
            text = json.dumps(item, ensure_ascii=False)
            lines.append(JsonLine(depth, head + text + tail, mark))

    emit(value, [], "", "", 0)
    if len(lines) >= _MAX_LINES:
        lines.append(JsonLine(0, f"… (cut at {_MAX_LINES} lines)"))
    return lines, found


def _child(node: Any, part: str | int) -> tuple[bool, Any]:
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return True, node[part]
    if isinstance(node, dict) and isinstance(part, str) and part in node:
        return True, node[part]
    return False, None


def field_value(payload: Any, field: str | None) -> tuple[bool, Any]:
    """``(True, value)`` when ``field`` names a place in ``payload``."""
    parts = _parts(field)
    if parts is None:
        return False, None
    node = payload
    for part in parts:
        found, node = _child(node, part)
        if not found:
            return False, None
    return True, node


def as_form_value(value: Any) -> tuple[str, bool]:
    """A payload value as the edit form shows it: ``(text, is_json)``."""
    if isinstance(value, str):
        return value, False
    return json.dumps(value, ensure_ascii=False), True


def pretty(value: Any) -> str:
    """Indented JSON (for the timeline's details)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


# -- the error-trend chart -----------------------------------------------------


def parse_range(range_text: str | None, bucket_text: str | None) -> tuple[str, str, list[str]]:
    """The chart's ``(range, bucket)`` names, defaults for what is missing,
    and the problems found."""
    problems = []
    name = (range_text or "").strip() or "24h"
    if name not in RANGES:
        problems.append(f"unknown range {_shown(name)!r}; choose {', '.join(RANGES)}")
        name = "24h"
    bucket = (bucket_text or "").strip() or RANGES[name][1]
    if bucket not in _BUCKETS:
        problems.append(f"unknown bucket {_shown(bucket)!r}; choose hour or day")
        bucket = RANGES[name][1]
    return name, bucket, problems


def chart_window(range_name: str, bucket: str, now: datetime) -> tuple[datetime, timedelta]:
    """``(since, width)``: whole buckets (UTC hours or days), the last one holding now."""
    span, _ = RANGES[range_name]
    width = _BUCKETS[bucket]
    now = now.astimezone(_UTC)
    if bucket == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = now.replace(minute=0, second=0, microsecond=0)
    count = max(1, math.ceil(span / width))
    return start - (count - 1) * width, width


@attrs.frozen
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@attrs.frozen
class Chart:
    """An SVG bar chart, laid out: the template draws these shapes."""

    width: int
    height: int
    plot_top: int
    plot_bottom: int
    plot_left: int
    bars: list[Bar]
    labels: list[tuple[float, str]]
    ticks: list[tuple[float, str]]
    legend: list[tuple[str, str, int]]  # (category, label, count)
    rows: list[tuple[str, int, list[tuple[str, int]]]]
    total: int
    peak: int
    title: str


def trend_chart(buckets: Sequence[TrendBucket], width: timedelta) -> Chart:
    """Stacked bars of failed attempts per bucket and category."""
    svg_w, svg_h = 760, 220
    left, right, top, bottom = 40, 10, 10, 190
    plot_w = svg_w - left - right
    peak = max((b.total for b in buckets), default=0)
    scale_top = max(peak, 1)
    n = max(len(buckets), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.8, 1.0)
    day = width >= timedelta(days=1)
    fmt = "%m-%d" if day else "%H:%M"
    bars: list[Bar] = []
    for i, b in enumerate(buckets):
        x = left + i * slot + (slot - bar_w) / 2
        base = float(bottom)
        for category in CATEGORY_ORDER:
            count = b.counts.get(category, 0)
            if not count:
                continue
            h = (bottom - top) * count / scale_top
            base -= h
            when = b.start.astimezone(_UTC).strftime("%Y-%m-%d" if day else "%Y-%m-%d %H:%M")
            bars.append(
                Bar(
                    x=round(x, 2),
                    y=round(base, 2),
                    width=round(bar_w, 2),
                    height=round(h, 2),
                    color=CATEGORY_COLORS[category],
                    title=f"{when}: {count} {CATEGORY_LABELS[category]}",
                )
            )
    every = max(1, math.ceil(n / 8))
    labels = [
        (round(left + i * slot + slot / 2, 2), b.start.astimezone(_UTC).strftime(fmt))
        for i, b in enumerate(buckets)
        if i % every == 0
    ]
    ticks = [(float(bottom), "0")]
    if peak:
        ticks.append((float(top), str(peak)))
        if peak >= 4:
            ticks.append((round((top + bottom) / 2, 2), f"{peak / 2:g}"))
    totals = {c: sum(b.counts.get(c, 0) for b in buckets) for c in CATEGORY_ORDER}
    legend = [(c.value, CATEGORY_LABELS[c], totals[c]) for c in CATEGORY_ORDER]
    rows = [
        (
            b.start.astimezone(_UTC).strftime("%Y-%m-%d" if day else "%Y-%m-%d %H:%M"),
            b.total,
            [(CATEGORY_LABELS[c], b.counts[c]) for c in CATEGORY_ORDER if b.counts.get(c)],
        )
        for b in buckets
        if b.total
    ]
    span = f"{'day' if day else 'hour'}"
    return Chart(
        width=svg_w,
        height=svg_h,
        plot_top=top,
        plot_bottom=bottom,
        plot_left=left,
        bars=bars,
        labels=labels,
        ticks=ticks,
        legend=legend,
        rows=rows,
        total=sum(totals.values()),
        peak=peak,
        title=f"Failed attempts per {span} by category (UTC)",
    )


# -- recent errors, grouped ------------------------------------------------------


@attrs.frozen(kw_only=True)
class ErrorGroup:
    """Failed attempts in the same minute with the same cause."""

    when: datetime
    time: str
    destination: str
    category: ErrorCategory | None
    label: str
    message: str
    delivery_ids: tuple[str, ...]
    attempts: int
    outcome: str

    @property
    def deliveries(self) -> str:
        n = len(self.delivery_ids)
        return f"{n} delivery" if n == 1 else f"{n} deliveries"


def _fate(status: DeliveryStatus | None, attempts: int, number: int) -> str:
    """What became of a delivery after a failed attempt ``number``."""
    if status is None:
        return "no longer in the queue"
    if status is DeliveryStatus.SUCCEEDED:
        if attempts > number:
            return "resolved by automatic retry"
        if attempts == number:
            return "resolved in the same attempt (a hook corrected or linked it)"
        return "resolved after a re-sync"
    if status in (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.IN_FLIGHT):
        return "still retrying"
    if status is DeliveryStatus.NEEDS_ACTION:
        return "needs action"
    if status is DeliveryStatus.RESOLVED:
        return "resolved by an operator"
    return "discarded"


def group_errors(
    records: Sequence[Attempt],
    deliveries: Mapping[str, Delivery | None],
    *,
    today: datetime,
) -> list[ErrorGroup]:
    """Recent failed attempts (newest first), grouped by minute, destination,
    category and message, each with what became of its deliveries."""
    groups: dict[tuple[Any, ...], list[Attempt]] = {}
    for record in records:
        minute = record.finished_at.astimezone(_UTC).replace(second=0, microsecond=0)
        error = record.error
        message = one_line(error.message if error else record.reason or "", limit=160)
        key = (minute, record.destination, error.category if error else None, message)
        groups.setdefault(key, []).append(record)
    out = []
    day = today.astimezone(_UTC).date()
    for (minute, destination, category, message), items in groups.items():
        ids = tuple(dict.fromkeys(r.delivery_id for r in items if r.delivery_id))
        fates: dict[str, int] = {}
        for delivery_id in ids:
            found = deliveries.get(delivery_id)
            number = max(r.number for r in items if r.delivery_id == delivery_id)
            fate = _fate(found.status if found else None, found.attempts if found else 0, number)
            fates[fate] = fates.get(fate, 0) + 1
        if not ids:
            outcome = "on the destination"
        elif len(fates) == 1:
            outcome = next(iter(fates))
        else:
            outcome = ", ".join(f"{n} {fate}" for fate, n in fates.items())
        time = minute.strftime("%H:%M") if minute.date() == day else minute.strftime("%m-%d %H:%M")
        out.append(
            ErrorGroup(
                when=minute,
                time=time,
                destination=destination,
                category=category,
                label=CATEGORY_LABELS[category] if category else "error",
                message=message,
                delivery_ids=ids,
                attempts=len(items),
                outcome=outcome,
            )
        )
    return out


# -- the audit trail as a timeline ----------------------------------------------------

_OPERATOR_ACTIONS = frozenset({"retry", "resolve", "discard", "edit", "pause", "resume"})


@attrs.frozen(kw_only=True)
class TimelineEntry:
    when: str
    action: str
    actor: str
    number: int
    outcome: str | None
    category: str | None
    field: str | None
    reason: str
    took: str
    kind: str
    changes: list[tuple[str, str, str]]
    details: str | None


def timeline(records: Sequence[Attempt]) -> list[TimelineEntry]:
    """The audit records of a delivery, oldest first, ready to show."""
    out = []
    for r in records:
        details = dict(r.details)
        changes: list[tuple[str, str, str]] = []
        if r.action in ("edit", "fix_data") and isinstance(details.get("after"), dict):
            before = details.get("before") or {}
            for path, value in details["after"].items():
                old = before.get(path) if isinstance(before, dict) else None
                changes.append((str(path), json.dumps(old, ensure_ascii=False), json.dumps(value)))
            for name in ("before", "after", "changed"):
                details.pop(name, None)
        if r.error is not None:
            kind = "error"
        elif r.actor.startswith("worker:") or r.action not in _OPERATOR_ACTIONS:
            kind = "ok" if r.outcome is DeliveryStatus.SUCCEEDED else "info"
        else:
            kind = "operator"
        out.append(
            TimelineEntry(
                when=fmt_time(r.finished_at),
                action=r.action,
                actor=r.actor,
                number=r.number,
                outcome=r.outcome.value if r.outcome is not None else None,
                category=r.error.category.value if r.error else None,
                field=r.error.field if r.error else None,
                reason=clean(r.reason or "", limit=2000),
                took=f"{r.duration.total_seconds() * 1000:.0f} ms",
                kind=kind,
                changes=changes,
                details=pretty(details) if details else None,
            )
        )
    return out


# -- potential duplicates ---------------------------------------------------------

_MATCH_KEYS = ("existing", "match", "record", "duplicate", "conflict")
_ID_KEYS = ("id", "remote_id", "existing_id", "customer_id", "uuid")


@attrs.frozen(kw_only=True)
class Match:
    """What the destination said about the record ours collides with."""

    value: Any
    source: str
    remote_id: str | None = None


def _remote_id(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in _ID_KEYS:
            found = value.get(key)
            if isinstance(found, (str, int)) and not isinstance(found, bool):
                return one_line(found, limit=120)
        for item in value.values():
            if isinstance(item, dict):
                nested = _remote_id(item)
                if nested is not None:
                    return nested
    return None


def duplicate_match(records: Sequence[Attempt]) -> Match | None:
    """The match reported with the latest duplicate error of a delivery's
    audit trail (oldest first): a ``DuplicateError(details={"existing": ...})``
    (or ``match``, ``record``, ...), else the HTTP body the destination sent
    (JSON when it parses), else the error's details as they are."""
    for record in reversed(records):
        if record.error is None or record.error.category is not ErrorCategory.DUPLICATE:
            continue
        details = record.details.get("error_details")
        if not isinstance(details, dict) or not details:
            continue
        for key in _MATCH_KEYS:
            if key in details and details[key] not in (None, "", {}, []):
                value = details[key]
                return Match(
                    value=value,
                    source=f"reported by {record.destination} ({key})",
                    remote_id=_remote_id(value),
                )
        body = details.get("body")
        if isinstance(body, str) and body.strip():
            try:
                parsed: Any = json.loads(body)
            except ValueError:
                parsed = body
            status = details.get("status")
            where = f"HTTP {status} body" if status else "response body"
            return Match(
                value=parsed,
                source=f"the {where} {record.destination} sent",
                remote_id=_remote_id(parsed),
            )
        return Match(
            value=details,
            source=f"the error details from {record.destination}",
            remote_id=_remote_id(details),
        )
    return None


# -- the edit-and-re-sync form ---------------------------------------------------------

_SET_ROWS = 3
_ADD_ROWS = 2
_EMPTY_ROW = ("", "", False)


@attrs.frozen(kw_only=True)
class EditForm:
    """The edit form as shown (rows of ``(path, value text, is JSON)``) and,
    once parsed, the arguments of ``Operator.edit``."""

    set_rows: list[tuple[str, str, bool]] = attrs.field(factory=lambda: [_EMPTY_ROW] * _SET_ROWS)
    add_rows: list[tuple[str, str, bool]] = attrs.field(factory=lambda: [_EMPTY_ROW] * _ADD_ROWS)
    remove: str = ""
    note: str = ""
    retry: bool = True
    force: bool = False
    changes: dict[str, Any] = attrs.field(factory=dict)
    additions: dict[str, Any] = attrs.field(factory=dict)
    removals: list[str] = attrs.field(factory=list)


def _rows(
    text: Callable[[str], str], prefix: str, count: int, problems: list[str]
) -> tuple[list[tuple[str, str, bool]], dict[str, Any]]:
    rows = []
    values: dict[str, Any] = {}
    for i in range(count):
        path = text(f"{prefix}-path-{i}")
        raw = text(f"{prefix}-value-{i}")
        is_json = bool(text(f"{prefix}-json-{i}"))
        rows.append((path, raw, is_json))
        if not path:
            if raw:
                problems.append(f"a value ({_shown(raw)!r}) has no field path next to it")
            continue
        if path in values:
            problems.append(f"{_shown(path)} appears twice")
            continue
        if is_json:
            try:
                values[path] = json.loads(raw)
            except ValueError:
                problems.append(
                    f"the value of {_shown(path)} is not JSON ({_shown(raw)!r}); untick "
                    "'JSON' to send it as text"
                )
                continue
        else:
            values[path] = raw
    return rows, values


def parse_edit_form(text: Callable[[str], str]) -> tuple[EditForm, list[str]]:
    """The edit form of a request (``text(name)`` reads one field) and the
    problems found in it (the form is kept as typed, to show it again)."""
    problems: list[str] = []
    set_rows, changes = _rows(text, "set", _SET_ROWS, problems)
    add_rows, additions = _rows(text, "add", _ADD_ROWS, problems)
    remove = text("remove")
    removals = [p.strip() for p in remove.replace("\n", ",").split(",") if p.strip()]
    both = set(changes) & set(additions) | (set(changes) | set(additions)) & set(removals)
    if both:
        problems.append(f"{', '.join(sorted(_shown(p) for p in both))}: one change per field")
    if not (changes or additions or removals) and not problems:
        problems.append("the form changes nothing: give a field path and its new value")
    form = EditForm(
        set_rows=set_rows,
        add_rows=add_rows,
        remove=remove,
        note=text("note"),
        retry=bool(text("retry")),
        force=bool(text("force")),
        changes=changes,
        additions=additions,
        removals=removals,
    )
    return form, problems

"""What the admin pages compute (no I/O): the payload with its field marked,
the trend chart's shapes, recent errors grouped with what became of them,
the duplicate's match, and the parsers of filters and the edit form."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from resilient_sync import Attempt, Delivery, DeliveryStatus, ErrorCategory, ErrorInfo, Event
from resilient_sync._operator import TrendBucket
from resilient_sync.admin._views import (
    chart_window,
    duplicate_match,
    field_value,
    group_errors,
    json_lines,
    parse_edit_form,
    parse_filters,
    trend_chart,
)

NOW = datetime(2026, 11, 22, 10, 30, 15, tzinfo=timezone.utc)


def test_json_lines_mark_the_field_and_everything_inside_it() -> None:
    payload = {"customer": {"phone": "12", "name": "A"}, "lines": [{"sku": "X"}, {"sku": "Y"}]}
    lines, found = json_lines(payload, "lines[1].sku")
    assert found
    assert [line.text for line in lines if line.marked] == ['"sku": "Y"']
    lines, found = json_lines(payload, "payload.customer")
    assert found
    marked = [line.text for line in lines if line.marked]
    assert marked == ['"customer": {', '"phone": "12",', '"name": "A"', "},"]
    lines, found = json_lines(payload, "vat_number")
    assert not found
    assert not any(line.marked for line in lines)
    assert json_lines({"a": 1}, "a[")[1] is False  # a malformed path marks nothing
    assert [line.text for line in json_lines([])[0]] == ["[]"]


def test_field_value_finds_a_place_in_the_payload() -> None:
    payload = {"lines": [{"sku": "X"}], "n": None}
    assert field_value(payload, "lines[0].sku") == (True, "X")
    assert field_value(payload, "n") == (True, None)
    assert field_value(payload, "lines[3].sku") == (False, None)
    assert field_value(payload, "lines.sku") == (False, None)
    assert field_value(payload, None) == (False, None)


def bucket(hours: int, **counts: int) -> TrendBucket:
    return TrendBucket(
        start=NOW.replace(minute=0, second=0) + timedelta(hours=hours),
        counts={ErrorCategory(k): v for k, v in counts.items()},
    )


def test_the_trend_chart_stacks_categories_per_bucket() -> None:
    buckets = [bucket(i) for i in range(24)]
    buckets[3] = bucket(3, transient=4, data_format=2)
    buckets[20] = bucket(20, transient=1)
    chart = trend_chart(buckets, timedelta(hours=1))
    assert len(chart.bars) == 3
    tallest = [b for b in chart.bars if "2026-11-22 13:00" in b.title]
    assert sum(b.height for b in tallest) == chart.plot_bottom - chart.plot_top
    assert chart.peak == 6
    assert chart.total == 7
    assert ("transient", "temporary error", 5) in chart.legend
    assert chart.rows[0] == ("2026-11-22 13:00", 6, [("temporary error", 4), ("data rejected", 2)])
    assert len(chart.labels) <= 8
    empty = trend_chart([bucket(i) for i in range(7)], timedelta(days=1))
    assert empty.bars == []
    assert empty.total == 0
    assert empty.title == "Failed attempts per day by category (UTC)"


def test_chart_windows_are_whole_buckets_ending_now() -> None:
    since, width = chart_window("24h", "hour", NOW)
    assert (since, width) == (datetime(2026, 11, 21, 11, tzinfo=timezone.utc), timedelta(hours=1))
    since, width = chart_window("7d", "day", NOW)
    assert since == datetime(2026, 11, 16, tzinfo=timezone.utc)
    assert chart_window("30d", "day", NOW)[0] == datetime(2026, 10, 24, tzinfo=timezone.utc)


def failure(delivery_id: str | None, number: int, message: str, minute: int = 30) -> Attempt:
    when = NOW.replace(minute=minute)
    return Attempt(
        delivery_id=delivery_id,
        destination="pos",
        action="deliver",
        actor="worker:a",
        started_at=when,
        finished_at=when,
        number=number,
        error=ErrorInfo(category=ErrorCategory.TRANSIENT, message=message),
    )


def delivery(delivery_id: str, status: DeliveryStatus, attempts: int) -> Delivery:
    return Delivery(
        id=delivery_id,
        event=Event("e", "t", {}),
        destination="pos",
        status=status,
        idempotency_key="k",
        attempts=attempts,
        created_at=NOW,
        updated_at=NOW,
    )


def test_recent_errors_are_grouped_with_what_became_of_them() -> None:
    records = [
        failure("d1", 1, "connection error"),
        failure("d2", 1, "connection error"),
        failure("d3", 2, "connection error"),
        failure("d4", 1, "connection error", minute=29),
        failure("d5", 1, "timeout", minute=29),
        failure(None, 0, "circuit open", minute=28),
    ]
    found: dict[str, Any] = {
        "d1": delivery("d1", DeliveryStatus.SUCCEEDED, 2),
        "d2": delivery("d2", DeliveryStatus.SUCCEEDED, 2),
        "d3": delivery("d3", DeliveryStatus.NEEDS_ACTION, 2),
        "d4": delivery("d4", DeliveryStatus.SUCCEEDED, 1),
        "d5": None,
    }
    groups = group_errors(records, found, today=NOW)
    summary = [(g.time, g.message, g.deliveries, g.outcome) for g in groups]
    assert summary == [
        (
            "10:30",
            "connection error",
            "3 deliveries",
            "2 resolved by automatic retry, 1 needs action",
        ),
        (
            "10:29",
            "connection error",
            "1 delivery",
            "resolved in the same attempt (a hook corrected or linked it)",
        ),
        ("10:29", "timeout", "1 delivery", "no longer in the queue"),
        ("10:28", "circuit open", "0 deliveries", "on the destination"),
    ]
    yesterday = group_errors(records[:1], found, today=NOW + timedelta(days=1))
    assert yesterday[0].time == "11-22 10:30"
    reset = {"d1": delivery("d1", DeliveryStatus.SUCCEEDED, 1)}
    assert group_errors([failure("d1", 3, "x")], reset, today=NOW)[0].outcome == (
        "resolved after a re-sync"
    )


def duplicate(details: dict[str, Any]) -> Attempt:
    return attrs.evolve(
        failure("d1", 1, "email taken"),
        error=ErrorInfo(category=ErrorCategory.DUPLICATE, message="email taken", field="email"),
        details={"error_details": details} if details else {},
    )


def test_the_duplicates_match_comes_from_the_error_details() -> None:
    match = duplicate_match([duplicate({"existing": {"customer": {"id": 42}}})])
    assert match is not None
    assert match.value == {"customer": {"id": 42}}
    assert match.remote_id == "42"
    assert match.source == "reported by pos (existing)"
    body = '{"errors": {"email": ["taken"]}, "existing_id": "cus_7"}'
    match = duplicate_match([duplicate({"status": 409, "body": body})])
    assert match is not None
    assert match.value == {"errors": {"email": ["taken"]}, "existing_id": "cus_7"}
    assert match.remote_id == "cus_7"
    assert match.source == "the HTTP 409 body pos sent"
    match = duplicate_match([duplicate({"status": 409, "body": "already exists"})])
    assert match is not None
    assert match.value == "already exists"
    assert match.remote_id is None
    assert duplicate_match([duplicate({})]) is None
    assert duplicate_match([failure("d1", 1, "not a duplicate")]) is None


def form(**fields: str) -> Any:
    return lambda name: fields.get(name.replace("-", "_"), "")


def test_the_edit_form_parses_text_and_json_values() -> None:
    parsed, problems = parse_edit_form(
        form(
            set_path_0="phone",
            set_value_0="+316",
            set_path_1="qty",
            set_value_1="3",
            set_json_1="1",
            add_path_0="vat",
            add_value_0="NL1",
            remove="fax, old.field",
            retry="1",
        )
    )
    assert problems == []
    assert parsed.changes == {"phone": "+316", "qty": 3}
    assert parsed.additions == {"vat": "NL1"}
    assert parsed.removals == ["fax", "old.field"]
    assert parsed.retry
    assert not parsed.force
    _, problems = parse_edit_form(form(set_path_0="a", set_value_0="1", remove="a"))
    assert problems == ["a: one change per field"]
    _, problems = parse_edit_form(form(set_path_0="a", set_path_1="a"))
    assert problems == ["a appears twice"]


def test_filters_parse_and_rebuild_their_query() -> None:
    params = {"status": ["needs_action", "needs-action"], "destination": ["pos"], "q": [" x "]}
    filters, problems = parse_filters(
        lambda name: params.get(name, [None])[0],
        lambda name: params.get(name, []),
        destinations=["pos"],
    )
    assert problems == []
    assert filters.statuses == (DeliveryStatus.NEEDS_ACTION,)
    assert filters.is_failed_view
    assert filters.search == "x"
    assert (
        filters.query(cursor="s9") == "status=needs_action&destination=pos&q=x&limit=50&cursor=s9"
    )
    assert filters.retry_scope == "status needs_action, destination pos, containing 'x'"

"""Small helpers every store shares (paging cursors, audit fill-in)."""

from __future__ import annotations

from typing import Any

import attrs

from .._errors import InvalidEventError
from .._json import BAD_ID_CHAR, MAX_ID, check_json, event_to_json, identifier_problem
from .._model import Attempt, Delivery

__all__ = [
    "check_deliveries",
    "check_page_args",
    "checked_event_json",
    "decode_cursor",
    "encode_cursor",
    "fill_audit",
    "invalid_payload",
    "like_pattern",
    "matches_search",
]


def _looks_fine(d: Delivery, event: Any) -> bool:
    """The common case in one pass: every id, key and name a short, non-blank
    string of printable text (the detailed checks run otherwise, to say what
    is wrong)."""
    fields = (
        d.id,
        d.destination,
        d.idempotency_key,
        event.id,
        event.type,
        event.ordering_key or "-",
        event.idempotency_key or "-",
    )
    for value in fields:
        if type(value) is not str or not 0 < len(value) <= MAX_ID or value.isspace():
            return False
    return BAD_ID_CHAR.search(" ".join(fields)) is None


def check_deliveries(deliveries: Any, *, payloads: bool) -> None:
    """Refuse, before anything is written, a delivery no store could hold
    correctly: ids, keys and names that are not printable text (a NUL, an
    ESC, a unit separator), and with ``payloads`` a payload or metadata that
    is not JSON. The same rules as ``submit()``, so every store behaves alike
    when it is called directly. Raises :class:`InvalidEventError`."""
    for d in deliveries:
        event = d.event
        if _looks_fine(d, event):
            if payloads:
                check_json(event.payload, "payload")
                check_json(dict(event.metadata), "metadata")
            continue
        for label, value, optional in (
            ("delivery id", d.id, False),
            ("destination", d.destination, False),
            ("idempotency key", d.idempotency_key, False),
            ("event.id", event.id, False),
            ("event.type", event.type, False),
            ("event.ordering_key", event.ordering_key, True),
            ("event.idempotency_key", event.idempotency_key, True),
        ):
            if optional and value is None:
                continue
            problem = identifier_problem(value)
            if problem is not None:
                raise InvalidEventError(
                    f"delivery {d.id!r}: {label} {problem}; nothing was enqueued", field=label
                )
        if payloads:
            check_json(event.payload, "payload")
            check_json(dict(event.metadata), "metadata")


def invalid_payload(d: Delivery, exc: Exception) -> InvalidEventError:
    """The :class:`InvalidEventError` for a delivery whose event would not
    serialise (``exc`` from the encoder), naming the offending path."""
    try:
        check_json(d.event.payload, "payload")
        check_json(dict(d.event.metadata), "metadata")
    except InvalidEventError as found:
        return InvalidEventError(
            f"delivery {d.id!r}: {found}; nothing was enqueued", field=found.field
        )
    return InvalidEventError(
        f"delivery {d.id!r}: its event cannot be stored ({type(exc).__name__}: {exc}); "
        "nothing was enqueued"
    )


def check_page_args(limit: int) -> None:
    """Reject a page size that is not a positive int."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")


def encode_cursor(seq: int) -> str:
    """An opaque page cursor after the delivery with this ``seq``."""
    return f"s{seq}"


def decode_cursor(cursor: str | None) -> int:
    """The ``seq`` a cursor points after (0 for the first page)."""
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or not cursor.startswith("s") or not cursor[1:].isdigit():
        raise ValueError(f"invalid page cursor {cursor!r}; pass a next_cursor from a previous page")
    return int(cursor[1:])


def fill_audit(template: Attempt, delivery: Delivery) -> Attempt:
    """An operator action's audit record for one delivery."""
    return attrs.evolve(
        template,
        delivery_id=delivery.id,
        destination=delivery.destination,
        outcome=delivery.status,
        number=delivery.attempts,
    )


def checked_event_json(d: Delivery) -> str:
    """The stored JSON of a delivery's event, or :class:`InvalidEventError`
    naming what no store can hold (not JSON, unencodable text)."""
    try:
        text = event_to_json(d.event)
        if not text.isascii():
            text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise invalid_payload(d, exc) from exc
    return text


def like_pattern(search: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern matching ``search`` anywhere."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def matches_search(delivery: Delivery, search: str) -> bool:
    """The memory store's text search: the event id or the event's JSON
    contains ``search`` (ASCII letters case-insensitively, as SQL's LIKE)."""
    needle = search.lower()
    if needle in delivery.event.id.lower():
        return True
    return needle in event_to_json(delivery.event).lower()

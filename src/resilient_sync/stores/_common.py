"""Small helpers every store shares (paging cursors, audit fill-in)."""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import attrs

from .._errors import InvalidEventError
from .._json import (
    check_event,
    check_json,
    event_keys,
    event_to_json,
    identifier_problem,
    ids_look_fine,
)
from .._model import Attempt, Delivery, DeliveryStatus
from .._text import clean

__all__ = [
    "MAX_PAGE",
    "NEXT_DUE_WINDOW",
    "already_checked",
    "check_attempt_times",
    "check_completion_times",
    "check_deliveries",
    "check_page_args",
    "check_time",
    "checked_event_json",
    "decode_cursor",
    "encode_cursor",
    "fill_audit",
    "invalid_payload",
    "like_pattern",
    "matches_search",
    "unencodable",
    "unmatchable",
]


#: How many ready deliveries (due already, yet left by a claim: behind
#: their key, or their destination paused or held) SQLite's ``next_due``
#: reads for the time they fell due, a time in the past that an idle worker
#: does not wait for. What falls due later it finds exactly, in one step of
#: its time index, however deep the queue.
NEXT_DUE_WINDOW = 1000


def _looks_fine(d: Delivery, event: Any) -> bool:
    """The common case in one pass: every id, key and name a short, non-blank
    string of printable text (the detailed checks run otherwise, to say what
    is wrong)."""
    return ids_look_fine(d.id, d.destination, d.idempotency_key, *event_keys(event))


#: The deliveries a Producer is enqueueing right now, whose events it has
#: just checked with the same rules (the store need not walk them again).
_CHECKED: contextvars.ContextVar[Sequence[Delivery] | None] = contextvars.ContextVar(
    "resilient_sync_checked", default=None
)


@contextmanager
def already_checked(deliveries: Sequence[Delivery]) -> Iterator[None]:
    """Within the block, a store's :func:`check_deliveries` skips the payload
    walk for exactly these delivery objects (``submit()`` has checked them)."""
    # a snapshot: a wrapper store that replaces items of the very list it was
    # given (in place) hands over objects that are not these
    token = _CHECKED.set(tuple(deliveries))
    try:
        yield
    finally:
        _CHECKED.reset(token)


def _trusted(deliveries: Sequence[Delivery]) -> bool:
    checked = _CHECKED.get()
    return (
        checked is not None
        and len(checked) == len(deliveries)
        and all(a is b for a, b in zip(checked, deliveries, strict=True))
    )


def _check_event_fields(event: Any) -> None:
    when = event.occurred_at
    if when is not None and not (isinstance(when, datetime) and when.utcoffset() is not None):
        raise InvalidEventError(
            f"event {event.id!r}: occurred_at must be a timezone-aware datetime, got "
            f"{type(when).__name__} {when!r}; nothing was enqueued",
            field="occurred_at",
        )
    check_json(event.payload, "payload")
    check_json(dict(event.metadata), "metadata")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unmatchable(*values: str | None) -> bool:
    """Whether a read's text argument (an id, a name, a search) holds what no
    store holds: a NUL or a lone surrogate. Such a read finds nothing (the
    database drivers would raise on encoding it), as on the memory store."""
    return any(value is not None and _UNSTORABLE.search(value) is not None for value in values)


def unencodable(store: str, action: str, exc: UnicodeEncodeError) -> ValueError:
    """The error for text a SQL store cannot encode: a lone surrogate (which
    only a caller past ``submit()`` and the operator API can hand in: those
    replace it), or a character the connection's client encoding lacks (a
    LATIN1 database). A ``ValueError`` naming the character, not the
    driver's codec message; the statement was never sent."""
    bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
    found = ", ".join(f"U+{ord(c):04X}" for c in bad[:3]) or "a character"
    if bad and all("\ud800" <= c <= "\udfff" for c in bad):
        why = "(a lone surrogate), which is not Unicode text and cannot be stored"
    else:
        why = f"which the connection's client encoding ({exc.encoding}) cannot hold"
    return ValueError(f"{store}: cannot {action}: a text holds {found} {why}; nothing was written")


def check_deliveries(deliveries: Sequence[Delivery], *, payloads: bool = True) -> None:
    """Refuse, before anything is written, a delivery no store could hold
    correctly: ids, keys and names that are not printable text (a NUL, an
    ESC, a unit separator), an ``occurred_at`` that is not timezone-aware,
    and a payload or metadata that is not JSON (``submit()``'s rules: string
    keys, integers of at most 300 digits, finite floats, encodable text). The
    same rules as ``submit()``, so every store behaves alike when it is
    called directly. For the very delivery objects that ``submit()`` has just
    checked and built, payloads are not walked again; their ids, keys and
    names get the one-pass look still. Raises :class:`InvalidEventError`;
    ``ValueError`` for an ``IN_FLIGHT`` delivery without
    ``lease_expires_at`` (no claim would ever take it back) or a naive time
    (see :func:`check_time`), ``TypeError`` for a time that is not a
    ``datetime``."""
    # submit() has checked these very objects; their ids and names get the
    # one-pass look anyway (cheap): defence in depth, so that a future path
    # building a plan from unchecked values fails here
    if _trusted(deliveries) and all(_looks_fine(d, d.event) for d in deliveries):
        return
    for d in deliveries:
        event = d.event
        if _looks_fine(d, event):
            if payloads:
                _check_event_fields(event)
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
            _check_event_fields(event)
    for d in deliveries:  # (their ids are known to be fine now)
        check_time(d.created_at, f"delivery {d.id!r}: created_at")
        check_time(d.updated_at, f"delivery {d.id!r}: updated_at")
        check_time(d.next_attempt_at, f"delivery {d.id!r}: next_attempt_at", optional=True)
        check_time(d.lease_expires_at, f"delivery {d.id!r}: lease_expires_at", optional=True)
        if d.status is DeliveryStatus.IN_FLIGHT and d.lease_expires_at is None:
            # a claim takes an IN_FLIGHT delivery back when its lease ends:
            # without an end, no store would ever hand it out again
            raise ValueError(
                f"delivery {d.id!r}: an IN_FLIGHT delivery needs lease_expires_at (when "
                "its lease ends, after which a claim takes it back); nothing was enqueued"
            )


def check_new_events(events: Iterable[Any]) -> None:
    """Refuse, before anything is written, an event that replaces a stored
    one (a corrected event in a ``Completion``, an edited one in
    ``transition``) and that ``submit()`` would refuse: ids and keys that are
    not printable text or are too long (a NUL, an ESC, a lone surrogate, a
    5 MB ordering key), a payload that is not JSON. The dispatcher and the
    operator check these events already; a store called directly holds to
    the same rules, as ``check_deliveries`` does for ``enqueue``. ``None``
    (no replacement) passes. Raises :class:`InvalidEventError`."""
    for event in events:
        if event is None:
            continue
        try:
            check_event(event)
        except InvalidEventError as exc:
            raise InvalidEventError(
                f"the replacing event: {exc}; nothing was written", field=exc.field
            ) from exc


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


#: The largest page a store returns at once (follow ``next_cursor`` for more).
MAX_PAGE = 1_000_000
_CURSOR = re.compile(r"s[0-9]{1,19}")


def check_page_args(limit: int) -> None:
    """Reject a page size that is not an int between 1 and ``MAX_PAGE``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(
            f"limit must be an int between 1 and {MAX_PAGE} (page with next_cursor for more), "
            f"got {limit!r}"
        )


def encode_cursor(seq: int) -> str:
    """An opaque page cursor after the delivery with this ``seq``."""
    return f"s{seq}"


def decode_cursor(cursor: str | None) -> int:
    """The ``seq`` a cursor points after (0 for the first page)."""
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or _CURSOR.fullmatch(cursor) is None or int(cursor[1:]) >= 2**63:
        raise ValueError(f"invalid page cursor {cursor!r}; pass a next_cursor from a previous page")
    return int(cursor[1:])


def outcome_value(outcome: Any) -> str | None:
    """An audit record's ``outcome`` as stored: the value of a
    :class:`DeliveryStatus` (the member, or its value), None for none.
    Anything else raises ``ValueError`` naming it, before anything is
    written (it could not be read back)."""
    if outcome is None:
        return None
    if type(outcome) is DeliveryStatus:
        return outcome._value_
    try:
        return DeliveryStatus(outcome)._value_
    except (TypeError, ValueError):
        shown = clean(repr(outcome), limit=60, single_line=True)
        raise ValueError(
            f"an audit record's outcome must be a DeliveryStatus or None, got {shown} "
            f"({type(outcome).__name__}); nothing was written"
        ) from None


_UTC = timezone.utc


def check_time(value: Any, name: str, *, optional: bool = False) -> None:
    """Refuse a time no store can place, before the store does anything: a
    naive ``datetime`` (``ValueError``: which moment it is depends on a
    time zone the store would have to guess, and stores compare it with
    the aware times they keep) or something that is not a ``datetime``
    (``TypeError``). ``name`` names the argument; ``optional``: None is
    fine. Every store calls it on every time it is handed, so that all of
    them refuse alike: without it the memory store changed a delivery and
    then failed to compare the time, SQLite failed with the arithmetic's
    message, and PostgreSQL read the time in its session's time zone."""
    if type(value) is datetime and value.tzinfo is _UTC:  # what clocks give: at once
        return
    if value is None and optional:
        return
    if not isinstance(value, datetime):
        shown = clean(repr(value), limit=60, single_line=True)
        raise TypeError(
            f"{name} must be a timezone-aware datetime, got {type(value).__name__} {shown}; "
            "nothing was done"
        )
    if value.utcoffset() is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime (such as datetime.now(timezone.utc)), "
            f"got the naive {value.isoformat()}; nothing was done"
        )


def check_attempt_times(record: Attempt) -> None:
    """:func:`check_time` for an audit record's two times."""
    check_time(record.started_at, "an audit record's started_at")
    if record.finished_at is not record.started_at:
        check_time(record.finished_at, "an audit record's finished_at")


def check_completion_times(completions: Iterable[Any]) -> None:
    """:func:`check_time` for each completion's own times (a store's audit
    encoder checks its records', with :func:`check_attempt_times`)."""
    for c in completions:
        check_time(c.finished_at, f"the completion of {c.delivery_id!r}: finished_at")
        if c.next_attempt_at is not None:
            check_time(c.next_attempt_at, f"the completion of {c.delivery_id!r}: next_attempt_at")


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
    contains ``search``, ignoring case (by Unicode's rules, as the SQL
    stores compare)."""
    needle = search.lower()
    if needle in delivery.event.id.lower():
        return True
    return needle in event_to_json(delivery.event).lower()

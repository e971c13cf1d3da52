"""Small helpers every store shares (paging cursors, audit fill-in)."""

from __future__ import annotations

import contextvars
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, cast

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
from .._model import Attempt, Completion, Delivery, DeliveryStatus, ErrorCategory, ErrorInfo
from .._text import clean

__all__ = [
    "MAX_PAGE",
    "NEXT_DUE_WINDOW",
    "already_checked",
    "check_attempt",
    "check_category",
    "check_claim_args",
    "check_completions",
    "check_cursor",
    "check_deliveries",
    "check_destination_args",
    "check_int",
    "check_list_args",
    "check_page_args",
    "check_pairs",
    "check_results",
    "check_status",
    "check_statuses",
    "check_text",
    "check_texts",
    "check_time",
    "check_transition_args",
    "checked_event_json",
    "decode_cursor",
    "encode_cursor",
    "fill_audit",
    "invalid_payload",
    "like_pattern",
    "matches_search",
    "unencodable",
    "unmatchable",
    "wrong_type",
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
        check_status(d.status, f"delivery {d.id!r}: status")
        check_int(d.attempts, f"delivery {d.id!r}: attempts", minimum=0)
        check_int(d.lease_token, f"delivery {d.id!r}: lease_token", minimum=0)
        check_text(d.lease_owner, f"delivery {d.id!r}: lease_owner", optional=True)
        _check_error(d.last_error, f"delivery {d.id!r}: last_error")
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


def wrong_type(name: str, expected: str, value: Any) -> TypeError:
    """The ``TypeError`` for an argument of the wrong type, naming it."""
    shown = clean(repr(value), limit=60, single_line=True)
    return TypeError(
        f"{name} must be {expected}, got {type(value).__name__} {shown}; nothing was done"
    )


def check_int(value: Any, name: str, *, minimum: int | None = None) -> None:
    """An ``int`` (not a ``bool``), at least ``minimum``."""
    if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
        raise wrong_type(name, "an int", value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}; nothing was done")


def check_text(value: Any, name: str, *, optional: bool = False) -> None:
    """A ``str`` (None too, if ``optional``)."""
    if type(value) is str or isinstance(value, str) or (optional and value is None):
        return
    raise wrong_type(name, "a str" + (" or None" if optional else ""), value)


def check_texts(values: Any, name: str) -> list[str]:
    """A collection of ``str`` (not one ``str``, which would be read as its
    letters), as a list (a generator is read once, here)."""
    if type(values) is not list:
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise wrong_type(name, "a list of str", values)
        values = list(values)
    for value in values:
        if type(value) is not str:
            check_text(value, f"each of {name}")
    return cast("list[str]", values)


def check_status(value: Any, name: str, *, in_flight: bool = True) -> None:
    """A :class:`DeliveryStatus` member (its value, a plain ``str``, is not:
    a store would keep a status no claim or count knows); ``in_flight``
    False refuses ``IN_FLIGHT``, which only a claim may set (with a lease
    that some claim takes back)."""
    if type(value) is not DeliveryStatus:
        raise wrong_type(name, "a DeliveryStatus", value)
    if value is DeliveryStatus.IN_FLIGHT and not in_flight:
        raise ValueError(
            f"{name} cannot be IN_FLIGHT: only a claim puts a delivery in flight, with a "
            "lease and a token; nothing was done"
        )


def check_statuses(values: Any, name: str) -> frozenset[DeliveryStatus]:
    """A collection of statuses, as members: a :class:`DeliveryStatus` or
    its value each (``"needs_action"``), refused with a clear error when it
    is one ``str`` or one status (whose letters a store would test) or holds
    anything else."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Collection):
        raise wrong_type(name, "a collection of DeliveryStatus", values)
    out: set[DeliveryStatus] = set()
    for value in values:
        if type(value) is DeliveryStatus:
            out.add(value)
            continue
        try:
            out.add(DeliveryStatus(value))
        except (TypeError, ValueError):
            raise wrong_type(f"each of {name}", "a DeliveryStatus", value) from None
    return frozenset(out)


def check_category(value: Any, name: str) -> ErrorCategory | None:
    """An error category as a member: an :class:`ErrorCategory`, its value,
    or None."""
    if value is None or type(value) is ErrorCategory:
        return value
    try:
        return ErrorCategory(value)
    except (TypeError, ValueError):
        raise wrong_type(name, "an ErrorCategory or None", value) from None


def _check_error(value: Any, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, ErrorInfo):
        raise wrong_type(name, "an ErrorInfo or None", value)
    if type(value.category) is not ErrorCategory:
        raise wrong_type(f"{name}'s category", "an ErrorCategory", value.category)


def check_attempt(record: Any) -> None:
    """Refuse, before anything is written, an audit record no store could
    keep and read back: its times (see :func:`check_time`), an ``error``
    that is not an ``ErrorInfo``, a ``number`` that is not an int, names
    that are not text, ``details`` that are not a JSON object. (Its
    ``outcome`` is checked by :func:`outcome_value`.)"""
    # what the dispatcher writes, at once (one look per field)
    if (
        type(record) is Attempt
        and type(record.started_at) is datetime
        and record.started_at.tzinfo is _UTC
        and (
            record.finished_at is record.started_at
            or (type(record.finished_at) is datetime and record.finished_at.tzinfo is _UTC)
        )
        and (record.error is None or _fine_error(record.error))
        and type(record.number) is int
        and (record.delivery_id is None or type(record.delivery_id) is str)
        and type(record.destination) is str
        and type(record.action) is str
        and type(record.actor) is str
        and (record.reason is None or type(record.reason) is str)
        and not record.details
    ):
        return
    if not isinstance(record, Attempt):
        raise wrong_type("an audit record", "an Attempt", record)
    check_time(record.started_at, "an audit record's started_at")
    check_time(record.finished_at, "an audit record's finished_at")
    _check_error(record.error, "an audit record's error")
    check_int(record.number, "an audit record's number")
    check_text(record.delivery_id, "an audit record's delivery_id", optional=True)
    check_text(record.destination, "an audit record's destination")
    check_text(record.action, "an audit record's action")
    check_text(record.actor, "an audit record's actor")
    check_text(record.reason, "an audit record's reason", optional=True)
    details = record.details
    if details:
        if not isinstance(details, Mapping):
            raise wrong_type("an audit record's details", "a mapping", details)
        try:
            check_json(dict(details), "details")
        except InvalidEventError as exc:
            raise ValueError(f"an audit record's {exc}; nothing was written") from None


def _fine_error(error: Any) -> bool:
    return type(error) is ErrorInfo and type(error.category) is ErrorCategory


def check_completions(completions: Iterable[Completion]) -> list[Completion]:
    """Refuse, before anything is written, a completion no store could
    apply and read back: not a ``Completion``, a status that is not a
    ``DeliveryStatus`` or is ``IN_FLIGHT``, a lease token that is not an
    int, an ``error`` that is not an ``ErrorInfo``, naive times (see
    :func:`check_time`). A store's audit encoder checks the records (see
    :func:`check_attempt`). Returns them as a list (a generator is read
    once, here)."""
    if type(completions) is not list:
        completions = list(completions)
    for c in completions:
        # what the dispatcher hands in, at once (one look per field)
        if (
            type(c) is Completion
            and type(c.delivery_id) is str
            and type(c.lease_token) is int
            and type(c.status) is DeliveryStatus
            and c.status is not _IN_FLIGHT
            and (c.error is None or _fine_error(c.error))
            and type(c.finished_at) is datetime
            and c.finished_at.tzinfo is _UTC
            and (
                c.next_attempt_at is None
                or (type(c.next_attempt_at) is datetime and c.next_attempt_at.tzinfo is _UTC)
            )
            and (c.idempotency_key is None or type(c.idempotency_key) is str)
            and type(c.audit) is tuple
        ):
            continue
        _check_completion(c)
    return completions


_IN_FLIGHT = DeliveryStatus.IN_FLIGHT


def _check_completion(c: Any) -> None:
    """:func:`check_completions` for one that is not plainly fine: the error
    that names what is wrong (or nothing, for one that is fine after all:
    a time in another zone, a subclass)."""
    if not isinstance(c, Completion):
        raise wrong_type("a completion", "a Completion", c)
    where = f"the completion of {clean(repr(c.delivery_id), limit=60, single_line=True)}"
    check_text(c.delivery_id, f"{where}: delivery_id")
    check_int(c.lease_token, f"{where}: lease_token")
    check_status(c.status, f"{where}: status", in_flight=False)
    _check_error(c.error, f"{where}: error")
    check_time(c.finished_at, f"{where}: finished_at")
    check_time(c.next_attempt_at, f"{where}: next_attempt_at", optional=True)
    check_text(c.idempotency_key, f"{where}: idempotency_key", optional=True)
    if not isinstance(c.audit, (tuple, list)):
        raise wrong_type(f"{where}: audit", "a tuple of Attempt", c.audit)


def check_pairs(entries: Any, name: str, types: tuple[str, ...]) -> list[Any]:
    """Each entry a tuple of ``len(types)`` items, the ``"str"`` ones text
    and the ``"int"`` ones ints (``"any"``: anything); returned as a list
    (a generator is read once, here)."""
    if type(entries) is not list:
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
            raise wrong_type(name, f"a list of {len(types)}-tuples", entries)
        entries = list(entries)
    width = len(types)
    keyed = types[:2] == ("str", "str")  # idempotency entries: at once
    for entry in entries:
        if (
            keyed
            and type(entry) is tuple
            and len(entry) == width
            and type(entry[0]) is str
            and type(entry[1]) is str
        ):
            continue
        if not isinstance(entry, (tuple, list)) or len(entry) != width:
            raise wrong_type(f"each of {name}", f"a {width}-tuple", entry)
        for item, kind in zip(entry, types, strict=True):
            if kind == "str":
                check_text(item, f"an item of {name}")
            elif kind == "int":
                check_int(item, f"an item of {name}")
    return cast("list[Any]", entries)


def check_results(entries: Sequence[tuple[str, str, Any]]) -> None:
    """Each completed key's result is JSON (what a SQL store can keep and
    read back): refused with ``ValueError`` naming the key and the path
    otherwise, before anything is written."""
    for key, _fingerprint, result in entries:
        if result is None or type(result) in (str, int, bool):
            continue
        try:
            check_json(result, "result")
        except InvalidEventError as exc:
            shown = clean(repr(key), limit=60, single_line=True)
            raise ValueError(f"idempotency key {shown}: {exc}; nothing was written") from None


def check_cursor(cursor: Any) -> None:
    """A source cursor to save: None, or ``(source, value)`` with a ``str``
    source and a ``str`` or None value."""
    if cursor is None:
        return
    if not isinstance(cursor, tuple) or len(cursor) != 2:
        raise wrong_type("cursor", "a (source, value) tuple", cursor)
    check_text(cursor[0], "the cursor's source")
    check_text(cursor[1], "the cursor's value", optional=True)


def check_claim_args(
    limit: Any, worker: Any, destinations: Any, now: Any, lease_until: Any
) -> list[str] | None:
    """``claim``'s arguments; returns ``destinations`` as a list (or None)."""
    check_int(limit, "limit")
    check_text(worker, "worker")
    check_time(now, "now")
    check_time(lease_until, "lease_until")
    return None if destinations is None else check_texts(destinations, "destinations")


def check_transition_args(
    ids: Any,
    from_status: Any,
    to_status: Any,
    audit: Any,
    now: Any,
    idempotency_key: Any,
    if_unchanged: Any,
) -> tuple[list[str], frozenset[DeliveryStatus]]:
    """``transition``'s arguments; returns ``ids`` as a list and
    ``from_status`` as members."""
    checked_ids = check_texts(ids, "ids")
    statuses = check_statuses(from_status, "from_status")
    check_status(to_status, "to_status", in_flight=False)
    check_text(idempotency_key, "idempotency_key", optional=True)
    if if_unchanged is not None:
        check_status(if_unchanged.status, "if_unchanged.status")
    check_time(now, "now")
    check_attempt(audit)  # its outcome is the delivery's, filled in later
    return checked_ids, statuses


def check_destination_args(
    name: Any,
    now: Any,
    paused: Any,
    paused_reason: Any,
    hold_until: Any,
    hold_reason: Any,
) -> None:
    """``set_destination``'s arguments (its audit record goes through the
    store's encoder, which checks it)."""
    check_text(name, "name")
    if paused is not None and not isinstance(paused, bool):
        raise wrong_type("paused", "a bool or None", paused)
    check_text(paused_reason, "paused_reason", optional=True)
    check_text(hold_reason, "hold_reason", optional=True)
    check_time(now, "now")
    check_time(hold_until, "hold_until", optional=True)


def check_list_args(
    status: Any,
    category: Any,
    destination: Any,
    event_type: Any,
    search: Any,
    since: Any,
    until: Any,
) -> tuple[frozenset[DeliveryStatus] | None, ErrorCategory | None]:
    """``list``'s filters; returns the statuses and the category as members."""
    statuses = None if status is None else check_statuses(status, "status")
    member = check_category(category, "category")
    check_text(destination, "destination", optional=True)
    check_text(event_type, "event_type", optional=True)
    check_text(search, "search", optional=True)
    check_time(since, "since", optional=True)
    check_time(until, "until", optional=True)
    return statuses, member


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

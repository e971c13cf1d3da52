"""JSON checks and (de)serialisation of events, shared by the core and the stores."""

from __future__ import annotations

import hashlib
import json
import json.scanner
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ._errors import InvalidEventError
from ._model import ErrorCategory, ErrorInfo, Event
from ._text import clean, one_line

__all__ = [
    "BAD_ID_CHAR",
    "MAX_ID",
    "canonical_dumps",
    "check_event",
    "check_json",
    "check_name",
    "compact_dumps",
    "error_from_json",
    "error_to_json",
    "event_from_json",
    "event_keys",
    "event_to_json",
    "fingerprint",
    "identifier_problem",
    "ids_look_fine",
]

MAX_ID = 255


_SCALARS = (str, int, bool, type(None))


def check_json(value: Any, path: str) -> Any:
    """Return a normalised copy of ``value`` (tuples become lists), or raise
    :class:`InvalidEventError` naming the first offending path."""
    try:
        return _check(value, path)
    except RecursionError:
        raise _invalid(f"{path} is nested too deeply or contains itself (a cycle)", path) from None
    except InvalidEventError as exc:
        # the path holds the payload's own keys: the message and the field go
        # out through the gate for outside text (escaped, capped, redacted)
        raise _invalid(exc.message, exc.field) from None


def _invalid(message: str, field: str | None) -> InvalidEventError:
    """The error, its path capped first (so that the reason after it stays)."""
    shown = None if field is None else one_line(field, limit=_MAX_PATH)
    if field is not None and shown is not None and message.startswith(field):
        message = shown + message[len(field) :]
    return InvalidEventError(clean(message, limit=_MAX_MESSAGE, single_line=True), field=shown)


#: how much of an invalid payload's path (its own keys) an error shows
_MAX_PATH = 120
_MAX_MESSAGE = 500


_SURROGATE = re.compile("[\ud800-\udfff]")
#: Integers beyond this size are refused: they cannot be converted to text
#: (CPython's 4,300-digit limit) and most systems cannot read them anyway.
_MAX_INT = 10**300


def _check_str(value: str, path: str) -> None:
    if not value.isascii() and _SURROGATE.search(value):
        at = _SURROGATE.search(value).start()  # type: ignore[union-attr]
        raise InvalidEventError(
            f"{path} contains a lone surrogate (U+{ord(value[at]):04X} at position {at}), "
            "which is not valid text and cannot be stored",
            field=path,
        )


def _check_int(value: int, path: str) -> None:
    if not -_MAX_INT < value < _MAX_INT:
        raise InvalidEventError(
            f"{path} is an integer of {value.bit_length()} bits; the limit is 300 decimal "
            "digits (send it as a string)",
            field=path,
        )


def _check(value: Any, path: str) -> Any:
    kind = type(value)
    if kind is dict:
        out: dict[str, Any] = {}
        for raw_key, item in value.items():
            key = raw_key
            if type(key) is not str:
                _bad_key(key, path)
                key = str.__str__(key)  # a str subclass: the plain text of it
            if not key.isascii():
                _check_str(key, f"{path} (a key)")
            item_kind = type(item)
            if item_kind is str:
                if not item.isascii():
                    _check_str(item, f"{path}.{key}")
                out[key] = item
            elif item_kind is bool or item is None:
                out[key] = item
            elif item_kind is int:
                if not -_MAX_INT < item < _MAX_INT:
                    _check_int(item, f"{path}.{key}")
                out[key] = item
            else:
                out[key] = _check(item, f"{path}.{key}")
        return out
    if kind is list or kind is tuple:
        return [_check(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind is str:
        _check_str(value, path)
        return value
    if kind is int:
        _check_int(value, path)
        return value
    if isinstance(value, _SCALARS):
        if isinstance(value, str):
            _check_str(value, path)
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool):
            _check_int(value, path)
            return int(value)
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidEventError(f"{path} is {value!r}, which JSON cannot represent", field=path)
        return float(value)
    if isinstance(value, Mapping):
        return _check(dict(value), path)
    if isinstance(value, (list, tuple)):
        return _check(list(value), path)
    raise InvalidEventError(
        f"{path} is a {type(value).__name__} ({_short(value)}), which is not JSON-serialisable",
        field=path,
    )


def _bad_key(key: Any, path: str) -> None:
    if isinstance(key, str):
        return
    raise InvalidEventError(
        f"{path} has a key {key!r} of type {type(key).__name__}; JSON keys are strings",
        field=path,
    )


def _short(value: Any) -> str:
    from ._text import clean  # noqa: PLC0415 - _text imports this module lazily too

    return clean(repr(value) if not isinstance(value, str) else value, limit=60, single_line=True)


#: Characters refused in ids, keys and names: control characters (C0, DEL, C1:
#: a NUL or an ESC in an id breaks stores and terminals, a unit separator
#: could make two names collide in a key), lone surrogates (not encodable),
#: line separators and bidirectional overrides (they disguise what is shown).
BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def identifier_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an id, a key or a name (None when it can)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"must be a non-empty string, got {value!r}"
    if len(value) > MAX_ID:
        return f"is {len(value)} characters long; the limit is {MAX_ID}"
    bad = BAD_ID_CHAR.search(value)
    if bad is not None:
        return (
            f"contains the control or invisible character U+{ord(bad.group()):04X} at "
            f"position {bad.start()}; ids, keys and names must be printable text"
        )
    return None


def check_name(value: Any, what: str) -> str:
    """Return ``value`` if it is a valid id/key/name, else raise ``ValueError``
    naming ``what`` and the problem."""
    problem = identifier_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    return str(value)


def _check_key(value: Any, name: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    problem = identifier_problem(value)
    if problem is not None:
        raise InvalidEventError(f"event.{name} {problem}", field=name)


def ids_look_fine(*values: Any) -> bool:
    """The common case of :func:`identifier_problem` for many values in one
    pass: each a short, non-blank ``str`` of printable text. False does not
    mean wrong (a ``str`` subclass, say): run the detailed checks then, to
    say what is wrong."""
    for value in values:
        if type(value) is not str or not 0 < len(value) <= MAX_ID or value.isspace():
            return False
    joined = " ".join(values)
    if joined.isascii():
        # the refused ASCII characters are exactly the unprintable ones (C0, DEL)
        return joined.isprintable()
    return BAD_ID_CHAR.search(joined) is None


def event_keys(event: Any) -> tuple[Any, Any, Any, Any]:
    """An event's id, type, ordering key and idempotency key, for
    :func:`ids_look_fine` ("-" for an optional key that is None)."""
    return (
        event.id,
        event.type,
        "-" if event.ordering_key is None else event.ordering_key,
        "-" if event.idempotency_key is None else event.idempotency_key,
    )


def check_event(event: Any) -> Event:
    """Validate an event for submission; return it with a normalised payload.

    Raises :class:`InvalidEventError` naming what is wrong.
    """
    if not isinstance(event, Event):
        raise InvalidEventError(f"expected an Event, got {type(event).__name__}")
    if not ids_look_fine(*event_keys(event)):  # the detailed checks say what is wrong
        _check_key(event.id, "id", optional=False)
        _check_key(event.type, "type", optional=False)
        _check_key(event.ordering_key, "ordering_key", optional=True)
        _check_key(event.idempotency_key, "idempotency_key", optional=True)
    if event.occurred_at is not None and (
        not isinstance(event.occurred_at, datetime) or event.occurred_at.utcoffset() is None
    ):
        raise InvalidEventError(
            f"event.occurred_at must be a timezone-aware datetime, got {event.occurred_at!r}",
            field="occurred_at",
        )
    payload = check_json(event.payload, "payload")
    metadata = check_json(dict(event.metadata), "metadata")
    return Event(
        id=event.id,
        type=event.type,
        payload=payload,
        ordering_key=event.ordering_key,
        idempotency_key=event.idempotency_key,
        occurred_at=event.occurred_at,
        metadata=metadata,
    )


#: One encoder, made once (``json.dumps`` with options builds a new one per call).
_CANONICAL_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical_dumps(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal bytes."""
    return _CANONICAL_ENCODE(value)


def _checked_encoder(*, sort_keys: bool) -> Callable[[Any], str]:
    """Compact JSON of values already checked (by :func:`check_json`, or
    decoded from a store): the C encoder, made once, called without the set-up
    ``JSONEncoder.encode`` repeats on every call (a third of its time on a
    small event). It skips the cycle check: checked values have no cycles,
    and one ends in ``RecursionError``, on which it encodes again with the
    full encoder (its ``ValueError`` names the cycle). Where the C encoder is
    missing, the plain one."""
    plain = json.JSONEncoder(
        sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return plain.encode
    encode = make(
        None, plain.default, json.encoder.encode_basestring, None, ":", ",", sort_keys, False, False
    )
    join = "".join

    def dumps(value: Any) -> str:
        try:
            return join(encode(value, 0))
        except RecursionError:  # a cycle, only past the checks: the full encoder names it
            return plain.encode(value)

    return dumps


_CANONICAL_CHECKED = _checked_encoder(sort_keys=True)
_STORE_CHECKED = _checked_encoder(sort_keys=False)


def fingerprint(event: Event) -> str:
    """A hash of what a destination receives (type and payload), of an event
    that passed :func:`check_event` or came from a store."""
    body = _CANONICAL_CHECKED({"type": event.type, "payload": event.payload})
    return hashlib.sha256(body.encode()).hexdigest()


#: Compact JSON for stored values (payload keys keep their order).
_STORE_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_PLAIN_DECODE = json.JSONDecoder().decode
_SCAN = getattr(json.scanner, "c_make_scanner", None)
_SCAN_ONCE = _SCAN(json.JSONDecoder()) if _SCAN is not None else None


def _store_decode(text: str) -> Any:
    """``json.loads`` of a stored text: the C scanner called directly, without
    the whitespace steps of ``JSONDecoder.decode`` (stored JSON is compact);
    any other text (spaces around it, trailing data, invalid) goes through
    the full decoder, which decodes it or raises as ``json.loads`` does."""
    if _SCAN_ONCE is not None:
        try:
            value, end = _SCAN_ONCE(text, 0)
        except StopIteration:
            return _PLAIN_DECODE(text)
        if end == len(text):
            return value
    return _PLAIN_DECODE(text)


def compact_dumps(value: Any) -> str:
    """Compact JSON of a checked value (keys in their order)."""
    return _STORE_ENCODE(value)


def event_to_json(event: Event) -> str:
    """Serialise an event for a store (compact; payload keys in their order).

    A cycle (which only a value past the checks can hold) raises the full
    encoder's ``ValueError``, as before the fast path."""
    return _STORE_CHECKED(
        {
            "id": event.id,
            "type": event.type,
            "payload": event.payload,
            "ordering_key": event.ordering_key,
            "idempotency_key": event.idempotency_key,
            "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
            "metadata": dict(event.metadata),
        }
    )


def event_from_json(text: str | bytes) -> Event:
    """Inverse of :func:`event_to_json`."""
    data = _store_decode(text if isinstance(text, str) else text.decode())
    occurred = data.get("occurred_at")
    return Event(
        data["id"],
        data["type"],
        data["payload"],
        data.get("ordering_key"),
        data.get("idempotency_key"),
        datetime.fromisoformat(occurred) if occurred else None,
        data.get("metadata") or {},
    )


def error_to_json(error: ErrorInfo | None) -> str | None:
    """Serialise an :class:`ErrorInfo` for a store."""
    if error is None:
        return None
    return _STORE_ENCODE(
        {
            "category": error.category.value,
            "message": error.message,
            "field": error.field,
            "exception_type": error.exception_type,
            "retry_after": error.retry_after,
            "remote_field": error.remote_field,
        }
    )


def error_from_json(text: str | bytes | None) -> ErrorInfo | None:
    """Inverse of :func:`error_to_json`."""
    if text is None:
        return None
    data = json.loads(text)
    return ErrorInfo(
        category=ErrorCategory(data["category"]),
        message=data["message"],
        field=data.get("field"),
        exception_type=data.get("exception_type"),
        retry_after=data.get("retry_after"),
        remote_field=data.get("remote_field"),
    )

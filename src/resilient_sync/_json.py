"""JSON checks and (de)serialisation of events, shared by the core and the stores."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._errors import InvalidEventError
from ._model import ErrorCategory, ErrorInfo, Event

__all__ = [
    "canonical_dumps",
    "check_event",
    "check_json",
    "error_from_json",
    "error_to_json",
    "event_from_json",
    "event_to_json",
    "fingerprint",
]

_MAX_ID = 255


_SCALARS = (str, int, bool, type(None))


def check_json(value: Any, path: str) -> Any:
    """Return a normalised copy of ``value`` (tuples become lists), or raise
    :class:`InvalidEventError` naming the first offending path."""
    try:
        return _check(value, path)
    except RecursionError:
        raise InvalidEventError(
            f"{path} is nested too deeply or contains itself (a cycle)", field=path
        ) from None


def _check(value: Any, path: str) -> Any:
    kind = type(value)
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                _bad_key(key, path)
            item_kind = type(item)
            if item_kind is str or item_kind is int or item_kind is bool or item is None:
                out[key] = item
            else:
                out[key] = _check(item, f"{path}.{key}")
        return out
    if kind is list or kind is tuple:
        return [_check(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidEventError(f"{path} is {value!r}, which JSON cannot represent", field=path)
        return value
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
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_key(value: Any, name: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError(
            f"event.{name} must be a non-empty string, got {value!r}", field=name
        )
    if len(value) > _MAX_ID:
        raise InvalidEventError(
            f"event.{name} is {len(value)} characters long; the limit is {_MAX_ID}", field=name
        )


def check_event(event: Any) -> Event:
    """Validate an event for submission; return it with a normalised payload.

    Raises :class:`InvalidEventError` naming what is wrong.
    """
    if not isinstance(event, Event):
        raise InvalidEventError(f"expected an Event, got {type(event).__name__}")
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


def canonical_dumps(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def fingerprint(event: Event) -> str:
    """A hash of what a destination receives (type and payload)."""
    body = canonical_dumps({"type": event.type, "payload": event.payload})
    return hashlib.sha256(body.encode()).hexdigest()


#: Compact JSON for stored values (payload keys keep their order).
_STORE_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_STORE_DECODE = json.JSONDecoder().decode


def event_to_json(event: Event) -> str:
    """Serialise an event for a store (compact; payload keys in their order)."""
    return _STORE_ENCODE(
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
    data = _STORE_DECODE(text if isinstance(text, str) else text.decode())
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
    )

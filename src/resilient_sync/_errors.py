"""The exception tree of resilient_sync.

Destinations raise these to tell the dispatcher what went wrong; the
dispatcher maps every other exception through the classifier (see
``_classify.py``). Each class knows its :class:`~resilient_sync.ErrorCategory`,
which decides what happens next (see ``docs/concepts/error-taxonomy.md``)::

    SyncError                      root; never raised by itself
    ├── RetryableError             TRANSIENT     retry with backoff
    │   └── RateLimitedError       RATE_LIMITED  retry no sooner than retry_after
    ├── DuplicateError             DUPLICATE     resolve_duplicate hook, else NEEDS_ACTION
    ├── DataFormatError            DATA_FORMAT   fix_data hook, else NEEDS_ACTION (with field)
    ├── MappingError               MAPPING       NEEDS_ACTION, escalated
    ├── PermissionDeniedError      PERMISSION    NEEDS_ACTION, escalated, destination paused
    ├── InvalidEventError          (submit)      the event was rejected, nothing enqueued
    ├── StoreError                 (stores)      a store failed; names the store and the cause
    └── DeliveryNotFoundError      (operator)    also a LookupError; names the id

Every error carries its context as attributes (``field``, ``retry_after``,
``delivery_id``), and ``str(error)`` is the human-readable reason that ends up
in the audit trail (with secrets redacted).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._model import ErrorCategory

__all__ = [
    "DataFormatError",
    "DeliveryNotFoundError",
    "DuplicateError",
    "InvalidEventError",
    "MappingError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RetryableError",
    "StoreError",
    "SyncError",
]


class SyncError(Exception):
    """Root of every error this library raises or understands.

    Args:
        message: the human-readable reason (the class docstring's first line
            when omitted).
        field: the offending field of the payload, where known
            (dotted path, e.g. ``"phone"`` or ``"lines[2].sku"``).
        retry_after: seconds the destination asked us to wait, where known.
        details: extra JSON-serialisable context kept in the audit record
            (sanitised and capped like every outside text).
        remote_field: the field as the remote API named it (e.g.
            ``"tax_id_data[0].value"``) when ``field`` is the payload path it
            maps to (``"vat_number"``).
        sent: False when nothing reached the destination (a client-side
            refusal, e.g. a rate limiter): a ``RateLimitedError`` with
            ``sent=False`` is retried after ``retry_after`` without spending
            the retry budget. None (the default) when unknown.
    """

    category: ClassVar[ErrorCategory | None] = None

    def __init__(
        self,
        message: str | None = None,
        *,
        field: str | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
        remote_field: str | None = None,
        sent: bool | None = None,
    ) -> None:
        if message is None:
            message = (type(self).__doc__ or type(self).__name__).strip().splitlines()[0]
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.details = dict(details or {})
        self.remote_field = remote_field
        self.sent = sent

    def __str__(self) -> str:
        return self.message


class RetryableError(SyncError):
    """Temporary failure; retry later with backoff."""

    category = ErrorCategory.TRANSIENT


class RateLimitedError(RetryableError):
    """The destination is rate limiting us; retry later.

    ``retry_after`` (seconds) is honoured: no retry sooner than that.
    """

    category = ErrorCategory.RATE_LIMITED


class DuplicateError(SyncError):
    """The destination already holds this record (potential duplicate)."""

    category = ErrorCategory.DUPLICATE


class DataFormatError(SyncError):
    """The destination rejected the data.

    ``field`` names the offending field, where known.
    """

    category = ErrorCategory.DATA_FORMAT


class MappingError(SyncError):
    """A reference has no mapping in the destination (unknown SKU, missing mapping)."""

    category = ErrorCategory.MAPPING


class PermissionDeniedError(SyncError):
    """The destination refused our credentials (revoked or missing permission)."""

    category = ErrorCategory.PERMISSION


class InvalidEventError(SyncError, ValueError):
    """The event is invalid and was not enqueued."""

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message, field=field)


class StoreError(SyncError):
    """A queue or idempotency store failed.

    The message names the store (its file or URL, never a password) and the
    cause; the original exception is chained as ``__cause__``.
    """


class DeliveryNotFoundError(SyncError, LookupError):
    """No delivery with this id."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"no delivery with id {delivery_id!r}")
        self.delivery_id = delivery_id

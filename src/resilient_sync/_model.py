"""The data model: events, deliveries, audit records and run reports.

Every class here is a frozen attrs value; a state change is a new value
(``attrs.evolve``). Stores map these to rows; nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar, Union, overload

import attrs

__all__ = [
    "JSON",
    "Attempt",
    "Completion",
    "Delivery",
    "DeliveryContext",
    "DeliveryStatus",
    "DestinationState",
    "DispatchEvent",
    "ErrorCategory",
    "ErrorInfo",
    "Event",
    "IdempotencyRecord",
    "IdempotencyState",
    "Page",
    "QueueStats",
    "RunReport",
    "StatusCounts",
]

#: A JSON value as produced by :func:`json.loads`.
JSON = Union[dict[str, Any], list[Any], str, int, float, bool, None]  # noqa: UP007 - runtime alias on 3.10


class DeliveryStatus(str, enum.Enum):
    """Where a delivery is in its life.

    ``PENDING -> IN_FLIGHT -> SUCCEEDED`` is the happy path;
    ``IN_FLIGHT -> RETRY_SCHEDULED -> IN_FLIGHT`` a retry;
    ``IN_FLIGHT -> NEEDS_ACTION`` waits for a person, who may ``retry``
    (back to ``PENDING``), ``resolve`` (``RESOLVED``) or ``discard``
    (``DISCARDED``). A claim whose lease expired is claimed again
    (``IN_FLIGHT -> IN_FLIGHT``); a claim handed back unattempted goes
    ``IN_FLIGHT -> PENDING``. ``SUCCEEDED``, ``RESOLVED`` and ``DISCARDED``
    are final: no worker touches them (an operator's ``retry`` can still
    revive a ``DISCARDED`` one).
    """

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCEEDED = "succeeded"
    NEEDS_ACTION = "needs_action"
    RESOLVED = "resolved"
    DISCARDED = "discarded"

    @property
    def is_final(self) -> bool:
        """True for ``SUCCEEDED``, ``RESOLVED`` and ``DISCARDED``."""
        return self in _FINAL

    def __str__(self) -> str:
        return self.value


_FINAL = frozenset({DeliveryStatus.SUCCEEDED, DeliveryStatus.RESOLVED, DeliveryStatus.DISCARDED})


class ErrorCategory(str, enum.Enum):
    """Why a delivery failed; decides what happens next (see the error taxonomy)."""

    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    DUPLICATE = "duplicate"
    DATA_FORMAT = "data_format"
    MAPPING = "mapping"
    PERMISSION = "permission"
    UNEXPECTED = "unexpected"

    @property
    def escalates(self) -> bool:
        """True for ``MAPPING`` and ``PERMISSION``: a person must change something
        outside the queue (a mapping, a credential) before a retry can succeed.

        For alert rules and dashboards; the dispatcher's ``on_needs_action``
        hook is called for every category.
        """
        return self in (ErrorCategory.MAPPING, ErrorCategory.PERMISSION)

    def __str__(self) -> str:
        return self.value


def _frozen_mapping(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


@attrs.frozen
class Event:
    """Something that happened in a source system and must reach destinations.

    Args:
        id: unique id of the event in its source; submitting the same id twice
            enqueues it once per destination.
        type: what happened, e.g. ``"customer.created"``.
        payload: JSON-serialisable data (checked by ``submit()``).
        ordering_key: deliveries sharing it (per destination) are attempted
            strictly in submission order, e.g. the customer id.
        idempotency_key: sent to destinations; derived from the event id and
            the destination when omitted. When given, it is sent as-is to
            every destination; the idempotency store keeps it per
            destination, so one event with its own key still reaches each.
        occurred_at: when it happened (timezone-aware).
        metadata: free-form JSON-serialisable labels (tenant, trace id ...).
    """

    id: str
    type: str
    payload: Any
    ordering_key: str | None = None
    idempotency_key: str | None = None
    occurred_at: datetime | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """The last error of a delivery, as shown to operators.

    Attributes:
        category: the :class:`ErrorCategory`; decides what happens next.
        message: the human-readable reason (secrets redacted).
        field: the offending field of the payload, where known (a path in
            the event's payload, e.g. ``"vat_number"`` or ``"lines[2].sku"``).
        exception_type: the qualified name of the exception that was raised.
        retry_after: seconds the destination asked us to wait, where known.
        remote_field: the field as the remote API named it, when that differs
            from the payload path (``"tax_id_data[0].value"`` for the
            payload's ``"vat_number"``), where known.
    """

    category: ErrorCategory
    message: str
    field: str | None = None
    exception_type: str | None = None
    retry_after: float | None = None
    remote_field: str | None = None


@attrs.frozen(kw_only=True)
class Delivery:
    """One event on its way to one destination (read-only view).

    ``attempts`` counts delivery attempts made (a crashed attempt counts too;
    an operator's ``retry`` resets it to 0); ``lease_token`` is the fencing
    token of the current claim. ``idempotency_key`` is the key sent to the
    destination (a ``fix_data`` correction or an operator's edit replaces it
    with a revised key); ``result`` is what the destination returned on
    success; ``next_attempt_at`` is when a ``PENDING`` or
    ``RETRY_SCHEDULED`` delivery becomes due; ``seq`` is the submission
    order assigned by the store; ``lease_owner`` and ``lease_expires_at``
    describe the current claim of an ``IN_FLIGHT`` delivery.
    """

    id: str
    event: Event
    destination: str
    status: DeliveryStatus
    idempotency_key: str
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: ErrorInfo | None = None
    result: Any = None
    created_at: datetime
    updated_at: datetime
    seq: int = 0
    lease_token: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None

    @property
    def ordering_key(self) -> str | None:
        """The event's ordering key."""
        return self.event.ordering_key


@attrs.frozen(kw_only=True)
class DeliveryContext:
    """What a destination's ``deliver(event, context)`` is told about the attempt.

    Attributes:
        delivery_id: the delivery being attempted.
        destination: the destination's name.
        idempotency_key: send it to the remote system (e.g. an
            ``Idempotency-Key`` header); the same on every attempt of the
            same payload.
        attempt: 1 on the first attempt, then 2, 3 ... (reset by an
            operator's ``retry``).
        lease_expires_at: when this worker's claim ends; another worker may
            attempt the delivery after it, so finish well before.
    """

    delivery_id: str
    destination: str
    idempotency_key: str
    attempt: int
    lease_expires_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Attempt:
    """One audit record: a delivery attempt, a hook call or an operator action.

    Attributes:
        action: ``"deliver"``, ``"resolve_duplicate"``, ``"fix_data"``,
            ``"replay"`` (already done per the idempotency store),
            ``"lease_expired"``, ``"give_up"`` (the budget went on claims
            whose worker crashed; not attempted again), ``"internal_error"``
            (a failure outside the destination, e.g. a store or a bug,
            retried under the policy); on a destination
            (``delivery_id`` None),
            ``"pause"``, ``"rate_limited"`` or ``"circuit_open"`` by the
            dispatcher; or an operator action (``"retry"``, ``"resolve"``,
            ``"discard"``, ``"edit"``, ``"pause"``, ``"resume"``).
        actor: ``"worker:<id>"`` for the dispatcher, the operator's name
            otherwise.
        number: the delivery's attempt count when the record was written.
        outcome: the delivery's status after the action, on the last record
            of an attempt (None on the earlier records of the same attempt,
            e.g. the failed ``"deliver"`` before a ``"resolve_duplicate"``;
            ``IN_FLIGHT`` on ``"lease_expired"``; None for actions on a
            destination).
        reason: human-readable explanation (secrets redacted).
        error: the classified error, for failed attempts.
        details: JSON-serialisable extras (old/new values of an edit ...).
    """

    delivery_id: str | None
    destination: str
    action: str
    actor: str
    started_at: datetime
    finished_at: datetime
    number: int = 0
    outcome: DeliveryStatus | None = None
    reason: str | None = None
    error: ErrorInfo | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    id: int | None = None

    @property
    def category(self) -> ErrorCategory | None:
        """The error category, for failed attempts."""
        return self.error.category if self.error else None

    @property
    def duration(self) -> timedelta:
        """How long the action took."""
        return self.finished_at - self.started_at


@attrs.frozen(kw_only=True)
class DispatchEvent:
    """What a dispatcher tells its ``on_event`` hook (metrics, tracing, alerts).

    ``kind`` is a delivery outcome (``"succeeded"``, ``"retry_scheduled"``,
    ``"needs_action"``, ``"released"``, ``"lost_lease"``) or a destination
    change (``"paused"``, ``"rate_limited"``, ``"circuit_open"``).
    ``duration`` is the seconds the attempt took (hooks included).
    """

    kind: str
    destination: str
    delivery_id: str | None = None
    attempt: int = 0
    category: ErrorCategory | None = None
    duration: float | None = None
    reason: str | None = None


@attrs.frozen(kw_only=True)
class DestinationState:
    """Whether a destination is paused (until an operator resumes it) or held
    back until a time (after a 429 or while its circuit is open)."""

    name: str
    paused: bool = False
    paused_reason: str | None = None
    hold_until: datetime | None = None
    hold_reason: str | None = None
    updated_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Page:
    """One page of deliveries; pass ``next_cursor`` back for the next one."""

    items: list[Delivery]
    next_cursor: str | None = None

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@attrs.frozen(kw_only=True)
class RunReport:
    """What one ``run_*`` call did.

    ``released`` counts deliveries claimed but handed back unattempted (their
    destination was paused or held meanwhile, or another worker held the
    idempotency key); ``lost_lease`` counts outcomes refused because another
    worker had claimed the delivery after our lease expired.
    """

    claimed: int = 0
    succeeded: int = 0
    retry_scheduled: int = 0
    needs_action: int = 0
    released: int = 0
    lost_lease: int = 0

    def __add__(self, other: RunReport) -> RunReport:
        return RunReport(
            **{
                f.name: getattr(self, f.name) + getattr(other, f.name)
                for f in attrs.fields(RunReport)
            }
        )

    @property
    def idle(self) -> bool:
        """True when nothing was claimed."""
        return self.claimed == 0


# --- values exchanged with stores -------------------------------------------


@attrs.frozen(kw_only=True)
class Completion:
    """The outcome of one claimed delivery, applied by ``QueueStore.complete``.

    Applied only while the delivery is ``IN_FLIGHT`` under ``lease_token``
    (fencing). ``status`` is ``SUCCEEDED``, ``RETRY_SCHEDULED``,
    ``NEEDS_ACTION`` or ``PENDING`` (handed back unattempted, with
    ``count_attempt=False`` so the claim does not use up the retry budget).
    ``event`` and ``idempotency_key`` replace the stored ones when a
    ``fix_data`` hook corrected the event.
    """

    delivery_id: str
    lease_token: int
    status: DeliveryStatus
    finished_at: datetime
    next_attempt_at: datetime | None = None
    error: ErrorInfo | None = None
    result: Any = None
    event: Event | None = None
    idempotency_key: str | None = None
    count_attempt: bool = True
    audit: tuple[Attempt, ...] = ()


class IdempotencyState(str, enum.Enum):
    """What ``IdempotencyStore.begin`` found for a key."""

    NEW = "new"  # absent, expired, or abandoned: the caller now holds it
    IN_PROGRESS = "in_progress"  # another caller holds it until ``locked_until``
    COMPLETED = "completed"  # done before; ``result`` is the stored result
    MISMATCH = "mismatch"  # done before with a different fingerprint

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class IdempotencyRecord:
    """What an idempotency store knows about one key."""

    key: str
    state: IdempotencyState
    fingerprint: str
    result: Any = None
    locked_until: datetime | None = None
    expires_at: datetime | None = None


_T = TypeVar("_T")


class StatusCounts(dict[DeliveryStatus, int]):
    """Counts keyed by :class:`DeliveryStatus` that may also be looked up by
    the status's value (``counts["needs_action"]``), for type checkers too."""

    @staticmethod
    def _key(key: object) -> DeliveryStatus | None:
        if isinstance(key, DeliveryStatus):
            return key
        try:
            return DeliveryStatus(key)
        except ValueError:
            return None

    def __getitem__(self, key: DeliveryStatus | str) -> int:
        status = self._key(key)
        if status is None:
            raise KeyError(key)
        return super().__getitem__(status)

    def __contains__(self, key: object) -> bool:
        status = self._key(key)
        return status is not None and super().__contains__(status)

    @overload  # type: ignore[override]
    def get(self, key: DeliveryStatus | str, /) -> int | None: ...
    @overload
    def get(self, key: DeliveryStatus | str, default: int | _T, /) -> int | _T: ...
    def get(self, key: DeliveryStatus | str, default: Any = None, /) -> Any:
        status = self._key(key)
        return default if status is None else super().get(status, default)


@attrs.frozen(kw_only=True)
class QueueStats:
    """Counts for dashboards and ``Operator.stats()``.

    ``by_destination[dest][status]`` counts deliveries;
    ``needs_action[dest][category]`` counts those waiting for a person;
    ``oldest_waiting`` is the ``created_at`` of the oldest delivery still
    ``PENDING`` or ``RETRY_SCHEDULED``.
    """

    by_destination: Mapping[str, Mapping[DeliveryStatus, int]]
    needs_action: Mapping[str, Mapping[ErrorCategory, int]]
    oldest_waiting: datetime | None = None
    destinations: Mapping[str, DestinationState] = attrs.field(factory=dict)

    @property
    def by_status(self) -> StatusCounts:
        """Counts by status over all destinations; look one up by
        :class:`DeliveryStatus` or by its value (``by_status["succeeded"]``)."""
        totals = StatusCounts()
        for counts in self.by_destination.values():
            for status, n in counts.items():
                totals[status] = totals.get(status, 0) + n
        return totals

    @property
    def total(self) -> int:
        """Number of deliveries."""
        return sum(self.by_status.values())

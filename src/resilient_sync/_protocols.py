"""The four seams of the library, gathered in one place.

``Source`` and ``Destination`` are what users write for their systems;
``QueueStore`` and ``IdempotencyStore`` are what a backend implements
(memory, SQLite and PostgreSQL ship with the library; the contract suites in
``resilient_sync.testing`` prove a third-party store). Every store method that
takes ``now`` must use it instead of reading a clock, so that ``FakeClock``
drives every store deterministically. All store methods may be called
concurrently from several threads (and, for durable stores, processes); each
is atomic on its own: it happens entirely or not at all.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from ._model import (
    Attempt,
    Completion,
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    DestinationState,
    ErrorCategory,
    Event,
    IdempotencyRecord,
    Page,
    QueueStats,
)

__all__ = ["Clock", "Destination", "IdempotencyStore", "QueueStore", "Source"]


@runtime_checkable
class Destination(Protocol):
    """A system that events are delivered to (a POS, a CRM, a mailing tool).

    ``deliver`` may be a plain function or ``async def`` (the latter needs the
    :class:`~resilient_sync.AsyncDispatcher`). It returns an optional
    JSON-serialisable result (e.g. the remote id) or raises: a
    :class:`~resilient_sync.SyncError` subclass says what went wrong, any other
    exception goes through the classifier. It must send
    ``context.idempotency_key`` to the remote system where the API allows, so
    the remote side can drop a repeat of an effect it already applied.

    Optional hooks, looked up by name:

    - ``find_existing(event, context) -> result | None``: called before
      ``deliver`` on every attempt (look before you create). Return the
      existing record's result (e.g. the POS customer found by e-mail) to
      link to it and succeed without creating anything, or ``None`` to go on
      and ``deliver``. For APIs that never report duplicates (an idempotency
      key only dedupes *one* event's retries, not two events of the same
      person). Audited as ``"find_existing"``; an exception it raises is
      classified like one from ``deliver``.
    - ``resolve_duplicate(event, error) -> result | None``: called on a
      ``DUPLICATE``; return the existing record's result (e.g. its remote id)
      to link to it and succeed, or ``None`` to leave it for a person.
    - ``fix_data(event, error) -> Event | None``: called on a ``DATA_FORMAT``
      error; return a corrected event (same id) to retry at once, or ``None``.
      The corrected event is sent under a revised idempotency key (the
      original key plus a hash of the new payload) and replaces the stored
      one; at most three corrections per claim.

    - ``secrets``: an attribute, the strings this destination must never let
      reach storage, logs or screens (its token, its API key): they are
      redacted from every result, error message and detail recorded for it
      (``HttpDestination`` declares its header, parameter and URL credentials).
    - ``use_clock(clock)``: called once by the dispatcher with its clock, for
      destinations that keep time (rate limits, ``Retry-After`` dates), so a
      ``FakeClock`` given to the dispatcher reaches them too.

    ``resolve_duplicate`` and ``fix_data`` receive the exception ``deliver``
    raised. With the :class:`~resilient_sync.Dispatcher` every hook must be
    a plain function; with the :class:`~resilient_sync.AsyncDispatcher` each
    may be either.
    """

    name: str

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        """Apply the event to the remote system; return an optional JSON result."""
        ...


@runtime_checkable
class Source(Protocol):
    """A pull-based reader of events with a cursor (a change feed, an outbox table).

    ``read(cursor, limit)`` returns up to ``limit`` events after ``cursor``
    (``None`` means from the start) and the cursor to pass next time. The
    dispatcher stores the cursor in the queue store in the same transaction as
    the events, so a restart resumes where it stopped; events already known
    by id are skipped, so reading the same range twice is harmless.
    """

    name: str

    def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
        """Return the next events and the new cursor."""
        ...


class Clock(Protocol):
    """The only place that reads wall time or sleeps (``SystemClock``, ``FakeClock``)."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` (a fake clock advances instead)."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Asynchronous ``sleep``."""
        ...


@runtime_checkable
class QueueStore(Protocol):
    """Durable queue of deliveries, their audit trail and source cursors.

    Claims are leases with a fencing token: ``claim`` stamps each claimed
    delivery with a new, strictly increasing ``lease_token``; ``complete``
    applies an outcome only if the delivery is still ``IN_FLIGHT`` under that
    token, so a worker whose lease expired (and whose delivery another worker
    claimed since) cannot complete or reschedule it.

    Every time a store is handed (an argument, or a field of a delivery, a
    completion or an audit record) is timezone-aware; a store refuses a
    naive ``datetime`` with ``ValueError`` naming it, before doing anything.
    """

    def enqueue(
        self,
        deliveries: Sequence[Delivery],
        *,
        cursor: tuple[str, str | None] | None = None,
        transaction: Any = None,
    ) -> builtins.list[Delivery]:
        """Insert new deliveries in one transaction, in the given order.

        A delivery whose ``(event.id, destination)`` is already stored is
        skipped. The store assigns ``seq`` (strictly increasing submission
        order). ``cursor=(source_name, value)`` is saved in the same
        transaction. Returns the deliveries actually inserted, with ``seq``.
        Deliveries may come in any status (an import); an ``IN_FLIGHT`` one
        without ``lease_expires_at``, which no claim would ever take back, is
        refused with ``ValueError`` and nothing of the call is enqueued.

        ``transaction`` is a store-specific handle on the caller's own open
        transaction (e.g. a psycopg connection): the rows are written in it
        and commit or roll back with it (the transactional outbox). A store
        that cannot join the given handle raises ``TypeError`` naming it.
        """
        ...

    def claim(
        self,
        *,
        now: datetime,
        limit: int,
        lease_until: datetime,
        worker: str,
        destinations: Collection[str] | None = None,
    ) -> builtins.list[Delivery]:
        """Lease up to ``limit`` due deliveries in one transaction.

        Due means ``PENDING`` or ``RETRY_SCHEDULED`` with ``next_attempt_at``
        None or ``<= now``, or ``IN_FLIGHT`` with an expired lease (``lease_expires_at <=
        now``; the store records a ``"lease_expired"`` audit record for it).
        Skipped: destinations not in ``destinations`` (when given), paused, or
        held (``hold_until > now``); and any delivery with an ordering key that
        is not the oldest (lowest ``seq``) non-final delivery of its
        ``(destination, ordering_key)``. Claimed deliveries become
        ``IN_FLIGHT`` with ``attempts + 1``, a new ``lease_token``,
        ``lease_owner=worker`` and ``lease_expires_at=lease_until``, and are
        returned oldest first. Two concurrent claims never return the same
        delivery.

        Oldest first also decides which due deliveries a claim takes: the
        lowest ``seq``, whenever each fell due (an older delivery whose retry
        time has just come goes before newer ones due all along), each judged
        by this claim's ``now``. The cost must not grow with what the claim
        cannot take (deliveries due later, leased, waiting behind their key,
        of paused or held destinations). The SQL stores bound the work of
        one claim among the deliveries that fell due at a time of their own
        (a retry's time, a lease's end): they consider the 1,000 that fell
        due first (per destination on PostgreSQL, per claim on SQLite), so
        when more than that fall due at once, an older one may wait for a
        later claim.
        """
        ...

    def complete(self, completions: Sequence[Completion]) -> builtins.list[bool]:
        """Apply outcomes in one transaction; fenced by ``lease_token``.

        For each completion whose delivery is ``IN_FLIGHT`` with that token:
        set status, ``next_attempt_at``, ``last_error`` (kept when
        ``error`` is None and status is not ``SUCCEEDED``), ``result``, the
        replacement ``event``/``idempotency_key``, clear the lease, undo the
        claim's attempt increment when ``count_attempt`` is False, and append
        the ``audit`` records. Returns, per completion, whether it applied;
        refused ones change nothing.
        """
        ...

    def get(self, delivery_id: str) -> Delivery | None:
        """The delivery, or None."""
        ...

    def list(
        self,
        *,
        status: Collection[DeliveryStatus] | None = None,
        destination: str | None = None,
        category: ErrorCategory | None = None,
        since: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        until: datetime | None = None,
        event_type: str | None = None,
        search: str | None = None,
    ) -> Page:
        """Deliveries in submission order, filtered and paged.

        ``category`` filters on ``last_error``; ``since`` (inclusive) and
        ``until`` (exclusive) on ``updated_at``; ``event_type`` on the
        event's type; ``search`` is a text found in the event id or in the
        event's JSON, ignoring case (``"é"`` finds ``"Émilie"``; an ASCII
        text is compared with ASCII case folding, so the Kelvin sign and a
        dotted capital I match only on stores that fold them, PostgreSQL
        and memory). A ``search``, id or name holding a NUL or a lone
        surrogate finds nothing. ``cursor`` is an
        opaque string from a previous page's ``next_cursor`` (keyset paging:
        a page costs the same however deep it is).
        """
        ...

    def attempts(self, delivery_id: str) -> builtins.list[Attempt]:
        """The audit records of one delivery, oldest first."""
        ...

    def audit(
        self, *, since: datetime | None = None, errors_only: bool = False, limit: int | None = None
    ) -> builtins.list[Attempt]:
        """Audit records of every delivery and destination, newest first."""
        ...

    def transition(
        self,
        ids: Sequence[str],
        *,
        from_status: Collection[DeliveryStatus],
        to_status: DeliveryStatus,
        audit: Attempt,
        now: datetime,
        reset_attempts: bool = False,
        event: Event | None = None,
        idempotency_key: str | None = None,
        if_unchanged: Delivery | None = None,
    ) -> builtins.list[str]:
        """Operator action, in one transaction.

        Each delivery in ``ids`` whose status is in ``from_status`` moves to
        ``to_status`` with ``next_attempt_at`` None (for ``PENDING``: due at
        once, whatever the claimer's clock, which may differ from the
        operator's), with ``attempts`` reset to 0 when asked, ``event`` and
        ``idempotency_key`` replaced when given, and a copy of ``audit`` whose
        ``delivery_id``, ``destination`` and ``outcome`` are filled in. With
        ``if_unchanged`` (the delivery as the caller read it), a delivery
        moves only if its ``status``, ``attempts``, ``lease_token`` and
        ``updated_at`` are still those: a check made on what was read (an
        edit's safety rule) still holds when the write happens. Returns the
        ids that moved, in the given order.
        """
        ...

    def set_destination(
        self,
        name: str,
        *,
        now: datetime,
        paused: bool | None = None,
        paused_reason: str | None = None,
        hold_until: datetime | None = None,
        hold_reason: str | None = None,
        audit: Attempt | None = None,
    ) -> DestinationState:
        """Pause/resume a destination (``paused``) or hold it back until a time.

        ``paused=None`` leaves the pause as is; a ``hold_until`` only ever
        extends the current hold. The audit record (if any) is written in the
        same transaction. Returns the new state.
        """
        ...

    def add_audit(self, records: Sequence[Attempt]) -> None:
        """Append audit records that change no delivery (an operator's purge),
        in one transaction, as they are (``delivery_id`` None for records
        about no single delivery)."""
        ...

    def destinations(self) -> dict[str, DestinationState]:
        """The state of every destination that was ever paused or held."""
        ...

    def get_cursor(self, source: str) -> str | None:
        """The saved cursor of a source, or None."""
        ...

    def stats(self) -> QueueStats:
        """Counts by destination, status and category."""
        ...

    def error_counts(
        self, *, since: datetime, until: datetime, bucket: timedelta
    ) -> builtins.list[tuple[int, ErrorCategory, int]]:
        """Failed attempts (audit records with an error) whose ``finished_at``
        is in ``[since, until)``, counted per ``(bucket index, category)``;
        the bucket index is ``(finished_at - since) // bucket``. Counted by
        the store (SQL ``GROUP BY``), never by loading the records. Sorted by
        bucket index, then category."""
        ...

    def purge(self, *, before: datetime, limit: int = 1000, dry_run: bool = False) -> int:
        """Retention, one batch: delete up to ``limit`` finished deliveries
        (``SUCCEEDED``, ``RESOLVED``, ``DISCARDED``) last changed before
        ``before``, with their audit records, and up to ``limit`` records of
        destination actions older than ``before``, in one short transaction
        (call it in a loop until it returns less than ``limit``). Returns the
        number of deliveries deleted; with ``dry_run``, changes nothing and
        returns how many deliveries would go in all."""
        ...

    def next_due(self) -> datetime | None:
        """The earliest time a non-final delivery may become claimable
        (``next_attempt_at``, ``lease_expires_at``), or None if none is waiting.
        A paused destination's deliveries give no time (time alone does not
        release them); a held destination's count from the end of the hold.

        An idle worker asks it after every empty claim, to sleep until then
        (at most ``poll_interval``; a time already past is not waited for),
        so it must not cost more as the queue grows: keep the deliveries
        that wait for a time in an index or heap by that time, as the
        stores here do. A store that can only look at part of its queue
        makes a delivery further back that falls due sooner wait for the
        worker's next poll."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...

    # Optional, looked up with getattr by the dispatcher:
    #   wait_for_work(timeout: float) -> None
    # blocks up to ``timeout`` seconds but returns as soon as new or newly due
    # work may exist (PostgreSQL: LISTEN/NOTIFY, SQLite: a wake-up beside the
    # file). Without it, an idle ``run_forever`` sleeps until the next due
    # time or ``poll_interval``.
    #   extend_leases(leases: Sequence[tuple[str, int]], *, until: datetime) -> list[bool]
    # moves the lease end of each ``(delivery id, lease token)`` still IN_FLIGHT
    # under that token to ``until`` (never earlier), in one transaction; the
    # dispatcher's heartbeat calls it while a long delivery runs. Without it,
    # choose a lease longer than a batch takes.
    #   database_time() -> datetime
    # the database server's clock, when there is one: workers then judge
    # leases by it (``DatabaseClock``) instead of their own clocks.


@runtime_checkable
class IdempotencyStore(Protocol):
    """Remembers which idempotency keys were completed, and with what result.

    The dispatcher calls ``begin`` before delivering, ``finish`` after a
    success (before completing the delivery in the queue store), and
    ``release`` after a failure. All three take batches and are atomic per
    call. Times are timezone-aware; a naive one is refused with
    ``ValueError`` before anything changes.
    """

    def begin(
        self, entries: Sequence[tuple[str, str]], *, now: datetime, lock_until: datetime
    ) -> builtins.list[IdempotencyRecord]:
        """For each ``(key, fingerprint)``, atomically:

        - absent, completed but expired (``expires_at <= now``), or in progress
          with an expired lock: take it (in progress until ``lock_until``),
          state ``NEW``;
        - in progress with a live lock: ``IN_PROGRESS`` (nothing changes);
        - completed, same fingerprint: ``COMPLETED`` with the stored result;
        - completed, different fingerprint: ``MISMATCH``.
        """
        ...

    def finish(
        self, entries: Sequence[tuple[str, str, Any]], *, now: datetime, expires_at: datetime
    ) -> None:
        """Mark each ``(key, fingerprint, result)`` completed until ``expires_at``."""
        ...

    def release(self, keys: Sequence[str], *, locked_until: datetime | None = None) -> None:
        """Forget in-progress keys (the attempt failed); completed keys stay.

        With ``locked_until``, only locks taken with that ``lock_until`` are
        dropped: a worker that stalled past its lease releases its own locks,
        never those of the worker that took over.
        """
        ...

    def get(self, key: str, *, now: datetime) -> IdempotencyRecord | None:
        """The record of a key (``NEW`` never appears), or None if absent or expired."""
        ...

    def purge(self, *, now: datetime, limit: int = 1000) -> int:
        """Retention, one batch: forget up to ``limit`` completed keys that
        expired (``expires_at <= now``) and locks whose holder is gone.
        Returns how many completed keys were deleted."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...

    # Optional (the dispatcher uses it when present):
    #   extend_locks(keys: Sequence[str], *, locked_until: datetime, until: datetime) -> list[bool]
    # moves the lock of each key still IN_PROGRESS under ``locked_until`` (the
    # holder's fence) to ``until``; the lease heartbeat calls it with the
    # leases, so a delivery slower than its lease keeps its key as well as its
    # delivery. Without it, a key's lock ends with the original lease.

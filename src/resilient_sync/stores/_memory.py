"""In-memory stores: thread-safe, for tests and for events that may be lost.

They pass the same contract suites as the SQL stores. Nothing survives the
process: use ``SQLiteQueueStore`` for a durable queue.
"""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
from typing_extensions import Self

from .._core import handed_copy
from .._model import (
    Attempt,
    Completion,
    Delivery,
    DeliveryStatus,
    DestinationState,
    ErrorCategory,
    IdempotencyRecord,
    IdempotencyState,
    Page,
    QueueStats,
)
from ._common import (
    check_deliveries,
    check_page_args,
    decode_cursor,
    encode_cursor,
    fill_audit,
    matches_search,
)

__all__ = ["MemoryIdempotencyStore", "MemoryQueueStore"]


class MemoryQueueStore:
    """A :class:`~resilient_sync.QueueStore` in a dict, guarded by a lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._deliveries: dict[str, Delivery] = {}
        self._by_event: dict[tuple[str, str], str] = {}
        self._open: dict[str, None] = {}  # ids of non-final deliveries, in seq order
        self._audit: builtins.list[Attempt] = []
        self._audit_of: dict[str, builtins.list[Attempt]] = {}
        self._cursors: dict[str, str | None] = {}
        self._destinations: dict[str, DestinationState] = {}
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._audit_ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"MemoryQueueStore({len(self._deliveries)} deliveries)"

    # -- writing ---------------------------------------------------------

    def _append_audit(self, record: Attempt) -> None:
        stored = attrs.evolve(record, id=next(self._audit_ids))
        self._audit.append(stored)
        if stored.delivery_id is not None:
            self._audit_of.setdefault(stored.delivery_id, []).append(stored)

    def enqueue(
        self,
        deliveries: Sequence[Delivery],
        *,
        cursor: tuple[str, str | None] | None = None,
        transaction: Any = None,
    ) -> builtins.list[Delivery]:
        if transaction is not None:
            raise TypeError(
                f"MemoryQueueStore cannot join a transaction (got {type(transaction).__name__}); "
                "use PostgresQueueStore for the transactional outbox"
            )
        check_deliveries(deliveries, payloads=True)
        with self._lock:
            inserted: builtins.list[Delivery] = []
            for delivery in deliveries:
                ident = (delivery.event.id, delivery.destination)
                if ident in self._by_event or delivery.id in self._deliveries:
                    continue
                stored = attrs.evolve(delivery, seq=next(self._seq))
                self._deliveries[stored.id] = stored
                self._by_event[ident] = stored.id
                if not stored.status.is_final:
                    self._open[stored.id] = None
                inserted.append(stored)
            if cursor is not None:
                self._cursors[cursor[0]] = cursor[1]
            return inserted

    def _blocked(self, name: str, now: datetime) -> bool:
        state = self._destinations.get(name)
        return state is not None and (
            state.paused or (state.hold_until is not None and state.hold_until > now)
        )

    def claim(
        self,
        *,
        now: datetime,
        limit: int,
        lease_until: datetime,
        worker: str,
        destinations: Collection[str] | None = None,
    ) -> builtins.list[Delivery]:
        with self._lock:
            wanted = set(destinations) if destinations is not None else None
            heads: set[tuple[str, str]] = set()
            # a key with a delivery in flight (even an expired one) hands out
            # nothing else: the in-flight one is reclaimed first
            in_flight = {
                (d.destination, d.ordering_key)
                for d in (self._deliveries[i] for i in self._open)
                if d.status is DeliveryStatus.IN_FLIGHT and d.ordering_key is not None
            }
            claimed: builtins.list[Delivery] = []
            for delivery_id in list(self._open):
                if len(claimed) >= limit:
                    break
                d = self._deliveries[delivery_id]
                if d.ordering_key is not None:
                    ident = (d.destination, d.ordering_key)
                    behind = ident in heads  # an older delivery of this key is not final
                    heads.add(ident)
                    if d.status is not DeliveryStatus.IN_FLIGHT and (behind or ident in in_flight):
                        continue
                if wanted is not None and d.destination not in wanted:
                    continue
                if self._blocked(d.destination, now):
                    continue
                expired = d.status is DeliveryStatus.IN_FLIGHT and (
                    d.lease_expires_at is not None and d.lease_expires_at <= now
                )
                due = d.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED) and (
                    d.next_attempt_at is None or d.next_attempt_at <= now
                )
                if not (due or expired):
                    continue
                if expired:
                    self._append_audit(
                        Attempt(
                            delivery_id=d.id,
                            destination=d.destination,
                            action="lease_expired",
                            actor=f"worker:{worker}",
                            started_at=now,
                            finished_at=now,
                            number=d.attempts,
                            outcome=DeliveryStatus.IN_FLIGHT,
                            reason=(
                                f"the lease of {d.lease_owner} expired at "
                                f"{d.lease_expires_at}; attempt {d.attempts} had no recorded "
                                "outcome (worker crashed or stalled)"
                            ),
                        )
                    )
                new = attrs.evolve(
                    d,
                    status=DeliveryStatus.IN_FLIGHT,
                    attempts=d.attempts + 1,
                    lease_token=next(self._tokens),
                    lease_owner=worker,
                    lease_expires_at=lease_until,
                    updated_at=now,
                )
                self._deliveries[d.id] = new
                # hand out a copy, as a durable store hands out fresh rows: a
                # destination changing the payload in place cannot change the queue
                claimed.append(attrs.evolve(new, event=handed_copy(new.event)))
            return claimed

    def complete(self, completions: Sequence[Completion]) -> builtins.list[bool]:
        with self._lock:
            applied: builtins.list[bool] = []
            for c in completions:
                d = self._deliveries.get(c.delivery_id)
                if (
                    d is None
                    or d.status is not DeliveryStatus.IN_FLIGHT
                    or d.lease_token != c.lease_token
                ):
                    applied.append(False)
                    continue
                error = c.error
                if error is None and c.status is not DeliveryStatus.SUCCEEDED:
                    error = d.last_error
                new = attrs.evolve(
                    d,
                    status=c.status,
                    next_attempt_at=c.next_attempt_at,
                    last_error=error,
                    result=c.result if c.status is DeliveryStatus.SUCCEEDED else d.result,
                    event=c.event or d.event,
                    idempotency_key=c.idempotency_key or d.idempotency_key,
                    attempts=d.attempts if c.count_attempt else d.attempts - 1,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=c.finished_at,
                )
                self._deliveries[d.id] = new
                if new.status.is_final:
                    self._open.pop(d.id, None)
                for record in c.audit:
                    self._append_audit(record)
                applied.append(True)
            return applied

    def transition(
        self,
        ids: Sequence[str],
        *,
        from_status: Collection[DeliveryStatus],
        to_status: DeliveryStatus,
        audit: Attempt,
        now: datetime,
        reset_attempts: bool = False,
        event: Any = None,
        idempotency_key: str | None = None,
        if_unchanged: Delivery | None = None,
    ) -> builtins.list[str]:
        with self._lock:
            moved: builtins.list[str] = []
            for delivery_id in dict.fromkeys(ids):
                d = self._deliveries.get(delivery_id)
                if d is None or d.status not in from_status:
                    continue
                if if_unchanged is not None and (
                    d.status is not if_unchanged.status
                    or d.attempts != if_unchanged.attempts
                    or d.lease_token != if_unchanged.lease_token
                    or d.updated_at != if_unchanged.updated_at
                ):
                    continue
                new = attrs.evolve(
                    d,
                    status=to_status,
                    next_attempt_at=None,
                    attempts=0 if reset_attempts else d.attempts,
                    event=event or d.event,
                    idempotency_key=idempotency_key or d.idempotency_key,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
                self._deliveries[d.id] = new
                if new.status.is_final:
                    self._open.pop(d.id, None)
                elif d.id not in self._open:
                    self._open[d.id] = None
                    self._open = dict.fromkeys(
                        sorted(self._open, key=lambda i: self._deliveries[i].seq)
                    )
                self._append_audit(fill_audit(audit, new))
                moved.append(d.id)
            return moved

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
        with self._lock:
            state = self._destinations.get(name) or DestinationState(name=name)
            if paused is not None:
                state = attrs.evolve(
                    state, paused=paused, paused_reason=paused_reason if paused else None
                )
            if hold_until is not None and (
                state.hold_until is None or hold_until > state.hold_until
            ):
                state = attrs.evolve(state, hold_until=hold_until, hold_reason=hold_reason)
            state = attrs.evolve(state, updated_at=now)
            self._destinations[name] = state
            if audit is not None:
                self._append_audit(audit)
            return state

    def extend_leases(
        self, leases: Sequence[tuple[str, int]], *, until: datetime
    ) -> builtins.list[bool]:
        with self._lock:
            out: builtins.list[bool] = []
            for delivery_id, token in leases:
                d = self._deliveries.get(delivery_id)
                ok = (
                    d is not None
                    and d.status is DeliveryStatus.IN_FLIGHT
                    and d.lease_token == token
                )
                if (
                    ok
                    and d is not None
                    and (d.lease_expires_at is None or d.lease_expires_at < until)
                ):
                    self._deliveries[delivery_id] = attrs.evolve(d, lease_expires_at=until)
                out.append(ok)
            return out

    def add_audit(self, records: Sequence[Attempt]) -> None:
        with self._lock:
            for record in records:
                self._append_audit(record)

    # -- reading ---------------------------------------------------------

    def destinations(self) -> dict[str, DestinationState]:
        with self._lock:
            return dict(self._destinations)

    def get(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            return self._deliveries.get(delivery_id)

    def ids_with_prefix(self, prefix: str, *, limit: int = 10) -> builtins.list[str]:
        """The ids that start with ``prefix``, sorted, at most ``limit``."""
        if not prefix:
            return []
        with self._lock:
            found = [i for i in self._deliveries if i.startswith(prefix)]
        return sorted(found)[:limit]

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
        check_page_args(limit)
        after = decode_cursor(cursor)
        statuses = set(status) if status is not None else None
        with self._lock:
            matches: builtins.list[Delivery] = []
            for d in sorted(self._deliveries.values(), key=lambda x: x.seq):
                if d.seq <= after:
                    continue
                if statuses is not None and d.status not in statuses:
                    continue
                if destination is not None and d.destination != destination:
                    continue
                if category is not None and (
                    d.last_error is None or d.last_error.category != category
                ):
                    continue
                if since is not None and d.updated_at < since:
                    continue
                if until is not None and d.updated_at >= until:
                    continue
                if event_type is not None and d.event.type != event_type:
                    continue
                if search and not matches_search(d, search):
                    continue
                matches.append(d)
                if len(matches) > limit:
                    break
        if len(matches) > limit:
            return Page(items=matches[:limit], next_cursor=encode_cursor(matches[limit - 1].seq))
        return Page(items=matches, next_cursor=None)

    def attempts(self, delivery_id: str) -> builtins.list[Attempt]:
        with self._lock:
            return list(self._audit_of.get(delivery_id, ()))

    def audit(
        self, *, since: datetime | None = None, errors_only: bool = False, limit: int | None = None
    ) -> builtins.list[Attempt]:
        with self._lock:
            out: builtins.list[Attempt] = []
            for record in reversed(self._audit):
                if since is not None and record.finished_at < since:
                    continue
                if errors_only and record.error is None:
                    continue
                out.append(record)
                if limit is not None and len(out) >= limit:
                    break
            return out

    def get_cursor(self, source: str) -> str | None:
        with self._lock:
            return self._cursors.get(source)

    def stats(self) -> QueueStats:
        with self._lock:
            by_destination: dict[str, dict[DeliveryStatus, int]] = {}
            needs_action: dict[str, dict[ErrorCategory, int]] = {}
            oldest: datetime | None = None
            for d in self._deliveries.values():
                counts = by_destination.setdefault(d.destination, {})
                counts[d.status] = counts.get(d.status, 0) + 1
                if d.status is DeliveryStatus.NEEDS_ACTION and d.last_error is not None:
                    cats = needs_action.setdefault(d.destination, {})
                    cats[d.last_error.category] = cats.get(d.last_error.category, 0) + 1
                if d.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED) and (
                    oldest is None or d.created_at < oldest
                ):
                    oldest = d.created_at
            return QueueStats(
                by_destination=by_destination,
                needs_action=needs_action,
                oldest_waiting=oldest,
                destinations=dict(self._destinations),
            )

    def error_counts(
        self, *, since: datetime, until: datetime, bucket: timedelta
    ) -> builtins.list[tuple[int, ErrorCategory, int]]:
        if bucket <= timedelta(0):
            raise ValueError(f"bucket must be > 0, got {bucket!r}")
        counts: dict[tuple[int, ErrorCategory], int] = {}
        with self._lock:
            for record in self._audit:
                if record.error is None or not since <= record.finished_at < until:
                    continue
                key = ((record.finished_at - since) // bucket, record.error.category)
                counts[key] = counts.get(key, 0) + 1
        return [(index, category, n) for (index, category), n in sorted(counts.items())]

    def purge(self, *, before: datetime, limit: int = 1000, dry_run: bool = False) -> int:
        check_page_args(limit)
        with self._lock:
            old = [
                d.id
                for d in self._deliveries.values()
                if d.status.is_final and d.updated_at < before
            ]
            if dry_run:
                return len(old)
            gone = set(old[:limit])
            for delivery_id in gone:
                d = self._deliveries.pop(delivery_id)
                self._by_event.pop((d.event.id, d.destination), None)
                self._audit_of.pop(delivery_id, None)
            self._audit = [
                a
                for a in self._audit
                if a.delivery_id not in gone
                and not (a.delivery_id is None and a.finished_at < before)
            ]
            return len(gone)

    def next_due(self) -> datetime | None:
        with self._lock:
            times = []
            for delivery_id in self._open:
                d = self._deliveries[delivery_id]
                if d.status is DeliveryStatus.IN_FLIGHT:
                    if d.lease_expires_at is not None:
                        times.append(d.lease_expires_at)
                elif d.status is not DeliveryStatus.NEEDS_ACTION and d.next_attempt_at is not None:
                    times.append(d.next_attempt_at)
            return min(times) if times else None

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemoryIdempotencyStore:
    """An :class:`~resilient_sync.IdempotencyStore` in a dict, guarded by a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, IdempotencyRecord] = {}

    def __repr__(self) -> str:
        return f"MemoryIdempotencyStore({len(self._records)} keys)"

    def begin(
        self, entries: Sequence[tuple[str, str]], *, now: datetime, lock_until: datetime
    ) -> builtins.list[IdempotencyRecord]:
        with self._lock:
            out: builtins.list[IdempotencyRecord] = []
            for key, fp in entries:
                rec = self._records.get(key)
                live = rec is not None and (
                    (
                        rec.state is IdempotencyState.COMPLETED
                        and (rec.expires_at is None or rec.expires_at > now)
                    )
                    or (
                        rec.state is IdempotencyState.IN_PROGRESS
                        and rec.locked_until is not None
                        and rec.locked_until > now
                    )
                )
                if rec is None or not live:
                    self._records[key] = IdempotencyRecord(
                        key=key,
                        state=IdempotencyState.IN_PROGRESS,
                        fingerprint=fp,
                        locked_until=lock_until,
                    )
                    out.append(
                        IdempotencyRecord(
                            key=key,
                            state=IdempotencyState.NEW,
                            fingerprint=fp,
                            locked_until=lock_until,
                        )
                    )
                elif rec.state is IdempotencyState.IN_PROGRESS:
                    out.append(rec)
                elif rec.fingerprint != fp:
                    out.append(attrs.evolve(rec, state=IdempotencyState.MISMATCH))
                else:
                    out.append(rec)
            return out

    def finish(
        self, entries: Sequence[tuple[str, str, Any]], *, now: datetime, expires_at: datetime
    ) -> None:
        with self._lock:
            for key, fp, result in entries:
                self._records[key] = IdempotencyRecord(
                    key=key,
                    state=IdempotencyState.COMPLETED,
                    fingerprint=fp,
                    result=result,
                    expires_at=expires_at,
                )

    def release(self, keys: Sequence[str], *, locked_until: datetime | None = None) -> None:
        with self._lock:
            for key in keys:
                rec = self._records.get(key)
                if (
                    rec is not None
                    and rec.state is IdempotencyState.IN_PROGRESS
                    and (locked_until is None or rec.locked_until == locked_until)
                ):
                    del self._records[key]

    def purge(self, *, now: datetime, limit: int = 1000) -> int:
        check_page_args(limit)
        with self._lock:
            expired = [
                key
                for key, rec in self._records.items()
                if rec.state is IdempotencyState.COMPLETED
                and rec.expires_at is not None
                and rec.expires_at <= now
            ][:limit]
            abandoned = [
                key
                for key, rec in self._records.items()
                if rec.state is IdempotencyState.IN_PROGRESS
                and rec.locked_until is not None
                and rec.locked_until <= now
            ]
            for key in expired + abandoned:
                del self._records[key]
            return len(expired)

    def get(self, key: str, *, now: datetime) -> IdempotencyRecord | None:
        with self._lock:
            rec = self._records.get(key)
        if rec is None:
            return None
        if (
            rec.state is IdempotencyState.COMPLETED
            and rec.expires_at is not None
            and rec.expires_at <= now
        ):
            return None
        if (
            rec.state is IdempotencyState.IN_PROGRESS
            and rec.locked_until is not None
            and rec.locked_until <= now
        ):
            return None
        return rec

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

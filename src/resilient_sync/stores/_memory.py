"""In-memory stores: thread-safe, for tests and for events that may be lost.

They pass the same contract suites as the SQL stores. Nothing survives the
process: use ``SQLiteQueueStore`` for a durable queue.
"""

from __future__ import annotations

import bisect
import builtins
import enum
import heapq
import itertools
import json
import threading
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
from typing_extensions import Self

from .._json import event_from_json
from .._model import (
    Attempt,
    Completion,
    Delivery,
    DeliveryStatus,
    DestinationState,
    ErrorCategory,
    ErrorInfo,
    Event,
    IdempotencyRecord,
    IdempotencyState,
    Page,
    QueueStats,
)
from ._common import (
    check_attempt,
    check_claim_args,
    check_completions,
    check_cursor,
    check_deliveries,
    check_destination_args,
    check_int,
    check_list_args,
    check_new_events,
    check_page_args,
    check_pairs,
    check_results,
    check_text,
    check_texts,
    check_time,
    check_transition_args,
    checked_event_json,
    decode_cursor,
    encode_cursor,
    fill_audit,
    outcome_value,
    wrong_type,
)

__all__ = ["MemoryIdempotencyStore", "MemoryQueueStore"]


class _Same(enum.Enum):
    """``_move``'s marker for "the last error stays as it is"."""

    ERROR = 0


_SAME = _Same.ERROR


_MIN_TIME = datetime.min.replace(tzinfo=timezone.utc)
_OPEN = frozenset(
    {
        DeliveryStatus.PENDING,
        DeliveryStatus.IN_FLIGHT,
        DeliveryStatus.RETRY_SCHEDULED,
        DeliveryStatus.NEEDS_ACTION,
    }
)
_WAITING = (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED)
#: the rows that may have an entry in the time heap (see _schedule)
_SCHEDULED = (*_WAITING, DeliveryStatus.IN_FLIGHT)
#: a scheduling heap is never compacted below this length (see _compact)
_COMPACT_FLOOR = 1024
#: an audit record as the queue keeps it: a tuple of plain values (its id,
#: then _audit_values), read back into an ``Attempt`` by _attempt. Writes are hot
#: and reads rare; and a tuple of strings, numbers and times is one object the
#: garbage collector stops tracking, where an ``Attempt`` in a list was two it
#: walked at every full collection: with 100,000 finished deliveries kept,
#: those collections cost more than the rest of a delivery's bookkeeping.
_Audit = tuple[Any, ...]
_STATUSES = {status._value_: status for status in DeliveryStatus}
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_DECODE = json.JSONDecoder().decode


class _Key:
    """The open deliveries of one (destination, ordering key) and how many
    of them are in flight. The oldest is found through a heap of their
    ``seq`` (an entry of a delivery that left is dropped when it comes up),
    so neither adding, removing nor finding the oldest costs more when many
    deliveries wait behind one key."""

    __slots__ = ("heap", "in_flight", "members")

    def __init__(self) -> None:
        self.members: dict[int, _Row] = {}
        self.heap: list[int] = []
        self.in_flight = 0

    def add(self, row: _Row) -> None:
        if row.seq in self.members:
            return
        self.members[row.seq] = row
        heapq.heappush(self.heap, row.seq)
        if row.status is DeliveryStatus.IN_FLIGHT:
            self.in_flight += 1

    def remove(self, row: _Row) -> bool:
        if self.members.get(row.seq) is not row:
            return False
        del self.members[row.seq]
        if row.status is DeliveryStatus.IN_FLIGHT:
            self.in_flight -= 1
        if len(self.heap) > 2 * len(self.members) + 16:  # mostly entries of rows gone
            self.heap = sorted(self.members)
        return True

    def head(self) -> _Row | None:
        """The oldest open delivery of the key."""
        heap, members = self.heap, self.members
        while heap and heap[0] not in members:
            heapq.heappop(heap)
        return members[heap[0]] if heap else None


class _Row:
    """One delivery as the memory store keeps it (mutable, internal).

    The event and the result are kept as JSON text, as a durable store keeps
    them: every read hands out fresh objects, so nobody can change the queue
    by changing what they were given. ``version`` changes with every change
    of the row, to a number no row of the store had before (a store-wide
    counter: a row purged and enqueued again under the same id never matches
    the heap entries of the row that went); entries of the scheduling heaps
    that carry another version are stale and skipped.
    """

    __slots__ = (
        "attempts",
        "created_at",
        "destination",
        "event_id",
        "event_json",
        "event_type",
        "id",
        "idempotency_key",
        "last_error",
        "lease_expires_at",
        "lease_owner",
        "lease_token",
        "next_attempt_at",
        "ordering_key",
        "result_json",
        "seq",
        "status",
        "updated_at",
        "version",
    )

    def __init__(self, d: Delivery, seq: int, event_json: str, result_json: str | None) -> None:
        event = d.event
        self.id = d.id
        self.seq = seq
        self.event_json = event_json
        self.event_id = event.id
        self.event_type = event.type
        self.ordering_key = event.ordering_key
        self.destination = d.destination
        self.status = d.status
        self.idempotency_key = d.idempotency_key
        self.attempts = d.attempts
        self.next_attempt_at = d.next_attempt_at
        self.last_error = d.last_error
        self.result_json = result_json
        self.created_at = d.created_at
        self.updated_at = d.updated_at
        self.lease_token = d.lease_token
        self.lease_owner = d.lease_owner
        self.lease_expires_at = d.lease_expires_at
        self.version = 0

    def view(self, event: Event | None = None) -> Delivery:
        return Delivery(
            id=self.id,
            event=event if event is not None else event_from_json(self.event_json),
            destination=self.destination,
            status=self.status,
            idempotency_key=self.idempotency_key,
            attempts=self.attempts,
            next_attempt_at=self.next_attempt_at,
            last_error=self.last_error,
            result=None if self.result_json is None else _DECODE(self.result_json),
            created_at=self.created_at,
            updated_at=self.updated_at,
            seq=self.seq,
            lease_token=self.lease_token,
            lease_owner=self.lease_owner,
            lease_expires_at=self.lease_expires_at,
        )

    def set_event(self, event: Event, event_json: str) -> None:
        self.event_json = event_json
        self.event_type = event.type
        self.ordering_key = event.ordering_key


class MemoryQueueStore:
    """A :class:`~resilient_sync.QueueStore` in memory, guarded by a lock.

    Flat costs: a claim looks only at deliveries that are due (a heap by due
    time feeds one heap per destination, by submission order), a delivery
    with an ordering key is scheduled only while it heads its key, and the
    counts of ``stats()`` are kept as deliveries move; none of it grows with
    the number of finished deliveries.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        #: wakes run_forever's idle wait (wait_for_work) when work may have arrived
        self._work = threading.Condition(self._lock)
        self._changes = 0
        self._rows: dict[str, _Row] = {}
        self._by_event: dict[tuple[str, str], str] = {}
        #: ids in submission order (purged ones are skipped, then compacted)
        self._order: builtins.list[str] = []
        self._order_seqs: builtins.list[int] = []
        self._purged = 0
        #: (due time, seq, id, version) of schedulable deliveries
        self._timed: builtins.list[tuple[datetime, int, str, int]] = []
        #: per destination: (seq, id, version, due) of deliveries already due
        self._ready: dict[str, builtins.list[tuple[int, str, int, datetime]]] = {}
        #: per (destination, ordering key): its open deliveries in submission order
        self._keys: dict[tuple[str, str], _Key] = {}
        #: (seq, id, version) of waiting deliveries, for the oldest waiting one
        self._waiting: builtins.list[tuple[int, str, int]] = []
        #: the lengths at which _timed and _waiting are next compacted (_compact)
        self._timed_limit = self._waiting_limit = _COMPACT_FLOOR
        self._counts: dict[str, dict[DeliveryStatus, int]] = {}
        self._needs: dict[str, dict[ErrorCategory, int]] = {}
        self._audit: builtins.list[_Audit] = []
        self._audit_of: dict[str, tuple[_Audit, ...] | builtins.list[_Audit]] = {}
        self._cursors: dict[str, str | None] = {}
        self._destinations: dict[str, DestinationState] = {}
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._audit_ids = itertools.count(1)
        #: row versions, store-wide (see _Row)
        self._versions = itertools.count(1)

    def __repr__(self) -> str:
        return f"MemoryQueueStore({len(self._rows)} deliveries)"

    # -- bookkeeping -------------------------------------------------------

    def _append_audit(self, values: tuple[Any, ...]) -> None:
        """Keep an audit record (its values from _audit_values, made before
        anything changed), with the next id."""
        stored = (next(self._audit_ids), *values)
        self._audit.append(stored)
        delivery_id = stored[_DELIVERY_ID]
        if delivery_id is not None:
            # a delivery's few records in a tuple too (see _Audit); a list once
            # it has many (an operator's retries), so that adding stays cheap
            of = self._audit_of.get(delivery_id, ())
            if type(of) is builtins.list:
                of.append(stored)
            elif len(of) < 8:
                self._audit_of[delivery_id] = (*of, stored)
            else:
                self._audit_of[delivery_id] = [*of, stored]

    def _count(self, row: _Row, sign: int) -> None:
        counts = self._counts.setdefault(row.destination, {})
        counts[row.status] = counts.get(row.status, 0) + sign
        if row.status is DeliveryStatus.NEEDS_ACTION and row.last_error is not None:
            self._count_needs(row.destination, row.last_error.category, sign)

    def _count_needs(self, destination: str, category: ErrorCategory, sign: int) -> None:
        """The count of NEEDS_ACTION deliveries by error category."""
        cats = self._needs.setdefault(destination, {})
        cats[category] = cats.get(category, 0) + sign

    def _eligible(self, row: _Row) -> bool:
        """Whether ``row`` may be claimed once due (ordering keys aside from time)."""
        status = row.status
        if status is DeliveryStatus.IN_FLIGHT:
            return True  # reclaimed when its lease expires
        if status is not DeliveryStatus.PENDING and status is not DeliveryStatus.RETRY_SCHEDULED:
            return False
        if row.ordering_key is None:
            return True
        key = self._keys.get((row.destination, row.ordering_key))
        # the oldest open delivery of its key, and none of the key in flight
        return key is not None and key.head() is row and key.in_flight == 0

    def _schedule(self, row: _Row) -> None:
        """Invalidate what is scheduled for ``row`` and schedule it anew if it can
        be claimed: at its due time (lease end while in flight)."""
        row.version = version = next(self._versions)
        status = row.status
        if status in _WAITING:
            heapq.heappush(self._waiting, (row.seq, row.id, version))
            if len(self._waiting) > self._waiting_limit:
                self._waiting_limit = self._compact(self._waiting, _WAITING, by_status=True)
        # _eligible, without a call for a row that has no ordering key
        if status is DeliveryStatus.IN_FLIGHT:
            due = row.lease_expires_at or _MIN_TIME
        elif (status is DeliveryStatus.PENDING or status is DeliveryStatus.RETRY_SCHEDULED) and (
            row.ordering_key is None or self._eligible(row)
        ):
            due = row.next_attempt_at or _MIN_TIME
        else:
            return
        heapq.heappush(self._timed, (due, row.seq, row.id, version))
        if len(self._timed) > self._timed_limit:
            self._timed_limit = self._compact(self._timed, _SCHEDULED)

    def _compact(
        self,
        heap: builtins.list[Any],
        statuses: tuple[DeliveryStatus, ...],
        *,
        by_status: bool = False,
    ) -> int:
        """Drop the stale entries of a scheduling heap, in place (callers may
        hold it), once at least half of them are; returns the length at which
        to look again.

        An entry goes stale when its row changes (another version), finishes
        or is purged, and is otherwise dropped only when it comes up: each
        claim leaves the entry of its lease's end, due minutes later, and each
        enqueue an entry in ``_waiting``, which only ``stats()`` reads. A busy
        worker would keep hundreds of thousands of them. The rows in
        ``statuses`` (counted in ``stats()``'s counts, without a walk) bound
        the live entries, one each: a heap within twice that is left alone,
        and a compaction, which walks the heap, drops at least as many
        entries as it keeps, so that its cost per entry stays constant. An
        entry is live as its readers judge it: by its row's version
        (``_promote``, ``next_due``), and ``by_status`` by its row's status
        too (``stats()``)."""
        bound = sum(
            counts.get(status, 0) for counts in self._counts.values() for status in statuses
        )
        if len(heap) <= 2 * bound + _COMPACT_FLOOR:
            return 2 * bound + _COMPACT_FLOOR
        rows = self._rows
        live = []
        for entry in heap:
            # (due, seq, id, version) in _timed, (seq, id, version) in _waiting
            row = rows.get(entry[-2])
            if (
                row is not None
                and row.version == entry[-1]
                and (not by_status or row.status in statuses)
            ):
                live.append(entry)
        heapq.heapify(live)
        heap[:] = live
        return max(2 * bound, 2 * len(live)) + _COMPACT_FLOOR

    def _rekey(self, row: _Row, old_key: str | None = None) -> None:
        """After ``row`` changed: reschedule it and the head of its key (only
        the oldest open delivery of a key is ever claimable, so the cost does
        not grow with how many wait behind it), and the head of ``old_key``
        when a corrected event moved the row to another key."""
        self._schedule(row)
        if old_key is None and row.ordering_key is None:
            return  # no key: no head to reschedule
        for ordering_key in {row.ordering_key, old_key}:
            if ordering_key is None:
                continue
            key = self._keys.get((row.destination, ordering_key))
            head = None if key is None else key.head()
            if head is not None and head is not row:
                self._schedule(head)

    def _replace_event(self, row: _Row, event: Event, event_json: str) -> None:
        """A corrected event (it may carry another ordering key)."""
        self._leave_key(row)
        row.set_event(event, event_json)
        if row.status in _OPEN:
            self._join_key(row)

    def _leave_key(self, row: _Row) -> None:
        if row.ordering_key is None:
            return
        ident = (row.destination, row.ordering_key)
        key = self._keys.get(ident)
        if key is not None and key.remove(row) and not key.members:
            del self._keys[ident]

    def _join_key(self, row: _Row) -> None:
        if row.ordering_key is None:
            return
        ident = (row.destination, row.ordering_key)
        key = self._keys.get(ident)
        if key is None:
            key = self._keys[ident] = _Key()
        key.add(row)

    def _move(
        self, row: _Row, status: DeliveryStatus, error: ErrorInfo | _Same | None = _SAME
    ) -> None:
        """Change a row's status (and ``error``, its last error, unless the same),
        keeping the counts (by status and error category) and its key's membership.

        What ``_count(row, -1)`` before the change and ``_count(row, 1)``
        after it would do, in one look-up of the destination's counts (a
        stored row's destination has them, from ``enqueue``)."""
        old = row.status
        counts = self._counts[row.destination]
        counts[old] = counts.get(old, 0) - 1
        if old is DeliveryStatus.NEEDS_ACTION and row.last_error is not None:
            self._count_needs(row.destination, row.last_error.category, -1)
        ordering_key = row.ordering_key  # without one, nothing to leave or join
        stays = False
        if ordering_key is not None:
            key = None
            if old in _OPEN and status in _OPEN:
                key = self._keys.get((row.destination, ordering_key))
            if key is not None and key.members.get(row.seq) is row:
                # still open under the same key: only the key's in-flight count changes
                stays = True
                key.in_flight += (status is DeliveryStatus.IN_FLIGHT) - (
                    old is DeliveryStatus.IN_FLIGHT
                )
            elif old in _OPEN:
                self._leave_key(row)  # with its old status (the in-flight count)
        if error is not _SAME:
            row.last_error = error
        row.status = status
        counts[status] = counts.get(status, 0) + 1
        if status is DeliveryStatus.NEEDS_ACTION and row.last_error is not None:
            self._count_needs(row.destination, row.last_error.category, 1)
        if ordering_key is not None and status in _OPEN and not stays:
            self._join_key(row)

    # -- writing ---------------------------------------------------------

    def enqueue(
        self,
        deliveries: Sequence[Delivery],
        *,
        cursor: tuple[str, str | None] | None = None,
        transaction: Any = None,
    ) -> builtins.list[Delivery]:
        check_cursor(cursor)
        if transaction is not None:
            raise TypeError(
                f"MemoryQueueStore cannot join a transaction (got {type(transaction).__name__}); "
                "use PostgresQueueStore for the transactional outbox"
            )
        deliveries = list(deliveries)
        check_deliveries(deliveries)
        texts = [checked_event_json(d) for d in deliveries]  # the same checks as SQL stores
        # encoded before anything changes: a result the encoder refuses
        # raises with nothing written, as a rolled-back transaction would
        results = [None if d.result is None else _ENCODE(d.result) for d in deliveries]
        with self._lock:
            inserted: builtins.list[Delivery] = []
            rows, by_event, seqs = self._rows, self._by_event, self._seq
            order, order_seqs = self._order, self._order_seqs
            for delivery, text, result in zip(deliveries, texts, results, strict=True):
                event = delivery.event
                ident = (event.id, delivery.destination)
                if ident in by_event or delivery.id in rows:
                    continue
                row = _Row(delivery, next(seqs), text, result)
                row_id, status = row.id, row.status
                rows[row_id] = row
                by_event[ident] = row_id
                order.append(row_id)
                order_seqs.append(row.seq)
                self._count(row, 1)
                if status in _OPEN:
                    self._join_key(row)
                self._schedule(row)
                inserted.append(row.view(event))
            if cursor is not None:
                self._cursors[cursor[0]] = cursor[1]
            if inserted:
                self._wake()
            return inserted

    def _wake(self) -> None:
        """Wake the idle waiters (the lock is held)."""
        self._changes += 1
        self._work.notify_all()

    def wait_for_work(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning as soon as work may have
        arrived (an enqueue, a hand-back, a re-sync, a resumed destination)."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        with self._lock:
            seen = self._changes
            self._work.wait_for(lambda: self._changes != seen, timeout=timeout)

    def _blocked(self, name: str, now: datetime) -> bool:
        state = self._destinations.get(name)
        return state is not None and (
            state.paused or (state.hold_until is not None and state.hold_until > now)
        )

    def _promote(self, now: datetime) -> None:
        """Move what became due by ``now`` from the time heap to the ready heaps."""
        timed, rows, ready = self._timed, self._rows, self._ready
        heappop, heappush = heapq.heappop, heapq.heappush
        while timed and timed[0][0] <= now:
            due, seq, row_id, version = heappop(timed)
            row = rows.get(row_id)
            if row is None or row.version != version:
                continue
            heap = ready.get(row.destination)
            if heap is None:
                heap = ready[row.destination] = []
            heappush(heap, (seq, row_id, version, due))

    def _top(self, destination: str) -> tuple[int, str, int, datetime] | None:
        """The oldest valid ready entry of a destination (stale ones dropped)."""
        heap = self._ready.get(destination)
        while heap:
            entry = heap[0]
            row = self._rows.get(entry[1])
            if row is not None and row.version == entry[2]:
                return entry
            heapq.heappop(heap)
        return None

    def claim(
        self,
        *,
        now: datetime,
        limit: int,
        lease_until: datetime,
        worker: str,
        destinations: Collection[str] | None = None,
    ) -> builtins.list[Delivery]:
        destinations = check_claim_args(limit, worker, destinations, now, lease_until)
        with self._lock:
            self._promote(now)
            names = (
                list(self._ready)
                if destinations is None
                else [n for n in destinations if n in self._ready]
            )
            names = [n for n in names if not self._blocked(n, now)]
            # the ready heaps stay the same lists while the lock is held
            heaps = [self._ready[n] for n in names]
            rows = self._rows
            heappop = heapq.heappop
            claimed: builtins.list[Delivery] = []
            while len(claimed) < limit:
                best: tuple[int, str, int, datetime] | None = None
                row = None
                for heap in heaps:
                    while heap:  # _top, inline: the oldest valid entry (stale ones dropped)
                        entry = heap[0]
                        top_row = rows.get(entry[1])
                        if top_row is not None and top_row.version == entry[2]:
                            if best is None or entry[0] < best[0]:
                                best, row = entry, top_row
                            break
                        heappop(heap)
                if best is None or row is None:
                    break
                heappop(self._ready[row.destination])
                if best[3] > now:  # due later for this caller's clock: back to waiting
                    heapq.heappush(self._timed, (best[3], best[0], best[1], best[2]))
                    continue
                status = row.status
                if status is not DeliveryStatus.IN_FLIGHT and not (
                    (status is DeliveryStatus.PENDING or status is DeliveryStatus.RETRY_SCHEDULED)
                    and (row.ordering_key is None or self._eligible(row))
                ):  # _eligible: not waiting, or an older delivery of its key came back
                    continue
                if status is DeliveryStatus.IN_FLIGHT:
                    reason = (
                        f"the lease of {row.lease_owner} expired at {row.lease_expires_at}; "
                        f"attempt {row.attempts} had no recorded outcome (worker crashed or "
                        "stalled)"
                    )
                    expired = Attempt(
                        delivery_id=row.id,
                        destination=row.destination,
                        action="lease_expired",
                        actor=f"worker:{worker}",
                        started_at=now,
                        finished_at=now,
                        number=row.attempts,
                        outcome=DeliveryStatus.IN_FLIGHT,
                        reason=reason,
                    )
                    self._append_audit(_audit_values(expired))
                else:
                    self._move(row, DeliveryStatus.IN_FLIGHT)
                row.attempts += 1
                row.lease_token = next(self._tokens)
                row.lease_owner = worker
                row.lease_expires_at = lease_until
                row.updated_at = now
                self._rekey(row)
                claimed.append(row.view())
            return claimed

    def complete(self, completions: Sequence[Completion]) -> builtins.list[bool]:
        completions = check_completions(completions)
        replaced = [c.event for c in completions]
        check_new_events(replaced)
        events = [
            (event, checked_event_json(_as_delivery(event))) if event is not None else None
            for event in replaced
        ]
        results = [  # encoded before anything changes (see enqueue)
            None
            if c.result is None or c.status is not DeliveryStatus.SUCCEEDED
            else _ENCODE(c.result)
            for c in completions
        ]
        # and the audit records' values, which may refuse one (an outcome)
        audits = [[_audit_values(r) for r in c.audit] for c in completions]
        with self._lock:
            applied: builtins.list[bool] = []
            rows = self._rows
            for c, replacement, result, audit in zip(
                completions, events, results, audits, strict=True
            ):
                row = rows.get(c.delivery_id)
                if (
                    row is None
                    or row.status is not DeliveryStatus.IN_FLIGHT
                    or row.lease_token != c.lease_token
                ):
                    applied.append(False)
                    continue
                status = c.status
                if status is DeliveryStatus.SUCCEEDED:
                    row.result_json = result
                    self._move(row, status, c.error)
                else:
                    self._move(row, status, _SAME if c.error is None else c.error)
                row.next_attempt_at = c.next_attempt_at
                old_key = row.ordering_key
                if replacement is not None:
                    self._replace_event(row, *replacement)
                if c.idempotency_key:
                    row.idempotency_key = c.idempotency_key
                if not c.count_attempt:
                    row.attempts -= 1
                row.lease_owner = None
                row.lease_expires_at = None
                row.updated_at = c.finished_at
                self._rekey(row, old_key)
                for values in audit:
                    self._append_audit(values)
                applied.append(True)
                if status is DeliveryStatus.PENDING:
                    self._wake()  # handed back: another worker may take it
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
        event: Event | None = None,
        idempotency_key: str | None = None,
        if_unchanged: Delivery | None = None,
    ) -> builtins.list[str]:
        ids, from_status = check_transition_args(
            ids, from_status, to_status, audit, now, idempotency_key, if_unchanged
        )
        check_new_events([event])
        replacement = (event, checked_event_json(_as_delivery(event))) if event else None
        with self._lock:
            moved: builtins.list[str] = []
            for delivery_id in dict.fromkeys(ids):
                row = self._rows.get(delivery_id)
                if row is None or row.status not in from_status:
                    continue
                if if_unchanged is not None and (
                    row.status is not if_unchanged.status
                    or row.attempts != if_unchanged.attempts
                    or row.lease_token != if_unchanged.lease_token
                    or row.updated_at != if_unchanged.updated_at
                ):
                    continue
                self._move(row, to_status)
                row.next_attempt_at = None  # PENDING: due at once, whatever the clock
                if reset_attempts:
                    row.attempts = 0
                old_key = row.ordering_key
                if replacement is not None:
                    self._replace_event(row, *replacement)
                if idempotency_key:
                    row.idempotency_key = idempotency_key
                row.lease_owner = None
                row.lease_expires_at = None
                row.updated_at = now
                self._rekey(row, old_key)
                self._append_audit(_audit_values(fill_audit(audit, row.view())))
                moved.append(delivery_id)
            if moved and to_status is DeliveryStatus.PENDING:
                self._wake()
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
        check_destination_args(name, now, paused, paused_reason, hold_until, hold_reason)
        record = None if audit is None else _audit_values(audit)  # before anything changes
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
            if record is not None:
                self._append_audit(record)
            if paused is False:
                self._wake()
            return state

    def extend_leases(
        self, leases: Sequence[tuple[str, int]], *, until: datetime
    ) -> builtins.list[bool]:
        leases = check_pairs(leases, "leases", ("str", "int"))
        check_time(until, "until")
        with self._lock:
            out: builtins.list[bool] = []
            for delivery_id, token in leases:
                row = self._rows.get(delivery_id)
                if (
                    row is None
                    or row.status is not DeliveryStatus.IN_FLIGHT
                    or row.lease_token != token
                ):
                    out.append(False)
                    continue
                if row.lease_expires_at is None or row.lease_expires_at < until:
                    row.lease_expires_at = until
                    self._schedule(row)
                out.append(True)
            return out

    def add_audit(self, records: Sequence[Attempt]) -> None:
        values = [_audit_values(record) for record in records]  # all, or none
        with self._lock:
            for one in values:
                self._append_audit(one)

    # -- reading ---------------------------------------------------------

    def destinations(self) -> dict[str, DestinationState]:
        with self._lock:
            return dict(self._destinations)

    def get(self, delivery_id: str) -> Delivery | None:
        check_text(delivery_id, "delivery_id")
        with self._lock:
            row = self._rows.get(delivery_id)
            return row.view() if row is not None else None

    def ids_with_prefix(self, prefix: str, *, limit: int = 10) -> builtins.list[str]:
        """The ids that start with ``prefix``, sorted, at most ``limit``."""
        if not prefix:
            return []
        with self._lock:
            found = [i for i in self._rows if i.startswith(prefix)]
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
        status, category = check_list_args(
            status, category, destination, event_type, search, since, until
        )
        check_page_args(limit)
        after = decode_cursor(cursor)
        statuses = set(status) if status is not None else None
        needle = search.lower() if search else None
        with self._lock:
            matches: builtins.list[_Row] = []
            start = bisect.bisect_right(self._order_seqs, after)
            for row_id in itertools.islice(self._order, start, None):
                row = self._rows.get(row_id)
                if row is None:
                    continue  # purged
                if statuses is not None and row.status not in statuses:
                    continue
                if destination is not None and row.destination != destination:
                    continue
                if category is not None and (
                    row.last_error is None or row.last_error.category != category
                ):
                    continue
                if since is not None and row.updated_at < since:
                    continue
                if until is not None and row.updated_at >= until:
                    continue
                if event_type is not None and row.event_type != event_type:
                    continue
                if needle is not None and not (
                    needle in row.event_id.lower() or needle in row.event_json.lower()
                ):
                    continue
                matches.append(row)
                if len(matches) > limit:
                    break
            items = [row.view() for row in matches[:limit]]
        if len(matches) > limit:
            return Page(items=items, next_cursor=encode_cursor(items[-1].seq))
        return Page(items=items, next_cursor=None)

    def attempts(self, delivery_id: str) -> builtins.list[Attempt]:
        check_text(delivery_id, "delivery_id")
        with self._lock:
            return [_attempt(stored) for stored in self._audit_of.get(delivery_id, ())]

    def audit(
        self, *, since: datetime | None = None, errors_only: bool = False, limit: int | None = None
    ) -> builtins.list[Attempt]:
        if limit is not None:
            check_int(limit, "limit", minimum=0)
        if not isinstance(errors_only, bool):
            raise wrong_type("errors_only", "a bool", errors_only)
        check_time(since, "since", optional=True)
        if limit == 0:
            return []
        with self._lock:
            out: builtins.list[Attempt] = []
            for stored in reversed(self._audit):
                if since is not None and stored[_FINISHED_AT] < since:
                    continue
                if errors_only and stored[_ERROR] is None:
                    continue
                out.append(_attempt(stored))
                if limit is not None and len(out) >= limit:
                    break
            return out

    def get_cursor(self, source: str) -> str | None:
        check_text(source, "source")
        with self._lock:
            return self._cursors.get(source)

    def stats(self) -> QueueStats:
        with self._lock:
            by_destination = {
                dest: {status: n for status, n in counts.items() if n}
                for dest, counts in self._counts.items()
            }
            needs_action = {
                dest: {category: n for category, n in cats.items() if n}
                for dest, cats in self._needs.items()
            }
            oldest: datetime | None = None
            waiting = self._waiting
            while waiting:
                _seq, row_id, version = waiting[0]
                row = self._rows.get(row_id)
                if row is not None and row.version == version and row.status in _WAITING:
                    oldest = row.created_at
                    break
                heapq.heappop(waiting)
            return QueueStats(
                by_destination={d: c for d, c in by_destination.items() if c},
                needs_action={d: c for d, c in needs_action.items() if c},
                oldest_waiting=oldest,
                destinations=dict(self._destinations),
            )

    def error_counts(
        self, *, since: datetime, until: datetime, bucket: timedelta
    ) -> builtins.list[tuple[int, ErrorCategory, int]]:
        check_time(since, "since")
        check_time(until, "until")
        if not isinstance(bucket, timedelta):
            raise wrong_type("bucket", "a timedelta", bucket)
        if bucket <= timedelta(0):
            raise ValueError(f"bucket must be > 0, got {bucket!r}")
        counts: dict[tuple[int, ErrorCategory], int] = {}
        with self._lock:
            for stored in self._audit:
                error, finished_at = stored[_ERROR], stored[_FINISHED_AT]
                if error is None or not since <= finished_at < until:
                    continue
                key = ((finished_at - since) // bucket, error.category)
                counts[key] = counts.get(key, 0) + 1
        return [(index, category, n) for (index, category), n in sorted(counts.items())]

    def purge(self, *, before: datetime, limit: int = 1000, dry_run: bool = False) -> int:
        check_page_args(limit)
        check_time(before, "before")
        with self._lock:
            old = [
                row
                for row in self._rows.values()
                if row.status not in _OPEN and row.updated_at < before
            ]
            if dry_run:
                return len(old)
            gone = {row.id for row in old[:limit]}
            for row in old[:limit]:
                del self._rows[row.id]
                self._count(row, -1)
                self._by_event.pop((row.event_id, row.destination), None)
                self._audit_of.pop(row.id, None)
            self._audit = [
                stored
                for stored in self._audit
                if stored[_DELIVERY_ID] not in gone
                and not (stored[_DELIVERY_ID] is None and stored[_FINISHED_AT] < before)
            ]
            self._purged += len(gone)
            if self._purged > len(self._order) // 2:
                keep = [i for i in self._order if i in self._rows]
                self._order = keep
                self._order_seqs = [self._rows[i].seq for i in keep]
                self._purged = 0
            return len(gone)

    def next_due(self) -> datetime | None:
        with self._lock:
            times: builtins.list[datetime] = []
            for destination in self._ready:
                top = self._top(destination)
                if top is None:
                    continue
                # ready already: a paused destination's wait for no time (a past
                # time would hide the next one to come), a held one's to its end
                state = self._destinations.get(destination)
                if state is not None and state.paused:
                    continue
                hold = None if state is None else state.hold_until
                if hold is not None and (top[3] is _MIN_TIME or hold > top[3]):
                    times.append(hold)
                elif top[3] is not _MIN_TIME:
                    times.append(top[3])
            timed = self._timed
            while timed:
                due, _, row_id, version = timed[0]
                row = self._rows.get(row_id)
                if row is not None and row.version == version:
                    if due is not _MIN_TIME:
                        times.append(due)
                    break
                heapq.heappop(timed)
            return min(times) if times else None

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _audit_values(record: Attempt) -> tuple[Any, ...]:
    """An audit record's values as kept (see _Audit), without its id: its
    details (a dict) copied, its outcome as its value (``ValueError`` for an
    outcome that is not a status, and for a naive time, before anything
    changes)."""
    check_attempt(record)
    details = record.details
    return (
        record.delivery_id,
        record.destination,
        record.action,
        record.actor,
        record.started_at,
        record.finished_at,
        record.number,
        outcome_value(record.outcome),
        record.reason,
        record.error,
        dict(details) if details else None,
    )


#: where _append_audit puts the fields read without building the record
_DELIVERY_ID, _FINISHED_AT, _ERROR = 1, 6, 10


def _attempt(stored: _Audit) -> Attempt:
    """A stored audit record as read (a new ``Attempt`` at every read, as
    the SQL stores hand out)."""
    (
        audit_id,
        delivery_id,
        destination,
        action,
        actor,
        started_at,
        finished_at,
        number,
        outcome,
        reason,
        error,
        details,
    ) = stored
    return Attempt(
        delivery_id=delivery_id,
        destination=destination,
        action=action,
        actor=actor,
        started_at=started_at,
        finished_at=finished_at,
        number=number,
        outcome=None if outcome is None else _STATUSES[outcome],
        reason=reason,
        error=error,
        details=details,
        id=audit_id,
    )


def _as_delivery(event: Event) -> Delivery:
    """A throwaway delivery around ``event``, for :func:`checked_event_json`."""
    return Delivery(
        id="(replacement)",
        event=event,
        destination="",
        status=DeliveryStatus.PENDING,
        idempotency_key="",
        created_at=_MIN_TIME,
        updated_at=_MIN_TIME,
    )


#: a key as the idempotency store keeps it: the lock a worker took with
#: ``begin``, ``(fingerprint, locked_until)``, or a completed key,
#: ``(fingerprint, result, expires_at)``. Tuples rather than records: locks
#: are taken and dropped once per delivery and rarely read, and a completed
#: key of plain values is an object the garbage collector stops tracking (see
#: _Audit); the record is built when one is read.
_Lock = tuple[str, datetime]
_Done = tuple[str, Any, "datetime | None"]


def _held(key: str, lock: _Lock) -> IdempotencyRecord:
    """The record of a key a worker holds (``begin``'s lock, as kept)."""
    return IdempotencyRecord(
        key=key, state=IdempotencyState.IN_PROGRESS, fingerprint=lock[0], locked_until=lock[1]
    )


def _completed(key: str, done: _Done, state: IdempotencyState) -> IdempotencyRecord:
    """The record of a completed key (``state`` COMPLETED, or MISMATCH for a
    ``begin`` with another fingerprint)."""
    return IdempotencyRecord(
        key=key, state=state, fingerprint=done[0], result=done[1], expires_at=done[2]
    )


class MemoryIdempotencyStore:
    """An :class:`~resilient_sync.IdempotencyStore` in a dict, guarded by a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: per key: its lock or its completion (see _Lock)
        self._records: dict[str, _Lock | _Done] = {}

    def __repr__(self) -> str:
        return f"MemoryIdempotencyStore({len(self._records)} keys)"

    def begin(
        self, entries: Sequence[tuple[str, str]], *, now: datetime, lock_until: datetime
    ) -> builtins.list[IdempotencyRecord]:
        entries = check_pairs(entries, "entries", ("str", "str"))
        check_time(now, "now")
        check_time(lock_until, "lock_until")
        with self._lock:
            records = self._records
            out: builtins.list[IdempotencyRecord] = []
            for key, fp in entries:
                rec = records.get(key)
                if rec is not None and len(rec) == 2:
                    if rec[1] > now:  # a lock, still held
                        out.append(_held(key, rec))
                        continue
                elif rec is not None and (rec[2] is None or rec[2] > now):
                    state = (
                        IdempotencyState.COMPLETED if rec[0] == fp else IdempotencyState.MISMATCH
                    )
                    out.append(_completed(key, rec, state))
                    continue
                records[key] = (fp, lock_until)
                out.append(
                    IdempotencyRecord(
                        key=key,
                        state=IdempotencyState.NEW,
                        fingerprint=fp,
                        locked_until=lock_until,
                    )
                )
            return out

    def finish(
        self, entries: Sequence[tuple[str, str, Any]], *, now: datetime, expires_at: datetime
    ) -> None:
        entries = check_pairs(entries, "entries", ("str", "str", "any"))
        check_results(entries)
        check_time(now, "now")
        check_time(expires_at, "expires_at", optional=True)
        with self._lock:
            for key, fp, result in entries:
                self._records[key] = (fp, result, expires_at)

    def extend_locks(
        self, keys: Sequence[str], *, locked_until: datetime, until: datetime
    ) -> builtins.list[bool]:
        """Move the locks still held under ``locked_until`` to ``until`` (the
        lease heartbeat)."""
        keys = check_texts(keys, "keys")
        check_time(locked_until, "locked_until")
        check_time(until, "until")
        with self._lock:
            moved: builtins.list[bool] = []
            for key in keys:
                rec = self._records.get(key)
                held = rec is not None and len(rec) == 2 and rec[1] == locked_until
                if held:
                    assert rec is not None  # noqa: S101 - for mypy
                    self._records[key] = (rec[0], until)
                moved.append(held)
            return moved

    def release(self, keys: Sequence[str], *, locked_until: datetime | None = None) -> None:
        keys = check_texts(keys, "keys")
        check_time(locked_until, "locked_until", optional=True)
        with self._lock:
            for key in keys:
                rec = self._records.get(key)
                if (
                    rec is not None
                    and len(rec) == 2
                    and (locked_until is None or rec[1] == locked_until)
                ):
                    del self._records[key]

    def purge(self, *, now: datetime, limit: int = 1000) -> int:
        check_page_args(limit)
        check_time(now, "now")
        with self._lock:
            expired = [
                key
                for key, rec in self._records.items()
                if len(rec) == 3 and rec[2] is not None and rec[2] <= now
            ][:limit]
            abandoned = [
                key for key, rec in self._records.items() if len(rec) == 2 and rec[1] <= now
            ]
            for key in expired + abandoned:
                del self._records[key]
            return len(expired)

    def get(self, key: str, *, now: datetime) -> IdempotencyRecord | None:
        check_text(key, "key")
        check_time(now, "now")
        with self._lock:
            rec = self._records.get(key)
        if rec is None:
            return None
        if len(rec) == 2:
            return _held(key, rec) if rec[1] > now else None
        expires_at = rec[2]
        if expires_at is not None and expires_at <= now:
            return None
        return _completed(key, rec, IdempotencyState.COMPLETED)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

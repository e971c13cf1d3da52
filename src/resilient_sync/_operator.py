"""Operator tools: see what needs a person, fix it, re-sync it, and audit it all."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from ._clock import DatabaseClock, SystemClock, duration
from ._core import audit_details, revised_key, revision_risk
from ._edit import apply_edits
from ._errors import DeliveryNotFoundError, InvalidEventError
from ._json import check_event, check_json, check_name
from ._model import (
    Attempt,
    Delivery,
    DeliveryStatus,
    DestinationState,
    ErrorCategory,
    Page,
    QueueStats,
)
from ._protocols import Clock, IdempotencyStore, QueueStore
from ._text import MAX_NOTE, clean, one_line

__all__ = ["Operator", "PurgeReport", "TrendBucket"]

RETRYABLE_BY_OPERATOR = frozenset(
    {DeliveryStatus.NEEDS_ACTION, DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.DISCARDED}
)
RESOLVABLE = frozenset(
    {DeliveryStatus.NEEDS_ACTION, DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.PENDING}
)
DISCARDABLE = RESOLVABLE
EDITABLE = RETRYABLE_BY_OPERATOR | {DeliveryStatus.PENDING}
_PAGE = 500


@attrs.frozen(kw_only=True)
class PurgeReport:
    """What :meth:`Operator.purge` removed (or, with ``dry_run``, would remove)."""

    before: datetime
    deliveries: int = 0
    idempotency_keys: int = 0
    dry_run: bool = False


@attrs.frozen(kw_only=True)
class TrendBucket:
    """Failed attempts in ``[start, start + bucket)``, by category."""

    start: datetime
    counts: dict[ErrorCategory, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _statuses(status: Any) -> builtins.list[DeliveryStatus] | None:
    if status is None:
        return None
    if isinstance(status, (str, DeliveryStatus)):
        return [DeliveryStatus(status)]
    return [DeliveryStatus(s) for s in status]


def _ids(ids: str | Iterable[str]) -> builtins.list[str]:
    if isinstance(ids, str):
        return [ids]
    out = list(ids)
    for value in out:
        if not isinstance(value, str):
            raise TypeError(f"delivery ids are strings, got {value!r}")
    return out


class Operator:
    """What the people running an integration use (the CLI is built on it).

    Every action writes one audit record per delivery it changes, naming the
    ``actor``. Actions on several ids are all-or-nothing for unknown ids (a
    :class:`DeliveryNotFoundError` before anything changes); ids in a state
    the action does not apply to are left alone and not returned.
    """

    def __init__(self, queue: QueueStore, clock: Clock | None = None) -> None:
        self.queue = queue
        if clock is None and callable(getattr(queue, "database_time", None)):
            clock = DatabaseClock(queue.database_time)  # type: ignore[attr-defined]
        self.clock: Clock = clock if clock is not None else SystemClock()

    # -- reading ---------------------------------------------------------

    def list(
        self,
        status: DeliveryStatus | str | Iterable[DeliveryStatus | str] | None = None,
        destination: str | None = None,
        category: ErrorCategory | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
        *,
        until: datetime | None = None,
        event_type: str | None = None,
        search: str | None = None,
    ) -> Page:
        """Deliveries in submission order; pass ``page.next_cursor`` for more.

        ``since`` (inclusive) and ``until`` (exclusive) filter on the last
        change, ``event_type`` on the event's type, ``search`` is a text in
        the event id or the event's JSON (see :meth:`QueueStore.list`)."""
        return self.queue.list(
            status=_statuses(status),
            destination=destination,
            category=ErrorCategory(category) if category is not None else None,
            since=since,
            limit=limit,
            cursor=cursor,
            until=until,
            event_type=event_type,
            search=search or None,
        )

    def get(self, delivery_id: str) -> Delivery:
        """One delivery; raises :class:`DeliveryNotFoundError`."""
        delivery = self.queue.get(delivery_id)
        if delivery is None:
            raise DeliveryNotFoundError(delivery_id)
        return delivery

    def attempts(self, delivery_id: str) -> builtins.list[Attempt]:
        """Every audit record of a delivery, oldest first."""
        self.get(delivery_id)
        return self.queue.attempts(delivery_id)

    def stats(self) -> QueueStats:
        """Counts by destination, status and category; paused/held destinations."""
        return self.queue.stats()

    def destinations(self) -> dict[str, DestinationState]:
        """Destinations that are or were paused or held."""
        return self.queue.destinations()

    def recent_errors(self, limit: int = 20) -> builtins.list[Attempt]:
        """The latest failed attempts, newest first."""
        return self.queue.audit(errors_only=True, limit=limit)

    def error_trend(
        self,
        bucket: float | timedelta = timedelta(hours=1),
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> builtins.list[TrendBucket]:
        """Failed attempts per time bucket and category, oldest bucket first.

        ``since`` defaults to 24 buckets before ``until`` (default: now);
        empty buckets are included so the series is continuous. Counted by
        the store (``QueueStore.error_counts``), never by loading the records.
        """
        width = timedelta(seconds=duration(bucket, "bucket"))
        end = until if until is not None else self.clock.now()
        start = since if since is not None else end - 24 * width
        if start >= end:
            raise ValueError(f"since ({start}) must be before until ({end})")
        count = int((end - start) / width) + 1
        if count > 10_000:
            raise ValueError(
                f"{count} buckets of {width} from {start} to {end} are too many; "
                "use a wider bucket or a shorter range"
            )
        buckets = [TrendBucket(start=start + i * width, counts={}) for i in range(count)]
        for index, category, n in self.queue.error_counts(
            since=start, until=start + count * width, bucket=width
        ):
            if 0 <= index < count:
                buckets[index].counts[category] = n
        return buckets

    def purge(
        self,
        older_than: float | timedelta = timedelta(days=30),
        *,
        idempotency: IdempotencyStore | None = None,
        batch: int = 1000,
        dry_run: bool = False,
        actor: str = "operator",
        progress: Callable[[int], None] | None = None,
    ) -> PurgeReport:
        """Retention: delete finished deliveries (``SUCCEEDED``, ``RESOLVED``,
        ``DISCARDED``) last changed more than ``older_than`` ago, with their
        audit records, and old records of actions on destinations; with
        ``idempotency``, also the completed keys that expired.

        Works in batches of ``batch``, each its own short transaction, so
        workers keep running meanwhile; ``progress(deleted_so_far)`` is called
        after each. With ``dry_run`` nothing changes and the report says how
        many deliveries would go. Waiting, failed and in-flight deliveries are
        never purged. One ``"purge"`` audit record says what was removed (also
        when the purge is interrupted: an exception from ``progress`` or the
        store ends it after the batches done so far, which stay done).

        Mind the horizon: an event id whose delivery was purged is no longer
        known, so submitting it again enqueues it again (its idempotency key,
        kept ``idempotency_ttl``, still replays it if not expired).
        """
        age = timedelta(seconds=duration(older_than, "older_than"))
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        now = self.clock.now()
        before = now - age
        if dry_run:
            return PurgeReport(
                before=before,
                deliveries=self.queue.purge(before=before, limit=batch, dry_run=True),
                dry_run=True,
            )
        deleted = keys = 0
        finished = False
        try:
            while True:
                n = self.queue.purge(before=before, limit=batch)
                deleted += n
                if progress is not None:
                    progress(deleted)
                if n < batch:
                    break
            if idempotency is not None:
                while True:
                    n = idempotency.purge(now=now, limit=batch)
                    keys += n
                    if n < batch:
                        break
            finished = True
        finally:
            # an interrupted purge (Ctrl-C, a store error) still says what it removed
            if deleted or keys:
                self.queue.add_audit(
                    [
                        self._audit(
                            "purge",
                            actor,
                            f"purged {deleted} finished deliveries older than {age} and "
                            f"{keys} expired idempotency keys"
                            + ("" if finished else " (interrupted)"),
                            before=before.isoformat(),
                            deliveries=deleted,
                            idempotency_keys=keys,
                            interrupted=None if finished else True,
                        )
                    ]
                )
        return PurgeReport(before=before, deliveries=deleted, idempotency_keys=keys)

    # -- acting ----------------------------------------------------------

    def _audit(self, action: str, actor: str, reason: str | None, **details: Any) -> Attempt:
        if not isinstance(actor, str) or not actor.strip():
            raise ValueError(f"actor must name who acts, got {actor!r}")
        now = self.clock.now()
        return Attempt(
            delivery_id=None,
            destination="",
            action=action,
            actor=one_line(actor),
            started_at=now,
            finished_at=now,
            reason=clean(reason, limit=MAX_NOTE) if reason is not None else None,
            details=audit_details(**details),
        )

    def _existing(self, ids: Sequence[str]) -> None:
        for delivery_id in ids:
            self.get(delivery_id)

    def retry(
        self, ids: str | Iterable[str], *, actor: str = "operator", note: str | None = None
    ) -> builtins.list[str]:
        """Re-sync now: ``NEEDS_ACTION``, ``RETRY_SCHEDULED`` or ``DISCARDED``
        deliveries become ``PENDING``, due at once (whatever the dispatcher's
        clock), with the same idempotency key and a fresh retry budget:
        ``attempts`` reset to 0 and the policy's ``deadline`` counted from
        this re-sync. Returns the ids that moved."""
        wanted = _ids(ids)
        self._existing(wanted)
        return self.queue.transition(
            wanted,
            from_status=RETRYABLE_BY_OPERATOR,
            to_status=DeliveryStatus.PENDING,
            audit=self._audit("retry", actor, note or "re-sync requested by an operator"),
            now=self.clock.now(),
            reset_attempts=True,
        )

    def retry_all(
        self,
        status: DeliveryStatus | str | Iterable[DeliveryStatus | str] = DeliveryStatus.NEEDS_ACTION,
        destination: str | None = None,
        category: ErrorCategory | str | None = None,
        *,
        actor: str = "operator",
        note: str | None = None,
        dry_run: bool = False,
        since: datetime | None = None,
        until: datetime | None = None,
        event_type: str | None = None,
        search: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> builtins.list[str]:
        """Retry every delivery matching the filters (default: all that need
        action; the filters of :meth:`list`), in batches of 500. With
        ``dry_run`` nothing changes; the ids that would move are returned.
        ``progress(done, total)`` is called after each batch."""
        statuses = [s for s in _statuses(status) or [] if s in RETRYABLE_BY_OPERATOR]
        filters = {"since": since, "until": until, "event_type": event_type, "search": search}
        matching = self._matching(statuses, destination, category, filters)
        if dry_run:
            return matching
        moved: builtins.list[str] = []
        for start in range(0, len(matching), _PAGE):
            moved.extend(self.retry(matching[start : start + _PAGE], actor=actor, note=note))
            if progress is not None:
                progress(min(start + _PAGE, len(matching)), len(matching))
        return moved

    def _matching(
        self,
        statuses: builtins.list[DeliveryStatus],
        destination: str | None,
        category: ErrorCategory | str | None,
        filters: dict[str, Any],
    ) -> builtins.list[str]:
        if not statuses:
            return []
        ids: builtins.list[str] = []
        cursor: str | None = None
        while True:
            page = self.list(
                statuses,
                destination,
                category,
                limit=_PAGE,
                cursor=cursor,
                since=filters["since"],
                until=filters["until"],
                event_type=filters["event_type"],
                search=filters["search"],
            )
            ids.extend(d.id for d in page.items)
            if page.next_cursor is None:
                return ids
            cursor = page.next_cursor

    def resolve(
        self, ids: str | Iterable[str], *, actor: str = "operator", note: str | None = None
    ) -> builtins.list[str]:
        """Mark deliveries handled outside the library (``RESOLVED``, final),
        e.g. a potential duplicate linked by hand; ``note`` says how."""
        wanted = _ids(ids)
        self._existing(wanted)
        return self.queue.transition(
            wanted,
            from_status=RESOLVABLE,
            to_status=DeliveryStatus.RESOLVED,
            audit=self._audit("resolve", actor, note or "resolved by an operator"),
            now=self.clock.now(),
        )

    def discard(
        self, ids: str | Iterable[str], *, actor: str = "operator", note: str | None = None
    ) -> builtins.list[str]:
        """Give up on deliveries on purpose (``DISCARDED``); ``retry`` revives them."""
        wanted = _ids(ids)
        self._existing(wanted)
        return self.queue.transition(
            wanted,
            from_status=DISCARDABLE,
            to_status=DeliveryStatus.DISCARDED,
            audit=self._audit("discard", actor, note or "discarded by an operator"),
            now=self.clock.now(),
        )

    def pause(
        self, destination: str, *, actor: str = "operator", note: str | None = None
    ) -> DestinationState:
        """Stop delivering to ``destination`` until :meth:`resume`."""
        check_name(destination, "destination")
        note = note or f"paused by {actor}"
        audit = attrs.evolve(self._audit("pause", actor, note), destination=destination)
        return self.queue.set_destination(
            destination,
            now=self.clock.now(),
            paused=True,
            paused_reason=audit.reason,
            audit=audit,
        )

    def resume(
        self, destination: str, *, actor: str = "operator", note: str | None = None
    ) -> DestinationState:
        """Deliver to ``destination`` again (after a pause, e.g. a new token)."""
        check_name(destination, "destination")
        audit = attrs.evolve(
            self._audit("resume", actor, note or f"resumed by {actor}"), destination=destination
        )
        return self.queue.set_destination(
            destination, now=self.clock.now(), paused=False, audit=audit
        )

    def edit(
        self,
        delivery_id: str,
        changes: Mapping[str, Any] | None = None,
        *,
        add: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
        actor: str = "operator",
        note: str | None = None,
        retry: bool = False,
        force: bool = False,
    ) -> Delivery:
        """Correct a delivery's payload by hand (the phone number the POS rejected).

        ``changes`` maps *existing* payload paths (``phone``,
        ``customer.phone``, ``lines[2].sku``) to new JSON values (a path that
        is not there is refused, with a "did you mean" for a typo); ``add``
        maps new paths to values; ``remove`` lists paths to delete. One
        ``"edit"`` audit record keeps every old and new value (secrets
        redacted) and both idempotency keys. With ``retry`` the delivery is
        re-synced in the same transaction (``PENDING``, fresh retry budget);
        without it a ``NEEDS_ACTION`` or ``DISCARDED`` delivery stays where it
        is until :meth:`retry`, and a waiting one becomes due now.

        The idempotency key rule: a changed payload is a different request, so
        it gets the *revised* key (the original key plus a hash of the new
        payload; the rule the ``fix_data`` hook follows). Strict APIs treat a
        changed body under the same key as key reuse, lenient ones would
        replay the first response and drop the correction. A new key is only
        safe when the destination is known not to have applied the original:
        every attempt that may have reached it (a timeout, a 5xx, a worker
        that crashed or stalled mid-attempt, an internal error after the
        call) must be followed in the audit trail by a rejection of the same
        payload (``DATA_FORMAT`` or ``MAPPING``). A ``PERMISSION``,
        ``RATE_LIMITED`` or ``DUPLICATE`` refusal proves nothing about an
        earlier attempt (a revoked token is refused before the key is
        looked at; "already exists" may be that earlier attempt, applied).
        Otherwise the edit is refused, naming that attempt, unless ``force``
        is given (check the destination first). The check and the write are
        one step: if the delivery changes in between (a worker claims it,
        another operator acts), nothing is written and the edit says so.

        Editable: ``NEEDS_ACTION``, ``RETRY_SCHEDULED``, ``PENDING``,
        ``DISCARDED``. Raises :class:`DeliveryNotFoundError`, or ``ValueError``
        naming what is wrong (a bad path, a non-JSON value, a state that
        cannot be edited, an edit that changes nothing, an unsafe edit).
        Returns the edited delivery.
        """
        delivery = self.get(delivery_id)
        if delivery.status not in EDITABLE:
            allowed = ", ".join(sorted(s.value for s in EDITABLE))
            raise ValueError(
                f"delivery {delivery_id} is {delivery.status.value}; only {allowed} "
                "deliveries can be edited"
            )
        risk = revision_risk(self.queue.attempts(delivery_id))
        if risk is not None and not force:
            raise ValueError(
                f"delivery {delivery_id}: {risk}, so {delivery.destination} may have applied "
                "the original payload; an edit is sent under a new idempotency key and could "
                "apply it twice. Check the destination, then edit with force (CLI: --force)"
            )
        values = {
            path: check_json(value, f"payload.{path}") for path, value in (changes or {}).items()
        }
        added = {path: check_json(value, f"payload.{path}") for path, value in (add or {}).items()}
        edited = apply_edits(delivery.event.payload, values, remove, added)
        if not edited.changed:
            raise ValueError(f"the edit changes nothing in delivery {delivery_id}")
        try:
            event = check_event(attrs.evolve(delivery.event, payload=edited.payload))
        except InvalidEventError as exc:
            raise ValueError(f"the edited payload is invalid: {exc}") from exc
        key = revised_key(event, delivery.destination)
        reason = f"edited {', '.join(edited.changed)}" + (f": {note}" if note else "")
        audit = self._audit(
            "edit",
            actor,
            reason,
            changed=edited.changed,
            before=edited.before,
            after=edited.after,
            added=edited.added or None,
            removed=edited.removed or None,
            idempotency_key={"before": delivery.idempotency_key, "after": key},
            retry=retry or None,
            forced=(force and risk is not None) or None,
            risk=risk if force else None,
        )
        if retry or delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED):
            to_status = DeliveryStatus.PENDING
        else:
            to_status = delivery.status
        moved = self.queue.transition(
            [delivery_id],
            from_status={delivery.status},
            to_status=to_status,
            audit=audit,
            now=self.clock.now(),
            reset_attempts=retry,
            event=event,
            idempotency_key=key,
            if_unchanged=delivery,
        )
        if not moved:
            current = self.get(delivery_id)
            raise ValueError(
                f"delivery {delivery_id} changed while it was being edited (now "
                f"{current.status.value}, attempt {current.attempts}); nothing was changed, "
                "look again and retry the edit"
            )
        return self.get(delivery_id)

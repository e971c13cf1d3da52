"""What a delivery is waiting for, in words (for the CLI and the admin panel).

Pure: the caller reads the delivery, its destination's state, the delivery
its ordering key is blocked behind (if any) and its idempotency record, and
:func:`waiting_for` says, in order of importance, what stands between the
delivery and its next attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ._format import fmt_ago, fmt_time
from ._model import (
    Delivery,
    DeliveryStatus,
    DestinationState,
    IdempotencyRecord,
    IdempotencyState,
)
from ._runbook import advice_for
from ._text import one_line

__all__ = ["WAITING", "waiting_for"]

#: The statuses in which a delivery waits for a worker (and may be held back).
WAITING = frozenset({DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED})


def _when(when: datetime, now: datetime) -> str:
    return f"{fmt_time(when)} ({fmt_ago(when, now)})"


def _same(value: str) -> str:
    return value


def waiting_for(
    delivery: Delivery,
    *,
    now: datetime,
    destination: DestinationState | None = None,
    blocker: Delivery | None = None,
    key_record: IdempotencyRecord | None = None,
    name: Callable[[str], str] = _same,
    commands: bool = False,
) -> list[str]:
    """What ``delivery`` waits for, most important first (empty when final).

    ``destination`` is its destination's state (paused, held); ``blocker``
    the oldest unfinished delivery of the same destination and ordering key
    submitted before it, when there is one; ``key_record`` what the
    idempotency store holds for its key. ``name`` shows a delivery id (the
    CLI shortens it); ``commands`` adds the ``resilient-sync`` command that
    helps, where there is one.
    """
    d = delivery
    status = d.status
    if status.is_final:
        return []
    if status is DeliveryStatus.NEEDS_ACTION:
        error = d.last_error
        if error is None:
            return ["a person: re-sync, resolve or discard it"]
        return [f"a person: {advice_for(error.category).action}"]
    if status is DeliveryStatus.IN_FLIGHT:
        owner = one_line(d.lease_owner or "a worker")
        if d.lease_expires_at is not None and d.lease_expires_at <= now:
            expired = _when(d.lease_expires_at, now)
            return [f"{owner} claimed it, but the lease ran out at {expired}; it is claimed again"]
        until = f" until {_when(d.lease_expires_at, now)}" if d.lease_expires_at else ""
        return [f"{owner} is delivering it now (leased{until})"]
    reasons: list[str] = []
    dest = d.destination
    if destination is not None and destination.paused:
        why = one_line(destination.paused_reason or "no reason given")
        hint = f" (resilient-sync resume {dest})" if commands else ""
        reasons.append(
            f"destination {dest} to be resumed: it is paused ({why}); an operator resumes it "
            f"once the cause is fixed{hint}"
        )
    if (
        destination is not None
        and destination.hold_until is not None
        and destination.hold_until > now
    ):
        why = one_line(destination.hold_reason or "held back")
        reasons.append(
            f"destination {dest} is held back until {_when(destination.hold_until, now)}: "
            f"{why} (it resumes by itself)"
        )
    if blocker is not None:
        key = one_line(d.ordering_key or "")
        if blocker.status is DeliveryStatus.NEEDS_ACTION:
            which = "which needs action: a person must re-sync, resolve or discard it first"
        elif blocker.status is DeliveryStatus.IN_FLIGHT:
            which = "which is being delivered"
        else:
            which = f"which is {blocker.status.value}"
        hint = f"; see: resilient-sync show {name(blocker.id)}" if commands else ""
        reasons.append(
            f"blocked behind {name(blocker.id)}, {which} (same ordering key {key!r}{hint})"
        )
    if (
        key_record is not None
        and key_record.state is IdempotencyState.IN_PROGRESS
        and key_record.locked_until is not None
        and key_record.locked_until > now
    ):
        reasons.append(
            f"another attempt holds its idempotency key until {_when(key_record.locked_until, now)}"
        )
    if d.next_attempt_at is not None and d.next_attempt_at > now:
        after = ""
        if d.last_error is not None:
            after = f" after a {d.last_error.category.value} error"
        reasons.append(f"due at {_when(d.next_attempt_at, now)}: the next retry{after}")
    if not reasons:
        reasons.append(
            "a worker: it is due now and the next worker run delivers it (if it stays here, "
            "check that a worker serving this destination is running)"
        )
    return reasons

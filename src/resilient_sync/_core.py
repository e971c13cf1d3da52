"""The I/O-free core shared by ``Dispatcher`` and ``AsyncDispatcher``.

One delivery attempt is a generator (:func:`delivery_flow`) that *yields*
calls it needs made (``deliver``, a hook, an idempotency check) and receives
their outcomes; it decides everything (classification, hooks, retry schedule,
pause) and returns a :class:`FlowResult`. The sync dispatcher drives it with
plain calls, the async one awaits; neither decides anything on its own.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import attrs

from ._classify import Classifier, clean_error
from ._errors import InvalidEventError, SyncError
from ._json import check_event, check_json, compact_dumps, fingerprint
from ._model import (
    Attempt,
    Completion,
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    ErrorCategory,
    ErrorInfo,
    Event,
    IdempotencyRecord,
    IdempotencyState,
)
from ._policy import RetryDecision, RetryPolicy, decide_retry, is_retryable
from ._text import MAX_RESULT_BYTES, MAX_TEXT, clean, clean_json, cut, one_line, safe_str

__all__ = [
    "Call",
    "FlowEnv",
    "FlowResult",
    "Outcome",
    "base_key",
    "delivery_flow",
    "new_delivery",
    "released",
]

_KEY_NAMESPACE = uuid.UUID("8d0c52f4-5d0b-4c1e-9d55-2f7f6b3f9a11")
#: How many corrected events a ``fix_data`` hook may produce in one claim.
MAX_FIXES = 3
#: Cap of an audit record's ``details`` value (bytes of JSON, per entry).
_MAX_DETAILS = 4_096
#: A ``resolve_duplicate`` hook failing with these is retried (or pauses the
#: destination) like a failed attempt, instead of parking the delivery.
_PASSING = frozenset(
    {ErrorCategory.TRANSIENT, ErrorCategory.RATE_LIMITED, ErrorCategory.PERMISSION}
)


def reworded(error: ErrorInfo, prefix: str, suffix: str = "") -> ErrorInfo:
    """``error`` with its message between ``prefix`` and ``suffix``, the message
    cut so that the whole stays within ``MAX_TEXT``."""
    room = max(0, MAX_TEXT - len(prefix) - len(suffix))
    return attrs.evolve(error, message=f"{prefix}{cut(error.message, room)}{suffix}")


def base_key(event: Event, destination: str) -> str:
    """The idempotency key of an event's original payload at a destination.

    The event's own ``idempotency_key`` when set, else a UUID derived from
    the destination and the event id: stable across retries, reclaims and
    operator re-syncs, and across processes.
    """
    if event.idempotency_key:
        return event.idempotency_key
    return _uuid5(f"{destination}\x00{event.id}")


_KEY_PREFIX = _KEY_NAMESPACE.bytes


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_KEY_NAMESPACE, name))``, without building UUID objects."""
    h = hashlib.sha1(_KEY_PREFIX + name.encode(), usedforsecurity=False).hexdigest()
    variant = "89ab"[int(h[16], 16) & 0x3]
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def store_key(destination: str, key: str) -> str:
    """The key under which the idempotency store remembers ``key``.

    Namespaced by destination: an event given its own ``idempotency_key``
    and sent to two destinations is delivered to each, not replayed from the
    other's record.
    """
    return f"{destination}\x1f{key}"


def revised_key(event: Event, destination: str) -> str:
    """The key for a corrected payload: the base key plus the payload's hash.

    A corrected payload is a different request; sending it under the original
    key would look like key reuse to strict APIs (Stripe), and the original
    request was rejected (4xx), so no effect can be doubled. The same
    correction always gives the same key.
    """
    return f"{base_key(event, destination)}:{fingerprint(event)[:16]}"


def new_id() -> str:
    """A 32-hex-digit id that sorts by creation time (48 bits of milliseconds,
    then 80 random bits, as UUIDv7 does): SQL stores insert it at the end of
    their index instead of at a random page."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def new_delivery(event: Event, destination: str, now: datetime) -> Delivery:
    """A fresh ``PENDING`` delivery (the store assigns ``seq``)."""
    return Delivery(
        id=new_id(),
        event=event,
        destination=destination,
        status=DeliveryStatus.PENDING,
        idempotency_key=base_key(event, destination),
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


def released(delivery: Delivery, now: datetime) -> Completion:
    """Hand a claimed delivery back unattempted (its claim costs no attempt).

    It becomes ``PENDING`` and due at once; the claim skips it while its
    destination is paused or held.
    """
    return Completion(
        delivery_id=delivery.id,
        lease_token=delivery.lease_token,
        status=DeliveryStatus.PENDING,
        finished_at=now,
        next_attempt_at=now,
        count_attempt=False,
        audit=(),
    )


# Call, Outcome and FlowResult are made per delivery and never changed after:
# plain slotted classes (attrs.define), whose __init__ assigns the slots
# directly, where a frozen class's goes through object.__setattr__ per field
# (twice the time for these small values).


@attrs.define
class Call:
    """A call the flow needs made: ``deliver``, ``find_existing``,
    ``resolve_duplicate``, ``fix_data`` (on the destination), ``idempotency_begin``, or
    ``budget_start`` (when the operator last gave the delivery a fresh
    retry budget, from its audit trail; None if never)."""

    kind: Literal[
        "deliver",
        "find_existing",
        "resolve_duplicate",
        "fix_data",
        "idempotency_begin",
        "budget_start",
    ]
    args: tuple[Any, ...]


@attrs.define
class Outcome:
    """The result of a :class:`Call`: a value or the exception it raised."""

    value: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.frozen(kw_only=True)
class FlowEnv:
    """What a flow needs to decide: configuration and a clock reading."""

    policy: RetryPolicy
    classifier: Classifier
    now: Callable[[], datetime]
    actor: str
    lease_until: datetime
    has_resolve_duplicate: bool
    has_fix_data: bool
    has_find_existing: bool = False
    max_result_bytes: int = MAX_RESULT_BYTES
    #: the destination's own secret values (its token, API key): never stored
    secrets: tuple[str, ...] = ()


@attrs.define(kw_only=True)
class FlowResult:
    """What one flow decided."""

    completion: Completion
    #: (store key, fingerprint, result) to mark completed in the idempotency store
    finish: tuple[str, str, Any] | None = None
    #: keys this flow took in the idempotency store (released unless finished)
    taken: tuple[str, ...] = ()
    #: pause the destination (PERMISSION), with this reason
    pause: str | None = None
    #: hold the whole destination back until then (RATE_LIMITED)
    hold_until: datetime | None = None
    hold_reason: str | None = None
    #: the audit action of the hold: ``"rate_limited"`` or ``"circuit_open"``
    hold_action: str = "rate_limited"
    #: something the dispatcher should log as a warning (a result it had to change)
    warning: str | None = None


def _safe_classify(
    classifier: Classifier, exc: Exception, secrets: tuple[str, ...] = ()
) -> ErrorInfo:
    """Classify ``exc``; whatever the classifier does or returns, the result is
    an :class:`ErrorInfo` whose texts passed the gate (and ``secrets``, the
    destination's own, are redacted)."""
    try:
        return clean_error(classifier.classify(exc), secrets=secrets)
    except Exception as rule_error:  # noqa: BLE001 - a user rule failed: report both errors
        return ErrorInfo(
            category=ErrorCategory.UNEXPECTED,
            message=clean(
                f"{type(exc).__name__}: {safe_str(exc)} (and the classifier failed on it: "
                f"{type(rule_error).__name__}: {safe_str(rule_error)})",
                secrets=secrets,
            ),
            exception_type=one_line(type(exc).__name__),
        )


def _sent_nothing(exc: BaseException | None) -> bool:
    """Whether an error says nothing reached the destination (``sent=False``)."""
    return isinstance(exc, SyncError) and getattr(exc, "sent", None) is False


def _error_details(exc: BaseException | None, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``details`` a :class:`SyncError` carries, through the gate, for its audit record."""
    details = getattr(exc, "details", None) if isinstance(exc, SyncError) else None
    if not details:
        return {}
    value, _ = clean_json(details, path="details", limit=_MAX_DETAILS, secrets=secrets)
    return {"error_details": value}


def _stored_result(value: Any, env: FlowEnv) -> tuple[Any, str | None]:
    """A destination's result as stored (through the gate), and a reason when it
    had to change (not JSON, unencodable text, too big)."""
    if value is None:
        return None, None
    result, notes = clean_json(
        value, path="result", limit=env.max_result_bytes, secrets=env.secrets
    )
    if not notes:
        return result, None
    return result, clean(
        "delivered, but the result had to be changed to be stored: " + "; ".join(notes)
    )


def audit_details(**values: Any) -> dict[str, Any]:
    """Audit ``details`` through the gate (payload values of an edit, hook
    outputs): secrets under secret-looking keys redacted, capped."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        out[name], _ = clean_json(value, path=name, limit=_MAX_DETAILS)
    return out


def _preview(value: Any) -> str:
    return clean(compact_dumps(value), limit=80, single_line=True)


def handed_copy(event: Event) -> Event:
    """The copy a destination or hook receives: changing its payload in place
    cannot change the queued event (as with a durable store)."""
    return Event(
        event.id,
        event.type,
        _json_copy(event.payload),
        event.ordering_key,
        event.idempotency_key,
        event.occurred_at,
        _json_copy(dict(event.metadata)),
    )


def _json_copy(value: Any) -> Any:
    """A deep copy of checked JSON data (dicts and lists are copied, the rest
    is immutable); several times faster than ``copy.deepcopy`` on the hot path."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return value
    return copy.deepcopy(value)  # not JSON (enqueued without submit()): copy it anyway


def _changed_paths(old: Any, new: Any, path: str = "payload") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out.extend(_changed_paths(old.get(key), new.get(key), f"{path}.{key}"))
        return out
    return [] if old == new else [path]


def delivery_flow(
    delivery: Delivery, begun: IdempotencyRecord, env: FlowEnv, fp: str | None = None
) -> Generator[Call, Outcome, FlowResult]:
    """Decide one claimed delivery: idempotency -> deliver -> classify -> next step.

    ``fp`` is the event's fingerprint when the caller already computed it.
    """
    event = delivery.event
    key = delivery.idempotency_key
    if fp is None:
        fp = fingerprint(event)
    record = begun
    audit: list[dict[str, Any]] = []
    taken: list[str] = []
    fixes = 0
    corrected = False
    looked = not env.has_find_existing

    def note(action: str, started: datetime, **kw: Any) -> None:
        kw.update(action=action, started_at=started, finished_at=env.now())
        audit.append(kw)

    def done(
        status: DeliveryStatus,
        *,
        error: ErrorInfo | None = None,
        result: Any = None,
        next_attempt_at: datetime | None = None,
        finish: tuple[str, str, Any] | None = None,
        count_attempt: bool = True,
        warning: str | None = None,
        **extra: Any,
    ) -> FlowResult:
        if audit:
            audit[-1]["outcome"] = status
            finished_at = audit[-1]["finished_at"]
        else:
            finished_at = env.now()
        records = [
            Attempt(
                delivery_id=delivery.id,
                destination=delivery.destination,
                actor=env.actor,
                number=delivery.attempts,
                **kw,
            )
            for kw in audit
        ]
        return FlowResult(
            completion=Completion(
                delivery_id=delivery.id,
                lease_token=delivery.lease_token,
                status=status,
                finished_at=finished_at,
                next_attempt_at=next_attempt_at,
                error=error,
                result=result,
                event=event if corrected else None,
                idempotency_key=key if corrected else None,
                count_attempt=count_attempt,
                audit=tuple(records),
            ),
            finish=finish,
            taken=tuple(taken),
            warning=warning,
            **extra,
        )

    while True:
        started = env.now()
        if record.state is IdempotencyState.COMPLETED:
            note(
                "replay",
                started,
                reason="already delivered under this idempotency key; the stored result is reused",
            )
            return done(DeliveryStatus.SUCCEEDED, result=record.result)
        if record.state is IdempotencyState.MISMATCH:
            error = ErrorInfo(
                category=ErrorCategory.UNEXPECTED,
                message=(
                    f"idempotency key {key!r} was already completed with a different payload; "
                    "give the event its own idempotency_key"
                ),
            )
            note("deliver", started, reason=error.message, error=error)
            return done(DeliveryStatus.NEEDS_ACTION, error=error)
        if record.state is IdempotencyState.IN_PROGRESS:
            # another worker is delivering this key right now: try again after its lock
            return done(
                DeliveryStatus.PENDING,
                next_attempt_at=record.locked_until or env.now() + timedelta(seconds=1),
                count_attempt=False,
            )
        taken.append(store_key(delivery.destination, key))
        if delivery.attempts > env.policy.max_attempts:
            # the budget went on claims that never recorded an outcome (a poison
            # event that kills its worker): stop here instead of crashing forever
            error = ErrorInfo(
                category=ErrorCategory.UNEXPECTED,
                message=(
                    f"retries exhausted: {delivery.attempts - 1} attempts, the last without "
                    "a recorded outcome (the worker crashed or stalled); not attempted again"
                ),
            )
            note("give_up", started, reason=error.message, error=error)
            return done(DeliveryStatus.NEEDS_ACTION, error=error, count_attempt=False)

        context = DeliveryContext(
            delivery_id=delivery.id,
            destination=delivery.destination,
            idempotency_key=key,
            attempt=delivery.attempts,
            lease_expires_at=env.lease_until,
        )
        if not looked:
            # look before you create: a record the destination already holds
            # (the same customer by e-mail) is linked to instead of created again
            looked = True
            found = yield Call("find_existing", (handed_copy(event), context))
            if found.ok and found.value is not None:
                try:  # a link is a decision, not an effect: a value that is not JSON is refused
                    check_json(found.value, "result")
                except InvalidEventError as exc:
                    found = Outcome(error=exc)
            if found.ok and found.value is not None:
                linked, warning = _stored_result(found.value, env)
                note(
                    "find_existing",
                    started,
                    reason=(
                        "linked to an existing record found before creating one: "
                        f"{_preview(linked)}" + (f"; {warning}" if warning else "")
                    ),
                )
                return done(
                    DeliveryStatus.SUCCEEDED,
                    result=linked,
                    finish=(store_key(delivery.destination, key), fp, linked),
                    warning=warning,
                )
            if not found.ok:
                lookup_error = _safe_classify(env.classifier, found.error, env.secrets)  # type: ignore[arg-type]
                lookup_error = reworded(lookup_error, "find_existing failed: ")
                note("find_existing", started, reason=lookup_error.message, error=lookup_error)
                return (yield from _retry_or_park(done, env, delivery, lookup_error))
            note("find_existing", started, reason="no existing record; creating it")
            started = env.now()
        # a corrected event is also what gets stored: hand the destination a copy
        outcome = yield Call("deliver", (handed_copy(event) if corrected else event, context))
        if outcome.error is None:
            result, reason = _stored_result(outcome.value, env)
            note("deliver", started, reason=reason)
            return done(
                DeliveryStatus.SUCCEEDED,
                result=result,
                finish=(store_key(delivery.destination, key), fp, result),
                warning=reason,
            )

        error = _safe_classify(env.classifier, outcome.error, env.secrets)
        if error.category is ErrorCategory.RATE_LIMITED and _sent_nothing(outcome.error):
            # refused on our side (a client-side rate limit): nothing reached the
            # destination, so no attempt is spent; wait as long as it says
            now = env.now()
            wait = min(
                error.retry_after if error.retry_after is not None else env.policy.initial_delay,
                env.policy.max_retry_after,
            )
            until = now + timedelta(seconds=wait)
            note(
                "deliver",
                started,
                reason=f"{error.message} (nothing was sent)",
                error=error,
                details={"sent": False},
            )
            return done(
                DeliveryStatus.RETRY_SCHEDULED,
                error=error,
                next_attempt_at=until,
                count_attempt=False,
                hold_until=until,
                hold_reason=f"rate limited: {error.message}",
            )
        note(
            "deliver",
            started,
            reason=error.message,
            error=error,
            details=_error_details(outcome.error, env.secrets),
        )

        if error.category is ErrorCategory.DUPLICATE and env.has_resolve_duplicate:
            started = env.now()
            hook = yield Call("resolve_duplicate", (handed_copy(event), outcome.error))
            if hook.ok and hook.value is not None:
                try:  # a link is a decision, not an effect: a value that is not JSON is refused
                    check_json(hook.value, "result")
                except InvalidEventError as exc:
                    hook = Outcome(error=exc)
            if hook.ok and hook.value is not None:
                linked, warning = _stored_result(hook.value, env)
                note(
                    "resolve_duplicate",
                    started,
                    reason=f"linked to the existing record: {_preview(linked)}"
                    + (f"; {warning}" if warning else ""),
                )
                return done(
                    DeliveryStatus.SUCCEEDED,
                    result=linked,
                    finish=(store_key(delivery.destination, key), fp, linked),
                    warning=warning,
                )
            if hook.ok:
                note("resolve_duplicate", started, reason="no existing record to link to")
                error = reworded(error, "potential duplicate: ")
            else:
                hook_error = _safe_classify(env.classifier, hook.error, env.secrets)  # type: ignore[arg-type]
                note("resolve_duplicate", started, reason=hook_error.message, error=hook_error)
                if hook_error.category in _PASSING:
                    # the lookup failed for a passing reason (a 503, a 429, a revoked token):
                    # retry (or pause) as for a failed attempt; nobody has decided anything yet
                    return (yield from _retry_or_park(done, env, delivery, hook_error))
                error = reworded(
                    error,
                    "potential duplicate: ",
                    f" (resolve_duplicate failed: {cut(hook_error.message, MAX_TEXT // 2)})",
                )
            return done(DeliveryStatus.NEEDS_ACTION, error=error)

        if error.category is ErrorCategory.DUPLICATE:
            error = reworded(error, "potential duplicate: ")

        if error.category is ErrorCategory.DATA_FORMAT and env.has_fix_data and fixes < MAX_FIXES:
            started = env.now()
            hook = yield Call("fix_data", (handed_copy(event), outcome.error))
            fixed: Event | None = None
            if hook.ok and hook.value is not None:
                try:
                    if not isinstance(hook.value, Event):
                        kind = type(hook.value).__name__
                        raise InvalidEventError(
                            f"fix_data must return an Event or None, got {kind}"
                        )
                    fixed = check_event(hook.value)
                    if fixed.id != event.id:
                        raise InvalidEventError(
                            f"fix_data changed the event id from {event.id!r} to {fixed.id!r}",
                            field="id",
                        )
                    if fingerprint(fixed) == fp:
                        raise InvalidEventError("fix_data returned the event unchanged")
                except InvalidEventError as exc:
                    hook = Outcome(error=exc)
                    fixed = None
            if fixed is not None:
                fixes += 1
                changed = _changed_paths(event.payload, fixed.payload)
                new_key = revised_key(fixed, delivery.destination)
                note(
                    "fix_data",
                    started,
                    reason=clean(
                        f"corrected {', '.join(changed) or 'the event'}; retrying at once"
                    ),
                    details=audit_details(
                        changed=changed,
                        before={p: _at(event.payload, p) for p in changed},
                        after={p: _at(fixed.payload, p) for p in changed},
                        idempotency_key=new_key,
                    ),
                )
                event, key, fp, corrected = fixed, new_key, fingerprint(fixed), True
                begun_outcome = yield Call(
                    "idempotency_begin", (store_key(delivery.destination, key), fp)
                )
                if not begun_outcome.ok:
                    store_error = _safe_classify(env.classifier, begun_outcome.error, env.secrets)  # type: ignore[arg-type]
                    return (yield from _retry_or_park(done, env, delivery, store_error))
                record = begun_outcome.value
                continue
            if hook.ok:
                note("fix_data", started, reason="no correction offered")
            else:
                hook_error = _safe_classify(env.classifier, hook.error, env.secrets)  # type: ignore[arg-type]
                note("fix_data", started, reason=hook_error.message, error=hook_error)

        return (yield from _retry_or_park(done, env, delivery, error))


#: Operator actions that give a delivery a fresh retry budget (attempts and deadline).
BUDGET_RESETS = frozenset({"retry", "edit"})


def _retry_or_park(
    done: Callable[..., FlowResult], env: FlowEnv, delivery: Delivery, error: ErrorInfo
) -> Generator[Call, Outcome, FlowResult]:
    if is_retryable(error.category, env.policy):
        now = env.now()

        def decide(budget_start: datetime) -> RetryDecision:
            return decide_retry(
                env.policy,
                attempts=delivery.attempts,
                created_at=budget_start,
                now=now,
                retry_after=error.retry_after,
            )

        decision = decide(delivery.created_at)
        if decision.retry_at is None and delivery.attempts < env.policy.max_attempts:
            # The deadline ran out. It counts from submission, or from the
            # operator's last re-sync (which gives a fresh budget): look that
            # up only now, on this rare path, in the delivery's audit trail.
            since = yield Call("budget_start", (delivery.id,))
            if since.error is not None:
                error = attrs.evolve(
                    error,
                    message=(
                        f"{error.message} (could not read the audit trail to see whether an "
                        f"operator re-synced it: {type(since.error).__name__}: {since.error})"
                    ),
                )
            elif since.value is not None and since.value > delivery.created_at:
                decision = decide(since.value)
        if decision.retry_at is not None:
            extra: dict[str, Any] = {}
            if error.category is ErrorCategory.RATE_LIMITED:
                wait = (
                    error.retry_after if error.retry_after is not None else env.policy.initial_delay
                )
                wait = min(max(wait, 0.0), env.policy.max_retry_after)
                extra = {
                    "hold_until": now + timedelta(seconds=wait),
                    "hold_reason": f"rate limited: {error.message}",
                }
            return done(
                DeliveryStatus.RETRY_SCHEDULED,
                error=error,
                next_attempt_at=decision.retry_at,
                **extra,
            )
        error = reworded(error, f"{decision.reason}; last error: ")
        return done(DeliveryStatus.NEEDS_ACTION, error=error)
    if error.category is ErrorCategory.PERMISSION:
        return done(
            DeliveryStatus.NEEDS_ACTION,
            error=error,
            pause=f"permission denied: {error.message}",
        )
    return done(DeliveryStatus.NEEDS_ACTION, error=error)


def internal_failure(
    delivery: Delivery,
    record: IdempotencyRecord | None,
    exc: BaseException,
    *,
    policy: RetryPolicy,
    now: datetime,
    actor: str,
    retry: bool = True,
    sent: bool | None = None,
) -> FlowResult:
    """The outcome of a failure outside the destination (a store, a bug) while
    deciding one delivery: UNEXPECTED, audited as ``"internal_error"``, retried
    under the policy (or parked at once with ``retry=False``, when retrying
    cannot help); the idempotency key is released if it was taken. ``sent``
    says whether the destination was called (None: unknown), for the rule
    that decides whether an edit may revise the key."""
    error = ErrorInfo(
        category=ErrorCategory.UNEXPECTED,
        message=clean(
            f"internal error while processing the delivery: {type(exc).__name__}: {safe_str(exc)}"
        ),
        exception_type=one_line(f"{type(exc).__module__}.{type(exc).__qualname__}"),
    )
    decision = decide_retry(
        policy, attempts=delivery.attempts, created_at=delivery.created_at, now=now
    )
    status = DeliveryStatus.RETRY_SCHEDULED
    if not retry:
        status = DeliveryStatus.NEEDS_ACTION
        error = reworded(error, "not retried: ")
    elif decision.retry_at is None:
        status = DeliveryStatus.NEEDS_ACTION
        error = reworded(error, f"{decision.reason}; last error: ")
    audit = Attempt(
        delivery_id=delivery.id,
        destination=delivery.destination,
        action="internal_error",
        actor=actor,
        started_at=now,
        finished_at=now,
        number=delivery.attempts,
        outcome=status,
        reason=error.message,
        error=error,
        details={} if sent is None else {"destination_called": sent},
    )
    return FlowResult(
        completion=Completion(
            delivery_id=delivery.id,
            lease_token=delivery.lease_token,
            status=status,
            finished_at=now,
            next_attempt_at=decision.retry_at if status is DeliveryStatus.RETRY_SCHEDULED else None,
            error=error,
            audit=(audit,),
        ),
        taken=(record.key,) if record is not None and record.state is IdempotencyState.NEW else (),
    )


#: Errors that mean the destination refused *this* request (nothing applied).
NOT_APPLIED = frozenset(
    {
        ErrorCategory.DATA_FORMAT,
        ErrorCategory.MAPPING,
        ErrorCategory.DUPLICATE,
        ErrorCategory.PERMISSION,
        ErrorCategory.RATE_LIMITED,
    }
)
#: Refusals that judge the payload itself, so they also prove that an earlier
#: attempt of the same payload with an unknown outcome was not applied. A 401,
#: a 429 or a 409 do not: an API refuses a revoked token or a burst before it
#: looks at the idempotency key, and "already exists" may be our own first
#: attempt, applied.
REJECTED = frozenset({ErrorCategory.DATA_FORMAT, ErrorCategory.MAPPING})


def revision_risk(records: Sequence[Attempt]) -> str | None:
    """Why the idempotency key of a delivery may *not* be revised (its payload
    edited and sent under a new key), from its audit trail (oldest first);
    None when it may.

    A revision is safe only if no attempt that may have reached the
    destination is left unanswered by a rejection of the same payload:
    walking the trail, an attempt with an unknown outcome (a transient or
    unexpected error, a lease that expired mid-attempt, a give-up after
    crashed attempts, an internal error after the call) makes it unsafe; a
    later DATA_FORMAT or MAPPING rejection (``REJECTED``: the payload itself
    was refused) or an operator's edit (checked, or forced, when it was made)
    makes it safe again. Refusals that do not judge the payload (PERMISSION,
    RATE_LIMITED, DUPLICATE) change nothing either way.
    """
    risk: str | None = None
    for record in records:
        action = record.action
        if action == "deliver":
            error = record.error
            if error is None:
                risk = f"attempt {record.number} was delivered"
            elif error.category in REJECTED:
                risk = None
            elif error.category not in NOT_APPLIED:
                risk = (
                    f"attempt {record.number} failed with a {error.category.value} error "
                    f"({clean(error.message, limit=120, single_line=True)})"
                )
        elif action in ("lease_expired", "give_up"):
            risk = (
                f"attempt {record.number} has no recorded outcome (its worker crashed or "
                "stalled after claiming it)"
            )
        elif action == "internal_error":
            if record.details.get("destination_called") is not False:
                risk = f"attempt {record.number} ended in an internal error"
        elif action == "edit":
            risk = None
    return risk


def budget_start(records: Sequence[Attempt]) -> datetime | None:
    """When an operator last re-synced a delivery (its audit trail, oldest first)."""
    for record in reversed(records):
        if (
            record.action in BUDGET_RESETS
            and record.outcome is DeliveryStatus.PENDING
            and record.number == 0  # the action reset the attempts: a fresh budget
        ):
            return record.finished_at
    return None


def _at(payload: Any, path: str) -> Any:
    value = payload
    for part in path.split(".")[1:]:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value

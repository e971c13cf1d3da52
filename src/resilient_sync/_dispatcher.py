"""The dispatcher: moves deliveries from the queue store to destinations.

``Dispatcher`` (threads) and ``AsyncDispatcher`` (asyncio) are hand-written
twins over :class:`_BaseDispatcher`, which holds the configuration and every
step that does no I/O; the decisions themselves live in ``_core.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import attrs

from ._circuit import CircuitBreaker, Circuits
from ._classify import Classifier
from ._clock import DatabaseClock, SystemClock, duration
from ._core import (
    Call,
    FlowEnv,
    FlowResult,
    Outcome,
    budget_start,
    delivery_flow,
    internal_failure,
    released,
    store_key,
)
from ._errors import RetryableError, StoreError
from ._json import check_name, fingerprint
from ._model import (
    Attempt,
    Completion,
    Delivery,
    DeliveryStatus,
    DispatchEvent,
    ErrorCategory,
    Event,
    IdempotencyRecord,
    IdempotencyState,
    RunReport,
)
from ._policy import RetryPolicy
from ._protocols import Clock, Destination, IdempotencyStore, QueueStore, Source
from ._submit import Submitted, _Submitter, _SyncSubmitting, _tx
from ._text import MAX_RESULT_BYTES, get_logger, safe_str

__all__ = ["AsyncDispatcher", "Dispatcher"]

logger = get_logger("resilient_sync")

#: Called with each delivery that just entered NEEDS_ACTION (may be ``async``
#: with the AsyncDispatcher).
NeedsActionHook = Callable[[Delivery], Any]
#: Called with every DispatchEvent (metrics, tracing); must be quick and not raise.
EventHook = Callable[[DispatchEvent], None]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


#: The longest an idle worker waits before it looks at its stop event again.
_STOP_CHECK = 0.5

#: The ``extra`` fields of every per-delivery log record (a stable set, for
#: structured handlers): None where not applicable.
LOG_FIELDS = ("delivery_id", "event_id", "destination", "attempt", "status", "category")


def _log_fields(delivery: Delivery, completion: Completion | None = None) -> dict[str, Any]:
    """The :data:`LOG_FIELDS` of a delivery (after ``completion``, when given)."""
    error = completion.error if completion is not None else delivery.last_error
    status = completion.status if completion is not None else delivery.status
    return {
        "delivery_id": delivery.id,
        "event_id": delivery.event.id,
        "destination": delivery.destination,
        "attempt": delivery.attempts,
        "status": status.value,
        "category": error.category.value if error is not None else None,
    }


def _secrets_of(destination: Destination) -> tuple[str, ...]:
    """The strings a destination declares secret (``secrets``: its token, API
    key ...), longest first; never stored, logged or shown."""
    declared = getattr(destination, "secrets", None)
    if not declared or isinstance(declared, str):
        return (declared,) if isinstance(declared, str) and len(declared) >= 4 else ()
    values = {s for s in declared if isinstance(s, str) and len(s) >= 4}
    return tuple(sorted(values, key=len, reverse=True))


def _default_clock(clock: Clock | None, queue: QueueStore) -> Clock:
    """The clock given, or the system clock; the database's (``DatabaseClock``)
    when the store has one (``database_time()``, PostgreSQL), so that workers
    on several machines judge leases by one clock."""
    if clock is not None and type(clock) is not SystemClock:
        return clock
    source = getattr(queue, "database_time", None)
    if callable(source):
        return DatabaseClock(source)
    return clock if clock is not None else SystemClock()


class _Heartbeat:
    """Keeps the leases of a dispatcher's running deliveries alive.

    While a batch runs, a daemon thread moves the lease end of its deliveries
    to ``now + lease`` every third of the lease (``extend_leases``, fenced by
    the lease token), so a delivery that takes longer than its lease is not
    claimed by another worker meanwhile; the batch's idempotency locks move
    with them (``extend_locks``, fenced by the lock end they were taken
    with), so another delivery under the same key is not sent meanwhile
    either. Only with a real clock and a store that can extend leases; a
    ``FakeClock`` test drives leases by hand.
    """

    def __init__(self, dispatcher: _BaseDispatcher) -> None:
        self._dispatcher = dispatcher
        extend = getattr(dispatcher.queue, "extend_leases", None)
        self._extend = extend if callable(extend) else None
        extend_locks = getattr(dispatcher.idempotency, "extend_locks", None)
        self._extend_locks = extend_locks if callable(extend_locks) else None
        self._on = self._extend is not None and isinstance(dispatcher.clock, SystemClock)
        self._held: dict[str, int] = {}
        #: a batch's lock end when claimed -> (its keys, their lock end now)
        self._locks: dict[datetime, tuple[list[str], datetime]] = {}
        self._lock = threading.Lock()
        self._tick = threading.Lock()  # held while a beat writes to the stores
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # every third of the lease (a short lease gets a fast beat, never one
        # as long as the lease itself)
        self.interval = max(0.05, dispatcher.lease.total_seconds() / 3)

    def hold(self, deliveries: Sequence[Delivery], keys: Sequence[str] = ()) -> None:
        """Keep ``deliveries`` (one claimed batch) and the idempotency ``keys``
        it locked alive until :meth:`drop`."""
        if not self._on or not deliveries:
            return
        with self._lock:
            for d in deliveries:
                self._held[d.id] = d.lease_token
            taken = deliveries[0].lease_expires_at
            if keys and taken is not None and self._extend_locks is not None:
                self._locks[taken] = (list(keys), taken)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="resilient-sync-heartbeat", daemon=True
                )
                self._thread.start()

    def lock_end(self, taken: datetime | None) -> datetime | None:
        """Stop extending the locks of the batch claimed with lease end
        ``taken`` and return their lock end now: the fence its ``release``
        must name (waits for a beat in progress)."""
        if taken is None:
            return None
        with self._tick, self._lock:
            found = self._locks.pop(taken, None)
        return found[1] if found is not None else taken

    def drop(self, deliveries: Sequence[Delivery]) -> None:
        if not self._on:
            return
        with self._lock:
            for d in deliveries:
                self._held.pop(d.id, None)
            if deliveries:
                self._locks.pop(deliveries[0].lease_expires_at, None)  # type: ignore[arg-type]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._tick:
                self._beat()

    def _beat(self) -> None:
        with self._lock:
            leases = list(self._held.items())
            locks = list(self._locks.items())
        if not leases or self._extend is None:
            return
        until = self._dispatcher.clock.now() + self._dispatcher.lease
        try:
            self._extend(leases, until=until)
        except Exception:
            logger.exception("could not extend the leases of %d running deliveries", len(leases))
            return  # the locks keep their end: they must not outlive the leases
        if self._extend_locks is None:
            return
        for taken, (keys, current) in locks:
            try:
                self._extend_locks(keys, locked_until=current, until=until)
            except Exception:
                logger.exception("could not extend %d idempotency locks", len(keys))
                continue
            with self._lock:
                if taken in self._locks:
                    self._locks[taken] = (keys, until)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)


class _Batch:
    """One claimed batch on its way through a dispatcher."""

    __slots__ = ("broken", "claimed", "entries", "fingerprints", "records")

    def __init__(self, claimed: Sequence[Delivery]) -> None:
        self.claimed = claimed
        #: ``(store key, fingerprint)`` of each delivery that is not broken
        self.entries: list[tuple[str, str]] = []
        #: per delivery ("" for a broken one)
        self.fingerprints: list[str] = []
        #: index -> why its stored event cannot be processed
        self.broken: dict[int, Exception] = {}
        #: per delivery, what the idempotency store said (None for a broken one)
        self.records: list[IdempotencyRecord | None] = []


class _FlowCrash:
    """A flow that raised (a bug): the error, and whether ``deliver`` was called."""

    __slots__ = ("error", "sent")

    def __init__(self, error: Exception, sent: bool) -> None:
        self.error = error
        self.sent = sent


class _BaseDispatcher(_Submitter):
    """Configuration and the I/O-free steps shared by both dispatchers."""

    def __init__(
        self,
        queue: QueueStore,
        idempotency: IdempotencyStore,
        destinations: Destination | Iterable[Destination] | Mapping[str, Destination],
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        *,
        classifier: Classifier | None = None,
        batch_size: int = 100,
        concurrency: int = 1,
        lease: float | timedelta = 300.0,
        idempotency_ttl: float | timedelta = timedelta(days=30),
        poll_interval: float | timedelta = 1.0,
        worker_id: str | None = None,
        on_needs_action: NeedsActionHook | None = None,
        circuit: CircuitBreaker | None = None,
        on_event: EventHook | None = None,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        if isinstance(destinations, Mapping):
            items = list(destinations.items())
        elif isinstance(destinations, Iterable) and not callable(
            getattr(destinations, "deliver", None)
        ):
            items = [(getattr(d, "name", None), d) for d in destinations]
        else:  # one destination on its own
            items = [(getattr(destinations, "name", None), destinations)]
        self.destinations: dict[str, Destination] = {}
        for name, dest in items:
            if not isinstance(name, str) or not name:
                raise ValueError(f"destination {dest!r} needs a non-empty str name")
            check_name(name, "destination name")
            if not callable(getattr(dest, "deliver", None)):
                raise TypeError(f"destination {name!r} has no deliver(event, context) method")
            if name in self.destinations:
                raise ValueError(f"two destinations are named {name!r}")
            self.destinations[name] = dest
        if not self.destinations:
            raise ValueError(
                "a dispatcher needs at least one destination (to only submit events, "
                "use Producer(queue, ['name', ...]))"
            )
        self._names = tuple(self.destinations)
        for label, value in (
            ("batch_size", batch_size),
            ("concurrency", concurrency),
            ("max_result_bytes", max_result_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be an int >= 1, got {value!r}")
        self.queue = queue
        self.idempotency = idempotency
        self.retry = retry if retry is not None else RetryPolicy()
        self.clock: Clock = _default_clock(clock, queue)
        self.classifier = classifier if classifier is not None else Classifier()
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_result_bytes = max_result_bytes
        self.lease = timedelta(seconds=duration(lease, "lease"))
        self.idempotency_ttl = timedelta(seconds=duration(idempotency_ttl, "idempotency_ttl"))
        self.poll_interval = duration(poll_interval, "poll_interval")
        self.worker_id = _worker_id() if worker_id is None else check_name(worker_id, "worker_id")
        self.on_needs_action = on_needs_action
        self.on_event = on_event
        self.circuits = Circuits(
            {
                name: getattr(dest, "circuit_breaker", None) or circuit
                for name, dest in self.destinations.items()
            }
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._heartbeat = _Heartbeat(self)
        #: set by run_forever: once it is set, a running batch starts nothing more
        self._stop: threading.Event | asyncio.Event | None = None
        self._check_destinations()
        for dest in self.destinations.values():
            # one clock, given once, reaches every part: a destination that
            # keeps time (rate limits, Retry-After dates) uses the dispatcher's
            adopt = getattr(dest, "use_clock", None)
            if callable(adopt):
                adopt(self.clock)

    def _check_destinations(self) -> None:
        """Refuse destinations this dispatcher cannot drive (overridden)."""

    # -- one batch ----------------------------------------------------------

    def _envs(self, lease_until: datetime) -> dict[str, FlowEnv]:
        """One :class:`FlowEnv` per destination, for one batch."""
        return {
            name: FlowEnv(
                policy=self.retry,
                classifier=self.classifier,
                now=self.clock.now,
                actor=f"worker:{self.worker_id}",
                lease_until=lease_until,
                has_resolve_duplicate=callable(getattr(dest, "resolve_duplicate", None)),
                has_fix_data=callable(getattr(dest, "fix_data", None)),
                has_find_existing=callable(getattr(dest, "find_existing", None)),
                max_result_bytes=self.max_result_bytes,
                secrets=_secrets_of(dest),
            )
            for name, dest in self.destinations.items()
        }

    def _claim_args(self, limit: int | None) -> dict[str, Any]:
        now = self.clock.now()
        if limit is not None and (isinstance(limit, bool) or limit < 1):
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        return {
            "now": now,
            "limit": limit or self.batch_size,
            "lease_until": now + self.lease,
            "worker": self.worker_id,
            "destinations": list(self.destinations),
        }

    def _batch(self, claimed: Sequence[Delivery]) -> _Batch:
        """Fingerprints and idempotency entries of a claimed batch; a delivery
        whose stored event cannot even be fingerprinted is set aside (parked
        alone) instead of failing the batch."""
        batch = _Batch(claimed)
        for index, delivery in enumerate(claimed):
            try:
                fp = fingerprint(delivery.event)
            except Exception as exc:  # noqa: BLE001 - recorded on that delivery alone
                batch.broken[index] = exc
                batch.fingerprints.append("")
                continue
            batch.fingerprints.append(fp)
            batch.entries.append((store_key(delivery.destination, delivery.idempotency_key), fp))
        return batch

    def _halt(self, result: FlowResult, delivery: Delivery, halted: dict[str, str]) -> None:
        """Remember (for the rest of this batch) that a destination stopped."""
        reason = result.pause or result.hold_reason
        if reason:
            halted[delivery.destination] = reason

    def _destination_updates(self, delivery: Delivery, result: FlowResult) -> list[dict[str, Any]]:
        """``set_destination`` calls a flow's result asks for (pause, hold)."""
        if not result.pause and result.hold_until is None:
            return []
        now = self.clock.now()
        updates: list[dict[str, Any]] = []
        if result.pause:
            logger.error(
                "destination %s paused until an operator resumes it: %s",
                delivery.destination,
                result.pause,
                extra=_log_fields(delivery, result.completion),
            )
            self._emit(
                DispatchEvent(kind="paused", destination=delivery.destination, reason=result.pause)
            )
            updates.append(
                {
                    "now": now,
                    "paused": True,
                    "paused_reason": result.pause,
                    "audit": self._destination_audit(delivery, "pause", result.pause),
                }
            )
        if result.hold_until is not None:
            reason = result.hold_reason or "held back"
            logger.log(
                logging.WARNING if result.hold_action == "circuit_open" else logging.INFO,
                "destination %s held until %s (%s): %s",
                delivery.destination,
                result.hold_until.isoformat(),
                result.hold_action,
                reason,
                extra=_log_fields(delivery, result.completion),
            )
            self._emit(
                DispatchEvent(
                    kind=result.hold_action, destination=delivery.destination, reason=reason
                )
            )
            updates.append(
                {
                    "now": now,
                    "hold_until": result.hold_until,
                    "hold_reason": reason,
                    "audit": self._destination_audit(delivery, result.hold_action, reason),
                }
            )
        return updates

    def _joined(self) -> Callable[..., contextlib.AbstractContextManager[Any]] | None:
        """The queue store's ``transaction(durable=)`` when it has one (SQLite:
        the stores sharing a file commit together), else None."""
        joined = getattr(self.queue, "transaction", None)
        return joined if callable(joined) else None

    def _claim_batch(self, args: dict[str, Any]) -> tuple[list[Delivery], _Batch | None]:
        """Claim a batch and take its idempotency keys (I/O, in one thread).

        Where the stores share a transaction (SQLite), both are one commit and
        a failure undoes both; otherwise a failure to take the keys hands the
        claim back unattempted, so it costs no retry budget.
        """
        joined = self._joined()
        claimed: list[Delivery] = []
        try:
            with joined(durable=False) if joined is not None else contextlib.nullcontext():
                claimed = self.queue.claim(**args)
                if not claimed:
                    return [], None
                batch = self._batch(claimed)
                records = self.idempotency.begin(
                    batch.entries, now=args["now"], lock_until=args["lease_until"]
                )
                self._check_begun(batch, records)
                return claimed, batch
        except BaseException:
            if claimed and joined is None:
                now = self.clock.now()
                try:
                    self.queue.complete([released(d, now) for d in claimed])
                except Exception:
                    logger.exception(
                        "could not hand back %d claimed deliveries; they are claimed again "
                        "when their leases expire",
                        len(claimed),
                    )
            raise

    def _record(self, claimed: Sequence[Delivery], results: Sequence[FlowResult]) -> list[bool]:
        """Record a batch's outcomes (I/O, in one thread): the completed keys,
        the released ones, then the deliveries — one durable commit where the
        stores share a transaction (SQLite)."""
        finish, release, completions = self._settle(results)
        # the batch's lock end now (the heartbeat may have moved it): read
        # before the joined transaction, which a beat in progress may wait for
        fence = self._heartbeat.lock_end(claimed[0].lease_expires_at) if claimed else None
        now = self.clock.now()
        joined = self._joined()
        with joined(durable=True) if joined is not None else contextlib.nullcontext():
            if finish:
                try:
                    self.idempotency.finish(finish, now=now, expires_at=now + self.idempotency_ttl)
                except Exception:
                    if joined is not None:
                        raise  # the joined transaction is lost: nothing is recorded
                    # the outcomes still count: record them (their keys stay locked until
                    # the lease ends, so a retry of the same key waits, then replays or re-sends)
                    logger.exception("could not record %d completed idempotency keys", len(finish))
            if release:
                try:
                    self.idempotency.release(release, locked_until=fence)
                except Exception:
                    if joined is not None:
                        raise
                    logger.exception("could not release %d idempotency keys", len(release))
            return self.queue.complete(completions)

    def _check_begun(self, batch: _Batch, records: Sequence[Any]) -> None:
        if len(records) != len(batch.entries):
            raise StoreError(
                f"{type(self.idempotency).__name__}.begin returned {len(records)} records "
                f"for {len(batch.entries)} keys"
            )
        found = iter(records)
        batch.records = [
            None if index in batch.broken else next(found) for index in range(len(batch.claimed))
        ]

    def _broken(
        self,
        delivery: Delivery,
        record: IdempotencyRecord | None,
        exc: BaseException,
        *,
        retry: bool = True,
        sent: bool | None = None,
    ) -> FlowResult:
        """A bug or a store failure while deciding one delivery (not an error of
        the destination, which the flow classifies): log it with its traceback,
        record it on the delivery as UNEXPECTED (under the retry policy, or
        parked at once when retrying cannot help), and keep the rest of the
        batch."""
        logger.error(
            "internal error while processing delivery %s",
            delivery.id,
            exc_info=exc,
            extra=_log_fields(delivery),
        )
        self.circuits.cancel_probe(delivery.destination)
        return internal_failure(
            delivery,
            record,
            exc,
            policy=self.retry,
            now=self.clock.now(),
            actor=f"worker:{self.worker_id}",
            retry=retry,
            sent=sent,
        )

    def _before_flow(self, batch: _Batch, index: int, halted: dict[str, str]) -> FlowResult | None:
        """The outcome of a delivery decided without its destination: an
        unprocessable stored event, or a destination stopped earlier in the
        batch (or by its circuit)."""
        delivery = batch.claimed[index]
        if index in batch.broken:
            exc = batch.broken[index]
            return self._broken(
                delivery,
                None,
                RuntimeError(
                    f"the stored event cannot be processed ({type(exc).__name__}: "
                    f"{safe_str(exc)}); it was written past submit()'s checks"
                ),
                retry=False,
                sent=False,
            )
        record = batch.records[index]
        assert record is not None  # noqa: S101 - only broken deliveries have none
        if delivery.destination in halted or not self._circuit_gate(delivery):
            return self._halted_result(delivery, record)
        return None

    def _after_flow(
        self, delivery: Delivery, record: IdempotencyRecord, outcome: FlowResult | _FlowCrash
    ) -> FlowResult:
        if isinstance(outcome, _FlowCrash):
            return self._broken(delivery, record, outcome.error, sent=outcome.sent)
        try:
            return self._circuit_verdict(delivery, outcome)
        except Exception:
            logger.exception("circuit breaker bookkeeping failed for %s", delivery.destination)
            return outcome

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _unstarted(self, batch: _Batch, index: int) -> FlowResult:
        """Hand back a delivery of an interrupted batch that was never started."""
        record = batch.records[index] if index < len(batch.records) else None
        if record is None:
            return FlowResult(completion=released(batch.claimed[index], self.clock.now()))
        return self._halted_result(batch.claimed[index], record)

    def _halted_result(self, delivery: Delivery, record: IdempotencyRecord) -> FlowResult:
        """Hand back a delivery whose destination stopped earlier in this batch."""
        taken = (record.key,) if record.state is IdempotencyState.NEW else ()
        return FlowResult(completion=released(delivery, self.clock.now()), taken=taken)

    def _circuit_gate(self, delivery: Delivery) -> bool:
        """Whether the destination's circuit lets this delivery through now."""
        if not self.circuits.guards(delivery.destination):
            return True  # no circuit breaker for this destination: no clock reading
        return self.circuits.admit(delivery.destination, self.clock.now())

    def _circuit_verdict(self, delivery: Delivery, result: FlowResult) -> FlowResult:
        """Feed the outcome to the circuit; open it (hold the destination) if due."""
        if not self.circuits.guards(delivery.destination):
            return result  # no circuit breaker for this destination
        completion = result.completion
        error = completion.error
        if completion.status is DeliveryStatus.PENDING:
            # not attempted (its key is held elsewhere): let another delivery probe
            self.circuits.cancel_probe(delivery.destination)
            return result
        if error is None or error.category is not ErrorCategory.TRANSIENT:
            self.circuits.success(delivery.destination)
            return result
        now = self.clock.now()
        until = self.circuits.failure(delivery.destination, now)
        if until is None:
            return result
        state = self.circuits.state(delivery.destination)
        reason = (
            f"circuit open after {state.failures} consecutive transient failures "
            f"(last: {error.message}); next probe at {until.isoformat()}"
        )
        return attrs.evolve(
            result, hold_until=until, hold_reason=reason, hold_action="circuit_open"
        )

    def _destination_audit(self, delivery: Delivery, action: str, reason: str) -> Attempt:
        now = self.clock.now()
        return Attempt(
            delivery_id=None,
            destination=delivery.destination,
            action=action,
            actor=f"worker:{self.worker_id}",
            started_at=now,
            finished_at=now,
            reason=reason,
            details={"delivery_id": delivery.id},
        )

    def _settle(
        self, results: Sequence[FlowResult]
    ) -> tuple[list[tuple[str, str, Any]], list[str], list[Completion]]:
        finish = [r.finish for r in results if r.finish is not None]
        finished = {entry[0] for entry in finish}
        release = [k for r in results for k in r.taken if k not in finished]
        return finish, release, [r.completion for r in results]

    def _report(
        self, claimed: Sequence[Delivery], results: Sequence[FlowResult], applied: Sequence[bool]
    ) -> tuple[RunReport, list[str]]:
        counts = {"succeeded": 0, "retry_scheduled": 0, "needs_action": 0, "released": 0}
        lost = 0
        needs_action: list[str] = []
        for delivery, result, ok in zip(claimed, results, applied, strict=True):
            completion = result.completion
            self._emit_outcome(delivery, completion, applied=ok)
            if not ok:
                lost += 1
                logger.warning(
                    "lease lost: delivery %s was claimed by another worker; outcome %s dropped",
                    completion.delivery_id,
                    completion.status,
                    extra=_log_fields(delivery, completion),
                )
                continue
            if result.warning:
                logger.warning(
                    "delivery %s: %s",
                    completion.delivery_id,
                    result.warning,
                    extra=_log_fields(delivery, completion),
                )
            status = completion.status
            if status is DeliveryStatus.SUCCEEDED:
                counts["succeeded"] += 1
            elif status is DeliveryStatus.RETRY_SCHEDULED:
                counts["retry_scheduled"] += 1
            elif status is DeliveryStatus.NEEDS_ACTION:
                counts["needs_action"] += 1
                needs_action.append(completion.delivery_id)
            else:
                counts["released"] += 1
            self._log(delivery, completion)
        return RunReport(claimed=len(claimed), lost_lease=lost, **counts), needs_action

    def _emit(self, event: DispatchEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            logger.exception("on_event hook failed for %s", event)

    def _emit_outcome(self, delivery: Delivery, completion: Completion, *, applied: bool) -> None:
        if self.on_event is None:
            return
        records = completion.audit
        duration = (
            (records[-1].finished_at - records[0].started_at).total_seconds() if records else None
        )
        kind = completion.status.value
        if not applied:
            kind = "lost_lease"
        elif completion.status is DeliveryStatus.PENDING:
            kind = "released"
        self._emit(
            DispatchEvent(
                kind=kind,
                destination=delivery.destination,
                delivery_id=completion.delivery_id,
                attempt=delivery.attempts,
                category=completion.error.category if completion.error else None,
                duration=duration,
                reason=completion.error.message if completion.error else None,
            )
        )

    def _log(self, delivery: Delivery, completion: Completion) -> None:
        if not logger.isEnabledFor(logging.DEBUG) and (
            completion.status is DeliveryStatus.SUCCEEDED
            or completion.status is DeliveryStatus.PENDING
        ):
            return  # the common case logs at DEBUG only: skip building its fields
        error = completion.error
        extra = _log_fields(delivery, completion)
        if completion.status is DeliveryStatus.NEEDS_ACTION and error is not None:
            logger.warning(
                "delivery %s needs action (%s): %s",
                completion.delivery_id,
                error.category,
                error.message,
                extra=extra,
            )
        elif completion.status is DeliveryStatus.RETRY_SCHEDULED and error is not None:
            logger.info(
                "delivery %s failed (%s), retry at %s: %s",
                completion.delivery_id,
                error.category,
                completion.next_attempt_at,
                error.message,
                extra=extra,
            )
        else:
            logger.debug("delivery %s %s", completion.delivery_id, completion.status, extra=extra)

    def _idle_wait(self) -> float:
        wait = self.poll_interval
        due = self.queue.next_due()
        now = self.clock.now()
        # A due time already past after an idle claim belongs to a delivery that
        # is not claimable (behind its ordering key, paused or held destination):
        # waiting 0 for it would spin; wait the poll interval instead.
        if due is not None and due > now:
            wait = min(wait, (due - now).total_seconds())
        return wait


async def _own_task(awaitable: Any, destination: str, hook: str) -> Any:
    """Await a destination's call in a task of its own, so that a
    ``CancelledError`` it raises itself (a library cancelling its own work)
    is told apart from this worker being cancelled: the first is the
    delivery's error (outcome unknown: TRANSIENT, same key), the second
    propagates."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()
        raise
    try:
        return task.result()
    except asyncio.CancelledError as exc:
        logger.warning(
            "%s() of destination %s raised CancelledError while this worker was not cancelled; "
            "treated as a transient failure with an unknown outcome",
            hook,
            destination,
        )
        raise RetryableError(
            f"{hook}() was cancelled before it finished (asyncio.CancelledError: "
            f"{safe_str(exc) or 'no message'}); the outcome is unknown"
        ) from exc


class Dispatcher(_BaseDispatcher, _SyncSubmitting):
    """Delivers queued events to destinations, with retries, idempotency and
    the error taxonomy (threads; see :class:`AsyncDispatcher` for asyncio).

    Args:
        queue: where deliveries live (``MemoryQueueStore``, ``SQLiteQueueStore`` ...).
        idempotency: remembers completed idempotency keys.
        destinations: ``Destination`` objects (or a mapping name -> destination).
        retry: the retry policy (budget and delays).
        clock: ``SystemClock()`` by default (on PostgreSQL, a ``DatabaseClock``:
            the system clock set to the server's, so that leases are judged
            by one clock across machines); ``FakeClock`` in tests. Handed to
            every destination that has a ``use_clock(clock)`` method (the
            HTTP destinations), so one clock reaches every part.
        classifier: maps exceptions to categories (extend it for your errors).
        batch_size: deliveries claimed per round trip.
        concurrency: deliveries attempted at once (a thread pool), for slow
            destinations.
        lease: how long a claim lasts; a crashed worker's deliveries are claimed
            again after it. Make it longer than a batch takes.
        idempotency_ttl: how long a completed key is remembered.
        poll_interval: longest idle wait of ``run_forever``.
        worker_id: names this worker in leases and the audit trail.
        on_needs_action: called with each delivery that just entered
            ``NEEDS_ACTION`` (escalation; exceptions are logged, never lost).
        circuit: circuit breaker settings for destinations that bring none
            of their own (a destination's ``circuit_breaker`` attribute wins);
            None: no circuit breaker.
        on_event: called with a :class:`DispatchEvent` for every outcome and
            destination change (metrics: count by ``kind`` and ``category``,
            time with ``duration``). Exceptions are logged, never raised.
        max_result_bytes: the largest result stored (compact JSON); a bigger
            one is replaced by ``{"truncated": true, "bytes": N, "preview":
            "..."}`` and the change is logged and audited. Results are meant
            to be small (the remote id): pick what you need in the
            destination (``read_result``).
    """

    def _check_destinations(self) -> None:
        for name, dest in self.destinations.items():
            for hook in ("deliver", "find_existing", "resolve_duplicate", "fix_data"):
                if inspect.iscoroutinefunction(getattr(dest, hook, None)):
                    raise TypeError(
                        f"destination {name!r} has an async {hook}(); use AsyncDispatcher for it"
                    )

    # -- running ------------------------------------------------------------

    def run_once(self, limit: int | None = None) -> RunReport:
        """Claim one batch of due deliveries and attempt each; returns a report.

        Whatever a destination returns or raises ends as an outcome of that
        delivery alone. If the batch cannot be finished (the idempotency store
        fails, or the process is interrupted), what has no outcome is handed
        back unattempted before the error propagates.
        """
        args = self._claim_args(limit)
        claimed, batch = self._claim_batch(args)
        if batch is None:
            return RunReport()
        self._heartbeat.hold(claimed, [key for key, _ in batch.entries])
        try:
            return self._process(claimed, batch, args)
        finally:
            self._heartbeat.drop(claimed)

    def _process(self, claimed: list[Delivery], batch: _Batch, args: dict[str, Any]) -> RunReport:
        lease_until: datetime = args["lease_until"]
        batch_started = False
        try:
            envs = self._envs(lease_until)
            halted: dict[str, str] = {}
            batch_started = True

            def one(index: int) -> FlowResult:
                if self._stopping():  # a graceful stop: start nothing more
                    return self._unstarted(batch, index)
                decided = self._before_flow(batch, index, halted)
                if decided is not None:
                    return decided
                delivery, record = claimed[index], batch.records[index]
                assert record is not None  # noqa: S101 - checked by _before_flow
                flow = delivery_flow(
                    delivery, record, envs[delivery.destination], batch.fingerprints[index]
                )
                result = self._after_flow(
                    delivery, record, self._drive(delivery, flow, lease_until)
                )
                try:
                    self._apply_destination_effects(delivery, result, halted)
                except Exception:
                    logger.exception("could not pause or hold destination %s", delivery.destination)
                    self._halt(result, delivery, halted)
                return result

            finished: dict[int, FlowResult] = {}
            if self.concurrency > 1 and len(claimed) > 1:
                self._pooled(batch, one, finished)
            else:
                try:
                    for index in range(len(claimed)):
                        finished[index] = one(index)
                except BaseException:
                    # the one that was running when it happened is left to its lease
                    self._salvage(batch, finished, range(len(finished) + 1, len(claimed)))
                    raise
        except BaseException:
            if not batch_started:
                self._hand_back(claimed)
            raise
        return self._commit(claimed, [finished[i] for i in range(len(claimed))])

    def _pooled(
        self, batch: _Batch, one: Callable[[int], FlowResult], finished: dict[int, FlowResult]
    ) -> None:
        """Run ``one`` for every delivery of the batch on ``concurrency`` pool
        threads, each taking the next index until none is left. (One pool task
        per thread rather than per delivery: a future, its condition and a
        thread wake-up per delivery cost more CPU than many adapters' own work.)

        If anything interrupts the batch (Ctrl-C, a signal, an error out of
        ``one``), no thread starts another delivery: what never started is
        handed back, what runs is left to its lease, what finished is recorded.
        """
        count = len(batch.claimed)
        lock = threading.Lock()
        taken = 0
        closed = False

        def take() -> int | None:
            nonlocal taken
            with lock:
                if closed or taken >= count:
                    return None
                index, taken = taken, taken + 1
                return index

        def close() -> range:
            nonlocal closed
            with lock:
                closed = True
                return range(taken, count)

        def work() -> None:
            try:
                while (index := take()) is not None:
                    finished[index] = one(index)
            except BaseException:
                close()
                raise

        tasks: list[Future[None]] = []
        try:
            pool = self._executor()
            # (extend keeps the tasks submitted before a failing submit)
            tasks.extend(pool.submit(work) for _ in range(min(self.concurrency, count)))
            for task in tasks:
                task.result()
        except BaseException:
            unstarted = close()
            for task in tasks:
                task.cancel()
            self._salvage(batch, dict(finished), unstarted)
            raise

    def _hand_back(self, claimed: Sequence[Delivery]) -> None:
        """Return a batch none of which was attempted (its claims cost no budget)."""
        now = self.clock.now()
        try:
            self.queue.complete([released(d, now) for d in claimed])
        except Exception:
            logger.exception(
                "could not hand back %d claimed deliveries; they are claimed again when "
                "their leases expire",
                len(claimed),
            )

    def _salvage(
        self, batch: _Batch, finished: dict[int, FlowResult], unstarted: Iterable[int]
    ) -> None:
        """After an interruption mid-batch (Ctrl-C, a signal): record the outcomes
        that are known, hand back the deliveries never started, and leave the
        ones whose destination may be running to their lease (their reclaim is
        audited as ``lease_expired``, which is what tells an operator that they
        may have been applied)."""
        results = dict(finished)
        for index in unstarted:
            if index not in results:
                results[index] = self._unstarted(batch, index)
        order = sorted(results)
        try:
            self._commit([batch.claimed[i] for i in order], [results[i] for i in order])
        except Exception:
            logger.exception("could not record the outcomes of an interrupted batch")

    def _executor(self) -> ThreadPoolExecutor:
        """The worker pool, made on first use and kept (``close()`` ends it)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="resilient-sync"
                )
            return self._pool

    def close(self) -> None:
        """Stop the worker pool and the lease heartbeat (if any). Stores are the
        caller's to close."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._heartbeat.close()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _drive(
        self, delivery: Delivery, flow: Generator[Call, Outcome, FlowResult], lease_until: datetime
    ) -> FlowResult | _FlowCrash:
        """Make the calls the flow asks for; its decision, or how it crashed."""
        dest = self.destinations[delivery.destination]
        sent = False
        try:
            call = next(flow)
            while True:
                sent = sent or call.kind == "deliver"
                outcome = self._call(dest, call, lease_until)
                call = flow.send(outcome)
        except StopIteration as stop:
            result: FlowResult = stop.value
            return result
        except Exception as exc:  # noqa: BLE001 - a bug: recorded on the delivery by the caller
            return _FlowCrash(exc, sent)

    def _call(self, dest: Destination, call: Call, lease_until: datetime) -> Outcome:
        try:
            if call.kind == "idempotency_begin":
                key, fp = call.args
                (record,) = self.idempotency.begin(
                    [(key, fp)], now=self.clock.now(), lock_until=lease_until
                )
                return Outcome(value=record)
            if call.kind == "budget_start":
                return Outcome(value=budget_start(self.queue.attempts(*call.args)))
            value = getattr(dest, call.kind)(*call.args)
            if value is not None and inspect.isawaitable(value):
                # a plain function that returned a coroutine: nothing was sent yet,
                # so this must not count as a success
                if inspect.iscoroutine(value):
                    value.close()
                raise TypeError(
                    f"{call.kind}() of destination {dest.name!r} returned an awaitable; "
                    "use AsyncDispatcher for async destinations"
                )
            return Outcome(value=value)
        except Exception as exc:  # noqa: BLE001 - handed to the flow, which classifies and records it
            return Outcome(error=exc)

    def _apply_destination_effects(
        self, delivery: Delivery, result: FlowResult, halted: dict[str, str]
    ) -> None:
        for update in self._destination_updates(delivery, result):
            self.queue.set_destination(delivery.destination, **update)
        self._halt(result, delivery, halted)

    def _commit(self, claimed: list[Delivery], results: list[FlowResult]) -> RunReport:
        applied = self._record(claimed, results)
        report, needs_action = self._report(claimed, results, applied)
        self._escalate(needs_action)
        return report

    def _escalate(self, ids: list[str]) -> None:
        if self.on_needs_action is None:
            return
        for delivery_id in ids:
            delivery = self.queue.get(delivery_id)
            if delivery is None:
                continue
            try:
                self.on_needs_action(delivery)
            except Exception:
                logger.exception("on_needs_action failed for delivery %s", delivery_id)

    def run_until_idle(self, *, max_batches: int | None = None) -> RunReport:
        """Run batches until nothing is due now; returns the summed report."""
        total = RunReport()
        batches = 0
        while max_batches is None or batches < max_batches:
            report = self.run_once()
            batches += 1
            if report.idle:
                break
            total += report
        return total

    def run_forever(self, stop: threading.Event) -> RunReport:
        """Run until ``stop`` is set, waiting for due work when idle.

        A store error (database restarting, disk full) or any other error of
        a batch is logged with its traceback and the loop carries on after
        ``poll_interval``; only ``KeyboardInterrupt``/``SystemExit`` end it.
        """
        total = RunReport()
        real_time = isinstance(self.clock, SystemClock)
        self._stop = stop
        try:
            while not stop.is_set():
                total += self._one_round(stop, real_time)
        finally:
            self._stop = None
        return total

    def _one_round(self, stop: threading.Event, real_time: bool) -> RunReport:
        """One batch of ``run_forever``, then the wait for more work."""
        report = RunReport()
        try:
            report = self.run_once()
            wait = 0.0 if not report.idle else self._idle_wait()
        except StoreError:
            logger.exception("store error; retrying in %.1fs", self.poll_interval)
            wait = self.poll_interval
        except Exception:
            logger.exception(
                "unexpected error in the worker loop; carrying on in %.1fs", self.poll_interval
            )
            wait = self.poll_interval
        if wait > 0 and not stop.is_set():
            waiter = getattr(self.queue, "wait_for_work", None)
            if not real_time:
                self.clock.sleep(wait)
            elif waiter is not None:
                # in slices, so that a stop request is seen within half a second
                waiter(min(wait, _STOP_CHECK))
            else:
                stop.wait(wait)
        return report


class AsyncDispatcher(_BaseDispatcher):
    """The asyncio twin of :class:`Dispatcher`: the same operations as coroutines.

    Destinations may define ``async def deliver`` (and async hooks); plain
    ones run in a worker thread so they never block the event loop. At most
    ``concurrency`` deliveries run at once. Store calls run in a worker thread.
    ``async with AsyncDispatcher(...) as dispatcher:`` closes it at the end.
    """

    def close(self) -> None:
        """Stop the lease heartbeat (if any). Stores are the caller's to close."""
        self._heartbeat.close()

    async def __aenter__(self) -> AsyncDispatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def _io(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def submit(
        self, event: Event, to: str | Sequence[str] | None = None, *, transaction: Any = None
    ) -> Submitted:
        """See :meth:`Dispatcher.submit`."""
        plan = self._plan([event], to)
        inserted = await self._io(self.queue.enqueue, plan, **_tx(transaction))
        return self._submitted(plan, inserted)

    async def submit_many(
        self,
        events: Iterable[Event],
        to: str | Sequence[str] | None = None,
        *,
        transaction: Any = None,
    ) -> Submitted:
        """See :meth:`Dispatcher.submit_many`."""
        plan = self._plan(list(events), to)
        inserted = await self._io(self.queue.enqueue, plan, **_tx(transaction))
        return self._submitted(plan, inserted)

    async def pull(
        self, source: Source, *, limit: int = 100, to: str | Sequence[str] | None = None
    ) -> int:
        """See :meth:`Dispatcher.pull`; ``source.read`` may be ``async def``."""
        total = 0
        cursor: str | None = await self._io(self.queue.get_cursor, source.name)
        while True:
            page: Any = source.read(cursor, limit)
            if inspect.isawaitable(page):
                page = await page
            events, next_cursor = page
            if not events:
                if next_cursor is not None and next_cursor != cursor:
                    await self._io(self.queue.enqueue, [], cursor=(source.name, next_cursor))
                return total
            plan = self._plan(list(events), to)
            inserted = await self._io(self.queue.enqueue, plan, cursor=(source.name, next_cursor))
            total += len(self._submitted(plan, inserted))
            if next_cursor == cursor:
                return total
            cursor = next_cursor

    async def run_once(self, limit: int | None = None) -> RunReport:
        """See :meth:`Dispatcher.run_once`."""
        args = self._claim_args(limit)
        claimed, batch = await self._io(self._claim_batch, args)
        if batch is None:
            return RunReport()
        self._heartbeat.hold(claimed, [key for key, _ in batch.entries])
        try:
            return await self._process(claimed, batch, args)
        finally:
            self._heartbeat.drop(claimed)

    async def _process(
        self, claimed: list[Delivery], batch: _Batch, args: dict[str, Any]
    ) -> RunReport:
        lease_until: datetime = args["lease_until"]
        batch_started = False
        try:
            envs = self._envs(lease_until)
            halted: dict[str, str] = {}
            gate = asyncio.Semaphore(self.concurrency)
            started: set[int] = set()
            batch_started = True

            async def one(index: int) -> FlowResult:
                async with gate:
                    if self._stopping():  # a graceful stop: start nothing more
                        return self._unstarted(batch, index)
                    started.add(index)
                    decided = self._before_flow(batch, index, halted)
                    if decided is not None:
                        return decided
                    delivery, record = claimed[index], batch.records[index]
                    assert record is not None  # noqa: S101 - checked by _before_flow
                    flow = delivery_flow(
                        delivery, record, envs[delivery.destination], batch.fingerprints[index]
                    )
                    driven = await self._drive(delivery, flow, lease_until)
                    result = self._after_flow(delivery, record, driven)
                    try:
                        await self._apply_destination_effects(delivery, result, halted)
                    except Exception:
                        logger.exception(
                            "could not pause or hold destination %s", delivery.destination
                        )
                        self._halt(result, delivery, halted)
                    return result

            tasks = [asyncio.ensure_future(one(i)) for i in range(len(claimed))]
            try:
                results = list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                finished = {
                    i: t.result()
                    for i, t in enumerate(tasks)
                    if t.done() and not t.cancelled() and t.exception() is None
                }
                unstarted = [i for i in range(len(claimed)) if i not in started]
                await asyncio.shield(self._salvage(batch, finished, unstarted))
                raise
        except BaseException:
            if not batch_started:
                await self._hand_back(claimed)
            raise
        return await self._commit(claimed, results)

    async def _salvage(
        self, batch: _Batch, finished: dict[int, FlowResult], unstarted: Iterable[int]
    ) -> None:
        """See :meth:`Dispatcher._salvage`."""
        results = dict(finished)
        for index in unstarted:
            if index not in results:
                results[index] = self._unstarted(batch, index)
        order = sorted(results)
        try:
            await self._commit([batch.claimed[i] for i in order], [results[i] for i in order])
        except Exception:
            logger.exception("could not record the outcomes of an interrupted batch")

    async def _hand_back(self, claimed: Sequence[Delivery]) -> None:
        """See :meth:`Dispatcher._hand_back` (shielded: it runs while cancelled too)."""
        now = self.clock.now()
        try:
            await asyncio.shield(self._io(self.queue.complete, [released(d, now) for d in claimed]))
        except BaseException:
            logger.exception(
                "could not hand back %d claimed deliveries; they are claimed again when "
                "their leases expire",
                len(claimed),
            )

    async def _drive(
        self, delivery: Delivery, flow: Generator[Call, Outcome, FlowResult], lease_until: datetime
    ) -> FlowResult | _FlowCrash:
        """See :meth:`Dispatcher._drive`."""
        dest = self.destinations[delivery.destination]
        sent = False
        try:
            call = next(flow)
            while True:
                sent = sent or call.kind == "deliver"
                outcome = await self._call(dest, call, lease_until)
                call = flow.send(outcome)
        except StopIteration as stop:
            result: FlowResult = stop.value
            return result
        except Exception as exc:  # noqa: BLE001 - a bug: recorded on the delivery by the caller
            return _FlowCrash(exc, sent)

    async def _call(self, dest: Destination, call: Call, lease_until: datetime) -> Outcome:
        try:
            if call.kind == "idempotency_begin":
                key, fp = call.args
                (record,) = await self._io(
                    self.idempotency.begin,
                    [(key, fp)],
                    now=self.clock.now(),
                    lock_until=lease_until,
                )
                return Outcome(value=record)
            if call.kind == "budget_start":
                records = await self._io(self.queue.attempts, *call.args)
                return Outcome(value=budget_start(records))
            fn = getattr(dest, call.kind)
            if inspect.iscoroutinefunction(fn):
                value = await _own_task(fn(*call.args), dest.name, call.kind)
            else:
                value = await _own_task(asyncio.to_thread(fn, *call.args), dest.name, call.kind)
                if inspect.isawaitable(value):
                    value = await _own_task(value, dest.name, call.kind)
            return Outcome(value=value)
        except Exception as exc:  # noqa: BLE001 - handed to the flow, which classifies and records it
            return Outcome(error=exc)

    async def _apply_destination_effects(
        self, delivery: Delivery, result: FlowResult, halted: dict[str, str]
    ) -> None:
        for update in self._destination_updates(delivery, result):
            await self._io(self.queue.set_destination, delivery.destination, **update)
        self._halt(result, delivery, halted)

    async def _commit(self, claimed: list[Delivery], results: list[FlowResult]) -> RunReport:
        """See :meth:`Dispatcher._commit`."""
        applied: list[bool] = await asyncio.shield(self._io(self._record, claimed, results))
        report, needs_action = self._report(claimed, results, applied)
        await self._escalate(needs_action)
        return report

    async def _escalate(self, ids: list[str]) -> None:
        if self.on_needs_action is None:
            return
        for delivery_id in ids:
            delivery = await self._io(self.queue.get, delivery_id)
            if delivery is None:
                continue
            try:
                value: Any = self.on_needs_action(delivery)
                if inspect.isawaitable(value):
                    await value
            except Exception:
                logger.exception("on_needs_action failed for delivery %s", delivery_id)

    async def run_until_idle(self, *, max_batches: int | None = None) -> RunReport:
        """See :meth:`Dispatcher.run_until_idle`."""
        total = RunReport()
        batches = 0
        while max_batches is None or batches < max_batches:
            report = await self.run_once()
            batches += 1
            if report.idle:
                break
            total += report
        return total

    async def run_forever(self, stop: asyncio.Event) -> RunReport:
        """See :meth:`Dispatcher.run_forever`."""
        total = RunReport()
        real_time = isinstance(self.clock, SystemClock)
        self._stop = stop
        try:
            while not stop.is_set():
                total += await self._one_round(stop, real_time)
        finally:
            self._stop = None
        return total

    async def _one_round(self, stop: asyncio.Event, real_time: bool) -> RunReport:
        """See :meth:`Dispatcher._one_round`."""
        report = RunReport()
        try:
            report = await self.run_once()
            wait = 0.0 if not report.idle else await self._io(self._idle_wait)
        except StoreError:
            logger.exception("store error; retrying in %.1fs", self.poll_interval)
            wait = self.poll_interval
        except Exception:
            logger.exception(
                "unexpected error in the worker loop; carrying on in %.1fs", self.poll_interval
            )
            wait = self.poll_interval
        if wait > 0 and not stop.is_set():
            waiter = getattr(self.queue, "wait_for_work", None)
            if not real_time:
                await self.clock.asleep(wait)
            elif waiter is not None:
                await self._io(waiter, min(wait, _STOP_CHECK))
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
        else:
            await asyncio.sleep(0)
        return report

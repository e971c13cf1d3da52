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
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import attrs

from ._circuit import CircuitBreaker, Circuits
from ._classify import Classifier
from ._clock import SystemClock, to_seconds
from ._core import (
    Call,
    FlowEnv,
    FlowResult,
    Outcome,
    budget_start,
    delivery_flow,
    internal_failure,
    new_delivery,
    released,
    store_key,
)
from ._errors import InvalidEventError, StoreError
from ._json import check_event, fingerprint
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

__all__ = ["AsyncDispatcher", "Dispatcher"]

logger = logging.getLogger("resilient_sync")

#: Called with each delivery that just entered NEEDS_ACTION (may be ``async``
#: with the AsyncDispatcher).
NeedsActionHook = Callable[[Delivery], Any]
#: Called with every DispatchEvent (metrics, tracing); must be quick and not raise.
EventHook = Callable[[DispatchEvent], None]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


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


def _tx(transaction: Any) -> dict[str, Any]:
    """Pass ``transaction`` on only when given, so stores without it still work."""
    return {} if transaction is None else {"transaction": transaction}


class _BaseDispatcher:
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
            if not callable(getattr(dest, "deliver", None)):
                raise TypeError(f"destination {name!r} has no deliver(event, context) method")
            if name in self.destinations:
                raise ValueError(f"two destinations are named {name!r}")
            self.destinations[name] = dest
        if not self.destinations:
            raise ValueError("a dispatcher needs at least one destination")
        for label, value in (("batch_size", batch_size), ("concurrency", concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be an int >= 1, got {value!r}")
        self.queue = queue
        self.idempotency = idempotency
        self.retry = retry if retry is not None else RetryPolicy()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.classifier = classifier if classifier is not None else Classifier()
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.lease = timedelta(seconds=to_seconds(lease))
        self.idempotency_ttl = timedelta(seconds=to_seconds(idempotency_ttl))
        self.poll_interval = to_seconds(poll_interval)
        if self.lease <= timedelta(0) or self.poll_interval <= 0:
            raise ValueError("lease and poll_interval must be > 0")
        self.worker_id = worker_id or _worker_id()
        self.on_needs_action = on_needs_action
        self.on_event = on_event
        self.circuits = Circuits(
            {
                name: getattr(dest, "circuit_breaker", None) or circuit
                for name, dest in self.destinations.items()
            }
        )

    # -- submission -------------------------------------------------------

    def _targets(self, to: str | Sequence[str] | None) -> list[str]:
        if to is None:
            return list(self.destinations)
        names = [to] if isinstance(to, str) else list(to)
        if not names:
            # an empty to= would drop the event without a word
            raise ValueError("to= names no destination; pass None for all of them")
        for name in names:
            if name not in self.destinations:
                known = ", ".join(sorted(self.destinations))
                raise ValueError(f"unknown destination {name!r} (known: {known})")
        return names

    def _plan(self, events: Iterable[Event], to: str | Sequence[str] | None) -> list[Delivery]:
        targets = self._targets(to)
        now = self.clock.now()
        plan: list[Delivery] = []
        for index, event in enumerate(events):
            try:
                checked = check_event(event)
            except InvalidEventError as exc:
                label = getattr(event, "id", None)
                raise InvalidEventError(
                    f"event #{index} (id {label!r}): {exc}; nothing was enqueued", field=exc.field
                ) from exc
            plan.extend(new_delivery(checked, dest, now) for dest in targets)
        return plan

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

    def _idempotency_entries(self, claimed: Sequence[Delivery]) -> list[tuple[str, str]]:
        """``(store key, fingerprint)`` per claimed delivery; the flow reuses the
        fingerprint instead of hashing the payload again."""
        return [
            (store_key(d.destination, d.idempotency_key), fingerprint(d.event)) for d in claimed
        ]

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

    def _check_begun(self, claimed: Sequence[Delivery], records: Sequence[Any]) -> None:
        if len(records) != len(claimed):
            raise StoreError(
                f"{type(self.idempotency).__name__}.begin returned {len(records)} records "
                f"for {len(claimed)} keys"
            )

    def _broken(self, delivery: Delivery, record: IdempotencyRecord, exc: Exception) -> FlowResult:
        """A bug or a store failure while deciding one delivery (not an error of
        the destination, which the flow classifies): log it with its traceback,
        record it on the delivery as UNEXPECTED under the retry policy, and keep
        the rest of the batch."""
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
        )

    def _halted_result(self, delivery: Delivery, record: IdempotencyRecord) -> FlowResult:
        """Hand back a delivery whose destination stopped earlier in this batch."""
        taken = (record.key,) if record.state is IdempotencyState.NEW else ()
        return FlowResult(completion=released(delivery, self.clock.now()), taken=taken)

    def _circuit_gate(self, delivery: Delivery) -> bool:
        """Whether the destination's circuit lets this delivery through now."""
        return self.circuits.admit(delivery.destination, self.clock.now())

    def _circuit_verdict(self, delivery: Delivery, result: FlowResult) -> FlowResult:
        """Feed the outcome to the circuit; open it (hold the destination) if due."""
        if self.circuits.settings.get(delivery.destination) is None:
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


class Dispatcher(_BaseDispatcher):
    """Delivers queued events to destinations, with retries, idempotency and
    the error taxonomy (threads; see :class:`AsyncDispatcher` for asyncio).

    Args:
        queue: where deliveries live (``MemoryQueueStore``, ``SQLiteQueueStore`` ...).
        idempotency: remembers completed idempotency keys.
        destinations: ``Destination`` objects (or a mapping name -> destination).
        retry: the retry policy (budget and delays).
        clock: ``SystemClock()`` by default; ``FakeClock`` in tests.
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
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        for name, dest in self.destinations.items():
            for hook in ("deliver", "resolve_duplicate", "fix_data"):
                if inspect.iscoroutinefunction(getattr(dest, hook, None)):
                    raise TypeError(
                        f"destination {name!r} has an async {hook}(); use AsyncDispatcher for it"
                    )

    # -- submission -------------------------------------------------------

    def submit(
        self, event: Event, to: str | Sequence[str] | None = None, *, transaction: Any = None
    ) -> list[Delivery]:
        """Enqueue ``event`` for every destination (or those named in ``to``).

        Durable once it returns (for durable stores). Raises
        :class:`InvalidEventError` naming the offending field, with nothing
        enqueued. Returns the new deliveries: an event id already submitted to
        a destination is not enqueued again (an empty list when all were).
        ``transaction`` joins the caller's own transaction where the store
        supports it (the outbox pattern; see ``QueueStore.enqueue``).
        """
        return self.queue.enqueue(self._plan([event], to), **_tx(transaction))

    def submit_many(
        self,
        events: Iterable[Event],
        to: str | Sequence[str] | None = None,
        *,
        transaction: Any = None,
    ) -> list[Delivery]:
        """Enqueue many events in one transaction: all of them, or none."""
        return self.queue.enqueue(self._plan(list(events), to), **_tx(transaction))

    def pull(
        self, source: Source, *, limit: int = 100, to: str | Sequence[str] | None = None
    ) -> int:
        """Read ``source`` from its saved cursor until it has nothing new.

        Each page and the cursor after it are saved in one transaction.
        Returns the number of deliveries enqueued (events already known are
        skipped). An invalid event stops the pull with
        :class:`InvalidEventError`; the cursor stays before its page.
        """
        total = 0
        cursor = self.queue.get_cursor(source.name)
        while True:
            events, next_cursor = source.read(cursor, limit)
            if not events:
                if next_cursor is not None and next_cursor != cursor:
                    self.queue.enqueue([], cursor=(source.name, next_cursor))
                return total
            plan = self._plan(list(events), to)
            total += len(self.queue.enqueue(plan, cursor=(source.name, next_cursor)))
            if next_cursor == cursor:
                return total
            cursor = next_cursor

    # -- running ------------------------------------------------------------

    def run_once(self, limit: int | None = None) -> RunReport:
        """Claim one batch of due deliveries and attempt each; returns a report."""
        args = self._claim_args(limit)
        claimed = self.queue.claim(**args)
        if not claimed:
            return RunReport()
        lease_until: datetime = args["lease_until"]
        entries = self._idempotency_entries(claimed)
        try:
            records = self.idempotency.begin(entries, now=args["now"], lock_until=lease_until)
            self._check_begun(claimed, records)
        except Exception:
            # hand the batch back unattempted, so the failure costs no retry budget
            self.queue.complete([released(d, self.clock.now()) for d in claimed])
            raise
        envs = self._envs(lease_until)
        halted: dict[str, str] = {}

        def one(index: int) -> FlowResult:
            delivery, record = claimed[index], records[index]
            if delivery.destination in halted or not self._circuit_gate(delivery):
                return self._halted_result(delivery, record)
            try:
                flow = delivery_flow(
                    delivery, record, envs[delivery.destination], entries[index][1]
                )
                result = self._circuit_verdict(delivery, self._drive(delivery, flow, lease_until))
            except Exception as exc:  # noqa: BLE001 - recorded on the delivery, logged
                return self._broken(delivery, record, exc)
            try:
                self._apply_destination_effects(delivery, result, halted)
            except Exception:
                logger.exception("could not pause or hold destination %s", delivery.destination)
                self._halt(result, delivery, halted)
            return result

        if self.concurrency > 1 and len(claimed) > 1:
            results = list(self._executor().map(one, range(len(claimed))))
        else:
            results = [one(i) for i in range(len(claimed))]
        return self._commit(claimed, results)

    def _executor(self) -> ThreadPoolExecutor:
        """The worker pool, made on first use and kept (``close()`` ends it)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="resilient-sync"
                )
            return self._pool

    def close(self) -> None:
        """Stop the worker pool (if any). Stores are the caller's to close."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _drive(
        self, delivery: Delivery, flow: Generator[Call, Outcome, FlowResult], lease_until: datetime
    ) -> FlowResult:
        dest = self.destinations[delivery.destination]
        try:
            call = next(flow)
        except StopIteration as stop:  # decided without a call (replay, mismatch, in progress)
            decided: FlowResult = stop.value
            return decided
        while True:
            outcome = self._call(dest, call, lease_until)
            try:
                call = flow.send(outcome)
            except StopIteration as stop:
                result: FlowResult = stop.value
                return result

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
            if inspect.isawaitable(value):
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
        finish, release, completions = self._settle(results)
        now = self.clock.now()
        if finish:
            self.idempotency.finish(finish, now=now, expires_at=now + self.idempotency_ttl)
        if release:
            self.idempotency.release(release, locked_until=claimed[0].lease_expires_at)
        applied = self.queue.complete(completions)
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

        A store error (database restarting, disk full) is logged with its
        traceback and retried after ``poll_interval``; it does not end the loop.
        """
        total = RunReport()
        real_time = isinstance(self.clock, SystemClock)
        while not stop.is_set():
            try:
                report = self.run_once()
                total += report
                wait = 0.0 if not report.idle else self._idle_wait()
            except StoreError:
                logger.exception("store error; retrying in %.1fs", self.poll_interval)
                wait = self.poll_interval
            if wait > 0:
                waiter = getattr(self.queue, "wait_for_work", None)
                if not real_time:
                    self.clock.sleep(wait)
                elif waiter is not None:
                    waiter(wait)
                else:
                    stop.wait(wait)
        return total


class AsyncDispatcher(_BaseDispatcher):
    """The asyncio twin of :class:`Dispatcher`: the same operations as coroutines.

    Destinations may define ``async def deliver`` (and async hooks); plain
    ones run in a worker thread so they never block the event loop. At most
    ``concurrency`` deliveries run at once. Store calls run in a worker thread.
    """

    async def _io(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def submit(
        self, event: Event, to: str | Sequence[str] | None = None, *, transaction: Any = None
    ) -> list[Delivery]:
        """See :meth:`Dispatcher.submit`."""
        plan = self._plan([event], to)
        result: list[Delivery] = await self._io(self.queue.enqueue, plan, **_tx(transaction))
        return result

    async def submit_many(
        self,
        events: Iterable[Event],
        to: str | Sequence[str] | None = None,
        *,
        transaction: Any = None,
    ) -> list[Delivery]:
        """See :meth:`Dispatcher.submit_many`."""
        plan = self._plan(list(events), to)
        result: list[Delivery] = await self._io(self.queue.enqueue, plan, **_tx(transaction))
        return result

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
            total += len(inserted)
            if next_cursor == cursor:
                return total
            cursor = next_cursor

    async def run_once(self, limit: int | None = None) -> RunReport:
        """See :meth:`Dispatcher.run_once`."""
        args = self._claim_args(limit)
        claimed: list[Delivery] = await self._io(self.queue.claim, **args)
        if not claimed:
            return RunReport()
        lease_until: datetime = args["lease_until"]
        entries = self._idempotency_entries(claimed)
        try:
            records: list[IdempotencyRecord] = await self._io(
                self.idempotency.begin, entries, now=args["now"], lock_until=lease_until
            )
            self._check_begun(claimed, records)
        except Exception:
            # hand the batch back unattempted, so the failure costs no retry budget
            now = self.clock.now()
            await self._io(self.queue.complete, [released(d, now) for d in claimed])
            raise
        envs = self._envs(lease_until)
        halted: dict[str, str] = {}
        gate = asyncio.Semaphore(self.concurrency)

        async def one(index: int) -> FlowResult:
            delivery, record = claimed[index], records[index]
            async with gate:
                if delivery.destination in halted or not self._circuit_gate(delivery):
                    return self._halted_result(delivery, record)
                try:
                    flow = delivery_flow(
                        delivery, record, envs[delivery.destination], entries[index][1]
                    )
                    result = self._circuit_verdict(
                        delivery, await self._drive(delivery, flow, lease_until)
                    )
                except Exception as exc:  # noqa: BLE001 - recorded on the delivery, logged
                    return self._broken(delivery, record, exc)
                try:
                    await self._apply_destination_effects(delivery, result, halted)
                except Exception:
                    logger.exception("could not pause or hold destination %s", delivery.destination)
                    self._halt(result, delivery, halted)
                return result

        results = list(await asyncio.gather(*(one(i) for i in range(len(claimed)))))
        return await self._commit(claimed, results)

    async def _drive(
        self, delivery: Delivery, flow: Generator[Call, Outcome, FlowResult], lease_until: datetime
    ) -> FlowResult:
        dest = self.destinations[delivery.destination]
        try:
            call = next(flow)
        except StopIteration as stop:  # decided without a call (replay, mismatch, in progress)
            decided: FlowResult = stop.value
            return decided
        while True:
            outcome = await self._call(dest, call, lease_until)
            try:
                call = flow.send(outcome)
            except StopIteration as stop:
                result: FlowResult = stop.value
                return result

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
                value = await fn(*call.args)
            else:
                value = await asyncio.to_thread(fn, *call.args)
                if inspect.isawaitable(value):
                    value = await value
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
        finish, release, completions = self._settle(results)
        now = self.clock.now()
        if finish:
            await self._io(
                self.idempotency.finish, finish, now=now, expires_at=now + self.idempotency_ttl
            )
        if release:
            await self._io(
                self.idempotency.release, release, locked_until=claimed[0].lease_expires_at
            )
        applied: list[bool] = await self._io(self.queue.complete, completions)
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
        while not stop.is_set():
            try:
                report = await self.run_once()
                total += report
                wait = 0.0 if not report.idle else await self._io(self._idle_wait)
            except StoreError:
                logger.exception("store error; retrying in %.1fs", self.poll_interval)
                wait = self.poll_interval
            if wait > 0:
                waiter = getattr(self.queue, "wait_for_work", None)
                if not real_time:
                    await self.clock.asleep(wait)
                elif waiter is not None:
                    await self._io(waiter, wait)
                else:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=wait)
            else:
                await asyncio.sleep(0)
        return total

"""A Hypothesis state machine over the dispatcher, the memory stores and the
operator: random submits, destination outcomes, clock jumps, crashed workers
and operator actions, with the promises checked after every step."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from resilient_sync import (
    CircuitBreaker,
    DataFormatError,
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    DuplicateError,
    Event,
    MappingError,
    Operator,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock

DESTINATIONS = ("pos", "crm")
EVENT_IDS = [f"e{i}" for i in range(8)]
POLICY = RetryPolicy(
    max_attempts=2, initial_delay=5, multiplier=2, max_delay=40, deadline=600, jitter=True
)
LEASE = 30.0


class Crash(BaseException):
    """The worker process dies inside ``deliver`` (a poison event, an OOM kill)."""


OUTCOMES: dict[str, Any] = {
    "ok": None,
    "crash": Crash,
    "transient": lambda: RetryableError("down"),
    "timeout": lambda: TimeoutError("read timed out"),
    "rate_limited": lambda: RateLimitedError("slow down", retry_after=20),
    "duplicate": lambda: DuplicateError("already exists"),
    "data_format": lambda: DataFormatError("bad phone", field="phone"),
    "mapping": lambda: MappingError("unknown SKU"),
    "permission": lambda: PermissionDeniedError("revoked"),
    "unexpected": lambda: KeyError("boom"),
}


class NaiveDestination:
    """Applies every call it does not fail (no dedupe of its own), so a second
    effect under one idempotency key would show."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.effects: dict[str, int] = {}
        self.calls: dict[str, int] = {}  # per delivery id, since the last operator retry

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        self.calls[context.delivery_id] = self.calls.get(context.delivery_id, 0) + 1
        factory = OUTCOMES[self.mode]
        if factory is not None:
            raise factory()
        self.effects[context.idempotency_key] = self.effects.get(context.idempotency_key, 0) + 1
        return {"remote": f"{self.name}:{event.id}"}


class DispatcherMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.clock = FakeClock()
        self.queue = MemoryQueueStore()
        self.idempotency = MemoryIdempotencyStore()
        self.dests = {name: NaiveDestination(name) for name in DESTINATIONS}
        self.dispatcher = Dispatcher(
            self.queue,
            self.idempotency,
            list(self.dests.values()),
            retry=POLICY,
            clock=self.clock,
            lease=LEASE,
            batch_size=3,
            concurrency=2,
            worker_id="dispatcher",
            circuit=CircuitBreaker(threshold=3, cool_off=15),
        )
        self.worker = "dispatcher"
        self.operator = Operator(self.queue, clock=self.clock)
        self.submitted: set[tuple[str, str]] = set()
        self.crashed_claims: dict[str, int] = {}  # per delivery id, since the last reset
        # effects applied in a run that then crashed: the one window DESIGN.md says
        # only the destination can close (it sees the same key again)
        self.unrecorded: dict[str, int] = {}
        self.run_crashed = False

    def run(self, fn: Any) -> None:
        before = {name: dict(d.effects) for name, d in self.dests.items()}
        try:
            fn()
        except Crash:
            self.run_crashed = True
            for name, dest in self.dests.items():
                for key, n in dest.effects.items():
                    grew = n - before[name].get(key, 0)
                    if grew:
                        self.unrecorded[key] = self.unrecorded.get(key, 0) + grew
            for d in self.deliveries():
                if d.status is DeliveryStatus.IN_FLIGHT and d.lease_owner == self.worker:
                    self.crashed_claims[d.id] = self.crashed_claims.get(d.id, 0) + 1

    def budget_reset(self, ids: list[str]) -> None:
        for delivery_id in ids:
            self.crashed_claims.pop(delivery_id, None)
            for dest in self.dests.values():
                dest.calls.pop(delivery_id, None)

    def deliveries(self) -> list[Delivery]:
        return list(self.queue.list(limit=1000))

    # -- rules -------------------------------------------------------------

    @rule(
        event_id=st.sampled_from(EVENT_IDS),
        ordering_key=st.sampled_from([None, "A", "B"]),
        to=st.sampled_from([None, "pos", "crm"]),
    )
    def submit(self, event_id: str, ordering_key: str | None, to: str | None) -> None:
        event = Event(event_id, "t", {"n": event_id}, ordering_key=ordering_key)
        self.dispatcher.submit(event, to=to)
        for dest in [to] if to else DESTINATIONS:
            self.submitted.add((event_id, dest))

    @rule(dest=st.sampled_from(DESTINATIONS), mode=st.sampled_from(sorted(OUTCOMES)))
    def destination_behaves(self, dest: str, mode: str) -> None:
        self.dests[dest].mode = mode

    @rule(limit=st.integers(1, 5))
    def run_once(self, limit: int) -> None:
        self.run(lambda: self.dispatcher.run_once(limit=limit))

    @rule()
    def run_until_idle(self) -> None:
        def until_idle() -> None:
            for _ in range(50):
                if self.dispatcher.run_once().idle:
                    return
            raise AssertionError("50 batches without becoming idle: a livelock")

        self.run(until_idle)

    @rule(seconds=st.sampled_from([1, 10, 31, 120]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(limit=st.integers(1, 3))
    def a_worker_claims_and_crashes(self, limit: int) -> None:
        now = self.clock.now()
        claimed = self.queue.claim(
            now=now,
            limit=limit,
            lease_until=now + timedelta(seconds=LEASE),
            worker="crasher",
            destinations=list(DESTINATIONS),
        )
        for d in claimed:
            self.crashed_claims[d.id] = self.crashed_claims.get(d.id, 0) + 1

    @rule(limit=st.integers(1, 3))
    def a_worker_crashes_and_its_lease_runs_out(self, limit: int) -> None:
        self.a_worker_claims_and_crashes(limit)
        self.clock.advance(LEASE)

    @rule(data=st.data(), action=st.sampled_from(["retry", "resolve", "discard"]))
    def operator_acts(self, data: st.DataObject, action: str) -> None:
        candidates = [d.id for d in self.deliveries() if not d.status.is_final]
        candidates += [d.id for d in self.deliveries() if d.status is DeliveryStatus.DISCARDED]
        if not candidates:
            return
        chosen = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3))
        before = {d.id: d for d in self.deliveries()}
        moved = getattr(self.operator, action)(chosen, actor="tester")
        if action == "retry":
            self.budget_reset(moved)
        for delivery_id in moved:
            assert before[delivery_id].status is not DeliveryStatus.IN_FLIGHT
            assert before[delivery_id].status is not DeliveryStatus.SUCCEEDED

    @rule()
    def operator_retries_all(self) -> None:
        self.budget_reset(self.operator.retry_all(actor="tester"))

    @rule(dest=st.sampled_from(DESTINATIONS))
    def operator_resumes(self, dest: str) -> None:
        self.operator.resume(dest, actor="tester")

    # -- invariants ----------------------------------------------------------

    @invariant()
    def nothing_is_lost_or_doubled(self) -> None:
        pairs = [(d.event.id, d.destination) for d in self.deliveries()]
        assert len(pairs) == len(set(pairs))
        assert set(pairs) == self.submitted

    @invariant()
    def every_waiting_delivery_has_a_way_forward(self) -> None:
        for d in self.deliveries():
            if d.status is DeliveryStatus.RETRY_SCHEDULED:
                assert d.next_attempt_at is not None, d
            # PENDING is due at its next_attempt_at, or at once when it is None
            # (an operator's re-sync): it always has a way forward
            elif d.status is DeliveryStatus.IN_FLIGHT:
                # only crashed workers' claims stay in flight between runs,
                # and their lease will expire
                assert d.lease_owner == "crasher" or (
                    d.lease_owner == self.worker and self.run_crashed
                ), d
                assert d.lease_expires_at is not None
            elif d.status is DeliveryStatus.NEEDS_ACTION:
                assert d.last_error is not None, d
                assert d.last_error.category is not None
                assert d.last_error.message.strip()

    @invariant()
    def each_key_is_applied_at_most_once(self) -> None:
        for dest in self.dests.values():
            for key, n in dest.effects.items():
                assert n <= 1 + self.unrecorded.get(key, 0), (key, n)

    @invariant()
    def succeeded_deliveries_were_applied_under_their_key(self) -> None:
        for d in self.deliveries():
            if d.status is DeliveryStatus.SUCCEEDED:
                assert self.dests[d.destination].effects.get(d.idempotency_key, 0) >= 1

    @invariant()
    def the_budget_is_respected(self) -> None:
        # Since the last operator retry, the dispatcher calls a destination at
        # most max_attempts times per delivery (claims of crashed workers use
        # up the budget too), and every counted attempt was a call or a crash.
        for d in self.deliveries():
            crashed = self.crashed_claims.get(d.id, 0)
            calls = self.dests[d.destination].calls.get(d.id, 0)
            assert calls <= POLICY.max_attempts, (d, calls, crashed)
            assert d.attempts <= calls + crashed, (d, calls, crashed)

    @invariant()
    def every_attempt_is_audited(self) -> None:
        for d in self.deliveries():
            delivered = [a for a in self.queue.attempts(d.id) if a.action == "deliver"]
            if d.status is DeliveryStatus.SUCCEEDED:
                assert delivered or any(
                    a.action in ("replay", "resolve_duplicate") for a in self.queue.attempts(d.id)
                )
            if d.status is DeliveryStatus.NEEDS_ACTION:
                assert any(a.error is not None for a in self.queue.attempts(d.id))


DispatcherMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_dispatcher_state_machine = DispatcherMachine.TestCase

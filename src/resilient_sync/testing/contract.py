"""Contract test suites for queue and idempotency stores (this module needs pytest).

The same suites prove the memory, SQLite and PostgreSQL stores; run them on
your own store (Redis, DynamoDB ...) by subclassing a suite in a test module
and giving it a ``store`` fixture that returns a fresh, empty store::

    import pytest
    from resilient_sync.testing.contract import IdempotencyStoreContract, QueueStoreContract

    class TestMyQueueStore(QueueStoreContract):
        @pytest.fixture
        def store(self):
            store = MyQueueStore("...")
            yield store
            store.close()

    class TestMyIdempotencyStore(IdempotencyStoreContract):
        @pytest.fixture
        def store(self):
            return MyIdempotencyStore("...")

Every ``test_*`` method then runs against your store; each one's docstring
states the guarantee it checks (see the protocols in
``resilient_sync.QueueStore`` and ``resilient_sync.IdempotencyStore``). Time
comes from the ``clock`` fixture (a :class:`~resilient_sync.testing.FakeClock`
starting at :data:`T0`), passed to the store as ``now``, so nothing waits.

``resilient_sync.testing`` itself stays importable without pytest: import
the suites from this module (``resilient_sync.testing.QueueStoreContract``
also works, and imports pytest on first use).
"""

# ruff: noqa: S101 - a pytest suite: its checks are asserts (rewritten by pytest, see testing/__init__)

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from .._clock import FakeClock
from .._model import (
    Attempt,
    Completion,
    Delivery,
    DeliveryStatus,
    ErrorCategory,
    ErrorInfo,
    Event,
    IdempotencyState,
)
from .._protocols import IdempotencyStore, QueueStore

__all__ = ["T0", "IdempotencyStoreContract", "QueueStoreContract", "make_delivery"]

#: The time every contract test starts at.
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
LEASE = timedelta(seconds=60)

PENDING = DeliveryStatus.PENDING
IN_FLIGHT = DeliveryStatus.IN_FLIGHT
RETRY_SCHEDULED = DeliveryStatus.RETRY_SCHEDULED
SUCCEEDED = DeliveryStatus.SUCCEEDED
NEEDS_ACTION = DeliveryStatus.NEEDS_ACTION
RESOLVED = DeliveryStatus.RESOLVED
DISCARDED = DeliveryStatus.DISCARDED


def make_delivery(
    event_id: str,
    *,
    destination: str = "pos",
    ordering_key: str | None = None,
    now: datetime = T0,
    next_attempt_at: datetime | None = None,
    payload: Any = None,
    idempotency_key: str | None = None,
) -> Delivery:
    """A fresh ``PENDING`` delivery of a ``customer.created`` event (due at ``now``)."""
    event = Event(
        event_id,
        "customer.created",
        payload if payload is not None else {"id": event_id},
        ordering_key=ordering_key,
    )
    return Delivery(
        id=uuid.uuid4().hex,
        event=event,
        destination=destination,
        status=PENDING,
        idempotency_key=idempotency_key or f"{destination}:{event_id}",
        next_attempt_at=next_attempt_at if next_attempt_at is not None else now,
        created_at=now,
        updated_at=now,
    )


def _error(
    category: ErrorCategory = ErrorCategory.TRANSIENT, message: str = "POS down"
) -> ErrorInfo:
    return ErrorInfo(category=category, message=message, exception_type="RetryableError")


def _record(
    delivery: Delivery,
    at: datetime,
    *,
    action: str = "deliver",
    outcome: DeliveryStatus | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> Attempt:
    return Attempt(
        delivery_id=delivery.id,
        destination=delivery.destination,
        action=action,
        actor="worker:w1",
        started_at=at,
        finished_at=at,
        number=delivery.attempts,
        outcome=outcome,
        reason=reason,
        error=error,
        details=details or {},
    )


class QueueStoreContract:
    """Every guarantee of :class:`~resilient_sync.QueueStore`, as pytest tests.

    Subclass it (the subclass name must start with ``Test``) and override the
    ``store`` fixture to return a fresh, empty queue store.
    """

    @pytest.fixture
    def store(self) -> QueueStore:
        """Override: a fresh, empty queue store (close it after the test)."""
        pytest.fail(f"{type(self).__name__} must define a `store` fixture returning a QueueStore")

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The time passed to the store as ``now``."""
        return FakeClock(T0)

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def enqueue(store: QueueStore, *deliveries: Delivery) -> list[Delivery]:
        """Enqueue and check that every delivery was inserted."""
        inserted = store.enqueue(list(deliveries))
        assert [d.id for d in inserted] == [d.id for d in deliveries]
        return inserted

    @staticmethod
    def claim(
        store: QueueStore,
        clock: FakeClock,
        *,
        limit: int = 10,
        worker: str = "w1",
        lease: timedelta = LEASE,
        destinations: Sequence[str] | None = None,
    ) -> list[Delivery]:
        """Claim at the clock's time with a lease of ``lease``."""
        now = clock.now()
        return store.claim(
            now=now,
            limit=limit,
            lease_until=now + lease,
            worker=worker,
            destinations=destinations,
        )

    @staticmethod
    def outcome(
        delivery: Delivery,
        clock: FakeClock,
        status: DeliveryStatus = SUCCEEDED,
        **kwargs: Any,
    ) -> Completion:
        """A completion of a claimed delivery, finished at the clock's time."""
        return Completion(
            delivery_id=delivery.id,
            lease_token=delivery.lease_token,
            status=status,
            finished_at=clock.now(),
            **kwargs,
        )

    @staticmethod
    def ids(deliveries: Sequence[Delivery]) -> list[str]:
        """The event ids of deliveries, in order."""
        return [d.event.id for d in deliveries]

    def park(self, store: QueueStore, clock: FakeClock, delivery: Delivery) -> None:
        """Claim ``delivery`` (must be due) and park it in NEEDS_ACTION; every
        other delivery claimed on the way is handed back unattempted."""
        claimed = self.claim(store, clock, limit=1000)
        error = _error(ErrorCategory.MAPPING, "unknown SKU")
        outcomes = [
            self.outcome(d, clock, NEEDS_ACTION, error=error)
            if d.id == delivery.id
            else self.outcome(d, clock, PENDING, next_attempt_at=clock.now(), count_attempt=False)
            for d in claimed
        ]
        assert delivery.id in {d.id for d in claimed}
        assert store.complete(outcomes) == [True] * len(outcomes)

    # -- enqueue and get ---------------------------------------------------

    def test_enqueue_assigns_increasing_seq_in_the_given_order(self, store: QueueStore) -> None:
        """enqueue returns the inserted deliveries in order, with increasing seq."""
        inserted = self.enqueue(store, make_delivery("e1"), make_delivery("e2"))
        inserted += self.enqueue(store, make_delivery("e3"))
        seqs = [d.seq for d in inserted]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 3

    def test_get_returns_every_field_as_stored(self, store: QueueStore) -> None:
        """get() returns exactly what enqueue returned (payload, metadata, times ...)."""
        occurred = datetime(2023, 12, 31, 23, 59, 59, 123456, tzinfo=timezone(timedelta(hours=2)))
        event = Event(
            "e1",
            "order.paid",
            {"total": 12.5, "lines": [{"sku": "A-1", "qty": 2}], "note": "crème brûlée ☕"},
            ordering_key="customer-7",
            idempotency_key="my-key",
            occurred_at=occurred,
            metadata={"tenant": "shop-1", "trace": None},
        )
        delivery = Delivery(
            id=uuid.uuid4().hex,
            event=event,
            destination="pos",
            status=PENDING,
            idempotency_key="my-key",
            next_attempt_at=T0 + timedelta(microseconds=7),
            created_at=T0,
            updated_at=T0 + timedelta(seconds=1),
        )
        (inserted,) = store.enqueue([delivery])
        assert inserted.seq > 0
        stored = store.get(delivery.id)
        assert stored == inserted
        assert stored is not None
        assert stored.event.payload["note"] == "crème brûlée ☕"
        assert stored.event.occurred_at == occurred

    def test_get_of_an_unknown_id_is_none(self, store: QueueStore) -> None:
        """get() of an id never enqueued is None."""
        assert store.get("no-such-delivery") is None

    def test_enqueue_skips_an_event_already_stored_for_that_destination(
        self, store: QueueStore
    ) -> None:
        """The same (event id, destination) is enqueued once; another destination is new."""
        self.enqueue(store, make_delivery("e1"))
        assert store.enqueue([make_delivery("e1")]) == []
        (crm,) = store.enqueue([make_delivery("e1", destination="crm")])
        assert crm.destination == "crm"
        assert store.stats().total == 2

    def test_enqueue_skips_a_repeat_within_one_call(self, store: QueueStore) -> None:
        """A repeat of (event id, destination) in one batch is skipped too."""
        first, repeat, other = make_delivery("e1"), make_delivery("e1"), make_delivery("e2")
        inserted = store.enqueue([first, repeat, other])
        assert [d.id for d in inserted] == [first.id, other.id]
        assert store.get(repeat.id) is None

    def test_enqueue_saves_the_source_cursor(self, store: QueueStore) -> None:
        """The cursor is saved with the deliveries, also when all were known or none given."""
        assert store.get_cursor("shop") is None
        store.enqueue([make_delivery("e1")], cursor=("shop", "page-1"))
        assert store.get_cursor("shop") == "page-1"
        store.enqueue([make_delivery("e1")], cursor=("shop", "page-2"))  # known event
        assert store.get_cursor("shop") == "page-2"
        store.enqueue([], cursor=("shop", "page-3"))
        assert store.get_cursor("shop") == "page-3"
        store.enqueue([], cursor=("crm-feed", None))
        assert store.get_cursor("crm-feed") is None
        assert store.get_cursor("shop") == "page-3"

    def test_enqueue_with_a_foreign_transaction_raises_type_error_and_writes_nothing(
        self, store: QueueStore
    ) -> None:
        """A transaction handle the store cannot join raises TypeError naming it; nothing
        is enqueued and the cursor is not saved (all or nothing)."""
        with pytest.raises(TypeError, match="object"):
            store.enqueue([make_delivery("e1")], cursor=("shop", "p1"), transaction=object())
        assert store.stats().total == 0
        assert store.get_cursor("shop") is None

    def test_an_in_flight_delivery_is_enqueued_only_with_the_end_of_its_lease(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """An import of a delivery already ``IN_FLIGHT`` names when its lease
        ends, and a claim takes it back then; without an end no claim would
        ever take it, so the store refuses it with ``ValueError`` and
        enqueues nothing of the call."""
        flying = attrs.evolve(
            make_delivery("e1"),
            status=IN_FLIGHT,
            attempts=1,
            lease_token=7,
            lease_owner="importer",
            next_attempt_at=None,
        )
        with pytest.raises(ValueError, match="lease_expires_at"):
            store.enqueue([make_delivery("e0"), flying])
        assert store.stats().total == 0
        self.enqueue(store, attrs.evolve(flying, lease_expires_at=T0 + timedelta(minutes=5)))
        assert self.claim(store, clock) == []
        clock.advance(timedelta(minutes=6))
        (taken,) = self.claim(store, clock)
        assert (taken.id, taken.attempts) == (flying.id, 2)
        assert [a.action for a in store.attempts(flying.id)] == ["lease_expired"]

    def test_an_audit_record_whose_outcome_is_not_a_status_is_refused_with_nothing_changed(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """An audit record's ``outcome`` is a ``DeliveryStatus`` (or its
        value, taken as the status) or None: another value could not be read
        back, so ``complete`` and ``add_audit`` refuse it with ``ValueError``
        and change nothing, the delivery's outcome included."""
        self.enqueue(store, make_delivery("e1"))
        (claimed,) = self.claim(store, clock)
        record = _record(claimed, clock.now(), outcome=SUCCEEDED)
        # an idempotency state's value, not a delivery's status
        wrong = attrs.evolve(record, outcome="completed")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="outcome"):
            store.complete([self.outcome(claimed, clock, audit=(record, wrong))])
        assert store.get(claimed.id).status is IN_FLIGHT  # type: ignore[union-attr]
        assert store.attempts(claimed.id) == []
        with pytest.raises(ValueError, match="outcome"):
            store.add_audit([record, wrong])
        assert store.audit() == []
        as_value = attrs.evolve(record, outcome="succeeded")  # type: ignore[arg-type]
        assert store.complete([self.outcome(claimed, clock, audit=(as_value,))]) == [True]
        assert [a.outcome for a in store.attempts(claimed.id)] == [SUCCEEDED]

    def test_a_naive_time_is_refused_with_nothing_changed(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Every time a store is handed is timezone-aware: a naive
        ``datetime`` (no ``tzinfo``) names no moment, so every method that
        takes a time refuses one with ``ValueError`` naming the argument, and
        changes nothing (a delivery, its audit records, a destination)."""
        self.enqueue(store, make_delivery("e1"), make_delivery("e2"), make_delivery("e3"))
        first, second = self.claim(store, clock, limit=2)
        naive = clock.now().replace(tzinfo=None)
        record = _record(first, clock.now(), outcome=SUCCEEDED)

        def state() -> Any:
            deliveries = sorted(store.list(limit=100).items, key=lambda d: d.seq)
            return deliveries, store.audit(), store.destinations()

        before = state()
        calls: list[tuple[str, Any]] = [
            (
                "created_at",
                lambda: store.enqueue([attrs.evolve(make_delivery("n1"), created_at=naive)]),
            ),
            (
                "next_attempt_at",
                lambda: store.enqueue([make_delivery("n2", next_attempt_at=naive)]),
            ),
            (
                "now",
                lambda: store.claim(
                    now=naive, limit=1, lease_until=clock.now() + LEASE, worker="w"
                ),
            ),
            (
                "lease_until",
                lambda: store.claim(
                    now=clock.now(), limit=1, lease_until=naive + LEASE, worker="w"
                ),
            ),
            (
                "finished_at",
                lambda: store.complete(
                    [attrs.evolve(self.outcome(first, clock), finished_at=naive)]
                ),
            ),
            (
                "next_attempt_at",
                lambda: store.complete(
                    [
                        self.outcome(first, clock, audit=(record,)),
                        self.outcome(second, clock, RETRY_SCHEDULED, next_attempt_at=naive),
                    ]
                ),
            ),
            (
                "finished_at",
                lambda: store.complete(
                    [self.outcome(first, clock, audit=(attrs.evolve(record, finished_at=naive),))]
                ),
            ),
            (
                "started_at",
                lambda: store.add_audit([record, attrs.evolve(record, started_at=naive)]),
            ),
            (
                "now",
                lambda: store.transition(
                    [second.id], from_status={IN_FLIGHT}, to_status=PENDING, audit=record, now=naive
                ),
            ),
            (
                "started_at",
                lambda: store.transition(
                    [second.id],
                    from_status={IN_FLIGHT},
                    to_status=PENDING,
                    audit=attrs.evolve(record, started_at=naive),
                    now=clock.now(),
                ),
            ),
            ("now", lambda: store.set_destination("pos", now=naive, paused=True)),
            (
                "hold_until",
                lambda: store.set_destination("pos", now=clock.now(), hold_until=naive + LEASE),
            ),
            ("before", lambda: store.purge(before=naive)),
            ("since", lambda: store.list(since=naive)),
            ("until", lambda: store.list(until=naive)),
            ("since", lambda: store.audit(since=naive)),
            (
                "since",
                lambda: store.error_counts(since=naive, until=clock.now(), bucket=LEASE),
            ),
        ]
        extend = getattr(store, "extend_leases", None)
        if extend is not None:  # optional in the protocol (the lease heartbeat)
            calls.append(("until", lambda: extend([(first.id, first.lease_token)], until=naive)))
        for name, call in calls:
            with pytest.raises(ValueError, match=name):
                call()
            assert state() == before, name

    # -- claim -------------------------------------------------------------

    def test_claim_leases_due_deliveries_oldest_first(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Claimed deliveries are IN_FLIGHT with attempts + 1, a lease and a token."""
        inserted = self.enqueue(store, make_delivery("e1"), make_delivery("e2"))
        claimed = self.claim(store, clock, worker="w1")
        assert [d.id for d in claimed] == [d.id for d in inserted]
        for d in claimed:
            assert d.status is IN_FLIGHT
            assert d.attempts == 1
            assert d.lease_owner == "w1"
            assert d.lease_expires_at == T0 + LEASE
            assert d.lease_token > 0
            assert store.get(d.id) == d
        assert claimed[0].lease_token != claimed[1].lease_token

    def test_claim_respects_the_limit(self, store: QueueStore, clock: FakeClock) -> None:
        """At most ``limit`` deliveries, the oldest ones."""
        self.enqueue(store, *(make_delivery(f"e{i}") for i in range(5)))
        assert self.ids(self.claim(store, clock, limit=2)) == ["e0", "e1"]
        assert self.ids(self.claim(store, clock, limit=10)) == ["e2", "e3", "e4"]
        assert self.claim(store, clock) == []

    def test_claim_skips_deliveries_not_yet_due(self, store: QueueStore, clock: FakeClock) -> None:
        """A delivery is due when next_attempt_at <= now."""
        self.enqueue(store, make_delivery("later", next_attempt_at=T0 + timedelta(seconds=30)))
        self.enqueue(store, make_delivery("now"))
        assert self.ids(self.claim(store, clock)) == ["now"]
        clock.advance(29)
        assert self.claim(store, clock) == []
        clock.advance(1)
        assert self.ids(self.claim(store, clock)) == ["later"]

    def test_a_delivery_that_falls_due_keeps_its_place_in_line(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Among due deliveries the oldest go first, whenever each fell due: an
        older one whose time has just come is claimed before newer ones that
        were due all along, and a retry's lease end counts the same way."""
        self.enqueue(
            store,
            make_delivery("later", next_attempt_at=T0 + timedelta(seconds=30)),
            make_delivery("now1"),
            make_delivery("now2"),
        )
        clock.advance(30)
        assert self.ids(self.claim(store, clock, limit=1)) == ["later"]
        assert self.ids(self.claim(store, clock, limit=1)) == ["now1"]
        (leased,) = self.claim(store, clock, limit=1, lease=timedelta(seconds=10))
        self.enqueue(store, make_delivery("newer"))
        clock.advance(10)  # now2's lease ran out: it is older than "newer"
        assert self.ids(self.claim(store, clock, limit=1)) == [leased.event.id] == ["now2"]
        assert self.ids(self.claim(store, clock, limit=1)) == ["newer"]

    def test_each_claim_judges_due_by_its_own_clock(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A claim whose clock runs behind another's does not take a delivery
        the other's clock found due, however the store keeps track."""
        self.enqueue(
            store,
            make_delivery("e1", next_attempt_at=T0 + timedelta(seconds=30)),
            make_delivery("e2", next_attempt_at=T0 + timedelta(seconds=40)),
        )
        ahead = T0 + timedelta(seconds=60)
        claimed = store.claim(now=ahead, limit=1, lease_until=ahead + LEASE, worker="ahead")
        assert self.ids(claimed) == ["e1"]
        behind = T0 + timedelta(seconds=35)
        assert store.claim(now=behind, limit=10, lease_until=behind + LEASE, worker="behind") == []
        clock.advance(40)
        assert self.ids(self.claim(store, clock)) == ["e2"]

    def test_a_delivery_due_before_1970_is_due(self, store: QueueStore, clock: FakeClock) -> None:
        """A due time before the epoch is long past, when enqueued and when an
        outcome hands a delivery back with it (a store that stores times as
        numbers must not read its sign as anything else)."""
        early = datetime(1900, 1, 1, tzinfo=timezone.utc)
        self.enqueue(store, make_delivery("e1", next_attempt_at=early))
        (claimed,) = self.claim(store, clock)
        oldest = datetime.min.replace(tzinfo=timezone.utc)
        store.complete(
            [self.outcome(claimed, clock, PENDING, next_attempt_at=oldest, count_attempt=False)]
        )
        assert self.ids(self.claim(store, clock)) == ["e1"]

    def test_a_leased_delivery_is_not_claimed_again_while_the_lease_lasts(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A live lease keeps a delivery away from every other claim."""
        self.enqueue(store, make_delivery("e1"))
        assert len(self.claim(store, clock, worker="w1")) == 1
        clock.advance(LEASE - timedelta(seconds=1))
        assert self.claim(store, clock, worker="w2") == []

    def test_lease_tokens_strictly_increase(self, store: QueueStore, clock: FakeClock) -> None:
        """Every claim stamps a new token, larger than every earlier one."""
        self.enqueue(store, *(make_delivery(f"e{i}") for i in range(4)))
        first = self.claim(store, clock, limit=2)
        second = self.claim(store, clock, limit=2)
        tokens = [d.lease_token for d in first + second]
        assert tokens == sorted(tokens)
        assert len(set(tokens)) == 4

    def test_claim_only_the_given_destinations(self, store: QueueStore, clock: FakeClock) -> None:
        """``destinations`` restricts the claim; None means every destination."""
        self.enqueue(
            store,
            make_delivery("e1", destination="pos"),
            make_delivery("e2", destination="crm"),
            make_delivery("e3", destination="mail"),
        )
        assert self.claim(store, clock, destinations=[]) == []
        claimed = self.claim(store, clock, destinations=["crm", "mail"])
        assert sorted(d.destination for d in claimed) == ["crm", "mail"]
        assert [d.destination for d in self.claim(store, clock)] == ["pos"]

    def test_an_expired_lease_is_claimed_again_with_an_audit_record(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A crashed worker's delivery is claimed again after its lease, with a
        ``lease_expired`` audit record; the crashed attempt counts."""
        self.enqueue(store, make_delivery("e1"))
        (first,) = self.claim(store, clock, worker="w1")
        clock.advance(LEASE)
        (second,) = self.claim(store, clock, worker="w2")
        assert second.id == first.id
        assert second.attempts == 2
        assert second.lease_owner == "w2"
        assert second.lease_token > first.lease_token
        (record,) = store.attempts(first.id)
        assert record.action == "lease_expired"
        assert record.delivery_id == first.id
        assert record.destination == "pos"
        assert record.outcome is IN_FLIGHT
        assert record.number == 1
        assert record.actor == "worker:w2"
        assert record.finished_at == clock.now()
        assert record.reason
        assert record.id is not None

    def test_concurrent_claims_never_return_the_same_delivery(self, store: QueueStore) -> None:
        """Two claims running at once (threads) never lease the same delivery."""
        total = 120
        store.enqueue([make_delivery(f"e{i}") for i in range(total)])
        seen: list[str] = []
        lock = threading.Lock()
        failures: list[BaseException] = []
        start = threading.Barrier(4)

        def worker(name: str) -> None:
            try:
                start.wait()
                while True:
                    got = store.claim(
                        now=T0, limit=7, lease_until=T0 + LEASE, worker=name, destinations=None
                    )
                    if not got:
                        return
                    with lock:
                        seen.extend(d.id for d in got)
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                failures.append(exc)

        threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert len(seen) == total
        assert len(set(seen)) == total

    # -- complete and fencing ----------------------------------------------

    def test_complete_applies_a_success(self, store: QueueStore, clock: FakeClock) -> None:
        """SUCCEEDED stores the result, clears the lease and the last error."""
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock)
        clock.advance(2)
        applied = store.complete([self.outcome(d, clock, result={"remote_id": 42})])
        assert applied == [True]
        stored = store.get(d.id)
        assert stored is not None
        assert stored.status is SUCCEEDED
        assert stored.result == {"remote_id": 42}
        assert stored.attempts == 1
        assert stored.lease_owner is None
        assert stored.lease_expires_at is None
        assert stored.last_error is None
        assert stored.updated_at == clock.now()
        assert self.claim(store, clock) == []

    def test_a_late_worker_cannot_complete_a_delivery_another_worker_holds(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Fencing: after its lease expired and another worker claimed the
        delivery, the first worker's outcome is refused and changes nothing."""
        self.enqueue(store, make_delivery("e1"))
        (late,) = self.claim(store, clock, worker="w1")
        clock.advance(LEASE)
        (current,) = self.claim(store, clock, worker="w2")
        audit_before = store.attempts(late.id)
        assert store.complete([self.outcome(late, clock, result="late")]) == [False]
        retry = self.outcome(
            late, clock, RETRY_SCHEDULED, error=_error(), next_attempt_at=clock.now()
        )
        assert store.complete([retry]) == [False]
        stored = store.get(late.id)
        assert stored == current
        assert store.attempts(late.id) == audit_before
        assert store.complete([self.outcome(current, clock, result="on time")]) == [True]
        stored = store.get(late.id)
        assert stored is not None
        assert stored.result == "on time"

    def test_complete_refuses_unknown_and_unclaimed_deliveries(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Only an IN_FLIGHT delivery under that token can be completed."""
        (pending,) = self.enqueue(store, make_delivery("e1"))
        unknown = Completion(
            delivery_id="no-such-delivery", lease_token=1, status=SUCCEEDED, finished_at=T0
        )
        assert store.complete([unknown, self.outcome(pending, clock)]) == [False, False]
        assert store.get(pending.id) == pending

    def test_complete_answers_per_completion_in_one_call(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A batch applies what it can and refuses the rest, per item, in order."""
        self.enqueue(store, make_delivery("e1"), make_delivery("e2"))
        one, two = self.claim(store, clock)
        wrong = Completion(
            delivery_id=two.id, lease_token=two.lease_token + 1000, status=SUCCEEDED, finished_at=T0
        )
        assert store.complete([self.outcome(one, clock), wrong]) == [True, False]
        assert store.complete([self.outcome(two, clock)]) == [True]

    def test_a_delivery_is_completed_once(self, store: QueueStore, clock: FakeClock) -> None:
        """A repeated completion (same batch or later) is refused."""
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock)
        done = self.outcome(d, clock, result=1)
        again = self.outcome(d, clock, RETRY_SCHEDULED, error=_error(), next_attempt_at=T0)
        assert store.complete([done, again]) == [True, False]
        assert store.complete([done]) == [False]
        stored = store.get(d.id)
        assert stored is not None
        assert stored.status is SUCCEEDED

    def test_concurrent_completions_of_one_claim_apply_once(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Two threads completing the same claim: exactly one is applied."""
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock)
        results: list[bool] = []
        start = threading.Barrier(2)

        def complete() -> None:
            start.wait()
            results.extend(store.complete([self.outcome(d, clock)]))

        threads = [threading.Thread(target=complete) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, True]

    def test_a_retry_is_due_at_its_next_attempt_at(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """RETRY_SCHEDULED keeps the error and is claimable again from next_attempt_at."""
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock)
        error = _error()
        retry_at = clock.now() + timedelta(seconds=120)
        applied = store.complete(
            [self.outcome(d, clock, RETRY_SCHEDULED, error=error, next_attempt_at=retry_at)]
        )
        assert applied == [True]
        stored = store.get(d.id)
        assert stored is not None
        assert stored.status is RETRY_SCHEDULED
        assert stored.next_attempt_at == retry_at
        assert stored.last_error == error
        assert stored.lease_owner is None
        clock.advance(119)
        assert self.claim(store, clock) == []
        clock.advance(1)
        (again,) = self.claim(store, clock)
        assert again.attempts == 2
        assert again.last_error == error

    def test_complete_keeps_the_last_error_when_none_is_given(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """An outcome without an error keeps the previous one, unless it succeeded."""
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock)
        error = _error(ErrorCategory.RATE_LIMITED, "slow down")
        store.complete([self.outcome(d, clock, RETRY_SCHEDULED, error=error, next_attempt_at=T0)])
        (d,) = self.claim(store, clock)
        store.complete(
            [self.outcome(d, clock, PENDING, next_attempt_at=clock.now(), count_attempt=False)]
        )
        stored = store.get(d.id)
        assert stored is not None
        assert stored.last_error == error
        (d,) = self.claim(store, clock)
        store.complete([self.outcome(d, clock)])
        stored = store.get(d.id)
        assert stored is not None
        assert stored.last_error is None

    def test_a_hand_back_does_not_use_up_an_attempt(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """``count_attempt=False`` undoes the claim's increment (PENDING, due at once)."""
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock)
        assert d.attempts == 1
        handed_back = self.outcome(
            d, clock, PENDING, next_attempt_at=clock.now(), count_attempt=False
        )
        assert store.complete([handed_back]) == [True]
        stored = store.get(d.id)
        assert stored is not None
        assert stored.status is PENDING
        assert stored.attempts == 0
        (again,) = self.claim(store, clock)
        assert again.attempts == 1

    def test_complete_replaces_the_event_and_the_idempotency_key(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A corrected event (fix_data) and its revised key replace the stored ones."""
        self.enqueue(store, make_delivery("e1", payload={"phone": "n/a"}))
        (d,) = self.claim(store, clock)
        fixed = Event("e1", "customer.created", {"phone": None})
        completion = self.outcome(d, clock, result="ok", event=fixed, idempotency_key="pos:e1:v2")
        assert store.complete([completion]) == [True]
        stored = store.get(d.id)
        assert stored is not None
        assert stored.event == fixed
        assert stored.idempotency_key == "pos:e1:v2"

    def test_a_corrected_event_that_moves_to_another_key_frees_its_old_key(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A corrected event may carry another ordering key (a ``fix_data`` hook
        may set it): the next delivery of the old key becomes claimable."""
        self.enqueue(
            store,
            make_delivery("a", ordering_key="cust-1"),
            make_delivery("b", ordering_key="cust-1"),
        )
        (a,) = self.claim(store, clock)
        moved = Event("a", "customer.created", {"id": "a"}, ordering_key="cust-2")
        retry = self.outcome(a, clock, PENDING, next_attempt_at=clock.now(), event=moved)
        assert store.complete([retry]) == [True]
        assert sorted(self.ids(self.claim(store, clock))) == ["a", "b"]

    def test_a_completion_the_store_cannot_encode_changes_nothing(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A batch holding a result that is not JSON (NaN) raises ``ValueError``
        and writes none of its completions: no half-written batch."""
        self.enqueue(store, make_delivery("e1"), make_delivery("e2"))
        first, second = self.claim(store, clock)
        good = self.outcome(first, clock, result={"id": 1})
        bad = self.outcome(second, clock, result={"score": float("nan")})
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the store's encoder's
            store.complete([good, bad])
        for delivery in (first, second):
            stored = store.get(delivery.id)
            assert stored is not None
            assert stored.status is IN_FLIGHT
            assert stored.lease_token == delivery.lease_token
        assert store.stats().by_destination["pos"] == {IN_FLIGHT: 2}
        assert store.attempts(first.id) == []
        assert store.complete([good]) == [True]

    def test_an_enqueue_the_store_cannot_encode_writes_nothing(self, store: QueueStore) -> None:
        """A batch holding a delivery whose result is not JSON raises and
        stores none of the batch."""
        fine = make_delivery("e1")
        broken = attrs.evolve(make_delivery("e2"), result={"score": float("nan")})
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the store's encoder's
            store.enqueue([fine, broken])
        assert store.get(fine.id) is None
        assert store.get(broken.id) is None
        assert store.list().items == []

    def test_complete_appends_its_audit_records(self, store: QueueStore, clock: FakeClock) -> None:
        """The completion's audit records are stored in order, with ids."""
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock)
        error = ErrorInfo(
            category=ErrorCategory.DUPLICATE, message="email taken", field="email", retry_after=None
        )
        records = (
            _record(d, clock.now(), error=error, reason="email taken"),
            _record(
                d,
                clock.now() + timedelta(milliseconds=5),
                action="resolve_duplicate",
                outcome=SUCCEEDED,
                reason="linked to the existing record",
                details={"result": {"remote_id": 7}},
            ),
        )
        assert store.complete([self.outcome(d, clock, result={"remote_id": 7}, audit=records)]) == [
            True
        ]
        stored = store.attempts(d.id)
        assert [r.action for r in stored] == ["deliver", "resolve_duplicate"]
        assert [attrs_without_id(r) for r in stored] == [attrs_without_id(r) for r in records]
        first_id, second_id = stored[0].id, stored[1].id
        assert first_id is not None
        assert second_id is not None
        assert first_id < second_id

    def test_a_refused_completion_writes_no_audit(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A fenced-off outcome leaves the audit trail alone."""
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock)
        store.complete([self.outcome(d, clock)])
        store.complete([self.outcome(d, clock, audit=(_record(d, clock.now()),))])
        assert store.attempts(d.id) == []

    # -- ordering keys -----------------------------------------------------

    def test_only_the_head_of_an_ordering_key_is_claimed(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Deliveries sharing an ordering key are claimed one at a time, in order."""
        self.enqueue(
            store,
            make_delivery("a1", ordering_key="A"),
            make_delivery("a2", ordering_key="A"),
            make_delivery("b1", ordering_key="B"),
            make_delivery("n1"),
            make_delivery("a3", ordering_key="A"),
        )
        first = self.claim(store, clock)
        assert self.ids(first) == ["a1", "b1", "n1"]
        assert self.claim(store, clock) == []
        a1 = first[0]
        store.complete([self.outcome(a1, clock)])
        assert self.ids(self.claim(store, clock)) == ["a2"]

    def test_ordering_keys_are_per_destination(self, store: QueueStore, clock: FakeClock) -> None:
        """The same key at two destinations is two independent sequences."""
        self.enqueue(
            store,
            make_delivery("a1", ordering_key="A", destination="pos"),
            make_delivery("a1", ordering_key="A", destination="crm"),
        )
        assert sorted(d.destination for d in self.claim(store, clock)) == ["crm", "pos"]

    def test_a_stuck_head_holds_back_only_its_own_key(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A NEEDS_ACTION head blocks its key; other keys and unkeyed deliveries
        flow; once resolved, the next of its key is claimable."""
        a1, _a2, _b1, _n1 = self.enqueue(
            store,
            make_delivery("a1", ordering_key="A"),
            make_delivery("a2", ordering_key="A"),
            make_delivery("b1", ordering_key="B"),
            make_delivery("n1"),
        )
        (claimed_a1,) = self.claim(store, clock, limit=1)
        error = _error(ErrorCategory.MAPPING, "unknown SKU")
        store.complete([self.outcome(claimed_a1, clock, NEEDS_ACTION, error=error)])
        assert self.ids(self.claim(store, clock)) == ["b1", "n1"]
        assert self.claim(store, clock) == []
        audit = Attempt(
            delivery_id=None,
            destination="",
            action="resolve",
            actor="ops",
            started_at=clock.now(),
            finished_at=clock.now(),
        )
        moved = store.transition(
            [a1.id], from_status=[NEEDS_ACTION], to_status=RESOLVED, audit=audit, now=clock.now()
        )
        assert moved == [a1.id]
        assert self.ids(self.claim(store, clock)) == ["a2"]

    def test_a_head_waiting_for_its_retry_holds_back_its_key(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """The next delivery of a key waits for the head's retry, even when due itself."""
        self.enqueue(
            store, make_delivery("a1", ordering_key="A"), make_delivery("a2", ordering_key="A")
        )
        (a1,) = self.claim(store, clock)
        retry_at = clock.now() + timedelta(seconds=60)
        store.complete(
            [self.outcome(a1, clock, RETRY_SCHEDULED, error=_error(), next_attempt_at=retry_at)]
        )
        assert self.claim(store, clock) == []
        clock.advance(60)
        assert self.ids(self.claim(store, clock)) == ["a1"]

    def test_an_in_flight_head_holds_back_its_key(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """While the head is leased, no other worker gets the next of its key."""
        self.enqueue(
            store, make_delivery("a1", ordering_key="A"), make_delivery("a2", ordering_key="A")
        )
        assert self.ids(self.claim(store, clock, worker="w1")) == ["a1"]
        assert self.claim(store, clock, worker="w2") == []

    def test_a_revived_older_delivery_waits_for_the_in_flight_one_of_its_key(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """An operator revives a discarded older delivery while a newer one of
        its key is in flight: the older waits (never two of a key in flight);
        the in-flight one is reclaimed when its lease expires."""
        a1, _a2 = self.enqueue(
            store, make_delivery("a1", ordering_key="A"), make_delivery("a2", ordering_key="A")
        )
        (claimed_a1,) = self.claim(store, clock)
        store.complete([self.outcome(claimed_a1, clock, NEEDS_ACTION, error=_error())])
        audit = Attempt(
            delivery_id=None,
            destination="",
            action="discard",
            actor="ops",
            started_at=clock.now(),
            finished_at=clock.now(),
        )
        store.transition(
            [a1.id], from_status=[NEEDS_ACTION], to_status=DISCARDED, audit=audit, now=clock.now()
        )
        (claimed_a2,) = self.claim(store, clock)
        assert claimed_a2.event.id == "a2"
        revive = Attempt(
            delivery_id=None,
            destination="",
            action="retry",
            actor="ops",
            started_at=clock.now(),
            finished_at=clock.now(),
        )
        store.transition(
            [a1.id], from_status=[DISCARDED], to_status=PENDING, audit=revive, now=clock.now()
        )
        assert self.claim(store, clock) == []  # a2 is in flight: a1 waits
        clock.advance(LEASE)
        (reclaimed,) = self.claim(store, clock)  # a2 again, not a deadlock
        assert reclaimed.event.id == "a2"
        assert store.complete([self.outcome(reclaimed, clock)]) == [True]
        assert self.ids(self.claim(store, clock)) == ["a1"]

    # -- destinations --------------------------------------------------------

    def test_a_paused_destination_is_skipped_until_resumed(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Claims skip a paused destination; resuming clears the pause and its reason."""
        self.enqueue(
            store, make_delivery("e1", destination="pos"), make_delivery("e2", destination="crm")
        )
        state = store.set_destination("pos", now=clock.now(), paused=True, paused_reason="401")
        assert state.paused
        assert state.paused_reason == "401"
        assert [d.destination for d in self.claim(store, clock)] == ["crm"]
        clock.advance(30)  # a pause has no end (unlike the crm lease)
        assert self.claim(store, clock) == []
        state = store.set_destination("pos", now=clock.now(), paused=False)
        assert not state.paused
        assert state.paused_reason is None
        assert store.destinations()["pos"] == state
        assert [d.destination for d in self.claim(store, clock)] == ["pos"]

    def test_a_held_destination_is_skipped_until_the_hold_ends(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """``hold_until`` keeps a destination back while ``hold_until > now``."""
        self.enqueue(store, make_delivery("e1"))
        until = clock.now() + timedelta(seconds=30)
        store.set_destination("pos", now=clock.now(), hold_until=until, hold_reason="429")
        clock.advance(29)
        assert self.claim(store, clock) == []
        clock.advance(1)
        assert self.ids(self.claim(store, clock)) == ["e1"]

    def test_a_hold_only_ever_extends(self, store: QueueStore, clock: FakeClock) -> None:
        """A shorter hold leaves the longer one (and its reason) in place."""
        later = clock.now() + timedelta(seconds=60)
        store.set_destination("pos", now=clock.now(), hold_until=later, hold_reason="first")
        state = store.set_destination(
            "pos", now=clock.now(), hold_until=clock.now() + timedelta(seconds=5), hold_reason="x"
        )
        assert state.hold_until == later
        assert state.hold_reason == "first"
        even_later = later + timedelta(seconds=1)
        state = store.set_destination(
            "pos", now=clock.now(), hold_until=even_later, hold_reason="y"
        )
        assert state.hold_until == even_later
        assert state.hold_reason == "y"

    def test_set_destination_keeps_the_pause_when_not_given_and_writes_its_audit(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """``paused=None`` leaves the pause as is; the audit record is stored."""
        store.set_destination("pos", now=clock.now(), paused=True, paused_reason="revoked")
        audit = Attempt(
            delivery_id=None,
            destination="pos",
            action="rate_limited",
            actor="worker:w1",
            started_at=clock.now(),
            finished_at=clock.now(),
            reason="429",
            details={"delivery_id": "d1"},
        )
        clock.advance(1)
        state = store.set_destination(
            "pos", now=clock.now(), hold_until=clock.now() + timedelta(seconds=9), audit=audit
        )
        assert state.paused
        assert state.paused_reason == "revoked"
        assert state.updated_at == clock.now()
        (latest,) = store.audit(limit=1)
        assert attrs_without_id(latest) == attrs_without_id(audit)
        assert store.destinations() == {"pos": state}

    def test_destinations_is_empty_at_first(self, store: QueueStore) -> None:
        """Only destinations ever paused or held have a state."""
        assert store.destinations() == {}

    # -- transition (operator actions) -----------------------------------------

    def test_transition_moves_only_deliveries_in_from_status(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Operator action: listed deliveries in ``from_status`` move (once each,
        in the given order), with a filled-in audit copy; the rest stay."""
        stuck, fine, other = self.enqueue(
            store, make_delivery("e1"), make_delivery("e2"), make_delivery("e3")
        )
        self.park(store, clock, stuck)
        self.park(store, clock, other)
        clock.advance(10)
        template = Attempt(
            delivery_id=None,
            destination="",
            action="retry",
            actor="alice",
            started_at=clock.now(),
            finished_at=clock.now(),
            reason="fixed the SKU mapping",
        )
        moved = store.transition(
            [other.id, stuck.id, fine.id, stuck.id, "no-such-delivery"],
            from_status=[NEEDS_ACTION],
            to_status=PENDING,
            audit=template,
            now=clock.now(),
            reset_attempts=True,
        )
        assert moved == [other.id, stuck.id]
        revived = store.get(stuck.id)
        assert revived is not None
        assert revived.status is PENDING
        assert revived.attempts == 0
        assert revived.next_attempt_at is None  # due at once, whatever the claimer's clock
        assert revived.updated_at == clock.now()
        assert revived.last_error is not None  # the reason it was stuck stays visible
        untouched = store.get(fine.id)
        assert untouched is not None
        assert untouched.status is PENDING
        record = store.attempts(stuck.id)[-1]
        assert record.action == "retry"
        assert record.actor == "alice"
        assert record.delivery_id == stuck.id
        assert record.destination == "pos"
        assert record.outcome is PENDING
        assert record.number == 0
        assert record.reason == "fixed the SKU mapping"
        assert self.ids(self.claim(store, clock)) == ["e1", "e2", "e3"]

    def test_transition_to_a_final_status_takes_the_delivery_out_of_the_queue(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """RESOLVED/DISCARDED deliveries are never claimed; next_attempt_at is None."""
        d1, d2 = self.enqueue(store, make_delivery("e1"), make_delivery("e2"))
        audit = Attempt(
            delivery_id=None,
            destination="",
            action="discard",
            actor="bob",
            started_at=clock.now(),
            finished_at=clock.now(),
        )
        moved = store.transition(
            [d1.id, d2.id], from_status=[PENDING], to_status=DISCARDED, audit=audit, now=T0
        )
        assert moved == [d1.id, d2.id]
        stored = store.get(d1.id)
        assert stored is not None
        assert stored.status is DISCARDED
        assert stored.next_attempt_at is None
        assert self.claim(store, clock) == []
        assert store.next_due() is None

    def test_transition_replaces_the_event_and_key_when_given(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """An operator's edit replaces the event and the idempotency key."""
        (d,) = self.enqueue(store, make_delivery("e1", ordering_key="A"))
        self.park(store, clock, d)
        edited = Event("e1", "customer.created", {"email": "ada@example.com"}, ordering_key="A")
        audit = Attempt(
            delivery_id=None,
            destination="",
            action="edit",
            actor="carol",
            started_at=clock.now(),
            finished_at=clock.now(),
            details={"changed": ["payload.email"]},
        )
        moved = store.transition(
            [d.id],
            from_status=[NEEDS_ACTION],
            to_status=PENDING,
            audit=audit,
            now=clock.now(),
            event=edited,
            idempotency_key="pos:e1:edited",
        )
        assert moved == [d.id]
        stored = store.get(d.id)
        assert stored is not None
        assert stored.event == edited
        assert stored.idempotency_key == "pos:e1:edited"
        assert store.attempts(d.id)[-1].details == {"changed": ["payload.email"]}

    def test_transition_of_an_in_flight_delivery_fences_its_worker(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """After an operator moved a leased delivery, its worker's outcome is refused."""
        (d,) = self.enqueue(store, make_delivery("e1"))
        (claimed,) = self.claim(store, clock)
        audit = Attempt(
            delivery_id=None,
            destination="",
            action="resolve",
            actor="ops",
            started_at=T0,
            finished_at=T0,
        )
        store.transition([d.id], from_status=[IN_FLIGHT], to_status=RESOLVED, audit=audit, now=T0)
        assert store.complete([self.outcome(claimed, clock)]) == [False]
        stored = store.get(d.id)
        assert stored is not None
        assert stored.status is RESOLVED

    # -- reading -------------------------------------------------------------

    def test_list_pages_through_every_delivery_in_submission_order(self, store: QueueStore) -> None:
        """Pages follow seq; next_cursor is None on the last page."""
        inserted = store.enqueue([make_delivery(f"e{i}") for i in range(7)])
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            page = store.list(limit=3, cursor=cursor)
            pages.append([d.id for d in page.items])
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [i for p in pages for i in p] == [d.id for d in inserted]
        assert store.list(limit=7).next_cursor is None
        assert len(store.list()) == 7

    def test_list_filters(self, store: QueueStore, clock: FakeClock) -> None:
        """status, destination, category (of last_error) and since (updated_at) combine."""
        p1, p2, c1, c2 = self.enqueue(
            store,
            make_delivery("e1", destination="pos"),
            make_delivery("e2", destination="pos"),
            make_delivery("e3", destination="crm"),
            make_delivery("e4", destination="crm"),
        )
        claimed = {d.id: d for d in self.claim(store, clock)}
        clock.advance(60)
        store.complete(
            [
                self.outcome(
                    claimed[p1.id], clock, NEEDS_ACTION, error=_error(ErrorCategory.MAPPING)
                ),
                self.outcome(
                    claimed[c1.id], clock, NEEDS_ACTION, error=_error(ErrorCategory.DATA_FORMAT)
                ),
                self.outcome(claimed[p2.id], clock),
            ]
        )

        def ids(**filters: Any) -> list[str]:
            return [d.id for d in store.list(**filters)]

        assert ids(status=[NEEDS_ACTION]) == [p1.id, c1.id]
        assert ids(status=[NEEDS_ACTION, IN_FLIGHT]) == [p1.id, c1.id, c2.id]
        assert ids(status=[]) == []
        assert ids(destination="crm") == [c1.id, c2.id]
        assert ids(status=[NEEDS_ACTION], destination="pos") == [p1.id]
        assert ids(category=ErrorCategory.DATA_FORMAT) == [c1.id]
        assert ids(category=ErrorCategory.PERMISSION) == []
        assert ids(since=clock.now()) == [p1.id, p2.id, c1.id]
        assert ids(since=clock.now() + timedelta(microseconds=1)) == []
        page = store.list(status=[NEEDS_ACTION], limit=1)
        assert [d.id for d in page] == [p1.id]
        assert page.next_cursor is not None
        rest = store.list(status=[NEEDS_ACTION], limit=1, cursor=page.next_cursor)
        assert [d.id for d in rest] == [c1.id]
        assert rest.next_cursor is None

    def test_list_rejects_a_bad_limit_or_cursor(self, store: QueueStore) -> None:
        """ValueError for limit < 1 and for a cursor that no page returned."""
        with pytest.raises(ValueError, match="limit"):
            store.list(limit=0)
        with pytest.raises(ValueError, match="cursor"):
            store.list(cursor="not-a-cursor")

    def test_attempts_of_an_unknown_delivery_is_empty(self, store: QueueStore) -> None:
        """No records, no error."""
        assert store.attempts("no-such-delivery") == []

    def test_audit_is_newest_first_with_filters(self, store: QueueStore, clock: FakeClock) -> None:
        """audit() lists every record newest first; since, errors_only and limit filter."""
        self.enqueue(store, make_delivery("e1"), make_delivery("e2"))
        d1, d2 = self.claim(store, clock)
        failed = _record(d1, clock.now(), error=_error(), outcome=RETRY_SCHEDULED)
        store.complete(
            [
                self.outcome(
                    d1, clock, RETRY_SCHEDULED, error=_error(), next_attempt_at=T0, audit=(failed,)
                )
            ]
        )
        clock.advance(60)
        ok = _record(d2, clock.now(), outcome=SUCCEEDED)
        store.complete([self.outcome(d2, clock, audit=(ok,))])
        assert [r.delivery_id for r in store.audit()] == [d2.id, d1.id]
        assert [r.delivery_id for r in store.audit(errors_only=True)] == [d1.id]
        assert [r.delivery_id for r in store.audit(since=clock.now())] == [d2.id]
        assert [r.delivery_id for r in store.audit(limit=1)] == [d2.id]
        assert store.audit(since=clock.now(), errors_only=True) == []
        (stored,) = store.audit(errors_only=True)
        assert stored.category is ErrorCategory.TRANSIENT

    def test_stats_counts_by_destination_status_and_category(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Counts per destination and status, NEEDS_ACTION per category, the oldest waiting."""
        empty = store.stats()
        assert empty.total == 0
        assert empty.oldest_waiting is None
        self.enqueue(
            store,
            make_delivery("e1", destination="pos"),
            make_delivery("e2", destination="pos"),
            make_delivery("e3", destination="crm"),
        )
        clock.advance(5)
        self.enqueue(store, make_delivery("e4", destination="pos", now=clock.now()))
        claimed = self.claim(store, clock, limit=3)
        by_event = {d.event.id: d for d in claimed}
        store.complete(
            [
                self.outcome(by_event["e1"], clock),
                self.outcome(
                    by_event["e2"], clock, NEEDS_ACTION, error=_error(ErrorCategory.MAPPING)
                ),
            ]
        )
        store.set_destination("crm", now=clock.now(), paused=True, paused_reason="403")
        stats = store.stats()
        assert stats.by_destination == {
            "pos": {SUCCEEDED: 1, NEEDS_ACTION: 1, PENDING: 1},
            "crm": {IN_FLIGHT: 1},
        }
        assert stats.needs_action == {"pos": {ErrorCategory.MAPPING: 1}}
        assert stats.total == 4
        assert stats.by_status[PENDING] == 1
        assert stats.oldest_waiting == clock.now()
        assert stats.destinations["crm"].paused

    def test_next_due_is_the_earliest_time_work_may_become_claimable(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """next_attempt_at of waiting deliveries and lease ends of leased ones count;
        NEEDS_ACTION and final deliveries do not."""
        assert store.next_due() is None
        self.enqueue(
            store,
            make_delivery("e1", next_attempt_at=T0 + timedelta(seconds=300)),
            make_delivery("e2"),
        )
        assert store.next_due() == T0
        (claimed,) = self.claim(store, clock, lease=timedelta(seconds=90))
        assert store.next_due() == T0 + timedelta(seconds=90)
        store.complete(
            [self.outcome(claimed, clock, NEEDS_ACTION, error=_error(ErrorCategory.MAPPING))]
        )
        assert store.next_due() == T0 + timedelta(seconds=300)
        clock.advance(300)
        (last,) = self.claim(store, clock)
        store.complete([self.outcome(last, clock)])
        assert store.next_due() is None

    def test_next_due_leaves_out_paused_destinations_and_waits_out_holds(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A paused destination's deliveries wait for no time, so they give
        none (a time already past would hide the next one to come from an
        idle worker, which does not wait for a past time); a held one's are
        due when its hold ends."""
        self.enqueue(
            store,
            make_delivery("paused", destination="pos"),
            make_delivery("held", destination="mail"),
            make_delivery("later", destination="crm", next_attempt_at=T0 + timedelta(seconds=60)),
        )
        store.set_destination("pos", now=clock.now(), paused=True, paused_reason="401")
        until = T0 + timedelta(seconds=30)
        store.set_destination("mail", now=clock.now(), hold_until=until, hold_reason="429")
        assert self.claim(store, clock) == []
        assert store.next_due() == until
        clock.advance(30)
        assert self.ids(self.claim(store, clock)) == ["held"]
        assert store.next_due() == T0 + timedelta(seconds=60)

    def test_list_filters_by_event_type_text_and_time_range(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """event_type matches the event's type; search finds text in the event id
        or the event's JSON (ASCII case-insensitive, % and _ taken literally);
        since/until bound updated_at (inclusive/exclusive)."""
        first = make_delivery("order-1", payload={"email": "Ada@Example.com"})
        second = make_delivery("order-2", payload={"email": "bob@example.com", "note": "50%_off"})
        second = Delivery(
            **{**_fields(second), "event": Event("order-2", "order.paid", second.event.payload)}
        )
        self.enqueue(store, first, second)
        clock.advance(60)
        (claimed,) = self.claim(store, clock, limit=1)
        store.complete([self.outcome(claimed, clock)])  # order-1 updated at T0+60

        def ids(**filters: Any) -> list[str]:
            return self.ids(store.list(**filters).items)

        assert ids(event_type="order.paid") == ["order-2"]
        assert ids(event_type="nope") == []
        assert ids(search="ada@example") == ["order-1"]
        assert ids(search="ORDER-2") == ["order-2"]
        assert ids(search="50%_off") == ["order-2"]
        assert ids(search="5_%") == []
        assert ids(since=T0 + timedelta(seconds=60)) == ["order-1"]
        assert ids(until=T0 + timedelta(seconds=60)) == ["order-2"]
        assert ids(since=T0, until=T0 + timedelta(seconds=61), event_type="customer.created") == [
            "order-1"
        ]

    def test_error_counts_group_failed_attempts_by_bucket_and_category(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """error_counts counts audit records with an error in [since, until) per
        bucket index and category; records without an error are not counted."""
        delivery = make_delivery("e1")
        self.enqueue(store, delivery)
        hour = timedelta(hours=1)
        records = [
            _record(delivery, T0 + timedelta(minutes=5), error=_error()),
            _record(delivery, T0 + timedelta(minutes=50), error=_error()),
            _record(delivery, T0 + timedelta(minutes=55), error=_error(ErrorCategory.MAPPING)),
            _record(delivery, T0 + timedelta(minutes=70), error=_error()),
            _record(delivery, T0 + timedelta(minutes=75)),  # a success: not counted
            _record(delivery, T0 + timedelta(minutes=200), error=_error()),  # past until
        ]
        store.add_audit(records)
        counts = store.error_counts(since=T0, until=T0 + 3 * hour, bucket=hour)
        assert counts == [  # sorted by bucket, then category
            (0, ErrorCategory.MAPPING, 1),
            (0, ErrorCategory.TRANSIENT, 2),
            (1, ErrorCategory.TRANSIENT, 1),
        ]
        assert store.error_counts(since=T0 + 4 * hour, until=T0 + 5 * hour, bucket=hour) == []

    def test_add_audit_appends_records_that_change_nothing_else(self, store: QueueStore) -> None:
        """add_audit stores records as given: about no delivery, or about one."""
        delivery = make_delivery("e1")
        self.enqueue(store, delivery)
        about_none = Attempt(
            delivery_id=None,
            destination="",
            action="purge",
            actor="ada",
            started_at=T0,
            finished_at=T0,
            reason="purged 3",
            details={"deliveries": 3},
        )
        store.add_audit([about_none, _record(delivery, T0, action="note", reason="called them")])
        newest = store.audit(limit=2)
        assert [r.action for r in newest] == ["note", "purge"]
        assert newest[1].details == {"deliveries": 3}
        assert [r.action for r in store.attempts(delivery.id)] == ["note"]
        assert store.get(delivery.id).status is PENDING  # type: ignore[union-attr]

    def test_purge_deletes_old_finished_deliveries_and_their_audit_in_batches(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """purge deletes finished deliveries last changed before ``before`` (at most
        ``limit`` per call) with their audit records, and old records about
        destinations; waiting, failed and in-flight ones stay; stats follow;
        dry_run counts and changes nothing; a purged event id is unknown again."""
        self.enqueue(store, *(make_delivery(f"done-{i}") for i in range(5)))
        self.enqueue(store, make_delivery("failed"), make_delivery("busy"))
        self.enqueue(store, make_delivery("waiting", next_attempt_at=T0 + timedelta(days=9)))
        claimed = self.claim(store, clock, limit=7)
        outcomes = []
        for d in claimed:
            if d.event.id == "failed":
                outcomes.append(
                    self.outcome(
                        d,
                        clock,
                        NEEDS_ACTION,
                        error=_error(ErrorCategory.MAPPING),
                        audit=(_record(d, clock.now(), error=_error()),),
                    )
                )
            elif d.event.id.startswith("done"):
                outcomes.append(self.outcome(d, clock, audit=(_record(d, clock.now()),)))
        store.complete(outcomes)  # "busy" stays in flight
        store.set_destination(
            "pos",
            now=T0,
            paused=True,
            audit=Attempt(
                delivery_id=None,
                destination="pos",
                action="pause",
                actor="ada",
                started_at=T0,
                finished_at=T0,
            ),
        )
        clock.advance(timedelta(days=40))
        cutoff = clock.now() - timedelta(days=30)
        assert store.purge(before=cutoff, dry_run=True) == 5
        assert store.stats().by_destination["pos"][SUCCEEDED] == 5  # dry run changed nothing
        assert store.purge(before=cutoff, limit=2) == 2
        assert store.purge(before=cutoff, limit=2) == 2
        assert store.purge(before=cutoff, limit=2) == 1
        assert store.purge(before=cutoff, limit=2) == 0
        left = sorted(d.event.id for d in store.list(limit=100).items)
        assert left == ["busy", "failed", "waiting"]
        assert SUCCEEDED not in store.stats().by_destination["pos"]
        assert store.stats().total == 3
        assert all(r.delivery_id is not None for r in store.audit())  # the pause record went
        failed = next(d for d in store.list().items if d.event.id == "failed")
        assert len(store.attempts(failed.id)) == 1
        assert len(store.enqueue([make_delivery("done-0")])) == 1  # unknown again

    def test_a_purged_delivery_id_enqueued_again_is_a_new_delivery_with_its_own_lease(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """A delivery id that was purged may be enqueued again (a store caller
        re-importing its own ids): nothing of the purged delivery's claim (its
        lease's end) carries over to the new one, which is claimed once and
        whose lease holds until its own end."""
        first = make_delivery("e1")
        self.enqueue(store, first)
        (claimed,) = self.claim(store, clock, lease=timedelta(minutes=5))
        clock.advance(timedelta(seconds=1))
        assert store.complete([self.outcome(claimed, clock)]) == [True]
        clock.advance(timedelta(seconds=1))
        assert store.purge(before=clock.now()) == 1
        again = attrs.evolve(make_delivery("e2", now=clock.now()), id=first.id)
        self.enqueue(store, again)
        (taken,) = self.claim(store, clock, lease=timedelta(hours=1))
        assert taken.event.id == "e2"
        clock.advance(timedelta(minutes=10))  # past the purged claim's lease, not this one's
        assert self.claim(store, clock) == []
        assert [a.action for a in store.attempts(first.id)] == []
        assert store.complete([self.outcome(taken, clock)]) == [True]

    def test_stats_counts_deliveries_that_leave_and_reenter_a_final_state(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """Finished counts follow every move: discard, revive (retry), resolve."""
        self.enqueue(store, make_delivery("e1"), make_delivery("e2"))
        self.park(store, clock, store.list().items[0])
        audit = _record(store.list().items[0], clock.now(), action="discard")
        first = store.list().items[0].id
        store.transition(
            [first], from_status={NEEDS_ACTION}, to_status=DISCARDED, audit=audit, now=clock.now()
        )
        assert store.stats().by_destination["pos"] == {DISCARDED: 1, PENDING: 1}
        store.transition(
            [first],
            from_status={DISCARDED},
            to_status=PENDING,
            audit=audit,
            now=clock.now(),
            reset_attempts=True,
        )
        assert store.stats().by_destination["pos"] == {PENDING: 2}
        store.transition(
            [first], from_status={PENDING}, to_status=RESOLVED, audit=audit, now=clock.now()
        )
        assert store.stats().by_destination["pos"] == {RESOLVED: 1, PENDING: 1}

    def test_transition_if_unchanged_moves_only_what_is_still_as_read(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """With if_unchanged, a delivery claimed (or otherwise changed) since it
        was read does not move."""
        self.enqueue(store, make_delivery("e1"))
        read = store.list().items[0]
        audit = _record(read, clock.now(), action="edit")
        self.claim(store, clock)
        moved = store.transition(
            [read.id],
            from_status={PENDING, IN_FLIGHT},
            to_status=PENDING,
            audit=audit,
            now=clock.now(),
            if_unchanged=read,
        )
        assert moved == []
        again = store.get(read.id)
        assert again is not None
        assert again.status is IN_FLIGHT
        moved = store.transition(
            [read.id],
            from_status={IN_FLIGHT},
            to_status=NEEDS_ACTION,
            audit=audit,
            now=clock.now(),
            if_unchanged=again,
        )
        assert moved == [read.id]

    def test_extend_leases_moves_only_leases_still_held(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """(Optional method.) extend_leases moves the lease end of deliveries
        still IN_FLIGHT under the given token, never earlier; a stale token or
        a finished delivery is refused."""
        extend = getattr(store, "extend_leases", None)
        if extend is None:
            pytest.skip("this store has no extend_leases (optional)")
        self.enqueue(store, make_delivery("e1"), make_delivery("e2"))
        first, second = self.claim(store, clock, lease=LEASE)
        store.complete([self.outcome(second, clock)])
        later = T0 + 5 * LEASE
        assert extend(
            [
                (first.id, first.lease_token),
                (second.id, second.lease_token),
                (first.id, first.lease_token + 99),
            ],
            until=later,
        ) == [True, False, False]
        assert extend([(first.id, first.lease_token)], until=T0) == [True]  # never earlier
        clock.advance(2 * LEASE)
        assert self.claim(store, clock) == []  # the lease still runs
        held = store.get(first.id)
        assert held is not None
        assert held.lease_expires_at == later
        clock.advance(4 * LEASE)
        assert self.ids(self.claim(store, clock)) == ["e1"]

    def test_a_heartbeat_never_frees_a_lease_a_claim_found_ended(
        self, store: QueueStore, clock: FakeClock
    ) -> None:
        """(Optional method.) A claim whose clock reads a lease as ended, a
        heartbeat from a clock behind that asks for an earlier end (it never
        shortens the lease), then a claim whose clock reads the lease as live:
        the delivery stays with its worker."""
        extend = getattr(store, "extend_leases", None)
        if extend is None:
            pytest.skip("this store has no extend_leases (optional)")
        self.enqueue(store, make_delivery("e1"))
        (d,) = self.claim(store, clock, lease=timedelta(seconds=100))
        ended = T0 + timedelta(seconds=100)
        assert (
            store.claim(
                now=ended, limit=10, lease_until=ended + LEASE, worker="w2", destinations=["crm"]
            )
            == []
        )
        assert extend([(d.id, d.lease_token)], until=T0 + timedelta(seconds=80)) == [True]
        live = T0 + timedelta(seconds=90)
        assert store.claim(now=live, limit=10, lease_until=live + LEASE, worker="w3") == []
        stored = store.get(d.id)
        assert stored is not None
        assert (stored.lease_owner, stored.lease_expires_at) == ("w1", ended)
        assert store.next_due() == ended

    def test_close_is_idempotent(self, store: QueueStore) -> None:
        """close() may be called twice."""
        store.close()
        store.close()


def _fields(delivery: Delivery) -> dict[str, Any]:
    return {f: getattr(delivery, f) for f in attrs.fields_dict(Delivery)}


def attrs_without_id(record: Attempt) -> tuple[Any, ...]:
    """An audit record's fields except the store-assigned ``id`` (for comparisons)."""
    return (
        record.delivery_id,
        record.destination,
        record.action,
        record.actor,
        record.started_at,
        record.finished_at,
        record.number,
        record.outcome,
        record.reason,
        record.error,
        dict(record.details),
    )


class IdempotencyStoreContract:
    """Every guarantee of :class:`~resilient_sync.IdempotencyStore`, as pytest tests.

    Subclass it (the subclass name must start with ``Test``) and override the
    ``store`` fixture to return a fresh, empty idempotency store.
    """

    @pytest.fixture
    def store(self) -> IdempotencyStore:
        """Override: a fresh, empty idempotency store (close it after the test)."""
        pytest.fail(
            f"{type(self).__name__} must define a `store` fixture returning an IdempotencyStore"
        )

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The time passed to the store as ``now``."""
        return FakeClock(T0)

    @staticmethod
    def begin(
        store: IdempotencyStore,
        clock: FakeClock,
        *entries: tuple[str, str],
        lock: timedelta = LEASE,
    ) -> list[IdempotencyState]:
        """The states ``begin`` reports at the clock's time."""
        now = clock.now()
        return [r.state for r in store.begin(list(entries), now=now, lock_until=now + lock)]

    @staticmethod
    def finish(
        store: IdempotencyStore,
        clock: FakeClock,
        *entries: tuple[str, str, Any],
        ttl: timedelta = timedelta(days=1),
    ) -> None:
        """Mark keys completed at the clock's time for ``ttl``."""
        now = clock.now()
        store.finish(list(entries), now=now, expires_at=now + ttl)

    NEW = IdempotencyState.NEW
    IN_PROGRESS = IdempotencyState.IN_PROGRESS
    COMPLETED = IdempotencyState.COMPLETED
    MISMATCH = IdempotencyState.MISMATCH

    def test_a_new_key_is_taken(self, store: IdempotencyStore, clock: FakeClock) -> None:
        """An unknown key is NEW and now held by the caller until lock_until."""
        (record,) = store.begin([("k1", "fp")], now=T0, lock_until=T0 + LEASE)
        assert record.key == "k1"
        assert record.state is self.NEW
        assert record.fingerprint == "fp"
        assert record.locked_until == T0 + LEASE
        held = store.get("k1", now=T0)
        assert held is not None
        assert held.state is self.IN_PROGRESS
        assert held.locked_until == T0 + LEASE

    def test_a_naive_time_is_refused_with_nothing_changed(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """A naive ``datetime`` names no moment: every method that takes a
        time refuses one with ``ValueError`` naming the argument, and no
        key is taken, completed, released or purged."""
        store.begin([("held", "fp")], now=T0, lock_until=T0 + LEASE)
        store.finish([("done", "fp", {"id": 1})], now=T0, expires_at=T0 + LEASE)
        naive = T0.replace(tzinfo=None)

        def state() -> Any:
            return [store.get(key, now=T0) for key in ("held", "done", "new")]

        before = state()
        calls: list[tuple[str, Any]] = [
            ("now", lambda: store.begin([("new", "fp")], now=naive, lock_until=T0 + LEASE)),
            ("lock_until", lambda: store.begin([("new", "fp")], now=T0, lock_until=naive)),
            ("now", lambda: store.finish([("held", "fp", None)], now=naive, expires_at=T0 + LEASE)),
            ("expires_at", lambda: store.finish([("held", "fp", None)], now=T0, expires_at=naive)),
            ("locked_until", lambda: store.release(["held"], locked_until=naive + LEASE)),
            ("now", lambda: store.purge(now=naive + 2 * LEASE)),
            ("now", lambda: store.get("held", now=naive)),
        ]
        for name, call in calls:
            with pytest.raises(ValueError, match=name):
                call()
            assert state() == before, name

    def test_a_held_key_is_in_progress(self, store: IdempotencyStore, clock: FakeClock) -> None:
        """A second caller sees IN_PROGRESS (and when the lock ends); nothing changes."""
        assert self.begin(store, clock, ("k1", "fp")) == [self.NEW]
        clock.advance(LEASE - timedelta(seconds=1))
        (record,) = store.begin([("k1", "fp")], now=clock.now(), lock_until=clock.now() + LEASE)
        assert record.state is self.IN_PROGRESS
        assert record.locked_until == T0 + LEASE

    def test_an_expired_lock_can_be_taken_again(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """A holder that crashed (lock expired) does not block the key forever."""
        assert self.begin(store, clock, ("k1", "fp")) == [self.NEW]
        clock.advance(LEASE)
        assert store.get("k1", now=clock.now()) is None
        assert self.begin(store, clock, ("k1", "fp")) == [self.NEW]
        assert self.begin(store, clock, ("k1", "fp")) == [self.IN_PROGRESS]

    def test_a_finished_key_is_completed_with_its_result(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """After finish, begin answers COMPLETED with the stored result."""
        self.begin(store, clock, ("k1", "fp"))
        self.finish(store, clock, ("k1", "fp", {"remote_id": "pos-9", "tags": ["a", "é"]}))
        (record,) = store.begin([("k1", "fp")], now=T0, lock_until=T0 + LEASE)
        assert record.state is self.COMPLETED
        assert record.result == {"remote_id": "pos-9", "tags": ["a", "é"]}
        stored = store.get("k1", now=T0)
        assert stored is not None
        assert stored.state is self.COMPLETED
        assert stored.result == record.result
        assert stored.fingerprint == "fp"
        assert stored.expires_at == T0 + timedelta(days=1)

    def test_a_completed_key_with_another_fingerprint_is_a_mismatch(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """The same key with a different payload is MISMATCH; the record is kept."""
        self.begin(store, clock, ("k1", "fp-a"))
        self.finish(store, clock, ("k1", "fp-a", "done"))
        (record,) = store.begin([("k1", "fp-b")], now=T0, lock_until=T0 + LEASE)
        assert record.state is self.MISMATCH
        assert record.fingerprint == "fp-a"
        assert self.begin(store, clock, ("k1", "fp-a")) == [self.COMPLETED]

    def test_an_expired_completion_is_new_again(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """After expires_at the key is forgotten: get is None, begin is NEW."""
        self.begin(store, clock, ("k1", "fp"))
        self.finish(store, clock, ("k1", "fp", None), ttl=timedelta(hours=1))
        clock.advance(timedelta(hours=1) - timedelta(microseconds=1))
        assert self.begin(store, clock, ("k1", "fp")) == [self.COMPLETED]
        clock.advance(timedelta(microseconds=1))
        assert store.get("k1", now=clock.now()) is None
        assert self.begin(store, clock, ("k1", "fp-new")) == [self.NEW]

    def test_release_forgets_an_in_progress_key_only(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """release() frees held keys; completed and unknown keys are unaffected."""
        self.begin(store, clock, ("held", "fp"), ("done", "fp"))
        self.finish(store, clock, ("done", "fp", 1))
        store.release(["held", "done", "unknown"])
        assert store.get("held", now=T0) is None
        assert self.begin(store, clock, ("held", "fp")) == [self.NEW]
        assert self.begin(store, clock, ("done", "fp")) == [self.COMPLETED]

    def test_release_drops_only_the_releasing_workers_lock(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """A worker that stalled past its lock releases with its own
        ``locked_until``: the lock another worker took since stays."""
        first_until = clock.now() + LEASE
        store.begin([("key", "fp")], now=clock.now(), lock_until=first_until)
        clock.advance(LEASE)  # the first lock expires; a second worker takes the key
        assert self.begin(store, clock, ("key", "fp")) == [self.NEW]
        store.release(["key"], locked_until=first_until)  # the stalled worker gives up
        assert self.begin(store, clock, ("key", "fp")) == [self.IN_PROGRESS]
        store.release(["key"], locked_until=clock.now() + LEASE)  # the holder releases
        assert self.begin(store, clock, ("key", "fp")) == [self.NEW]

    def test_extend_locks_moves_only_the_holders_locks(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """The optional ``extend_locks`` (the lease heartbeat): a lock held under
        its fence moves to the new end, so the key stays held past the first
        end; the holder then releases with the new end. Stores without it skip."""
        extend = getattr(store, "extend_locks", None)
        if extend is None:
            pytest.skip(f"{type(store).__name__} has no extend_locks (optional)")
        taken = clock.now() + LEASE
        store.begin([("held", "fp")], now=clock.now(), lock_until=taken)
        self.finish(store, clock, ("done", "fp", {"id": 1}))
        later = taken + LEASE
        assert extend(["held", "done", "absent"], locked_until=taken, until=later) == [
            True,
            False,
            False,
        ]
        assert extend(["held"], locked_until=taken, until=later + LEASE) == [False]  # fenced
        clock.advance(LEASE + timedelta(seconds=1))  # past the first end
        assert self.begin(store, clock, ("held", "fp")) == [self.IN_PROGRESS]
        store.release(["held"], locked_until=taken)  # the old fence no longer names it
        assert self.begin(store, clock, ("held", "fp")) == [self.IN_PROGRESS]
        store.release(["held"], locked_until=later)
        assert self.begin(store, clock, ("held", "fp")) == [self.NEW]

    def test_begin_answers_per_entry_in_one_call(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """A batch mixes every state, answered in order."""
        self.begin(store, clock, ("held", "fp"), ("done", "fp"))
        self.finish(store, clock, ("done", "fp", "r"))
        states = self.begin(
            store, clock, ("new", "fp"), ("held", "fp"), ("done", "fp"), ("done", "other")
        )
        assert states == [self.NEW, self.IN_PROGRESS, self.COMPLETED, self.MISMATCH]

    def test_the_same_key_twice_in_one_call(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """The second entry of a key sees the first one's hold."""
        assert self.begin(store, clock, ("k1", "fp"), ("k1", "fp")) == [self.NEW, self.IN_PROGRESS]

    def test_results_round_trip_as_json(self, store: IdempotencyStore, clock: FakeClock) -> None:
        """Any JSON result comes back equal (None included)."""
        results: list[Any] = [None, 0, 1.5, "text ☕", [1, [2]], {"a": {"b": None}}, True]
        entries = [(f"k{i}", "fp", result) for i, result in enumerate(results)]
        self.finish(store, clock, *entries)
        for key, _, result in entries:
            record = store.get(key, now=T0)
            assert record is not None
            assert record.state is self.COMPLETED
            assert record.result == result

    def test_get_of_an_unknown_key_is_none(self, store: IdempotencyStore) -> None:
        """No record, no error."""
        assert store.get("unknown", now=T0) is None

    def test_empty_batches_are_harmless(self, store: IdempotencyStore) -> None:
        """Empty begin/finish/release calls do nothing."""
        assert store.begin([], now=T0, lock_until=T0 + LEASE) == []
        store.finish([], now=T0, expires_at=T0 + LEASE)
        store.release([])

    def test_concurrent_begins_give_a_key_to_one_caller(self, store: IdempotencyStore) -> None:
        """Of several threads beginning the same key at once, exactly one gets NEW."""
        states: list[IdempotencyState] = []
        lock = threading.Lock()
        start = threading.Barrier(4)

        def begin() -> None:
            start.wait()
            (record,) = store.begin([("k1", "fp")], now=T0, lock_until=T0 + LEASE)
            with lock:
                states.append(record.state)

        threads = [threading.Thread(target=begin) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(states) == sorted([self.NEW] + [self.IN_PROGRESS] * 3)

    def test_purge_forgets_expired_keys_only(
        self, store: IdempotencyStore, clock: FakeClock
    ) -> None:
        """purge deletes completed keys that expired (a batch at most ``limit``)
        and abandoned locks; live keys stay."""
        self.finish(store, clock, ("old-1", "fp", 1), ("old-2", "fp", 2), ttl=timedelta(days=1))
        self.finish(store, clock, ("young", "fp", 3), ttl=timedelta(days=60))
        self.begin(store, clock, ("locked", "fp"), lock=timedelta(minutes=5))
        clock.advance(timedelta(days=2))
        assert store.purge(now=clock.now(), limit=1) == 1
        assert store.purge(now=clock.now(), limit=10) == 1
        assert store.purge(now=clock.now(), limit=10) == 0
        assert store.get("old-1", now=T0) is None  # gone, even seen from the past
        assert store.get("young", now=clock.now()) is not None
        assert self.begin(store, clock, ("locked", "fp")) == [self.NEW]

    def test_close_is_idempotent(self, store: IdempotencyStore) -> None:
        """close() may be called twice."""
        store.close()
        store.close()

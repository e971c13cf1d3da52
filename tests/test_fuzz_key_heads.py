"""The claim hands out exactly the deliveries the ordering rules allow, on
every store, whatever happened to the queue before: a Hypothesis state
machine at the ``QueueStore`` level.

The stores keep structures so that a claim does not read every delivery
waiting behind its ordering key (SQLite's ``key_waits`` flag, kept by
triggers; the memory store's key heads). A structure that went stale would
hide a delivery that may go, and that delivery would wait for ever without
an error. So after enqueues, claims, every kind of outcome (delivered, a
retry, a hand-back, a parked one, a corrected event that moves to another
key), operator actions (retry, resolve, discard, re-send a finished one,
an edit that moves a delivery to another key), paused destinations and
expired leases, each claim is compared with the rule itself, computed from
``list()``: a due delivery goes if no older delivery of its
(destination, key) is unfinished and none is in flight; an expired lease is
always reclaimed; paused destinations wait. Same deliveries, same order.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from core_support import every_delivery
from fuzz_strategies import LONG, fuzz_settings
from resilient_sync import Attempt, Delivery, DeliveryStatus, Event
from resilient_sync.stores import Completion, MemoryQueueStore, open_stores
from resilient_sync.testing.contract import LEASE, T0, make_delivery

PENDING = DeliveryStatus.PENDING
IN_FLIGHT = DeliveryStatus.IN_FLIGHT
RETRY = DeliveryStatus.RETRY_SCHEDULED
NEEDS_ACTION = DeliveryStatus.NEEDS_ACTION
UNFINISHED = {PENDING, IN_FLIGHT, RETRY, NEEDS_ACTION}
KEYS = ["A", "B", None]
DESTINATIONS = ["pos", "crm"]


def claimable(rows: list[Delivery], now: datetime, paused: set[str]) -> list[Delivery]:
    """The deliveries a claim may hand out now, oldest first: the rule."""
    out: list[Delivery] = []
    for d in rows:
        if d.destination in paused:
            continue
        if d.status is IN_FLIGHT:
            if d.lease_expires_at is not None and d.lease_expires_at <= now:
                out.append(d)
            continue
        if d.status not in (PENDING, RETRY):
            continue
        if d.next_attempt_at is not None and d.next_attempt_at > now:
            continue
        key = d.event.ordering_key
        if key is not None and any(
            o.destination == d.destination
            and o.event.ordering_key == key
            and (o.status is IN_FLIGHT or (o.status in UNFINISHED and o.seq < d.seq))
            for o in rows
            if o.id != d.id
        ):
            continue
        out.append(d)
    return sorted(out, key=lambda d: d.seq)


class KeyHeadsMachine(RuleBasedStateMachine):
    backend = "memory"

    @initialize()
    def setup(self) -> None:
        self.now = T0
        self.tmp: str | None = None
        self.cleanup = lambda: None
        if self.backend == "memory":
            self.queue: Any = MemoryQueueStore()
        elif self.backend == "sqlite":
            self.tmp = tempfile.mkdtemp(prefix="rs-key-heads-")
            self.queue, idempotency = open_stores(
                f"sqlite:///{self.tmp}/sync.db", synchronous="NORMAL"
            )
            idempotency.close()
        else:
            from pg_support import drop_schema, new_schema_name, require_postgres

            dsn, schema = require_postgres(), new_schema_name("rs_key_heads")
            self.queue, idempotency = open_stores(f"{dsn}?schema={schema}")
            idempotency.close()
            self.cleanup = lambda: drop_schema(schema)
        self.held: list[Delivery] = []  # claimed, not yet completed
        self.paused: set[str] = set()
        self.count = 0

    def teardown(self) -> None:
        self.queue.close()
        self.cleanup()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def rows(self) -> list[Delivery]:
        return every_delivery(self.queue)

    def audit(self, action: str) -> Attempt:
        return Attempt(
            delivery_id=None,
            destination="",
            action=action,
            actor="operator",
            started_at=self.now,
            finished_at=self.now,
        )

    # -- rules ---------------------------------------------------------------------------

    @rule(
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4),
        destination=st.sampled_from(DESTINATIONS),
    )
    def enqueue(self, keys: list[str | None], destination: str) -> None:
        batch = []
        for key in keys:
            self.count += 1
            batch.append(
                make_delivery(
                    f"e{self.count}", destination=destination, ordering_key=key, now=self.now
                )
            )
        self.queue.enqueue(batch)

    @rule(
        limit=st.integers(1, 5),
        only=st.sampled_from([None, ["pos"], ["crm"], ["crm", "pos"]]),
    )
    def claim(self, limit: int, only: list[str] | None) -> None:
        rows = self.rows()
        # the rule looks at every row of a key, whatever the claimer serves
        allowed = {d.id for d in rows if only is None or d.destination in only}
        expected = [d.id for d in claimable(rows, self.now, self.paused) if d.id in allowed]
        claimed = self.queue.claim(
            now=self.now,
            limit=limit,
            lease_until=self.now + LEASE,
            worker="w",
            destinations=only,
        )
        assert [d.id for d in claimed] == expected[:limit], (
            [(d.seq, d.event.id, d.destination, d.event.ordering_key, d.status) for d in rows],
            [d.event.id for d in claimed],
        )
        ids = {d.id for d in claimed}
        self.held = [d for d in self.held if d.id not in ids] + claimed

    @rule(
        data=st.data(),
        status=st.sampled_from([DeliveryStatus.SUCCEEDED, RETRY, PENDING, NEEDS_ACTION]),
        later=st.booleans(),
        new_key=st.sampled_from(["keep", *KEYS]),
    )
    def complete(
        self, data: st.DataObject, status: DeliveryStatus, later: bool, new_key: str | None
    ) -> None:
        if not self.held:
            return
        d = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        event = None
        if new_key != "keep":  # a fix_data hook corrected the event, key included
            old = d.event
            event = Event(old.id, old.type, dict(old.payload), ordering_key=new_key)
        self.queue.complete(
            [
                Completion(
                    delivery_id=d.id,
                    lease_token=d.lease_token,
                    status=status,
                    finished_at=self.now,
                    next_attempt_at=(
                        self.now + timedelta(seconds=30 if later else 0)
                        if status is RETRY
                        else None
                    ),
                    event=event,
                    count_attempt=status is not PENDING,
                )
            ]
        )

    @rule(
        data=st.data(),
        action=st.sampled_from(
            [
                ("retry", {NEEDS_ACTION}, PENDING),
                ("resend", {DeliveryStatus.SUCCEEDED, DeliveryStatus.DISCARDED}, PENDING),
                ("resolve", {NEEDS_ACTION}, DeliveryStatus.RESOLVED),
                ("discard", {NEEDS_ACTION, PENDING, RETRY}, DeliveryStatus.DISCARDED),
                ("edit", {NEEDS_ACTION, PENDING, RETRY}, PENDING),
            ]
        ),
        new_key=st.sampled_from(["keep", *KEYS]),
    )
    def operator_acts(
        self,
        data: st.DataObject,
        action: tuple[str, set[DeliveryStatus], DeliveryStatus],
        new_key: str | None,
    ) -> None:
        name, from_status, to_status = action
        candidates = [d for d in self.rows() if d.status in from_status]
        if not candidates:
            return
        d = data.draw(st.sampled_from(candidates))
        event = None
        if new_key != "keep":  # an edit that moves the delivery to another key
            old = d.event
            event = Event(old.id, old.type, dict(old.payload), ordering_key=new_key)
        self.queue.transition(
            [d.id],
            from_status=from_status,
            to_status=to_status,
            audit=self.audit(name),
            now=self.now,
            event=event,
        )

    @rule(destination=st.sampled_from(DESTINATIONS), paused=st.booleans())
    def operator_pauses(self, destination: str, paused: bool) -> None:
        self.queue.set_destination(
            destination, now=self.now, paused=paused, paused_reason="maintenance"
        )
        (self.paused.add if paused else self.paused.discard)(destination)

    @rule(seconds=st.sampled_from([1, 31, 61]))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @invariant()
    def flags_never_hide_a_key_head(self) -> None:
        """The SQL stores' key_waits is never true on the oldest unfinished
        delivery of a key, nor on one in flight: it would hide it. (False on
        one that waits only costs a claim a read.)"""
        unfinished = "('pending', 'in_flight', 'retry_scheduled', 'needs_action')"
        sql = f"""SELECT d.event_id, d.status FROM {{t}} AS d
            WHERE d.key_waits AND d.ordering_key IS NOT NULL AND d.status IN {unfinished}
              AND (d.status = 'in_flight' OR NOT EXISTS (
                  SELECT 1 FROM {{t}} AS o
                  WHERE o.destination = d.destination AND o.ordering_key = d.ordering_key
                    AND o.status IN {unfinished} AND o.seq < d.seq))"""
        if self.backend == "sqlite":
            with self.queue._db.read("test") as conn:
                hidden = conn.execute(sql.format(t="resilient_sync_deliveries")).fetchall()
        elif self.backend == "postgres":
            table = f'"{self.queue.schema}".deliveries'
            hidden = self.queue._run(
                "read key_waits",
                lambda conn: conn.execute(sql.format(t=table)).fetchall(),
                atomic=False,
            )
        else:
            return
        assert hidden == []


def _settings(examples: int) -> settings:
    return fuzz_settings(examples, stateful_step_count=50 if LONG else 30)


class SQLiteKeyHeads(KeyHeadsMachine):
    backend = "sqlite"


class PostgresKeyHeads(KeyHeadsMachine):
    backend = "postgres"


KeyHeadsMachine.TestCase.settings = _settings(200)
SQLiteKeyHeads.TestCase.settings = _settings(200)
PostgresKeyHeads.TestCase.settings = _settings(25)
test_memory_key_heads = KeyHeadsMachine.TestCase
test_sqlite_key_heads = SQLiteKeyHeads.TestCase
test_postgres_key_heads = pytest.mark.postgres(PostgresKeyHeads.TestCase)


# -- the paths a random run rarely takes, each once on every store ---------------------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def machine(request: pytest.FixtureRequest) -> Any:
    cls = {"memory": KeyHeadsMachine, "sqlite": SQLiteKeyHeads, "postgres": PostgresKeyHeads}
    m = cls[request.param]()
    m.setup()
    yield m
    m.teardown()


class _Pick:
    """Stands in for Hypothesis's ``data``: draws the given value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, strategy: Any) -> Any:
        return self.value


def _row(m: KeyHeadsMachine, event_id: str) -> Delivery:
    return next(d for d in m.rows() if d.event.id == event_id)


def test_a_discarded_delivery_sent_again_alone_in_its_key_goes(machine: Any) -> None:
    """e2 waited behind e1 when it was discarded; sent again after e1 went,
    it is the only delivery of its key and must be claimed."""
    machine.enqueue(["A", "A"], "pos")
    discard = ("discard", {PENDING}, DeliveryStatus.DISCARDED)
    machine.operator_acts(_Pick(_row(machine, "e2")), discard, "keep")
    machine.claim(5, None)
    machine.complete(_Pick(0), DeliveryStatus.SUCCEEDED, False, "keep")
    resend = ("resend", {DeliveryStatus.DISCARDED}, PENDING)
    machine.operator_acts(_Pick(_row(machine, "e2")), resend, "keep")
    machine.claim(5, None)  # compares with the rule: e2 goes
    assert [d.event.id for d in machine.held] == ["e2"]


def test_a_waiting_delivery_edited_into_an_empty_key_goes(machine: Any) -> None:
    machine.enqueue(["A", "A"], "pos")
    edit = ("edit", {PENDING}, PENDING)
    machine.operator_acts(_Pick(_row(machine, "e2")), edit, "B")
    machine.claim(5, None)
    assert sorted(d.event.id for d in machine.held) == ["e1", "e2"]


def test_a_waiting_delivery_whose_key_is_removed_goes(machine: Any) -> None:
    """e2 waited behind e1 when an operator's edit removed its ordering key:
    it waits behind nothing now. The SQL stores kept it marked as waiting,
    and their claims, which never read such rows, never handed it out again
    (found by this file's machine in its long mode)."""
    machine.enqueue(["A", "A"], "pos")
    edit = ("edit", {PENDING}, PENDING)
    machine.operator_acts(_Pick(_row(machine, "e2")), edit, None)
    machine.claim(5, None)  # compares with the rule
    assert sorted(d.event.id for d in machine.held) == ["e1", "e2"]


def test_the_next_delivery_of_a_key_goes_once_the_first_is_delivered(machine: Any) -> None:
    machine.enqueue(["A", "A", "A"], "pos")
    machine.claim(5, None)
    assert [d.event.id for d in machine.held] == ["e1"]
    machine.complete(_Pick(0), DeliveryStatus.SUCCEEDED, False, "keep")
    machine.claim(5, None)
    assert [d.event.id for d in machine.held] == ["e2"]


def test_sqlite_a_delivery_deleted_by_hand_does_not_hold_its_key(tmp_path: Any) -> None:
    """The purge removes finished deliveries only; an unfinished one deleted
    with SQL by hand (a DBA cleaning up) hands its key to the next one."""
    m = SQLiteKeyHeads()
    m.setup()
    try:
        m.enqueue(["A", "A"], "pos")
        with m.queue._db.write("test") as conn:
            conn.execute("DELETE FROM resilient_sync_deliveries WHERE event_id = 'e1'")
        m.claim(5, None)
        assert [d.event.id for d in m.held] == ["e2"]
    finally:
        m.teardown()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_deliveries_sent_again_wait_behind_their_key_again(backend: str) -> None:
    """An operator discards a key's whole backlog, then sends it all again:
    every one but the oldest waits behind its key again (marked), so the
    claims pass over them without reading them, as before the discard."""
    m = SQLiteKeyHeads() if backend == "sqlite" else PostgresKeyHeads()
    m.setup()
    try:
        m.enqueue(["A", "A", "A", "A"], "pos")
        discard = ("discard", {PENDING}, DeliveryStatus.DISCARDED)
        resend = ("resend", {DeliveryStatus.DISCARDED}, PENDING)
        for name in ("e1", "e2", "e3", "e4"):
            m.operator_acts(_Pick(_row(m, name)), discard, "keep")
        for name in ("e1", "e2", "e3", "e4"):
            m.operator_acts(_Pick(_row(m, name)), resend, "keep")
        sql = "SELECT event_id, key_waits FROM {t}"
        if backend == "sqlite":
            with m.queue._db.read("test") as conn:
                flags = dict(conn.execute(sql.format(t="resilient_sync_deliveries")).fetchall())
        else:
            table = f'"{m.queue.schema}".deliveries'
            flags = dict(
                m.queue._run(
                    "read", lambda c: c.execute(sql.format(t=table)).fetchall(), atomic=False
                )
            )
        assert {k: bool(v) for k, v in flags.items()} == {
            "e1": False,
            "e2": True,
            "e3": True,
            "e4": True,
        }
        m.claim(5, None)
        assert [d.event.id for d in m.held] == ["e1"]
    finally:
        m.teardown()

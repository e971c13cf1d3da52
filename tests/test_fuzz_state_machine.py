"""A Hypothesis state machine over submit, run_once with a hostile
destination, the operator (retry, resolve, discard, edit, resume, purge),
stalled workers and clock jumps, on memory, SQLite and PostgreSQL.

Unlike ``test_state_machine.py`` (memory only, well-behaved outcomes), the
destinations here also return what no store can hold as it is (unencodable
text, huge or non-JSON results) and raise errors with hostile fields; and
operators edit and purge.

Invariants, after every step:

- nothing is lost: exactly one delivery per submitted (event id,
  destination), except those a purge removed (finished and old);
- nothing is doubled: the destination applies each (event id, payload)
  once, unless an operator forced an edit of that delivery or a purge took
  it (past the documented horizon);
- nothing is silent: every finished delivery has an audit trail, every
  NEEDS_ACTION one a category and a reason; nothing is left IN_FLIGHT but
  the claims of a stalled worker;
- stats() agrees with list(): the same counts by destination and status,
  and by category for what needs action.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fuzz_strategies import GATE_FORBIDDEN, LONG, LONG_FACTOR, STRIPE_KEY, UnprintableError
from resilient_sync import (
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
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, open_stores
from resilient_sync.testing import FakeClock

EVENT_IDS = ["e0", "e1", "e2", "e3", "e4"]
PAYLOADS = [
    {"n": 1},
    {"n": "é\x1b[2J", "token": STRIPE_KEY},
    {"name": "\u202e x \x00", "n": 2},
    {"nested": {"a": [1, 2.5, None, True]}},
]
POLICY = RetryPolicy(
    max_attempts=3, initial_delay=5, multiplier=2, max_delay=60, deadline=3600, jitter=True
)
LEASE = 60.0


def _rate(retry_after: Any, sent: bool | None = None) -> Any:
    return lambda: RateLimitedError("slow down", retry_after=retry_after, sent=sent)


MODES: dict[str, Any] = {
    "ok": lambda: {"id": "r-1"},
    "ok, unencodable result": lambda: {"name": "bad \ud800 \x00", "api_key": STRIPE_KEY},
    "ok, huge result": lambda: "x" * 100_000,
    "ok, not JSON": lambda: {"amount": Decimal("1.50"), "at": math.nan},
    "transient": lambda: RetryableError("POS down \x1b[31m"),
    "timeout": lambda: TimeoutError("read timed out"),
    "rate limited, inf": _rate(math.inf),
    "rate limited, nan": _rate(math.nan),
    "rate limited, huge": _rate(10**400),
    "rate limited, not sent": _rate(5, sent=False),
    "duplicate": lambda: DuplicateError("email taken \x07"),
    "data format": lambda: DataFormatError("bad phone", field="ph\ud800one"),
    "mapping": lambda: MappingError("unknown SKU"),
    "permission": lambda: PermissionDeniedError("revoked"),
    "unprintable": UnprintableError,
}


class HostileDestination:
    """Applies what it does not fail (no dedupe of its own), per the mode set
    for each event, and counts effects per (event id, payload)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.modes: dict[str, str] = {}
        self.effects: dict[tuple[str, str], int] = {}

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        value = MODES[self.modes.get(event.id, "ok")]()
        if isinstance(value, BaseException):
            raise value
        key = (event.id, json.dumps(event.payload, sort_keys=True))
        self.effects[key] = self.effects.get(key, 0) + 1
        return value


class SyncMachine(RuleBasedStateMachine):
    backend = "memory"

    @initialize()
    def setup(self) -> None:
        self.clock = FakeClock()
        self.tmp: str | None = None
        self.cleanup = lambda: None
        if self.backend == "memory":
            self.queue: Any = MemoryQueueStore()
            self.idempotency: Any = MemoryIdempotencyStore()
        elif self.backend == "sqlite":
            self.tmp = tempfile.mkdtemp(prefix="rs-fuzz-sm-")
            self.queue, self.idempotency = open_stores(
                f"sqlite:///{self.tmp}/sync.db", synchronous="NORMAL"
            )
        else:
            from pg_support import drop_schema, new_schema_name, require_postgres

            dsn, schema = require_postgres(), new_schema_name("rs_fz_sm")
            self.queue, self.idempotency = open_stores(f"{dsn}?schema={schema}")
            self.cleanup = lambda: drop_schema(schema)
        self.dests = {name: HostileDestination(name) for name in ("pos", "crm")}
        self.dispatcher = Dispatcher(
            self.queue,
            self.idempotency,
            list(self.dests.values()),
            retry=POLICY,
            clock=self.clock,
            lease=LEASE,
            batch_size=4,
            worker_id="w1",
            idempotency_ttl=timedelta(days=7),
            max_result_bytes=2048,
        )
        self.operator = Operator(self.queue, clock=self.clock)
        self.submitted: dict[tuple[str, str], str] = {}  # (event id, dest) -> payload json
        self.purged: set[tuple[str, str]] = set()
        self.unbounded: set[tuple[str, str]] = set()  # forced edits, purges: no effect bound

    def teardown(self) -> None:
        self.dispatcher.close()
        self.queue.close()
        self.idempotency.close()
        self.cleanup()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def deliveries(self) -> list[Delivery]:
        out: list[Delivery] = []
        cursor = None
        while True:
            page = self.queue.list(limit=100, cursor=cursor)
            out.extend(page.items)
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    # -- rules ---------------------------------------------------------------------------

    @rule(
        event_id=st.sampled_from(EVENT_IDS),
        payload=st.sampled_from(range(len(PAYLOADS))),
        to=st.sampled_from([None, "pos", "crm"]),
        mode=st.sampled_from(sorted(MODES)),
    )
    def submit(self, event_id: str, payload: int, to: str | None, mode: str) -> None:
        body = PAYLOADS[payload]
        for dest in [to] if to else list(self.dests):
            self.dests[dest].modes[event_id] = mode
        self.dispatcher.submit(Event(event_id, "t", body), to=to)
        for dest in [to] if to else list(self.dests):
            if (event_id, dest) not in self.submitted or (event_id, dest) in self.purged:
                self.submitted[(event_id, dest)] = json.dumps(body, sort_keys=True)
                self.purged.discard((event_id, dest))

    @rule(
        dest=st.sampled_from(["pos", "crm"]),
        event_id=st.sampled_from(EVENT_IDS),
        mode=st.sampled_from(sorted(MODES)),
    )
    def destination_changes_its_mind(self, dest: str, event_id: str, mode: str) -> None:
        self.dests[dest].modes[event_id] = mode

    @rule(limit=st.integers(1, 6))
    def run_once(self, limit: int) -> None:
        self.dispatcher.run_once(limit=limit)  # must not raise

    @rule(rounds=st.integers(1, 4))
    def work_for_a_while(self, rounds: int) -> None:
        for _ in range(rounds):
            self.dispatcher.run_once()
            self.clock.advance(61)

    @rule(seconds=st.sampled_from([1, 30, 61, 600, 4000, 86_400 * 8, 86_400 * 40]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(limit=st.integers(1, 2))
    def a_worker_claims_and_stalls(self, limit: int) -> None:
        now = self.clock.now()
        self.queue.claim(
            now=now, limit=limit, lease_until=now + timedelta(seconds=LEASE), worker="stalled"
        )

    @rule(data=st.data(), action=st.sampled_from(["retry", "resolve", "discard"]))
    def operator_acts(self, data: st.DataObject, action: str) -> None:
        candidates = [d.id for d in self.deliveries()]
        if not candidates:
            return
        chosen = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3))
        note = data.draw(st.sampled_from([None, "ok", f"see \x1b[31m {STRIPE_KEY}"]))
        getattr(self.operator, action)(chosen, actor="ops\x07", note=note)

    @rule()
    def operator_retries_all(self) -> None:
        self.operator.retry_all(actor="ops")

    @rule(dest=st.sampled_from(["pos", "crm"]))
    def operator_resumes(self, dest: str) -> None:
        self.operator.resume(dest, actor="ops")

    @rule(
        data=st.data(),
        value=st.sampled_from([3, "+49 151", None, [1, 2], {"x": "\x1b"}]),
        force=st.booleans(),
        retry=st.booleans(),
    )
    def operator_edits(self, data: st.DataObject, value: Any, force: bool, retry: bool) -> None:
        candidates = [d for d in self.deliveries() if not d.status.is_final]
        if not candidates:
            return
        d = data.draw(st.sampled_from(candidates))
        try:
            where = "changes" if "edited" in d.event.payload else "add"
            self.operator.edit(
                d.id, **{where: {"edited": value}}, actor="ops", force=force, retry=retry
            )
        except ValueError:
            return
        record = self.queue.attempts(d.id)[-1]
        assert record.action == "edit"
        key = (d.event.id, d.destination)
        self.submitted[key] = json.dumps({**d.event.payload, "edited": value}, sort_keys=True)
        if record.details.get("forced"):
            self.unbounded.add(key)

    @rule(days=st.sampled_from([1, 30]), with_keys=st.booleans())
    def operator_purges(self, days: int, with_keys: bool) -> None:
        before = {(d.event.id, d.destination): d for d in self.deliveries()}
        self.operator.purge(
            timedelta(days=days), idempotency=self.idempotency if with_keys else None, batch=3
        )
        after = {(d.event.id, d.destination) for d in self.deliveries()}
        cutoff = self.clock.now() - timedelta(days=days)
        for key, d in before.items():
            if key not in after:
                assert d.status.is_final, d  # only finished deliveries go
                assert d.updated_at < cutoff, d  # and only old ones
                self.purged.add(key)
                self.unbounded.add(key)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def nothing_is_lost_or_doubled(self) -> None:
        pairs = [(d.event.id, d.destination) for d in self.deliveries()]
        assert len(pairs) == len(set(pairs))
        assert set(pairs) == set(self.submitted) - self.purged

    @invariant()
    def no_effect_is_applied_twice(self) -> None:
        for dest in self.dests.values():
            for (event_id, payload), n in dest.effects.items():
                if (event_id, dest.name) not in self.unbounded:
                    assert n <= 1, (dest.name, event_id, payload, n)

    @invariant()
    def nothing_is_silent(self) -> None:
        for d in self.deliveries():
            if d.status is DeliveryStatus.IN_FLIGHT:
                assert d.lease_owner == "stalled", d
                continue
            records = self.queue.attempts(d.id)
            if d.status.is_final or d.status is DeliveryStatus.NEEDS_ACTION:
                assert records, d
            if d.status is DeliveryStatus.NEEDS_ACTION:
                assert d.last_error is not None, d
                assert d.last_error.message.strip(), d
            if d.last_error is not None:
                assert GATE_FORBIDDEN.search(d.last_error.message) is None, d.last_error
            for record in records[-2:]:
                assert GATE_FORBIDDEN.search(record.reason or "") is None, record
                assert STRIPE_KEY not in (record.reason or ""), record

    @invariant()
    def stats_agree_with_list(self) -> None:
        stats = self.queue.stats()
        counted: dict[str, dict[DeliveryStatus, int]] = {}
        categories: dict[str, dict[Any, int]] = {}
        for d in self.deliveries():
            counts = counted.setdefault(d.destination, {})
            counts[d.status] = counts.get(d.status, 0) + 1
            if d.status is DeliveryStatus.NEEDS_ACTION and d.last_error is not None:
                cats = categories.setdefault(d.destination, {})
                cats[d.last_error.category] = cats.get(d.last_error.category, 0) + 1
        reported = {k: {s: n for s, n in v.items() if n} for k, v in stats.by_destination.items()}
        assert {k: v for k, v in reported.items() if v} == counted
        assert stats.total == sum(sum(v.values()) for v in counted.values())
        needs = {k: {c: n for c, n in v.items() if n} for k, v in stats.needs_action.items()}
        assert {k: v for k, v in needs.items() if v} == categories


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples * LONG_FACTOR if LONG else examples,
        stateful_step_count=40 if LONG else 25,
        deadline=None,
        derandomize=not LONG,
        database=None if not LONG else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


class SQLiteMachine(SyncMachine):
    backend = "sqlite"


class PostgresMachine(SyncMachine):
    backend = "postgres"


SyncMachine.TestCase.settings = _settings(100)
SQLiteMachine.TestCase.settings = _settings(20)
PostgresMachine.TestCase.settings = _settings(3)
test_memory_machine = SyncMachine.TestCase
test_sqlite_machine = SQLiteMachine.TestCase
test_postgres_machine = pytest.mark.postgres(PostgresMachine.TestCase)


# -- found by fuzzing and fixed: regression tests ------------------------------------------------


def test_the_machine_sees_a_result_that_cannot_be_read_applied_twice() -> None:
    from fuzz_strategies import FailingMapping

    MODES["ok, result cannot be read"] = FailingMapping
    machine = SyncMachine()
    try:
        machine.setup()
        machine.submit("e0", 0, "pos", "ok, result cannot be read")
        machine.work_for_a_while(2)
        machine.no_effect_is_applied_twice()
    finally:
        machine.teardown()
        del MODES["ok, result cannot be read"]

"""Regression tests for the hardening issue ("Nothing lost, nothing doubled,
nothing leaked"), one section per numbered finding, on every store.

Each test reproduces what was seen on the code before the fix.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from core_support import event
from resilient_sync import (
    AsyncDispatcher,
    Attempt,
    Classifier,
    DataFormatError,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    ErrorCategory,
    Event,
    IdempotencyStore,
    InvalidEventError,
    Operator,
    Producer,
    QueueStore,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
    SyncError,
)
from resilient_sync._core import revision_risk
from resilient_sync._redact import redact
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, open_stores
from resilient_sync.testing import FakeClock, RecordingDestination

Pair = tuple[QueueStore, IdempotencyStore]
SECRET = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
TOKEN = "Bearer abcdef0123456789TOKEN"


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """A fresh queue store and idempotency store of one backend."""
    if request.param == "memory":
        pair: Pair = (MemoryQueueStore(), MemoryIdempotencyStore())
    elif request.param == "sqlite":
        pair = open_stores(f"sqlite:///{tmp_path / 'hardening.db'}")
    else:
        from pg_support import drop_schema, new_schema_name, require_postgres

        dsn, schema = require_postgres(), new_schema_name("rs_hard")
        request.addfinalizer(lambda: drop_schema(schema))  # noqa: PT021 - also if opening fails
        pair = open_stores(f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}")
    yield pair
    pair[0].close()
    pair[1].close()


POLICY = RetryPolicy(max_attempts=3, initial_delay=1, jitter=False, deadline=None)


def dispatcher(pair: Pair, *destinations: Any, **kwargs: Any) -> Dispatcher:
    kwargs.setdefault("clock", FakeClock())
    kwargs.setdefault("retry", POLICY)
    return Dispatcher(pair[0], pair[1], list(destinations), **kwargs)


def only(queue: QueueStore) -> Any:
    (delivery,) = queue.list().items
    return delivery


# -- 1. a double effect through Operator.edit ---------------------------------------


class Throttling:
    """429s one event, accepts the rest (and records every effect applied)."""

    name = "pos"

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []

    def deliver(self, e: Event, context: DeliveryContext) -> Any:
        if e.id == "throttled":
            raise RateLimitedError("slow down", retry_after=30)
        self.applied.append((e.id, context.idempotency_key))
        return {"id": e.id}


def test_edit_refuses_a_delivery_handed_back_after_its_worker_died_mid_attempt(
    stores: Pair,
) -> None:
    queue, _ = stores
    clock = FakeClock()
    pos = Throttling()
    d = dispatcher(stores, pos, clock=clock, lease=60)
    d.submit(Event("throttled", "t", {}))
    d.submit(Event("c1", "customer.created", {"phone": "0151"}))
    # worker A claims c1 alone, the POS applies it, and A dies before recording it
    (claimed,) = queue.claim(
        now=clock.now(),
        limit=1,
        lease_until=clock.now() + timedelta(seconds=60),
        worker="A",
        destinations=["other"],
    ) or [None]
    assert claimed is None  # nothing for another destination
    batch = queue.claim(
        now=clock.now(), limit=2, lease_until=clock.now() + timedelta(seconds=60), worker="A"
    )
    victim = next(x for x in batch if x.event.id == "c1")
    pos.deliver(
        victim.event,
        DeliveryContext(
            delivery_id=victim.id,
            destination="pos",
            idempotency_key=victim.idempotency_key,
            attempt=1,
        ),
    )
    clock.advance(61)  # A's lease expires; worker B reclaims both, 429 first: c1 handed back
    d.run_once()
    c1 = next(x for x in queue.list().items if x.event.id == "c1")
    assert c1.status is DeliveryStatus.PENDING
    assert c1.last_error is None
    assert [a.action for a in queue.attempts(c1.id)] == ["lease_expired"]
    op = Operator(queue, clock=clock)
    with pytest.raises(ValueError, match="no recorded outcome") as refused:
        op.edit(c1.id, {"phone": "+49151"}, actor="ada")
    assert "force" in str(refused.value)
    assert queue.get(c1.id).idempotency_key == c1.idempotency_key  # nothing written
    # with force it goes through, and the audit says it was forced and why
    edited = op.edit(c1.id, {"phone": "+49151"}, actor="ada", force=True)
    record = op.attempts(c1.id)[-1]
    assert record.action == "edit"
    assert record.details["forced"] is True
    assert "no recorded outcome" in record.details["risk"]
    assert edited.idempotency_key != c1.idempotency_key


def test_a_rejection_after_the_unknown_attempt_makes_the_edit_safe(stores: Pair) -> None:
    queue, _ = stores
    calls: list[int] = []

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            calls.append(context.attempt)
            if context.attempt == 1:
                raise RetryableError("read timeout after sending")
            raise DataFormatError("phone must be E.164", field="phone")

    clock = FakeClock()
    d = dispatcher(stores, Pos(), clock=clock)
    d.submit(Event("c1", "customer.created", {"phone": "0151"}))
    d.run_once()
    delivery = only(queue)
    op = Operator(queue, clock=clock)
    with pytest.raises(ValueError, match="transient"):
        op.edit(delivery.id, {"phone": "+49151"}, actor="ada")
    clock.advance(10)
    d.run_once()  # the same payload, same key: now rejected, so nothing was applied
    assert only(queue).status is DeliveryStatus.NEEDS_ACTION
    edited = op.edit(delivery.id, {"phone": "+49151"}, actor="ada", retry=True)
    assert edited.status is DeliveryStatus.PENDING


def test_revision_risk_reads_the_whole_trail() -> None:
    from resilient_sync import ErrorInfo

    t = FakeClock().now()

    def rec(action: str, category: ErrorCategory | None = None, **details: Any) -> Attempt:
        error = ErrorInfo(category=category, message="m") if category else None
        return Attempt(
            delivery_id="d",
            destination="pos",
            action=action,
            actor="w",
            started_at=t,
            finished_at=t,
            number=1,
            error=error,
            details=details,
        )

    assert revision_risk([]) is None
    assert revision_risk([rec("deliver", ErrorCategory.DATA_FORMAT)]) is None
    assert revision_risk([rec("deliver", ErrorCategory.TRANSIENT)]) is not None
    assert revision_risk([rec("lease_expired")]) is not None
    assert revision_risk([rec("lease_expired"), rec("deliver", ErrorCategory.MAPPING)]) is None
    assert revision_risk([rec("deliver", ErrorCategory.MAPPING), rec("give_up")]) is not None
    assert revision_risk([rec("internal_error", destination_called=False)]) is None
    assert revision_risk([rec("internal_error")]) is not None
    assert revision_risk([rec("deliver", ErrorCategory.UNEXPECTED), rec("edit")]) is None
    # refusals that do not judge the payload prove nothing about an earlier attempt
    for category in (ErrorCategory.PERMISSION, ErrorCategory.RATE_LIMITED, ErrorCategory.DUPLICATE):
        assert revision_risk([rec("deliver", category)]) is None  # nothing unknown before
        unknown_then_refused = [rec("deliver", ErrorCategory.TRANSIENT), rec("deliver", category)]
        assert revision_risk(unknown_then_refused) is not None, category


def test_a_401_after_an_unknown_outcome_does_not_make_the_edit_safe(stores: Pair) -> None:
    """The chaos run's finding: applied, timed out; the retry got a 401; the edit
    was accepted and the POS applied the event a second time under a new key."""
    queue, _ = stores
    applied: list[str] = []

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            if context.attempt == 1:
                applied.append(context.idempotency_key)
                raise RetryableError("read timeout after sending")
            from resilient_sync import PermissionDeniedError

            raise PermissionDeniedError("token revoked")

    clock = FakeClock()
    d = dispatcher(stores, Pos(), clock=clock)
    d.submit(Event("c1", "customer.created", {"phone": "0151"}))
    d.run_once()
    clock.advance(10)
    d.run_once()
    delivery = only(queue)
    assert delivery.last_error.category is ErrorCategory.PERMISSION
    with pytest.raises(ValueError, match="transient"):
        Operator(queue, clock=clock).edit(delivery.id, {"phone": "+49151"}, actor="ada")


class ClaimsBetween(MemoryQueueStore):
    """A worker claims the delivery between the edit's check and its write."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.armed = False

    def attempts(self, delivery_id: str) -> list[Attempt]:
        records = super().attempts(delivery_id)
        if self.armed:
            self.armed = False
            now = self.clock.now()
            self.claim(now=now, limit=10, lease_until=now + timedelta(seconds=60), worker="B")
            self.complete([])
        return records


def test_an_edit_racing_a_claim_writes_nothing() -> None:
    clock = FakeClock()
    queue = ClaimsBetween(clock)
    Producer(queue, ["pos"], clock=clock).submit(Event("c1", "t", {"phone": "0151"}))
    delivery = only(queue)
    queue.armed = True
    with pytest.raises(ValueError, match="changed while it was being edited"):
        Operator(queue, clock=clock).edit(delivery.id, {"phone": "+49"}, actor="ada")
    assert queue.get(delivery.id).event.payload == {"phone": "0151"}


# -- 2. one remote response must not stop the worker or wedge its batch ------------


class Hostile:
    """Returns or raises what a careless remote API sends, per event id."""

    name = "pos"

    def deliver(self, e: Event, context: DeliveryContext) -> Any:
        kind = e.id
        if kind == "surrogate-result":
            return {"name": "bad \ud800 text", "nul": "a\x00b"}
        if kind == "surrogate-field":
            raise DataFormatError("invalid \ud800 value \x00 here", field="ph\ud800one")
        if kind == "inf-retry-after":
            raise RateLimitedError("slow down", retry_after=float("inf"))
        if kind == "nan-retry-after":
            raise RetryableError("flaky", retry_after=math.nan)
        if kind == "str-retry-after":
            raise RetryableError("flaky", retry_after="soon")  # type: ignore[arg-type]
        if kind == "huge-result":
            return {"blob": "x" * 5_000_000}
        if kind == "unprintable":
            raise Unprintable()
        if kind == "decimal":
            return {"amount": Decimal("1.50"), "big": 10**5000}
        return {"ok": True}


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


HOSTILE = [  # the 429 last: it holds the destination back for the rest of the batch
    "surrogate-result",
    "surrogate-field",
    "nan-retry-after",
    "str-retry-after",
    "huge-result",
    "unprintable",
    "decimal",
    "fine",
    "inf-retry-after",
]


def test_whatever_a_destination_returns_or_raises_ends_as_that_deliverys_outcome(
    stores: Pair,
) -> None:
    queue, _ = stores
    d = dispatcher(stores, Hostile())
    d.submit_many([Event(kind, "t", {}) for kind in HOSTILE])
    report = d.run_once()  # never raises
    assert report.claimed == len(HOSTILE)
    assert report.lost_lease == 0
    by_id = {x.event.id: x for x in queue.list(limit=50).items}
    assert {k for k, x in by_id.items() if x.status is DeliveryStatus.IN_FLIGHT} == set()
    assert by_id["fine"].status is DeliveryStatus.SUCCEEDED
    assert by_id["surrogate-result"].status is DeliveryStatus.SUCCEEDED
    assert by_id["surrogate-result"].result["name"] == "bad \ufffd text"
    field_error = by_id["surrogate-field"].last_error
    assert field_error is not None
    assert by_id["surrogate-field"].status is DeliveryStatus.NEEDS_ACTION
    assert "\x00" not in field_error.message
    assert field_error.field == "ph\ufffdone"
    for kind in ("inf-retry-after", "nan-retry-after", "str-retry-after"):
        assert by_id[kind].status is DeliveryStatus.RETRY_SCHEDULED, kind
    huge = by_id["huge-result"]
    assert huge.status is DeliveryStatus.SUCCEEDED
    assert huge.result["truncated"] is True
    assert huge.result["bytes"] > 5_000_000
    assert by_id["unprintable"].status is DeliveryStatus.RETRY_SCHEDULED
    assert "Unprintable" in by_id["unprintable"].last_error.message
    assert by_id["decimal"].result["amount"] == "1.50"


def test_run_forever_survives_a_batch_that_fails_outside_any_delivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading

    class Flaky(MemoryQueueStore):
        calls = 0

        def next_due(self) -> Any:
            type(self).calls += 1
            if type(self).calls == 1:
                raise RuntimeError("a bug outside any delivery")
            return super().next_due()

    queue = Flaky()
    clock = FakeClock()
    pos = RecordingDestination("pos")
    d = Dispatcher(queue, MemoryIdempotencyStore(), [pos], clock=clock, poll_interval=0.01)
    stop = threading.Event()
    d.submit(Event("a", "t", {}))
    runs = {"n": 0}

    original = d.run_once

    def counted(limit: int | None = None) -> Any:
        runs["n"] += 1
        if runs["n"] >= 4:
            stop.set()
        return original(limit)

    d.run_once = counted  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="resilient_sync"):
        d.run_forever(stop)
    assert [e.id for e in pos.applied] == ["a"]
    assert any("unexpected error in the worker loop" in r.getMessage() for r in caplog.records)


def test_an_async_destination_cancelling_itself_is_that_deliverys_transient_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Cancels:
        name = "pos"

        async def deliver(self, e: Event, context: DeliveryContext) -> Any:
            raise asyncio.CancelledError("the HTTP library gave up")

    queue = MemoryQueueStore()
    d = AsyncDispatcher(queue, MemoryIdempotencyStore(), [Cancels()], clock=FakeClock())

    async def main() -> Any:
        await d.submit(Event("a", "t", {}))
        return await d.run_once()

    with caplog.at_level(logging.WARNING, logger="resilient_sync"):
        report = asyncio.run(main())
    assert report.retry_scheduled == 1
    delivery = only(queue)
    assert delivery.last_error.category is ErrorCategory.TRANSIENT
    assert "cancelled" in delivery.last_error.message
    assert any("CancelledError" in r.getMessage() for r in caplog.records)


# -- 3. secrets never leak ------------------------------------------------------------


def test_a_failing_classifier_rule_cannot_leak_a_token(
    stores: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    queue, _ = stores

    def rule(exc: BaseException) -> Any:
        raise RuntimeError(f"rule crashed on headers Authorization: {TOKEN}")

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            raise ValueError(f"upstream said {TOKEN} and api_key={SECRET}")

    d = dispatcher(stores, Pos(), classifier=Classifier([rule]))
    d.submit(Event("a", "t", {}))
    with caplog.at_level(logging.DEBUG, logger="resilient_sync"):
        d.run_once()
    delivery = only(queue)
    stored = [delivery.last_error.message] + [
        f"{a.reason} {a.error} {a.details}" for a in queue.attempts(delivery.id)
    ]
    logged = [r.getMessage() for r in caplog.records] + [r.exc_text or "" for r in caplog.records]
    for text in stored + logged:
        assert "abcdef0123456789TOKEN" not in text
        assert SECRET not in text
    assert "classifier failed" in delivery.last_error.message


def test_notes_actors_and_edited_values_pass_the_gate(stores: Pair) -> None:
    queue, _ = stores

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            raise DataFormatError("bad password", field="password")

    clock = FakeClock()
    d = dispatcher(stores, Pos(), clock=clock)
    d.submit(Event("a", "t", {"password": "hunter2-old-secret", "name": "x"}))
    d.run_once()
    delivery = only(queue)
    op = Operator(queue, clock=clock)
    op.edit(
        delivery.id,
        {"password": "hunter2-new-secret"},
        actor="ada\x1b[31m",
        note=f"rotated, the old one was {SECRET}\x07",
    )
    record = op.attempts(delivery.id)[-1]
    flat = f"{record.reason} {record.actor} {record.details}"
    assert "hunter2" not in flat
    assert SECRET not in flat
    assert "\x1b" not in flat
    assert "\x07" not in flat
    op.resolve(delivery.id, actor="ada", note=f"done with {TOKEN}")
    assert "abcdef0123456789TOKEN" not in (op.attempts(delivery.id)[-1].reason or "")


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("GET https://api.example.com/v1/x?key=AIzaSyA1234567890abcdefghijklmnopqrstu", "AIzaSy"),
        ("private_key=-----BEGINabc123", "BEGINabc123"),
        ("Server=db;Uid=sa;Pwd=hunter2;", "hunter2"),
        (f"charged with {SECRET}", SECRET),
        (
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0",
            "dozjgNryP4J3jVmNHl0w5N",
        ),
        ("HTTP Request: GET https://s3/x?X-Amz-Signature=0123abcd&sig=zzzz9999 200", "0123abcd"),
        ("HTTP Request: GET https://blob/x?sv=1&sig=zzzz9999 200", "zzzz9999"),
        ('{"client_secret": "cs-1234"}', "cs-1234"),
    ],
)
def test_redaction_patterns(text: str, leaked: str) -> None:
    assert leaked not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:////etc/passwd",
        "SQLite store '/etc/passwd': open failed",
        "idempotency_key=abc",
        "ordering_key: k1",
        "token revoked",
        "error code=card_declined",
    ],
)
def test_redaction_leaves_non_secrets_alone(text: str) -> None:
    assert redact(text) == text


# -- 7. bad input: one set of rules on every store -----------------------------------


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (Event("a", "t", {"n": 10**5000}), "integer"),
        (Event("a", "t", {"s": "x\ud800"}), "lone surrogate"),
        (Event("a", "t", {"k\udc80": 1}), "lone surrogate"),
        (Event("a\x00", "t", {}), "U\\+0000"),
        (Event("a", "t\x1b[2J", {}), "U\\+001B"),
        (Event("a", "t", {}, ordering_key="k\x1f"), "U\\+001F"),
        (Event("a", "t", {}, idempotency_key="k\u202e"), "U\\+202E"),
        (Event("a", "t", {"x": Decimal(1)}), "Decimal"),
    ],
)
def test_submit_refuses_bad_input_on_every_store(stores: Pair, bad: Event, match: str) -> None:
    queue, _ = stores
    d = dispatcher(stores, RecordingDestination("pos"))
    with pytest.raises(InvalidEventError, match=match):
        d.submit(bad)
    assert queue.stats().total == 0
    assert d.run_once().claimed == 0  # and the worker is fine


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (Event("a\x00", "t", {}), "U\\+0000"),
        (Event("a", "t", {"s": "x\ud800"}), "lone surrogate"),
        (Event("a", "t", {"n": 10**5000}), "integer"),
    ],
)
def test_every_store_refuses_the_same_bad_deliveries_when_called_directly(
    stores: Pair, bad: Event, match: str
) -> None:
    from resilient_sync._core import new_delivery

    queue, _ = stores
    good = new_delivery(Event("good", "t", {}), "pos", FakeClock().now())
    with pytest.raises(InvalidEventError, match=match):
        queue.enqueue([good, new_delivery(bad, "pos", FakeClock().now())])
    assert queue.stats().total == 0  # all or nothing


@pytest.mark.parametrize("name", ["pos\x00", "po\x1fs", "", "  ", "pos\x1b", "x" * 300])
def test_destination_names_that_break_stores_or_keys_are_refused(name: str) -> None:
    class Dest:
        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            return None

    dest = Dest()
    dest.name = name  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="destination"):
        Dispatcher(MemoryQueueStore(), MemoryIdempotencyStore(), [dest])
    with pytest.raises(ValueError, match="destination"):
        Producer(MemoryQueueStore(), [name])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_delay": 1e300},
        {"initial_delay": 10**400},
        {"deadline": timedelta(days=999_999_999)},
        {"max_retry_after": math.inf},
        {"multiplier": 1e300},
        {"max_attempts": 10**30},
    ],
)
def test_retry_policies_that_would_overflow_are_refused_at_construction(
    kwargs: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("name", ["lease", "idempotency_ttl", "poll_interval"])
def test_dispatcher_durations_that_would_overflow_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Dispatcher(
            MemoryQueueStore(),
            MemoryIdempotencyStore(),
            [RecordingDestination("pos")],
            **{name: 1e300},
        )


# -- 10. SyncError.details is audited -----------------------------------------------


def test_sync_error_details_reach_the_audit_trail_through_the_gate(stores: Pair) -> None:
    queue, _ = stores

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            raise SyncError(
                "rejected", details={"request_id": "req_42", "api_key": SECRET, "n": math.inf}
            )

    d = dispatcher(stores, Pos())
    d.submit(Event("a", "t", {}))
    d.run_once()
    record = queue.attempts(only(queue).id)[-1]
    details = record.details["error_details"]
    assert details["request_id"] == "req_42"
    assert details["api_key"] == "[REDACTED]"
    assert details["n"] == "inf"


def test_producer_submits_by_name_and_says_what_it_skipped(stores: Pair) -> None:
    queue, idempotency = stores
    clock = FakeClock()
    with Producer(queue, ["pos", "crm"], clock=clock) as producer:
        first = producer.submit(event("e1"))
        again = producer.submit(event("e1"))
        one = producer.submit(event("e2"), to="crm")
        with pytest.raises(ValueError, match="unknown destination 'typo'"):
            producer.submit(event("e3"), to="typo")
    assert (len(first), first.skipped) == (2, 0)
    assert (len(again), again.skipped) == (0, 2)
    assert [x.destination for x in one] == ["crm"]
    # a worker serving only "pos" delivers its share; "crm" waits for its own worker
    pos = RecordingDestination("pos")
    Dispatcher(queue, idempotency, [pos], clock=clock).run_until_idle()
    assert [e.id for e in pos.applied] == ["e1"]


def test_a_client_side_refusal_that_sent_nothing_spends_no_attempt(stores: Pair) -> None:
    queue, _ = stores
    clock = FakeClock()

    class Limited:
        name = "pos"

        def __init__(self) -> None:
            self.refusals = 0

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            if self.refusals < 5:
                self.refusals += 1
                raise RateLimitedError("local limiter: next slot in 2s", retry_after=2, sent=False)
            return {"ok": True}

    d = dispatcher(stores, Limited(), clock=clock)  # max_attempts=3
    d.submit(Event("a", "t", {}))
    for _ in range(6):
        d.run_once()
        clock.advance(2)
    delivery = only(queue)
    assert delivery.status is DeliveryStatus.SUCCEEDED  # 5 refusals did not exhaust 3 attempts
    assert delivery.attempts == 1


def test_a_destinations_own_secrets_echoed_in_a_result_are_never_stored(stores: Pair) -> None:
    """The chaos run's finding: an API echoed our token and API key in a 2xx body."""
    import httpx

    from resilient_sync.http import HttpDestination

    queue, idempotency = stores
    token, api_key = "pt_Zq81fJ2kd0Lm4Ahxx", "k-7b1e59f0c2d4"

    def echo(request: httpx.Request) -> httpx.Response:
        seen = f"{request.headers['authorization'].split()[-1]} {request.url.params['key']}"
        return httpx.Response(201, json={"id": "C-1", "debug": {"received": seen}})

    pos = HttpDestination(
        "pos",
        "https://pos.example.com",
        "/customers",
        headers={"Authorization": f"Bearer {token}"},
        params={"key": api_key},
        transport=httpx.MockTransport(echo),
    )
    assert {token, api_key} <= pos.secrets
    d = Dispatcher(queue, idempotency, [pos], clock=FakeClock())
    d.submit(Event("a", "t", {}))
    d.run_once()
    delivery = only(queue)
    assert delivery.status is DeliveryStatus.SUCCEEDED
    stored = f"{delivery.result} {queue.attempts(delivery.id)}"
    assert token not in stored
    assert api_key not in stored
    assert delivery.result["id"] == "C-1"


@pytest.mark.parametrize(
    "key",
    ["a\x00b", "x" * 5_000_000, "\x1b[31mpos", "Bearer sk_live_abcdefghijklmnopqrstuvwx"],
    ids=["nul", "5mb", "ansi", "token"],
)
def test_a_refused_payload_names_its_path_escaped_capped_and_redacted(key: str) -> None:
    """A payload that is not JSON is refused with its path, and the path is
    the payload's own keys: the message and ``field`` go out escaped, capped
    and with tokens redacted (a submit's error reaches logs and responses)."""
    from resilient_sync import InvalidEventError

    queue = MemoryQueueStore()
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [RecordingDestination("pos")])
    with pytest.raises(InvalidEventError) as info:
        dispatcher.submit(Event("e1", "t", {key: {1, 2}}))
    for text in (str(info.value), info.value.field or ""):
        assert "\x1b" not in text
        assert "\x00" not in text
        assert len(text) < 600
        assert "sk_live_abcdefghijklmnopqrstuvwx" not in text
    assert "is a set" in str(info.value)
    assert queue.stats().total == 0

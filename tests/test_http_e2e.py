"""End to end: HttpDestination through the real Dispatcher against a scripted
POS server on 127.0.0.1 (tests/http_server.py). The server records every
idempotency key and proves that no effect is ever applied twice."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from http_server import TOKEN, PosServer, Reset, Slow, Status
from resilient_sync import (
    AsyncDispatcher,
    CircuitBreaker,
    Delivery,
    DeliveryStatus,
    Dispatcher,
    ErrorCategory,
    Event,
    Operator,
    RetryPolicy,
)
from resilient_sync.http import AsyncHttpDestination, HttpDestination
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: A short read timeout (Slow steps answer after 1 s); generous for everything else.
TIMEOUT = httpx.Timeout(5.0, read=0.5)
RETRY = RetryPolicy(max_attempts=10, initial_delay=1, jitter=False)


class PosCustomers(HttpDestination):
    """The POS adapter: create a customer; on a duplicate, link to the existing one."""

    def resolve_duplicate(self, event: Event, error: Exception) -> Any:
        found = self.request("GET", "/customers", params={"email": event.payload["email"]})
        customers = found.json()["customers"]
        return {"customer_id": customers[0]["id"], "linked": True} if customers else None


def customer_id(response: httpx.Response) -> Any:
    return {"customer_id": response.json()["customer"]["id"]}


class Harness:
    def __init__(self, pos: PosServer, **options: Any) -> None:
        self.pos = pos
        self.clock = FakeClock(START)
        cls = options.pop("cls", PosCustomers)
        concurrency = options.pop("concurrency", 1)
        self.dest = cls(
            "pos",
            options.pop("base_url", pos.url),
            "/customers",
            headers=options.pop("headers", AUTH),
            timeout=TIMEOUT,
            clock=self.clock,
            read_result=customer_id,
            **options,
        )
        self.queue = MemoryQueueStore()
        self.dispatcher = Dispatcher(
            self.queue,
            MemoryIdempotencyStore(),
            [self.dest],
            retry=RETRY,
            clock=self.clock,
            concurrency=concurrency,
        )
        self.op = Operator(self.queue, self.clock)

    def submit(self, n: int, email: str | None = None) -> Delivery:
        payload = {"name": f"Customer {n}", "email": email or f"c{n}@example.com"}
        (delivery,) = self.dispatcher.submit(Event(f"e{n}", "customer.created", payload))
        return delivery

    def run(self, rounds: int = 1, step: float = 60) -> None:
        for _ in range(rounds):
            self.dispatcher.run_until_idle()
            self.clock.advance(step)

    def get(self, delivery: Delivery) -> Delivery:
        return self.op.get(delivery.id)


@pytest.fixture
def pos() -> Iterator[PosServer]:
    with PosServer() as server:
        yield server
    assert server.errors == []


@pytest.fixture
def h(pos: PosServer) -> Iterator[Harness]:
    harness = Harness(pos)
    yield harness
    harness.dest.close()


def assert_no_effect_twice(pos: PosServer) -> None:
    assert pos.max_effects_per_key() == 1
    for key, bodies in pos.bodies_by_key().items():
        assert len(bodies) == 1, f"key {key} was sent with {len(bodies)} different bodies"


# --- the scripted failures ------------------------------------------------------------------


def test_503s_then_success(h: Harness, pos: PosServer) -> None:
    pos.script(Status(503), Status(503, {"Retry-After": "5"}, {"error": "maintenance"}))
    delivery = h.submit(1)
    h.run()
    after_first = h.get(delivery)
    assert after_first.status is DeliveryStatus.RETRY_SCHEDULED
    assert after_first.last_error is not None
    assert after_first.last_error.category is ErrorCategory.TRANSIENT
    h.run(3)
    done = h.get(delivery)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.result == {"customer_id": "cus_1"}
    assert len(pos.creates()) == 3
    assert_no_effect_twice(pos)


@pytest.mark.parametrize(
    "form",
    ["integer", "decimal", "http-date", "past-http-date"],
)
def test_429_with_each_retry_after_form(h: Harness, pos: PosServer, form: str) -> None:
    value, expected = {
        "integer": ("3", 3.0),
        "decimal": ("2.5", 2.5),
        "http-date": (email.utils.formatdate(time.time() + 4, usegmt=True), 4.0),
        "past-http-date": (email.utils.formatdate(time.time() - 60, usegmt=True), 0.0),
    }[form]
    pos.script(Status(429, {"Retry-After": value}, {"errors": "Exceeded 2 calls per second"}))
    first, second = h.submit(1), h.submit(2)
    h.dispatcher.run_until_idle()
    # the 429 held the destination: the second was not sent (a past date means "now")
    assert len(pos.creates()) == (1 if expected else 2)
    limited = h.get(first)
    assert limited.status is DeliveryStatus.RETRY_SCHEDULED
    assert limited.last_error is not None
    assert limited.last_error.category is ErrorCategory.RATE_LIMITED
    assert limited.last_error.retry_after == pytest.approx(expected, abs=1.0)
    assert limited.next_attempt_at is not None
    assert limited.next_attempt_at >= START + timedelta(seconds=expected - 1)
    if expected:
        state = h.op.destinations()["pos"]
        assert state.hold_until is not None
        assert (state.hold_until - START).total_seconds() == pytest.approx(expected, abs=1.0)
        assert state.hold_reason is not None
        assert "HTTP 429" in state.hold_reason
    h.run(3)
    assert h.get(first).status is DeliveryStatus.SUCCEEDED
    assert h.get(second).status is DeliveryStatus.SUCCEEDED
    assert_no_effect_twice(pos)


def test_409_key_in_flight_is_retried_shortly(h: Harness, pos: PosServer) -> None:
    in_flight = {
        "error": {
            "type": "idempotency_error",
            "message": "There is currently another in-progress request using this "
            "Idempotency Key. Please try again later.",
        }
    }
    pos.script(Status(409, body=in_flight))
    delivery = h.submit(1)
    h.dispatcher.run_until_idle()
    waiting = h.get(delivery)
    assert waiting.status is DeliveryStatus.RETRY_SCHEDULED
    assert waiting.last_error is not None
    assert waiting.last_error.category is ErrorCategory.TRANSIENT
    assert waiting.last_error.retry_after == 1.0
    h.run(2, step=2)
    assert h.get(delivery).status is DeliveryStatus.SUCCEEDED
    assert_no_effect_twice(pos)


def test_409_conflict_is_a_duplicate_linked_by_the_hook(h: Harness, pos: PosServer) -> None:
    existing = h.submit(1, email="ada@example.com")
    h.run()
    pos.script(Status(409, body={"error": "customer already exists"}))
    again = h.submit(2, email="ada@example.com")
    h.run()
    assert h.get(again).result == {
        "customer_id": h.get(existing).result["customer_id"],
        "linked": True,
    }
    assert len(pos.customers) == 1


def test_422_taken_email_links_to_the_existing_customer(h: Harness, pos: PosServer) -> None:
    first = h.submit(1, email="grace@example.com")
    second = h.submit(2, email="Grace@Example.com")
    h.run()
    assert h.get(first).result == {"customer_id": "cus_1"}
    assert h.get(second).result == {"customer_id": "cus_1", "linked": True}
    assert [a.action for a in h.op.attempts(second.id)] == ["deliver", "resolve_duplicate"]
    assert len(pos.customers) == 1


def test_422_with_a_field_needs_action_with_that_field(h: Harness, pos: PosServer) -> None:
    delivery = h.submit(1, email="not-an-email")
    h.run()
    stuck = h.get(delivery)
    assert stuck.status is DeliveryStatus.NEEDS_ACTION
    assert stuck.last_error is not None
    assert stuck.last_error.category is ErrorCategory.DATA_FORMAT
    assert stuck.last_error.field == "email"
    assert "HTTP 422" in stuck.last_error.message
    assert pos.customers == {}


def test_422_fixed_by_fix_data_is_sent_under_a_revised_key(pos: PosServer) -> None:
    def fix(event: Event, error: Exception) -> Event:
        return Event(event.id, event.type, {**event.payload, "email": "fixed@example.com"})

    h = Harness(pos, fix_data=fix)
    delivery = h.submit(1, email="not-an-email")
    h.run()
    done = h.get(delivery)
    assert done.status is DeliveryStatus.SUCCEEDED
    keys = [r.key for r in pos.creates()]
    assert keys[0] == delivery.idempotency_key
    assert keys[1] == done.idempotency_key != keys[0]
    assert_no_effect_twice(pos)
    h.dest.close()


def test_401_pauses_the_destination_until_an_operator_resumes_it(pos: PosServer) -> None:
    h = Harness(pos, headers={"Authorization": "Bearer revoked-token-0000"})
    first, second = h.submit(1), h.submit(2)
    h.run()
    assert len(pos.requests) == 1  # paused: the second was not sent
    stuck = h.get(first)
    assert stuck.status is DeliveryStatus.NEEDS_ACTION
    assert stuck.last_error is not None
    assert stuck.last_error.category is ErrorCategory.PERMISSION
    assert "revoked-token-0000" not in stuck.last_error.message
    state = h.op.destinations()["pos"]
    assert state.paused
    assert state.paused_reason is not None
    assert "HTTP 401" in state.paused_reason

    h.dest.headers["Authorization"] = f"Bearer {TOKEN}"  # the new token
    h.op.resume("pos", actor="ops")
    h.op.retry([first.id], actor="ops")
    h.run()
    assert h.get(first).status is DeliveryStatus.SUCCEEDED
    assert h.get(second).status is DeliveryStatus.SUCCEEDED
    assert_no_effect_twice(pos)
    h.dest.close()


@pytest.mark.parametrize("applied", [True, False])
def test_connection_reset_after_the_request_was_read(
    h: Harness, pos: PosServer, applied: bool
) -> None:
    pos.script(Reset(apply=applied))
    delivery = h.submit(1)
    h.dispatcher.run_until_idle()
    failed = h.get(delivery)
    assert failed.status is DeliveryStatus.RETRY_SCHEDULED
    assert failed.last_error is not None
    assert failed.last_error.category is ErrorCategory.TRANSIENT
    assert "outcome unknown" in failed.last_error.message
    h.run(2)
    assert h.get(delivery).result == {"customer_id": "cus_1"}
    creates = pos.creates()
    assert len(creates) == 2
    assert creates[0].body == creates[1].body
    assert creates[0].key == creates[1].key
    assert_no_effect_twice(pos)


def test_slow_response_beyond_the_timeout(h: Harness, pos: PosServer) -> None:
    pos.script(Slow(1.0))
    delivery = h.submit(1)
    h.dispatcher.run_until_idle()
    failed = h.get(delivery)
    assert failed.last_error is not None
    assert failed.last_error.category is ErrorCategory.TRANSIENT
    assert failed.last_error.exception_type is not None
    assert "ReadTimeout" in failed.last_error.message
    assert "outcome unknown" in failed.last_error.message
    assert len(pos.customers) == 1  # the server did apply it
    h.run(2)
    assert h.get(delivery).result == {"customer_id": "cus_1"}  # the replayed answer
    assert len(pos.creates()) == 2
    assert_no_effect_twice(pos)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_opens_the_circuit(pos: PosServer) -> None:
    h = Harness(
        pos,
        base_url=f"http://127.0.0.1:{_closed_port()}",
        circuit_breaker=CircuitBreaker(threshold=2, cool_off=120),
    )
    deliveries = [h.submit(n) for n in range(3)]
    h.dispatcher.run_until_idle()
    errors = [h.get(d).last_error for d in deliveries[:2]]
    assert all(e is not None and "never left" in e.message for e in errors)
    state = h.op.destinations()["pos"]
    assert state.hold_reason is not None
    assert state.hold_reason.startswith("circuit open after 2 consecutive transient failures")
    assert h.get(deliveries[2]).attempts == 0  # held back, never attempted

    h.dest.base_url = pos.url  # the POS is reachable again
    h.run(1, step=121)
    h.run(3)
    assert {h.get(d).status for d in deliveries} == {DeliveryStatus.SUCCEEDED}
    assert_no_effect_twice(pos)
    h.dest.close()


def test_a_storm_of_failures_applies_every_effect_exactly_once(pos: PosServer) -> None:
    h = Harness(pos, concurrency=4)
    pos.script(
        Status(503),
        Reset(),
        Slow(1.0),
        Status(429, {"Retry-After": "1.5"}),
        Reset(apply=False),
        Status(502, body={"error": "bad gateway"}),
        Status(409, body={"title": "A request is outstanding for this Idempotency-Key"}),
        Slow(1.0, apply=False),
        Status(500),
        Reset(),
    )
    deliveries = [h.submit(n) for n in range(12)]
    for _ in range(12):
        h.run()
        if all(h.get(d).status is DeliveryStatus.SUCCEEDED for d in deliveries):
            break
    assert {h.get(d).status for d in deliveries} == {DeliveryStatus.SUCCEEDED}
    assert pos.pending_steps == 0
    assert len(pos.customers) == 12
    assert_no_effect_twice(pos)
    results = {h.get(d).result["customer_id"] for d in deliveries}
    assert results == set(pos.customers)
    h.dest.close()


def test_async_twin_end_to_end(pos: PosServer) -> None:
    clock = FakeClock(START)
    pos.script(Reset(), Status(503), Slow(1.0))

    async def main() -> list[Delivery]:
        async with AsyncHttpDestination(
            "pos",
            pos.url,
            "/customers",
            headers=AUTH,
            timeout=TIMEOUT,
            clock=clock,
            read_result=customer_id,
        ) as dest:
            queue = MemoryQueueStore()
            d = AsyncDispatcher(
                queue, MemoryIdempotencyStore(), [dest], retry=RETRY, clock=clock, concurrency=3
            )
            ids = []
            for n in range(3):
                (delivery,) = await d.submit(
                    Event(f"e{n}", "customer.created", {"email": f"a{n}@example.com"})
                )
                ids.append(delivery.id)
            for _ in range(4):
                await d.run_until_idle()
                clock.advance(60)
            op = Operator(queue, clock)
            return [op.get(i) for i in ids]

    done = asyncio.run(main())
    assert {d.status for d in done} == {DeliveryStatus.SUCCEEDED}
    assert len(pos.customers) == 3
    assert_no_effect_twice(pos)

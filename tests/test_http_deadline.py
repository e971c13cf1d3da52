"""A request never outlives its total deadline: the timeout's total, or what
is left of the delivery's lease. Against a real server on 127.0.0.1 that
drips its answer a byte at a time (headers, or body), sync and async, on the
destination's own client and on yours, and for the webhook notifier."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import httpx
import pytest

from drip_server import DripServer
from resilient_sync import (
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    Event,
    RetryableError,
    RetryPolicy,
    SyncError,
)
from resilient_sync.alerts import Alert, NotificationError, WebhookNotifier
from resilient_sync.http import AsyncHttpDestination, HttpDestination
from resilient_sync.http._deadline import DeadlineBackend, install
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
EVENT = Event("e1", "customer.created", {"email": "ada@example.com"})
TIMEOUT = 1.5
#: What the machine may add to a deadline (thread switches, a busy CI box).
SLACK = 1.0

Mode = Literal["headers", "body"]


@pytest.fixture(params=["headers", "body"])
def drip(request: pytest.FixtureRequest) -> Iterator[DripServer]:
    with DripServer(request.param) as server:
        yield server


def context(lease_left: float | None = None, now: datetime = START) -> DeliveryContext:
    return DeliveryContext(
        delivery_id="d1",
        destination="pos",
        idempotency_key="key-1",
        attempt=1,
        lease_expires_at=None if lease_left is None else now + timedelta(seconds=lease_left),
    )


def timed_failure(fn: Any) -> tuple[SyncError, float]:
    started = time.monotonic()
    with pytest.raises(SyncError) as info:
        fn()
    return info.value, time.monotonic() - started


def test_the_destinations_own_client_gets_the_deadline_backend() -> None:
    # guards the one place that reaches into httpx/httpcore internals
    with httpx.Client() as client:
        assert install(client)
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool._network_backend, DeadlineBackend)
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as mocked:
        assert not install(mocked)


def test_a_dripping_server_cannot_stretch_the_timeout(drip: DripServer) -> None:
    with HttpDestination(
        "pos", drip.url, "/customers", timeout=TIMEOUT, clock=FakeClock(START)
    ) as pos:
        error, took = timed_failure(lambda: pos.deliver(EVENT, context()))
    assert took < TIMEOUT + SLACK
    assert isinstance(error, RetryableError)  # TRANSIENT, outcome unknown: same key, same body
    assert "outcome unknown" in str(error)
    assert f"total deadline {TIMEOUT:.1f}s: the timeout" in str(error)
    assert error.details["deadline"] == TIMEOUT
    assert drip.requests == 1


def test_the_lease_bounds_a_request_sooner_than_its_timeout(drip: DripServer) -> None:
    with HttpDestination("pos", drip.url, "/customers", timeout=30, clock=FakeClock(START)) as pos:
        error, took = timed_failure(lambda: pos.deliver(EVENT, context(lease_left=2.0)))
    # 2 s of lease, minus the margin kept to record the outcome
    assert took < 2.0 - pos.lease_margin + SLACK
    assert "what was left of the delivery's lease" in str(error)


def test_a_lease_about_to_end_sends_nothing() -> None:
    with (
        DripServer("headers") as drip,
        HttpDestination("pos", drip.url, "/customers", clock=FakeClock(START)) as pos,
    ):
        error, took = timed_failure(lambda: pos.deliver(EVENT, context(lease_left=0.2)))
        assert took < 0.5
        assert isinstance(error, RetryableError)
        assert error.sent is False
        assert "nothing was sent" in str(error)
        assert drip.requests == 0


class Custom(httpx.BaseTransport):
    """A transport of your own (here it hands the request to httpx's): the
    destination cannot reach inside it."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncCustom(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_your_own_client_gets_the_deadline_backend_too(drip: DripServer) -> None:
    with httpx.Client(timeout=TIMEOUT) as mine:
        pos = HttpDestination("pos", drip.url, "/customers", client=mine, clock=FakeClock(START))
        error, took = timed_failure(lambda: pos.deliver(EVENT, context()))
        pos.close()
    assert took < TIMEOUT + SLACK
    assert isinstance(error, RetryableError)
    assert "total deadline" in str(error)


def test_a_custom_transport_is_bounded_from_outside(drip: DripServer) -> None:
    with httpx.Client(timeout=TIMEOUT, transport=Custom()) as mine:
        pos = HttpDestination("pos", drip.url, "/customers", client=mine, clock=FakeClock(START))
        error, took = timed_failure(lambda: pos.deliver(EVENT, context()))
        pos.close()
    assert took < TIMEOUT + SLACK
    assert isinstance(error, RetryableError)
    assert "the caller stopped waiting" in str(error)
    assert "outcome unknown" in str(error)


def test_a_dispatcher_lease_bounds_the_delivery_end_to_end() -> None:
    # the finding: timeout=2 ran 16 s past a 3 s lease against a dripping server
    clock = FakeClock(START)
    queue = MemoryQueueStore()
    with (
        DripServer("body") as drip,
        HttpDestination("pos", drip.url, "/customers", timeout=30) as pos,
    ):
        dispatcher = Dispatcher(
            queue, MemoryIdempotencyStore(), [pos], clock=clock, lease=3,
            retry=RetryPolicy(jitter=False),
        )  # fmt: skip
        (delivery,) = dispatcher.submit(EVENT)
        started = time.monotonic()
        dispatcher.run_once()
        took = time.monotonic() - started
    assert took < 3.0 - pos.lease_margin + SLACK
    after = queue.get(delivery.id)
    assert after is not None
    assert after.status is DeliveryStatus.RETRY_SCHEDULED
    assert after.last_error is not None
    assert "outcome unknown" in after.last_error.message
    assert after.idempotency_key == delivery.idempotency_key  # same key next time


@pytest.mark.parametrize("client_kind", ["created", "yours", "custom transport"])
def test_async_twin_is_bounded_too(drip: DripServer, client_kind: str) -> None:
    async def run() -> tuple[SyncError, float]:
        client = None
        if client_kind == "yours":
            client = httpx.AsyncClient(timeout=TIMEOUT)
        elif client_kind == "custom transport":
            client = httpx.AsyncClient(timeout=TIMEOUT, transport=AsyncCustom())
        pos = AsyncHttpDestination(
            "pos", drip.url, "/customers", client=client, timeout=TIMEOUT, clock=FakeClock(START)
        )
        started = time.monotonic()
        try:
            await pos.deliver(EVENT, context())
        except SyncError as error:
            return error, time.monotonic() - started
        finally:
            await pos.aclose()
            if client is not None:
                await client.aclose()
        raise AssertionError("the request did not fail")

    error, took = asyncio.run(run())
    assert took < TIMEOUT + SLACK
    assert isinstance(error, RetryableError)
    assert "total deadline" in str(error)


def test_the_webhook_notifier_is_bounded_by_its_timeout(drip: DripServer) -> None:
    notifier = WebhookNotifier(drip.url + "/services/T000/B000/XXXXXXXXXXXXXXXX", timeout=TIMEOUT)
    alert = Alert(rule="needs_action", severity="warning", title="2 deliveries need action")
    started = time.monotonic()
    with pytest.raises(NotificationError) as info:
        notifier.notify(alert)
    took = time.monotonic() - started
    notifier.close()
    assert took < TIMEOUT + SLACK
    assert "XXXXXXXXXXXXXXXX" not in str(info.value)
    assert "Timeout" in str(info.value)


def test_the_backend_is_inert_outside_a_destinations_request() -> None:
    import httpcore

    from resilient_sync.http._deadline import _DEADLINE, _Stream

    seen: list[float | None] = []

    class Inner(httpcore.NetworkStream):
        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            seen.append(timeout)
            return b"x"

    stream = _Stream(Inner())
    stream.read(10, 7.0)  # no deadline set: the timeout passes unchanged
    token = _DEADLINE.set(time.monotonic() + 1.0)
    try:
        stream.read(10, 7.0)  # shortened to the time left
        _DEADLINE.set(time.monotonic() - 0.1)
        with pytest.raises(httpcore.ReadTimeout, match="total deadline"):
            stream.read(10, 7.0)
    finally:
        _DEADLINE.reset(token)
    assert seen[0] == 7.0
    assert seen[1] is not None
    assert seen[1] <= 1.0

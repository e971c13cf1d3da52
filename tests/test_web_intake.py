"""The webhook intake through the ASGI interface (httpx.ASGITransport): the
answers (202/200/400/401/413/503/500), durability before the 2xx, redelivery,
mounting, logging. ``test_web_http.py`` runs the same matrix over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from resilient_sync import AsyncDispatcher, Delivery, Event, Producer, StoreError
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, SQLiteQueueStore
from resilient_sync.testing import FakeClock, RecordingDestination
from resilient_sync.web import (
    RecordEvents,
    ShopifyWebhook,
    StripeWebhook,
    WebhookVerificationError,
    create_intake,
    webhook_endpoint,
)
from test_web_verifiers import (
    CASES,
    NEW_SECRET,
    NOW,
    SHOPIFY,
    STRIPE,
    VENDORS,
    HeaderTokenVerifier,
    Vendor,
    encode,
    matrix_case,
    sign_github,
    sign_shopify,
    sign_stripe,
)

DESTS = ["pos", "crm"]


class Asgi:
    """Requests to an ASGI app in process (no network)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def post(
        self, path: str, content: Any = b"", headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        return asyncio.run(self._send("POST", path, content, headers))

    def get(self, path: str) -> httpx.Response:
        return asyncio.run(self._send("GET", path, None, None))

    async def _send(
        self, method: str, path: str, content: Any, headers: Mapping[str, str] | None
    ) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            return await client.request(method, path, content=content, headers=headers)


def routes(**options: Any) -> dict[str, Any]:
    return {f"/webhooks/{v.name}": v.verifier([v.new, v.old], **options) for v in VENDORS}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def queue() -> MemoryQueueStore:
    return MemoryQueueStore()


@pytest.fixture
def producer(queue: MemoryQueueStore, clock: FakeClock) -> Producer:
    return Producer(queue, DESTS, clock=clock)


@pytest.fixture
def client(producer: Producer) -> Asgi:
    return Asgi(create_intake(producer, routes()))


def deliveries(queue: Any) -> list[Delivery]:
    return list(queue.list(limit=1000).items)


# --- the signature matrix ----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_matrix_through_asgi(
    vendor: Vendor, case: str, client: Asgi, queue: MemoryQueueStore
) -> None:
    body, headers, status = matrix_case(vendor, case)
    response = client.post(f"/webhooks/{vendor.name}", body, headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.json() == {"error": "unauthorized"}  # nothing that helps an attacker
        assert deliveries(queue) == []
    else:
        assert response.json()["status"] == "accepted"
        assert len(deliveries(queue)) == len(DESTS)


def test_accepted_only_once_durable_and_redelivery_is_acknowledged_once(
    client: Asgi, queue: MemoryQueueStore
) -> None:
    body = encode(SHOPIFY.body)
    headers = sign_shopify(body, NEW_SECRET)
    first = client.post("/webhooks/shopify", body, headers)
    assert first.status_code == 202
    assert first.json() == {"status": "accepted", "event_id": headers["X-Shopify-Webhook-Id"]}
    stored = deliveries(queue)
    assert sorted(d.destination for d in stored) == sorted(DESTS)
    assert {d.event.payload["id"] for d in stored} == {450789469}

    # Shopify retries the same webhook (same id) a while later: 2xx, no second delivery
    again = client.post("/webhooks/shopify", body, headers)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "event_id": headers["X-Shopify-Webhook-Id"]}
    assert deliveries(queue) == stored


def test_to_names_a_subset_of_destinations(producer: Producer, queue: MemoryQueueStore) -> None:
    app = create_intake(producer, {"/s": STRIPE.verifier(to=["crm"])})
    body = encode(STRIPE.body)
    assert Asgi(app).post("/s", body, sign_stripe(body, STRIPE.new)).status_code == 202
    assert [d.destination for d in deliveries(queue)] == ["crm"]
    with pytest.raises(ValueError, match="'mail', which Producer does not know"):
        create_intake(producer, {"/s": STRIPE.verifier(to=["crm", "mail"])})


# --- 400, 413 ----------------------------------------------------------------------------


def test_signed_body_that_is_not_json_is_400(client: Asgi, queue: MemoryQueueStore) -> None:
    body = b"email=bob%40example.com"
    response = client.post("/webhooks/shopify", body, sign_shopify(body, NEW_SECRET))
    assert response.status_code == 400
    assert response.json() == {"error": "the body is not JSON"}
    assert deliveries(queue) == []


def test_signed_body_that_is_not_an_event_is_400_saying_what_is_missing(
    client: Asgi, queue: MemoryQueueStore
) -> None:
    body = encode({"type": "customer.created"})
    response = client.post("/webhooks/stripe", body, sign_stripe(body, STRIPE.new))
    assert response.status_code == 400
    assert "no 'id'" in response.json()["error"]

    body = encode(SHOPIFY.body)
    headers = sign_shopify(body, NEW_SECRET)
    del headers["X-Shopify-Topic"]
    response = client.post("/webhooks/shopify", body, headers)
    assert response.status_code == 400
    assert response.json() == {"error": "the X-Shopify-Topic header is missing"}

    headers = sign_shopify(body, NEW_SECRET, webhook_id="id-with-\x01-control")
    response = client.post("/webhooks/shopify", body, headers)
    assert response.status_code == 400
    assert "control" in response.json()["error"]
    assert "\x01" not in response.text
    assert deliveries(queue) == []


def test_too_large_by_content_length_is_413_without_reading(
    producer: Producer, queue: MemoryQueueStore
) -> None:
    client = Asgi(create_intake(producer, routes(), max_body=1000))
    body = encode({"blob": "x" * 2000})
    response = client.post("/webhooks/shopify", body, sign_shopify(body, NEW_SECRET))
    assert response.status_code == 413
    assert response.json() == {"error": "the body is larger than 1000 bytes"}
    assert deliveries(queue) == []


def test_too_large_without_content_length_stops_reading_at_the_limit(
    producer: Producer, queue: MemoryQueueStore
) -> None:
    """A chunked body (no Content-Length) is read incrementally and abandoned
    as soon as it passes the limit: the rest is never pulled."""
    pulled: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(100):
            pulled.append(i)
            yield b"x" * 1000

    client = Asgi(create_intake(producer, routes(), max_body=4096))
    response = client.post("/webhooks/github", chunks(), {"X-Hub-Signature-256": "sha256=00"})
    assert response.status_code == 413
    assert len(pulled) <= 6
    assert deliveries(queue) == []


def test_body_at_the_limit_is_accepted(producer: Producer, queue: MemoryQueueStore) -> None:
    body = encode({**STRIPE.body, "pad": ""})
    body = encode({**STRIPE.body, "pad": "x" * (2000 - len(body))})
    assert len(body) == 2000
    client = Asgi(create_intake(producer, routes(), max_body=2000))
    assert client.post("/webhooks/stripe", body, sign_stripe(body, STRIPE.new)).status_code == 202


# --- 503: the store is down ----------------------------------------------------------------


class DownQueueStore(MemoryQueueStore):
    """A memory store whose enqueue fails like an unreachable database."""

    down = True

    def enqueue(self, deliveries: Sequence[Delivery], **kwargs: Any) -> list[Delivery]:
        if self.down:
            raise StoreError("PostgreSQL store 'db.internal/sync': connection refused")
        return super().enqueue(deliveries, **kwargs)


def test_store_down_is_503_with_retry_after_then_the_retry_lands_once(clock: FakeClock) -> None:
    queue = DownQueueStore()
    client = Asgi(create_intake(Producer(queue, DESTS, clock=clock), routes(), retry_after=45))
    body = encode(STRIPE.body)
    headers = sign_stripe(body, STRIPE.new)
    response = client.post("/webhooks/stripe", body, headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "45"
    assert "connection refused" not in response.text  # nothing about our infrastructure
    assert deliveries(queue) == []

    queue.down = False  # Stripe retries later, with a fresh signature
    clock.advance(45)
    response = client.post("/webhooks/stripe", body, sign_stripe(body, STRIPE.new, at=clock.now()))
    assert response.status_code == 202
    assert sorted(d.destination for d in deliveries(queue)) == sorted(DESTS)


def test_locked_sqlite_store_is_503_and_nothing_half_written(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Another process holds the SQLite write lock past busy_timeout: the
    submit fails as a whole (StoreError), the sender is told to retry, and
    the retry enqueues exactly one delivery per destination."""
    path = tmp_path / "sync.db"
    queue = SQLiteQueueStore(path, busy_timeout=0.05)
    try:
        client = Asgi(create_intake(Producer(queue, DESTS, clock=clock), routes()))
        body = encode(SHOPIFY.body)
        headers = sign_shopify(body, NEW_SECRET)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = client.post("/webhooks/shopify", body, headers)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "30"
        assert deliveries(queue) == []
        assert client.post("/webhooks/shopify", body, headers).status_code == 202
        assert client.post("/webhooks/shopify", body, headers).status_code == 200
        assert sorted(d.destination for d in deliveries(queue)) == sorted(DESTS)
    finally:
        queue.close()


def test_closed_sqlite_store_is_503(tmp_path: Path, clock: FakeClock) -> None:
    queue = SQLiteQueueStore(tmp_path / "sync.db")
    queue.close()
    client = Asgi(create_intake(Producer(queue, DESTS, clock=clock), routes()))
    body = encode(SHOPIFY.body)
    response = client.post("/webhooks/shopify", body, sign_shopify(body, NEW_SECRET))
    assert response.status_code == 503
    assert "Retry-After" in response.headers


def test_unexpected_submit_failure_is_500_and_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(MemoryQueueStore):
        def enqueue(self, deliveries: Sequence[Delivery], **kwargs: Any) -> list[Delivery]:
            raise RuntimeError("bug in a store")

    client = Asgi(create_intake(Producer(Broken(), DESTS, clock=clock), routes()))
    body = encode(SHOPIFY.body)
    with caplog.at_level(logging.ERROR, logger="resilient_sync.web"):
        response = client.post("/webhooks/shopify", body, sign_shopify(body, NEW_SECRET))
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert "bug in a store" in caplog.text


# --- logging -------------------------------------------------------------------------------------


def test_refusals_are_logged_at_info_without_secrets_signatures_or_bodies(
    client: Asgi, caplog: pytest.LogCaptureFixture
) -> None:
    body = encode({**SHOPIFY.body, "email": "private.person@example.com"})
    good = sign_shopify(body, NEW_SECRET)
    bad = sign_shopify(body, "attacker-guess")
    with caplog.at_level(logging.DEBUG, logger="resilient_sync"):
        assert client.post("/webhooks/shopify", body, bad).status_code == 401
        assert (
            client.post(
                "/webhooks/shopify", b"not json", sign_shopify(b"not json", NEW_SECRET)
            ).status_code
            == 400
        )
        assert client.post("/webhooks/shopify", body, good).status_code == 202
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.INFO, logging.INFO]
    assert "matches none of the 2 secret(s)" in refusals[0].getMessage()
    assert "(401)" in refusals[0].getMessage()
    text = caplog.text
    for secret in (NEW_SECRET, SHOPIFY.old, "attacker-guess"):
        assert secret not in text
    for signature in (good["X-Shopify-Hmac-Sha256"], bad["X-Shopify-Hmac-Sha256"]):
        assert signature not in text
    assert "private.person" not in text


class EchoingVerifier(HeaderTokenVerifier):
    """A careless custom verifier that puts request text into its messages."""

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: Any) -> None:
        if headers.get("x-key-id") != "k1":
            raise WebhookVerificationError(f"unknown key id {headers.get('x-key-id')}")

    def to_event(self, headers: Mapping[str, str], body: Any) -> Event:
        raise ValueError(f"unknown type {body['type']}")


def test_request_text_in_logs_and_answers_passes_the_gate(
    producer: Producer, caplog: pytest.LogCaptureFixture
) -> None:
    client = Asgi(create_intake(producer, {"/e": EchoingVerifier("unused")}))
    nasty = "\x1b[2J sk_live_abcdefgh12345678"
    with caplog.at_level(logging.INFO, logger="resilient_sync"):
        assert client.post("/e", b"{}", {"X-Key-Id": nasty}).status_code == 401
        body = json.dumps({"type": "\x1b]8;;http://evil\x07 sk_live_abcdefgh12345678"})
        response = client.post("/e", body.encode(), {"X-Key-Id": "k1"})
    assert response.status_code == 400
    for text in (caplog.text, response.text, response.json()["error"]):
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "sk_live_abcdefgh12345678" not in text
    assert "[REDACTED]" in response.json()["error"]


# --- mapping, submitters, mounting ---------------------------------------------------------------


def test_records_mapping_through_the_intake(producer: Producer, queue: MemoryQueueStore) -> None:
    app = create_intake(
        producer, {"/orders": ShopifyWebhook([NEW_SECRET], records=RecordEvents("order"))}
    )
    body = encode(SHOPIFY.body)
    response = Asgi(app).post("/orders", body, sign_shopify(body, NEW_SECRET))
    assert response.json() == {
        "status": "accepted",
        "event_id": "order:450789469@2024-03-01T12:00:00Z",
    }
    # a second webhook for the same change (another topic, another webhook id): one delivery
    headers = sign_shopify(body, NEW_SECRET, topic="orders/paid", webhook_id="another-id")
    assert Asgi(app).post("/orders", body, headers).status_code == 200
    assert len(deliveries(queue)) == len(DESTS)


def test_a_custom_verifier_through_the_intake(producer: Producer, queue: MemoryQueueStore) -> None:
    client = Asgi(create_intake(producer, {"/things": HeaderTokenVerifier("t0ken-value")}))
    assert client.post("/things", b'{"id": "t1"}', {"X-Token": "wrong"}).status_code == 401
    assert client.post("/things", b'{"id": "t1"}', {"X-Token": "t0ken-value"}).status_code == 202
    assert client.post("/things", b'{"no": "id"}', {"X-Token": "t0ken-value"}).json() == {
        "error": "the webhook has no 'id'"
    }


def test_the_async_dispatcher_submits_too(clock: FakeClock) -> None:
    queue = MemoryQueueStore()
    dispatcher = AsyncDispatcher(
        queue, MemoryIdempotencyStore(), [RecordingDestination("pos")], clock=clock
    )
    client = Asgi(create_intake(dispatcher, {"/s": STRIPE.verifier()}))
    body = encode(STRIPE.body)
    assert client.post("/s", body, sign_stripe(body, STRIPE.new)).status_code == 202
    assert client.post("/s", body, sign_stripe(body, STRIPE.new)).status_code == 200
    assert [d.destination for d in deliveries(queue)] == ["pos"]


def test_a_plain_submit_that_returns_an_awaitable_is_awaited_before_the_answer(
    clock: FakeClock,
) -> None:
    """A sync wrapper around an async submit (a decorator, a lambda): its
    coroutine is awaited; a 2xx never goes out for an event not stored."""
    queue = MemoryQueueStore()
    dispatcher = AsyncDispatcher(
        queue, MemoryIdempotencyStore(), [RecordingDestination("pos")], clock=clock
    )

    class Wrapped:
        destinations = dispatcher.destinations
        clock = dispatcher.clock

        def submit(self, event: Event, to: Any = None) -> Any:
            return dispatcher.submit(event, to)  # a coroutine, from a plain function

    client = Asgi(create_intake(Wrapped(), {"/s": STRIPE.verifier()}))
    body = encode(STRIPE.body)
    assert client.post("/s", body, sign_stripe(body, STRIPE.new)).status_code == 202
    assert [d.destination for d in deliveries(queue)] == ["pos"]
    assert client.post("/s", body, sign_stripe(body, STRIPE.new)).status_code == 200


@pytest.mark.parametrize("created", ["9" * 400, "1e400"])
def test_a_signed_timestamp_out_of_range_is_400_not_500(
    client: Asgi, queue: MemoryQueueStore, created: str
) -> None:
    body = b'{"id":"evt_big","type":"customer.created","created":' + created.encode() + b"}"
    response = client.post("/webhooks/stripe", body, sign_stripe(body, STRIPE.new))
    assert response.status_code == 400
    assert "payload.created" in response.json()["error"]
    assert deliveries(queue) == []


def test_a_content_length_of_non_ascii_digits_is_not_a_500(client: Asgi) -> None:
    """``"\u00b2".isdigit()`` is true; the length check must not crash on it
    (the request goes on to the signature check, which refuses it)."""
    body = encode(STRIPE.body)

    async def send() -> int:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send_(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/webhooks/stripe",
            "raw_path": b"/webhooks/stripe",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-length", "\u00b2".encode("latin-1"))],
            "client": ("127.0.0.1", 1),
            "server": ("intake", 80),
        }
        await client.app(scope, receive, send_)
        return int(next(m for m in sent if m["type"] == "http.response.start")["status"])

    assert asyncio.run(send()) == 401


def test_timestamps_are_checked_on_the_submitters_clock(
    producer: Producer, clock: FakeClock
) -> None:
    client = Asgi(create_intake(producer, routes()))
    body = encode(STRIPE.body)
    headers = sign_stripe(body, STRIPE.new)
    clock.advance(timedelta(minutes=6))
    assert client.post("/webhooks/stripe", body, headers).status_code == 401
    later = Asgi(create_intake(producer, routes(), clock=FakeClock(NOW)))
    assert later.post("/webhooks/stripe", body, headers).status_code == 202


def test_mounted_under_a_prefix_in_another_app(producer: Producer, queue: MemoryQueueStore) -> None:
    async def home(request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("shop")

    intake = create_intake(producer, routes())
    app = Starlette(routes=[Route("/", home), Mount("/hooks", app=intake)])
    client = Asgi(app)
    body = encode(SHOPIFY.body)
    assert (
        client.post("/hooks/webhooks/shopify", body, sign_shopify(body, NEW_SECRET)).status_code
        == 202
    )
    assert client.get("/hooks/webhooks/shopify").status_code == 405
    assert client.post("/hooks/nowhere", body, {}).status_code == 404
    assert client.get("/").text == "shop"
    assert len(deliveries(queue)) == len(DESTS)


def test_single_route_helper(producer: Producer, queue: MemoryQueueStore) -> None:
    shopify = ShopifyWebhook([NEW_SECRET], to="pos")
    app = Starlette(
        routes=[
            Route(
                "/shopify", webhook_endpoint(producer, shopify, max_body=10_000), methods=["POST"]
            )
        ]
    )
    body = encode(SHOPIFY.body)
    assert Asgi(app).post("/shopify", body, sign_shopify(body, NEW_SECRET)).status_code == 202
    assert [d.destination for d in deliveries(queue)] == ["pos"]


def test_configuration_errors_fail_at_startup(producer: Producer) -> None:
    with pytest.raises(ValueError, match="at least one route"):
        create_intake(producer, {})
    with pytest.raises(ValueError, match="starts with '/'"):
        create_intake(producer, {"webhooks": SHOPIFY.verifier()})
    with pytest.raises(TypeError, match="WebhookVerifier"):
        create_intake(producer, {"/x": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="submit"):
        create_intake(object(), routes())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_body"):
        create_intake(producer, routes(), max_body=0)


def test_to_event_returning_a_bad_event_is_400(producer: Producer, queue: MemoryQueueStore) -> None:
    def mapping(headers: Mapping[str, str], body: Any) -> Event:
        return Event(body["id"], "thing", {"when": body})

    verifier = StripeWebhook([STRIPE.new], to_event=mapping)
    client = Asgi(create_intake(producer, {"/s": verifier}))
    body = encode({"id": ""})
    response = client.post("/s", body, sign_stripe(body, STRIPE.new))
    assert response.status_code == 400
    assert "event.id must be a non-empty string" in response.json()["error"]
    assert deliveries(queue) == []


def test_json_nested_too_deeply_is_400(client: Asgi, queue: MemoryQueueStore) -> None:
    for depth in (2_000, 200_000):
        body = ("[" * depth + "]" * depth).encode()
        response = client.post("/webhooks/github", body, sign_github(body, NEW_SECRET))
        assert response.status_code == 400
        assert "nested too deeply" in response.json()["error"]
    assert deliveries(queue) == []


class BuggyVerifier(HeaderTokenVerifier):
    def verify(self, headers: Mapping[str, str], body: bytes, *, now: Any) -> None:
        raise AttributeError("a bug in a verifier")


def test_bugs_in_verifiers_and_mappings_are_500_and_logged(
    producer: Producer, queue: MemoryQueueStore, caplog: pytest.LogCaptureFixture
) -> None:
    broken_mapping = StripeWebhook([STRIPE.new], to_event=lambda h, b: {"not": "an event"})  # type: ignore[arg-type,return-value]
    client = Asgi(create_intake(producer, {"/v": BuggyVerifier("x"), "/m": broken_mapping}))
    body = encode(STRIPE.body)
    with caplog.at_level(logging.ERROR, logger="resilient_sync.web"):
        assert client.post("/v", body, {}).status_code == 500
        assert client.post("/m", body, sign_stripe(body, STRIPE.new)).status_code == 500
    assert "a bug in a verifier" in caplog.text
    assert "to_event must return an Event" in caplog.text
    assert deliveries(queue) == []

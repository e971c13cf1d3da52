"""Type-checked only (mypy --strict): the webhook intake and the polling
source as a user writes them."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from resilient_sync import AsyncDispatcher, Event, InvalidEventError, Producer, Source
from resilient_sync.http import (
    HttpDestination,
    HttpPollingSource,
    LinkPagination,
    Pagination,
    RateLimit,
    RecordEvents,
    TokenPagination,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock, RecordingDestination
from resilient_sync.web import (
    DEFAULT_MAX_BODY,
    GitHubWebhook,
    ShopifyWebhook,
    StandardWebhook,
    StripeWebhook,
    ToEvent,
    WebhookVerificationError,
    WebhookVerifier,
    create_intake,
    webhook_endpoint,
)


class TokenHeader:
    """A verifier of one's own, written against the protocol."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self.to = ["pos"]

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: datetime) -> None:
        if not hmac.compare_digest(headers.get("x-token", "").encode(), self._token):
            raise WebhookVerificationError("bad token")

    def to_event(self, headers: Mapping[str, str], body: Any) -> Event:
        if not isinstance(body, dict) or "id" not in body:
            raise InvalidEventError("the body has no 'id'", field="id")
        return Event(str(body["id"]), "thing.changed", body)


def customer_event(headers: Mapping[str, str], body: Any) -> Event:
    return Event(body["id"], f"stripe.{body['type']}", body["data"]["object"])


def intake() -> Starlette:
    producer = Producer(MemoryQueueStore(), ["pos", "crm"])
    orders = RecordEvents("order", type="order.changed", ordered=True)
    mapping: ToEvent = customer_event
    verifiers: dict[str, WebhookVerifier] = {
        "/shopify": ShopifyWebhook(["new-secret", "old-secret"], to="pos", records=orders),
        "/stripe": StripeWebhook("whsec_abc", tolerance=120, to_event=mapping),
        "/standard": StandardWebhook(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], tolerance=None),
        "/github": GitHubWebhook(["secret"], records=RecordEvents("issue"), record_path="issue"),
        "/mine": TokenHeader("t0ken"),
    }
    app: Starlette = create_intake(
        producer, verifiers, max_body=DEFAULT_MAX_BODY // 2, clock=FakeClock(), retry_after=60
    )
    return Starlette(routes=[Mount("/hooks", app=app)])


def single_route() -> Starlette:
    dispatcher = AsyncDispatcher(
        MemoryQueueStore(), MemoryIdempotencyStore(), [RecordingDestination("pos")]
    )
    endpoint = webhook_endpoint(dispatcher, GitHubWebhook("secret"))
    return Starlette(routes=[Route("/github", endpoint, methods=["POST"])])


def reconcile() -> int:
    shop = HttpDestination(
        "shop",
        "https://example.myshopify.com/admin/api/2024-07",
        headers={"X-Shopify-Access-Token": "shpat_..."},
        rate_limit=RateLimit(2.0, burst=40),
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"orders": []})),
    )
    pages: Pagination = LinkPagination()
    source: Source = HttpPollingSource(
        "shopify-orders",
        shop,
        "/orders.json",
        records=RecordEvents("order"),
        items="orders",
        params={"status": "any"},
        pagination=pages,
        start=datetime.now(timezone.utc) - timedelta(days=2),
        max_pages=5,
        retries=2,
        max_wait=30.0,
    )
    stripe = HttpPollingSource(
        "stripe-events",
        HttpDestination("stripe", "https://api.stripe.com/v1"),
        "/events",
        records=RecordEvents("stripe_event", updated_field="created", type=lambda e: e["type"]),
        items=lambda body: body["data"],
        since_param="created[gte]",
        since_format=lambda moment: str(int(moment.timestamp())),
        pagination=TokenPagination(param="starting_after", token=None, has_more="has_more"),
    )
    with stripe:
        events, cursor = stripe.read(None, 10)
        print(len(events), cursor)
    producer = Producer(MemoryQueueStore(), "pos")
    enqueued: int = producer.pull(source, limit=50)
    return enqueued

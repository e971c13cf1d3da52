"""The worker: delivers queued customers to the POS's customer API.

    resilient-sync worker examples.shop_to_pos.worker:make_dispatcher

It looks before it creates (a customer the POS already has, by e-mail, is
linked instead of created twice), sends every create with the delivery's
idempotency key, retries outages and rate limits with backoff, and parks
what needs a person (a rejected e-mail, a revoked token) with the reason.
"""

from __future__ import annotations

from typing import Any

from resilient_sync import DeliveryContext, Dispatcher, Event, RetryPolicy
from resilient_sync.http import HttpDestination, HttpRequest
from resilient_sync.stores import open_stores

from .settings import DB, required


def customer_request(event: Event) -> HttpRequest:
    """A Shopify customer webhook body -> the POS's create-customer request."""
    customer = event.payload
    name = " ".join(p for p in (customer.get("first_name"), customer.get("last_name")) if p)
    return HttpRequest(json={"email": customer["email"], "name": name or None})


def make_pos(url: str, token: str) -> HttpDestination:
    """The POS as a destination."""
    pos: HttpDestination

    def find_existing(event: Event, context: DeliveryContext) -> Any:
        found = pos.request("GET", "/customers", params={"email": event.payload["email"]}).json()[
            "customers"
        ]
        return {"pos_customer_id": found[0]["id"], "linked": True} if found else None

    pos = HttpDestination(
        "pos",
        url,
        "/customers",
        headers={"Authorization": f"Bearer {token}"},
        build_request=customer_request,
        read_result=lambda response: {"pos_customer_id": response.json()["customer"]["id"]},
        find_existing=find_existing,
        timeout=10.0,
    )
    return pos


def make_dispatcher() -> Dispatcher:
    """What ``resilient-sync worker`` runs (it closes the stores on stop)."""
    queue, idempotency = open_stores(DB)
    pos = make_pos(required("POS_URL"), required("POS_TOKEN"))
    return Dispatcher(
        queue,
        idempotency,
        [pos],
        retry=RetryPolicy(max_attempts=12, initial_delay=0.5, max_delay=60),
        lease=60,
        batch_size=50,
        concurrency=4,
    )

"""The web shop's webhooks in: a Starlette app answering 2xx only once a
customer is durably queued for the POS.

    uvicorn examples.shop_to_pos.intake:app --host 127.0.0.1 --port 8000

Shopify signs each webhook with the app's client secret
(``SHOPIFY_WEBHOOK_SECRETS``; during a rotation give both, comma-separated).
A redelivered webhook (same ``X-Shopify-Event-Id``) is acknowledged without a
second delivery.
"""

from __future__ import annotations

from resilient_sync import Producer
from resilient_sync.stores import open_stores
from resilient_sync.web import ShopifyWebhook, create_intake

from .settings import DB, required

queue, _idempotency = open_stores(DB)
producer = Producer(queue, ["pos"])
app = create_intake(
    producer,
    routes={
        "/webhooks/shopify": ShopifyWebhook(
            required("SHOPIFY_WEBHOOK_SECRETS").split(","), to=["pos"]
        ),
    },
)

"""Signed webhook intake (extra ``[web]``: Starlette).

A webhook is only acknowledged once it is durable in the queue::

    from resilient_sync import Producer
    from resilient_sync.stores import open_stores
    from resilient_sync.web import ShopifyWebhook, StripeWebhook, create_intake

    queue, _ = open_stores("sqlite:///sync.db")
    app = create_intake(
        Producer(queue, ["pos"]),
        {
            "/webhooks/shopify": ShopifyWebhook(secrets=["..."]),
            "/webhooks/stripe": StripeWebhook(secrets=["whsec_..."]),
        },
    )

Each request is read up to a size limit, its signature checked (HMAC over
the raw body, constant-time, every configured secret, a timestamp window
where the vendor signs one), mapped to an :class:`~resilient_sync.Event` and
submitted; the sender gets 2xx only after ``submit`` returned, 503 with
``Retry-After`` when the store is down, 401/400/413 otherwise. See
``docs/howto/webhooks.md``; for catching the webhooks a sender never
delivered, ``docs/howto/reconcile.md``.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "resilient_sync.web needs Starlette; install the extra: pip install 'resilient-sync[web]'"
    ) from exc

from ..http._source import RecordEvents
from ._intake import DEFAULT_MAX_BODY, Submitter, create_intake, webhook_endpoint
from ._verify import (
    GitHubWebhook,
    ShopifyWebhook,
    StandardWebhook,
    StripeWebhook,
    ToEvent,
    WebhookVerificationError,
    WebhookVerifier,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "GitHubWebhook",
    "RecordEvents",
    "ShopifyWebhook",
    "StandardWebhook",
    "StripeWebhook",
    "Submitter",
    "ToEvent",
    "WebhookVerificationError",
    "WebhookVerifier",
    "create_intake",
    "webhook_endpoint",
]

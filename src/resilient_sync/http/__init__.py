"""HTTP APIs as destinations: ``HttpDestination`` (``httpx.Client``) and its
asyncio twin ``AsyncHttpDestination`` (``httpx.AsyncClient``).

A correct adapter is a few lines of configuration::

    from resilient_sync.http import HttpDestination, RateLimit

    pos = HttpDestination(
        name="pos",
        base_url="https://pos.example.com/api/v2",
        path="/customers",
        headers={"Authorization": "Bearer ..."},
        rate_limit=RateLimit(5.0, burst=10),
    )

Vendor presets set the rest in one argument
(``HttpDestination(..., preset="stripe")``, also ``"shopify"`` and
``"square"``).

The hard parts are right by default: the idempotency key goes with every
request, a retried body is byte-identical, a request never outlives its
timeout's total nor the delivery's lease, responses and httpx exceptions are
classified by the HTTP table of ``docs/concepts/error-taxonomy.md`` (after a
vendor override header and your own
body classifier), ``Retry-After`` is honoured in all its forms, a 429 slows
the whole destination, a circuit breaker stops hammering an API that is down,
and secrets never reach a message, a log line or the audit trail. See
``docs/howto/http-destination.md``.
"""

from __future__ import annotations

from ._classify import (
    SHOULD_RETRY_HEADERS,
    BodyClassifier,
    HttpClassifier,
    Verdict,
    field_from_body,
    graphql_classifier,
    response_of,
)
from ._destination import AsyncHttpDestination, HttpDestination, HttpOptions
from ._presets import PRESETS, Preset, PresetPagination
from ._ratelimit import RateLimit, RateLimiter
from ._request import HttpRequest, encode_form
from ._source import (
    HttpPollingSource,
    LinkPagination,
    Pagination,
    RecordEvents,
    TokenPagination,
)

__all__ = [
    "PRESETS",
    "SHOULD_RETRY_HEADERS",
    "AsyncHttpDestination",
    "BodyClassifier",
    "HttpClassifier",
    "HttpDestination",
    "HttpOptions",
    "HttpPollingSource",
    "HttpRequest",
    "LinkPagination",
    "Pagination",
    "Preset",
    "PresetPagination",
    "RateLimit",
    "RateLimiter",
    "RecordEvents",
    "TokenPagination",
    "Verdict",
    "encode_form",
    "field_from_body",
    "graphql_classifier",
    "response_of",
]

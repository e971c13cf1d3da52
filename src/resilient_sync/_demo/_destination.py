"""The demo's POS adapter: a few lines on top of ``HttpDestination``."""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import attrs
import httpx

from resilient_sync import CircuitBreaker, ErrorCategory, Event, SyncError
from resilient_sync.http import HttpDestination

from ._shop import normalise_phone

__all__ = ["PosDestination", "TokenHolder"]


class TokenHolder(httpx.Auth):
    """Bearer auth with a token that can be replaced while running (a new
    token after the old one was revoked)."""

    def __init__(self, token: str) -> None:
        self._lock = threading.Lock()
        self._token = token

    @property
    def token(self) -> str:
        with self._lock:
            return self._token

    @token.setter
    def token(self, value: str) -> None:
        with self._lock:
            self._token = value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request

    def __repr__(self) -> str:
        return "TokenHolder(<token hidden>)"


def _route(event: Event) -> str:
    return "/customers" if event.type == "customer.created" else "/orders"


def _classify_body(response: httpx.Response, body: Any) -> ErrorCategory | SyncError | None:
    """The POS says ``code: "unknown_sku"``: a MAPPING problem, not bad data."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and any(
        isinstance(e, dict) and e.get("code") == "unknown_sku" for e in errors
    ):
        return ErrorCategory.MAPPING
    return None


def _result(response: httpx.Response) -> Any:
    data = response.json()
    return {"pos_id": data.get("id")}


class PosDestination(HttpDestination):
    """Customers go to ``POST /customers``, orders to ``POST /orders``.

    ``resolve_duplicate`` links a customer the POS already holds (one record
    with that e-mail) or an order entered by hand; ``fix_data`` repairs phone
    numbers typed the local way.
    """

    def __init__(
        self, base_url: str, auth: TokenHolder, *, timeout: float = 1.0, cool_off: float = 0.4
    ) -> None:
        super().__init__(
            "pos",
            base_url,
            path=_route,
            auth=auth,
            timeout=httpx.Timeout(timeout),
            classify_body=_classify_body,
            read_result=_result,
            circuit_breaker=CircuitBreaker(threshold=5, cool_off=cool_off),
            max_retry_after=5.0,
        )

    def resolve_duplicate(self, event: Event, error: Exception) -> Any:
        if event.type == "customer.created":
            response = self.request("GET", "/customers", params={"email": event.payload["email"]})
            found = response.json().get("customers", [])
            if len(found) == 1:
                return {"pos_id": found[0]["id"], "linked": "existing customer"}
            return None  # none or several: a person decides
        response = self.request("GET", f"/orders/{event.payload['number']}")
        return {"pos_id": response.json()["id"], "linked": "order entered by hand"}

    def fix_data(self, event: Event, error: Exception) -> Event | None:
        if event.type != "customer.created" or getattr(error, "field", None) != "phone":
            return None
        fixed = normalise_phone(event.payload.get("phone"))
        if fixed is None or fixed == event.payload.get("phone"):
            return None
        return attrs.evolve(event, payload={**event.payload, "phone": fixed})

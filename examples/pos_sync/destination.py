"""The TillPoint customer API as a destination: configuration plus one hook.

``HttpDestination`` already sends the idempotency key, keeps retried bodies
byte-identical, classifies 5xx/429/409/422 and takes the field from the error
body (``{"errors": [{"field": "phone", ...}]}``). What is TillPoint's own:
where customers go, what to keep from a reply, and how to find a customer
the till already has (``resolve_duplicate``).
"""

from __future__ import annotations

from typing import Any

import httpx

from resilient_sync import Event
from resilient_sync.http import HttpDestination


def _till_id(response: httpx.Response) -> dict[str, Any]:
    return {"till_id": response.json()["id"]}


class TillPointCustomers(HttpDestination):
    """Creates shop customers in TillPoint (``POST /v1/customers``)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        super().__init__(
            "tillpoint",
            base_url,
            path="/v1/customers",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            read_result=_till_id,
        )

    def resolve_duplicate(self, event: Event, error: Exception) -> dict[str, Any] | None:
        """The till knows the e-mail: link to that customer when there is
        exactly one (several: a person decides, the delivery needs action)."""
        response = self.request("GET", "/v1/customers", params={"email": event.payload["email"]})
        found = response.json()["customers"]
        if len(found) != 1:
            return None
        return {"till_id": found[0]["id"], "linked": "existing customer"}

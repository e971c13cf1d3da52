"""The shop's side: customers become events, and the shop's export is a Source.

``customer_event`` is the mapping a web shop's signup handler calls before
``Producer.submit``. ``ShopExport`` reads the shop's export (one JSON object
per line, appended to as customers sign up) from a cursor, so
``resilient-sync pull pos_sync.shop:export --to tillpoint`` enqueues what is
new and a restart resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resilient_sync import Event


def customer_event(customer: dict[str, Any]) -> Event:
    """A shop customer as an event: its id is stable, so a repeat is dropped."""
    return Event(
        f"shop-customer-{customer['id']}",
        "customer.created",
        {"email": customer["email"], "name": customer["name"], "phone": customer["phone"]},
        ordering_key=f"customer-{customer['id']}",
    )


class ShopExport:
    """The export file as a :class:`~resilient_sync.Source`; the cursor is
    the number of lines already read."""

    name = "shop-export"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        return Path(self._path or os.environ.get("SHOP_EXPORT", "shop-export.jsonl"))

    def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
        if not self.path.exists():
            return [], cursor
        lines = self.path.read_text(encoding="utf-8").splitlines()
        start = int(cursor or 0)
        page = [line for line in lines[start : start + limit] if line.strip()]
        events = [customer_event(json.loads(line)) for line in page]
        return events, str(start + len(lines[start : start + limit]))


#: ``resilient-sync pull pos_sync.shop:export --to tillpoint`` (``$SHOP_EXPORT``).
export = ShopExport()

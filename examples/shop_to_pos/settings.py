"""Where the example reads its settings: the environment (see deploy/shop-to-pos.env)."""

from __future__ import annotations

import os

#: The queue, shared by the intake and the worker.
DB = os.environ.get("RESILIENT_SYNC_DB", "sqlite:///shop-to-pos.db")


def required(name: str) -> str:
    """An environment variable that must be set, or a clear error naming it."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"set {name} (see examples/shop_to_pos/deploy/shop-to-pos.env)")
    return value

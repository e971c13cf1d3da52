"""The testing kit: a fake clock, scripted destinations and the store contract suites.

Importable without pytest. The contract suites (``QueueStoreContract``,
``IdempotencyStoreContract``) need pytest and live in
``resilient_sync.testing.contract``; they are also reachable from here, imported
on first access. See ``docs/howto/test-your-integration.md`` and
``docs/howto/write-a-store.md``.
"""

from __future__ import annotations

import sys
from typing import Any

from .._clock import FakeClock
from ._destinations import FlakyDestination, RecordingDestination

__all__ = ["FakeClock", "FlakyDestination", "RecordingDestination"]

_CONTRACT = "resilient_sync.testing.contract"
_LAZY = ("IdempotencyStoreContract", "QueueStoreContract")

if "pytest" in sys.modules:
    # under pytest: let it rewrite the suites' asserts (readable failures), which
    # it does only for modules registered before their import
    sys.modules["pytest"].register_assert_rewrite(_CONTRACT)


def __getattr__(name: str) -> Any:
    """``QueueStoreContract`` / ``IdempotencyStoreContract``, imported (with pytest) on use."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415 - lazy on purpose: the suites need pytest

        return getattr(importlib.import_module(_CONTRACT), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_LAZY])

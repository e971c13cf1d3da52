"""The testing kit: a fake clock, scripted destinations and the store contract suites.

Importable without pytest. See ``docs/howto/test-your-integration.md``.
"""

from __future__ import annotations

from .._clock import FakeClock
from ._destinations import FlakyDestination, RecordingDestination

__all__ = ["FakeClock", "FlakyDestination", "RecordingDestination"]

"""The public namespace is exactly the documented API (like httpx's own test)."""

from __future__ import annotations

import importlib

import pytest

import resilient_sync
import resilient_sync.stores
import resilient_sync.testing

#: DESIGN.md's public names.
DESIGNED = {
    "Event",
    "Delivery",
    "DeliveryStatus",
    "ErrorCategory",
    "Attempt",
    "Source",
    "Destination",
    "QueueStore",
    "IdempotencyStore",
    "RetryPolicy",
    "Dispatcher",
    "Operator",
    "SyncError",
    "RetryableError",
    "RateLimitedError",
    "DuplicateError",
    "DataFormatError",
    "MappingError",
    "PermissionDeniedError",
    "InvalidEventError",
}

#: What the core adds on top (each one documented in the reference).
EXTRAS = {
    "AsyncDispatcher",
    "CircuitBreaker",
    "Classifier",
    "DeliveryContext",
    "DeliveryNotFoundError",
    "DispatchEvent",
    "ErrorInfo",
    "Producer",
    "RunReport",
    "StoreError",
    "Submitted",
    "SystemClock",
    "__version__",
}


def test_all_is_sorted_and_exactly_the_documented_api() -> None:
    names = list(resilient_sync.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert set(names) == DESIGNED | EXTRAS


@pytest.mark.parametrize("name", sorted(DESIGNED | EXTRAS))
def test_every_public_name_is_importable_and_documented(name: str) -> None:
    value = getattr(resilient_sync, name)
    if name != "__version__":
        assert value.__doc__, f"{name} has no docstring"
        assert not value.__doc__.startswith(("Create a new", "Initialize self"))


def test_public_classes_present_themselves_under_their_public_names() -> None:
    for name in resilient_sync.__all__:
        value = getattr(resilient_sync, name)
        if isinstance(value, type):
            assert value.__name__ == name


def test_the_version_comes_from_the_package() -> None:
    from importlib.metadata import version

    assert resilient_sync.__version__ == version("resilient-sync")


def test_testing_kit_exports() -> None:
    names = list(resilient_sync.testing.__all__)
    assert names == sorted(names)
    assert {"FakeClock", "FlakyDestination", "RecordingDestination"} <= set(names)
    for name in names:
        assert getattr(resilient_sync.testing, name).__doc__


def test_stores_export_the_memory_stores_and_open_stores() -> None:
    names = list(resilient_sync.stores.__all__)
    assert names == sorted(names)
    assert {"MemoryIdempotencyStore", "MemoryQueueStore", "open_stores"} <= set(names)
    for name in names:
        assert getattr(resilient_sync.stores, name) is not None


def test_the_testing_kit_imports_without_pytest() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import resilient_sync.testing as t; "
        "from resilient_sync.testing import FakeClock, FlakyDestination, RecordingDestination; "
        "print(t.FakeClock().now().tzname(), 'pytest' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["UTC", "False"]


def test_memory_stores_satisfy_the_runtime_protocols() -> None:
    from resilient_sync.testing import RecordingDestination

    stores = importlib.import_module("resilient_sync.stores")
    assert isinstance(stores.MemoryQueueStore(), resilient_sync.QueueStore)
    assert isinstance(stores.MemoryIdempotencyStore(), resilient_sync.IdempotencyStore)
    assert isinstance(RecordingDestination("pos"), resilient_sync.Destination)

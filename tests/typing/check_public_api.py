"""Type-checked only (mypy --strict): the public API as a user writes it."""

from __future__ import annotations

from resilient_sync import DeliveryContext, Dispatcher, Event, RetryPolicy
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock


class Pos:
    name = "pos"

    def deliver(self, event: Event, context: DeliveryContext) -> dict[str, str]:
        return {"remote_id": context.idempotency_key}


def build() -> Dispatcher:
    return Dispatcher(
        MemoryQueueStore(),
        MemoryIdempotencyStore(),
        [Pos()],
        retry=RetryPolicy(max_attempts=5, initial_delay=2.0),
        clock=FakeClock(),
    )

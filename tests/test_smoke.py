from __future__ import annotations

from resilient_sync import Dispatcher, Event, RetryableError, RetryPolicy
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock, FlakyDestination


def test_event_survives_two_outages_and_arrives_once() -> None:
    clock = FakeClock()
    pos = FlakyDestination("pos", [RetryableError("down"), RetryableError("down")])
    dispatcher = Dispatcher(
        MemoryQueueStore(),
        MemoryIdempotencyStore(),
        [pos],
        retry=RetryPolicy(jitter=False),
        clock=clock,
    )
    dispatcher.submit(Event("c1", "customer.created", {"email": "ada@example.com"}))
    for _ in range(3):
        dispatcher.run_until_idle()
        clock.advance(60)
    assert [e.id for e in pos.applied] == ["c1"]
    assert len(set(pos.keys)) == 1

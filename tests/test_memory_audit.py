"""The memory store's audit trail: records keep what they were when written.

The store keeps a record's values and builds the record (with its id) when
it is read; these pin what every read hands out all the same.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from resilient_sync import Attempt, Dispatcher, ErrorCategory, ErrorInfo
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def record(delivery_id: str | None, action: str, *, at: datetime = T0, **kw: object) -> Attempt:
    return Attempt(
        delivery_id=delivery_id,
        destination="pos",
        action=action,
        actor="ops",
        started_at=at,
        finished_at=at,
        **kw,  # type: ignore[arg-type]
    )


def test_records_get_ids_in_order_and_reads_agree() -> None:
    store = MemoryQueueStore()
    store.add_audit([record("d1", "a"), record(None, "pause"), record("d1", "b", id=99)])
    newest_first = store.audit()
    assert [(a.action, a.id) for a in newest_first] == [("b", 3), ("pause", 2), ("a", 1)]
    assert store.attempts("d1") == [newest_first[2], newest_first[0]]
    # equal records on every read, whichever read came first, each a new
    # object with its own details (as the SQL stores hand them out)
    assert store.attempts("d1")[0] == store.audit()[2]
    assert store.audit(limit=1)[0] == store.attempts("d1")[1]
    assert store.attempts("d1")[0].details is not store.attempts("d1")[0].details
    assert store.attempts("nobody") == []


def test_a_record_keeps_the_details_it_was_written_with() -> None:
    store = MemoryQueueStore()
    written = record("d1", "edit", details={"changed": ["payload.email"]})
    store.add_audit([written])
    written.details["changed"] = ["mutated later"]  # type: ignore[index]
    (stored,) = store.attempts("d1")
    assert stored.details == {"changed": ["payload.email"]}
    assert stored.details is not written.details
    assert stored == Attempt(
        delivery_id="d1",
        destination="pos",
        action="edit",
        actor="ops",
        started_at=T0,
        finished_at=T0,
        details={"changed": ["payload.email"]},
        id=1,
    )


def test_unread_records_are_counted_filtered_and_purged_as_written() -> None:
    store = MemoryQueueStore()
    failed = ErrorInfo(category=ErrorCategory.TRANSIENT, message="503")
    store.add_audit(
        [
            record(None, "rate_limited", at=T0, error=failed),
            record(None, "pause", at=T0 + timedelta(hours=2)),
            record("d1", "deliver", at=T0 + timedelta(hours=1), error=failed),
        ]
    )
    assert store.error_counts(
        since=T0, until=T0 + timedelta(days=1), bucket=timedelta(hours=1)
    ) == [
        (0, ErrorCategory.TRANSIENT, 1),
        (1, ErrorCategory.TRANSIENT, 1),
    ]
    assert [a.action for a in store.audit(errors_only=True)] == ["deliver", "rate_limited"]
    assert [a.action for a in store.audit(since=T0 + timedelta(hours=1))] == ["deliver", "pause"]
    # a destination's records older than ``before`` go; the others stay, ids kept
    assert store.purge(before=T0 + timedelta(hours=1)) == 0
    assert [(a.action, a.id) for a in store.audit()] == [("deliver", 3), ("pause", 2)]


class _Accepts:
    """A destination that accepts everything at once."""

    name = "pos"

    def deliver(self, event: object, context: object) -> None:
        return None


def _worker() -> tuple[MemoryQueueStore, MemoryIdempotencyStore, Dispatcher]:
    queue, keys = MemoryQueueStore(), MemoryIdempotencyStore()
    return queue, keys, Dispatcher(queue, keys, [_Accepts()])


def test_a_finished_delivery_leaves_one_object_for_the_garbage_collector() -> None:
    """What the memory stores keep of a delivered event (its row, its audit
    record, its completed idempotency key) is walked by every full
    collection of the garbage collector, and with 100,000 kept those
    collections cost more than the rest of the bookkeeping: all but the row
    are tuples of plain values, which the collector stops tracking."""
    import gc

    from resilient_sync import Event

    queue, _, dispatcher = _worker()
    events = [
        Event(f"order-{n}", "order.paid", {"n": n, "email": "a@example.com"}) for n in range(2000)
    ]
    dispatcher.run_until_idle()  # whatever a first run sets up
    gc.collect()
    before = len(gc.get_objects())
    dispatcher.submit_many(events)
    assert dispatcher.run_until_idle().succeeded == 2000
    gc.collect()
    kept = len(gc.get_objects()) - before
    assert kept < 2000 * 1.1, f"{kept / 2000:.2f} tracked objects per delivery"
    assert len(queue.attempts(queue.list(limit=1).items[0].id)) == 1
    dispatcher.close()


def test_a_worker_that_purges_what_it_delivered_stays_the_same_size() -> None:
    """A long-lived worker on the memory stores that purges finished
    deliveries keeps no trace of them: each claim scheduled its lease's end
    (minutes later) and each enqueue an entry for ``stats()``, and those
    stayed until they came up, hundreds of thousands on a busy worker."""
    import tracemalloc

    from resilient_sync import Event

    queue, keys, dispatcher = _worker()
    far = datetime.now(timezone.utc) + timedelta(days=3650)

    def cycle(n: int) -> None:
        events = [Event(f"order-{n}-{i}", "order.paid", {"i": i}) for i in range(500)]
        dispatcher.submit_many(events)
        assert dispatcher.run_until_idle().succeeded == 500
        assert queue.purge(before=far, limit=1000) == 500
        keys.purge(now=far, limit=1000)

    tracemalloc.start()
    try:
        for n in range(5):
            cycle(n)
        before = tracemalloc.get_traced_memory()[0]
        for n in range(5, 25):  # 10,000 deliveries more
            cycle(n)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 10_000 * 8, f"{grown / 10_000:.1f} bytes kept per delivery"
    assert queue.stats().by_destination == {}
    dispatcher.close()

"""The sync Dispatcher: reports, run loops, pull(source), configuration errors."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from core_support import Scripted, event, harness
from resilient_sync import (
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    Event,
    InvalidEventError,
    MappingError,
    RetryableError,
    RunReport,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock, RecordingDestination


def test_a_delivery_succeeds_with_its_result_and_an_audit_record() -> None:
    pos = RecordingDestination("pos", result={"remote_id": "P-1"})
    h = harness(pos, worker_id="w1")
    (created,) = h.dispatcher.submit(event("e1"))
    report = h.dispatcher.run_once()
    assert report == RunReport(claimed=1, succeeded=1)
    d = h.delivery("e1")
    assert d.id == created.id
    assert d.status is DeliveryStatus.SUCCEEDED
    assert d.result == {"remote_id": "P-1"}
    assert d.attempts == 1
    assert d.last_error is None
    assert d.lease_owner is None
    (record,) = h.audit("e1")
    assert record.action == "deliver"
    assert record.actor == "worker:w1"
    assert record.outcome is DeliveryStatus.SUCCEEDED
    assert record.started_at == h.clock.now()
    (_, context) = pos.calls[0]
    assert context.delivery_id == d.id
    assert context.destination == "pos"
    assert context.idempotency_key == d.idempotency_key
    assert context.attempt == 1


def test_run_reports_count_each_outcome() -> None:
    def behave(e: Event, n: int) -> Any:
        if e.id == "retry":
            raise RetryableError("down")
        if e.id == "stuck":
            raise MappingError("no mapping")
        return None

    h = harness(Scripted("pos", behave))
    h.dispatcher.submit_many([event("ok1"), event("retry"), event("stuck"), event("ok2")])
    report = h.dispatcher.run_until_idle()
    assert report == RunReport(claimed=4, succeeded=2, retry_scheduled=1, needs_action=1)
    assert not report.idle
    assert h.dispatcher.run_until_idle().idle


def test_run_once_limit_and_batch_size_bound_a_batch() -> None:
    pos = RecordingDestination("pos")
    h = harness(pos, batch_size=3)
    h.dispatcher.submit_many([event(f"e{i}") for i in range(7)])
    assert h.dispatcher.run_once(limit=2).claimed == 2
    assert h.dispatcher.run_once().claimed == 3
    total = h.dispatcher.run_until_idle()
    assert total.claimed == 2
    assert [e.id for e in pos.applied] == [f"e{i}" for i in range(7)]
    with pytest.raises(ValueError, match="limit"):
        h.dispatcher.run_once(limit=0)


def test_run_until_idle_max_batches() -> None:
    h = harness(RecordingDestination("pos"), batch_size=1)
    h.dispatcher.submit_many([event(f"e{i}") for i in range(5)])
    assert h.dispatcher.run_until_idle(max_batches=2).succeeded == 2


def test_a_non_json_result_is_stored_as_text_at_its_path_explained_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # submit() refuses a Decimal; a result cannot be refused (the effect happened),
    # so the same rule decides what is not JSON, and the change is said out loud
    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            return {"id": "C-1", "amount": Decimal("12.50")}

    h = harness(Pos())
    h.dispatcher.submit(event("e1"))
    with caplog.at_level(logging.WARNING, logger="resilient_sync"):
        h.dispatcher.run_until_idle()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.SUCCEEDED  # the effect happened: never redo it
    assert d.result == {"id": "C-1", "amount": "12.50"}
    reason = h.audit("e1")[-1].reason
    assert reason is not None
    assert "result.amount" in reason
    assert "Decimal" in reason
    assert any("result.amount" in r.getMessage() for r in caplog.records)
    with pytest.raises(InvalidEventError, match=r"payload\.amount is a Decimal"):
        h.dispatcher.submit(Event("e2", "t", {"amount": Decimal("12.50")}))


def _run_forever_in_thread(dispatcher: Dispatcher, stop: threading.Event) -> list[RunReport]:
    out: list[RunReport] = []
    thread = threading.Thread(target=lambda: out.append(dispatcher.run_forever(stop)))
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():
        stop.set()
        thread.join(timeout=5)
        pytest.fail("run_forever did not stop")
    return out


def test_run_forever_retries_on_the_fake_clock_and_stops_when_told() -> None:
    stop = threading.Event()
    attempts: list[int] = []

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            attempts.append(context.attempt)
            if context.attempt < 3:
                raise RetryableError("down")
            stop.set()
            return None

    h = harness(Pos())
    h.dispatcher.submit(event("e1"))
    start = h.clock.now()
    (report,) = _run_forever_in_thread(h.dispatcher, stop)
    assert attempts == [1, 2, 3]
    assert report.succeeded == 1
    assert report.retry_scheduled == 2
    assert h.status("e1") is DeliveryStatus.SUCCEEDED
    # the idle waits slept on the fake clock: 1 s then 2 s of backoff
    assert (h.clock.now() - start).total_seconds() >= 3


def test_run_forever_reaches_a_retry_while_another_key_is_stuck() -> None:
    # A stuck key leaves a PENDING delivery that is not claimable; the idle
    # loop must still sleep (advancing the fake clock) until the retry is due.
    stop = threading.Event()

    def behave(e: Event, n: int) -> Any:
        if e.id == "a1":
            raise MappingError("unknown SKU")
        if e.id == "b1" and n == 1:
            raise RetryableError("down")
        if e.id == "b1":
            stop.set()
        return None

    h = harness(Scripted("pos", behave), poll_interval=5)
    h.dispatcher.submit_many(
        [event("a1", ordering_key="A"), event("a2", ordering_key="A"), event("b1")]
    )
    _run_forever_in_thread(h.dispatcher, stop)
    assert h.status("b1") is DeliveryStatus.SUCCEEDED
    assert h.status("a2") is DeliveryStatus.PENDING


def test_run_forever_sleeps_while_a_destination_is_paused() -> None:
    stop = threading.Event()
    h = harness(RecordingDestination("pos"), poll_interval=2)
    h.operator.pause("pos", actor="alice")
    h.dispatcher.submit(event("e1"))
    start = h.clock.now()
    rounds = {"n": 0}
    original = h.clock.sleep

    def sleep(seconds: float) -> None:
        rounds["n"] += 1
        if rounds["n"] >= 5:
            stop.set()
        original(seconds)

    h.clock.sleep = sleep  # type: ignore[method-assign]
    _run_forever_in_thread(h.dispatcher, stop)
    # each idle round waited poll_interval instead of spinning
    assert (h.clock.now() - start).total_seconds() == pytest.approx(5 * 2)
    assert h.status("e1") is DeliveryStatus.PENDING


class ListSource:
    """A change feed over a list; the cursor is the index of the next event."""

    name = "shop"

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = list(events)
        self.reads: list[tuple[str | None, int]] = []

    def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
        self.reads.append((cursor, limit))
        start = int(cursor or 0)
        page = self.events[start : start + limit]
        return page, str(start + len(page))


def test_pull_resumes_from_the_saved_cursor_after_a_restart() -> None:
    clock = FakeClock()
    queue, idem = MemoryQueueStore(), MemoryIdempotencyStore()
    pos = RecordingDestination("pos")
    source = ListSource([event(f"e{i}") for i in range(5)])
    first = Dispatcher(queue, idem, [pos], clock=clock)
    assert first.pull(source, limit=2) == 5
    assert queue.get_cursor("shop") == "5"
    # a new process: same store, new dispatcher; the source grew meanwhile
    source.events += [event("e5"), event("e6")]
    source.reads.clear()
    second = Dispatcher(queue, idem, [pos], clock=clock)
    assert second.pull(source, limit=2) == 2
    assert source.reads[0] == ("5", 2)
    second.run_until_idle()
    assert [e.id for e in pos.applied] == [f"e{i}" for i in range(7)]


def test_pulling_the_same_range_twice_enqueues_nothing_new() -> None:
    h = harness(RecordingDestination("pos"))
    source = ListSource([event("e1"), event("e2")])
    assert h.dispatcher.pull(source) == 2

    class Rewound(ListSource):
        def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
            return super().read(None, limit)

    again = Rewound(source.events)
    assert h.dispatcher.pull(again) == 0
    assert len(h.all()) == 2


def test_an_invalid_event_stops_the_pull_and_keeps_the_cursor_before_its_page() -> None:
    h = harness(RecordingDestination("pos"))
    source = ListSource([event("e1"), event("e2"), Event("bad", "t", {"x": {1, 2}}), event("e4")])
    with pytest.raises(InvalidEventError, match=r"payload\.x"):
        h.dispatcher.pull(source, limit=2)
    assert h.queue.get_cursor("shop") == "2"
    assert [d.event.id for d in h.all()] == ["e1", "e2"]


@pytest.mark.parametrize(
    ("destinations", "error", "match"),
    [
        ([], ValueError, "at least one destination"),
        (
            [RecordingDestination("pos"), RecordingDestination("pos")],
            ValueError,
            "two destinations",
        ),
        ([object()], ValueError, "name"),
    ],
)
def test_configuration_errors_are_clear(
    destinations: list[Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Dispatcher(MemoryQueueStore(), MemoryIdempotencyStore(), destinations)


def test_a_destination_without_deliver_is_refused() -> None:
    class NoDeliver:
        name = "pos"

    with pytest.raises(TypeError, match="deliver"):
        Dispatcher(MemoryQueueStore(), MemoryIdempotencyStore(), [NoDeliver()])


def test_an_async_destination_needs_the_async_dispatcher() -> None:
    class AsyncPos:
        name = "pos"

        async def deliver(self, e: Event, context: DeliveryContext) -> Any:
            return None

    with pytest.raises(TypeError, match="AsyncDispatcher"):
        Dispatcher(MemoryQueueStore(), MemoryIdempotencyStore(), [AsyncPos()])


@pytest.mark.parametrize("setting", [{"concurrency": 0}, {"batch_size": 0}, {"lease": 0}])
def test_invalid_settings_are_refused(setting: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(setting))):
        Dispatcher(
            MemoryQueueStore(), MemoryIdempotencyStore(), [RecordingDestination()], **setting
        )


def test_destinations_may_be_given_as_a_mapping() -> None:
    pos = RecordingDestination("ignored-name")
    h_queue, h_idem = MemoryQueueStore(), MemoryIdempotencyStore()
    dispatcher = Dispatcher(h_queue, h_idem, {"pos": pos}, clock=FakeClock())
    (d,) = dispatcher.submit(event("e1"))
    assert d.destination == "pos"
    dispatcher.run_until_idle()
    assert len(pos.applied) == 1


def test_the_pool_runs_up_to_concurrency_deliveries_at_once() -> None:
    barrier = threading.Barrier(3, timeout=10)
    lock = threading.Lock()
    active = {"now": 0, "max": 0}

    class Slow:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            with lock:
                active["now"] += 1
                active["max"] = max(active["max"], active["now"])
            try:
                barrier.wait()  # only returns once 3 deliveries run at the same time
                return None
            finally:
                with lock:
                    active["now"] -= 1

    h = harness(Slow(), concurrency=3)
    h.dispatcher.submit_many([event(f"e{i}") for i in range(6)])
    report = h.dispatcher.run_until_idle()
    assert report.succeeded == 6, h.operator.recent_errors()
    assert active["max"] == 3


class _Logged:
    """A destination that logs the event ids it is called with (from any
    thread), then runs ``then(event_id, calls so far)``."""

    name = "pos"

    def __init__(self, then: Any) -> None:
        self.then = then
        self.called: list[str] = []
        self._lock = threading.Lock()

    def deliver(self, e: Event, context: DeliveryContext) -> Any:
        with self._lock:
            self.called.append(e.id)
            calls = len(self.called)
        self.then(e.id, calls)
        return None


def test_an_interrupted_pooled_batch_records_what_finished_and_hands_back_the_rest() -> None:
    """Ctrl-C (or any BaseException) out of one delivery of a pooled batch: no
    thread starts another, what finished keeps its outcome, what never
    started is handed back unattempted, the interrupted one waits for its
    lease, and the interrupt reaches the caller."""

    def interrupt_at_e5(event_id: str, calls: int) -> None:
        if event_id == "e5":
            raise KeyboardInterrupt
        time.sleep(0.002)

    pos = _Logged(interrupt_at_e5)
    called = pos.called
    h = harness(pos, concurrency=4, batch_size=40)
    h.dispatcher.submit_many([event(f"e{i}") for i in range(40)])
    with pytest.raises(KeyboardInterrupt):
        h.dispatcher.run_once()
    by_status: dict[DeliveryStatus, set[str]] = {}
    for d in h.all():
        by_status.setdefault(d.status, set()).add(d.event.id)
    assert set(by_status) <= {
        DeliveryStatus.SUCCEEDED,
        DeliveryStatus.IN_FLIGHT,
        DeliveryStatus.PENDING,
    }
    succeeded = by_status.get(DeliveryStatus.SUCCEEDED, set())
    in_flight = by_status.get(DeliveryStatus.IN_FLIGHT, set())
    pending = by_status.get(DeliveryStatus.PENDING, set())
    # what was called ended as an outcome, or is left to its lease (e5 and
    # whatever ran beside it); what was never called was handed back
    assert "e5" in in_flight
    assert succeeded | in_flight == set(called)
    assert pending == {f"e{i}" for i in range(40)} - set(called)
    assert len(pending) >= 40 - 4 - 8, called  # no thread went on for long
    assert all(h.delivery(i).attempts == 0 for i in pending)
    assert all(len(h.operator.attempts(h.delivery(i).id)) == 1 for i in succeeded)


def test_a_stop_mid_batch_with_a_pool_starts_nothing_more() -> None:
    stop = threading.Event()

    def stop_at_the_third(event_id: str, calls: int) -> None:
        if calls == 3:
            stop.set()  # as a SIGTERM handler would

    pos = _Logged(stop_at_the_third)
    called = pos.called
    h = harness(pos, concurrency=3, batch_size=30)
    h.dispatcher.submit_many([event(f"e{i}") for i in range(30)])
    report = h.dispatcher.run_forever(stop)
    assert report.succeeded == len(called) < 30
    assert report.released == 30 - len(called)
    assert {d.event.id for d in h.all() if d.status is DeliveryStatus.PENDING} == {
        f"e{i}" for i in range(30)
    } - set(called)


def test_the_pool_still_keeps_order_per_key() -> None:
    barrier = threading.Barrier(2, timeout=10)
    order: list[str] = []
    lock = threading.Lock()

    class Pos:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            barrier.wait()  # pairs of deliveries run together
            with lock:
                order.append(e.id)
            return None

    h = harness(Pos(), concurrency=2)
    h.dispatcher.submit_many(
        [event(f"{k}{i}", ordering_key=k) for i in range(3) for k in ("a", "b")]
    )
    h.drain()
    assert all(d.status is DeliveryStatus.SUCCEEDED for d in h.all())
    assert [e for e in order if e[0] == "a"] == ["a0", "a1", "a2"]
    assert [e for e in order if e[0] == "b"] == ["b0", "b1", "b2"]


def test_two_workers_never_claim_the_same_delivery() -> None:
    queue, idem = MemoryQueueStore(), MemoryIdempotencyStore()
    clock = FakeClock()
    pos = RecordingDestination("pos")
    workers: dict[str, Dispatcher] = {}
    claimed_by_two: list[int] = []

    class Interleave:
        """While worker one holds its batch, worker two tries to claim."""

        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            if not claimed_by_two:
                claimed_by_two.append(workers["two"].run_once().claimed)
            return pos.deliver(e, context)

    workers["one"] = Dispatcher(queue, idem, [Interleave()], clock=clock, worker_id="one")
    workers["two"] = Dispatcher(queue, idem, [pos], clock=clock, worker_id="two")
    workers["one"].submit_many([event(f"e{i}") for i in range(10)])
    assert workers["one"].run_once().succeeded == 10
    assert claimed_by_two == [0]
    assert len(pos.calls) == 10
    assert sorted(e.id for e in pos.applied) == sorted(f"e{i}" for i in range(10))


def test_a_plain_deliver_returning_a_coroutine_is_not_a_success() -> None:
    sent: list[str] = []

    async def send(e: Event) -> None:
        sent.append(e.id)

    class Wrapped:
        """``deliver`` hides that it is async (a decorator, a lambda)."""

        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            return send(e)

    h = harness(Wrapped())
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.last_error is not None
    assert "AsyncDispatcher" in d.last_error.message
    assert sent == []


def test_a_destination_changing_the_event_in_place_does_not_change_the_queue() -> None:
    seen: list[dict[str, Any]] = []

    class Normalising:
        name = "pos"

        def deliver(self, e: Event, context: DeliveryContext) -> Any:
            seen.append(copy.deepcopy(e.payload))
            e.payload["phone"] = e.payload["phone"].replace(" ", "")  # in place
            e.payload["lines"].append({"sku": "extra"})
            raise RetryableError("down")

    h = harness(Normalising())
    h.dispatcher.submit(Event("e1", "t", {"phone": "555 01", "lines": []}))
    h.dispatcher.run_until_idle()
    h.clock.advance(60)
    h.dispatcher.run_until_idle()
    assert seen == [{"phone": "555 01", "lines": []}] * 2  # the retry sends what was submitted
    assert h.delivery("e1").event.payload == {"phone": "555 01", "lines": []}


def test_a_single_destination_needs_no_list() -> None:
    from resilient_sync import Dispatcher, Event
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
    from resilient_sync.testing import FakeClock, RecordingDestination

    pos = RecordingDestination("pos")
    dispatcher = Dispatcher(MemoryQueueStore(), MemoryIdempotencyStore(), pos, clock=FakeClock())
    dispatcher.submit(Event("c1", "customer.created", {}))
    assert dispatcher.run_until_idle().succeeded == 1
    assert [e.id for e in pos.applied] == ["c1"]


def test_an_idle_worker_on_the_memory_store_wakes_at_once_on_a_submit() -> None:
    queue, idempotency = MemoryQueueStore(), MemoryIdempotencyStore()
    pos = RecordingDestination("pos")
    dispatcher = Dispatcher(queue, idempotency, [pos], poll_interval=30)
    stop = threading.Event()
    worker = threading.Thread(target=dispatcher.run_forever, args=(stop,))
    worker.start()
    try:
        time.sleep(0.2)  # idle: waiting, with a 30 s poll interval
        started = time.monotonic()
        dispatcher.submit(event("e1"))
        while not pos.applied and time.monotonic() - started < 10:
            time.sleep(0.005)
        assert pos.applied
        assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()  # and it notices the stop within half a second

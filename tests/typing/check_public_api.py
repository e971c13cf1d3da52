"""Type-checked only (mypy --strict): the public API as a user writes it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import timedelta

import attrs

from resilient_sync import (
    AsyncDispatcher,
    Attempt,
    CircuitBreaker,
    Classifier,
    DataFormatError,
    Delivery,
    DeliveryContext,
    DeliveryNotFoundError,
    DeliveryStatus,
    Destination,
    Dispatcher,
    DispatchEvent,
    DuplicateError,
    ErrorCategory,
    ErrorInfo,
    Event,
    IdempotencyStore,
    InvalidEventError,
    MappingError,
    Operator,
    PermissionDeniedError,
    QueueStore,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
    RunReport,
    Source,
    SyncError,
    SystemClock,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock, FlakyDestination, RecordingDestination


class Pos:
    """A destination with both optional hooks."""

    name = "pos"

    def deliver(self, event: Event, context: DeliveryContext) -> dict[str, str]:
        if event.payload.get("sku") is None:
            raise MappingError("unknown SKU", field="sku")
        if context.attempt > 3:
            raise RateLimitedError("slow down", retry_after=30)
        return {"remote_id": context.idempotency_key}

    def resolve_duplicate(self, event: Event, error: Exception) -> dict[str, str] | None:
        if isinstance(error, DuplicateError):
            return {"remote_id": "existing"}
        return None

    def fix_data(self, event: Event, error: Exception) -> Event | None:
        if isinstance(error, DataFormatError) and error.field == "phone":
            return attrs.evolve(event, payload={**event.payload, "phone": "+15550101"})
        return None


class AsyncCrm:
    name = "crm"

    async def deliver(self, event: Event, context: DeliveryContext) -> None:
        await asyncio.sleep(0)
        if context.attempt == 1:
            raise RetryableError("CRM busy", retry_after=1.5)


class Feed:
    name = "shop"

    def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
        return [Event("e1", "order.created", {"total": 10})], "1"


def as_protocols() -> None:
    destination: Destination = Pos()
    source: Source = Feed()
    queue: QueueStore = MemoryQueueStore()
    idempotency: IdempotencyStore = MemoryIdempotencyStore()
    print(destination.name, source.name, queue, idempotency)


def escalate(delivery: Delivery) -> None:
    error: ErrorInfo | None = delivery.last_error
    if error is not None and error.category.escalates:
        print(delivery.id, error.category, error.message, error.field)


def metrics(event: DispatchEvent) -> None:
    print(event.kind, event.destination, event.category, event.duration)


def build(clock: FakeClock) -> Dispatcher:
    classifier = Classifier().register(KeyError, ErrorCategory.MAPPING)
    classifier.add_rule(lambda exc: ErrorCategory.TRANSIENT if "busy" in str(exc) else None)
    return Dispatcher(
        MemoryQueueStore(),
        MemoryIdempotencyStore(),
        [Pos(), RecordingDestination("audit-log"), FlakyDestination.failing(2, TimeoutError())],
        retry=RetryPolicy(
            max_attempts=5,
            initial_delay=2.0,
            multiplier=3,
            max_delay=timedelta(minutes=10),
            deadline=timedelta(days=1),
            jitter=False,
        ),
        clock=clock,
        classifier=classifier,
        concurrency=4,
        lease=timedelta(minutes=5),
        on_needs_action=escalate,
        on_event=metrics,
        circuit=CircuitBreaker(threshold=3, cool_off=30),
    )


def run_sync() -> int:
    clock = FakeClock()
    dispatcher = build(clock)
    created: list[Delivery] = dispatcher.submit(
        Event("c1", "customer.created", {"sku": "A"}, ordering_key="cust-1"), to="pos"
    )
    try:
        dispatcher.submit_many([Event("bad", "t", {"x": float("nan")})])
    except InvalidEventError as exc:
        print(exc.field)
    dispatcher.pull(Feed())
    report: RunReport = dispatcher.run_until_idle()
    clock.advance(timedelta(seconds=30))
    report += dispatcher.run_once(limit=10)
    stop = threading.Event()
    stop.set()
    dispatcher.run_forever(stop)
    return report.succeeded + len(created)


def operate(queue: QueueStore, clock: FakeClock | SystemClock) -> None:
    operator = Operator(queue, clock=clock)
    page = operator.list(status=DeliveryStatus.NEEDS_ACTION, category="mapping", limit=20)
    while True:
        for delivery in page:
            history: list[Attempt] = operator.attempts(delivery.id)
            print(delivery.status, [a.action for a in history])
        if page.next_cursor is None:
            break
        page = operator.list(status="needs_action", cursor=page.next_cursor)
    try:
        operator.get("nope")
    except DeliveryNotFoundError as exc:
        print(exc.delivery_id)
    moved: list[str] = operator.retry(["d1", "d2"], actor="alice")
    moved += operator.retry_all(destination="pos", category=ErrorCategory.MAPPING, dry_run=True)
    operator.resolve("d3", note="created by hand", actor="alice")
    operator.discard(["d4"], note="test order", actor="alice")
    operator.pause("pos", note="maintenance", actor="alice")
    operator.resume("pos", actor="alice")
    stats = operator.stats()
    print(stats.total, stats.by_status.get(DeliveryStatus.SUCCEEDED, 0), moved)
    # the documented string keys type-check too
    failed: int = stats.by_status["needs_action"]
    succeeded: int = stats.by_status.get("succeeded", 0)
    print(failed + succeeded, "needs_action" in stats.by_status)
    for bucket in operator.error_trend(bucket=timedelta(hours=1)):
        print(bucket.start, bucket.total, bucket.counts.get(ErrorCategory.TRANSIENT, 0))
    for attempt in operator.recent_errors(limit=5):
        print(attempt.category, attempt.reason, attempt.actor)
    print(operator.destinations().get("pos"))


async def run_async() -> RunReport:
    clock = FakeClock()
    dispatcher = AsyncDispatcher(
        MemoryQueueStore(),
        MemoryIdempotencyStore(),
        [AsyncCrm(), Pos()],
        retry=RetryPolicy(max_attempts=3),
        clock=clock,
        concurrency=8,
    )
    await dispatcher.submit(Event("c1", "customer.created", {"sku": "A"}))
    await dispatcher.submit_many([Event("c2", "customer.created", {"sku": "B"})], to="crm")
    await dispatcher.pull(Feed())
    report = await dispatcher.run_until_idle()
    stop = asyncio.Event()
    stop.set()
    report += await dispatcher.run_forever(stop)
    return report


def errors() -> list[SyncError]:
    return [
        RetryableError("down"),
        RateLimitedError(retry_after=10),
        DuplicateError("exists"),
        DataFormatError("bad", field="lines[0].sku"),
        MappingError(),
        PermissionDeniedError("revoked"),
    ]


if __name__ == "__main__":
    run_sync()
    asyncio.run(run_async())


# --- the public subpackages, as a user writes them --------------------------

import httpx  # noqa: E402

from resilient_sync.alerts import Alerter, LogNotifier, default_rules  # noqa: E402
from resilient_sync.http import (  # noqa: E402
    PRESETS,
    AsyncHttpDestination,
    HttpDestination,
    HttpRequest,
    Preset,
    RateLimit,
)
from resilient_sync.stores import SQLiteIdempotencyStore, SQLiteQueueStore, open_stores  # noqa: E402


def build_http() -> tuple[HttpDestination, AsyncHttpDestination]:
    pos = HttpDestination(
        "pos",
        base_url="https://pos.example/api",
        path="/customers",
        headers={"Authorization": "Bearer secret"},
        timeout=httpx.Timeout(10.0),
        rate_limit=RateLimit(rate=5.0, burst=10),
    )
    crm = AsyncHttpDestination("crm", base_url="https://crm.example", path="/contacts")

    def find(event: Event, context: DeliveryContext) -> dict[str, str] | None:
        found = stripe.request("GET", "/customers", params={"email": "a@x"}, context=context)
        data = found.json()["data"]
        return {"id": str(data[0]["id"])} if data else None

    stripe = HttpDestination(
        "stripe",
        "https://api.stripe.com/v1",
        "/customers",
        preset="stripe",
        field_map={"tax_id_data[0].value": "vat_number"},
        find_existing=find,
        build_request=lambda event: HttpRequest(form={"email": event.payload["email"]}),
    )
    mine: Preset = Preset(name="pos", idempotency_header="X-Key", encoding="form")
    pagination = PRESETS["stripe"].pagination
    assert pagination is not None
    params: dict[str, str] | None = pagination.next_params(httpx.Response(200))
    assert params is None
    HttpDestination("pos", preset=mine, field_map=lambda name: None).use_clock(FakeClock())
    return pos, crm


def operate_url(url: str) -> int:
    queue, idempotency = open_stores(url)
    alerter = Alerter(queue, [LogNotifier()], default_rules())
    alerter.check()
    Alerter(Operator(queue), [LogNotifier()]).use_clock(SystemClock())
    store: SQLiteQueueStore = SQLiteQueueStore("sync.db")
    other: SQLiteIdempotencyStore = SQLiteIdempotencyStore("sync.db")
    store.close()
    other.close()
    idempotency.close()
    return Operator(queue).stats().total

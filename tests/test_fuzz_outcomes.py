"""Fuzzing what destinations return and raise, on every store, sync and async.

Whatever a destination does (return any value: JSON, not JSON, huge,
unencodable, cyclic; raise any of the library's errors with any field,
retry_after, details, remote_field and sent; raise anything else, including
exceptions whose ``str`` raises), one ``run_once``:

- never raises, and claims every due delivery;
- ends every claimed delivery in exactly one of SUCCEEDED, RETRY_SCHEDULED,
  NEEDS_ACTION or PENDING (handed back unattempted), none IN_FLIGHT;
- records a call that returned as SUCCEEDED (its effect happened: retrying
  it would apply it twice) and a call that raised as not SUCCEEDED, with a
  non-empty reason; keeps the category a library error announces;
- audits every attempt (the last record's outcome is the delivery's status);
- stores only what any store can hold and any terminal can show: text that
  encodes as UTF-8, without control characters (outside JSON escapes),
  without the planted secrets (``sk_live_...``, ``Bearer ...``) in messages,
  reasons, details and results under secret-looking keys;
- respects the caps: messages and reasons <= 2000 characters, fields <= 255,
  results <= ``max_result_bytes`` of JSON or the truncation marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz_strategies import (
    GATE_FORBIDDEN,
    STRIPE_KEY,
    AsyncScriptedDestination,
    Behaviour,
    Counter,
    FailingMapping,
    ScriptedDestination,
    SecretError,
    UnprintableError,
    backend_params,
    behaviours,
    encodes,
    fuzz_settings,
    json_strings,
    leaked,
    open_backend,
)
from resilient_sync import (
    AsyncDispatcher,
    Attempt,
    DataFormatError,
    Delivery,
    DeliveryStatus,
    Dispatcher,
    DuplicateError,
    Event,
    RetryPolicy,
)
from resilient_sync._json import compact_dumps
from resilient_sync.testing import FakeClock

MAX_TEXT = 2_000
MAX_FIELD = 255
ENDED = {
    DeliveryStatus.SUCCEEDED,
    DeliveryStatus.RETRY_SCHEDULED,
    DeliveryStatus.NEEDS_ACTION,
    DeliveryStatus.PENDING,
}


@attrs.define
class Backend:
    kind: str
    queue: Any
    idempotency: Any
    fresh: Counter


@pytest.fixture(scope="module", params=backend_params())
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    queue, idempotency, close = open_backend(
        request.param, tmp_path_factory.mktemp("fuzz_outcomes"), "outcomes"
    )
    try:
        yield Backend(request.param, queue, idempotency, Counter())
    finally:
        close()


policies = st.builds(
    lambda attempts, deadline: RetryPolicy(
        max_attempts=attempts, initial_delay=1, jitter=False, deadline=deadline
    ),
    st.integers(1, 3),
    st.sampled_from([None, 1, 3600]),
)
result_caps = st.sampled_from([1, 64, 600, 4096, 64 * 1024])


# -- the checks -------------------------------------------------------------------------------


def check_text(text: str | None, what: str, *, limit: int) -> None:
    if text is None:
        return
    assert isinstance(text, str), (what, text)
    assert encodes(text), (what, text[:200])
    bad = GATE_FORBIDDEN.search(text)
    assert bad is None, (what, bad.group(), text[:200])
    assert len(text) <= limit, (what, len(text), text[:120])
    assert leaked(text) is None, (what, text[:300])


def check_json(value: Any, what: str) -> None:
    encoded = compact_dumps(value)  # JSON, finite numbers
    assert encodes(encoded), what
    for text in json_strings(value):
        assert encodes(text), (what, text[:200])
        assert leaked(text) is None, (what, text[:300])


def check_record(record: Attempt) -> None:
    check_text(record.actor, "actor", limit=MAX_FIELD)
    check_text(record.reason, "reason", limit=MAX_TEXT + 200)
    if record.error is not None:
        check_error(record, record.error)
    check_json(dict(record.details), "details")


def check_error(owner: Any, error: Any) -> None:
    assert error.message.strip(), owner
    check_text(error.message, "message", limit=MAX_TEXT)
    for name in ("field", "remote_field", "exception_type"):
        check_text(getattr(error, name), name, limit=MAX_FIELD)
    assert error.retry_after is None or 0 <= error.retry_after <= 366 * 86_400


def check_result(result: Any, cap: int) -> None:
    if result is None:  # no result (what None means), whatever the cap
        return
    check_json(result, "result")
    size = len(compact_dumps(result).encode("utf-8"))
    if size > cap:
        assert isinstance(result, dict), result
        assert result.get("truncated") is True, result
        assert result["bytes"] > cap
        assert len(result["preview"]) <= 500


def check_outcomes(
    queue: Any,
    deliveries: list[Delivery],
    dest: ScriptedDestination,
    script: dict[str, Behaviour],
    cap: int,
    *,
    hooks: bool = False,
) -> None:
    for delivery in deliveries:
        d = queue.get(delivery.id)
        behaviour = script[d.event.id]
        assert d.status in ENDED, (d.status, behaviour)
        calls = dest.calls.get(d.event.id, 0)
        records = queue.attempts(d.id)
        if calls == 0:  # handed back: its destination was held or paused meanwhile
            assert d.status is DeliveryStatus.PENDING, behaviour
            assert d.attempts == 0
            continue
        if not behaviour.raises:
            # the destination applied it: recorded as done, never sent again
            assert d.status is DeliveryStatus.SUCCEEDED, (behaviour, d.last_error)
        elif not (hooks and behaviour.category == "duplicate"):
            assert d.status is not DeliveryStatus.SUCCEEDED, behaviour
        if behaviour.category is not None and d.last_error is not None and not hooks:
            assert d.last_error.category.value == behaviour.category, (behaviour, d.last_error)
        if d.status is DeliveryStatus.SUCCEEDED:
            check_result(d.result, cap)
        else:
            assert d.last_error is not None, behaviour
            check_error(d, d.last_error)
        assert records, behaviour
        assert records[-1].outcome is d.status, (behaviour, records[-1])
        for record in records:
            check_record(record)
    for record in queue.audit(limit=20):  # the destination's own records (pause, hold)
        if record.delivery_id is None and record.destination == dest.name:
            check_record(record)


# -- sync --------------------------------------------------------------------------------------


@fuzz_settings(25)
@given(
    script=st.lists(behaviours(), min_size=1, max_size=4),
    policy=policies,
    cap=result_caps,
    concurrency=st.sampled_from([1, 1, 2]),
)
@example(
    script=[Behaviour("return a failing mapping", FailingMapping, raises=False)],
    policy=RetryPolicy(max_attempts=2, jitter=False),
    cap=600,
    concurrency=1,
)
@example(
    script=[
        Behaviour(
            "raise DuplicateError(long)",
            lambda: DuplicateError("x" * 5000),
            raises=True,
            category="duplicate",
        )
    ],
    policy=RetryPolicy(max_attempts=2, jitter=False),
    cap=600,
    concurrency=1,
)
def test_whatever_a_destination_does_ends_as_an_outcome(
    backend: Backend, script: list[Behaviour], policy: RetryPolicy, cap: int, concurrency: int
) -> None:
    name = backend.fresh()
    plan = {f"e{i}": b for i, b in enumerate(script)}
    dest = ScriptedDestination(name, plan)
    dispatcher = Dispatcher(
        backend.queue,
        backend.idempotency,
        [dest],
        retry=policy,
        clock=FakeClock(),
        max_result_bytes=cap,
        concurrency=concurrency,
    )
    try:
        submitted = dispatcher.submit_many([Event(i, "t", {"n": i}) for i in plan])
        report = dispatcher.run_once(limit=50)
    finally:
        dispatcher.close()
    assert report.claimed == len(plan)
    assert report.lost_lease == 0
    check_outcomes(backend.queue, list(submitted), dest, plan, cap)


# -- async -------------------------------------------------------------------------------------


def _async_behaviours() -> st.SearchStrategy[Behaviour]:
    cancelled = st.just(
        Behaviour(
            "raise CancelledError (the HTTP library gave up)",
            lambda: asyncio.CancelledError("gave up"),
            raises=True,
        )
    )
    return st.one_of(behaviours(), cancelled)


@fuzz_settings(15)
@given(
    script=st.lists(_async_behaviours(), min_size=1, max_size=3), policy=policies, cap=result_caps
)
def test_whatever_an_async_destination_does_ends_as_an_outcome(
    backend: Backend, script: list[Behaviour], policy: RetryPolicy, cap: int
) -> None:
    name = backend.fresh()
    plan = {f"e{i}": b for i, b in enumerate(script)}
    dest = AsyncScriptedDestination(name, plan)

    async def main() -> Any:
        async with AsyncDispatcher(
            backend.queue,
            backend.idempotency,
            [dest],
            retry=policy,
            clock=FakeClock(),
            max_result_bytes=cap,
            concurrency=2,
        ) as dispatcher:
            submitted = await dispatcher.submit_many([Event(i, "t", {"n": i}) for i in plan])
            return submitted, await dispatcher.run_once(limit=50)

    submitted, report = asyncio.run(main())
    assert report.claimed == len(plan)
    check_outcomes(backend.queue, list(submitted), dest, plan, cap)


# -- the hooks ---------------------------------------------------------------------------------


class HookedDestination(ScriptedDestination):
    """Rejects with the script, and answers ``resolve_duplicate`` and
    ``fix_data`` with drawn behaviours."""

    def __init__(self, name: str, script: dict[str, Behaviour], link: Behaviour, fix: str) -> None:
        super().__init__(name, script)
        self.link = link
        self.fix = fix
        self.fixes = 0

    def resolve_duplicate(self, event: Event, error: Exception) -> Any:
        return self.link()

    def fix_data(self, event: Event, error: Exception) -> Any:
        self.fixes += 1
        payload = event.payload if isinstance(event.payload, dict) else {}
        if self.fix == "none":
            return None
        if self.fix == "corrected":
            return attrs.evolve(event, payload={**payload, "fixed": self.fixes})
        if self.fix == "unchanged":
            return event
        if self.fix == "other id":
            return attrs.evolve(event, id=event.id + "-other", payload={"fixed": True})
        if self.fix == "not an event":
            return {"payload": "corrected"}
        if self.fix == "nan payload":
            return attrs.evolve(event, payload={"x": float("nan")})
        raise DataFormatError(f"fix_data failed too: Bearer {STRIPE_KEY}")


@fuzz_settings(20)
@given(
    script=st.lists(behaviours(), min_size=1, max_size=3),
    link=behaviours(),
    fix=st.sampled_from(
        ["none", "corrected", "unchanged", "other id", "not an event", "nan payload", "raise"]
    ),
    cap=result_caps,
)
def test_whatever_the_hooks_answer_ends_as_an_outcome(
    backend: Backend, script: list[Behaviour], link: Behaviour, fix: str, cap: int
) -> None:
    name = backend.fresh()
    plan = {f"e{i}": b for i, b in enumerate(script)}
    dest = HookedDestination(name, plan, link, fix)
    dispatcher = Dispatcher(
        backend.queue,
        backend.idempotency,
        [dest],
        retry=RetryPolicy(max_attempts=2, jitter=False),
        clock=FakeClock(),
        max_result_bytes=cap,
    )
    try:
        submitted = dispatcher.submit_many([Event(i, "t", {"n": i}) for i in plan])
        report = dispatcher.run_once(limit=50)
    finally:
        dispatcher.close()
    assert report.claimed == len(plan)
    check_outcomes(backend.queue, list(submitted), dest, plan, cap, hooks=True)
    _ = timedelta


# -- found by fuzzing and fixed: regression tests ------------------------------------------------


def _run(
    script: dict[str, Behaviour], *, attempts: int = 3, runs: int = 1
) -> tuple[Any, ScriptedDestination]:
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore

    queue = MemoryQueueStore()
    clock = FakeClock()
    dest = ScriptedDestination("pos", script)
    dispatcher = Dispatcher(
        queue,
        MemoryIdempotencyStore(),
        [dest],
        retry=RetryPolicy(max_attempts=attempts, initial_delay=1, jitter=False, deadline=None),
        clock=clock,
    )
    dispatcher.submit_many([Event(i, "t", {}) for i in script])
    for _ in range(runs):
        dispatcher.run_once()
        clock.advance(3600)
    return queue, dest


def test_a_result_that_cannot_be_read_still_counts_as_delivered() -> None:
    queue, dest = _run({"e1": Behaviour("lazy", FailingMapping, raises=False)}, runs=3)
    (delivery,) = queue.list().items
    assert dest.calls["e1"] == 1  # seen: 3 calls, 3 effects
    assert delivery.status is DeliveryStatus.SUCCEEDED  # seen: NEEDS_ACTION (retries exhausted)


def test_details_that_cannot_be_read_keep_the_errors_category() -> None:
    def rejection() -> DataFormatError:
        exc = DataFormatError("phone is invalid", field="phone")
        exc.details = {"raw": FailingMapping()}
        return exc

    queue, _ = _run({"e1": Behaviour("reject", rejection, raises=True)})
    (delivery,) = queue.list().items
    assert delivery.status is DeliveryStatus.NEEDS_ACTION
    assert delivery.last_error.category.value == "data_format"  # seen: unexpected


@pytest.mark.parametrize(
    "message",
    [
        f"upstream said\x00{STRIPE_KEY}",
        f"upstream said\x1b{STRIPE_KEY}",
        "upstream said\u202eBearer abcdef0123456789TOKENxyz",
    ],
    ids=["nul", "esc", "rlo-bearer"],
)
def test_a_secret_after_a_control_character_is_redacted(message: str) -> None:
    queue, _ = _run({"e1": Behaviour("leak", lambda: ValueError(message), raises=True)})
    (delivery,) = queue.list().items
    stored = [delivery.last_error.message] + [r.reason or "" for r in queue.attempts(delivery.id)]
    assert all(leaked(text) is None for text in stored), stored


@pytest.mark.parametrize(
    "make",
    [
        lambda: KeyError(f"\n{STRIPE_KEY}"),
        lambda: SecretError(f"\n{STRIPE_KEY} ", {"status": 402}),
        lambda: UnprintableError(f"\n{STRIPE_KEY} "),
    ],
    ids=["KeyError", "two-arguments", "str-fails-repr-fallback"],
)
def test_a_secret_in_an_exception_shown_as_a_repr_is_redacted(make: Any) -> None:
    queue, _ = _run({"e1": Behaviour("leak", make, raises=True)})
    (delivery,) = queue.list().items
    assert leaked(delivery.last_error.message) is None, delivery.last_error.message


@pytest.mark.parametrize(
    "make",
    [lambda: DuplicateError("x" * 5000), lambda: ValueError("x" * 5000)],
    ids=["duplicate", "retries-exhausted"],
)
def test_messages_stay_within_the_cap_after_a_prefix(make: Any) -> None:
    queue, _ = _run({"e1": Behaviour("long", make, raises=True)}, attempts=1)
    (delivery,) = queue.list().items
    assert len(delivery.last_error.message) <= MAX_TEXT, len(delivery.last_error.message)


@pytest.mark.parametrize("message", ["", "   ", "\n"], ids=["empty", "spaces", "newline"])
def test_an_error_with_an_empty_message_still_has_a_reason(message: str) -> None:
    from resilient_sync import PermissionDeniedError

    queue, _ = _run({"e1": Behaviour("blank", lambda: PermissionDeniedError(message), raises=True)})
    (delivery,) = queue.list().items
    assert delivery.status is DeliveryStatus.NEEDS_ACTION
    assert delivery.last_error.message.strip()
    assert all((r.reason or "").strip() for r in queue.attempts(delivery.id))


@pytest.mark.parametrize("worker_id", ["w\x1b[2J", "w\x00", "w\u202e"], ids=["esc", "nul", "rlo"])
def test_a_worker_id_that_breaks_stores_or_terminals_is_refused(worker_id: str) -> None:
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore

    with pytest.raises(ValueError, match="worker"):
        Dispatcher(
            MemoryQueueStore(),
            MemoryIdempotencyStore(),
            [ScriptedDestination("pos", {})],
            worker_id=worker_id,
        )


def test_a_duplicate_whose_lookup_failed_stays_within_the_cap() -> None:
    from resilient_sync import SyncError
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore

    class Dest(ScriptedDestination):
        def resolve_duplicate(self, event: Event, error: Exception) -> Any:
            raise SyncError("y" * 5000)

    queue = MemoryQueueStore()
    dest = Dest("pos", {"e1": Behaviour("dup", lambda: DuplicateError("x" * 5000), raises=True)})
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [dest], clock=FakeClock())
    dispatcher.submit(Event("e1", "t", {}))
    dispatcher.run_once()
    (delivery,) = queue.list().items
    assert delivery.status is DeliveryStatus.NEEDS_ACTION
    assert len(delivery.last_error.message) <= MAX_TEXT, len(delivery.last_error.message)

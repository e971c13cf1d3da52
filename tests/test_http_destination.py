"""HttpDestination / AsyncHttpDestination with httpx.MockTransport: requests,
idempotency keys, hooks, rate limits, the circuit breaker and redaction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

import resilient_sync.http
from resilient_sync import (
    AsyncDispatcher,
    CircuitBreaker,
    DataFormatError,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    DispatchEvent,
    DuplicateError,
    ErrorCategory,
    Event,
    MappingError,
    Operator,
    RateLimitedError,
    RetryPolicy,
)
from resilient_sync.http import (
    AsyncHttpDestination,
    HttpDestination,
    HttpRequest,
    RateLimit,
    RateLimiter,
    response_of,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
BASE = "https://pos.example.com/api/v2"

Answer = httpx.Response | type[Exception] | Callable[[httpx.Request], httpx.Response]


class Api:
    """A MockTransport handler that answers from a script and records requests.

    Script items: a response, an httpx exception class (raised for the
    request) or a callable. When the script is empty it answers ``default``.
    """

    def __init__(self, *script: Answer, default: Answer | None = None) -> None:
        self.script = list(script)
        self.default = default or (lambda request: httpx.Response(201, json={"id": "cus_1"}))
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.script.pop(0) if self.script else self.default
        if isinstance(answer, httpx.Response):
            return answer
        if isinstance(answer, type) and issubclass(answer, httpx.HTTPError):
            raise answer("scripted failure", request=request)  # type: ignore[call-arg]
        return answer(request)  # type: ignore[operator,no-any-return]

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    @property
    def bodies(self) -> list[bytes]:
        return [r.content for r in self.requests]

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


def ctx(key: str = "key-1", attempt: int = 1) -> DeliveryContext:
    return DeliveryContext(
        delivery_id="d1", destination="pos", idempotency_key=key, attempt=attempt
    )


def event(n: int = 1, **payload: Any) -> Event:
    body = {"name": f"Customer {n}", "email": f"c{n}@example.com", **payload}
    return Event(f"e{n}", "customer.created", body)


def dispatcher(*dests: Any, clock: FakeClock, **kw: Any) -> tuple[Dispatcher, Operator]:
    queue = MemoryQueueStore()
    retry = kw.pop("retry", RetryPolicy(jitter=False, initial_delay=1, max_attempts=8))
    d = Dispatcher(queue, MemoryIdempotencyStore(), list(dests), retry=retry, clock=clock, **kw)
    return d, Operator(queue, clock)


def ok(body: Any = None, status: int = 201) -> httpx.Response:
    return httpx.Response(status, json=body if body is not None else {"id": "cus_1"})


# --- requests -------------------------------------------------------------------------


def test_public_names() -> None:
    assert set(resilient_sync.http.__all__) >= {
        "PRESETS",
        "HttpPollingSource",
        "LinkPagination",
        "Pagination",
        "Preset",
        "PresetPagination",
        "RecordEvents",
        "TokenPagination",
        "encode_form",
        "SHOULD_RETRY_HEADERS",
        "AsyncHttpDestination",
        "BodyClassifier",
        "HttpClassifier",
        "HttpDestination",
        "HttpOptions",
        "HttpRequest",
        "RateLimit",
        "RateLimiter",
        "field_from_body",
        "graphql_classifier",
        "response_of",
    }
    for name in resilient_sync.http.__all__:
        assert getattr(resilient_sync.http, name) is not None


def test_default_request_is_canonical_json_with_the_idempotency_key() -> None:
    api = Api(ok({"customer": {"id": "cus_7"}}))
    with HttpDestination("pos", BASE + "/", "/customers", transport=api.transport) as dest:
        result = dest.deliver(
            Event("e1", "customer.created", {"name": "Ada", "email": "a@x.io"}), ctx()
        )
    assert result == {"customer": {"id": "cus_7"}}
    (request,) = api.requests
    assert request.method == "POST"
    assert str(request.url) == "https://pos.example.com/api/v2/customers"
    assert request.content == b'{"email":"a@x.io","name":"Ada"}'
    assert request.headers["idempotency-key"] == "key-1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("resilient-sync/")


def test_idempotency_header_name_is_configurable() -> None:
    api = Api()
    with HttpDestination(
        "pos", BASE, "/customers", transport=api.transport, idempotency_header="X-Request-Key"
    ) as dest:
        dest.deliver(event(), ctx("k9"))
    assert api.requests[0].headers["x-request-key"] == "k9"
    assert "idempotency-key" not in api.requests[0].headers


def test_idempotency_key_in_the_body_square_style() -> None:
    api = Api()
    with HttpDestination(
        "square",
        "https://connect.squareup.example/v2",
        "/customers",
        transport=api.transport,
        idempotency_header=None,
        idempotency_key_field="idempotency_key",
        build_request=lambda e: HttpRequest(json={"given_name": e.payload["name"]}),
    ) as dest:
        dest.deliver(event(), ctx("k-sq"))
    assert api.bodies == [b'{"given_name":"Customer 1","idempotency_key":"k-sq"}']
    assert "idempotency-key" not in api.requests[0].headers


def test_the_key_must_reach_the_destination() -> None:
    with pytest.raises(ValueError, match="idempotency"):
        HttpDestination("pos", BASE, "/c", idempotency_header=None)


def test_path_template_fills_and_percent_encodes_event_values() -> None:
    api = Api(ok(status=200))
    with HttpDestination(
        "pos",
        BASE,
        "/customers/{payload[customer][id]}/notes/{id}",
        "PUT",
        transport=api.transport,
    ) as dest:
        dest.deliver(Event("n/1", "note.added", {"customer": {"id": "c 42"}, "text": "hi"}), ctx())
    request = api.requests[0]
    assert request.method == "PUT"
    assert request.url.raw_path == b"/api/v2/customers/c%2042/notes/n%2F1"


def test_path_template_missing_value_is_a_data_format_error_with_the_field() -> None:
    with (
        HttpDestination("pos", BASE, "/customers/{payload[customer][id]}", "PUT") as dest,
        pytest.raises(DataFormatError) as info,
    ):
        dest.deliver(Event("e1", "x", {"customer": {}}), ctx())
    assert info.value.field == "customer.id"


def test_path_template_field_names_use_list_indexes() -> None:
    with (
        HttpDestination("pos", BASE, "/skus/{payload[lines][0][sku]}", "GET") as dest,
        pytest.raises(DataFormatError) as info,
    ):
        dest.deliver(Event("e1", "x", {"lines": [{"qty": 1}]}), ctx())
    assert info.value.field == "lines[0].sku"


def test_a_query_in_base_url_stays_after_the_path() -> None:
    api = Api()
    with HttpDestination(
        "pos", "https://pos.example.com/api?shop=7", "/customers", transport=api.transport
    ) as dest:
        dest.deliver(event(), ctx())
    assert str(api.requests[0].url) == "https://pos.example.com/api/customers?shop=7"


def test_path_template_names_are_checked_up_front() -> None:
    with pytest.raises(ValueError, match=r"uses \{customer_id\}"):
        HttpDestination("pos", BASE, "/customers/{customer_id}")


def test_path_may_be_a_callable_and_get_requests_have_no_body() -> None:
    api = Api(ok({"customers": []}, 200))
    with HttpDestination(
        "pos",
        BASE,
        lambda e: f"/customers/{e.payload['remote_id']}",
        "GET",
        transport=api.transport,
        params={"fields": "id"},
    ) as dest:
        dest.deliver(event(remote_id="r1"), ctx())
    request = api.requests[0]
    assert request.content == b""
    assert str(request.url) == f"{BASE}/customers/r1?fields=id"


def test_build_request_hook_as_a_subclass_method() -> None:
    class Orders(HttpDestination):
        def build_request(self, event: Event) -> HttpRequest:
            return HttpRequest(
                method="PUT",
                path=f"/orders/{event.id}",
                json={"order": event.payload},
                params={"notify": "false"},
                headers={"X-Shop": "7"},
            )

    api = Api(ok(status=200))
    with Orders("pos", BASE, transport=api.transport) as dest:
        dest.deliver(Event("o1", "order.paid", {"total": 10}), ctx())
    request = api.requests[0]
    assert request.method == "PUT"
    assert str(request.url) == f"{BASE}/orders/o1?notify=false"
    assert request.content == b'{"order":{"total":10}}'
    assert request.headers["x-shop"] == "7"


def test_a_key_missing_in_build_request_is_a_data_format_error() -> None:
    with (
        HttpDestination(
            "pos",
            BASE,
            "/customers",
            build_request=lambda e: HttpRequest(json={"mail": e.payload["email"]}),
        ) as dest,
        pytest.raises(DataFormatError) as info,
    ):
        dest.deliver(Event("e1", "customer.created", {"name": "Ada"}), ctx())
    assert info.value.field == "email"
    assert isinstance(info.value.__cause__, KeyError)


def test_classify_body_as_a_subclass_method() -> None:
    class Graph(HttpDestination):
        def classify_body(self, response: httpx.Response, body: Any) -> ErrorCategory | None:
            return ErrorCategory.MAPPING if body and body.get("errors") else None

    api = Api(ok({"errors": [{"message": "unknown sku"}]}, 200), ok({"data": {}}, 200))
    with Graph("pos", BASE, "/graphql", transport=api.transport) as dest:
        with pytest.raises(MappingError):
            dest.deliver(event(), ctx())
        assert dest.deliver(event(), ctx()) == {"data": {}}


def test_read_result_hook_and_empty_bodies() -> None:
    api = Api(ok({"customer": {"id": "cus_3"}}), httpx.Response(204))
    with HttpDestination(
        "pos",
        BASE,
        "/customers",
        transport=api.transport,
        read_result=lambda r: r.json()["customer"]["id"] if r.content else None,
    ) as dest:
        assert dest.deliver(event(), ctx()) == "cus_3"
        assert dest.deliver(event(), ctx()) is None


def test_request_helper_for_hooks_translates_errors() -> None:
    api = Api(ok({"customers": [{"id": "cus_1"}]}, 200), httpx.Response(404, json={"errors": "x"}))
    with HttpDestination("pos", BASE, "/customers", transport=api.transport) as dest:
        found = dest.request("GET", "/customers", params={"email": "a@x.io"})
        assert found.json() == {"customers": [{"id": "cus_1"}]}
        with pytest.raises(MappingError):
            dest.request("GET", "/customers/404")
    assert str(api.requests[0].url) == f"{BASE}/customers?email=a%40x.io"


# --- retries through the dispatcher ------------------------------------------------------


def test_retries_send_byte_identical_requests_under_the_same_key() -> None:
    clock = FakeClock(START)
    api = Api(
        httpx.Response(503),
        httpx.ReadTimeout,
        httpx.RemoteProtocolError,
        ok({"id": "cus_5"}),
    )
    dest = HttpDestination("pos", BASE, "/customers", transport=api.transport, clock=clock)
    d, op = dispatcher(dest, clock=clock)
    payload = {"z": 1, "name": "Ada", "nested": {"b": 2, "a": [3, {"y": 1, "x": 0}]}}
    (delivery,) = d.submit(Event("e1", "customer.created", payload))
    for _ in range(5):
        d.run_until_idle()
        clock.advance(60)
    assert op.get(delivery.id).status is DeliveryStatus.SUCCEEDED
    assert op.get(delivery.id).result == {"id": "cus_5"}
    assert len(api.requests) == 4
    assert len(set(api.bodies)) == 1
    assert api.bodies[0] == b'{"name":"Ada","nested":{"a":[3,{"x":0,"y":1}],"b":2},"z":1}'
    assert set(api.keys) == {delivery.idempotency_key}
    dest.close()


def test_fix_data_sends_the_corrected_body_under_a_revised_key() -> None:
    clock = FakeClock(START)
    api = Api(httpx.Response(422, json={"errors": {"email": ["is invalid"]}}), ok())

    def fix(event: Event, error: Exception) -> Event | None:
        assert isinstance(error, DataFormatError)
        assert error.field == "email"
        return Event(event.id, event.type, {**event.payload, "email": "fixed@example.com"})

    dest = HttpDestination("pos", BASE, "/customers", transport=api.transport, fix_data=fix)
    d, op = dispatcher(dest, clock=clock)
    (delivery,) = d.submit(event(1, email="not-an-email"))
    d.run_until_idle()
    assert op.get(delivery.id).status is DeliveryStatus.SUCCEEDED
    assert api.keys[0] == delivery.idempotency_key
    assert api.keys[1] != api.keys[0]
    assert api.keys[1].startswith(delivery.idempotency_key + ":")
    assert b"fixed@example.com" in api.bodies[1]
    assert [a.action for a in op.attempts(delivery.id)] == ["deliver", "fix_data", "deliver"]
    dest.close()


def test_resolve_duplicate_as_a_callable_links_to_the_existing_record() -> None:
    clock = FakeClock(START)
    taken = httpx.Response(422, json={"errors": {"email": ["has already been taken"]}})
    api = Api(taken, ok({"customers": [{"id": "cus_9", "email": "c1@example.com"}]}, 200))
    seen: list[Exception] = []

    def link(event: Event, error: Exception) -> Any:
        seen.append(error)
        found = dest.request("GET", "/customers", params={"email": event.payload["email"]})
        customers = found.json()["customers"]
        return {"id": customers[0]["id"], "linked": True} if customers else None

    dest = HttpDestination(
        "pos", BASE, "/customers", transport=api.transport, resolve_duplicate=link
    )
    d, op = dispatcher(dest, clock=clock)
    (delivery,) = d.submit(event(1))
    d.run_until_idle()
    done = op.get(delivery.id)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.result == {"id": "cus_9", "linked": True}
    (error,) = seen
    assert isinstance(error, DuplicateError)
    assert error.field == "email"
    response = response_of(error)
    assert response is not None
    assert response.status_code == 422
    dest.close()


def test_resolve_duplicate_as_a_subclass_method() -> None:
    class PosCustomers(HttpDestination):
        def resolve_duplicate(self, event: Event, error: Exception) -> Any:
            found = self.request("GET", "/customers", params={"email": event.payload["email"]})
            return found.json()["customers"][0]["id"]

    clock = FakeClock(START)
    api = Api(
        httpx.Response(409, json={"error": "customer exists"}),
        ok({"customers": [{"id": "cus_2"}]}, 200),
    )
    dest = PosCustomers("pos", BASE, "/customers", transport=api.transport)
    d, op = dispatcher(dest, clock=clock)
    (delivery,) = d.submit(event(1))
    d.run_until_idle()
    assert op.get(delivery.id).result == "cus_2"
    dest.close()


def test_a_failed_lookup_in_resolve_duplicate_is_retried() -> None:
    clock = FakeClock(START)
    api = Api(
        httpx.Response(409, json={"error": "customer exists"}),
        httpx.Response(503, json={"error": "search is down"}),  # the lookup fails
        httpx.Response(409, json={"error": "customer exists"}),
        ok({"customers": [{"id": "cus_2"}]}, 200),
    )

    class PosCustomers(HttpDestination):
        def resolve_duplicate(self, event: Event, error: Exception) -> Any:
            found = self.request("GET", "/customers", params={"email": event.payload["email"]})
            return found.json()["customers"][0]["id"]

    dest = PosCustomers("pos", BASE, "/customers", transport=api.transport, clock=clock)
    d, op = dispatcher(dest, clock=clock)
    (delivery,) = d.submit(event(1))
    d.run_until_idle()
    waiting = op.get(delivery.id)
    assert waiting.status is DeliveryStatus.RETRY_SCHEDULED
    assert waiting.last_error is not None
    assert waiting.last_error.category is ErrorCategory.TRANSIENT
    clock.advance(60)
    d.run_until_idle()
    assert op.get(delivery.id).result == "cus_2"
    dest.close()


def test_without_hooks_a_duplicate_needs_action() -> None:
    clock = FakeClock(START)
    api = Api(httpx.Response(409, json={"error": "customer exists"}))
    dest = HttpDestination("pos", BASE, "/customers", transport=api.transport)
    assert dest.resolve_duplicate is None
    assert dest.fix_data is None
    d, op = dispatcher(dest, clock=clock)
    (delivery,) = d.submit(event(1))
    d.run_until_idle()
    stuck = op.get(delivery.id)
    assert stuck.status is DeliveryStatus.NEEDS_ACTION
    assert stuck.last_error is not None
    assert stuck.last_error.category is ErrorCategory.DUPLICATE
    assert stuck.last_error.message.startswith("potential duplicate: HTTP 409 Conflict")
    dest.close()


# --- clients ------------------------------------------------------------------------------


def test_the_destination_closes_only_the_client_it_created() -> None:
    api = Api()
    mine = httpx.Client(transport=api.transport, base_url=BASE, headers={"X-Api-Key": "k-secret-1"})
    dest = HttpDestination("pos", path="/customers", client=mine)
    dest.deliver(event(), ctx())
    dest.close()
    assert not mine.is_closed
    assert str(api.requests[0].url) == f"{BASE}/customers"
    assert api.requests[0].headers["x-api-key"] == "k-secret-1"
    mine.close()

    created = HttpDestination("pos", BASE, "/customers", transport=api.transport)
    created.close()
    assert created.client.is_closed


def test_transport_and_auth_belong_to_your_own_client() -> None:
    with httpx.Client() as mine, pytest.raises(ValueError, match="your own client"):
        HttpDestination("pos", BASE, "/c", client=mine, auth=("u", "p"))


def test_timeout_is_applied_per_request_on_a_users_client() -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return ok()

    with httpx.Client(transport=httpx.MockTransport(handler)) as mine:
        HttpDestination("pos", BASE, "/c", client=mine, timeout=2.5).deliver(event(), ctx())
    # each operation gets the timeout, shortened to what is left of the 2.5 s total
    assert 2.0 < seen[0]["read"] <= 2.5


# --- rate limiting ------------------------------------------------------------------------


def test_rate_limiter_burst_then_steady_rate() -> None:
    clock = FakeClock(START)
    limiter = RateLimiter(RateLimit(2.0, burst=3, max_wait=10))
    waits = [limiter.reserve(clock.now()) for _ in range(5)]
    assert waits == [0.0, 0.0, 0.0, 0.5, 1.0]
    clock.advance(10)
    assert limiter.reserve(clock.now()) == 0.0


def test_rate_limiter_hands_back_a_long_wait_without_booking() -> None:
    clock = FakeClock(START)
    limiter = RateLimiter(RateLimit(0.5, max_wait=1.0))
    assert limiter.reserve(clock.now()) == 0.0
    for _ in range(2):  # refused twice: nothing was booked by the first refusal
        with pytest.raises(RateLimitedError) as info:
            limiter.reserve(clock.now(), destination="pos")
        assert info.value.retry_after == pytest.approx(2.0)
        assert "handed back without sending" in str(info.value)
    clock.advance(1.5)
    assert limiter.reserve(clock.now()) == pytest.approx(0.5)


def test_rate_limiter_slows_down_after_a_429_and_recovers() -> None:
    clock = FakeClock(START)
    limiter = RateLimiter(RateLimit(10.0, burst=10))
    limiter.throttled(clock.now(), retry_after=20)
    assert limiter.current_rate == 5.0
    assert limiter.next_slot(clock.now()) == pytest.approx(20.0)
    with pytest.raises(RateLimitedError):
        limiter.reserve(clock.now())
    clock.advance(20)
    assert limiter.reserve(clock.now()) == 0.0
    assert limiter.reserve(clock.now()) == pytest.approx(0.2)  # no burst right after the pause
    for _ in range(20):
        limiter.succeeded()
    assert limiter.current_rate == 10.0
    for _ in range(10):
        limiter.throttled(clock.now(), None)
    assert limiter.current_rate == pytest.approx(10.0 / 16)


def test_without_a_rate_the_limiter_still_honours_a_429_pause() -> None:
    clock = FakeClock(START)
    limiter = RateLimiter()
    assert [limiter.reserve(clock.now()) for _ in range(100)] == [0.0] * 100
    limiter.throttled(clock.now(), retry_after=0.5)
    assert limiter.reserve(clock.now()) == pytest.approx(0.5)  # within max_wait: wait
    limiter.throttled(clock.now(), retry_after=30)
    with pytest.raises(RateLimitedError):
        limiter.reserve(clock.now())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": 1, "burst": 0},
        {"rate": 1, "max_wait": -1},
        {"rate": 1, "slow_down": 0},
    ],
)
def test_rate_limit_settings_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RateLimit"):
        RateLimit(**kwargs)


def test_destination_waits_for_its_rate_limit_on_its_clock() -> None:
    clock = FakeClock(START)
    sent_at: list[datetime] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(clock.now())
        return ok()

    with HttpDestination(
        "pos",
        BASE,
        "/customers",
        transport=httpx.MockTransport(handler),
        clock=clock,
        rate_limit=RateLimit(2.0),
    ) as dest:
        for n in range(3):
            dest.deliver(event(n), ctx(f"k{n}"))
    assert [(t - START).total_seconds() for t in sent_at] == [0.0, 0.5, 1.0]


def test_a_long_wait_hands_the_delivery_back_and_holds_the_destination() -> None:
    clock = FakeClock(START)
    api = Api()
    dest = HttpDestination(
        "pos",
        BASE,
        "/customers",
        transport=api.transport,
        clock=clock,
        rate_limit=RateLimit(0.1, max_wait=1.0),  # one request per 10 s
    )
    d, op = dispatcher(dest, clock=clock)
    first, second = (d.submit(event(n))[0] for n in (1, 2))
    d.run_until_idle()
    assert len(api.requests) == 1
    assert op.get(first.id).status is DeliveryStatus.SUCCEEDED
    waiting = op.get(second.id)
    assert waiting.status is DeliveryStatus.RETRY_SCHEDULED
    assert waiting.last_error is not None
    assert waiting.last_error.category is ErrorCategory.RATE_LIMITED
    state = op.destinations()["pos"]
    assert state.hold_until == START + timedelta(seconds=10)
    assert state.hold_reason is not None
    assert "client-side rate limit" in state.hold_reason
    clock.advance(10)
    d.run_until_idle()
    assert op.get(second.id).status is DeliveryStatus.SUCCEEDED
    assert len(api.requests) == 2
    dest.close()


def test_a_429_holds_and_slows_the_whole_destination() -> None:
    clock = FakeClock(START)
    api = Api(httpx.Response(429, headers={"Retry-After": "30"}, json={"errors": "slow down"}))
    dest = HttpDestination(
        "pos", BASE, "/customers", transport=api.transport, clock=clock, rate_limit=RateLimit(10.0)
    )
    d, op = dispatcher(dest, clock=clock)
    ids = [d.submit(event(n))[0].id for n in range(3)]
    report = d.run_until_idle()
    assert len(api.requests) == 1  # the other two were handed back, unsent
    assert report.retry_scheduled == 1
    assert report.released == 2
    state = op.destinations()["pos"]
    assert state.hold_until == START + timedelta(seconds=30)
    assert state.hold_reason is not None
    assert state.hold_reason.startswith("rate limited: HTTP 429")
    assert op.stats().destinations["pos"].hold_until == state.hold_until
    assert dest.limiter.current_rate == 5.0
    # the limiter itself also keeps the destination quiet until then
    with pytest.raises(RateLimitedError):
        dest.deliver(event(9), ctx("k9"))
    clock.advance(30)
    d.run_until_idle()
    clock.advance(5)
    d.run_until_idle()
    assert {op.get(i).status for i in ids} == {DeliveryStatus.SUCCEEDED}
    assert len(api.requests) == 4
    dest.close()


# --- the circuit breaker ------------------------------------------------------------------------


def test_circuit_opens_after_repeated_transient_failures_and_probes_once() -> None:
    clock = FakeClock(START)
    api = Api(default=lambda request: httpx.Response(503, json={"error": "down"}))
    dest = HttpDestination(
        "pos",
        BASE,
        "/customers",
        transport=api.transport,
        clock=clock,
        circuit_breaker=CircuitBreaker(threshold=3, cool_off=60),
    )
    kinds: list[DispatchEvent] = []
    d, op = dispatcher(dest, clock=clock, on_event=kinds.append)
    ids = [d.submit(event(n))[0].id for n in range(4)]
    d.run_until_idle()
    assert len(api.requests) == 3  # the third failure opened the circuit; the fourth waits
    state = op.destinations()["pos"]
    assert state.hold_until == START + timedelta(seconds=60)
    assert state.hold_reason is not None
    assert "circuit open after 3 consecutive transient failures" in state.hold_reason
    assert "HTTP 503" in state.hold_reason
    assert op.stats().destinations["pos"].hold_reason == state.hold_reason
    assert any(e.kind == "circuit_open" for e in kinds)

    clock.advance(30)  # retries are due, but the circuit holds the destination
    d.run_until_idle()
    assert len(api.requests) == 3

    clock.advance(31)  # cool-off over: exactly one probe, which fails
    d.run_until_idle()
    assert len(api.requests) == 4
    assert op.destinations()["pos"].hold_until == clock.now() + timedelta(seconds=60)

    api.default = lambda request: ok()  # the API is back
    clock.advance(61)
    d.run_until_idle()
    clock.advance(600)
    d.run_until_idle()
    assert {op.get(i).status for i in ids} == {DeliveryStatus.SUCCEEDED}
    dest.close()


def test_circuit_breaker_none_leaves_it_to_the_dispatcher() -> None:
    clock = FakeClock(START)
    api = Api(default=lambda request: httpx.Response(503))
    dest = HttpDestination("pos", BASE, "/c", transport=api.transport, circuit_breaker=None)
    d, op = dispatcher(dest, clock=clock)
    for n in range(6):
        d.submit(event(n))
    d.run_until_idle()
    assert len(api.requests) == 6
    assert "pos" not in op.destinations()
    dest.close()


# --- secrets ------------------------------------------------------------------------------


TOKEN = "sk_live_51HsEcReTtOkEn9876"
API_KEY = "apikey-SeCrEt-4242"
QUERY_KEY = "qs-SeCrEt-8888"


def _leaky(kind: str) -> Callable[[httpx.Request], httpx.Response]:
    """Failures whose messages echo the request's credentials back."""

    def handler(request: httpx.Request) -> httpx.Response:
        headers = request.headers
        echo = f"got {headers['authorization']} key={headers['x-api-key']} {request.url}"
        if kind == "connect":
            raise httpx.ConnectError(f"cannot reach {request.url} ({echo})", request=request)
        if kind == "timeout":
            raise httpx.ReadTimeout(f"timed out on {request.url} {echo}", request=request)
        if kind == "401":
            return httpx.Response(401, json={"error": f"invalid token {TOKEN}"})
        if kind == "422":
            return httpx.Response(422, json={"errors": {"email": [echo]}})
        if kind == "429":
            return httpx.Response(429, text=echo, headers={"Retry-After": "1"})
        return httpx.Response(500, text=f"<pre>Traceback: {echo}</pre>")

    return handler


def test_secrets_never_reach_attempts_errors_logs_or_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock(START)
    kinds = ["connect", "timeout", "401", "422", "429", "500"]
    dests = [
        HttpDestination(
            f"pos-{kind}",
            BASE,
            "/customers",
            transport=httpx.MockTransport(_leaky(kind)),
            headers={"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY},
            params={"api_key": QUERY_KEY},
            clock=clock,
        )
        for kind in kinds
    ]
    events: list[DispatchEvent] = []
    d, op = dispatcher(
        *dests, clock=clock, on_event=events.append, retry=RetryPolicy(max_attempts=2, jitter=False)
    )
    d.submit(event(1))
    for _ in range(3):
        d.run_until_idle()
        clock.advance(120)

    texts: list[str] = [repr(dest) for dest in dests]
    for delivery in op.list(limit=100):
        assert delivery.status is not DeliveryStatus.SUCCEEDED
        texts.append(repr(delivery.last_error))
        texts.extend(repr(a) for a in op.attempts(delivery.id))
    texts.extend(repr(a) for a in op.recent_errors(limit=100))
    texts.extend(repr(s) for s in op.destinations().values())
    texts.extend(repr(e) for e in events)
    texts.extend(r.getMessage() for r in caplog.records)
    assert any("HTTP Request: POST" in r.getMessage() for r in caplog.records)  # httpx logged
    assert len(texts) > 40
    for text in texts:
        for secret in (TOKEN, API_KEY, QUERY_KEY):
            assert secret not in text, text
    for dest in dests:
        dest.close()


# --- asyncio -------------------------------------------------------------------------------


def test_the_sync_dispatcher_refuses_the_async_twin() -> None:
    dest = AsyncHttpDestination("pos", BASE, "/c", transport=httpx.MockTransport(Api()))
    with pytest.raises(TypeError, match="async deliver"):
        Dispatcher(MemoryQueueStore(), MemoryIdempotencyStore(), [dest])
    asyncio.run(dest.aclose())


def test_async_twin_with_the_async_dispatcher() -> None:
    clock = FakeClock(START)
    api = Api(
        httpx.Response(503),
        httpx.ConnectError,
        httpx.Response(422, json={"errors": {"email": ["has already been taken"]}}),
        ok({"customers": [{"id": "cus_4"}]}, 200),
        default=lambda request: ok({"id": "cus_new"}),
    )

    class PosCustomers(AsyncHttpDestination):
        async def resolve_duplicate(self, event: Event, error: Exception) -> Any:
            found = await self.request(
                "GET", "/customers", params={"email": event.payload["email"]}
            )
            return found.json()["customers"][0]["id"]

    async def main() -> None:
        async with PosCustomers(
            "pos", BASE, "/customers", transport=api.transport, clock=clock
        ) as dest:
            queue = MemoryQueueStore()
            d = AsyncDispatcher(
                queue,
                MemoryIdempotencyStore(),
                [dest],
                retry=RetryPolicy(jitter=False),
                clock=clock,
                concurrency=4,
            )
            op = Operator(queue, clock)
            (first,) = await d.submit(event(1))
            for _ in range(4):
                await d.run_until_idle()
                clock.advance(60)
            assert op.get(first.id).result == "cus_4"
            (second,) = await d.submit(event(2))
            await d.run_until_idle()
            assert op.get(second.id).result == {"id": "cus_new"}
        assert dest.client.is_closed

    asyncio.run(main())
    creates = [r for r in api.requests if r.method == "POST"]
    assert len({r.content for r in creates[:3]}) == 1
    assert len({r.headers["idempotency-key"] for r in creates[:3]}) == 1


def test_async_dispatcher_also_takes_the_sync_destination() -> None:
    clock = FakeClock(START)
    api = Api(httpx.Response(500), ok({"id": "cus_8"}))

    async def main() -> Any:
        with HttpDestination("pos", BASE, "/customers", transport=api.transport) as dest:
            queue = MemoryQueueStore()
            d = AsyncDispatcher(
                queue,
                MemoryIdempotencyStore(),
                [dest],
                retry=RetryPolicy(jitter=False),
                clock=clock,
            )
            (delivery,) = await d.submit(event(1))
            await d.run_until_idle()
            clock.advance(60)
            await d.run_until_idle()
            return Operator(queue, clock).get(delivery.id).result

    assert asyncio.run(main()) == {"id": "cus_8"}


def test_async_rate_limit_waits_on_the_clock() -> None:
    clock = FakeClock(START)
    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append((clock.now() - START).total_seconds())
        return ok()

    async def main() -> None:
        async with AsyncHttpDestination(
            "pos",
            BASE,
            "/c",
            transport=httpx.MockTransport(handler),
            clock=clock,
            rate_limit=RateLimit(4.0, burst=2),
        ) as dest:
            for n in range(4):
                await dest.deliver(event(n), ctx(f"k{n}"))

    asyncio.run(main())
    assert sent_at == [0.0, 0.0, 0.25, 0.5]


def test_httpx_log_lines_of_signed_urls_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    signature = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    url = (
        "https://bucket.s3.amazonaws.com/exports/customers.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101%2Feu-west-1%2Fs3%2Faws4_request"
        f"&X-Amz-Signature={signature}&sig=c2lnbmF0dXJlLXZhbHVl&key=AIzaSyA-plain-api-key-value"
    )
    dest = HttpDestination("files", BASE, transport=Api(ok()).transport, clock=FakeClock(START))
    with caplog.at_level(logging.INFO, logger="httpx"):
        dest.request("GET", url)
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines
    assert lines[0].startswith("HTTP Request: GET https://bucket.s3.amazonaws.com/exports/")
    text = "\n".join(lines)
    hidden = (signature, "c2lnbmF0dXJlLXZhbHVl", "AIzaSyA-plain-api-key-value", "AKIAIOSFODNN7")
    for secret in hidden:
        assert secret not in text
    assert "X-Amz-Signature=[REDACTED]" in text
    assert "sig=[REDACTED]" in text
    dest.close()


def test_request_keeps_the_query_of_a_next_page_link_beside_its_own_params() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={})

    with HttpDestination(
        "pos", BASE, params={"api_key": "k-1234"}, transport=httpx.MockTransport(handler)
    ) as dest:
        dest.request("GET", "/customers?page=2&limit=50", params={"fields": "id"})
    assert seen == [f"{BASE}/customers?page=2&limit=50&api_key=k-1234&fields=id"]


def test_declared_secrets_are_redacted_also_percent_encoded_or_json_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """httpx logs a query value percent-encoded, and APIs echo it so (or
    JSON-escape a ``/`` as ``\\/``): a declared secret is hidden in every spelling,
    in httpx's and httpcore's log lines and in what is stored."""
    key = "Zm9vYmFy+c2VjcmV0/a2V5=="
    encoded = "Zm9vYmFy%2Bc2VjcmV0%2Fa2V5%3D%3D"
    echoed = {"error": f"unknown app_key {encoded}", "json": "Zm9vYmFy+c2VjcmV0\\/a2V5=="}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=echoed)

    dest = HttpDestination(
        "pos",
        BASE,
        "/customers",
        params={"app_key": key},
        secrets=[key],
        transport=httpx.MockTransport(handler),
        clock=FakeClock(START),
    )
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(MappingError) as info:
            dest.deliver(event(), ctx())
        logging.getLogger("httpcore.http11").debug("receive_response_headers %s", encoded)
    stored = f"{info.value} {info.value.details}"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in (stored, logged):
        assert key not in text
        assert encoded not in text
        assert "Zm9vYmFy+c2VjcmV0\\/a2V5==" not in text
    dest.close()

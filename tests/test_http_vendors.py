"""Vendor presets, form bodies, the field map, find_existing and the clock
handed over by the dispatcher, with httpx.MockTransport."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from resilient_sync import (
    DataFormatError,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    DuplicateError,
    ErrorCategory,
    Event,
    MappingError,
    Operator,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
    SyncError,
)
from resilient_sync.http import (
    PRESETS,
    AsyncHttpDestination,
    HttpDestination,
    HttpRequest,
    Preset,
    PresetPagination,
    RateLimit,
    Verdict,
    encode_form,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
CONTEXT = DeliveryContext(delivery_id="d1", destination="api", idempotency_key="key-1", attempt=1)
Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler: answers from a list (then 201s), records requests."""

    def __init__(self, *answers: httpx.Response, default: Handler | None = None) -> None:
        self.answers = list(answers)
        self.default = default
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if self.answers:
            return self.answers.pop(0)
        if self.default is not None:
            return self.default(request)
        return httpx.Response(201, json={"id": f"obj_{len(self.requests)}"})

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def failure(dest: HttpDestination, event: Event | None = None) -> SyncError:
    with pytest.raises(SyncError) as info:
        dest.deliver(event or Event("e1", "customer.created", {"email": "a@example.com"}), CONTEXT)
    return info.value


def dest_for(handler: Handler, **options: Any) -> HttpDestination:
    return HttpDestination(
        "api",
        "https://api.example.com/v1",
        "/customers",
        transport=httpx.MockTransport(handler),
        clock=FakeClock(START),
        **options,
    )


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers)


# --- form bodies ---------------------------------------------------------------------------


def test_form_encoding_matches_stripes_bracket_nesting() -> None:
    body = encode_form(
        {
            "email": "ada@example.com",
            "metadata": {"shop_id": 7, "vip": True, "blocked": False, "note": None},
            "tax_id_data": [{"type": "eu_vat", "value": "DE123456789"}],
            "preferred_locales": ["de", "en"],
            "name": "Ada & Co",
        }
    )
    assert parse_qsl(body.decode(), keep_blank_values=True) == [
        ("email", "ada@example.com"),
        ("metadata[blocked]", "false"),
        ("metadata[shop_id]", "7"),
        ("metadata[vip]", "true"),
        ("name", "Ada & Co"),
        ("preferred_locales[0]", "de"),
        ("preferred_locales[1]", "en"),
        ("tax_id_data[0][type]", "eu_vat"),
        ("tax_id_data[0][value]", "DE123456789"),
    ]
    # keys sorted at every level: the same data in another order gives the same bytes
    assert encode_form({"b": 1, "a": {"y": 2, "x": 1}}) == encode_form(
        {"a": {"x": 1, "y": 2}, "b": 1}
    )


def test_form_bodies_are_byte_identical_across_retries() -> None:
    api = Recorder(httpx.Response(503), httpx.Response(503))
    dest = HttpDestination(
        "api",
        "https://api.example.com",
        "/customers",
        transport=api.transport,
        build_request=lambda e: HttpRequest(form=e.payload),
    )
    clock = FakeClock(START)
    queue = MemoryQueueStore()
    dispatcher = Dispatcher(
        queue, MemoryIdempotencyStore(), [dest], retry=RetryPolicy(jitter=False), clock=clock
    )
    dispatcher.submit(Event("e1", "customer.created", {"name": "Ada", "meta": {"b": 2, "a": 1}}))
    for _ in range(3):
        dispatcher.run_until_idle()
        clock.advance(60)
    assert len(api.requests) == 3
    assert {r.content for r in api.requests} == {b"meta%5Ba%5D=1&meta%5Bb%5D=2&name=Ada"}
    assert {r.headers["content-type"] for r in api.requests} == {
        "application/x-www-form-urlencoded"
    }
    assert len({r.headers["idempotency-key"] for r in api.requests}) == 1


def test_a_request_takes_one_body_and_the_key_may_go_into_a_form() -> None:
    with pytest.raises(ValueError, match="one body"):
        HttpRequest(json={"a": 1}, form={"a": 1})
    api = Recorder()
    dest = dest_for(api, encoding="form", idempotency_key_field="idempotency_key")
    dest.deliver(Event("e1", "t", {"a": 1}), CONTEXT)
    assert api.requests[0].content == b"a=1&idempotency_key=key-1"


def test_the_request_helper_sends_forms() -> None:
    api = Recorder(httpx.Response(200, json={"data": []}))
    dest = dest_for(api)
    dest.request("POST", "/customers/search", form={"query": "email:'a@example.com'"})
    assert api.requests[0].content == b"query=email%3A%27a%40example.com%27"


# --- presets ------------------------------------------------------------------------------


def test_the_stripe_preset_sets_form_bodies_the_header_and_its_override_header() -> None:
    api = Recorder()
    dest = dest_for(api, preset="stripe")
    dest.deliver(Event("e1", "t", {"email": "a@example.com", "x": {"y": 1}}), CONTEXT)
    request = api.requests[0]
    assert request.content == b"email=a%40example.com&x%5By%5D=1"
    assert request.headers["idempotency-key"] == "key-1"
    assert dest.preset is PRESETS["stripe"]
    assert dest.classifier.should_retry_headers == ("Stripe-Should-Retry",)


def test_stripe_key_in_use_is_transient_with_a_short_delay() -> None:
    body = {
        "error": {
            "type": "idempotency_error",
            "code": "idempotency_key_in_use",
            "message": "There is currently another request using this key.",
        }
    }
    error = failure(dest_for(answer(409, body), preset="stripe", in_flight_delay=0.25))
    assert type(error) is RetryableError
    assert error.retry_after == 0.25


def test_stripe_key_reuse_is_unexpected() -> None:
    body = {
        "error": {
            "type": "idempotency_error",
            "message": "Keys for idempotent requests can only be used with the same "
            "parameters they were first used with.",
        }
    }
    error = failure(dest_for(answer(400, body), preset="stripe"))
    assert type(error) is SyncError
    assert "never fixed under the same key" in str(error)


def test_stripe_402_is_this_delivery_only_with_param_as_field() -> None:
    body = {"error": {"type": "card_error", "code": "card_declined", "param": "source"}}
    error = failure(dest_for(answer(402, body), preset="stripe"))
    assert type(error) is DataFormatError
    assert (error.field, error.remote_field) == ("source", "source")
    missing = {"error": {"type": "invalid_request_error", "code": "resource_missing",
                         "param": "customer"}}  # fmt: skip
    assert type(failure(dest_for(answer(400, missing), preset="stripe"))) is MappingError


def test_stripe_cached_500_with_should_retry_false_is_unexpected() -> None:
    body = {"error": {"type": "api_error", "message": "An unknown error occurred"}}
    dest = dest_for(answer(500, body, {"Stripe-Should-Retry": "false"}), preset="stripe")
    error = failure(dest)
    assert type(error) is SyncError
    assert not isinstance(error, DataFormatError)


def test_shopify_taken_is_a_duplicate_with_the_field_and_429_waits_its_retry_after() -> None:
    body = {"errors": {"email": ["has already been taken"]}}
    error = failure(dest_for(answer(422, body), preset="shopify"))
    assert type(error) is DuplicateError
    assert error.field == "email"
    error = failure(dest_for(answer(422, {"errors": {"phone": ["is invalid"]}}), preset="shopify"))
    assert type(error) is DataFormatError
    assert error.field == "phone"
    error = failure(dest_for(answer(429, None, {"Retry-After": "2.0"}), preset="shopify"))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 2.0
    error = failure(dest_for(answer(429, None), preset="shopify"))
    assert error.retry_after == 2.0  # the preset's default when Retry-After is missing
    assert PRESETS["shopify"].honours_idempotency_key is False
    assert "find_existing" in PRESETS["shopify"].notes


@pytest.mark.parametrize(
    ("status", "first", "expected", "field"),
    [
        (400, {"category": "INVALID_REQUEST_ERROR", "code": "IDEMPOTENCY_KEY_REUSED"}, SyncError,
         None),
        (404, {"category": "INVALID_REQUEST_ERROR", "code": "NOT_FOUND", "field": "customer_id"},
         MappingError, "customer_id"),
        (400, {"category": "INVALID_REQUEST_ERROR", "code": "INVALID_EMAIL_ADDRESS",
               "field": "email_address"}, DataFormatError, "email_address"),
        (402, {"category": "PAYMENT_METHOD_ERROR", "code": "CARD_DECLINED"}, DataFormatError,
         None),
        (401, {"category": "AUTHENTICATION_ERROR", "code": "UNAUTHORIZED"}, PermissionDeniedError,
         None),
        (429, {"category": "RATE_LIMIT_ERROR", "code": "RATE_LIMITED"}, RateLimitedError, None),
        (500, {"category": "API_ERROR", "code": "INTERNAL_SERVER_ERROR"}, RetryableError, None),
    ],
)  # fmt: skip
def test_square_error_lists(
    status: int, first: dict[str, str], expected: type[SyncError], field: str | None
) -> None:
    error = failure(dest_for(answer(status, {"errors": [first]}), preset="square"))
    assert type(error) is expected
    assert error.field == field


def test_the_square_preset_puts_the_key_in_the_json_body_only() -> None:
    api = Recorder()
    dest_for(api, preset="square").deliver(Event("e1", "t", {"given_name": "Ada"}), CONTEXT)
    request = api.requests[0]
    assert request.content == b'{"given_name":"Ada","idempotency_key":"key-1"}'
    assert "idempotency-key" not in request.headers


def test_explicit_options_override_the_presets() -> None:
    api = Recorder()
    dest = dest_for(api, preset="stripe", encoding="json", idempotency_header="X-Key")
    dest.deliver(Event("e1", "t", {"a": 1}), CONTEXT)
    assert api.requests[0].content == b'{"a":1}'
    assert api.requests[0].headers["x-key"] == "key-1"
    # your classify_body comes before the preset's rules
    body = {"error": {"type": "card_error", "code": "card_declined"}}
    dest = dest_for(
        answer(402, body), preset="stripe", classify_body=lambda r, b: ErrorCategory.PERMISSION
    )
    assert type(failure(dest)) is PermissionDeniedError


def test_a_preset_object_of_your_own() -> None:
    mine = Preset(
        name="pos",
        idempotency_header="X-Request-Key",
        retry_after_default=5.0,
        pagination=PresetPagination(style="cursor", items="items", cursor_param="after",
                              next_cursor="next"),
    )  # fmt: skip
    api = Recorder(httpx.Response(429))
    dest = dest_for(api, preset=mine)
    assert failure(dest).retry_after == 5.0
    assert api.requests[0].headers["x-request-key"] == "key-1"
    page = httpx.Response(200, json={"items": [1], "next": "c-2"})
    assert dest.preset is not None
    assert dest.preset.pagination is not None
    assert dest.preset.pagination.next_params(page) == {"after": "c-2"}
    with pytest.raises(ValueError, match="preset must be one of"):
        dest_for(api, preset="paypal")
    with pytest.raises(TypeError, match="unknown options: presett"):
        dest_for(api, presett="stripe")


def test_pagination_hints_of_each_preset() -> None:
    stripe = PRESETS["stripe"].pagination
    shopify = PRESETS["shopify"].pagination
    square = PRESETS["square"].pagination
    assert stripe is not None
    assert shopify is not None
    assert square is not None
    more = httpx.Response(200, json={"data": [{"id": "cus_1"}, {"id": "cus_9"}], "has_more": True})
    last = httpx.Response(200, json={"data": [{"id": "cus_10"}], "has_more": False})
    assert stripe.next_params(more) == {"starting_after": "cus_9"}
    assert stripe.next_params(last) is None
    link = (
        "<https://shop.myshopify.com/admin/api/2024-01/customers.json?limit=50&page_info=p2>; "
        'rel="next", <https://shop.myshopify.com/admin/api/2024-01/customers.json?page_info=p0>; '
        'rel="previous"'
    )
    assert shopify.next_params(httpx.Response(200, headers={"Link": link})) == {"page_info": "p2"}
    assert shopify.next_params(httpx.Response(200)) is None
    assert square.next_params(httpx.Response(200, json={"customers": [], "cursor": "c2"})) == {
        "cursor": "c2"
    }
    assert square.next_params(httpx.Response(200, json={"customers": []})) is None


# --- the field map ---------------------------------------------------------------------------


def test_field_map_gives_the_payload_path_and_keeps_the_apis_name() -> None:
    body = {"error": {"type": "invalid_request_error", "param": "tax_id_data[0][value]",
                      "message": "Invalid value for eu_vat."}}  # fmt: skip
    dest = dest_for(answer(400, body), preset="stripe",
                    field_map={"tax_id_data[0].value": "vat_number"})  # fmt: skip
    error = failure(dest)
    assert (error.field, error.remote_field) == ("vat_number", "tax_id_data[0].value")
    assert "payload field 'vat_number', the API's 'tax_id_data[0].value'" in str(error)
    # unmapped: the API's name in both
    error = failure(dest_for(answer(400, {"error": {"param": "email"}}), field_map={"x": "y"}))
    assert (error.field, error.remote_field) == ("email", "email")


def test_field_map_may_be_a_callable() -> None:
    def to_payload(remote: str) -> str | None:
        return remote.removeprefix("customer.") if remote.startswith("customer.") else None

    body = {"errors": [{"field": "customer.phone_number", "code": "INVALID_PHONE_NUMBER"}]}
    error = failure(dest_for(answer(400, body), field_map=to_payload))
    assert (error.field, error.remote_field) == ("phone_number", "customer.phone_number")


def test_a_mapped_field_reaches_the_delivery_and_fix_data() -> None:
    seen: list[tuple[str | None, str | None]] = []

    def fix(event: Event, error: Exception) -> Event | None:
        assert isinstance(error, SyncError)
        seen.append((error.field, error.remote_field))
        return None

    body = {"errors": {"vat": ["is invalid"]}}
    dest = dest_for(answer(422, body), field_map={"vat": "billing.vat_number"}, fix_data=fix)
    queue = MemoryQueueStore()
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [dest], clock=FakeClock(START))
    (delivery,) = dispatcher.submit(Event("e1", "t", {"billing": {"vat_number": "x"}}))
    dispatcher.run_until_idle()
    error = queue.get(delivery.id).last_error  # type: ignore[union-attr]
    assert error is not None
    assert (error.field, error.remote_field) == ("billing.vat_number", "vat")
    assert seen == [("billing.vat_number", "vat")]


# --- find_existing ------------------------------------------------------------------------------


def customers_api(existing: dict[str, str]) -> Recorder:
    """GET /customers?email= finds, POST /customers creates."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            found = existing.get(request.url.params["email"])
            return httpx.Response(200, json={"data": [{"id": found}] if found else []})
        email = dict(parse_qsl(request.content.decode()))["email"]
        existing[email] = f"cus_{len(existing) + 1}"
        return httpx.Response(200, json={"id": existing[email]})

    return Recorder(default=handler)


def test_find_existing_links_instead_of_creating_a_second_record() -> None:
    existing = {"ada@example.com": "cus_1"}
    api = customers_api(existing)
    calls: list[DeliveryContext] = []

    def find(event: Event, context: DeliveryContext) -> Any:
        calls.append(context)
        found = dest.request(
            "GET", "/customers", params={"email": event.payload["email"]}, context=context
        )
        data = found.json()["data"]
        return {"id": data[0]["id"], "linked": True} if data else None

    dest = dest_for(api, preset="stripe", find_existing=find)
    queue = MemoryQueueStore()
    clock = FakeClock(START)
    dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [dest], clock=clock)
    dispatcher.submit_many(
        [
            Event("shop-1", "customer.created", {"email": "ada@example.com"}),
            Event("shop-2", "customer.created", {"email": "grace@example.com"}),
        ]
    )
    dispatcher.run_until_idle()
    results = {d.event.id: d.result for d in Operator(queue).list().items}
    assert results == {"shop-1": {"id": "cus_1", "linked": True}, "shop-2": {"id": "cus_2"}}
    assert existing == {"ada@example.com": "cus_1", "grace@example.com": "cus_2"}
    assert [r.method for r in api.requests] == ["GET", "GET", "POST"]
    assert all(c.lease_expires_at is not None for c in calls)


def test_find_existing_is_absent_unless_given() -> None:
    dest = dest_for(Recorder())
    assert dest.find_existing is None

    class Mine(HttpDestination):
        def find_existing(self, event: Event, context: DeliveryContext) -> Any:
            return None

    assert callable(Mine("m", "https://x.example").find_existing)
    with pytest.raises(TypeError, match="find_existing must be callable"):
        dest_for(Recorder(), find_existing="nope")


# --- the dispatcher's clock --------------------------------------------------------------------


def test_destinations_adopt_the_dispatchers_clock_unless_given_one() -> None:
    clock = FakeClock(START)
    plain = HttpDestination("a", "https://a.example", transport=httpx.MockTransport(Recorder()))
    own = FakeClock(START)
    mine = HttpDestination("b", "https://b.example", clock=own,
                           transport=httpx.MockTransport(Recorder()))  # fmt: skip
    asynchronous = AsyncHttpDestination("c", "https://c.example")
    Dispatcher(MemoryQueueStore(), MemoryIdempotencyStore(), [plain, mine], clock=clock)
    assert plain.clock is clock
    assert mine.clock is own
    asynchronous.use_clock(clock)
    assert asynchronous.clock is clock


def test_one_429_does_not_make_the_limiter_refuse_every_later_request() -> None:
    # The finding: the destination kept the system clock while the dispatcher ran
    # on a FakeClock, so after one 429 the limiter refused every later request
    # (the fake time never reached the real Retry-After), each refusal spent an
    # attempt, and deliveries ended "retries exhausted" without ever being sent.
    clock = FakeClock(START)
    api = Recorder(httpx.Response(429, headers={"Retry-After": "30"}))
    dest = HttpDestination("api", "https://api.example.com", "/c", transport=api.transport,
                           rate_limit=RateLimit(10.0, burst=5))  # fmt: skip
    queue = MemoryQueueStore()
    dispatcher = Dispatcher(
        queue, MemoryIdempotencyStore(), [dest], clock=clock,
        retry=RetryPolicy(jitter=False, max_attempts=3),
    )  # fmt: skip
    dispatcher.submit_many(Event(f"e{n}", "t", {"n": n}) for n in range(5))
    dispatcher.run_until_idle()
    assert len(api.requests) == 1  # the 429; the destination is held, nothing else sent
    for _ in range(10):
        clock.advance(31)
        dispatcher.run_until_idle()
    deliveries = Operator(queue).list().items
    assert {d.status for d in deliveries} == {DeliveryStatus.SUCCEEDED}
    assert len(api.requests) == 6  # the 429, its retry, and the four others
    assert max(d.attempts for d in deliveries) <= 2


def test_a_refusal_that_sent_nothing_does_not_spend_the_retry_budget() -> None:
    clock = FakeClock(START)
    api = Recorder()
    # one request per 10 s, never waiting in the worker: every other delivery is
    # handed back (RateLimitedError, sent=False) until its slot comes
    dest = HttpDestination("api", "https://api.example.com", "/c", transport=api.transport,
                           rate_limit=RateLimit(0.1, burst=1, max_wait=0))  # fmt: skip
    queue = MemoryQueueStore()
    dispatcher = Dispatcher(
        queue, MemoryIdempotencyStore(), [dest], clock=clock,
        retry=RetryPolicy(jitter=False, max_attempts=2),
    )  # fmt: skip
    dispatcher.submit_many(Event(f"e{n}", "t", {"n": n}) for n in range(4))
    for _ in range(20):
        dispatcher.run_until_idle()
        clock.advance(5)
    deliveries = Operator(queue).list().items
    assert {d.status for d in deliveries} == {DeliveryStatus.SUCCEEDED}
    assert [d.attempts for d in deliveries] == [1, 1, 1, 1]
    assert len(api.requests) == 4


def test_a_preset_of_your_own_with_body_rules() -> None:
    def pos_rules(response: httpx.Response, body: Any) -> Verdict | None:
        if isinstance(body, dict) and body.get("code") == "UNKNOWN_SKU":
            return Verdict(ErrorCategory.MAPPING, "the POS has no such SKU")
        return None

    pos = Preset(name="pos", classify=pos_rules, error_field=lambda body: body.get("sku_field"))
    body = {"code": "UNKNOWN_SKU", "sku_field": "lines[0].sku"}
    error = failure(dest_for(answer(400, body, {"X-Should-Retry": "true"}), preset=pos))
    assert type(error) is MappingError  # the rule is final: the header does not change it
    assert error.field == "lines[0].sku"
    assert "the POS has no such SKU" in str(error)


def test_preset_paging_serves_the_polling_source() -> None:
    from resilient_sync.http import LinkPagination, TokenPagination

    stripe = PRESETS["stripe"].pagination
    shopify = PRESETS["shopify"].pagination
    assert stripe is not None
    assert shopify is not None
    assert stripe.for_source() == TokenPagination(
        param="starting_after", token=None, has_more="has_more", item_id="id"
    )
    assert shopify.for_source() == LinkPagination(rel="next")

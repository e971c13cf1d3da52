"""Every row of DESIGN.md's HTTP classification table, with httpx.MockTransport."""

from __future__ import annotations

import email.utils
import inspect
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from resilient_sync import (
    Classifier,
    DataFormatError,
    DeliveryContext,
    DuplicateError,
    ErrorCategory,
    Event,
    MappingError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    SyncError,
)
from resilient_sync.http import (
    HttpClassifier,
    HttpDestination,
    field_from_body,
    graphql_classifier,
    response_of,
)
from resilient_sync.http._classify import EXCEPTION_TABLE
from resilient_sync.testing import FakeClock

T = ErrorCategory.TRANSIENT
U = ErrorCategory.UNEXPECTED
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
EVENT = Event("e1", "customer.created", {"email": "ada@example.com", "name": "Ada"})
CONTEXT = DeliveryContext(delivery_id="d1", destination="pos", idempotency_key="key-1", attempt=1)

Handler = Callable[[httpx.Request], httpx.Response]


def failure(handler: Handler, **options: Any) -> SyncError:
    """Deliver EVENT through a destination answering with ``handler``; the error."""
    clock = options.pop("clock", FakeClock(START))
    with (
        HttpDestination(
            "pos",
            "https://pos.example.com/api",
            "/customers",
            transport=httpx.MockTransport(handler),
            clock=clock,
            **options,
        ) as dest,
        pytest.raises(SyncError) as info,
    ):
        dest.deliver(EVENT, CONTEXT)
    return info.value


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, (bytes, str)):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def category(error: BaseException) -> ErrorCategory:
    """What the dispatcher's classifier makes of the error."""
    return Classifier().classify(error).category


# --- transport errors: the request never left / outcome unknown ---------------------

NEVER_LEFT = [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError]
UNKNOWN = [
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.CloseError,
]


@pytest.mark.parametrize("exc_type", NEVER_LEFT)
def test_request_never_left_is_transient_and_safe(exc_type: type[httpx.HTTPError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)

    error = failure(handler)
    assert isinstance(error, RetryableError)
    assert category(error) is T
    assert "never left" in str(error)
    assert error.details["sent"] is False
    assert isinstance(error.__cause__, exc_type)
    assert "POST pos.example.com/api/customers" in str(error)


@pytest.mark.parametrize("exc_type", UNKNOWN)
def test_outcome_unknown_is_transient_same_key_same_body(
    exc_type: type[httpx.HTTPError],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("connection dropped", request=request)

    error = failure(handler)
    assert isinstance(error, RetryableError)
    assert category(error) is T
    assert "outcome unknown" in str(error)
    assert "same idempotency key and body" in str(error)
    assert error.details["sent"] is None
    assert isinstance(error.__cause__, exc_type)


def _construct(cls: type[Exception], request: httpx.Request) -> Exception:
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("boom", request=request, response=httpx.Response(503, request=request))
    params = inspect.signature(cls).parameters
    if "request" in params:
        return cls("boom", request=request)  # type: ignore[call-arg]
    if params:
        return cls("boom")
    return cls()


def _httpx_exception_classes() -> set[type[Exception]]:
    found: set[type[Exception]] = set()
    todo = [
        obj for obj in vars(httpx).values() if isinstance(obj, type) and issubclass(obj, Exception)
    ]
    while todo:
        cls = todo.pop()
        if cls in found or not cls.__module__.startswith("httpx"):
            continue
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


#: What every httpx exception means; a new httpx class fails the walk below.
EXPECTED: dict[type[Exception], ErrorCategory] = {
    httpx.HTTPError: U,
    httpx.RequestError: U,
    httpx.TransportError: T,
    httpx.TimeoutException: T,
    httpx.ConnectTimeout: T,
    httpx.ReadTimeout: T,
    httpx.WriteTimeout: T,
    httpx.PoolTimeout: T,
    httpx.NetworkError: T,
    httpx.ConnectError: T,
    httpx.ReadError: T,
    httpx.WriteError: T,
    httpx.CloseError: T,
    httpx.ProtocolError: T,
    httpx.LocalProtocolError: U,
    httpx.RemoteProtocolError: T,
    httpx.ProxyError: T,
    httpx.UnsupportedProtocol: U,
    httpx.DecodingError: U,
    httpx.TooManyRedirects: U,
    httpx.HTTPStatusError: T,  # constructed with a 503 response: classified by the table
    httpx.InvalidURL: U,
    httpx.CookieConflict: U,
    httpx.StreamError: U,
    httpx.StreamConsumed: U,
    httpx.StreamClosed: U,
    httpx.ResponseNotRead: U,
    httpx.RequestNotRead: U,
}


def test_every_httpx_exception_class_is_classified() -> None:
    classes = _httpx_exception_classes()
    assert classes == set(EXPECTED), "httpx changed its exception tree: classify the new ones"
    request = httpx.Request("POST", "https://pos.example.com/customers?api_key=sekret-123")
    classifier = HttpClassifier()
    for cls in sorted(classes, key=lambda c: c.__name__):
        exc = _construct(cls, request)
        if cls is not httpx.HTTPStatusError:
            assert cls in EXCEPTION_TABLE, f"{cls.__name__} is not in EXCEPTION_TABLE"
        error = classifier.transport_error(exc, now=START)
        assert isinstance(error, SyncError), cls
        assert category(error) is EXPECTED[cls], cls
        assert "sekret-123" not in str(error)


def test_exceptions_raised_while_building_the_request_are_translated() -> None:
    with (
        HttpDestination("pos", "ftp://pos.example.com", "/customers") as dest,
        pytest.raises(SyncError) as info,
    ):
        dest.deliver(EVENT, CONTEXT)
    assert isinstance(info.value.__cause__, httpx.UnsupportedProtocol)
    assert category(info.value) is U


# --- statuses -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 423, 425, 500, 502, 503, 504])
def test_transient_statuses(status: int) -> None:
    error = failure(answer(status, {"error": "try later"}))
    assert type(error) is RetryableError
    assert category(error) is T
    assert f"HTTP {status}" in str(error)
    assert error.retry_after is None
    assert error.details["status"] == status


def test_transient_status_honours_retry_after() -> None:
    error = failure(answer(503, {"error": "maintenance"}, {"Retry-After": "120"}))
    assert category(error) is T
    assert error.retry_after == 120.0


def test_423_can_be_overridden_per_destination() -> None:
    error = failure(answer(423, {"error": "locked"}), status_categories={423: "data_format"})
    assert isinstance(error, DataFormatError)


def _http_date(when: datetime) -> str:
    return email.utils.format_datetime(when.astimezone(timezone.utc), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("2.5", 2.5),
        (_http_date(START + timedelta(seconds=30)), 30.0),
        (_http_date(START - timedelta(seconds=30)), 0.0),  # a past date means now
        ("999999", 3600.0),  # capped
        ("soon", None),  # unparseable: the policy decides
    ],
)
def test_429_is_rate_limited_with_retry_after_in_every_form(
    value: str, expected: float | None
) -> None:
    error = failure(answer(429, {"errors": "Exceeded 2 calls per second"}, {"Retry-After": value}))
    assert isinstance(error, RateLimitedError)
    assert category(error) is ErrorCategory.RATE_LIMITED
    assert error.retry_after == expected


def test_retry_after_date_is_measured_from_the_server_date_header() -> None:
    server_now = START + timedelta(hours=5)  # our clock is 5 hours behind the server's
    headers = {
        "Date": _http_date(server_now),
        "Retry-After": _http_date(server_now + timedelta(seconds=12)),
    }
    error = failure(answer(429, None, headers))
    assert error.retry_after == 12.0


def test_retry_after_cap_is_configurable() -> None:
    error = failure(answer(429, None, {"Retry-After": "600"}), max_retry_after=60)
    assert error.retry_after == 60.0


def test_409_is_duplicate() -> None:
    error = failure(answer(409, {"errors": [{"code": "CONFLICT", "detail": "customer exists"}]}))
    assert isinstance(error, DuplicateError)
    assert category(error) is ErrorCategory.DUPLICATE


@pytest.mark.parametrize(
    "body",
    [
        {  # Stripe
            "error": {
                "type": "idempotency_error",
                "message": "There is currently another in-progress request using this "
                "Idempotency Key (that probably means you submitted twice, and the other "
                "request is still going through): key-1. Please try again later.",
            }
        },
        {"title": "A request is outstanding for this Idempotency-Key"},  # IETF draft
    ],
)
def test_409_key_in_flight_is_transient_with_a_short_delay(body: Any) -> None:
    error = failure(answer(409, body), in_flight_delay=0.5)
    assert type(error) is RetryableError
    assert error.retry_after == 0.5
    assert "in flight" in str(error)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_data_format_statuses(status: int) -> None:
    error = failure(answer(status, {"errors": {"phone": ["is invalid"]}}))
    assert isinstance(error, DataFormatError)
    assert category(error) is ErrorCategory.DATA_FORMAT
    assert error.field == "phone"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"errors": {"email": ["has already been taken"]}}, "email"),  # Shopify
        (
            {"error": {"type": "invalid_request_error", "param": "email", "message": "x"}},
            "email",
        ),  # Stripe
        (
            {"error": {"param": "shipping[address][line1]", "message": "missing"}},
            "shipping.address.line1",
        ),
        (
            {"errors": [{"category": "INVALID_REQUEST_ERROR", "field": "email_address"}]},
            "email_address",
        ),  # Square
        (
            {"errors": [{"source": {"pointer": "/data/attributes/lines/2/sku"}, "title": "x"}]},
            "lines[2].sku",
        ),  # JSON:API
        ({"detail": [{"loc": ["body", "address", "zip"], "msg": "bad"}]}, "address.zip"),
        (
            {"data": {"customerCreate": {"userErrors": [{"field": ["email"], "message": "x"}]}}},
            "email",
        ),
        ({"message": "Validation failed"}, None),
        ("not json", None),
    ],
)
def test_field_is_taken_from_the_body(body: Any, field: str | None) -> None:
    assert field_from_body(body) == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"errors": {"email": ["has already been taken"]}}, "email"),
        (
            {
                "errors": [
                    {"code": "CONFLICT", "detail": "A customer with this email already exists"}
                ]
            },
            None,
        ),
        ({"error": {"message": "Duplicate record", "param": "email"}}, "email"),
    ],
)
def test_already_taken_bodies_are_duplicate_with_field(body: Any, field: str | None) -> None:
    error = failure(answer(422, body))
    assert isinstance(error, DuplicateError)
    assert category(error) is ErrorCategory.DUPLICATE
    assert error.field == field


def test_a_duplicate_inside_the_data_is_still_data_format() -> None:
    error = failure(answer(422, {"errors": {"lines": ["duplicate SKU in order lines"]}}))
    assert isinstance(error, DataFormatError)
    assert error.field == "lines"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            400,
            {
                "error": {
                    "type": "idempotency_error",
                    "message": "Keys for idempotent requests can only be used with the same "
                    "parameters they were first used with. Try using a key other than 'k'.",
                }
            },
        ),  # Stripe
        (
            400,
            {"errors": [{"category": "INVALID_REQUEST_ERROR", "code": "IDEMPOTENCY_KEY_REUSED"}]},
        ),
        (422, {"title": "Idempotency-Key is already used for a different request payload"}),
    ],
)
def test_idempotency_key_reuse_is_unexpected(status: int, body: Any) -> None:
    error = failure(answer(status, body))
    assert type(error) is SyncError
    assert category(error) is U
    assert "never fixed under the same key" in str(error)


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (401, PermissionDeniedError),
        (402, PermissionDeniedError),
        (403, PermissionDeniedError),
        (404, MappingError),
        (410, MappingError),
    ],
)
def test_permission_and_mapping_statuses(status: int, exc_type: type[SyncError]) -> None:
    error = failure(answer(status, {"errors": "nope"}))
    assert type(error) is exc_type


STRIPE_CARD_ERROR = {
    "error": {
        "type": "card_error",
        "code": "incorrect_cvc",
        "param": "cvc",
        "message": "Your card's security code is incorrect.",
    }
}


@pytest.mark.parametrize(
    ("status", "body", "exc_type", "field"),
    [
        (402, STRIPE_CARD_ERROR, DataFormatError, "cvc"),
        (  # a decline names no parameter, and is still this request's failure
            402,
            {"error": {"type": "card_error", "code": "card_declined", "decline_code": "generic"}},
            DataFormatError,
            None,
        ),
        (  # localstripe's shape of a decline
            402,
            {"error": {"type": "invalid_request_error", "code": "card_declined"}},
            DataFormatError,
            None,
        ),
        (  # Square
            402,
            {"errors": [{"category": "PAYMENT_METHOD_ERROR", "code": "CARD_DECLINED"}]},
            DataFormatError,
            None,
        ),
        (
            403,
            {"error": {"type": "invalid_request_error", "param": "tax_id_data[0][value]"}},
            DataFormatError,
            "tax_id_data[0].value",
        ),
        (  # a missing reference
            402,
            {"error": {"code": "resource_missing", "param": "customer", "message": "No such"}},
            MappingError,
            "customer",
        ),
    ],
)
def test_402_403_naming_a_per_request_error_concern_that_delivery_only(
    status: int, body: Any, exc_type: type[SyncError], field: str | None
) -> None:
    error = failure(answer(status, body))
    assert type(error) is exc_type
    assert error.field == field
    assert "not paused" in str(error)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}),
        (401, STRIPE_CARD_ERROR),  # a 401 is about the credentials, whatever the body says
        (402, {"errors": "Unavailable Shop"}),  # Shopify: the shop's plan is unpaid
        (  # Stripe: a restricted key without the permission
            403,
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": "The provided key does not have the required permissions",
                }
            },
        ),
        (403, {"errors": [{"category": "AUTHENTICATION_ERROR", "code": "INSUFFICIENT_SCOPES"}]}),
        (402, None),
        (403, b"<html>Forbidden</html>"),
    ],
)
def test_401_and_402_403_naming_no_per_request_error_are_permission(status: int, body: Any) -> None:
    error = failure(answer(status, body))
    assert type(error) is PermissionDeniedError


@pytest.mark.parametrize("status", [301, 302, 405, 418, 451])
def test_redirects_and_other_4xx_are_unexpected(status: int) -> None:
    error = failure(answer(status, {"errors": "odd"}, {"Location": "https://elsewhere.example"}))
    assert type(error) is SyncError
    assert category(error) is U


@pytest.mark.parametrize("body", [b"<html>Service is up</html>", b"{truncated"])
def test_undecodable_2xx_is_unexpected(body: bytes) -> None:
    error = failure(answer(200, body))
    assert type(error) is SyncError
    assert category(error) is U
    assert "HTTP 200" in str(error)
    assert "could not be read" in str(error)


def test_a_response_error_is_raised_from_an_http_status_error() -> None:
    error = failure(answer(422, {"errors": {"email": ["is invalid"]}}))
    cause = error.__cause__
    assert isinstance(cause, httpx.HTTPStatusError)
    response = response_of(error)
    assert response is not None
    assert response.status_code == 422
    assert response.json() == {"errors": {"email": ["is invalid"]}}


def test_message_has_status_request_line_and_a_short_excerpt() -> None:
    long_body = {"errors": {"email": ["is invalid"]}, "padding": "x" * 5000}
    error = failure(answer(422, long_body, {"X-Request-Id": "req-77"}))
    text = str(error)
    assert text.startswith("HTTP 422 Unprocessable Entity from POST pos.example.com/api/customers")
    assert "req-77" in text
    assert len(text) < 500
    assert text.count("x") < 400


# --- the vendor override header and the body classifier ----------------------------------


def test_should_retry_true_makes_a_4xx_transient() -> None:
    error = failure(answer(400, {"error": {"message": "lock"}}, {"Stripe-Should-Retry": "true"}))
    assert type(error) is RetryableError
    assert "Stripe-Should-Retry: true" in str(error)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_should_retry_false_on_a_retryable_failure_is_unexpected_never_data_format(
    status: int,
) -> None:
    # Stripe replays a cached 500 under the same key and says "do not retry": the
    # outcome is unknown. DATA_FORMAT would invite fix_data/edit under a revised
    # key, which could create a second record.
    headers = {"Stripe-Should-Retry": "false"}
    error = failure(answer(status, {"error": {"type": "api_error", "message": "cached"}}, headers))
    assert type(error) is SyncError
    assert category(error) is U
    assert not isinstance(error, DataFormatError)
    assert "outcome is unknown" in str(error)
    assert error.field is None


def test_should_retry_false_keeps_a_category_that_is_not_retried() -> None:
    error = failure(answer(409, {"error": "exists"}, {"X-Should-Retry": "false"}))
    assert isinstance(error, DuplicateError)


def test_an_explicit_body_classifier_decision_wins_over_the_override_header() -> None:
    error = failure(
        answer(400, {"x": 1}, {"Stripe-Should-Retry": "true"}),
        classify_body=lambda response, body: ErrorCategory.MAPPING,
    )
    assert type(error) is MappingError
    error = failure(
        answer(500, {"x": 1}, {"Stripe-Should-Retry": "false"}),
        classify_body=lambda response, body: ErrorCategory.TRANSIENT,
    )
    assert type(error) is RetryableError
    mine = PermissionDeniedError("the key was rolled")
    error = failure(
        answer(500, {}, {"Stripe-Should-Retry": "true"}), classify_body=lambda r, b: mine
    )
    assert error is mine


def test_the_override_header_applies_when_the_body_classifier_has_no_opinion() -> None:
    error = failure(
        answer(500, {"x": 1}, {"Stripe-Should-Retry": "false"}),
        classify_body=lambda response, body: None,
    )
    assert type(error) is SyncError
    error = failure(
        answer(409, {"error": "lock timeout"}, {"Stripe-Should-Retry": "true"}),
        classify_body=lambda response, body: None,
    )
    assert type(error) is RetryableError


def test_should_retry_headers_are_configurable() -> None:
    headers = {"Stripe-Should-Retry": "true"}
    error = failure(answer(400, {"x": 1}, headers), should_retry_headers=("X-Retry-Ok",))
    assert isinstance(error, DataFormatError)


def test_body_classifier_comes_before_the_table() -> None:
    def classify(response: httpx.Response, body: Any) -> ErrorCategory | None:
        if body and body.get("code") == "UNKNOWN_SKU":
            return ErrorCategory.MAPPING
        return None

    error = failure(answer(400, {"code": "UNKNOWN_SKU", "field": "sku"}), classify_body=classify)
    assert isinstance(error, MappingError)
    assert error.field == "sku"
    error = failure(answer(400, {"code": "OTHER"}), classify_body=classify)
    assert isinstance(error, DataFormatError)


def test_body_classifier_finds_errors_inside_a_2xx() -> None:
    body = {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]}
    error = failure(answer(200, body, {"Retry-After": "3"}), classify_body=graphql_classifier)
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 3.0
    body = {
        "data": {
            "customerCreate": {
                "customer": None,
                "userErrors": [{"field": ["email"], "message": "Email has already been taken"}],
            }
        }
    }
    error = failure(answer(200, body), classify_body=graphql_classifier)
    assert isinstance(error, DuplicateError)
    assert error.field == "email"


def test_body_classifier_may_return_an_error_to_raise_as_is() -> None:
    mine = DataFormatError("the POS wants a phone number", field="phone")
    error = failure(answer(400, {}), classify_body=lambda response, body: mine)
    assert error is mine
    assert isinstance(error.__cause__, httpx.HTTPStatusError)


def test_body_classifier_must_return_a_category_an_error_or_none() -> None:
    with (
        HttpDestination(
            "pos",
            "https://pos.example.com",
            "/c",
            transport=httpx.MockTransport(answer(400, {})),
            classify_body=lambda response, body: "bad",  # type: ignore[arg-type,return-value]
        ) as dest,
        pytest.raises(TypeError, match="classify_body must return"),
    ):
        dest.deliver(EVENT, CONTEXT)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("UNAUTHENTICATED", ErrorCategory.PERMISSION),
        ("INTERNAL_SERVER_ERROR", ErrorCategory.TRANSIENT),
        ("NOT_FOUND", ErrorCategory.MAPPING),
        ("BAD_USER_INPUT", ErrorCategory.DATA_FORMAT),
    ],
)
def test_graphql_classifier_codes(code: str, expected: ErrorCategory) -> None:
    body = {"errors": [{"message": "x", "extensions": {"code": code}}]}
    assert graphql_classifier(httpx.Response(200), body) is expected
    assert graphql_classifier(httpx.Response(200), {"data": {"ok": True}}) is None


def test_successes_are_not_errors() -> None:
    classifier = HttpClassifier()
    request = httpx.Request("POST", "https://pos.example.com/c")
    for status in (200, 201, 202, 204):
        assert classifier.response_error(httpx.Response(status, request=request), now=START) is None


# --- found by a red-team pass -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [(500, T), (502, T), (503, T), (429, ErrorCategory.RATE_LIMITED), (408, T)],
)
def test_a_body_saying_bad_data_on_a_5xx_or_429_does_not_invite_a_revised_key(
    status: int, expected: ErrorCategory
) -> None:
    """GraphQL answers a 503 with ``{"errors": [...]}``; the request may have been
    applied, so DATA_FORMAT (which lets fix_data/edit re-send under a new key)
    would create a second record. The status decides."""
    body = {"errors": [{"message": "Service temporarily overloaded"}]}
    error = failure(
        lambda request: httpx.Response(status, json=body, headers={"Retry-After": "30"}),
        classify_body=graphql_classifier,
    )
    assert error.category is expected
    assert "the status decides" in str(error)
    assert error.retry_after == 30  # the table's row honours Retry-After again


def test_a_custom_body_classifier_cannot_make_a_500_a_mapping_error() -> None:
    def classify(response: httpx.Response, body: Any) -> ErrorCategory | None:
        return ErrorCategory.MAPPING

    error = failure(lambda request: httpx.Response(500, json={}), classify_body=classify)
    assert error.category is T


def test_a_body_classifier_still_decides_4xx_and_2xx() -> None:
    body = {"errors": [{"message": "email is invalid"}]}
    assert (
        failure(
            lambda request: httpx.Response(200, json=body), classify_body=graphql_classifier
        ).category
        is ErrorCategory.DATA_FORMAT
    )


@pytest.mark.parametrize(
    "code",
    [
        "token_expired",
        "api_key_expired",
        "subscription_expired",
        "ACCESS_TOKEN_EXPIRED",
        "account_declined",
        "trial_expired",
    ],
)
def test_an_account_failure_on_402_403_pauses_even_when_its_code_looks_like_a_card(
    code: str,
) -> None:
    body = {"error": {"type": "invalid_request_error", "code": code, "message": "no"}}
    error = failure(lambda request: httpx.Response(403, json=body))
    assert error.category is ErrorCategory.PERMISSION


@pytest.mark.parametrize(
    "code",
    [
        "card_declined",
        "expired_card",
        "incorrect_cvc",
        "CVV_FAILURE",
        "GENERIC_DECLINE",
        "insufficient_funds",
        "INVALID_EXPIRATION",
    ],
)
def test_a_declined_card_on_402_is_that_deliverys_data_error(code: str) -> None:
    body = {"error": {"code": code, "message": "declined"}}
    error = failure(lambda request: httpx.Response(402, json=body))
    assert error.category is ErrorCategory.DATA_FORMAT


def test_an_odd_json_api_pointer_does_not_raise() -> None:
    body = {"errors": [{"source": {"pointer": "/data/attributes/\u00b2"}, "detail": "bad"}]}
    error = failure(lambda request: httpx.Response(403, json=body))
    assert error.category is ErrorCategory.DATA_FORMAT
    assert error.field == "\u00b2"

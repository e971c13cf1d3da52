"""The Classifier: every exception becomes a category; users extend it."""

from __future__ import annotations

import inspect

import httpx
import pytest

from resilient_sync import (
    Classifier,
    DataFormatError,
    DuplicateError,
    ErrorCategory,
    ErrorInfo,
    InvalidEventError,
    MappingError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    SyncError,
)

C = ErrorCategory


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (RetryableError("x"), C.TRANSIENT),
        (RateLimitedError("x", retry_after=3), C.RATE_LIMITED),
        (DuplicateError("x"), C.DUPLICATE),
        (DataFormatError("x", field="f"), C.DATA_FORMAT),
        (MappingError("x"), C.MAPPING),
        (PermissionDeniedError("x"), C.PERMISSION),
        (TimeoutError("x"), C.TRANSIENT),
        (ConnectionRefusedError("x"), C.TRANSIENT),
        (ValueError("x"), C.UNEXPECTED),
        (Exception(), C.UNEXPECTED),
    ],
)
def test_default_categories(exc: BaseException, category: ErrorCategory) -> None:
    assert Classifier().classify(exc).category is category


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://pos.example/customers")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (400, C.DATA_FORMAT),
        (401, C.PERMISSION),
        (402, C.PERMISSION),
        (403, C.PERMISSION),
        (404, C.MAPPING),
        (408, C.TRANSIENT),
        (409, C.DUPLICATE),
        (410, C.MAPPING),
        (413, C.DATA_FORMAT),
        (418, C.UNEXPECTED),
        (422, C.DATA_FORMAT),
        (423, C.TRANSIENT),
        (425, C.TRANSIENT),
        (429, C.RATE_LIMITED),
        (500, C.TRANSIENT),
        (502, C.TRANSIENT),
        (503, C.TRANSIENT),
        (504, C.TRANSIENT),
    ],
)
def test_http_status_errors_follow_the_design_table(status: int, category: ErrorCategory) -> None:
    assert Classifier().classify(_status_error(status)).category is category


#: The category of every exception class httpx exports (a new one fails the test
#: below until it is placed here); None for abstract bases httpx never raises itself.
HTTPX_CATEGORIES: dict[str, ErrorCategory | None] = {
    "HTTPError": None,
    "RequestError": None,
    "TransportError": None,
    "ProtocolError": None,
    "NetworkError": C.TRANSIENT,
    "TimeoutException": C.TRANSIENT,
    "ConnectTimeout": C.TRANSIENT,
    "ReadTimeout": C.TRANSIENT,
    "WriteTimeout": C.TRANSIENT,
    "PoolTimeout": C.TRANSIENT,
    "ConnectError": C.TRANSIENT,
    "ReadError": C.TRANSIENT,
    "WriteError": C.TRANSIENT,
    "CloseError": C.TRANSIENT,
    "ProxyError": C.TRANSIENT,
    "RemoteProtocolError": C.TRANSIENT,
    "LocalProtocolError": C.UNEXPECTED,
    "UnsupportedProtocol": C.UNEXPECTED,
    "DecodingError": C.UNEXPECTED,
    "TooManyRedirects": C.UNEXPECTED,
    "InvalidURL": C.UNEXPECTED,
    "CookieConflict": C.UNEXPECTED,
    "StreamError": C.UNEXPECTED,
    "StreamConsumed": C.UNEXPECTED,
    "StreamClosed": C.UNEXPECTED,
    "ResponseNotRead": C.UNEXPECTED,
    "RequestNotRead": C.UNEXPECTED,
    "HTTPStatusError": None,  # by status: see the table test above
}


def test_every_httpx_exception_class_has_a_known_category() -> None:
    exported = {
        name
        for name, obj in inspect.getmembers(httpx)
        if inspect.isclass(obj) and issubclass(obj, Exception)
    }
    assert exported == set(HTTPX_CATEGORIES)


@pytest.mark.parametrize(
    ("name", "category"),
    [(n, c) for n, c in HTTPX_CATEGORIES.items() if c is not None],
)
def test_httpx_exceptions_are_classified(name: str, category: ErrorCategory) -> None:
    cls = getattr(httpx, name)
    try:
        exc = cls("boom")
    except TypeError:
        exc = cls()
    assert Classifier().classify(exc).category is category


def test_the_message_names_the_type_of_foreign_errors_and_keeps_sync_messages() -> None:
    info = Classifier().classify(KeyError("sku"))
    assert info.message == "KeyError: 'sku'"
    assert info.exception_type == "KeyError"
    info = Classifier().classify(DataFormatError("phone invalid", field="phone"))
    assert info.message == "phone invalid"
    assert info.field == "phone"
    assert info.exception_type == "resilient_sync._errors.DataFormatError"
    info = Classifier().classify(RateLimitedError(retry_after=12.5))
    assert info.retry_after == 12.5
    assert info.message  # the class docstring is the default message


def test_long_messages_are_truncated_and_still_redacted() -> None:
    # a 100 kB body (an HTML error page, a base64 blob) is handled quickly
    body = "x" * 50_000 + " password=hunter2 " + "ab-" * 16_000
    info = Classifier().classify(RuntimeError(body))
    assert len(info.message) <= 2_000
    info = Classifier().classify(RuntimeError("password=hunter2 " + body))
    assert "hunter2" not in info.message


def test_register_a_type_most_specific_class_wins() -> None:
    class PosError(Exception):
        pass

    class PosTimeout(PosError):
        pass

    classifier = Classifier()
    assert classifier.register(PosError, C.MAPPING) is classifier
    classifier.register(PosTimeout, C.TRANSIENT)
    assert classifier.classify(PosError()).category is C.MAPPING
    assert classifier.classify(PosTimeout()).category is C.TRANSIENT
    # registered types can override the defaults, even for our own errors
    classifier.register(DuplicateError, C.MAPPING)
    assert classifier.classify(DuplicateError()).category is C.MAPPING
    with pytest.raises(TypeError, match="exception class"):
        classifier.register("PosError", C.MAPPING)  # type: ignore[arg-type]


def test_rules_come_first_newest_first_and_may_return_a_full_error() -> None:
    classifier = Classifier(types={ValueError: C.DATA_FORMAT})
    classifier.add_rule(lambda exc: C.MAPPING if "sku" in str(exc) else None)
    classifier.add_rule(
        lambda exc: (
            ErrorInfo(category=C.DATA_FORMAT, message="custom", field="lines[0].sku")
            if "field" in str(exc)
            else None
        )
    )
    assert classifier.classify(ValueError("unknown sku")).category is C.MAPPING
    assert classifier.classify(ValueError("other")).category is C.DATA_FORMAT
    info = classifier.classify(ValueError("sku field"))
    assert (info.category, info.message, info.field) == (C.DATA_FORMAT, "custom", "lines[0].sku")
    assert classifier(RuntimeError("x")).category is C.UNEXPECTED  # callable, like a rule
    with pytest.raises(TypeError, match="callable"):
        classifier.add_rule("not a rule")  # type: ignore[arg-type]


def test_the_error_tree() -> None:
    for cls in (
        RetryableError,
        DuplicateError,
        DataFormatError,
        MappingError,
        PermissionDeniedError,
        InvalidEventError,
    ):
        assert issubclass(cls, SyncError)
    assert issubclass(RateLimitedError, RetryableError)
    assert issubclass(InvalidEventError, ValueError)
    err = DataFormatError("bad", field="phone", details={"got": "x"})
    assert (str(err), err.field, err.details) == ("bad", "phone", {"got": "x"})
    assert RetryableError().message == "Temporary failure; retry later with backoff."


def test_raise_for_status_429_carries_its_retry_after() -> None:
    """A 429 raised by httpx's raise_for_status() keeps Retry-After (seconds
    or an HTTP date measured from the response's Date header)."""
    import httpx

    from resilient_sync import Classifier, ErrorCategory

    request = httpx.Request("POST", "https://pos.example/customers")
    for headers, expected in (
        ({"Retry-After": "120"}, 120.0),
        (
            {
                "Retry-After": "Wed, 21 Oct 2026 07:29:30 GMT",
                "Date": "Wed, 21 Oct 2026 07:28:00 GMT",
            },
            90.0,
        ),
        ({}, None),
    ):
        response = httpx.Response(429, headers=headers, request=request)
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            info = Classifier().classify(exc)
        assert info.category is ErrorCategory.RATE_LIMITED
        assert info.retry_after == expected


def test_an_authorization_header_is_redacted_once_keeping_its_scheme() -> None:
    from resilient_sync._redact import redact

    text = redact("401 with Authorization: Bearer sk_live_abcdef123456")
    assert text == "401 with Authorization: Bearer [REDACTED]"
    assert "sk_live" not in text

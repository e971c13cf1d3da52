"""Classifying HTTP outcomes: a response or an httpx exception becomes one of
this library's errors. Pure, no I/O.

A response is decided in this order (``docs/concepts/error-taxonomy.md``,
"The HTTP adapter's default classification"):

1. the adapter's body classifier (duplicate? which field? errors inside a
   2xx, as GraphQL APIs send them), then a vendor preset's body rules: an
   explicit decision there is final;
2. otherwise a vendor override header (``Stripe-Should-Retry``-style) on the
   table's row: ``true`` makes a failure TRANSIENT, ``false`` makes a failure
   that would be retried UNEXPECTED (the outcome is unknown: never
   DATA_FORMAT, which would invite a correction under a revised key and a
   second record);
3. the table::

     connect error/timeout, pool timeout     TRANSIENT (request never left: safe)
     read/write timeout, reset, disconnect   TRANSIENT (outcome unknown: same key, same body)
     408 425 500 502 503 504 (423)           TRANSIENT, Retry-After honoured
     429                                     RATE_LIMITED, Retry-After (int, decimal, HTTP date)
     409                                     DUPLICATE; "key in flight": TRANSIENT, short delay
     400 413 422                             DATA_FORMAT with the field from the body;
                                             "already taken/exists": DUPLICATE;
                                             idempotency-key reuse: UNEXPECTED
     401; 402/403 naming no per-request error PERMISSION (the destination is paused)
     402/403 naming a per-request error      DATA_FORMAT with the field (MAPPING for a
                                             missing reference): that delivery only
     404 410                                 MAPPING
     3xx, other 4xx, undecodable 2xx         UNEXPECTED

Messages carry the status, the request line (method, host and path; never
the query string) and a short, redacted excerpt of the body.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import httpx

from .._classify import category_for_status, parse_retry_after
from .._errors import (
    DataFormatError,
    DuplicateError,
    MappingError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    SyncError,
)
from .._model import ErrorCategory
from .._redact import SECRET_HEADERS, redact

__all__ = [
    "EXCEPTION_TABLE",
    "SHOULD_RETRY_HEADERS",
    "BodyClassifier",
    "ErrorField",
    "FieldMap",
    "HttpClassifier",
    "VendorRules",
    "Verdict",
    "describe_request",
    "field_from_body",
    "graphql_classifier",
    "per_request_error",
    "request_secrets",
    "response_of",
]

#: Vendor headers that say whether a failed request should be retried.
SHOULD_RETRY_HEADERS: tuple[str, ...] = ("Stripe-Should-Retry", "X-Should-Retry")

#: Response headers whose value is quoted in messages, for support tickets.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-shopify-request-id", "x-amzn-requestid")

#: ``classify_body(response, body)``: ``body`` is the decoded JSON (None when
#: empty or not JSON). Return None (no opinion: the table decides), an
#: :class:`ErrorCategory` (the adapter writes the message and finds the
#: field), or a :class:`SyncError` to raise as it is.
BodyClassifier = Callable[[httpx.Response, Any], ErrorCategory | SyncError | None]

_EXCERPT = 300
_SCAN = 8192

NEVER_LEFT = "the request never left; safe to retry"
OUTCOME_UNKNOWN = (
    "the request may have reached the server: outcome unknown, "
    "retried with the same idempotency key and body"
)
NOT_READ = "the response arrived but could not be read"
NOT_SENDABLE = "the request could not be sent as configured"

#: Whether the request reached the server, by note (None: unknown).
_SENT: Mapping[str, bool] = {NEVER_LEFT: False, NOT_SENDABLE: False, NOT_READ: True}

#: Every httpx exception class, with its category and what it means for the
#: request. Looked up along the exception's MRO; a test walks every class
#: httpx defines and fails on one missing here.
EXCEPTION_TABLE: Mapping[type[Exception], tuple[ErrorCategory, str]] = {
    httpx.ConnectError: (ErrorCategory.TRANSIENT, NEVER_LEFT),
    httpx.ConnectTimeout: (ErrorCategory.TRANSIENT, NEVER_LEFT),
    httpx.PoolTimeout: (ErrorCategory.TRANSIENT, NEVER_LEFT),
    httpx.ProxyError: (ErrorCategory.TRANSIENT, NEVER_LEFT),
    httpx.ReadTimeout: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.WriteTimeout: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.TimeoutException: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.ReadError: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.WriteError: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.CloseError: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.NetworkError: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.RemoteProtocolError: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.ProtocolError: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.TransportError: (ErrorCategory.TRANSIENT, OUTCOME_UNKNOWN),
    httpx.LocalProtocolError: (ErrorCategory.UNEXPECTED, NOT_SENDABLE),
    httpx.UnsupportedProtocol: (ErrorCategory.UNEXPECTED, NOT_SENDABLE),
    httpx.DecodingError: (ErrorCategory.UNEXPECTED, NOT_READ),
    httpx.TooManyRedirects: (ErrorCategory.UNEXPECTED, "too many redirects"),
    httpx.RequestError: (ErrorCategory.UNEXPECTED, OUTCOME_UNKNOWN),
    httpx.HTTPError: (ErrorCategory.UNEXPECTED, OUTCOME_UNKNOWN),
    httpx.InvalidURL: (ErrorCategory.UNEXPECTED, NOT_SENDABLE),
    httpx.CookieConflict: (ErrorCategory.UNEXPECTED, NOT_SENDABLE),
    httpx.StreamConsumed: (ErrorCategory.UNEXPECTED, NOT_SENDABLE),
    httpx.StreamClosed: (ErrorCategory.UNEXPECTED, NOT_READ),
    httpx.ResponseNotRead: (ErrorCategory.UNEXPECTED, NOT_READ),
    httpx.RequestNotRead: (ErrorCategory.UNEXPECTED, NOT_SENDABLE),
    httpx.StreamError: (ErrorCategory.UNEXPECTED, NOT_SENDABLE),
}

_ERROR_TYPES: Mapping[ErrorCategory, type[SyncError]] = {
    ErrorCategory.TRANSIENT: RetryableError,
    ErrorCategory.RATE_LIMITED: RateLimitedError,
    ErrorCategory.DUPLICATE: DuplicateError,
    ErrorCategory.DATA_FORMAT: DataFormatError,
    ErrorCategory.MAPPING: MappingError,
    ErrorCategory.PERMISSION: PermissionDeniedError,
    ErrorCategory.UNEXPECTED: SyncError,
}

_RETRIED = frozenset({ErrorCategory.TRANSIENT, ErrorCategory.RATE_LIMITED})
#: the categories that say "the destination refused this payload": they allow a
#: correction sent under a revised key (``fix_data``, ``Operator.edit``)
_REJECTIONS = frozenset({ErrorCategory.DATA_FORMAT, ErrorCategory.MAPPING})


def _cannot_reject(status: int) -> bool:
    """Statuses whose response cannot mean "this payload was refused"."""
    return status >= 500 or status in (408, 429)


_WITH_FIELD = frozenset({ErrorCategory.DUPLICATE, ErrorCategory.DATA_FORMAT, ErrorCategory.MAPPING})

# "idempotency key in use by a request still running" (Stripe, the IETF draft)
_IN_FLIGHT = re.compile(
    r"in[ _-]?progress|in[ _-]?flight|being processed|still processing|currently processing"
    r"|concurrent|outstanding|try again"
)
# "this key was used for a different request" (Stripe, Square, the IETF draft)
_KEY_REUSE = re.compile(
    r"idempoten\w*[^.]{0,80}?(?:re-?used?\b|reused|same (?:parameters|request|payload|body)"
    r"|different (?:request|payload|parameters|params|body)|mismatch|does(?: not|n't) match"
    r"|already (?:been )?used)"
    r"|key[_ -]reuse"
)
# "the record already exists" (Shopify's "has already been taken", Square, Rails ...)
_DUPLICATE = re.compile(
    r"already (?:been )?(?:taken|exists?|in use|registered|used)"
    r"|(?:is an? |a )duplicate\b"
    r"|duplicate (?:record|entry|entries|resource|customer|contact|user|email|value|key|object)"
    r"|not unique|must be unique|unique constraint|uniqueness"
)
SECRET_NAME = re.compile(
    r"(?i)auth|token|secret|passw|api[-_]?key|^key$|signature|session|cookie|credential"
)


class Verdict(NamedTuple):
    """A vendor preset's decision about a response (see ``_presets.py``):
    the category, a note for the message, a retry delay when the response
    carries no ``Retry-After``, and whether it says the idempotency key is
    still in flight (then the delay is the destination's ``in_flight_delay``)."""

    category: ErrorCategory
    note: str = ""
    retry_after: float | None = None
    in_flight: bool = False


_Row = Verdict

#: A vendor preset's body rules: ``(response, body) -> Verdict | None``.
VendorRules = Callable[[httpx.Response, Any], Verdict | None]
#: Where an error body names the offending field: ``body -> name | None``.
ErrorField = Callable[[Any], str | None]


# --- small pure helpers -------------------------------------------------------


def describe_request(request: httpx.Request) -> str:
    """``"POST pos.example.com/customers"``: method, host and path, never the
    query string or credentials."""
    url = request.url
    port = f":{url.port}" if url.port is not None else ""
    return f"{request.method} {url.host}{port}{url.path}"


def request_secrets(request: httpx.Request) -> set[str]:
    """Secret values in a request: credential headers (and the token after
    ``Bearer``), secret-looking query parameters, a password in the URL."""
    found: set[str] = set()
    for name, value in request.headers.items():
        if name.lower() in SECRET_HEADERS or SECRET_NAME.search(name):
            found.add(value)
            _scheme, _, token = value.partition(" ")
            found.add(token.strip())
    for name, value in request.url.params.multi_items():
        if SECRET_NAME.search(name):
            found.add(value)
    if request.url.password:
        found.add(request.url.password)
    return {s for s in found if len(s) >= 4}


def _request_of(exc: BaseException) -> httpx.Request | None:
    try:
        request = getattr(exc, "request", None)
    except RuntimeError:  # httpx raises when no request was attached
        return None
    return request if isinstance(request, httpx.Request) else None


def _response_request(response: httpx.Response) -> httpx.Request | None:
    try:
        return response.request
    except RuntimeError:
        return None


def _text(response: httpx.Response, secrets: Iterable[str]) -> str:
    raw = response.content[:_SCAN]
    if not raw:
        return ""
    try:
        text = raw.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    return redact(text, secrets)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON body, or None when it is empty or not JSON."""
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _request_id(response: httpx.Response) -> str | None:
    for name in REQUEST_ID_HEADERS:
        value = response.headers.get(name)
        if value:
            return str(value)[:100]
    return None


def make_error(
    category: ErrorCategory,
    message: str,
    *,
    field: str | None = None,
    retry_after: float | None = None,
    details: dict[str, Any] | None = None,
    remote_field: str | None = None,
) -> SyncError:
    """The exception class of ``category`` (``SyncError`` for UNEXPECTED)."""
    return _ERROR_TYPES[category](
        message,
        field=field,
        retry_after=retry_after if category in _RETRIED else None,
        details=details,
        remote_field=remote_field,
    )


def response_of(error: BaseException) -> httpx.Response | None:
    """The HTTP response behind an error raised by an ``HttpDestination``, if any.

    Handy in ``resolve_duplicate(event, error)`` hooks: the 409/422 body often
    names the existing record. Follows ``__cause__`` / ``__context__``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx.HTTPStatusError):
            return current.response
        current = current.__cause__ or current.__context__
    return None


# --- the field a body blames ------------------------------------------------------


def _normalize_field(name: str) -> str:
    """``shipping[address][line1]`` -> ``shipping.address.line1``; ``items[0]`` stays."""
    name = re.sub(r"\[([^\]\d][^\]]*)\]", r".\1", name.strip())
    return name.strip(".")


def _join_path(parts: Sequence[Any]) -> str | None:
    out = ""
    for part in parts:
        if isinstance(part, bool):
            return None
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part:
            out += f".{part}" if out else part
        else:
            return None
    return _normalize_field(out) or None


def _name(value: Any) -> str | None:
    if isinstance(value, str):
        return _normalize_field(value) or None
    if isinstance(value, (list, tuple)) and value:
        return _join_path(value)
    return None


def _pointer(pointer: Any) -> str | None:
    """JSON:API ``source.pointer``: ``/data/attributes/lines/2/sku`` -> ``lines[2].sku``."""
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        return None
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    if parts[:2] in (["data", "attributes"], ["data", "relationships"]):
        parts = parts[2:]
    elif parts[:1] == ["data"]:
        parts = parts[1:]
    return _join_path([int(p) if p.isascii() and p.isdigit() else p for p in parts])


def _from_item(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    for key in ("field", "param", "attribute", "property"):
        found = _name(item.get(key))
        if found:
            return found
    source = item.get("source")
    if isinstance(source, dict):
        found = _pointer(source.get("pointer")) or _name(source.get("parameter"))
        if found:
            return found
    loc = item.get("loc")  # FastAPI / pydantic
    if isinstance(loc, (list, tuple)) and loc:
        parts = list(loc)
        if parts and parts[0] in ("body", "query", "path", "header"):
            parts = parts[1:]
        return _join_path(parts)
    return None


def field_from_body(body: Any) -> str | None:
    """The payload field an error body blames, as a dotted path, or None.

    Knows Shopify (``{"errors": {"email": ["has already been taken"]}}``),
    Stripe (``{"error": {"param": "email"}}``), Square
    (``{"errors": [{"field": "email_address"}]}``), JSON:API
    (``source.pointer``), FastAPI/pydantic (``detail[].loc``) and GraphQL
    ``userErrors[].field``.
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        found = _from_item(error)
        if found:
            return found
    errors = body.get("errors")
    if isinstance(errors, dict):
        for key in errors:
            if isinstance(key, str) and key not in ("base", "message", "detail"):
                return _normalize_field(key) or None
    if isinstance(errors, list):
        for item in errors:
            found = _from_item(item)
            if found:
                return found
    detail = body.get("detail")
    if isinstance(detail, list):
        for item in detail:
            found = _from_item(item)
            if found:
                return found
    data = body.get("data")
    if isinstance(data, dict):
        for value in data.values():
            user_errors = value.get("userErrors") if isinstance(value, dict) else None
            if isinstance(user_errors, list):
                for item in user_errors:
                    found = _from_item(item)
                    if found:
                        return found
    return _from_item(body)


# --- 402/403: one request's failure, or the account's? ----------------------------------

#: Error types/categories that name a failure of one request, not of the account
#: (Stripe's ``card_error``, Square's ``PAYMENT_METHOD_ERROR``).
PER_REQUEST_TYPES = frozenset({"card_error", "payment_method_error"})
# card-decline codes (Stripe's error codes, Square's PAYMENT_METHOD_ERROR codes):
# a code naming the card itself (a whole word: card, cvc, cvv, pan, pin), or one
# of these; never an account's failure such as ``token_expired`` or
# ``account_declined``, which must pause the destination
_CARD_WORDS = frozenset({"card", "cards", "cvc", "cvv", "pan", "pin"})
_CARD_CODES = frozenset(
    {
        "insufficient_funds",
        "generic_decline",
        "processing_error",
        "authentication_required",
        "incorrect_number",
        "incorrect_zip",
        "incorrect_address",
        "invalid_number",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_expiration",
        "expiration_failure",
        "bad_expiration",
        "postal_code_invalid",
        "invalid_postal_code",
        "address_verification_failure",
        "transaction_limit",
        "allowable_pin_tries_exceeded",
    }
)


def _card_code(code: str) -> bool:
    """Whether an error code names a declined or mistyped card (Stripe's
    ``card_declined``, ``expired_card``, ``incorrect_cvc``; Square's
    ``CVV_FAILURE``, ``GENERIC_DECLINE`` ...)."""
    code = code.strip().lower().replace("-", "_")
    return code in _CARD_CODES or not _CARD_WORDS.isdisjoint(code.split("_"))


# "the record this request refers to does not exist" (Stripe's resource_missing)
_MISSING_REFERENCE = re.compile(r"resource_missing|not[_ ]found|no[_ ]such")


def _error_items(body: Any) -> list[dict[str, Any]]:
    """The error objects of a body: Stripe's ``error``, a list of ``errors``."""
    if not isinstance(body, dict):
        return []
    items: list[dict[str, Any]] = []
    error = body.get("error")
    if isinstance(error, dict):
        items.append(error)
    errors = body.get("errors")
    if isinstance(errors, list):
        items.extend(item for item in errors if isinstance(item, dict))
    return items


def per_request_error(body: Any) -> ErrorCategory | None:
    """What a 402/403 body means when it names a failure of *this* request: a
    declined card, an invalid parameter (DATA_FORMAT), a missing reference
    (MAPPING); None when it names none (the account's failure: PERMISSION).

    A per-request error has a field (``param``, ``field``), a per-request
    type (Stripe ``card_error``, Square ``PAYMENT_METHOD_ERROR``) or a
    card-decline code (``card_declined``, ``expired_card`` ...).
    """
    for item in _error_items(body):
        code = str(item.get("code") or "").lower()
        kind = str(item.get("type") or item.get("category") or "").lower()
        named = _from_item(item) is not None
        if _MISSING_REFERENCE.search(code) and named:
            return ErrorCategory.MAPPING
        if named or kind in PER_REQUEST_TYPES or (code and _card_code(code)):
            return ErrorCategory.DATA_FORMAT
    return None


# --- mapping the API's field names to payload paths -----------------------------------

#: ``field_map``: the API's field name -> the payload path it came from, or a
#: callable doing the same (None: unmapped).
FieldMap = Mapping[str, str] | Callable[[str], str | None]


def _field_mapper(field_map: FieldMap | None) -> Callable[[str], str | None] | None:
    if field_map is None:
        return None
    if callable(field_map):
        return field_map
    if not isinstance(field_map, Mapping):
        raise TypeError(f"field_map must be a mapping or a callable, got {field_map!r}")
    table: dict[str, str] = {}
    for remote, local in field_map.items():
        if not isinstance(remote, str) or not isinstance(local, str) or not remote or not local:
            raise TypeError(f"field_map maps API names to payload paths (str), got {remote!r}")
        table[_normalize_field(remote)] = local
    return table.get


# --- GraphQL ------------------------------------------------------------------------

_GRAPHQL_CODES: Mapping[str, ErrorCategory] = {
    "THROTTLED": ErrorCategory.RATE_LIMITED,
    "RATE_LIMITED": ErrorCategory.RATE_LIMITED,
    "TOO_MANY_REQUESTS": ErrorCategory.RATE_LIMITED,
    "UNAUTHENTICATED": ErrorCategory.PERMISSION,
    "UNAUTHORIZED": ErrorCategory.PERMISSION,
    "FORBIDDEN": ErrorCategory.PERMISSION,
    "ACCESS_DENIED": ErrorCategory.PERMISSION,
    "INTERNAL_SERVER_ERROR": ErrorCategory.TRANSIENT,
    "SERVICE_UNAVAILABLE": ErrorCategory.TRANSIENT,
    "TIMEOUT": ErrorCategory.TRANSIENT,
    "NOT_FOUND": ErrorCategory.MAPPING,
}


def graphql_classifier(response: httpx.Response, body: Any) -> ErrorCategory | None:
    """A ``classify_body`` for GraphQL APIs, which report errors with a 200.

    Top-level ``errors`` are classified by ``extensions.code`` (THROTTLED:
    RATE_LIMITED, UNAUTHENTICATED/FORBIDDEN/ACCESS_DENIED: PERMISSION,
    INTERNAL_SERVER_ERROR: TRANSIENT, NOT_FOUND: MAPPING, anything else
    DATA_FORMAT); ``data.<mutation>.userErrors`` (Shopify's style) are
    DUPLICATE when they say "already taken/exists", else DATA_FORMAT.
    """
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        found: list[ErrorCategory] = []
        for item in errors:
            ext = item.get("extensions") if isinstance(item, dict) else None
            code = str(ext.get("code", "")).upper() if isinstance(ext, dict) else ""
            found.append(_GRAPHQL_CODES.get(code, ErrorCategory.DATA_FORMAT))
        for category in (
            ErrorCategory.PERMISSION,
            ErrorCategory.RATE_LIMITED,
            ErrorCategory.TRANSIENT,
            ErrorCategory.MAPPING,
        ):
            if category in found:
                return category
        return ErrorCategory.DATA_FORMAT
    data = body.get("data")
    if isinstance(data, dict):
        for value in data.values():
            user_errors = value.get("userErrors") if isinstance(value, dict) else None
            if isinstance(user_errors, list) and user_errors:
                text = json.dumps(user_errors).lower()
                if _DUPLICATE.search(text):
                    return ErrorCategory.DUPLICATE
                return ErrorCategory.DATA_FORMAT
    return None


# --- the classifier -----------------------------------------------------------------


class HttpClassifier:
    """Turns HTTP responses and httpx exceptions into this library's errors.

    Pure (no I/O): ``now`` is passed in. ``HttpDestination`` builds one from
    its options; use it directly in an adapter of your own.

    Args:
        body: the adapter's body classifier (see :data:`BodyClassifier`); a
            decision it makes is final (no override header changes it).
        should_retry_headers: vendor override headers, first found wins;
            they adjust the table's row only.
        status_categories: per-status overrides of the table (e.g.
            ``{423: ErrorCategory.DATA_FORMAT}``), below the body classifier.
        max_retry_after: cap of a ``Retry-After`` (seconds).
        in_flight_delay: the retry delay when a 409 says the idempotency key
            is still in flight.
        secrets: strings never shown in messages (tokens, API keys).
        vendor: a preset's body rules, consulted after ``body`` (their
            decision is final too).
        error_field: where the API's error bodies name the field (default
            :func:`field_from_body`).
        field_map: the API's field names -> payload paths (a mapping or a
            callable); errors get ``field=`` the payload path and
            ``remote_field=`` the API's name.
        retry_after_default: the wait after a 429 without ``Retry-After``
            (None: the retry policy's backoff decides).
    """

    def __init__(
        self,
        *,
        body: BodyClassifier | None = None,
        should_retry_headers: Sequence[str] = SHOULD_RETRY_HEADERS,
        status_categories: Mapping[int, ErrorCategory] | None = None,
        max_retry_after: float = 3600.0,
        in_flight_delay: float = 1.0,
        secrets: Iterable[str] = (),
        vendor: VendorRules | None = None,
        error_field: ErrorField | None = None,
        field_map: FieldMap | None = None,
        retry_after_default: float | None = None,
    ) -> None:
        if isinstance(should_retry_headers, str):
            should_retry_headers = (should_retry_headers,)
        self.body = body
        self.vendor = vendor
        self.error_field: ErrorField = error_field if error_field is not None else field_from_body
        self.map_field = _field_mapper(field_map)
        self.should_retry_headers = tuple(should_retry_headers)
        self.status_categories = {
            int(code): ErrorCategory(category)
            for code, category in (status_categories or {}).items()
        }
        if max_retry_after < 0 or in_flight_delay < 0:
            raise ValueError("max_retry_after and in_flight_delay must be >= 0")
        if retry_after_default is not None and retry_after_default < 0:
            raise ValueError("retry_after_default must be >= 0")
        self.max_retry_after = float(max_retry_after)
        self.in_flight_delay = float(in_flight_delay)
        self.retry_after_default = retry_after_default
        self.secrets = frozenset(s for s in secrets if s and len(s) >= 4)

    # -- pieces ---------------------------------------------------------------

    def retry_after(self, response: httpx.Response, now: datetime) -> float | None:
        """Seconds from the ``Retry-After`` header (integer, decimal or HTTP
        date; a past date means 0), capped at ``max_retry_after``.

        An HTTP date is measured from the response's own ``Date`` header when
        there is one, so a skewed local clock does not stretch the wait.
        """
        value = response.headers.get("retry-after")
        if value is None:
            return None
        base = now
        server_date = response.headers.get("date")
        if server_date:
            try:
                parsed = email.utils.parsedate_to_datetime(server_date)
            except (TypeError, ValueError, IndexError):
                parsed = None
            if parsed is not None:
                base = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        seconds = parse_retry_after(value, base)
        return None if seconds is None else min(seconds, self.max_retry_after)

    def should_retry(self, response: httpx.Response) -> tuple[bool, str] | None:
        """The vendor override: (retry?, ``"Header: value"``), or None."""
        for name in self.should_retry_headers:
            value = response.headers.get(name)
            if value is None:
                continue
            flag = value.strip().lower()
            if flag in ("true", "1", "yes"):
                return True, f"{name}: {value.strip()}"
            if flag in ("false", "0", "no"):
                return False, f"{name}: {value.strip()}"
        return None

    def _table(self, status: int, text: str, body: Any) -> _Row:
        if status in self.status_categories:
            return _Row(self.status_categories[status])
        if 300 <= status < 400:
            return _Row(ErrorCategory.UNEXPECTED, "a redirect, which is not followed")
        if status in (400, 409, 413, 422):
            lowered = text.lower()
            if status == 409 and _IN_FLIGHT.search(lowered):
                return _Row(
                    ErrorCategory.TRANSIENT,
                    "idempotency key still in flight; retrying shortly",
                    in_flight=True,
                )
            if _KEY_REUSE.search(lowered):
                return _Row(
                    ErrorCategory.UNEXPECTED,
                    "idempotency key reused for a different request: a key bug, "
                    "never fixed under the same key",
                )
            if status == 409:
                return _Row(ErrorCategory.DUPLICATE)
            if _DUPLICATE.search(lowered):
                return _Row(ErrorCategory.DUPLICATE, "the record already exists")
            return _Row(ErrorCategory.DATA_FORMAT)
        if status in (402, 403):
            per_request = per_request_error(body)
            if per_request is not None:
                return _Row(
                    per_request,
                    "an error of this request only; the destination is not paused",
                )
            return _Row(ErrorCategory.PERMISSION)
        return _Row(category_for_status(status) or ErrorCategory.UNEXPECTED)

    def _secrets(self, request: httpx.Request | None, extra: Iterable[str]) -> set[str]:
        found = set(self.secrets)
        found.update(s for s in extra if s and len(s) >= 4)
        if request is not None:
            found |= request_secrets(request)
        return found

    def _message(
        self, response: httpx.Response, notes: Sequence[str], text: str, secrets: set[str]
    ) -> str:
        request = _response_request(response)
        where = describe_request(request) if request is not None else "the destination"
        message = f"HTTP {response.status_code} {response.reason_phrase} from {where}".rstrip()
        notes = [n for n in notes if n]
        if notes:
            message += f" ({'; '.join(notes)})"
        excerpt = _excerpt(text)
        if excerpt:
            message += f": {excerpt}"
        request_id = _request_id(response)
        if request_id:
            message += f" [request id {request_id}]"
        return redact(message, secrets)

    # -- the two entry points ------------------------------------------------------

    def response_error(
        self, response: httpx.Response, *, now: datetime, secrets: Iterable[str] = ()
    ) -> SyncError | None:
        """The error a response means, or None for a success.

        The response body must have been read.
        """
        status = response.status_code
        if self.body is None and 200 <= status < 300:
            return None  # the common path: no body to decode
        body = json_body(response)
        verdict = self.body(response, body) if self.body is not None else None
        if verdict is not None and not isinstance(verdict, (ErrorCategory, SyncError)):
            raise TypeError(
                "classify_body must return an ErrorCategory, a SyncError or None, "
                f"got {type(verdict).__name__}"
            )
        if verdict is None and 200 <= status < 300:
            return None
        hidden = self._secrets(_response_request(response), secrets)
        text = _text(response, hidden)

        # an explicit decision (yours, then the preset's) is final; the vendor
        # override header only adjusts the table's row
        if isinstance(verdict, SyncError):
            row = _Row(verdict.category or ErrorCategory.UNEXPECTED)
        elif isinstance(verdict, ErrorCategory):
            row = _Row(verdict)
        else:
            vendor = self.vendor(response, body) if self.vendor is not None else None
            row = vendor if vendor is not None else self._override(response, status, text, body)
        if row.category in _REJECTIONS and _cannot_reject(status):
            # a 5xx leaves the outcome unknown (the request may have been
            # applied), a 408/429 was not judged: a body that says "bad data"
            # must not invite a correction re-sent under a new key
            table = self._override(response, status, text, body)
            said = (
                f"the body was classified {row.category.value}, but HTTP {status} "
                "does not reject the payload: the status decides"
            )
            row = table._replace(note="; ".join(n for n in (table.note, said) if n))
            verdict = None
        category, notes = row.category, [row.note]

        retry_after = None
        if category in _RETRIED:
            retry_after = self.retry_after(response, now)
            if retry_after is None:
                retry_after = self.in_flight_delay if row.in_flight else row.retry_after
            if retry_after is None and category is ErrorCategory.RATE_LIMITED:
                retry_after = self.retry_after_default
        if isinstance(verdict, SyncError):
            if category is (verdict.category or ErrorCategory.UNEXPECTED):
                if verdict.retry_after is None and category in _RETRIED:
                    verdict.retry_after = retry_after
                return verdict
            field, remote = verdict.field, verdict.remote_field
            message = redact(f"{verdict}; {'; '.join(n for n in notes if n)}", hidden)
        else:
            field = remote = None
            if category in _WITH_FIELD:
                field, remote = self._field(body)
                if remote is not None and field != remote:
                    notes.append(f"payload field {field!r}, the API's {remote!r}")
            message = self._message(response, notes, text, hidden)
        details: dict[str, Any] = {"status": status, "body": _excerpt(text)}
        request_id = _request_id(response)
        if request_id:
            details["request_id"] = request_id
        return make_error(
            category,
            message,
            field=field,
            retry_after=retry_after,
            details=details,
            remote_field=remote,
        )

    def _override(self, response: httpx.Response, status: int, text: str, body: Any) -> _Row:
        """The table's row, adjusted by a vendor override header."""
        row = self._table(status, text, body)
        override = self.should_retry(response)
        if override is None:
            return row
        retry, label = override
        if retry and row.category not in _RETRIED:
            note = "; ".join(n for n in (row.note, label) if n)
            return row._replace(category=ErrorCategory.TRANSIENT, note=note)
        if not retry and row.category in _RETRIED:
            note = (
                f"{label}: the destination says a retry will not succeed; the outcome is "
                "unknown, so it is not corrected and re-sent under a new key"
            )
            return _Row(ErrorCategory.UNEXPECTED, note)
        return row

    def _field(self, body: Any) -> tuple[str | None, str | None]:
        """(payload path, the API's name) of the field an error body blames."""
        try:
            remote = self.error_field(body)
        except (AttributeError, LookupError, TypeError, ValueError):
            remote = None
        if remote is None and self.error_field is not field_from_body:
            remote = field_from_body(body)
        if not remote:
            return None, None
        remote = _normalize_field(str(remote)) or str(remote)
        local = self.map_field(remote) if self.map_field is not None else None
        return (local if isinstance(local, str) and local else remote), remote

    def transport_error(
        self, exc: Exception, *, now: datetime, secrets: Iterable[str] = ()
    ) -> SyncError:
        """The error an httpx exception means (a network failure, a timeout ...)."""
        if isinstance(exc, httpx.HTTPStatusError):
            found = self.response_error(exc.response, now=now, secrets=secrets)
            if found is not None:
                return found
        category, note = ErrorCategory.UNEXPECTED, OUTCOME_UNKNOWN
        for cls in type(exc).__mro__:
            if cls in EXCEPTION_TABLE:
                category, note = EXCEPTION_TABLE[cls]
                break
        request = _request_of(exc)
        where = describe_request(request) if request is not None else "the request"
        detail = " ".join(str(exc).split())
        message = f"{type(exc).__name__} on {where}: {note}"
        if detail:
            message += f" ({detail})"
        message = redact(message, self._secrets(request, secrets))
        return make_error(
            category,
            message,
            details={"exception": type(exc).__name__, "sent": _SENT.get(note)},
        )

    def undecodable(
        self, response: httpx.Response, *, reason: str, secrets: Iterable[str] = ()
    ) -> SyncError:
        """UNEXPECTED for a 2xx whose body could not be read as a result."""
        hidden = self._secrets(_response_request(response), secrets)
        text = _text(response, hidden)
        return make_error(
            ErrorCategory.UNEXPECTED,
            self._message(response, [reason], text, hidden),
            details={"status": response.status_code, "body": _excerpt(text)},
        )

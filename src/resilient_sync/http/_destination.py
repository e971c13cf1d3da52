"""``HttpDestination`` and ``AsyncHttpDestination``: twins over one I/O-free base.

The base builds requests, classifies responses and exceptions, and keeps the
rate limiter; the twins only send (``httpx.Client`` / ``httpx.AsyncClient``)
and wait (the clock's ``sleep`` / ``asleep``), as httpx's own ``Client`` and
``AsyncClient`` share ``BaseClient``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, TypedDict
from urllib.parse import parse_qsl, urlsplit

import httpx
from typing_extensions import Self, Unpack

from .._circuit import CircuitBreaker
from .._clock import SystemClock
from .._errors import DataFormatError, RetryableError, SyncError
from .._model import DeliveryContext, ErrorCategory, Event
from .._protocols import Clock
from .._redact import SECRET_HEADERS, redact
from .._version import __version__
from ._classify import (
    SECRET_NAME,
    SHOULD_RETRY_HEADERS,
    BodyClassifier,
    FieldMap,
    HttpClassifier,
    describe_request,
)
from ._deadline import DEADLINE_PASSED, AsyncSender, SyncSender, install, timeout_total
from ._presets import Encoding, Preset, preset_named
from ._ratelimit import RateLimit, RateLimiter
from ._request import (
    BODYLESS_METHODS,
    BuildRequest,
    HttpRequest,
    PathTemplate,
    encode_body,
    join_url,
)

__all__ = ["AsyncHttpDestination", "HttpDestination", "HttpOptions"]

logger = logging.getLogger("resilient_sync.http")

#: Used when the destination creates its own client.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
USER_AGENT = f"resilient-sync/{__version__} httpx/{httpx.__version__}"
DEFAULT_CIRCUIT_BREAKER = CircuitBreaker()

#: Exceptions httpx raises while building or sending a request.
HTTPX_ERRORS: tuple[type[Exception], ...] = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpx.CookieConflict,
    httpx.StreamError,
)

#: ``read_result(response)``: the delivery's result from a 2xx response.
ReadResult = Callable[[httpx.Response], Any]
#: ``resolve_duplicate(event, error)``: the existing record's result, or None.
ResolveDuplicate = Callable[[Event, Exception], Any]
#: ``fix_data(event, error)``: a corrected event, or None.
FixData = Callable[[Event, Exception], Any]
#: ``find_existing(event, context)``: the existing record's result, or None.
FindExisting = Callable[[Event, DeliveryContext], Any]

#: What is left of a lease is never spent to its end: the outcome still has
#: to be recorded before another worker may claim the delivery (seconds).
LEASE_MARGIN = 0.5


class _Deadline(NamedTuple):
    at: float  # time.monotonic() when the request must be over
    total: float  # seconds it was given
    source: str  # "the timeout" or the lease


class _RedactingFilter(logging.Filter):
    """Redacts known secrets from httpx's own request log lines.

    httpx logs every request's full URL at INFO; an API key in the query
    string would end up in the application's logs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.secrets: tuple[str, ...] = ()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            merged = set(self.secrets) | {s for s in secrets if len(s) >= 4}
            self.secrets = tuple(sorted(merged, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to logging
            return True
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_HTTPX_LOG_FILTER = _RedactingFilter()
_filter_lock = threading.Lock()


#: the loggers httpx and httpcore write to (a filter on a logger applies to the
#: records logged on it only, not to its children's)
_HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def _guard_httpx_log(secrets: Iterable[str]) -> None:
    _HTTPX_LOG_FILTER.add(secrets)
    with _filter_lock:
        for name in _HTTP_LOGGERS:
            http_logger = logging.getLogger(name)
            if _HTTPX_LOG_FILTER not in http_logger.filters:
                http_logger.addFilter(_HTTPX_LOG_FILTER)


def _secret_values(items: Iterable[tuple[str, str]]) -> set[str]:
    found: set[str] = set()
    for name, value in items:
        if name.lower() in SECRET_HEADERS or SECRET_NAME.search(name):
            found.add(value)
            found.add(value.partition(" ")[2].strip())
    return {s for s in found if len(s) >= 4}


class HttpOptions(TypedDict, total=False):
    """Keyword options shared by :class:`HttpDestination` and
    :class:`AsyncHttpDestination` (see :class:`HttpDestination`)."""

    preset: str | Preset | None
    headers: Mapping[str, str] | None
    params: Mapping[str, str] | None
    timeout: float | httpx.Timeout | None
    build_request: BuildRequest | None
    read_result: ReadResult | None
    classify_body: BodyClassifier | None
    should_retry_headers: Sequence[str]
    status_categories: Mapping[int, ErrorCategory] | None
    idempotency_header: str | None
    idempotency_key_field: str | None
    encoding: Encoding
    field_map: FieldMap | None
    rate_limit: RateLimit | None
    circuit_breaker: CircuitBreaker | None
    find_existing: FindExisting | None
    resolve_duplicate: ResolveDuplicate | None
    fix_data: FixData | None
    clock: Clock | None
    secrets: Iterable[str]
    max_retry_after: float
    retry_after_default: float | None
    in_flight_delay: float


_OPTIONS = frozenset(HttpOptions.__optional_keys__)


class _BaseHttpDestination:
    """Configuration and every step that does no I/O."""

    #: ``find_existing(event, context)`` hook; absent (None) unless given or
    #: defined by a subclass, so the dispatcher knows whether there is one.
    find_existing: FindExisting | None = None
    #: ``resolve_duplicate(event, error)`` hook; absent (None) unless given or
    #: defined by a subclass, so the dispatcher knows whether there is one.
    resolve_duplicate: ResolveDuplicate | None = None
    #: ``fix_data(event, error)`` hook; absent (None) unless given or subclassed.
    fix_data: FixData | None = None
    #: Seconds kept free at the end of a delivery's lease (see :data:`LEASE_MARGIN`).
    lease_margin: float = LEASE_MARGIN

    def __init__(
        self,
        name: str,
        base_url: str | httpx.URL = "",
        path: str | Callable[[Event], str] = "",
        method: str = "POST",
        **options: Unpack[HttpOptions],
    ) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown options: {', '.join(unknown)}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"an HttpDestination needs a non-empty str name, got {name!r}")
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError(f"method must be an HTTP method like 'POST', got {method!r}")
        preset = preset_named(options.get("preset"))
        #: The vendor preset (None: none), with its pagination hints.
        self.preset = preset

        def pick(option: str, preset_value: Any, default: Any) -> Any:
            if option in options:
                return options[option]  # type: ignore[literal-required]
            return preset_value if preset is not None else default

        idempotency_header: str | None = pick(
            "idempotency_header",
            preset.idempotency_header if preset else None,
            "Idempotency-Key",
        )
        idempotency_key_field: str | None = pick(
            "idempotency_key_field", preset.idempotency_key_field if preset else None, None
        )
        if idempotency_header is None and idempotency_key_field is None:
            raise ValueError(
                "the idempotency key must reach the destination: give idempotency_header "
                "or idempotency_key_field"
            )
        encoding: Encoding = pick("encoding", preset.encoding if preset else "json", "json")
        if encoding not in ("json", "form"):
            raise ValueError(f"encoding must be 'json' or 'form', got {encoding!r}")
        build_request = options.get("build_request")
        read_result = options.get("read_result")
        classify_body = options.get("classify_body")
        find_existing = options.get("find_existing")
        resolve_duplicate = options.get("resolve_duplicate")
        fix_data = options.get("fix_data")
        for label, hook in (
            ("build_request", build_request),
            ("read_result", read_result),
            ("classify_body", classify_body),
            ("find_existing", find_existing),
            ("resolve_duplicate", resolve_duplicate),
            ("fix_data", fix_data),
        ):
            if hook is not None and not callable(hook):
                raise TypeError(f"{label} must be callable, got {hook!r}")
        rate_limit = options.get("rate_limit")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit, got {rate_limit!r}")
        circuit_breaker = options.get("circuit_breaker", DEFAULT_CIRCUIT_BREAKER)
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise TypeError(
                f"circuit_breaker must be a CircuitBreaker or None, got {circuit_breaker!r}"
            )
        self.name = name
        self.base_url = str(base_url)
        self.method = method.upper()
        self._path_fn: Callable[[Event], str] | None = None
        self._template: PathTemplate | None = None
        if callable(path):
            self._path_fn = path
        else:
            self._template = PathTemplate(path)
        self.headers = dict(options.get("headers") or {})
        self.params = dict(options.get("params") or {})
        self.timeout = options.get("timeout")
        self.encoding: Encoding = encoding
        self._build_request = build_request
        self._read_result = read_result
        self._classify_body = classify_body
        self.idempotency_header = idempotency_header
        self.idempotency_key_field = idempotency_key_field
        #: The client-side rate limiter (also slowed down by 429s).
        self.limiter = RateLimiter(rate_limit)
        #: Read by the dispatcher: this destination's circuit breaker settings.
        self.circuit_breaker = circuit_breaker
        if find_existing is not None:
            self.find_existing = find_existing
        if resolve_duplicate is not None:
            self.resolve_duplicate = resolve_duplicate
        if fix_data is not None:
            self.fix_data = fix_data
        clock = options.get("clock")
        self._clock_given = clock is not None
        self.clock: Clock = clock if clock is not None else SystemClock()

        hidden = {s for s in options.get("secrets", ()) if isinstance(s, str) and len(s) >= 4}
        hidden |= _secret_values(self.headers.items())
        hidden |= _secret_values(self.params.items())
        parts = urlsplit(self.base_url)
        if parts.password and len(parts.password) >= 4:
            hidden.add(parts.password)
        hidden |= _secret_values(parse_qsl(parts.query))
        self._secrets = hidden
        body_hook = None
        if classify_body is not None or (
            type(self).classify_body is not _BaseHttpDestination.classify_body
        ):
            body_hook = self.classify_body
        #: Turns responses and httpx exceptions into this library's errors.
        self.classifier = HttpClassifier(
            body=body_hook,
            should_retry_headers=pick(
                "should_retry_headers",
                preset.should_retry_headers if preset else None,
                SHOULD_RETRY_HEADERS,
            ),
            status_categories=options.get("status_categories"),
            max_retry_after=pick(
                "max_retry_after", preset.max_retry_after if preset else None, 3600.0
            ),
            in_flight_delay=pick(
                "in_flight_delay", preset.in_flight_delay if preset else None, 1.0
            ),
            secrets=hidden,
            vendor=preset.classify if preset else None,
            error_field=preset.error_field if preset else None,
            field_map=options.get("field_map"),
            retry_after_default=pick(
                "retry_after_default", preset.retry_after_default if preset else None, None
            ),
        )
        self._owns_client = False
        self._request_timeout: float | httpx.Timeout | None = None
        self._total: float | None = None

    def use_clock(self, clock: Clock) -> None:
        """Adopt the dispatcher's clock (the dispatcher calls this), unless a
        clock was given to the constructor: rate limits, ``Retry-After``
        dates and the lease's time left are then read on the clock the
        dispatcher schedules with."""
        if not self._clock_given:
            self.clock = clock

    @property
    def secrets(self) -> frozenset[str]:
        """The credential values this destination knows (its secret headers and
        parameters, the URL's password, ``secrets=``): the dispatcher redacts
        them from every result and message it records for this destination."""
        return frozenset(self._secrets)

    def _adopt_client(self, client: httpx.Client | httpx.AsyncClient, owned: bool) -> bool:
        """Take the client on; True when the deadline backend is installed in it."""
        self._owns_client = owned
        self._request_timeout = None if owned else self.timeout
        if owned or self.timeout is not None:
            self._total = timeout_total(
                self.timeout if self.timeout is not None else DEFAULT_TIMEOUT
            )
        else:
            self._total = timeout_total(client.timeout)
        more = _secret_values(client.headers.items()) | _secret_values(client.params.multi_items())
        self._secrets |= more
        self.classifier.secrets = frozenset(self.classifier.secrets | more)
        _guard_httpx_log(self._secrets)
        # the deadline backend goes under httpx's standard transports, yours
        # too (it changes nothing outside this destination's own requests); a
        # custom transport is bounded from outside instead
        return install(client)

    # -- hooks (override in a subclass, or pass them to the constructor) --------

    def build_request(self, event: Event) -> HttpRequest:
        """The request for ``event``; default: the payload as the JSON body
        (the form body with ``encoding="form"``, as the Stripe preset sets).

        Must depend on the event only (never on the time or the attempt), so
        a retry sends the same bytes. A ``KeyError`` it raises for a missing
        payload key becomes a DATA_FORMAT error naming that field (so
        ``fix_data`` or a person can supply it); raise
        :class:`~resilient_sync.DataFormatError` or
        :class:`~resilient_sync.MappingError` yourself for anything subtler.
        """
        if self._build_request is not None:
            return self._build_request(event)
        if self.method in BODYLESS_METHODS:
            return HttpRequest()
        if self.encoding == "form":
            return HttpRequest(form=event.payload)
        return HttpRequest(json=event.payload)

    def read_result(self, response: httpx.Response) -> Any:
        """The delivery's result from a 2xx response; default: the JSON body
        (None when empty). A body that does not decode is UNEXPECTED."""
        if self._read_result is not None:
            return self._read_result(response)
        if not response.content:
            return None
        return response.json()

    def classify_body(
        self, response: httpx.Response, body: Any
    ) -> ErrorCategory | SyncError | None:
        """Decide from the body (see :data:`~resilient_sync.http.BodyClassifier`);
        default: no opinion, the table decides."""
        if self._classify_body is not None:
            return self._classify_body(response, body)
        return None

    # -- I/O-free steps ----------------------------------------------------------------

    def _path(self, event: Event, key: str) -> str:
        if self._path_fn is None:
            return self._template.render(event, key=key) if self._template else ""
        path = self._path_fn(event)
        if not isinstance(path, str):
            raise TypeError(f"the path callable must return a str, got {type(path).__name__}")
        return path

    def _prepare(self, event: Event, key: str) -> dict[str, Any]:
        """Keyword arguments for ``client.build_request`` (the same on every attempt)."""
        try:
            spec = self.build_request(event)
        except KeyError as exc:  # the mapping needs a field this event lacks
            name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
            if name is None:
                raise
            raise DataFormatError(
                f"build_request needs {name!r}, which the event does not have", field=name
            ) from exc
        if not isinstance(spec, HttpRequest):
            raise TypeError(f"build_request must return an HttpRequest, got {type(spec).__name__}")
        path = spec.path if spec.path is not None else self._path(event, key)
        content, content_type = encode_body(spec, key=key, key_field=self.idempotency_key_field)
        headers = dict(self.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        headers.update(spec.headers)
        if self.idempotency_header is not None:
            headers[self.idempotency_header] = key
        kwargs: dict[str, Any] = {
            "method": spec.method or self.method,
            "url": join_url(self.base_url, path),
            "content": content,
            "headers": headers,
        }
        params = {**self.params, **(spec.params or {})}
        if params:  # merged into the URL's own query (httpx would replace it)
            kwargs["url"] = httpx.URL(kwargs["url"]).copy_merge_params(params)
        if self._request_timeout is not None:
            kwargs["timeout"] = self._request_timeout
        return kwargs

    def _plain(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        form: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        content, content_type = encode_body(
            HttpRequest(method=method, json=json, form=form), key="", key_field=None
        )
        merged = dict(self.headers)
        if content_type is not None:
            merged["Content-Type"] = content_type
        merged.update(headers or {})
        kwargs: dict[str, Any] = {
            "method": method.upper(),
            "url": join_url(self.base_url, path),
            "content": content,
            "headers": merged,
        }
        all_params = {**self.params, **(params or {})}
        if all_params:  # merged into the URL's own query (httpx would replace it)
            kwargs["url"] = httpx.URL(kwargs["url"]).copy_merge_params(all_params)
        if self._request_timeout is not None:
            kwargs["timeout"] = self._request_timeout
        return kwargs

    def _deadline(self, context: DeliveryContext | None, now: datetime) -> _Deadline | None:
        """When this request must be over (``time.monotonic()``): the timeout's
        total, or less when the delivery's lease ends sooner (minus
        :attr:`lease_margin`); None when nothing bounds it."""
        total, source = self._total, "the timeout"
        lease_end = context.lease_expires_at if context is not None else None
        if lease_end is not None:
            left = (lease_end - now).total_seconds() - self.lease_margin
            if left <= 0:
                raise RetryableError(
                    f"{self.name}: the delivery's lease ends in "
                    f"{max(left + self.lease_margin, 0.0):.1f}s, too soon for a request to "
                    "finish; nothing was sent",
                    sent=False,
                    details={"sent": False},
                )
            if total is None or left < total:
                total, source = left, "what was left of the delivery's lease"
        if total is None:
            return None
        return _Deadline(time.monotonic() + total, total, source)

    def _transport_error(self, exc: Exception, deadline: _Deadline | None = None) -> SyncError:
        error = self.classifier.transport_error(exc, now=self.clock.now())
        if (
            deadline is not None
            and isinstance(exc, httpx.TimeoutException)
            and (DEADLINE_PASSED in str(exc) or time.monotonic() >= deadline.at - 0.01)
        ):
            error.message = (
                f"{error.message} [total deadline {deadline.total:.1f}s: {deadline.source}]"
            )
            error.args = (error.message,)
            error.details["deadline"] = round(deadline.total, 3)
        return error

    def _check(self, response: httpx.Response) -> None:
        """Raise the error ``response`` means (slowing the limiter on a 429)."""
        now = self.clock.now()
        error = self.classifier.response_error(response, now=now)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s: %s -> %s",
                self.name,
                describe_request(response.request),
                response.status_code,
            )
        if error is None:
            self.limiter.succeeded()
            return
        if error.category is ErrorCategory.RATE_LIMITED:
            self.limiter.throttled(now, error.retry_after)
        cause = httpx.HTTPStatusError(
            f"HTTP {response.status_code} from {describe_request(response.request)}",
            request=response.request,
            response=response,
        )
        raise error from cause

    def _outcome(self, response: httpx.Response) -> Any:
        self._check(response)
        try:
            return self.read_result(response)
        except SyncError:
            raise
        except ValueError as exc:
            raise self.classifier.undecodable(
                response, reason=f"the body could not be read as a result: {type(exc).__name__}"
            ) from exc

    def __repr__(self) -> str:
        parts = urlsplit(self.base_url)
        port = f":{parts.port}" if parts.port is not None else ""
        base = f"{parts.scheme}://{parts.hostname}{port}{parts.path}" if parts.hostname else ""
        path = self._template.template if self._template is not None else "<callable>"
        return f"{type(self).__name__}(name={self.name!r}, {self.method} {base}{path})"


class HttpDestination(_BaseHttpDestination):
    """A destination that is an HTTP API, on an ``httpx.Client``.

    Each delivery is one request: ``method`` to ``base_url`` + ``path`` with
    the payload as canonical JSON (same bytes on every retry) and the
    idempotency key in the ``Idempotency-Key`` header; the response is
    classified by the HTTP table of ``docs/concepts/error-taxonomy.md`` (see
    ``resilient_sync.http``). A request never outlives its ``timeout`` in
    total, nor the delivery's lease.

    Args:
        name: the destination's name in the queue.
        base_url: e.g. ``"https://pos.example.com/api/v2"``.
        path: a path (template) such as ``"/customers"`` or
            ``"/customers/{payload[customer_id]}"`` (names: ``id``, ``type``,
            ``ordering_key``, ``key``, ``payload[...]``; values are
            percent-encoded, a missing one is a DATA_FORMAT error), or a
            callable ``event -> path``.
        method: the HTTP method.
        client: your own ``httpx.Client`` (auth, proxies, timeouts, limits);
            it is yours to close. Without it the destination creates one
            (with ``transport``, ``auth`` and ``timeout``) and closes it in
            :meth:`close`. Either way, httpx's standard transports get the
            deadline network backend (inert outside this destination's
            requests); a custom transport is bounded from outside (a helper
            thread stops waiting at the deadline, the request itself runs
            until the transport ends it).
        transport: for the client the destination creates (e.g.
            ``httpx.MockTransport(handler)`` in tests).
        auth: for the client the destination creates.
        preset: ``"stripe"``, ``"shopify"``, ``"square"`` or a
            :class:`~resilient_sync.http.Preset`: the vendor's body rules,
            error fields, idempotency key placement, encoding, override
            headers and ``Retry-After`` handling in one argument (explicit
            options override it); ``dest.preset.pagination`` has its paging.
        headers: added to every request (their secret values are redacted).
        params: query parameters added to every request (an API key here is
            redacted from messages and from httpx's log lines).
        timeout: seconds or an ``httpx.Timeout`` (default 10s, 5s to
            connect); also the request's total (the longest part of an
            ``httpx.Timeout``): a server that drips bytes cannot stretch it.
        build_request: ``event -> HttpRequest`` (default: the payload as the
            JSON body, or the form body with ``encoding="form"``).
        read_result: ``response -> result`` (default: the JSON body or None).
        classify_body: ``(response, body) -> ErrorCategory | SyncError | None``,
            consulted before the table (e.g. :func:`graphql_classifier`); a
            decision it makes is final (no override header changes it).
        should_retry_headers: vendor override headers (default
            ``Stripe-Should-Retry``, ``X-Should-Retry``), applied to the
            table's row: ``true`` retries, ``false`` makes a failure that
            would be retried UNEXPECTED (outcome unknown, not re-sent under a
            revised key).
        status_categories: per-status overrides of the table.
        idempotency_header: the header that carries the key (None: none).
        idempotency_key_field: also put the key into the JSON (or form) body
            at this dotted path (Square's ``"idempotency_key"``).
        encoding: ``"json"`` (default) or ``"form"`` for the default body.
        field_map: the API's field names -> payload paths, e.g.
            ``{"tax_id_data[0].value": "vat_number"}``, or a callable
            ``api_name -> path | None``: errors carry ``field=`` the payload
            path (for ``fix_data`` and ``Operator.edit``) and
            ``remote_field=`` the API's name.
        rate_limit: a client-side :class:`RateLimit` (steady rate and burst).
        circuit_breaker: the dispatcher's circuit breaker settings for this
            destination (default ``CircuitBreaker()``: 5 transient failures in
            a row hold the destination 30s, then one probe); None leaves it to
            the dispatcher's ``circuit=``.
        find_existing: ``(event, context) -> result | None`` hook (or define
            the method): look before you create; a result links the delivery
            to the record found, None creates it.
        resolve_duplicate: ``(event, error) -> result | None`` hook (or define
            the method in a subclass); :func:`response_of` gives the response.
        fix_data: ``(event, error) -> Event | None`` hook (or a method).
        clock: the clock for rate limiting, ``Retry-After`` and the lease's
            time left; default: the dispatcher's (see :meth:`use_clock`), or
            the system clock.
        secrets: more strings never to show in messages or logs.
        max_retry_after: cap of a ``Retry-After`` (seconds).
        retry_after_default: the wait after a 429 that has no ``Retry-After``
            (None: the retry policy's backoff).
        in_flight_delay: retry delay when a 409 says the key is in flight.
    """

    client: httpx.Client

    def __init__(
        self,
        name: str,
        base_url: str | httpx.URL = "",
        path: str | Callable[[Event], str] = "",
        method: str = "POST",
        *,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        **options: Unpack[HttpOptions],
    ) -> None:
        super().__init__(name, base_url, path, method, **options)
        if client is None:
            client = httpx.Client(
                transport=transport,
                auth=auth,
                timeout=self.timeout if self.timeout is not None else DEFAULT_TIMEOUT,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            )
            owned = True
        elif transport is not None or auth is not None:
            raise ValueError("give transport and auth to your own client, not to HttpDestination")
        else:
            owned = False
        self.client = client
        self._sender = SyncSender(client, native=self._adopt_client(client, owned), name=name)

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        """Send the event; return the result or raise the classified error."""
        now = self.clock.now()
        deadline = self._deadline(context, now)
        wait = self.limiter.reserve(now, destination=self.name)
        if wait > 0:
            self.clock.sleep(wait)
        request = self.client.build_request(**self._prepare(event, context.idempotency_key))
        try:
            response = self._sender.send(request, deadline.at if deadline else None)
        except HTTPX_ERRORS as exc:
            raise self._transport_error(exc, deadline) from exc
        return self._outcome(response)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        form: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        context: DeliveryContext | None = None,
    ) -> httpx.Response:
        """A request of your own, e.g. a lookup in ``find_existing`` or
        ``resolve_duplicate``.

        Uses the destination's base URL, headers, rate limit, deadline and
        error translation: returns a 2xx response, raises the classified
        error otherwise. Pass the hook's ``context`` (``find_existing`` has
        one) so the request also ends before the delivery's lease does.
        """
        now = self.clock.now()
        deadline = self._deadline(context, now)
        wait = self.limiter.reserve(now, destination=self.name)
        if wait > 0:
            self.clock.sleep(wait)
        request = self.client.build_request(
            **self._plain(method, path, params, json, headers, form)
        )
        try:
            response = self._sender.send(request, deadline.at if deadline else None)
        except HTTPX_ERRORS as exc:
            raise self._transport_error(exc, deadline) from exc
        self._check(response)
        return response

    def close(self) -> None:
        """Close the client if the destination created it (yours stays open)."""
        self._sender.close()
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncHttpDestination(_BaseHttpDestination):
    """The asyncio twin of :class:`HttpDestination`, on an ``httpx.AsyncClient``.

    Same options (``client`` is an ``httpx.AsyncClient``, ``transport`` an
    ``httpx.AsyncBaseTransport``); ``deliver`` and :meth:`request` are
    coroutines, so it needs the :class:`~resilient_sync.AsyncDispatcher` (the
    sync ``Dispatcher`` refuses it). Hooks may be plain or ``async def``. On
    a custom transport the total deadline cancels the request.
    """

    client: httpx.AsyncClient

    def __init__(
        self,
        name: str,
        base_url: str | httpx.URL = "",
        path: str | Callable[[Event], str] = "",
        method: str = "POST",
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        **options: Unpack[HttpOptions],
    ) -> None:
        super().__init__(name, base_url, path, method, **options)
        if client is None:
            client = httpx.AsyncClient(
                transport=transport,
                auth=auth,
                timeout=self.timeout if self.timeout is not None else DEFAULT_TIMEOUT,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            )
            owned = True
        elif transport is not None or auth is not None:
            raise ValueError(
                "give transport and auth to your own client, not to AsyncHttpDestination"
            )
        else:
            owned = False
        self.client = client
        self._sender = AsyncSender(client, native=self._adopt_client(client, owned))

    async def deliver(self, event: Event, context: DeliveryContext) -> Any:
        """See :meth:`HttpDestination.deliver`."""
        now = self.clock.now()
        deadline = self._deadline(context, now)
        wait = self.limiter.reserve(now, destination=self.name)
        if wait > 0:
            await self.clock.asleep(wait)
        request = self.client.build_request(**self._prepare(event, context.idempotency_key))
        try:
            response = await self._sender.send(request, deadline.at if deadline else None)
        except HTTPX_ERRORS as exc:
            raise self._transport_error(exc, deadline) from exc
        return self._outcome(response)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        form: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        context: DeliveryContext | None = None,
    ) -> httpx.Response:
        """See :meth:`HttpDestination.request`."""
        now = self.clock.now()
        deadline = self._deadline(context, now)
        wait = self.limiter.reserve(now, destination=self.name)
        if wait > 0:
            await self.clock.asleep(wait)
        request = self.client.build_request(
            **self._plain(method, path, params, json, headers, form)
        )
        try:
            response = await self._sender.send(request, deadline.at if deadline else None)
        except HTTPX_ERRORS as exc:
            raise self._transport_error(exc, deadline) from exc
        self._check(response)
        return response

    async def aclose(self) -> None:
        """Close the client if the destination created it (yours stays open)."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

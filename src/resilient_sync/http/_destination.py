"""``HttpDestination`` and ``AsyncHttpDestination``: twins over one I/O-free base.

The base builds requests, classifies responses and exceptions, and keeps the
rate limiter; the twins only send (``httpx.Client`` / ``httpx.AsyncClient``)
and wait (the clock's ``sleep`` / ``asleep``), as httpx's own ``Client`` and
``AsyncClient`` share ``BaseClient``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypedDict
from urllib.parse import parse_qsl, urlsplit

import httpx
from typing_extensions import Self, Unpack

from .._circuit import CircuitBreaker
from .._clock import SystemClock
from .._errors import DataFormatError, SyncError
from .._model import DeliveryContext, ErrorCategory, Event
from .._protocols import Clock
from .._redact import SECRET_HEADERS, redact
from .._version import __version__
from ._classify import (
    SECRET_NAME,
    SHOULD_RETRY_HEADERS,
    BodyClassifier,
    HttpClassifier,
    describe_request,
)
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


def _guard_httpx_log(secrets: Iterable[str]) -> None:
    _HTTPX_LOG_FILTER.add(secrets)
    with _filter_lock:
        httpx_logger = logging.getLogger("httpx")
        if _HTTPX_LOG_FILTER not in httpx_logger.filters:
            httpx_logger.addFilter(_HTTPX_LOG_FILTER)


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
    rate_limit: RateLimit | None
    circuit_breaker: CircuitBreaker | None
    resolve_duplicate: ResolveDuplicate | None
    fix_data: FixData | None
    clock: Clock | None
    secrets: Iterable[str]
    max_retry_after: float
    in_flight_delay: float


class _BaseHttpDestination:
    """Configuration and every step that does no I/O."""

    #: ``resolve_duplicate(event, error)`` hook; absent (None) unless given or
    #: defined by a subclass, so the dispatcher knows whether there is one.
    resolve_duplicate: ResolveDuplicate | None = None
    #: ``fix_data(event, error)`` hook; absent (None) unless given or subclassed.
    fix_data: FixData | None = None

    def __init__(
        self,
        name: str,
        base_url: str | httpx.URL = "",
        path: str | Callable[[Event], str] = "",
        method: str = "POST",
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        build_request: BuildRequest | None = None,
        read_result: ReadResult | None = None,
        classify_body: BodyClassifier | None = None,
        should_retry_headers: Sequence[str] = SHOULD_RETRY_HEADERS,
        status_categories: Mapping[int, ErrorCategory] | None = None,
        idempotency_header: str | None = "Idempotency-Key",
        idempotency_key_field: str | None = None,
        rate_limit: RateLimit | None = None,
        circuit_breaker: CircuitBreaker | None = DEFAULT_CIRCUIT_BREAKER,
        resolve_duplicate: ResolveDuplicate | None = None,
        fix_data: FixData | None = None,
        clock: Clock | None = None,
        secrets: Iterable[str] = (),
        max_retry_after: float = 3600.0,
        in_flight_delay: float = 1.0,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"an HttpDestination needs a non-empty str name, got {name!r}")
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError(f"method must be an HTTP method like 'POST', got {method!r}")
        if idempotency_header is None and idempotency_key_field is None:
            raise ValueError(
                "the idempotency key must reach the destination: give idempotency_header "
                "or idempotency_key_field"
            )
        for label, hook in (
            ("build_request", build_request),
            ("read_result", read_result),
            ("classify_body", classify_body),
            ("resolve_duplicate", resolve_duplicate),
            ("fix_data", fix_data),
        ):
            if hook is not None and not callable(hook):
                raise TypeError(f"{label} must be callable, got {hook!r}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit, got {rate_limit!r}")
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
        self.headers = dict(headers or {})
        self.params = dict(params or {})
        self.timeout = timeout
        self._build_request = build_request
        self._read_result = read_result
        self._classify_body = classify_body
        self.idempotency_header = idempotency_header
        self.idempotency_key_field = idempotency_key_field
        #: The client-side rate limiter (also slowed down by 429s).
        self.limiter = RateLimiter(rate_limit)
        #: Read by the dispatcher: this destination's circuit breaker settings.
        self.circuit_breaker = circuit_breaker
        if resolve_duplicate is not None:
            self.resolve_duplicate = resolve_duplicate
        if fix_data is not None:
            self.fix_data = fix_data
        self.clock: Clock = clock if clock is not None else SystemClock()

        hidden = {s for s in secrets if isinstance(s, str) and len(s) >= 4}
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
            should_retry_headers=should_retry_headers,
            status_categories=status_categories,
            max_retry_after=max_retry_after,
            in_flight_delay=in_flight_delay,
            secrets=hidden,
        )
        self._owns_client = False
        self._request_timeout: float | httpx.Timeout | None = None

    def _adopt_client(self, client: httpx.Client | httpx.AsyncClient, owned: bool) -> None:
        self._owns_client = owned
        self._request_timeout = None if owned else self.timeout
        more = _secret_values(client.headers.items()) | _secret_values(client.params.multi_items())
        self._secrets |= more
        self.classifier.secrets = frozenset(self.classifier.secrets | more)
        _guard_httpx_log(self._secrets)

    # -- hooks (override in a subclass, or pass them to the constructor) --------

    def build_request(self, event: Event) -> HttpRequest:
        """The request for ``event``; default: the payload as the JSON body.

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
        if params:
            kwargs["params"] = params
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
    ) -> dict[str, Any]:
        content, content_type = encode_body(
            HttpRequest(method=method, json=json), key="", key_field=None
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
        if all_params:
            kwargs["params"] = all_params
        if self._request_timeout is not None:
            kwargs["timeout"] = self._request_timeout
        return kwargs

    def _transport_error(self, exc: Exception) -> SyncError:
        return self.classifier.transport_error(exc, now=self.clock.now())

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
    ``resilient_sync.http``).

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
            :meth:`close`.
        transport: for the client the destination creates (e.g.
            ``httpx.MockTransport(handler)`` in tests).
        auth: for the client the destination creates.
        headers: added to every request (their secret values are redacted).
        params: query parameters added to every request (an API key here is
            redacted from messages and from httpx's log lines).
        timeout: seconds or an ``httpx.Timeout`` (default 10s, 5s to connect).
        build_request: ``event -> HttpRequest`` (default: JSON body = payload).
        read_result: ``response -> result`` (default: the JSON body or None).
        classify_body: ``(response, body) -> ErrorCategory | SyncError | None``,
            consulted before the table (e.g. :func:`graphql_classifier`).
        should_retry_headers: vendor override headers (default
            ``Stripe-Should-Retry``, ``X-Should-Retry``): ``true`` retries,
            ``false`` makes a retryable failure DATA_FORMAT (not retried).
        status_categories: per-status overrides of the table.
        idempotency_header: the header that carries the key (None: none).
        idempotency_key_field: also put the key into the JSON body at this
            dotted path (Square's ``"idempotency_key"``).
        rate_limit: a client-side :class:`RateLimit` (steady rate and burst).
        circuit_breaker: the dispatcher's circuit breaker settings for this
            destination (default ``CircuitBreaker()``: 5 transient failures in
            a row hold the destination 30s, then one probe); None leaves it to
            the dispatcher's ``circuit=``.
        resolve_duplicate: ``(event, error) -> result | None`` hook (or define
            the method in a subclass); :func:`response_of` gives the response.
        fix_data: ``(event, error) -> Event | None`` hook (or a method).
        clock: the clock for rate limiting and ``Retry-After`` (pass the
            dispatcher's ``FakeClock`` in tests).
        secrets: more strings never to show in messages or logs.
        max_retry_after: cap of a ``Retry-After`` (seconds).
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
        self._adopt_client(client, owned)

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        """Send the event; return the result or raise the classified error."""
        wait = self.limiter.reserve(self.clock.now(), destination=self.name)
        if wait > 0:
            self.clock.sleep(wait)
        kwargs = self._prepare(event, context.idempotency_key)
        try:
            response = self.client.send(self.client.build_request(**kwargs))
        except HTTPX_ERRORS as exc:
            raise self._transport_error(exc) from exc
        return self._outcome(response)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A request of your own, e.g. a lookup in ``resolve_duplicate``.

        Uses the destination's base URL, headers, rate limit and error
        translation: returns a 2xx response, raises the classified error
        otherwise.
        """
        wait = self.limiter.reserve(self.clock.now(), destination=self.name)
        if wait > 0:
            self.clock.sleep(wait)
        kwargs = self._plain(method, path, params, json, headers)
        try:
            response = self.client.send(self.client.build_request(**kwargs))
        except HTTPX_ERRORS as exc:
            raise self._transport_error(exc) from exc
        self._check(response)
        return response

    def close(self) -> None:
        """Close the client if the destination created it (yours stays open)."""
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
    sync ``Dispatcher`` refuses it). Hooks may be plain or ``async def``.
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
        self._adopt_client(client, owned)

    async def deliver(self, event: Event, context: DeliveryContext) -> Any:
        """See :meth:`HttpDestination.deliver`."""
        wait = self.limiter.reserve(self.clock.now(), destination=self.name)
        if wait > 0:
            await self.clock.asleep(wait)
        kwargs = self._prepare(event, context.idempotency_key)
        try:
            response = await self.client.send(self.client.build_request(**kwargs))
        except HTTPX_ERRORS as exc:
            raise self._transport_error(exc) from exc
        return self._outcome(response)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """See :meth:`HttpDestination.request`."""
        wait = self.limiter.reserve(self.clock.now(), destination=self.name)
        if wait > 0:
            await self.clock.asleep(wait)
        kwargs = self._plain(method, path, params, json, headers)
        try:
            response = await self.client.send(self.client.build_request(**kwargs))
        except HTTPX_ERRORS as exc:
            raise self._transport_error(exc) from exc
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

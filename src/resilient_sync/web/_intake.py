"""The webhook intake: a thin Starlette endpoint over ``submit``.

A request is read (at most ``max_body`` bytes, however it is framed),
verified, mapped to an event and submitted; the sender gets a 2xx only after
``submit`` returned, i.e. once the event is durable in the queue store::

    413  body larger than max_body          (nothing read beyond the limit)
    401  signature missing, wrong or stale  (the reason is logged, never sent)
    400  not JSON, or not an event          (the message says what is missing)
    503  the store is unavailable           (with Retry-After: the sender retries)
    500  anything else                      (logged with its traceback)
    202  accepted: {"status": "accepted", "event_id": ...}
    200  already known (a redelivery): {"status": "duplicate", "event_id": ...}
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._clock import SystemClock
from .._errors import InvalidEventError, StoreError
from .._model import Event
from .._protocols import Clock
from .._text import clean, get_logger, one_line
from ._verify import WebhookVerificationError, WebhookVerifier

__all__ = ["DEFAULT_MAX_BODY", "Submitter", "create_intake", "webhook_endpoint"]

logger = get_logger("resilient_sync.web")

#: The default body size limit: 1 MiB (Shopify and Stripe stay well below).
DEFAULT_MAX_BODY = 1024 * 1024

#: Seconds a sender is asked to wait after a 503.
DEFAULT_RETRY_AFTER = 30


class Submitter(Protocol):
    """Anything that submits events: a :class:`~resilient_sync.Producer`, a
    :class:`~resilient_sync.Dispatcher` or an
    :class:`~resilient_sync.AsyncDispatcher` (``async def submit``)."""

    def submit(self, event: Event, to: str | Sequence[str] | None = None) -> Any:
        """Enqueue ``event`` durably; return the deliveries (``Submitted``)."""
        ...


Endpoint = Callable[[Request], Awaitable[Response]]


def _reply(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


class _TooLarge(Exception):
    pass


async def _read(request: Request, limit: int) -> bytes:
    """The body, read chunk by chunk and abandoned past ``limit`` bytes (a
    Content-Length above the limit is refused before reading anything)."""
    declared = request.headers.get("content-length")
    if declared is not None and _is_number(declared) and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _is_number(text: str) -> bool:
    """ASCII digits only (``"²".isdigit()`` is true, and ``int("²")`` fails)."""
    text = text.strip()
    return text.isascii() and text.isdigit()


def _headers(request: Request) -> dict[str, str]:
    """Lower-case header names; the first value of a repeated header wins."""
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        out.setdefault(name.lower(), value)
    return out


def _problem(exc: BaseException) -> str:
    """What a 400 says: the mapping's own message, through the text gate."""
    if isinstance(exc, KeyError) and exc.args:
        return f"the webhook has no {one_line(exc.args[0], limit=100)!r}"
    return clean(exc, limit=300, single_line=True)


def _outcome(result: Any) -> tuple[bool, int]:
    """``(duplicate, inserted)`` from what ``submit`` returned."""
    try:
        inserted = len(result)
    except TypeError:
        return False, 1
    skipped = getattr(result, "skipped", 0)
    return (inserted == 0 and isinstance(skipped, int) and skipped > 0), inserted


class _Intake:
    """One route's handler: read, verify, map, submit, answer."""

    def __init__(
        self,
        submitter: Submitter,
        verifier: WebhookVerifier,
        *,
        max_body: int,
        clock: Clock | None,
        retry_after: int,
    ) -> None:
        if not callable(getattr(submitter, "submit", None)):
            raise TypeError(f"the submitter needs a submit(event, to=None) method: {submitter!r}")
        if not isinstance(verifier, WebhookVerifier):
            raise TypeError(
                f"expected a WebhookVerifier (verify and to_event methods, a to attribute), "
                f"got {type(verifier).__name__}"
            )
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ValueError(f"max_body must be a number of bytes >= 1, got {max_body!r}")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError(f"retry_after must be whole seconds >= 0, got {retry_after!r}")
        _check_destinations(submitter, verifier)
        self.submitter = submitter
        self.verifier = verifier
        self.max_body = max_body
        self.clock: Clock
        if clock is None:  # one clock, given once: the submitter's
            found: Any = getattr(submitter, "clock", None)
            self.clock = found if callable(getattr(found, "now", None)) else SystemClock()
        else:
            self.clock = clock
        self.retry_after = retry_after
        self._async = inspect.iscoroutinefunction(submitter.submit)

    def _refuse(self, path: str, status: int, why: str, body: dict[str, Any]) -> Response:
        logger.info("webhook %s refused (%d): %s", one_line(path), status, why)
        return _reply(status, body)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        try:
            raw = await _read(request, self.max_body)
        except _TooLarge:
            return self._refuse(
                path,
                413,
                f"body over {self.max_body} bytes",
                {"error": f"the body is larger than {self.max_body} bytes"},
            )
        except ClientDisconnect:
            logger.info("webhook %s: the sender went away before the body was read", path)
            return _reply(400, {"error": "incomplete request"})
        headers = _headers(request)
        now: datetime = self.clock.now()
        try:
            self.verifier.verify(headers, raw, now=now)
        except WebhookVerificationError as exc:
            return self._refuse(path, 401, clean(exc, single_line=True), {"error": "unauthorized"})
        except Exception as exc:  # noqa: BLE001 - a bug in the verifier: 500, logged
            return self._failed(path, "the verifier failed", exc)
        try:
            body = json.loads(raw)
        except ValueError:
            return self._refuse(
                path, 400, "the body is not JSON", {"error": "the body is not JSON"}
            )
        except RecursionError:
            problem = "the body is JSON nested too deeply"
            return self._refuse(path, 400, problem, {"error": problem})
        try:
            event = self.verifier.to_event(headers, body)
        except (InvalidEventError, KeyError, IndexError, ValueError) as exc:
            problem = _problem(exc)
            return self._refuse(path, 400, problem, {"error": problem})
        except Exception as exc:  # noqa: BLE001 - a bug in the mapping: 500, logged
            return self._failed(path, "mapping the webhook to an event failed", exc)
        return await self._submit(path, event)

    def _failed(self, path: str, what: str, exc: Exception) -> Response:
        """A bug, not the sender's fault: 500 (the sender retries), logged
        with the traceback."""
        logger.error("webhook %s: %s; answered 500", one_line(path), what, exc_info=exc)
        return _reply(500, {"error": "internal error"})

    async def _submit(self, path: str, event: Event) -> Response:
        to = self.verifier.to
        try:
            if self._async:
                result = await self.submitter.submit(event, to)
            else:
                result = await run_in_threadpool(self.submitter.submit, event, to)
                if inspect.isawaitable(result):  # a plain function wrapping an async submit
                    result = await result
        except StoreError as exc:
            logger.warning(
                "webhook %s: the queue store is unavailable (%s); answered 503, the sender "
                "will retry",
                one_line(path),
                clean(exc, single_line=True),
            )
            return _reply(
                503,
                {"error": "temporarily unavailable; retry later"},
                {"Retry-After": str(self.retry_after)},
            )
        except InvalidEventError as exc:
            problem = _problem(exc)
            return self._refuse(path, 400, problem, {"error": problem})
        except Exception as exc:  # noqa: BLE001 - anything but a store outage: 500, logged
            return self._failed(path, "submit failed", exc)
        duplicate, inserted = _outcome(result)
        event_id = one_line(event.id)
        if duplicate:
            logger.debug("webhook %s: event %s was already known", one_line(path), event_id)
            return _reply(200, {"status": "duplicate", "event_id": event_id})
        logger.debug(
            "webhook %s: event %s enqueued (%d deliveries)", one_line(path), event_id, inserted
        )
        return _reply(202, {"status": "accepted", "event_id": event_id})


def _check_destinations(submitter: Any, verifier: WebhookVerifier) -> None:
    """A ``to=`` naming a destination the submitter does not know fails at
    startup, not on the first webhook."""
    known = getattr(submitter, "destinations", None)
    if isinstance(known, Mapping):
        names = set(known)
    elif isinstance(known, (tuple, list)):
        names = {n for n in known if isinstance(n, str)}
    else:
        return
    to = verifier.to
    wanted = [to] if isinstance(to, str) else list(to or ())
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(
            f"{type(verifier).__name__} sends to {', '.join(map(repr, unknown))}, which "
            f"{type(submitter).__name__} does not know (known: {', '.join(sorted(names))})"
        )


def webhook_endpoint(
    submitter: Submitter,
    verifier: WebhookVerifier,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    clock: Clock | None = None,
    retry_after: int = DEFAULT_RETRY_AFTER,
) -> Endpoint:
    """One webhook endpoint, for a route of your own Starlette (or FastAPI) app::

        Route("/webhooks/shopify", webhook_endpoint(producer, shopify), methods=["POST"])

    Args:
        submitter: a :class:`~resilient_sync.Producer` or a dispatcher
            (anything with ``submit(event, to=None)``, plain or async).
        verifier: a :class:`WebhookVerifier` (e.g. :class:`ShopifyWebhook`).
        max_body: the largest body accepted, in bytes (413 above it).
        clock: for signature timestamps; the submitter's clock by default.
        retry_after: seconds sent in ``Retry-After`` with a 503.
    """
    return _Intake(
        submitter, verifier, max_body=max_body, clock=clock, retry_after=retry_after
    ).__call__


def create_intake(
    submitter: Submitter,
    routes: Mapping[str, WebhookVerifier],
    *,
    max_body: int = DEFAULT_MAX_BODY,
    clock: Clock | None = None,
    retry_after: int = DEFAULT_RETRY_AFTER,
) -> Starlette:
    """A Starlette app receiving signed webhooks, one ``POST`` route per sender.

    >>> from resilient_sync import Producer
    >>> from resilient_sync.stores import MemoryQueueStore
    >>> from resilient_sync.web import ShopifyWebhook, create_intake
    >>> app = create_intake(
    ...     Producer(MemoryQueueStore(), ["pos"]),
    ...     {"/webhooks/shopify": ShopifyWebhook(secrets=["client-secret"])},
    ... )

    Serve it (``uvicorn module:app``) or mount it in your own ASGI app under a
    prefix (``Mount("/hooks", app=intake)``). Each request is read (at most
    ``max_body`` bytes), verified, mapped to an event and submitted; the
    answer is 2xx only once ``submit`` returned (see :func:`webhook_endpoint`
    for the arguments).
    """
    if not routes:
        raise ValueError("name at least one route, e.g. {'/webhooks/shopify': ShopifyWebhook(...)}")
    table = []
    for path, verifier in routes.items():
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"a route path starts with '/', got {path!r}")
        endpoint = webhook_endpoint(
            submitter, verifier, max_body=max_body, clock=clock, retry_after=retry_after
        )
        table.append(Route(path, endpoint, methods=["POST"]))
    return Starlette(routes=table)

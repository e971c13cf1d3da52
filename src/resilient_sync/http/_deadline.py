"""A total deadline per HTTP request.

httpx bounds each *operation* (connect, one read, one write, a wait for a
pooled connection), never the request as a whole: a server that drips a byte
a second keeps every read short and the request alive for ever. The
destinations need a bound on the whole request: the smaller of the timeout's
total and what is left of the delivery's lease.

Two ways, by the client's transport:

- **httpx's standard transport** (the client the library creates, and yours
  unless you gave it a custom transport) gets a deadline-aware network
  backend under httpcore (:func:`install`): each connect, read and write is
  given ``min(its own timeout, the time left)``, and once no time is left the
  next operation fails with the operation's timeout at once. The request
  really stops, its connection is dropped, and the caller sees an httpx
  timeout (connect: the request never left; read/write: outcome unknown).
- **A custom transport** (``httpx.MockTransport`` included) cannot be
  reached. The caller is bounded instead: a sync request runs in a helper
  thread and the caller stops waiting at the deadline; an async one is
  cancelled at the deadline (which does stop it). What the sync fallback
  cannot stop is the request itself: it keeps its connection and its thread
  until the transport ends it (its response, if one comes, is closed and
  dropped).

The backend reads the deadline from a context variable that the destination
sets around one ``send``; outside of it (your other uses of a wrapped
transport) it changes nothing. Deadlines are measured on the monotonic
clock: socket timeouts run in real time whatever clock the destination
keeps (the lease's time left is read on that clock once, before sending).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

__all__ = [
    "DEADLINE_PASSED",
    "AsyncDeadlineBackend",
    "AsyncSender",
    "DeadlineBackend",
    "SyncSender",
    "install",
    "timeout_total",
]

#: The message of a timeout raised because the request's total deadline passed.
DEADLINE_PASSED = "the request's total deadline passed"

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "resilient_sync_http_deadline", default=None
)

_TimeoutType = type[httpcore.TimeoutException]


def _clip(timeout: float | None, error: _TimeoutType) -> float | None:
    """``timeout``, shortened to the time left before the deadline (if one is set)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error(DEADLINE_PASSED)
    return left if timeout is None or timeout > left else timeout


def timeout_total(timeout: httpx.Timeout | float | None) -> float | None:
    """The total a timeout allows one request: a number as it is, the longest
    part of an ``httpx.Timeout`` (None: no bound)."""
    if timeout is None:
        return None
    if isinstance(timeout, httpx.Timeout):
        parts = [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t]
        return max(parts) if parts else None
    return float(timeout)


# --- the network backend ---------------------------------------------------------------


class _Stream(httpcore.NetworkStream):
    __slots__ = ("_inner",)

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        clipped = _clip(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, clipped))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """A network backend that gives every operation at most the time left
    before the current request's deadline (see the module docstring)."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        clipped = _clip(timeout, httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_tcp(host, port, clipped, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        clipped = _clip(timeout, httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_unix_socket(path, clipped, socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    __slots__ = ("_inner",)

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _clip(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _clip(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        clipped = _clip(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, clipped))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    """The asyncio/trio twin of :class:`DeadlineBackend`."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self.inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        clipped = _clip(timeout, httpcore.ConnectTimeout)
        stream = await self.inner.connect_tcp(host, port, clipped, local_address, socket_options)
        return _AsyncStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        clipped = _clip(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self.inner.connect_unix_socket(path, clipped, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _wrap(transport: object) -> bool:
    """Put the deadline backend under one httpx transport; False if it is not
    httpx's standard one (a mock, a custom transport)."""
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.ConnectionPool):
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, DeadlineBackend):
            return True
        if isinstance(backend, httpcore.NetworkBackend):
            pool._network_backend = DeadlineBackend(backend)
            return True
    if isinstance(pool, httpcore.AsyncConnectionPool):
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, AsyncDeadlineBackend):
            return True
        if isinstance(backend, httpcore.AsyncNetworkBackend):
            pool._network_backend = AsyncDeadlineBackend(backend)
            return True
    return False


def install(client: httpx.Client | httpx.AsyncClient) -> bool:
    """Give the standard transports of a client the deadline backend (its
    proxy mounts too). True when its main transport has it, so deadlines are
    enforced inside the request; False when the transport is not httpx's
    standard one (then the senders fall back to bounding the caller).

    The backend changes nothing outside a sender's own ``send`` (no deadline
    is set there), so a client shared with other code behaves as before.
    """
    for mounted in getattr(client, "_mounts", {}).values():
        if mounted is not None:
            _wrap(mounted)
    return _wrap(getattr(client, "_transport", None))


def _clip_timeouts(request: httpx.Request, left: float) -> None:
    """Shorten the request's per-operation timeouts (the pool wait included)
    to the time left."""
    timeouts = request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        request.extensions["timeout"] = {
            name: left if value is None or value > left else value
            for name, value in timeouts.items()
        }


def _too_late(request: httpx.Request) -> httpx.TimeoutException:
    return httpx.ConnectTimeout(f"{DEADLINE_PASSED} before the request was sent", request=request)


# --- the senders -----------------------------------------------------------------------


class SyncSender:
    """Sends requests on an ``httpx.Client`` within a deadline.

    ``native``: the client has the deadline backend (:func:`install`);
    otherwise the caller is bounded by a helper thread (see the module
    docstring).
    """

    def __init__(self, client: httpx.Client, *, native: bool, name: str = "http") -> None:
        self.client = client
        self.native = native
        self._name = name
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def send(self, request: httpx.Request, deadline: float | None) -> httpx.Response:
        """``client.send(request)``, ended at ``deadline`` (``time.monotonic()``;
        None: the client's own timeouts only)."""
        if deadline is None:
            return self.client.send(request)
        left = deadline - time.monotonic()
        if left <= 0:
            raise _too_late(request)
        _clip_timeouts(request, left)
        if self.native:
            token = _DEADLINE.set(deadline)
            try:
                return self.client.send(request)
            finally:
                _DEADLINE.reset(token)
        return self._bounded(request, deadline, left)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix=f"resilient-sync-{self._name}"
                )
            return self._pool

    def _bounded(self, request: httpx.Request, deadline: float, left: float) -> httpx.Response:
        context = contextvars.copy_context()
        future = self._executor().submit(context.run, self._send_in_time, request, deadline)
        try:
            return future.result(timeout=left)
        except concurrent.futures.TimeoutError:
            future.add_done_callback(_close_late_response)
            raise httpx.ReadTimeout(
                f"{DEADLINE_PASSED}; the caller stopped waiting (the request itself runs "
                "until the client's own timeouts end it)",
                request=request,
            ) from None

    def _send_in_time(self, request: httpx.Request, deadline: float) -> httpx.Response:
        if time.monotonic() >= deadline:  # it waited for a thread too long: never send it
            raise _too_late(request)
        return self.client.send(request)

    def close(self) -> None:
        """Let go of the helper threads (those still waiting end on their own)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _close_late_response(future: concurrent.futures.Future[httpx.Response]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


class AsyncSender:
    """Sends requests on an ``httpx.AsyncClient`` within a deadline.

    ``native``: the client has the deadline backend; otherwise the request
    is cancelled at the deadline.
    """

    def __init__(self, client: httpx.AsyncClient, *, native: bool) -> None:
        self.client = client
        self.native = native

    async def send(self, request: httpx.Request, deadline: float | None) -> httpx.Response:
        """``await client.send(request)``, ended at ``deadline`` (see :class:`SyncSender`)."""
        if deadline is None:
            return await self.client.send(request)
        left = deadline - time.monotonic()
        if left <= 0:
            raise _too_late(request)
        _clip_timeouts(request, left)
        if self.native:
            token = _DEADLINE.set(deadline)
            try:
                return await self.client.send(request)
            finally:
                _DEADLINE.reset(token)
        try:
            with anyio.fail_after(left):
                return await self.client.send(request)
        except TimeoutError:
            raise httpx.ReadTimeout(
                f"{DEADLINE_PASSED}; the request was cancelled", request=request
            ) from None

"""A simulated point-of-sale API on 127.0.0.1 that misbehaves like the real ones.

A real HTTP server (``http.server`` in a thread, a random free port) with
customers, orders, a product catalogue and an ``Idempotency-Key`` cache, and
the failures integrations meet in production:

- an outage window (HTTP 503) and a few responses lost after the effect was
  applied (the client times out; its retry must not apply it twice);
- rate limiting: a token bucket answering 429 with a decimal ``Retry-After``;
- duplicate customers: 422 ``{"errors": {"email": ["has already been taken"]}}``,
  duplicate orders: 409;
- invalid phone numbers: 422 naming the ``phone`` field;
- unknown SKUs: 422 with ``code: "unknown_sku"`` naming ``lines[i].sku``;
- a revoked access token (401) until a new one is issued.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

__all__ = ["Misbehaviour", "PosStats", "SimulatedPos", "valid_phone"]

_PHONE = re.compile(r"^\+[1-9]\d{7,14}$")


def valid_phone(value: Any) -> bool:
    """E.164, as the POS wants it: ``+31612345678``."""
    return isinstance(value, str) and bool(_PHONE.match(value))


@attrs.frozen(kw_only=True)
class Misbehaviour:
    """When and how the POS fails (request numbers count POSTs)."""

    outage_at: int = 80
    outage_seconds: float = 1.2
    lost_responses: frozenset[int] = frozenset({40, 150})
    lost_delay: float = 1.3
    revoke_at: int = 220
    bucket_capacity: float = 30.0
    bucket_rate: float = 250.0
    latency: tuple[float, float] = (0.001, 0.006)


@attrs.define
class PosStats:
    """What the POS saw (for the demo's summary and its tests)."""

    requests: int = 0
    by_status: dict[int, int] = attrs.field(factory=dict)
    customers_created: int = 0
    orders_created: int = 0
    replayed: int = 0
    lost_responses: int = 0
    outage_started: float | None = None
    outage_ended: float | None = None
    revoked: bool = False
    #: effects applied per idempotency key: every value must be 1
    effects_per_key: dict[str, int] = attrs.field(factory=dict)


class SimulatedPos:
    """The POS. ``start()`` returns its base URL; ``stop()`` shuts it down.

    Args:
        catalogue: the SKUs it sells.
        existing_customers: customers already in the POS (``email``, ...).
        existing_orders: order numbers already in the POS.
        misbehaviour: when it fails.
    """

    def __init__(
        self,
        *,
        catalogue: Iterable[str],
        existing_customers: Iterable[Mapping[str, Any]] = (),
        existing_orders: Iterable[str] = (),
        misbehaviour: Misbehaviour | None = None,
        seed: int = 7,
    ) -> None:
        self.catalogue = frozenset(catalogue)
        self.rules = misbehaviour or Misbehaviour()
        self.token = f"pos_live_{secrets.token_hex(12)}"
        self._revoked_token: str | None = None
        self._lock = threading.Lock()
        self._rng_seed = seed
        self.customers: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self.stats = PosStats()
        self._tokens = self.rules.bucket_capacity
        self._refilled = time.monotonic()
        self._posts = 0
        self._lost = set(self.rules.lost_responses)
        self._outage_until = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for customer in existing_customers:
            self._add_customer(dict(customer))
        for number in existing_orders:
            self.orders[number] = {"id": f"O-{number}", "number": number, "source": "manual"}

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> str:
        """Serve on a random free port of 127.0.0.1; returns the base URL."""
        pos = self

        class Handler(_Handler):
            server_pos = pos

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="simulated-pos", daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/api"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SimulatedPos:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def issue_new_token(self) -> str:
        """The POS admin issues a new access token (the revoked window ends)."""
        with self._lock:
            self.token = f"pos_live_{secrets.token_hex(12)}"
            return self.token

    # -- the API -------------------------------------------------------------

    def _add_customer(self, data: dict[str, Any]) -> dict[str, Any]:
        number = len(self.customers) + 1
        record = {"id": f"C-{number:05d}", **data}
        self.customers[record["id"]] = record
        return record

    def _take_token(self) -> float | None:
        """None if the request may pass, else seconds until it may."""
        now = time.monotonic()
        rules = self.rules
        self._tokens = min(
            rules.bucket_capacity, self._tokens + (now - self._refilled) * rules.bucket_rate
        )
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / rules.bucket_rate

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, str], dict[str, Any], float]:
        """One request -> (status, headers, JSON body, seconds to stall first)."""
        rules = self.rules
        with self._lock:
            self.stats.requests += 1
            now = time.monotonic()
            if method == "POST":
                self._posts += 1
                if self._posts == rules.outage_at:
                    self._outage_until = now + rules.outage_seconds
                    self.stats.outage_started = time.time()
                if self._posts == rules.revoke_at and not self.stats.revoked:
                    self._revoked_token = self.token
                    self.stats.revoked = True
            if now < self._outage_until:
                return 503, {}, {"error": "service_unavailable", "message": "POS is down"}, 0.0
            if self.stats.outage_started is not None and self.stats.outage_ended is None:
                self.stats.outage_ended = time.time()
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.token}" or self.token == self._revoked_token:
                message = (
                    "the access token was revoked"
                    if auth == f"Bearer {self._revoked_token}"
                    else "missing or invalid access token"
                )
                return 401, {}, {"error": "invalid_token", "message": message}, 0.0
            wait = self._take_token()
            if wait is not None:
                retry_after = f"{max(wait, 0.05):.2f}"
                return (
                    429,
                    {"Retry-After": retry_after},
                    {"error": "rate_limited", "message": "too many requests"},
                    0.0,
                )
            status, payload = self._route(method, path, query, headers, body)
            stall = 0.0
            due = [n for n in self._lost if n <= self._posts]
            if method == "POST" and status in (200, 201) and due:
                self._lost.discard(due[0])  # applied, but the answer will come too late
                stall = rules.lost_delay
                self.stats.lost_responses += 1
        return status, {}, payload, stall

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == "/api/customers":
            email = (query.get("email") or [""])[0].lower()
            found = [c for c in self.customers.values() if c.get("email", "").lower() == email]
            return 200, {"customers": found}
        if method == "GET" and path.startswith("/api/orders/"):
            number = path.rsplit("/", 1)[1]
            order = self.orders.get(number)
            if order is None:
                return 404, {"error": "not_found", "message": f"no order {number}"}
            return 200, order
        if method != "POST" or path not in ("/api/customers", "/api/orders"):
            return 404, {"error": "not_found", "message": f"no route {method} {path}"}
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return 400, {"error": "bad_request", "message": "the body is not JSON"}
        if not isinstance(data, dict):
            return 400, {"error": "bad_request", "message": "the body must be an object"}
        key = headers.get("idempotency-key")
        digest = hashlib.sha256(body).hexdigest()
        if key and key in self._cache:
            cached_digest, status, response = self._cache[key]
            if cached_digest != digest:
                return 422, {
                    "error": "idempotency_error",
                    "message": "this idempotency key was already used with a different payload",
                }
            self.stats.replayed += 1
            return status, response
        if path == "/api/customers":
            status, response = self._create_customer(data)
        else:
            status, response = self._create_order(data)
        if key and 200 <= status < 300:
            self._cache[key] = (digest, status, response)
            self.stats.effects_per_key[key] = self.stats.effects_per_key.get(key, 0) + 1
        return status, response

    def _create_customer(self, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        email = str(data.get("email") or "").lower()
        if not email or "@" not in email:
            return 422, {"errors": {"email": ["is invalid"]}}
        if any(c.get("email", "").lower() == email for c in self.customers.values()):
            return 422, {"errors": {"email": ["has already been taken"]}}
        if not valid_phone(data.get("phone")):
            return 422, {
                "errors": {"phone": ["is invalid (expected international format, +31612345678)"]}
            }
        record = self._add_customer(data)
        self.stats.customers_created += 1
        return 201, record

    def _create_order(self, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        number = str(data.get("number") or "")
        if number in self.orders:
            return 409, {"error": "conflict", "message": f"order {number} already exists"}
        email = str(data.get("customer_email") or "").lower()
        if not any(c.get("email", "").lower() == email for c in self.customers.values()):
            return 422, {"errors": {"customer_email": ["no customer with this email"]}}
        lines = data.get("lines") or []
        for index, line in enumerate(lines):
            sku = line.get("sku") if isinstance(line, dict) else None
            if sku not in self.catalogue:
                return 422, {
                    "errors": [
                        {
                            "field": f"lines[{index}].sku",
                            "code": "unknown_sku",
                            "message": f"unknown SKU {sku!r}",
                        }
                    ]
                }
        order = {"id": f"O-{number}", **data}
        self.orders[number] = order
        self.stats.orders_created += 1
        return 201, order


class _Handler(BaseHTTPRequestHandler):
    server_pos: SimulatedPos
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo prints its own story."""

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        pos = self.server_pos
        status, extra, payload, stall = pos.handle(
            self.command, parts.path, parse_qs(parts.query), headers, body
        )
        low, high = pos.rules.latency
        time.sleep(low + (high - low) * ((hash(body) & 0xFF) / 255))
        if stall:
            time.sleep(stall)  # the effect is applied; the answer comes too late
        data = json.dumps(payload).encode()
        with pos._lock:
            pos.stats.by_status[status] = pos.stats.by_status.get(status, 0) + 1
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting (a lost response)

    do_GET = _serve
    do_POST = _serve

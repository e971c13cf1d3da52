"""A scripted point-of-sale customer API on 127.0.0.1, for end-to-end tests
and benchmarks of HTTP destinations.

It behaves like a careful real API: bearer-token auth, an ``Idempotency-Key``
on every create (a repeat replays the stored response and applies nothing;
the same key with another body is refused), unique e-mail addresses (Shopify's
``422 {"errors": {"email": ["has already been taken"]}}``), and a lookup by
e-mail. Tests script failures for the next requests::

    with PosServer() as pos:
        pos.script(Status(503), Reset(), Slow(1.0))
        ...
        assert pos.max_effects_per_key() == 1

Script steps apply, in order, to the next ``POST /customers`` requests:
``Status(code, headers, body)`` answers with that status and applies nothing;
``Reset(apply=True)`` reads the request, applies it (or not), then resets
the connection without answering; ``Slow(seconds, apply=True)`` applies it,
then answers only after ``seconds`` (beyond the client's timeout).

Run ``python tests/http_server.py [--port N] [--token T] [--latency S]`` to serve it on its
own (the port is printed on the first line), e.g. for ``bench/bench_http.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["TOKEN", "PosServer", "Recorded", "Reset", "Slow", "Status"]

#: The bearer token the server accepts by default.
TOKEN = "pos-secret-token"


@dataclass(frozen=True)
class Status:
    """Answer the next create with this status (nothing is applied)."""

    code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(frozen=True)
class Reset:
    """Read the next create, apply it (when ``apply``), then reset the connection."""

    apply: bool = True


@dataclass(frozen=True)
class Slow:
    """Apply the next create, then answer after ``seconds``."""

    seconds: float
    apply: bool = True


Step = Status | Reset | Slow


@dataclass(frozen=True)
class Recorded:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # answer at once (no 40 ms delayed-ACK stalls)
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``PosServer.requests`` instead."""

    def setup(self) -> None:
        super().setup()
        self.server.pos.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.pos.untrack(self.connection)

    def _read(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _reset(self) -> None:
        """Close with RST: the client sees a reset, no response."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def do_GET(self) -> None:
        pos = self.server.pos
        url = urlsplit(self.path)
        pos.record(Recorded("GET", self.path, self._headers(), b""))
        if not pos.authorized(self.headers.get("Authorization")):
            self._send(401, {"errors": "[API] Invalid API key or access token"})
            return
        if url.path == "/customers":
            email = parse_qs(url.query).get("email", [""])[0]
            self._send(200, {"customers": pos.find(email)})
            return
        if url.path == "/health":
            self._send(200, {"ok": True})
            return
        self._send(404, {"errors": "Not Found"})

    def do_POST(self) -> None:
        pos = self.server.pos
        body = self._read()
        recorded = Recorded("POST", self.path, self._headers(), body)
        pos.record(recorded)
        if urlsplit(self.path).path != "/customers":
            self._send(404, {"errors": "Not Found"})
            return
        step = pos.next_step()
        if pos.latency:
            time.sleep(pos.latency)
        if isinstance(step, Status):
            self._send(step.code, step.body, step.headers)
            return
        if isinstance(step, Reset):
            if step.apply:
                pos.create(recorded)
            self._reset()
            return
        if isinstance(step, Slow) and not step.apply:
            time.sleep(step.seconds)
            status, payload, headers = 504, {"error": "gateway timeout"}, {}
        else:
            status, payload, headers = pos.create(recorded)
            if isinstance(step, Slow):
                time.sleep(step.seconds)
        try:
            self._send(status, payload, headers)
        except OSError:  # the client gave up waiting (Slow): expected
            self.close_connection = True

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, pos: PosServer, port: int) -> None:
        self.pos = pos
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, OSError)):
            return  # a client that went away, or our own scripted reset
        self.pos.errors.append(repr(error))  # pragma: no cover - shows up in test asserts


class PosServer:
    """The scripted POS customer API (see the module docstring).

    Attributes:
        url: ``http://127.0.0.1:<port>`` once started.
        customers: created customers by id.
        effects_per_key: creates applied per idempotency key (all 1 when no
            effect was applied twice).
        requests: every request read, in order.
        errors: unexpected server-side errors (should stay empty).
    """

    def __init__(self, *, token: str | None = TOKEN, port: int = 0, latency: float = 0.0) -> None:
        self.token = token
        self.latency = latency
        self._port = port
        self._lock = threading.Lock()
        self._steps: list[Step] = []
        self._replies: dict[str, tuple[bytes, tuple[int, Any, dict[str, str]]]] = {}
        self._by_email: dict[str, str] = {}
        self._connections: set[socket.socket] = set()
        self.customers: dict[str, dict[str, Any]] = {}
        self.effects_per_key: Counter[str] = Counter()
        self.requests: list[Recorded] = []
        self.errors: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> PosServer:
        self._server = _Server(self, self._port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("PosServer is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def __enter__(self) -> PosServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    # -- scripting and inspection ------------------------------------------------------

    def script(self, *steps: Step) -> None:
        """Queue failures for the next creates, in order."""
        with self._lock:
            self._steps.extend(steps)

    def next_step(self) -> Step | None:
        with self._lock:
            return self._steps.pop(0) if self._steps else None

    @property
    def pending_steps(self) -> int:
        with self._lock:
            return len(self._steps)

    def record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def creates(self) -> list[Recorded]:
        """The ``POST /customers`` requests read so far."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def bodies_by_key(self) -> dict[str, set[bytes]]:
        """Every distinct body sent under each key (one each: byte-identical retries)."""
        out: dict[str, set[bytes]] = {}
        for r in self.creates():
            out.setdefault(r.key or "", set()).add(r.body)
        return out

    def max_effects_per_key(self) -> int:
        with self._lock:
            return max(self.effects_per_key.values(), default=0)

    def authorized(self, header: str | None) -> bool:
        return self.token is None or header == f"Bearer {self.token}"

    def find(self, email: str) -> list[dict[str, Any]]:
        with self._lock:
            found = self._by_email.get(email.lower())
            return [self.customers[found]] if found else []

    # -- the API ------------------------------------------------------------------------

    def create(self, request: Recorded) -> tuple[int, Any, dict[str, str]]:
        """Create a customer (idempotently); returns status, body, headers."""
        if not self.authorized(request.headers.get("authorization")):
            return 401, {"errors": "[API] Invalid API key or access token"}, {}
        key = request.key
        if not key:
            return 400, {"errors": {"idempotency_key": ["is required"]}}, {}
        with self._lock:
            if key in self._replies:
                body, reply = self._replies[key]
                if body != request.body:
                    return (
                        422,
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used "
                                "with the same parameters they were first used with.",
                            }
                        },
                        {},
                    )
                status, payload, headers = reply
                return status, payload, {**headers, "Idempotent-Replayed": "true"}
            reply = self._apply(request)
            self._replies[key] = (request.body, reply)
            return reply

    def _apply(self, request: Recorded) -> tuple[int, Any, dict[str, str]]:
        try:
            data = json.loads(request.body)
        except ValueError:
            return 400, {"errors": {"base": ["body is not JSON"]}}, {}
        email = data.get("email") if isinstance(data, dict) else None
        if not isinstance(email, str) or "@" not in email:
            return 422, {"errors": {"email": ["is invalid"]}}, {}
        if email.lower() in self._by_email:
            return 422, {"errors": {"email": ["has already been taken"]}}, {}
        customer_id = f"cus_{len(self.customers) + 1}"
        customer = {"id": customer_id, "email": email, "name": data.get("name")}
        self.customers[customer_id] = customer
        self._by_email[email.lower()] = customer_id
        self.effects_per_key[request.key or ""] += 1
        return 201, {"customer": customer}, {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each create")
    args = parser.parse_args(argv)
    server = PosServer(token=args.token, port=args.port, latency=args.latency).start()
    print(server.url.rsplit(":", 1)[1], flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        server.stop()


if __name__ == "__main__":
    main()

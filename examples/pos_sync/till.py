"""A tiny stand-in for TillPoint, a fictional point-of-sale API, on 127.0.0.1.

Enough of the real thing to integrate against: bearer-token auth, an
``Idempotency-Key`` cache, ``POST /v1/customers`` that rejects a phone number
that is not in international format (422, naming the field) and an e-mail it
already knows (409), ``GET /v1/customers?email=``, and an outage switch
(``fail_next``: the next N requests get a 503).

    python -m pos_sync.till 8089       # run it by hand (token: "till-demo-token")
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "till-demo-token"


class FakeTill:
    """The server and its state; ``start()`` returns the base URL."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.customers: dict[str, dict[str, Any]] = {}  # by id
        self.replies: dict[str, tuple[int, dict[str, Any]]] = {}  # by Idempotency-Key
        self.fail_next = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_customer(self, email: str, name: str) -> str:
        """A customer entered in the till by hand; returns its id."""
        with self._lock:
            customer_id = f"T-{len(self.customers) + 1:04d}"
            self.customers[customer_id] = {"id": customer_id, "email": email, "name": name}
            return customer_id

    def handle(self, method: str, url: str, headers: Any, body: bytes) -> tuple[int, Any]:
        with self._lock:
            self.requests += 1
            if headers.get("Authorization") != f"Bearer {self.token}":
                return 401, {"error": "invalid_token"}
            if self.fail_next:
                self.fail_next -= 1
                return 503, {"error": "maintenance"}
            parts = urlsplit(url)
            if method == "GET" and parts.path == "/v1/customers":
                email = parse_qs(parts.query).get("email", [""])[0]
                found = [c for c in self.customers.values() if c["email"] == email]
                return 200, {"customers": found}
            if method == "POST" and parts.path == "/v1/customers":
                key = headers.get("Idempotency-Key", "")
                if key in self.replies:
                    return self.replies[key]
                reply = self._create(json.loads(body or b"{}"))
                if reply[0] < 500:
                    self.replies[key] = reply
                return reply
            return 404, {"error": "not_found"}

    def _create(self, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        phone = str(data.get("phone", ""))
        if not phone.startswith("+") or not phone[1:].isdigit():
            return 422, {"errors": [{"field": "phone", "message": "use the +CC format"}]}
        if any(c["email"] == data.get("email") for c in self.customers.values()):
            return 409, {"errors": [{"field": "email", "message": "email already exists"}]}
        customer_id = f"T-{len(self.customers) + 1:04d}"
        self.customers[customer_id] = {"id": customer_id, **data}
        return 201, self.customers[customer_id]

    def start(self, port: int = 0) -> str:
        till = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, payload = till.handle(
                    self.command, self.path, self.headers, self.rfile.read(length)
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _reply

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


if __name__ == "__main__":
    till = FakeTill()
    print(f"TillPoint stand-in at {till.start(int(sys.argv[1]) if len(sys.argv) > 1 else 8089)}")
    print(f"token: {TOKEN}; Ctrl-C stops it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        till.stop()

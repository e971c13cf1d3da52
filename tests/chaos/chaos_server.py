"""The hostile destination of the chaos run: a real HTTP server on 127.0.0.1.

It is an API that dedupes by ``Idempotency-Key`` the way a careful one does
(a repeated key replays the stored response and applies nothing), reached
through the network, and it fails at random in every way a real one does:

- infrastructure failures, on any request: 5xx, 429 with odd ``Retry-After``
  values, a timeout *after* applying the effect, connection resets before
  and after applying, 401 (a revoked token: pauses the destination);
- application refusals, only for a key never applied: 409 duplicates, 422
  with a field and hostile bodies (control characters, lone surrogates,
  NUL, Slack mentions, 5 MB, the caller's own secrets echoed back);
- successes whose bodies are hostile (the same list, and not JSON at all).

``/pos`` is the ``HttpDestination``'s endpoint. ``/crm`` serves the plain-Python
destination (``chaos_worker.OddDestination``): the server applies the effect
(or not) and tells the destination which odd exception to raise or which
odd result to return, so that one ledger and one fault plan cover both.

The ledger (``calls`` and ``effects``) says what was asked, what was applied
and how often. Faults are decided from the seed, the destination, the key and
how many requests that key already made, so a run with the same seed asks
for the same faults in the same situations.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Call", "Effect", "HostileServer"]

BIG = 5 * 1024 * 1024  # bytes of a "5 MB body"

# (kind, weight): infrastructure faults hit any request, even of an applied key
_POS_INFRA = [
    ("http_5xx", 8.0),
    ("rate_limited", 8.0),
    ("timeout_after_apply", 3.0),
    ("reset_before_apply", 3.0),
    ("reset_after_apply", 3.0),
    ("unauthorized_401", 1.0),
]
# application refusals: only for a key that was never applied (else: replay)
_POS_APP = [("duplicate_409", 3.0), ("rejected_4xx", 7.0)]
_POS_OK = 100.0 - sum(w for _, w in _POS_INFRA + _POS_APP)

# the body of a success (stored and replayed for the key)
_OK_BODIES = [
    ("plain", 62.0),
    ("secret_echo", 8.0),
    ("control_chars", 7.0),
    ("lone_surrogate", 3.0),
    ("nul", 3.0),
    ("not_json", 3.0),
    ("empty_204", 3.0),
    ("huge_5mb", 0.4),
]

_RETRY_AFTER = [
    "1",
    "0.4",
    "1.5",
    "past-date",
    "future-date",
    "soon",
    "99999999999",
    "-5",
    "",
    "inf",
    "NaN",
    "1e400",
    "  2  ",
    "Wed, 99 Foo 2020 25:61:61 GMT",
]

_REJECTIONS = [
    "field_email",
    "field_ansi",
    "field_surrogate",
    "raw_control_bytes",
    "secret_echo",
    "slack_mention",
    "nul_escape",
    "already_taken",
    "huge_5mb",
    "bad_request_400",
]

# the plain-Python destination: what the server tells it to do
_CRM_ANYTIME = [
    ("retry_after_inf", 5.0),
    ("rate_limited_nan", 3.0),
    ("rate_limited_negative", 2.0),
    ("rate_limited_huge", 2.0),
    ("str_raises_before", 4.0),
    ("secret_in_message", 4.0),
    ("surrogate_in_message", 1.0),
    ("reset_after_apply", 4.0),
    ("str_raises_after_apply", 3.0),
    ("permission", 0.5),
]
_CRM_APP = [("data_format", 5.0), ("duplicate", 2.0)]
_CRM_OK = 100.0 - sum(w for _, w in _CRM_ANYTIME + _CRM_APP)
_CRM_APPLY_FIRST = frozenset({"reset_after_apply", "str_raises_after_apply"})
_CRM_RESULTS = [
    ("plain", 60.0),
    ("decimal", 8.0),
    ("set", 6.0),
    ("datetime", 6.0),
    ("secret_repr", 8.0),
    ("nan", 6.0),
    ("control_bytes", 6.0),
]


@dataclass(frozen=True)
class Call:
    """One request the server read."""

    at: float  # time.time() when it was read
    destination: str  # "pos" or "crm"
    key: str
    event_id: str
    n: int
    ordering_key: str | None
    delivery_id: str
    attempt: int
    worker: str  # "<name>.<incarnation>"
    fault: str
    applied: bool  # this request applied the effect (first time for its key)


@dataclass(frozen=True)
class Effect:
    """One effect applied (the first request of a key that was not refused)."""

    at: float
    destination: str
    key: str
    event_id: str
    n: int


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _pick(rng: random.Random, table: list[tuple[str, float]], rest: tuple[str, float]) -> str:
    names = [n for n, _ in table] + [rest[0]]
    weights = [w for _, w in table] + [rest[1]]
    return rng.choices(names, weights)[0]


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The client died while sending (a SIGKILLed worker): a real server
            # drops a truncated request; applying it would record an effect
            # under a payload the sender never finished sending.
            self.server.hostile.count_truncated()
            self.close_connection = True
            return
        path = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        query = parse_qs(path.query)
        self.server.hostile.handle(self, path.path, headers, query, body)

    def send_reply(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.body:
                self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:  # the client gave up (a timeout we caused, or a killed worker)
            self.close_connection = True

    def reset(self) -> None:
        """Close with RST: the client sees a reset and no response."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, hostile: HostileServer) -> None:
        self.hostile = hostile
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            return
        self.hostile.errors.append(repr(error))


class HostileServer:
    """See the module docstring. ``calm = True`` ends the faults (the drain)."""

    def __init__(
        self,
        *,
        seed: int,
        token: str,
        api_key: str,
        timeout_sleep: float,
        big: int = BIG,
    ) -> None:
        self.seed = seed
        self.token = token
        self.api_key = api_key
        self.timeout_sleep = timeout_sleep
        self.big = big
        self.calm = False
        self._lock = threading.Lock()
        self._seen: Counter[tuple[str, str]] = Counter()
        self._replies: dict[tuple[str, str], _Reply] = {}
        self._crm_results: dict[tuple[str, str], str] = {}
        self.calls: list[Call] = []
        self.effects: list[Effect] = []
        self.faults: Counter[str] = Counter()
        self.truncated = 0  # requests dropped: the client died mid-body
        self.errors: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> HostileServer:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def count_truncated(self) -> None:
        with self._lock:
            self.truncated += 1

    # -- deciding ----------------------------------------------------------------

    def _rng(self, *parts: Any) -> random.Random:
        digest = hashlib.sha256(repr((self.seed, *parts)).encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _record(
        self,
        destination: str,
        headers: dict[str, str],
        payload: dict[str, Any],
        fault: str,
        *,
        applied: bool,
        at: float,
    ) -> None:
        key = headers.get("idempotency-key", "")
        call = Call(
            at=at,
            destination=destination,
            key=key,
            event_id=str(payload.get("event", "")),
            n=int(payload.get("n", -1)),
            ordering_key=payload.get("customer"),
            delivery_id=headers.get("x-chaos-delivery", ""),
            attempt=int(headers.get("x-chaos-attempt", "0") or 0),
            worker=headers.get("x-chaos-worker", ""),
            fault=fault,
            applied=applied,
        )
        self.calls.append(call)
        self.faults[f"{destination}:{fault}"] += 1
        if applied:
            self.effects.append(Effect(at, destination, key, call.event_id, call.n))

    # -- handling ----------------------------------------------------------------

    def handle(
        self,
        handler: _Handler,
        path: str,
        headers: dict[str, str],
        query: dict[str, list[str]],
        body: bytes,
    ) -> None:
        at = time.time()
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if path == "/pos":
            self._pos(handler, headers, query, payload, at)
        elif path == "/crm":
            self._crm(handler, headers, payload, at)
        else:
            handler.send_reply(_Reply(404, b'{"error": "not found"}'))

    def _pos(
        self,
        handler: _Handler,
        headers: dict[str, str],
        query: dict[str, list[str]],
        payload: dict[str, Any],
        at: float,
    ) -> None:
        key = headers.get("idempotency-key", "")
        authorized = headers.get("authorization") == f"Bearer {self.token}" and query.get(
            "api_key"
        ) == [self.api_key]
        with self._lock:
            nth = self._seen[("pos", key)]
            self._seen[("pos", key)] += 1
            applied = ("pos", key) in self._replies
            rng = self._rng("pos", key, nth)
            if not authorized:
                kind = "not_authorized_by_config"
            elif self.calm:
                kind = "ok"
            else:
                kind = _pick(rng, _POS_INFRA + ([] if applied else _POS_APP), ("ok", _POS_OK))
            apply_now = not applied and kind in ("ok", "timeout_after_apply", "reset_after_apply")
            if apply_now:
                self._replies[("pos", key)] = self._ok_reply(rng, payload)
            reply = self._replies.get(("pos", key))
            label = kind
            if kind == "ok" and applied:
                label = "replay"
            elif kind == "ok" and reply is not None:
                label = f"ok:{reply.headers.get('X-Chaos-Body', 'plain')}"
            self._record("pos", headers, payload, label, applied=apply_now, at=at)
        if kind in ("ok", "timeout_after_apply") and reply is not None:
            if kind == "timeout_after_apply":
                time.sleep(self.timeout_sleep)
            replay = dict(reply.headers)
            if applied:
                replay["Idempotent-Replayed"] = "true"
            handler.send_reply(_Reply(reply.status, reply.body, replay))
            return
        if kind in ("reset_before_apply", "reset_after_apply"):
            handler.reset()
            return
        handler.send_reply(self._fault_reply(kind, rng))

    def _ok_reply(self, rng: random.Random, payload: dict[str, Any]) -> _Reply:
        variant = _pick(rng, _OK_BODIES, ("plain", 0.0))
        ident = f"pos_{payload.get('n')}"
        headers = {"Content-Type": "application/json", "X-Chaos-Body": variant}
        if variant == "plain":
            body = _json_bytes({"id": ident, "status": "created"})
        elif variant == "secret_echo":
            body = _json_bytes({"id": ident, "debug": {"received": f"{self.token} {self.api_key}"}})
        elif variant == "control_chars":
            body = _json_bytes(
                {"id": ident, "note": "\u001b[31mred\u001b[0m \u0007 <!channel> \u001b]0;pwn\u0007"}
            )
        elif variant == "lone_surrogate":
            body = b'{"id": "' + ident.encode() + b'", "name": "\\ud800"}'
        elif variant == "nul":
            body = b'{"id": "' + ident.encode() + b'", "name": "a\\u0000b"}'
        elif variant == "not_json":
            headers["Content-Type"] = "text/html"
            body = b"<html>created \x1b[31m</html>"
        elif variant == "empty_204":
            return _Reply(204, b"", {"X-Chaos-Body": variant})
        else:  # huge_5mb
            body = b'{"id": "' + ident.encode() + b'", "blob": "' + b"x" * self.big + b'"}'
        return _Reply(200 if rng.random() < 0.5 else 201, body, headers)

    def _fault_reply(self, kind: str, rng: random.Random) -> _Reply:
        json_type = {"Content-Type": "application/json"}
        if kind == "http_5xx":
            status = rng.choice([500, 502, 503, 504])
            headers = dict(json_type)
            if rng.random() < 0.3:
                headers["Retry-After"] = self._retry_after(rng)
            return _Reply(status, _json_bytes({"error": "upstream trouble"}), headers)
        if kind == "rate_limited":
            return _Reply(
                429,
                _json_bytes({"error": "slow down"}),
                {**json_type, "Retry-After": self._retry_after(rng)},
            )
        if kind == "unauthorized_401":
            return _Reply(
                401,
                _json_bytes({"errors": f"[API] Invalid API key or access token {self.token}"}),
                json_type,
            )
        if kind == "not_authorized_by_config":
            return _Reply(403, _json_bytes({"errors": "harness misconfigured"}), json_type)
        if kind == "duplicate_409":
            text = "duplicate request" if rng.random() < 0.7 else "request still in progress"
            return _Reply(409, _json_bytes({"error": text}), json_type)
        return self._rejection(rng)

    def _retry_after(self, rng: random.Random) -> str:
        value = rng.choice(_RETRY_AFTER)
        if value == "past-date":
            return email.utils.formatdate(time.time() - 3600, usegmt=True)
        if value == "future-date":
            return email.utils.formatdate(time.time() + 2, usegmt=True)
        return value

    def _rejection(self, rng: random.Random) -> _Reply:
        variant = rng.choice(_REJECTIONS)
        headers = {"Content-Type": "application/json", "X-Chaos-Body": variant}
        status = 422
        if variant == "field_email":
            body = _json_bytes({"errors": {"email": ["is invalid"]}})
        elif variant == "field_ansi":
            body = _json_bytes({"errors": {"email\u001b[2J": ["is \u001b[31minvalid\u0007"]}})
        elif variant == "field_surrogate":
            body = b'{"errors": {"\\ud800": ["is invalid"]}}'
        elif variant == "raw_control_bytes":
            body = b'{"errors": {"email": ["raw \x1b[31mESC\x1b[0m BEL\x07 NUL\x00 end"]}}'
        elif variant == "secret_echo":
            body = _json_bytes(
                {
                    "error": {
                        "message": f"token {self.token} with key {self.api_key} is not allowed",
                        "param": "email",
                    }
                }
            )
        elif variant == "slack_mention":
            body = _json_bytes({"errors": {"email": ["<!channel> <@U123> *bold* is invalid"]}})
        elif variant == "nul_escape":
            body = _json_bytes({"errors": {"email": ["bad\u0000value"]}})
        elif variant == "already_taken":
            body = _json_bytes({"errors": {"email": ["has already been taken"]}})
        elif variant == "huge_5mb":
            body = b'{"errors": {"email": ["' + b"y" * self.big + b'"]}}'
        else:  # bad_request_400
            status = 400
            body = _json_bytes({"error": {"message": "bad request", "param": "amount"}})
        return _Reply(status, body, headers)

    def _crm(
        self, handler: _Handler, headers: dict[str, str], payload: dict[str, Any], at: float
    ) -> None:
        key = headers.get("idempotency-key", "")
        with self._lock:
            nth = self._seen[("crm", key)]
            self._seen[("crm", key)] += 1
            applied = ("crm", key) in self._crm_results
            rng = self._rng("crm", key, nth)
            if self.calm:
                kind = "ok"
            else:
                kind = _pick(rng, _CRM_ANYTIME + ([] if applied else _CRM_APP), ("ok", _CRM_OK))
            apply_now = not applied and (kind == "ok" or kind in _CRM_APPLY_FIRST)
            if apply_now:
                result = "plain" if self.calm else _pick(rng, _CRM_RESULTS, ("plain", 0.0))
                self._crm_results[("crm", key)] = result
            result = self._crm_results.get(("crm", key), "plain")
            label = "replay" if kind == "ok" and applied else kind
            if kind == "ok" and not applied:
                label = f"ok:{result}"
            self._record("crm", headers, payload, label, applied=apply_now, at=at)
        answer = {"fault": kind, "result": result, "id": f"crm_{payload.get('n')}"}
        handler.send_reply(_Reply(200, _json_bytes(answer), {"Content-Type": "application/json"}))

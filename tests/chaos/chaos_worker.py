"""One worker process of the chaos run (started, SIGKILLed and restarted by
``chaos_harness``).

    python tests/chaos/chaos_worker.py CONFIG.json NAME.INCARNATION

Runs ``Dispatcher.run_forever`` on the store named in the config with two
destinations on the hostile server: ``pos``, an ``HttpDestination`` with a
Bearer token in its headers and an API key in its query parameters, and
``crm``, a plain-Python destination that raises odd exceptions and returns
odd results when the server tells it to. SIGTERM stops the loop; the process
then exits 0. Anything else that ends it is a failure the harness reports.
Logs go to stderr (the harness keeps them, and scans them for secrets).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from resilient_sync import (
    CircuitBreaker,
    DataFormatError,
    DeliveryContext,
    Dispatcher,
    DuplicateError,
    Event,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
    StoreError,
)
from resilient_sync.http import HttpDestination, HttpRequest
from resilient_sync.stores import open_stores


def retry_policy(config: dict[str, Any]) -> RetryPolicy:
    """The policy of every worker (short delays: the run lasts seconds)."""
    return RetryPolicy(
        max_attempts=int(config["max_attempts"]),
        initial_delay=0.05,
        multiplier=2.0,
        max_delay=1.0,
        deadline=None,
        max_retry_after=float(config["max_retry_after"]),
    )


class ChaosHttp(HttpDestination):
    """The ``HttpDestination`` under test; each request also names its
    delivery, attempt and worker (extra headers, for the server's ledger)."""

    def __init__(self, config: dict[str, Any], worker: str) -> None:
        self._local = threading.local()
        self.worker = worker
        super().__init__(
            "pos",
            config["server"],
            "/pos",
            headers={"Authorization": f"Bearer {config['token']}"},
            params={"api_key": config["api_key"]},
            timeout=float(config["client_timeout"]),
            build_request=self._build,
            circuit_breaker=CircuitBreaker(threshold=5, cool_off=0.5),
            max_retry_after=float(config["max_retry_after"]),
            in_flight_delay=0.2,
        )

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        self._local.context = context
        return super().deliver(event, context)

    def _build(self, event: Event) -> HttpRequest:
        context: DeliveryContext = self._local.context
        return HttpRequest(
            json=event.payload,
            headers={
                "X-Chaos-Delivery": context.delivery_id,
                "X-Chaos-Attempt": str(context.attempt),
                "X-Chaos-Worker": self.worker,
            },
        )


class StrRaises(Exception):
    """An exception whose ``str()`` (and ``repr()``) raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of this exception raises")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ of this exception raises")


class SecretRepr:
    """A result whose repr carries a credential (in a recognisable form)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return f"<Customer Authorization: Bearer {self.secret}>"


class OddDestination:
    """The plain-Python destination: the server decides what it does."""

    name = "crm"

    def __init__(self, config: dict[str, Any], worker: str) -> None:
        self.worker = worker
        self.plain_token = config["plain_token"]
        self.plain_key = config["plain_key"]
        self.client = httpx.Client(base_url=config["server"], timeout=10.0)

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        response = self.client.post(
            "/crm",
            json=event.payload,
            headers={
                "Idempotency-Key": context.idempotency_key,
                "X-Chaos-Delivery": context.delivery_id,
                "X-Chaos-Attempt": str(context.attempt),
                "X-Chaos-Worker": self.worker,
            },
        )
        response.raise_for_status()
        answer = response.json()
        fault, result, ident = answer["fault"], answer["result"], answer["id"]
        if fault == "retry_after_inf":
            raise RetryableError("CRM busy", retry_after=float("inf"))
        if fault == "rate_limited_nan":
            raise RateLimitedError("CRM quota", retry_after=float("nan"))
        if fault == "rate_limited_negative":
            raise RateLimitedError("CRM quota", retry_after=-30.0)
        if fault == "rate_limited_huge":
            raise RateLimitedError("CRM quota", retry_after=1e308)
        if fault in ("str_raises_before", "str_raises_after_apply"):
            raise StrRaises()
        if fault == "secret_in_message":
            raise ValueError(
                f"CRM said: Authorization: Bearer {self.plain_token} "
                f"api_key={self.plain_key} \x1b[31m\x07\x00 <!channel>"
            )
        if fault == "surrogate_in_message":
            raise RetryableError("CRM said \ud800 (a lone surrogate)")
        if fault == "reset_after_apply":
            raise ConnectionResetError(104, "Connection reset by peer (after the CRM applied it)")
        if fault == "permission":
            raise PermissionDeniedError("CRM token revoked \x1b[2J")
        if fault == "data_format":
            raise DataFormatError("email rejected by CRM \x1b[31m", field="email\x07")
        if fault == "duplicate":
            raise DuplicateError("CRM contact exists <!channel>")
        return self._result(result, ident)

    def _result(self, variant: str, ident: str) -> Any:
        if variant == "decimal":
            return decimal.Decimal("19.99")
        if variant == "set":
            return {ident, "tag"}
        if variant == "datetime":
            return dt.datetime.now(dt.timezone.utc)
        if variant == "secret_repr":
            return SecretRepr(self.plain_token)
        if variant == "nan":
            return {"id": ident, "score": float("nan")}
        if variant == "control_bytes":
            return b"\x1b[31m\x07\x00"
        return {"id": ident}


def exit_with_parent(stop: threading.Event) -> None:
    """Stop (and soon exit) when the harness that started us is gone, so that
    a killed test run leaves no workers behind."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()
                time.sleep(10)
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def open_retrying(url: str) -> tuple[Any, Any]:
    """``open_stores``, retried for a minute on ``StoreError`` (a restarted
    worker may start while PostgreSQL restarts, as under a supervisor)."""
    give_up = time.monotonic() + 60
    while True:
        try:
            return open_stores(url)
        except StoreError:  # noqa: PERF203 - a retry loop
            if time.monotonic() > give_up:
                raise
            time.sleep(0.5)


def main(config_path: str, worker: str) -> int:
    config = json.loads(Path(config_path).read_text())
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("resilient_sync").setLevel(logging.DEBUG)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    exit_with_parent(stop)
    queue, idempotency = open_retrying(config["store"])
    pos = ChaosHttp(config, worker)
    crm = OddDestination(config, worker)
    dispatcher = Dispatcher(
        queue,
        idempotency,
        [pos, crm],
        retry=retry_policy(config),
        batch_size=int(config["batch_size"]),
        concurrency=int(config["concurrency"]),
        lease=float(config["lease"]),
        poll_interval=0.2,
        worker_id=worker,
    )
    print(f"worker {worker} started", file=sys.stderr, flush=True)
    report = dispatcher.run_forever(stop)
    dispatcher.close()
    pos.close()
    crm.client.close()
    queue.close()
    idempotency.close()
    print(f"worker {worker} stopped: {report}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

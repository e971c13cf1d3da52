"""examples/shop_to_pos end to end, as it is deployed: a real uvicorn intake on
127.0.0.1, a worker started with `resilient-sync worker`, 1,000 signed
webhooks (10 % redelivered), a POS that fails part of the time, the worker
stopped with SIGTERM mid-run and started again.

Checks: every customer reaches the POS exactly once; the intake never
answered 2xx for an event it had not stored; the worker stops within its
bound and exits 0.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from http_server import TOKEN, PosServer, Reset, Status
from resilient_sync import DeliveryStatus
from resilient_sync.stores import open_stores

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECRET = "shpss_example_webhook_secret"
CUSTOMERS = 1000
REDELIVERED = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _webhook(n: int) -> tuple[bytes, dict[str, str]]:
    """A Shopify customers/create webhook, signed as Shopify documents it."""
    body = json.dumps(
        {
            "id": 7000 + n,
            "email": f"customer{n}@example.com",
            "first_name": "Customer",
            "last_name": str(n),
            "updated_at": "2026-11-29T10:00:00Z",
        }
    ).encode()
    signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())
    return body, {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": signature.decode(),
        "X-Shopify-Topic": "customers/create",
        "X-Shopify-Event-Id": f"evt-{n}",
        "X-Shopify-Webhook-Id": f"wh-{n}-{time.monotonic_ns()}",
        "X-Shopify-Shop-Domain": "example.myshopify.com",
    }


def _faults() -> list[Any]:
    """The POS fails part of the time: 503s, 429s and resets after applying."""
    steps: list[Any] = []
    for i in range(1, 1600):
        if i % 9 == 0:
            steps.append(Status(503))
        elif i % 13 == 0:
            steps.append(Status(429, {"Retry-After": "0.2"}))
        elif i % 31 == 0:
            steps.append(Reset(apply=True))  # applied, then the answer is lost
        else:
            steps.append(None)
    return steps


class _FlakyPos(PosServer):
    """The test POS, failing by a fixed pattern over its creates."""

    def __init__(self) -> None:
        super().__init__()
        self._pattern = iter(_faults())

    def next_step(self) -> Any:
        return next(self._pattern, None)


@pytest.fixture
def pos() -> Iterator[PosServer]:
    with _FlakyPos() as server:
        yield server


def _env(tmp_path: Path, pos: PosServer) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RESILIENT_SYNC_DB=f"sqlite:///{tmp_path / 'sync.db'}",
        SHOPIFY_WEBHOOK_SECRETS=SECRET,
        POS_URL=pos.url,
        POS_TOKEN=TOKEN,
        PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}",
    )
    return env


def _start_worker(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "resilient_sync",
        "worker",
        "examples.shop_to_pos.worker:make_dispatcher",
        "--shutdown-timeout",
        "20s",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=log)


def _stop(process: subprocess.Popen[bytes], bound: float) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=bound + 10)
    return code, time.monotonic() - started


def test_webhooks_to_pos_exactly_once_through_faults_and_a_worker_restart(
    tmp_path: Path, pos: PosServer
) -> None:
    env = _env(tmp_path, pos)
    port = _free_port()
    intake_log = (tmp_path / "intake.log").open("wb")
    worker_log = (tmp_path / "worker.log").open("ab")
    intake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.shop_to_pos.intake:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stderr=intake_log,
    )
    worker = _start_worker(env, worker_log)
    acknowledged: list[str] = []
    try:
        url = f"http://127.0.0.1:{port}/webhooks/shopify"
        deadline = time.monotonic() + 30
        while True:  # wait for the intake to listen
            try:
                httpx.post(url, content=b"{}", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        order = list(range(CUSTOMERS)) + list(range(0, CUSTOMERS, CUSTOMERS // REDELIVERED))

        def send(n: int) -> tuple[str, int]:
            body, headers = _webhook(n)
            for _ in range(20):  # a sender retries until it gets a 2xx, as Shopify does
                response = client.post(url, content=body, headers=headers)
                if response.status_code < 300:
                    return f"evt-{n}", response.status_code
                time.sleep(0.2)
            return f"evt-{n}", response.status_code

        # one client shared by the senders (a client per request spends most of
        # its time building an SSL context it never uses)
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=8) as senders:
            results = list(senders.map(send, order[:400]))
            # mid-run: stop the worker the way systemd does, then start it again
            code, took = _stop(worker, 20)
            assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]
            assert took < 25
            worker = _start_worker(env, worker_log)
            results += list(senders.map(send, order[400:]))
        assert all(status < 300 for _, status in results), results
        acknowledged = [event_id for event_id, _ in results]

        queue, idempotency = open_stores(env["RESILIENT_SYNC_DB"], read_only=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                stats = queue.stats().by_status
                if stats.get(DeliveryStatus.SUCCEEDED, 0) == CUSTOMERS:
                    break
                time.sleep(0.5)
            stats = queue.stats().by_status
            assert stats == {DeliveryStatus.SUCCEEDED: CUSTOMERS}, stats
            stored = set()
            cursor = None
            while True:
                page = queue.list(limit=500, cursor=cursor)
                stored |= {d.event.id for d in page.items}
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        finally:
            queue.close()
            idempotency.close()
        # the intake never answered 2xx for an event it had not stored
        assert set(acknowledged) <= stored
        # every customer reached the POS exactly once
        emails = [c["email"] for c in pos.customers.values()]
        assert len(emails) == CUSTOMERS
        assert len(set(emails)) == CUSTOMERS
        assert pos.max_effects_per_key() == 1
        code, took = _stop(worker, 20)
        assert code == 0
    finally:
        for process in (worker, intake):
            if process.poll() is None:
                process.kill()
                process.wait()
        intake_log.close()
        worker_log.close()

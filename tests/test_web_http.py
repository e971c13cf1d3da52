"""The webhook intake over real HTTP: uvicorn serving it on 127.0.0.1 in a
thread, httpx sending what the vendors send. The full signature matrix of
every verifier, then what only a real server shows: bodies streamed in
chunks past the limit, a locked SQLite store, parallel redeliveries, and
durability (a 2xx means another process can already read the event)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from resilient_sync import Producer
from resilient_sync.stores import MemoryQueueStore, SQLiteQueueStore
from resilient_sync.testing import FakeClock
from resilient_sync.web import create_intake
from served import Served
from test_web_verifiers import (
    CASES,
    NEW_SECRET,
    NOW,
    SHOPIFY,
    STRIPE,
    VENDORS,
    Vendor,
    encode,
    matrix_case,
    sign_shopify,
    sign_stripe,
)

DESTS = ["pos", "crm"]


class Switch:
    """An ASGI app that forwards to whichever app a test plugs in, so one
    server serves the whole module."""

    def __init__(self) -> None:
        self.app: Any = None
        self.body_bytes = 0  # request body bytes the app pulled with receive()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counting() -> Any:
            message = await receive()
            self.body_bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counting, send)


@pytest.fixture(scope="module")
def switch() -> Iterator[tuple[Switch, str]]:
    plug = Switch()
    with Served(plug) as served:
        yield plug, served.url


@pytest.fixture
def http(switch: tuple[Switch, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=switch[1], timeout=10) as client:
        yield client


def serve(switch: tuple[Switch, str], producer: Producer, **options: Any) -> None:
    routes = {f"/webhooks/{v.name}": v.verifier([v.new, v.old]) for v in VENDORS}
    switch[0].app = create_intake(producer, routes, **options)


# --- the full matrix, every verifier ----------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_matrix_over_real_http(
    vendor: Vendor, case: str, switch: tuple[Switch, str], http: httpx.Client
) -> None:
    queue = MemoryQueueStore()
    serve(switch, Producer(queue, DESTS, clock=FakeClock(NOW)))
    body, headers, status = matrix_case(vendor, case)
    response = http.post(f"/webhooks/{vendor.name}", content=body, headers=headers)
    assert response.status_code == status, response.text
    stored = queue.list(limit=10).items
    assert len(stored) == (len(DESTS) if status == 202 else 0)
    if status == 401:
        assert response.json() == {"error": "unauthorized"}


# --- what a real server shows ----------------------------------------------------------------


def test_a_2xx_means_durable_for_another_process(
    tmp_path: Path, switch: tuple[Switch, str], http: httpx.Client
) -> None:
    path = tmp_path / "sync.db"
    queue = SQLiteQueueStore(path)
    try:
        serve(switch, Producer(queue, DESTS, clock=FakeClock(NOW)))
        body = encode(SHOPIFY.body)
        headers = sign_shopify(body, NEW_SECRET)
        assert http.post("/webhooks/shopify", content=body, headers=headers).status_code == 202
        # another process reads the queue straight after the answer
        code = (
            "import sys; from resilient_sync.stores import SQLiteQueueStore; "
            "q = SQLiteQueueStore(sys.argv[1]); "
            "print(sorted(d.destination for d in q.list().items)); q.close()"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == str(sorted(DESTS))
        again = http.post("/webhooks/shopify", content=body, headers=headers)
        assert again.status_code == 200
        assert again.json()["status"] == "duplicate"
        assert len(queue.list().items) == len(DESTS)
    finally:
        queue.close()


def test_streamed_body_past_the_limit_is_413(
    switch: tuple[Switch, str], http: httpx.Client
) -> None:
    queue = MemoryQueueStore()
    serve(switch, Producer(queue, DESTS, clock=FakeClock(NOW)), max_body=64 * 1024)
    switch[0].body_bytes = 0
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for i in range(4096):
            sent.append(i)
            yield b"x" * 1024

    try:
        response = http.post(
            "/webhooks/github", content=chunks(), headers={"X-Hub-Signature-256": "sha256=00"}
        )
    except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError):
        pass  # the server may close while the client is still sending
    else:
        assert response.status_code == 413
    # the app stopped pulling the body soon past the limit (one more of uvicorn's
    # buffers, at most a few 64 KiB); uvicorn drops the rest of the 4 MiB
    assert 64 * 1024 < switch[0].body_bytes <= 4 * 64 * 1024
    assert len(sent) > 64
    assert queue.list().items == []

    declared = encode({"x": "y" * 100_000})
    response = http.post("/webhooks/github", content=declared, headers={"X-Hub-Signature-256": "x"})
    assert response.status_code == 413


def test_locked_store_is_503_with_retry_after_over_http(
    tmp_path: Path, switch: tuple[Switch, str], http: httpx.Client
) -> None:
    path = tmp_path / "sync.db"
    queue = SQLiteQueueStore(path, busy_timeout=0.05)
    try:
        serve(switch, Producer(queue, DESTS, clock=FakeClock(NOW)), retry_after=10)
        body = encode(STRIPE.body)
        headers = sign_stripe(body, STRIPE.new)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = http.post("/webhooks/stripe", content=body, headers=headers)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 503
        assert response.headers["retry-after"] == "10"
        assert queue.list().items == []
        assert http.post("/webhooks/stripe", content=body, headers=headers).status_code == 202
        assert len(queue.list().items) == len(DESTS)
    finally:
        queue.close()


def test_parallel_deliveries_and_redeliveries(
    tmp_path: Path, switch: tuple[Switch, str], http: httpx.Client
) -> None:
    """Twenty webhooks, each sent three times at once (a sender retrying on a
    slow answer): every request gets a 2xx, each event is enqueued once."""
    queue = SQLiteQueueStore(tmp_path / "sync.db")
    try:
        serve(switch, Producer(queue, DESTS, clock=FakeClock(NOW)))
        requests = []
        for n in range(20):
            body = encode({**SHOPIFY.body, "id": n})
            requests += [(body, sign_shopify(body, NEW_SECRET, webhook_id=f"wh-{n}"))] * 3

        def post(item: tuple[bytes, dict[str, str]]) -> int:
            return http.post("/webhooks/shopify", content=item[0], headers=item[1]).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(post, requests))
        assert sorted(set(statuses)) == [200, 202]
        assert statuses.count(202) == 20
        stored = queue.list(limit=1000).items
        assert len(stored) == 20 * len(DESTS)
        assert len({d.event.id for d in stored}) == 20
    finally:
        queue.close()

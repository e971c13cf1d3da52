"""Tests of the example integration, as its authors would write them.

The destination runs against the TillPoint stand-in on 127.0.0.1 with the
in-memory stores and a ``FakeClock`` (retries without waiting); the last
tests run ``resilient-sync pull`` and ``resilient-sync worker`` for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pos_sync.destination import TillPointCustomers
from pos_sync.shop import ShopExport, customer_event
from pos_sync.till import TOKEN, FakeTill
from pos_sync.worker import build_dispatcher
from resilient_sync import DeliveryStatus, Dispatcher, ErrorCategory, Operator, RetryPolicy
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore
from resilient_sync.testing import FakeClock

EXAMPLES = Path(__file__).resolve().parent.parent
ADA = {"id": 1, "email": "ada@example.com", "name": "Ada Lovelace", "phone": "+31612345678"}
BOB = {"id": 2, "email": "bob@example.com", "name": "Bob", "phone": "06-1234 5678"}


@pytest.fixture
def till() -> Iterator[FakeTill]:
    server = FakeTill()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def setup(till: FakeTill) -> Iterator[tuple[Dispatcher, FakeClock, TillPointCustomers]]:
    assert till._server is not None
    url = f"http://127.0.0.1:{till._server.server_address[1]}"
    destination = TillPointCustomers(url, TOKEN, timeout=5)
    clock = FakeClock()
    dispatcher = Dispatcher(
        MemoryQueueStore(),
        MemoryIdempotencyStore(),
        [destination],
        retry=RetryPolicy(max_attempts=5, initial_delay=30, jitter=False),
        clock=clock,
    )
    try:
        yield dispatcher, clock, destination
    finally:
        dispatcher.close()
        destination.close()


def test_a_customer_is_created_once(
    till: FakeTill, setup: tuple[Dispatcher, FakeClock, TillPointCustomers]
) -> None:
    dispatcher, _, _ = setup
    (delivery,) = dispatcher.submit(customer_event(ADA))
    assert dispatcher.run_until_idle().succeeded == 1
    done = dispatcher.queue.get(delivery.id)
    assert done is not None
    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.result == {"till_id": "T-0001"}
    assert dispatcher.submit(customer_event(ADA)) == []  # the same signup again: dropped
    assert len(till.customers) == 1


def test_an_outage_is_retried_with_the_same_key(
    till: FakeTill, setup: tuple[Dispatcher, FakeClock, TillPointCustomers]
) -> None:
    dispatcher, clock, _ = setup
    till.fail_next = 1
    dispatcher.submit(customer_event(ADA))
    assert dispatcher.run_until_idle().retry_scheduled == 1
    clock.advance(30)
    assert dispatcher.run_until_idle().succeeded == 1
    assert len(till.customers) == 1


def test_a_bad_phone_waits_for_a_person_then_goes(
    till: FakeTill, setup: tuple[Dispatcher, FakeClock, TillPointCustomers]
) -> None:
    dispatcher, clock, _ = setup
    (delivery,) = dispatcher.submit(customer_event(BOB))
    assert dispatcher.run_until_idle().needs_action == 1
    waiting = dispatcher.queue.get(delivery.id)
    assert waiting is not None
    assert waiting.last_error is not None
    assert waiting.last_error.category is ErrorCategory.DATA_FORMAT
    assert waiting.last_error.field == "phone"
    operator = Operator(dispatcher.queue, clock=clock)
    operator.edit(delivery.id, {"phone": "+31612345678"}, actor="maria", retry=True)
    assert dispatcher.run_until_idle().succeeded == 1
    assert [c["phone"] for c in till.customers.values()] == ["+31612345678"]


def test_a_customer_the_till_already_has_is_linked(
    till: FakeTill, setup: tuple[Dispatcher, FakeClock, TillPointCustomers]
) -> None:
    dispatcher, _, _ = setup
    existing = till.add_customer(ADA["email"], "Ada (entered at the till)")
    (delivery,) = dispatcher.submit(customer_event(ADA))
    assert dispatcher.run_until_idle().succeeded == 1
    done = dispatcher.queue.get(delivery.id)
    assert done is not None
    assert done.result == {"till_id": existing, "linked": "existing customer"}
    assert len(till.customers) == 1


def test_the_shop_export_is_read_from_its_cursor(tmp_path: Path) -> None:
    export = ShopExport(tmp_path / "export.jsonl")
    assert export.read(None, 10) == ([], None)
    (tmp_path / "export.jsonl").write_text(json.dumps(ADA) + "\n" + json.dumps(BOB) + "\n")
    events, cursor = export.read(None, 1)
    assert [e.id for e in events] == ["shop-customer-1"]
    events, cursor = export.read(cursor, 10)
    assert [e.id for e in events] == ["shop-customer-2"]
    assert export.read(cursor, 10) == ([], "2")


def test_the_worker_factory_is_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESILIENT_SYNC_DB", "memory://")
    monkeypatch.setenv("TILLPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TILLPOINT_TOKEN", TOKEN)
    dispatcher = build_dispatcher()
    try:
        assert list(dispatcher.destinations) == ["tillpoint"]
        assert dispatcher.batch_size == 50
    finally:
        dispatcher.close()
        dispatcher.destinations["tillpoint"].close()  # type: ignore[attr-defined]


def _command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "resilient_sync", *argv]


def test_pull_and_worker_end_to_end(till: FakeTill, tmp_path: Path) -> None:
    """The two commands as README.md runs them: pull the export, run the
    worker, stop it with SIGTERM."""
    assert till._server is not None
    export = tmp_path / "shop-export.jsonl"
    export.write_text(json.dumps(ADA) + "\n" + json.dumps(BOB) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_SYNC_")}
    env.update(
        {
            "RESILIENT_SYNC_DB": f"sqlite:///{tmp_path / 'pos-sync.db'}",
            "TILLPOINT_URL": f"http://127.0.0.1:{till._server.server_address[1]}",
            "TILLPOINT_TOKEN": TOKEN,
            "SHOP_EXPORT": str(export),
            "PYTHONUNBUFFERED": "1",
        }
    )
    pulled = subprocess.run(
        _command("pull", "pos_sync.shop:export", "--to", "tillpoint"),
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "Pulled 2 events from shop-export: enqueued 2 deliveries" in pulled.stdout
    worker = subprocess.Popen(
        _command("worker", "pos_sync.worker:build_dispatcher"),
        cwd=EXAMPLES,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(till.customers) < 1 or till.requests < 2:
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "worker stopped" in err
    status = subprocess.run(
        _command("status", "--json"),
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    counts = json.loads(status.stdout)["counts"]
    assert (counts["succeeded"], counts["needs_action"]) == (1, 1)  # Bob's phone waits

"""Real processes on one SQLite file: SIGKILL at random moments, and claims
racing from two processes. Marked ``slow`` (about 30 s together)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from resilient_sync import DeliveryStatus
from resilient_sync.stores import SQLiteQueueStore
from resilient_sync.testing.contract import make_delivery

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("sqlite_crash_worker.py")
TOTAL = 3000
WORKERS = 3
BATCH = 10  # the workers' batch_size: at most this many deliveries die with a worker
KILL_PHASE = 9.0  # seconds of random SIGKILLs


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _spawn_logged(directory: Path, role: str, name: str, arg: str) -> subprocess.Popen[bytes]:
    """A worker or the submitter; its stderr goes to ``DIR/<name>.err``."""
    with (directory / f"{name}.err").open("ab") as err:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), role, str(directory), arg],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _errors(directory: Path, name: str) -> str:
    return (directory / f"{name}.err").read_text()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_sigkilled_workers_lose_nothing_and_apply_each_effect_once(tmp_path: Path) -> None:
    rng = random.Random(20240101)
    queue = SQLiteQueueStore(tmp_path / "queue.db")  # creates the schema up front
    procs: dict[str, subprocess.Popen[bytes]] = {
        f"w{i}": _spawn_logged(tmp_path, "worker", f"w{i}", f"w{i}") for i in range(WORKERS)
    }
    procs["submitter"] = _spawn_logged(tmp_path, "submitter", "submitter", str(TOTAL))
    kills: Counter[str] = Counter()
    submitter_done = False
    try:
        end = time.monotonic() + KILL_PHASE
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.05, 0.4))
            names = [n for n in procs if n != "submitter" or not submitter_done]
            name = rng.choice(names)
            proc = procs[name]
            if name == "submitter" and proc.poll() == 0:
                submitter_done = True
                continue
            assert proc.poll() is None, _errors(tmp_path, name)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills["worker" if name.startswith("w") else name] += 1
            role = "submitter" if name == "submitter" else "worker"
            extra = str(TOTAL) if role == "submitter" else name
            procs[name] = _spawn_logged(tmp_path, role, name, extra)

        # no more kills: the submitter finishes from its saved cursor, the
        # workers drain the queue (and reclaim the last victims' leases)
        if procs["submitter"].wait(timeout=60) != 0:
            pytest.fail(_errors(tmp_path, "submitter"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = queue.stats()
            if stats.total == TOTAL and stats.by_status == {DeliveryStatus.SUCCEEDED: TOTAL}:
                break
            for name, proc in procs.items():
                if name != "submitter" and proc.poll() is not None:
                    pytest.fail(f"{name} died: {_errors(tmp_path, name)}")
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            _stop(proc)

    # nothing lost: every event submitted once, and succeeded
    stats = queue.stats()
    assert stats.total == TOTAL
    assert stats.by_status == {DeliveryStatus.SUCCEEDED: TOTAL}
    assert queue.get_cursor("orders") == str(TOTAL)
    queue.close()

    # each effect applied once, and per customer in submission order
    effects = sqlite3.connect(tmp_path / "effects.db")
    rows = effects.execute(
        "SELECT key, event_id, customer, n FROM effects ORDER BY applied"
    ).fetchall()
    effects.close()
    assert len(rows) == TOTAL
    assert len({key for key, *_ in rows}) == TOTAL
    assert {event_id for _, event_id, _, _ in rows} == {f"e{n}" for n in range(TOTAL)}
    per_customer: dict[str, list[int]] = {}
    for _, _, customer, n in rows:
        per_customer.setdefault(customer, []).append(n)
    for customer, numbers in per_customer.items():
        assert numbers == sorted(numbers), f"customer {customer} out of order"

    # duplicate deliveries: only the one window no client can close (effect
    # applied, worker killed before the outcome was recorded), absorbed by the
    # remote's dedupe by idempotency key; at most a batch per killed worker
    log = (tmp_path / "deliveries.log").read_text().splitlines()
    received = Counter(line.split()[0] for line in log)
    duplicates = sum(n - 1 for n in received.values())
    assert len(received) == TOTAL
    assert duplicates <= kills["worker"] * BATCH
    assert kills["worker"] >= 10
    print(
        f"\ncrash test: {TOTAL} events, {kills['worker']} worker and "
        f"{kills['submitter']} submitter SIGKILLs, {len(log)} deliveries received, "
        f"{duplicates} duplicate deliveries absorbed by the key dedupe, "
        f"each of the {TOTAL} effects applied once"
    )


def test_two_processes_never_hold_the_same_delivery_at_once(tmp_path: Path) -> None:
    total = 1000
    queue = SQLiteQueueStore(tmp_path / "queue.db")
    queue.enqueue([make_delivery(f"e{i}") for i in range(total)])
    holds = sqlite3.connect(tmp_path / "holds.db")
    holds.execute("PRAGMA journal_mode=WAL")
    holds.execute("CREATE TABLE holds (delivery_id TEXT PRIMARY KEY, holder TEXT NOT NULL)")
    holds.commit()
    holds.close()
    procs = [_spawn("claimer", str(tmp_path), f"p{i}") for i in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err.decode()
        reports.append(json.loads(out))

    assert [r["violations"] for r in reports] == [[], []]
    assert [r["refused"] for r in reports] == [0, 0]  # leases never expired: all applied
    assert sum(r["succeeded"] for r in reports) == total
    assert all(r["claims"] for r in reports), "both processes must have claimed"
    tokens = [token for r in reports for _, token in r["claims"]]
    assert len(tokens) == len(set(tokens))  # every claim had its own fencing token
    claimed_by = [{i for i, _ in r["claims"]} for r in reports]
    assert claimed_by[0] & claimed_by[1], "hand-backs should have moved some deliveries"
    stats = queue.stats()
    assert stats.by_status == {DeliveryStatus.SUCCEEDED: total}
    queue.close()

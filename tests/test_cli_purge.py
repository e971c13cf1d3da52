"""``resilient-sync purge`` (item 6) and interrupting long commands (item 12):
progress on stderr, and Ctrl-C says how much was done and that running the
command again finishes the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_support import build_queue, cli, cli_json
from resilient_sync import Dispatcher, Event, Operator, RetryPolicy
from resilient_sync.stores import open_stores
from resilient_sync.testing import RecordingDestination


def test_purge_dry_run_then_for_real(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    build_queue(url)  # 35 succeeded, 5 need action
    kept = cli("--db", url, "purge")  # the default keeps 30 days: nothing is that old
    assert kept.returncode == 0, kept.stderr
    assert "Deleted 0 finished deliveries" in kept.stdout
    assert "(older than 30d)" in kept.stdout
    time.sleep(0.05)
    dry = cli("--db", url, "purge", "--older-than", "10ms", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Would delete 35 finished deliveries" in dry.stdout
    assert "nothing was changed" in dry.stdout
    assert dry.stderr == ""
    assert cli_json("--db", url, "status")["total"] == 40
    done = cli("--db", url, "--actor", "ada", "purge", "--older-than", "10ms", "--batch", "10")
    assert done.returncode == 0, done.stderr
    assert "Deleted 35 finished deliveries" in done.stdout
    assert done.stderr.splitlines() == [
        f"purge: {n} finished deliveries deleted" for n in (10, 20, 30, 35)
    ]
    status = cli_json("--db", url, "status")
    assert status["total"] == 5
    assert status["needs_action"] == 5  # waiting and failed deliveries are never purged
    queue, idempotency = open_stores(url)
    try:
        (record,) = [a for a in queue.audit() if a.action == "purge"]
        assert record.actor == "ada"
        assert record.details["deliveries"] == 35
    finally:
        queue.close()
        idempotency.close()
    again = cli_json("--db", url, "purge", "--older-than", "10ms")
    assert again["deliveries"] == 0
    assert again["dry_run"] is False
    assert set(again) == {"action", "dry_run", "before", "deliveries", "idempotency_keys"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["purge", "--batch", "0"], "--batch must be 1 or more"),
        (["purge", "--older-than", "soon"], "invalid --older-than"),
    ],
)
def test_purge_usage_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    build_queue(url)
    done = cli("--db", url, *argv)
    assert done.returncode == 2
    assert message in done.stderr


def _filled(path: Path, n: int) -> list[str]:
    queue, idempotency = open_stores(f"sqlite:///{path}")
    try:
        dispatcher = Dispatcher(
            queue, idempotency, [RecordingDestination("pos")], retry=RetryPolicy(), batch_size=500
        )
        dispatcher.submit_many(Event(f"e{i}", "t", {"i": i}) for i in range(n))
        return [d.id for d in _all(queue)]
    finally:
        queue.close()
        idempotency.close()


def _all(queue: object) -> list:  # type: ignore[type-arg]
    out = []
    cursor = None
    while True:
        page = queue.list(limit=1000, cursor=cursor)  # type: ignore[attr-defined]
        out.extend(page.items)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def _interrupt_after_progress(argv: list[str], label: str) -> subprocess.CompletedProcess[str]:
    """Start the command, send SIGINT once it reported progress; its result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_SYNC_")}
    env.update({"RESILIENT_SYNC_ACTOR": "tester", "COLUMNS": "80", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "resilient_sync", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith(f"{label}: "), first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, first + err)


def test_ctrl_c_during_purge_says_how_much_was_done(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    url = f"sqlite:///{path}"
    queue, idempotency = open_stores(url)
    try:
        dispatcher = Dispatcher(queue, idempotency, [RecordingDestination("pos")], batch_size=500)
        dispatcher.submit_many(Event(f"e{i}", "t", {}) for i in range(600))
        dispatcher.run_until_idle()
    finally:
        queue.close()
        idempotency.close()
    time.sleep(0.05)
    done = _interrupt_after_progress(
        ["--db", url, "purge", "--older-than", "10ms", "--batch", "1"], "purge"
    )
    assert done.returncode == 130, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("resilient-sync: interrupted: deleted ")
    assert "Run the same command again to delete the rest" in last
    deleted = int(last.split("deleted ", 1)[1].split()[0])
    left = cli_json("--db", url, "status")["total"]
    assert 0 < deleted < 600
    assert left == 600 - deleted  # what it said is what it did
    queue, idempotency = open_stores(url)
    try:
        purges = [a for a in queue.audit() if a.action == "purge"]
    finally:
        queue.close()
        idempotency.close()
    interrupted = [a for a in purges if a.details.get("interrupted")]
    assert [a.details["deliveries"] for a in interrupted] == [deleted]  # the audit says so too
    rest = cli_json("--db", url, "purge", "--older-than", "10ms")
    assert rest["deliveries"] == left
    assert cli_json("--db", url, "status")["total"] == 0


def test_ctrl_c_during_retry_all_says_how_much_was_done(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    url = f"sqlite:///{path}"
    ids = _filled(path, 5000)
    queue, idempotency = open_stores(url)
    try:
        Operator(queue).discard(ids, actor="setup")
    finally:
        queue.close()
        idempotency.close()
    done = _interrupt_after_progress(
        ["--db", url, "retry-all", "--status", "discarded"], "retry-all"
    )
    assert done.returncode == 130, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("resilient-sync: interrupted: re-synced ")
    assert "of 5000 matching deliveries" in last
    assert "Run the same command again to re-sync the rest" in last
    moved = int(last.split("re-synced ", 1)[1].split()[0])
    counts = cli_json("--db", url, "status")["counts"]
    assert 0 < moved < 5000
    assert moved % 500 == 0  # it stopped between two batches
    assert counts["pending"] == moved  # what it said is what it did
    assert counts["discarded"] == 5000 - moved
    rest = cli("--db", url, "retry-all", "--status", "discarded", "--json")
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["matched"] == 5000 - moved
    assert cli_json("--db", url, "status")["counts"]["discarded"] == 0

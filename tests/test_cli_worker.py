"""``resilient-sync worker module:attr`` and ``resilient-sync pull module:attr``.

The worker runs a user's dispatcher (``tests/cli_apps.py``, imported with
``--app-dir`` as a deployed app would be) in a real subprocess on SQLite,
with a destination slow enough to be signalled mid-batch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cli_support import cli, cli_json
from resilient_sync import DeliveryStatus, Event, Producer
from resilient_sync.stores import open_stores

TESTS = Path(__file__).resolve().parent


class Running:
    """A ``resilient-sync`` subprocess whose stderr is collected as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_SYNC_")}
        environ.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "80", **env})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resilient_sync", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        self.err: list[str] = []
        self.out: list[str] = []
        _RUNNING.append(self)
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _drain(stream: Any, into: list[str]) -> None:
        into.extend(line.rstrip("\n") for line in stream)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()

    def wait_for(self, check: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; stderr so far:\n{self.stderr}")
            time.sleep(0.02)

    def signal(self, signum: int) -> float:
        self.proc.send_signal(signum)
        return time.monotonic()

    def finish(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)


_RUNNING: list[Running] = []


@pytest.fixture(autouse=True)
def _no_orphans() -> Any:
    """Kill what a failed test left running."""
    yield
    while _RUNNING:
        running = _RUNNING.pop()
        if running.proc.poll() is None:
            running.proc.kill()
            running.finish()


def _queue(tmp_path: Path, n: int) -> str:
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    queue, idempotency = open_stores(url)
    try:
        Producer(queue, ["pos"]).submit_many(Event(f"e{i:02d}", "t", {"i": i}) for i in range(n))
    finally:
        queue.close()
        idempotency.close()
    return url


def _env(tmp_path: Path, url: str, delay: float) -> dict[str, str]:
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    return {"RS_TEST_DB": url, "RS_TEST_MARKS": str(marks), "RS_TEST_DELAY": str(delay)}


def _marked(tmp_path: Path, kind: str) -> set[str]:
    return {p.name.split(".")[0] for p in (tmp_path / "marks").glob(f"*.{kind}")}


def _statuses(url: str) -> dict[str, DeliveryStatus]:
    queue, idempotency = open_stores(url, read_only=True)
    try:
        return {d.event.id: d.status for d in queue.list(limit=1000).items}
    finally:
        queue.close()
        idempotency.close()


_STOPPED = re.compile(
    r"worker stopped after [\d.]+s: claimed (\d+), succeeded (\d+), retry_scheduled (\d+), "
    r"needs_action (\d+), released (\d+), lost_lease (\d+)"
)


@pytest.mark.parametrize(
    ("target", "signum"),
    [
        ("cli_apps:build_dispatcher", signal.SIGTERM),
        ("cli_apps:build_async_dispatcher", signal.SIGINT),
    ],
    ids=["Dispatcher-SIGTERM", "AsyncDispatcher-SIGINT"],
)
def test_the_worker_stops_cleanly_on_a_signal_mid_batch(
    tmp_path: Path, target: str, signum: int
) -> None:
    url = _queue(tmp_path, 30)
    worker = Running(
        ["worker", target, "--app-dir", str(TESTS), "--shutdown-timeout", "10s"],
        _env(tmp_path, url, 0.3),
    )
    worker.wait_for(lambda: len(_marked(tmp_path, "started")) >= 2)
    sent = worker.signal(signum)
    code = worker.finish()
    took = time.monotonic() - sent
    assert code == 0, worker.stderr
    assert took < 10 + 2, took
    started = worker.err[0]
    assert "worker started:" in started
    for expected in ("for pos", "SQLiteQueueStore(", "lease 60s", "batch size 10", "concurrency 1"):
        assert expected in started, (expected, started)
    statuses = _statuses(url)
    assert DeliveryStatus.IN_FLIGHT not in statuses.values()
    began = _marked(tmp_path, "started")
    assert began == _marked(tmp_path, "finished")  # what started was let finish
    assert {e for e, s in statuses.items() if s is DeliveryStatus.SUCCEEDED} == began
    assert {e for e, s in statuses.items() if s is DeliveryStatus.PENDING} == set(statuses) - began
    assert 2 <= len(began) < 30
    match = next(m for m in map(_STOPPED.search, worker.err) if m)
    claimed, succeeded, _, needs_action, released, _ = map(int, match.groups())
    assert succeeded == len(began)
    assert needs_action == 0
    assert claimed == succeeded + released
    assert any(signal.Signals(signum).name + ": stopping" in line for line in worker.err)


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    url = _queue(tmp_path, 30)
    worker = Running(
        ["worker", "cli_apps:build_dispatcher", "--app-dir", str(TESTS)],
        _env(tmp_path, url, 2.0),
    )
    worker.wait_for(lambda: len(_marked(tmp_path, "started")) >= 1)
    worker.signal(signal.SIGTERM)
    worker.wait_for(lambda: any("stopping" in line for line in worker.err))
    sent = worker.signal(signal.SIGTERM)
    code = worker.finish()
    assert time.monotonic() - sent < 1.5
    assert code == 128 + signal.SIGTERM
    assert "SIGTERM again: exiting at once" in worker.stderr
    assert not _marked(tmp_path, "finished")  # it did not wait for the running delivery


def test_the_shutdown_timeout_bounds_the_wait(tmp_path: Path) -> None:
    url = _queue(tmp_path, 5)
    worker = Running(
        ["worker", "cli_apps:build_dispatcher", "--app-dir", str(TESTS), "--shutdown-timeout", "1"],
        _env(tmp_path, url, 5.0),
    )
    worker.wait_for(lambda: len(_marked(tmp_path, "started")) >= 1)
    sent = worker.signal(signal.SIGTERM)
    code = worker.finish()
    assert 0.9 < time.monotonic() - sent < 3.0
    assert code == 1
    assert "shutdown timeout (1s) passed" in worker.stderr


def test_json_logs(tmp_path: Path) -> None:
    url = _queue(tmp_path, 3)
    argv = ["worker", "cli_apps:build_dispatcher", "--app-dir", str(TESTS)]
    with Running(
        [*argv, "--log-format", "json", "--log-level", "debug"], _env(tmp_path, url, 0.05)
    ) as worker:
        worker.wait_for(lambda: sum('"status": "succeeded"' in line for line in worker.err) == 3)
        worker.signal(signal.SIGINT)
        assert worker.finish() == 0, worker.stderr
    records = [json.loads(line) for line in worker.err]  # every line is one JSON object
    started = next(r for r in records if r.get("event") == "worker_started")
    assert started["destinations"] == "pos"
    assert started["batch_size"] == 10
    assert started["worker_id"]
    assert "SQLiteQueueStore" in started["queue"]
    stopped = next(r for r in records if r.get("event") == "worker_stopped")
    assert stopped["succeeded"] == 3
    assert stopped["level"] == "INFO"
    delivered = [r for r in records if r.get("status") == "succeeded"]
    assert {r["event_id"] for r in delivered} == {"e00", "e01", "e02"}
    assert all(r["delivery_id"] and r["destination"] == "pos" for r in delivered)


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        ("cli_apps", 2, "write it as module:attribute"),
        ("no_such_module_xyz:app", 1, "cannot import 'no_such_module_xyz'"),
        ("cli_apps:nothing_here", 1, "cannot find 'nothing_here' in module 'cli_apps'"),
        ("cli_apps:NOT_A_DISPATCHER", 1, "is int, not a Dispatcher or an AsyncDispatcher"),
        ("cli_apps:source", 1, "not a Dispatcher"),
    ],
)
def test_worker_target_errors_are_one_line(target: str, code: int, message: str) -> None:
    done = cli("worker", target, "--app-dir", str(TESTS), env={"RS_TEST_DB": "memory://"})
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_failing_factorys_message_passes_the_gate() -> None:
    """Escapes, NUL, a lone surrogate, a token and 5 MB in the user's exception:
    one short, printable, redacted line."""
    from cli_apps import HOSTILE_TOKEN

    done = cli(
        "worker",
        "cli_apps:failing_factory",
        "--app-dir",
        str(TESTS),
        env={"RS_TEST_DB": "memory://"},
    )
    assert done.returncode == 1, done.stderr
    assert "cli_apps:failing_factory() failed: RuntimeError" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert len(done.stderr) < 2000
    assert HOSTILE_TOKEN not in done.stderr
    for raw in ("\x1b", "\x07", "\x00", "\ud800"):
        assert raw not in done.stderr  # the raw characters (escaped forms are fine)


# -- pull -----------------------------------------------------------------------------------


def _events(path: Path, ids: list[str]) -> None:
    with path.open("a") as file:
        for event_id in ids:
            row = {"id": event_id, "type": "customer.created", "payload": {"n": event_id}}
            file.write(json.dumps(row) + "\n")


def test_pull_once_from_the_saved_cursor(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    _events(feed, ["c1", "c2", "c3"])
    url = f"sqlite:///{tmp_path / 'new.db'}"
    env = {"RS_TEST_SOURCE": str(feed)}
    argv = ["pull", "cli_apps:source", "--to", "pos", "--to", "crm", "--app-dir", str(TESTS)]
    first = cli("--db", url, *argv, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        "Pulled 3 events from shop-file: enqueued 6 deliveries, skipped 0 already known."
    )
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o600  # a new queue, owner-only
    again = cli("--db", url, *argv, env=env)
    assert "Pulled 0 events from shop-file: enqueued 0 deliveries" in again.stdout
    _events(feed, ["c4"])
    more = cli_json("--db", url, *argv, env=env)
    assert (more["events"], more["enqueued"], more["skipped"]) == (1, 2, 0)
    # another source over the same events: known event ids are skipped
    other = cli("--db", url, "pull", "cli_apps:other_source", "--to", "pos",
                "--app-dir", str(TESTS), env=env)  # fmt: skip
    assert "Pulled 4 events from shop-file-again: enqueued 0 deliveries, skipped 4" in other.stdout
    status = cli_json("--db", url, "status")
    assert status["total"] == 8
    assert set(status["destinations"]) == {"pos", "crm"}


def test_pull_every_interval_stops_on_sigterm(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    _events(feed, ["c1"])
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    puller = Running(
        ["--db", url, "pull", "cli_apps:source", "--to", "pos", "--every", "0.3s",
         "--app-dir", str(TESTS)],
        {"RS_TEST_SOURCE": str(feed)},
    )  # fmt: skip
    puller.wait_for(lambda: len(puller.out) >= 1)
    _events(feed, ["c2", "c3"])
    puller.wait_for(lambda: any("Pulled 2 events" in line for line in puller.out))
    sent = puller.signal(signal.SIGTERM)
    assert puller.finish() == 0, puller.stderr
    assert time.monotonic() - sent < 2
    assert puller.out[0].startswith("Pulled 1 events from shop-file: enqueued 1")
    assert "SIGTERM: stopped after" in puller.stderr
    assert cli_json("--db", url, "status")["total"] == 3


def test_pull_refuses_an_invalid_event_and_keeps_the_cursor(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    _events(feed, ["c1"])
    with feed.open("a") as file:
        file.write(json.dumps({"id": "", "type": "t", "payload": {}}) + "\n")
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    done = cli("--db", url, "pull", "cli_apps:source", "--to", "pos", "--app-dir", str(TESTS),
               env={"RS_TEST_SOURCE": str(feed)})  # fmt: skip
    assert done.returncode == 1
    assert "gave an invalid event" in done.stderr
    assert cli_json("--db", url, "status")["total"] == 0

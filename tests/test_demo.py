"""``resilient-sync demo --quick`` end to end: a real POS server on 127.0.0.1,
the real command in a subprocess, the SQLite queue it leaves behind."""

from __future__ import annotations

from pathlib import Path

from cli_support import cli, cli_json
from resilient_sync import Dispatcher, Event, RetryPolicy
from resilient_sync.stores import open_stores
from resilient_sync.testing import RecordingDestination


def test_the_quick_demo_runs_end_to_end_and_can_be_rerun(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    done = cli("demo", "--quick", "--db", url, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in (
        "simulated POS  http://127.0.0.1:",
        "POS: outage begins, every request gets 503",
        "PAUSED: permission denied: HTTP 401",
        "$ resilient-sync resume pos",
        "(0 applied twice)",
        f"$ resilient-sync --db {url} status",
        "Needs action, by category:",
        "Failed attempts per 1s by category",
        f"$ resilient-sync --db {url} list --status needs_action",
        "What to do about each",
        "The demo fixes the first one itself",
        "--set phone=+316",
    ):
        assert expected in out, expected
    assert "Traceback" not in out + done.stderr
    status = cli_json("--db", url, "status")
    counts = status["counts"]
    assert status["total"] == 40 + 24
    # what is left needs a person: the ambiguous duplicate and the unknown SKU
    assert status["destinations"]["pos"]["needs_action"] == {"duplicate": 1, "mapping": 1}
    assert counts["succeeded"] + counts["needs_action"] + counts["pending"] == status["total"]
    assert counts["retry_scheduled"] == counts["in_flight"] == 0
    assert status["destinations"]["pos"]["paused"] is False
    queue, idempotency = open_stores(url)
    try:
        (edit,) = [a for a in queue.audit() if a.action == "edit"]
        assert edit.actor == "demo-operator"
        edited = queue.get(edit.delivery_id or "")
        assert edited is not None
        assert edited.status.value == "succeeded"
        assert edited.event.payload["phone"] == edit.details["after"]["payload.phone"]
    finally:
        queue.close()
        idempotency.close()
    log = (tmp_path / "demo.log").read_text()
    assert "delivery_id=" in log
    assert "destination=pos" in log

    again = cli("demo", "--quick", "--db", url, "--no-fix", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert cli_json("--db", url, "status")["total"] == 40 + 24  # recreated, not appended


def test_the_demo_never_overwrites_a_database_it_did_not_create(tmp_path: Path) -> None:
    path = tmp_path / "prod.db"
    queue, idempotency = open_stores(f"sqlite:///{path}")
    try:
        Dispatcher(queue, idempotency, [RecordingDestination("pos")], retry=RetryPolicy()).submit(
            Event("e1", "t", {})
        )
    finally:
        queue.close()
        idempotency.close()
    done = cli("demo", "--quick", "--db", f"sqlite:///{path}", cwd=tmp_path)
    assert done.returncode == 1
    assert "was not created by the demo" in done.stderr
    assert cli_json("--db", f"sqlite:///{path}", "status")["total"] == 1
    bad = cli("demo", "--db", "memory://", cwd=tmp_path)
    assert bad.returncode == 2
    assert "the demo runs on SQLite" in bad.stderr

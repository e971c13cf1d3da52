"""The ``resilient-sync`` command on a real SQLite file (and PostgreSQL).

Most tests run the real command in a subprocess (``python -m resilient_sync``);
the option-parsing details run ``main()`` in-process on the same kind of
file, which is faster and just as real.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from cli_support import (
    BULK,
    COLUMNS,
    Built,
    assert_event_and_reason,
    build_queue,
    cli,
    cli_json,
)
from pg_support import drop_schema, new_schema_name, require_postgres
from resilient_sync import (
    DeliveryStatus,
    Dispatcher,
    ErrorCategory,
    Event,
    Operator,
    RetryableError,
    RetryPolicy,
)
from resilient_sync._cli import main
from resilient_sync.stores import open_stores
from resilient_sync.testing import FlakyDestination


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Built]:
    folder = tmp_path_factory.mktemp("cli-template")
    path = folder / "sync.db"
    built = build_queue(f"sqlite:///{path}")
    return path, built


@pytest.fixture
def db(template: tuple[Path, Built], tmp_path: Path) -> tuple[str, Built]:
    """A fresh copy of the template queue: (``--db`` URL, ids)."""
    source, built = template
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copy(f"{source}{suffix}", tmp_path / f"sync.db{suffix}")
    return f"sqlite:///{tmp_path / 'sync.db'}", built


@pytest.fixture(autouse=True)
def _terminal_80(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs see an 80-column terminal too."""
    monkeypatch.setenv("COLUMNS", COLUMNS)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def operator(url: str) -> Operator:
    queue, idempotency = open_stores(url)
    idempotency.close()
    return Operator(queue)


# -- the real command, in a subprocess -----------------------------------------------


def test_status_shows_counts_categories_and_the_paused_destination(db: tuple[str, Built]) -> None:
    url, _ = db
    done = cli("--db", url, "status")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{8 + BULK + 2} deliveries, 5 need action" in out
    for category in ("data_format", "mapping", "transient", "duplicate", "permission"):
        assert category in out
    assert "PAUSED crm" in out
    assert "token revoked" in out
    assert "resilient-sync resume crm" in out
    assert done.stderr == ""


def test_status_check_exits_3_when_something_needs_a_person(db: tuple[str, Built]) -> None:
    url, _ = db
    assert cli("--db", url, "status", "--check").returncode == 3


def test_status_json_shape(db: tuple[str, Built]) -> None:
    url, _ = db
    data = cli_json("status", "--db", url)
    assert data["total"] == 8 + BULK + 2
    assert data["needs_action"] == 5
    assert data["counts"]["succeeded"] == 8 + BULK + 2 - 5
    pos, crm = data["destinations"]["pos"], data["destinations"]["crm"]
    assert pos["needs_action"] == {
        "data_format": 1,
        "duplicate": 1,
        "mapping": 1,
        "transient": 1,
    }
    assert crm["paused"] is True
    assert "token revoked" in crm["paused_reason"]
    assert crm["needs_action"] == {"permission": 1}
    assert set(data["counts"]) == {s.value for s in DeliveryStatus}


def test_list_show_and_attempts_as_json(db: tuple[str, Built]) -> None:
    url, built = db
    listed = cli_json("--db", url, "list", "--status", "needs_action", "--category", "data_format")
    assert [d["event"]["id"] for d in listed["items"]] == ["c2"]
    assert listed["next_cursor"] is None
    shown = cli_json("--db", url, "show", built.id("c2"))
    delivery = shown["delivery"]
    assert delivery["status"] == "needs_action"
    assert delivery["last_error"]["category"] == "data_format"
    assert delivery["last_error"]["field"] == "phone"
    assert delivery["event"]["payload"]["phone"] == "12 34"
    assert [a["action"] for a in shown["attempts"]] == ["deliver"]
    attempts = cli_json("--db", url, "attempts", built.id("c2"))
    assert attempts["attempts"] == shown["attempts"]


def test_show_explains_what_to_do(db: tuple[str, Built]) -> None:
    url, built = db
    done = cli("--db", url, "show", built.id("c2"))
    assert done.returncode == 0
    assert "Field       phone" in done.stdout
    assert "What to do:" in done.stdout
    # the command carries the id's shortest unique prefix, which works as it is
    line = next(line for line in done.stdout.splitlines() if " edit " in line)
    short = line.split(" edit ", 1)[1].split()[0]
    assert built.id("c2").startswith(short)
    assert len(short) < len(built.id("c2"))
    assert line.strip() == f"resilient-sync --db {url} edit {short} --set phone=VALUE --retry"
    assert cli_json("--db", url, "show", short)["delivery"]["id"] == built.id("c2")


def test_edit_then_retry_is_audited_with_old_and_new_values(db: tuple[str, Built]) -> None:
    url, built = db
    delivery_id = built.id("c2")
    done = cli("--db", url, "edit", delivery_id, "--set", "phone=+31201234567", "--retry")
    assert done.returncode == 0, done.stderr
    assert 'payload.phone: "12 34" -> "+31201234567"' in done.stdout
    shown = cli_json("--db", url, "show", delivery_id)
    assert shown["delivery"]["status"] == "pending"
    assert shown["delivery"]["event"]["payload"]["phone"] == "+31201234567"
    edit = shown["attempts"][-1]
    assert edit["action"] == "edit"
    assert edit["actor"] == "tester"
    assert edit["details"]["before"] == {"payload.phone": "12 34"}
    assert edit["details"]["after"] == {"payload.phone": "+31201234567"}
    keys = edit["details"]["idempotency_key"]
    assert keys["after"].startswith(keys["before"] + ":")
    assert shown["delivery"]["idempotency_key"] == keys["after"]


def test_edit_after_a_transient_error_needs_force(db: tuple[str, Built]) -> None:
    url, built = db
    done = cli("--db", url, "edit", built.id("c4"), "--set", "phone=+31200000000")
    assert done.returncode == 1
    assert "may have applied the original" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    forced = cli(
        "--db", url, "--actor", "ada", "edit", built.id("c4"), "--set", "phone=x", "--force"
    )
    assert forced.returncode == 0, forced.stderr


def test_retry_all_dry_run_then_for_real(db: tuple[str, Built]) -> None:
    url, _ = db
    dry = cli("--db", url, "retry-all", "--dry-run")
    assert dry.returncode == 0
    assert "Would re-sync 5 deliveries" in dry.stdout
    assert cli_json("--db", url, "status")["needs_action"] == 5
    real = cli_json("--db", url, "retry-all", "--destination", "pos", "--category", "transient")
    assert real["matched"] == 1
    assert len(real["changed"]) == 1
    assert cli_json("--db", url, "status")["needs_action"] == 4


def test_pause_and_resume(db: tuple[str, Built]) -> None:
    url, _ = db
    resumed = cli("--db", url, "resume", "crm", "--note", "new token")
    assert resumed.returncode == 0, resumed.stderr
    assert "retry-all --category permission --destination crm" in resumed.stdout
    assert cli_json("--db", url, "status")["destinations"]["crm"]["paused"] is False
    paused = cli("--db", url, "pause", "pos", "--reason", "POS maintenance until 14:00")
    assert paused.returncode == 0
    status = cli_json("--db", url, "status")["destinations"]["pos"]
    assert status["paused"] is True
    assert status["paused_reason"] == "POS maintenance until 14:00"
    unknown = cli("--db", url, "pause", "nope")
    assert unknown.returncode == 1
    assert "unknown destination 'nope'" in unknown.stderr


def test_a_missing_database_is_one_line_and_is_not_created(tmp_path: Path) -> None:
    done = cli("status", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "no queue database at 'resilient-sync.db'" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "resilient-sync.db").exists()
    via_env = cli("list", cwd=tmp_path, env={"RESILIENT_SYNC_DB": "sqlite:///other.db"})
    assert via_env.returncode == 1
    assert "'other.db'" in via_env.stderr
    assert not (tmp_path / "other.db").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--db", "mysql://x/y", "status"], "unsupported store URL scheme 'mysql'"),
        (["--db", "nonsense", "status"], "invalid store URL 'nonsense'"),
        (["--db", "sqlite://host/x.db", "status"], "a host is not allowed"),
    ],
)
def test_a_bad_url_is_a_usage_error(argv: list[str], expected: str) -> None:
    done = cli(*argv)
    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unknown_id_is_one_line(db: tuple[str, Built]) -> None:
    url, built = db
    for argv in (["show", "nope"], ["attempts", "nope"], ["retry", built.id("c2"), "nope"]):
        done = cli("--db", url, *argv)
        assert done.returncode == 1
        assert done.stderr.strip() == f"resilient-sync: error: no delivery with id 'nope' in {url}"
    # all-or-nothing: c2 was not retried because another id was unknown
    assert cli_json("--db", url, "show", built.id("c2"))["delivery"]["status"] == "needs_action"


def test_the_installed_entry_point_runs() -> None:
    script = Path(sys.executable).parent / "resilient-sync"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    import subprocess

    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("resilient-sync ")


# -- in-process: option details ---------------------------------------------------------


def test_list_filters_search_and_pages(
    capsys: pytest.CaptureFixture[str], db: tuple[str, Built]
) -> None:
    url, _ = db
    code, out, _ = run(
        capsys, "--db", url, "list", "--destination", "pos", "--limit", "10", "--json"
    )
    assert code == 0
    first = json.loads(out)
    assert len(first["items"]) == 10
    seen = [d["id"] for d in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        code, out, _ = run(
            capsys, "--db", url, "list", "-d", "pos", "-n", "10", "--cursor", cursor, "--json"
        )
        page = json.loads(out)
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 8 + BULK

    code, out, _ = run(capsys, "--db", url, "list", "--search", "SKU", "--json")
    assert [d["event"]["id"] for d in json.loads(out)["items"]] == ["c3"]
    code, out, _ = run(capsys, "--db", url, "list", "-q", "bulk-1", "-n", "4", "--json")
    page = json.loads(out)
    assert [d["event"]["id"] for d in page["items"]] == [f"bulk-1{n}" for n in range(4)]
    code, out, _ = run(
        capsys,
        "--db",
        url,
        "list",
        "-q",
        "bulk-1",
        "-n",
        "4",
        "--cursor",
        page["next_cursor"],
        "--json",
    )
    assert [d["event"]["id"] for d in json.loads(out)["items"]] == [
        f"bulk-1{n}" for n in range(4, 8)
    ]
    code, out, _ = run(
        capsys, "--db", url, "list", "--status", "needs-action,succeeded", "--since", "1h", "--json"
    )
    assert len(json.loads(out)["items"]) == 8 + BULK + 2
    code, out, _ = run(capsys, "--db", url, "list", "--since", "2999-01-01", "--json")
    assert json.loads(out)["items"] == []


def test_list_text_table(
    capsys: pytest.CaptureFixture[str], db: tuple[str, Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, built = db
    code, out, _ = run(capsys, "--db", url, "list", "-s", "needs_action")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["ID", "DEST", "STATUS", "CATEGORY"]  # 80 columns: two lines
    firsts = [row for row in rows if not row.startswith(" ")]
    assert len(firsts) == 5
    assert any(built.id("c3").startswith(row.split()[0]) for row in firsts)
    assert_event_and_reason(
        out,
        {
            "c2": "[phone] phone is invalid",
            "c3": "[lines[0].sku] unknown SKU 'TEE-XXL'",
            "c4": "POS down (HTTP 503)",
            "c5": "[email] potential duplicate: email has already been taken",
            "c6": "token revoked",
        },
    )
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: one line per delivery
    code, out, _ = run(capsys, "--db", url, "list", "-s", "needs_action")
    header, *rows = out.strip().splitlines()
    assert header.split() == [
        "ID", "DESTINATION", "STATUS", "CATEGORY", "TRIES", "UPDATED", "EVENT", "REASON"
    ]  # fmt: skip
    assert len(rows) == 5
    assert any(built.id("c3").startswith(r.split()[0]) and "[lines[0].sku]" in r for r in rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "--status", "bogus"], "unknown status 'bogus'"),
        (["list", "--category", "weird"], "unknown category 'weird'"),
        (["list", "--since", "yesterday-ish"], "invalid --since"),
        (["list", "--limit", "0"], "--limit must be between 1 and"),
        (["list", "--cursor", "zzz"], "invalid page cursor"),
        (["trend", "--bucket", "0s"], "invalid --bucket"),
        (["retry-all", "--status", "succeeded"], "retry-all cannot retry succeeded"),
        (["edit", "abc", "--set", "phone"], "write path=text or path:=json"),
        (["edit", "abc", "--set", "qty:={nope"], "is not JSON"),
        (["edit", "abc"], "at least one --set"),
    ],
)
def test_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str], db: tuple[str, Built], argv: list[str], message: str
) -> None:
    url, _ = db
    code, out, err = run(capsys, "--db", url, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert out == ""


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert "invalid choice" in err
    code, _, err = run(capsys)
    assert code == 2
    assert "status" in err  # the help lists the commands


def test_trend_and_recent(capsys: pytest.CaptureFixture[str], db: tuple[str, Built]) -> None:
    url, _ = db
    code, out, _ = run(capsys, "--db", url, "trend", "--bucket", "10m", "--since", "1h")
    assert code == 0
    assert "Failed attempts per 10m by category" in out
    assert "transient" in out
    assert "total" in out
    total_row = next(line for line in out.splitlines() if line.startswith("total"))
    assert total_row.split()[-1] == "5"
    code, out, _ = run(capsys, "--db", url, "trend", "--bucket", "10m", "--since", "1h", "--ascii")
    assert "█" not in out
    assert "·" not in out
    code, out, _ = run(capsys, "--db", url, "trend", "--bucket", "1h", "--json")
    data = json.loads(out)
    assert data["bucket_seconds"] == 3600
    assert sum(b["total"] for b in data["buckets"]) == 5
    code, out, _ = run(capsys, "--db", url, "recent", "-n", "3", "--json")
    errors = json.loads(out)["errors"]
    assert len(errors) == 3
    assert all(e["error"] for e in errors)
    code, out, _ = run(capsys, "--db", url, "recent")
    assert "permission" in out


def test_resolve_discard_and_skipped_ids(
    capsys: pytest.CaptureFixture[str], db: tuple[str, Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, built = db
    monkeypatch.setenv("RESILIENT_SYNC_ACTOR", "tester")
    code, out, err = run(
        capsys, "--db", url, "resolve", built.id("c5"), "--note", "same as POS C-7"
    )
    assert code == 0
    assert "Resolved 1 delivery" in out
    code, out, err = run(capsys, "--db", url, "discard", built.id("c3"), built.id("c1"), "--json")
    assert code == 1  # c1 succeeded long ago: it cannot be discarded
    data = json.loads(out)
    assert data["changed"] == [built.id("c3")]
    assert data["skipped"] == [{"id": built.id("c1"), "status": "succeeded"}]
    assert f"skipped {built.id('c1')}: it is succeeded" in err
    code, out, err = run(capsys, "--db", url, "retry", built.id("c3"))
    assert code == 0  # a discarded delivery can be revived
    op = operator(url)
    try:
        assert op.get(built.id("c3")).status is DeliveryStatus.PENDING
        assert op.get(built.id("c5")).status is DeliveryStatus.RESOLVED
        resolve = op.attempts(built.id("c5"))[-1]
        assert (resolve.action, resolve.actor) == ("resolve", "tester")
        assert resolve.reason == "same as POS C-7"
    finally:
        op.queue.close()


def test_edit_json_value_and_unset(
    capsys: pytest.CaptureFixture[str], db: tuple[str, Built]
) -> None:
    url, built = db
    code, out, err = run(
        capsys,
        "--db", url, "--actor", "ada", "edit", built.id("c3"),
        "--set", "lines[0].sku=TEE-M", "--set", "lines[0].qty:=2", "--unset", "phone", "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["after"] == {
        "payload.lines[0].sku": "TEE-M",
        "payload.lines[0].qty": 2,
        "payload.phone": None,
    }
    assert data["delivery"]["status"] == "needs_action"  # no --retry: it waits for `retry`
    assert "phone" not in data["delivery"]["event"]["payload"]
    code, _, err = run(capsys, "--db", url, "edit", built.id("c1"), "--set", "phone=1")
    assert code == 1
    assert "is succeeded; only" in err
    code, _, err = run(capsys, "--db", url, "edit", built.id("c2"), "--set", "nope.deeper=1")
    assert code == 1
    assert "payload.nope does not exist" in err


def test_memory_url_works_but_is_empty(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", "memory://", "status")
    assert code == 0
    assert "The queue is empty" in out


# -- PostgreSQL ----------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Any:
    dsn = require_postgres()
    schema = new_schema_name("rs_cli")
    url = f"{dsn}?schema={schema}"
    try:
        yield url
    finally:
        drop_schema(schema)


@pytest.mark.postgres
def test_the_cli_on_postgresql(pg_url: str) -> None:
    built = build_queue(pg_url)
    status = cli_json("--db", pg_url, "status")
    assert status["needs_action"] == 5
    assert status["destinations"]["crm"]["paused"] is True
    done = cli("--db", pg_url, "edit", built.id("c2"), "--set", "phone=+31201234567", "--retry")
    assert done.returncode == 0, done.stderr
    shown = cli_json("--db", pg_url, "show", built.id("c2"))
    assert shown["delivery"]["status"] == "pending"
    assert shown["attempts"][-1]["details"]["after"] == {"payload.phone": "+31201234567"}
    missing = cli("--db", pg_url, "show", "nope")
    assert missing.returncode == 1
    assert "no delivery with id 'nope'" in missing.stderr
    assert cli_json("--db", pg_url, "retry-all", "--dry-run")["matched"] == 4
    assert ErrorCategory.PERMISSION.value in cli("--db", pg_url, "status").stdout
    listing = cli("--db", pg_url, "list", "--status", "needs_action")
    assert listing.returncode == 0, listing.stderr
    assert_event_and_reason(
        listing.stdout, {"c3": "[lines[0].sku] unknown SKU 'TEE-XXL'", "c6": "token revoked"}
    )
    short = built.prefix(built.id("c3"))  # unique prefixes on PostgreSQL too
    assert cli_json("--db", pg_url, "show", short)["delivery"]["id"] == built.id("c3")


def test_retry_all_shows_progress_on_large_batches(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    queue, idempotency = open_stores(url)
    try:
        ids = [f"e{n}" for n in range(501)]
        pos = FlakyDestination("pos", per_event={i: [RetryableError("down")] for i in ids})
        dispatcher = Dispatcher(
            queue, idempotency, [pos], retry=RetryPolicy(max_attempts=1), batch_size=501
        )
        dispatcher.submit_many(Event(i, "t", {}) for i in ids)
        dispatcher.run_until_idle()
    finally:
        queue.close()
        idempotency.close()
    code, out, err = run(capsys, "--db", url, "retry-all", "--category", "transient")
    assert code == 0
    assert "Re-synced 501 of 501 matching deliveries" in out
    assert err.splitlines() == ["retry-all: 500/501 re-synced", "retry-all: 501/501 re-synced"]


# -- edit: adding needs --add, misses are warned about (item 13) ----------------------


def test_edit_a_typo_is_refused_and_a_new_field_needs_add(db: tuple[str, Built]) -> None:
    url, built = db
    c2 = built.id("c2")
    typo = cli("--db", url, "edit", c2, "--set", "Phone=+31201234567")
    assert typo.returncode == 1
    message = typo.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "payload.Phone does not exist in the payload" in message
    assert "did you mean 'phone'" in message
    assert "--add" in message
    assert "Phone" not in cli_json("--db", url, "show", c2)["delivery"]["event"]["payload"]
    added = cli("--db", url, "edit", c2, "--add", "company=ACME", "--set", "phone=+31201234567")
    assert added.returncode == 0, added.stderr
    assert 'payload.company: (new) -> "ACME"' in added.stdout
    assert 'payload.phone: "12 34" -> "+31201234567"' in added.stdout
    payload = cli_json("--db", url, "show", c2)["delivery"]["event"]["payload"]
    assert payload["company"] == "ACME"
    exists = cli("--db", url, "edit", c2, "--add", "phone=1")
    assert exists.returncode == 1
    assert "already exists" in exists.stderr
    assert "--set" in exists.stderr
    missing = cli("--db", url, "edit", c2, "--unset", "nosuchkey")
    assert missing.returncode == 1
    assert "payload.nosuchkey does not exist" in missing.stderr
    bad = cli("--db", url, "edit", c2, "--add", "x")
    assert bad.returncode == 2
    assert "invalid --add 'x'" in bad.stderr


def test_an_edit_that_misses_the_rejected_field_warns(db: tuple[str, Built]) -> None:
    url, built = db
    c2 = built.id("c2")  # the POS rejected its phone (data_format)
    other = cli("--db", url, "edit", c2, "--set", "email=c2@shop.example")
    assert other.returncode == 0, other.stderr
    (warning,) = other.stderr.strip().splitlines()
    assert warning.startswith("warning: pos rejected the field 'phone'")
    assert "this edit does not change it" in warning
    fixed = cli("--db", url, "edit", c2, "--set", "phone=+31201234567")
    assert fixed.returncode == 0
    assert fixed.stderr == ""
    mapping = cli("--db", url, "edit", built.id("c3"), "--set", "email=c3@shop.example")
    assert mapping.returncode == 0
    assert mapping.stderr == ""  # only data_format names the field to fix


def test_an_unsafe_edit_is_refused_with_the_reason_and_the_force_hint(
    db: tuple[str, Built],
) -> None:
    url, built = db
    done = cli("--db", url, "edit", built.id("c4"), "--set", "phone=+31200000000")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "may have applied the original payload" in line
    assert "--force" in line
    unchanged = cli_json("--db", url, "show", built.id("c4"))["delivery"]
    assert unchanged["event"]["payload"]["phone"] == "+31201234567"

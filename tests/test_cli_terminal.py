"""The CLI on a real terminal: remote text cannot drive it, and it fits.

- Text from outside (event ids, payloads, results, reasons, notes, actors,
  destination names, error fields) is escaped on its way to the terminal, in
  tables and ``--json`` alike, including rows written before the text gate
  existed (written straight into the SQLite file here).
- At 80 columns ``list`` keeps EVENT and REASON, ``trend`` fits and shows
  dates across midnight; ids are taken by unique prefix; ``show`` says what
  a waiting delivery waits for.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cli_support import COLUMNS, Built, assert_event_and_reason, build_queue, cli, cli_json, flat
from resilient_sync import (
    DataFormatError,
    Dispatcher,
    Event,
    Operator,
    RetryableError,
    RetryPolicy,
)
from resilient_sync.stores import open_stores
from resilient_sync.testing import FlakyDestination, RecordingDestination

#: What a terminal acts on: C0 controls but tab and newline, DEL, C1
#: controls (0x9b is a CSI), direction overrides, line separators.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

EVIL_ID = "evil\x1b]0;pwned\x07-c2"
EVIL_MESSAGE = "boom \x1b[2J\x1b[31mred\x07 \x9b31m \u202egnp.exe"
EVIL_FIELD = "ph\x1b[8mone"
EVIL_RESULT = {"pos_id": "\x1b[5mblink\x07"}
EVIL_PAYLOAD = {"name": "Ada \x1b[41mLovelace\x07", "note": "\x9b2J"}
EVIL_ACTOR = "mallory\x1b[8m"
EVIL_REASON = "fixed \x1b[1A\x1b[2Kit\x07"
EVIL_PAUSE = "revoked \x1b[31m\x9b31m token"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Built]:
    folder = tmp_path_factory.mktemp("cli-terminal")
    path = folder / "sync.db"
    return path, build_queue(f"sqlite:///{path}")


@pytest.fixture
def db(template: tuple[Path, Built], tmp_path: Path) -> tuple[str, Built]:
    source, built = template
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copy(f"{source}{suffix}", tmp_path / f"sync.db{suffix}")
    return f"sqlite:///{tmp_path / 'sync.db'}", built


def poison(path: Path, built: Built) -> str:
    """Write raw control characters into the queue, as rows stored before
    the gate existed would hold them; returns the poisoned delivery's id."""
    target = built.id("c2")
    with sqlite3.connect(path) as conn:
        event = json.loads(
            conn.execute(
                "SELECT event FROM resilient_sync_deliveries WHERE id = ?", (target,)
            ).fetchone()[0]
        )
        event["id"] = EVIL_ID
        event["payload"] = {**event["payload"], **EVIL_PAYLOAD}
        error = {
            "category": "data_format",
            "message": EVIL_MESSAGE,
            "field": EVIL_FIELD,
            "exception_type": "x\x1b[0m.Error",
            "retry_after": None,
        }
        conn.execute(
            "UPDATE resilient_sync_deliveries SET event = ?, event_id = ?, last_error = ?, "
            "result = ? WHERE id = ?",
            (json.dumps(event), EVIL_ID, json.dumps(error), json.dumps(EVIL_RESULT), target),
        )
        conn.execute(
            "UPDATE resilient_sync_audit SET reason = ?, actor = ?, error = ? "
            "WHERE delivery_id = ?",
            (EVIL_REASON, EVIL_ACTOR, json.dumps(error), target),
        )
        conn.execute(
            "UPDATE resilient_sync_destinations SET paused_reason = ? WHERE name = 'crm'",
            (EVIL_PAUSE,),
        )
    conn.close()
    return target


def assert_inert(text: str) -> None:
    found = UNSAFE.findall(text)
    assert not found, f"raw control characters reach the terminal: {found!r}\n{text!r}"


def test_raw_control_characters_never_reach_the_terminal(db: tuple[str, Built]) -> None:
    """Item 4: every read command, as a table and as JSON, on rows holding
    ESC, BEL, CSI (0x9b) and a direction override."""
    url, built = db
    target = poison(Path(url.removeprefix("sqlite:///")), built)
    short = built.prefix(target)
    for argv in (
        ["status"],
        ["list"],
        ["list", "--status", "needs_action"],
        ["show", target],
        ["show", short],
        ["attempts", target],
        ["recent"],
        ["trend", "--since", "1h", "--bucket", "5m"],
    ):
        for extra in ([], ["--json"]):
            done = cli("--db", url, *argv, *extra)
            assert done.returncode == 0, (argv, extra, done.stderr)
            assert_inert(done.stdout)
            assert_inert(done.stderr)
            if extra:
                json.loads(done.stdout)
    table = cli("--db", url, "show", target).stdout
    assert "evil\\x1b]0;pwned\\x07-c2" in table  # shown, inert
    assert "\\x9b31m" in table
    assert "\\u202e" in table
    assert "mallory\\x1b[8m" in table
    assert "revoked \\x1b[31m" in cli("--db", url, "status").stdout
    # JSON is the same data, escaped by JSON itself: parsing gives the raw values back
    shown = cli_json("--db", url, "show", target)
    assert shown["delivery"]["event"]["id"] == EVIL_ID
    assert shown["delivery"]["last_error"]["message"] == EVIL_MESSAGE
    assert shown["delivery"]["last_error"]["field"] == EVIL_FIELD
    assert shown["delivery"]["result"] == EVIL_RESULT
    assert shown["delivery"]["event"]["payload"]["name"] == EVIL_PAYLOAD["name"]
    assert shown["attempts"][0]["actor"] == EVIL_ACTOR
    assert shown["attempts"][0]["reason"] == EVIL_REASON
    status = cli_json("--db", url, "status")
    assert status["destinations"]["crm"]["paused_reason"] == EVIL_PAUSE


def test_errors_on_stderr_are_inert_too(db: tuple[str, Built]) -> None:
    url, _ = db
    done = cli("--db", url, "show", "nope\x1b[31m\x07")
    assert done.returncode == 1
    assert_inert(done.stderr)
    assert "\\x1b[31m" in done.stderr


def test_an_operator_note_with_escapes_is_stored_clean_and_shown_inert(
    db: tuple[str, Built],
) -> None:
    url, built = db
    done = cli("--db", url, "--actor", "eve\x1b[2J", "resolve", built.id("c5"), "--note", "ok\x07")
    assert done.returncode == 0, done.stderr
    shown = cli("--db", url, "attempts", built.id("c5"))
    assert_inert(shown.stdout)
    assert "ok\\x07" in shown.stdout


# -- fitting the terminal ---------------------------------------------------------


def test_every_line_fits_80_columns(db: tuple[str, Built]) -> None:
    url, built = db
    for argv in (
        ["status"],
        ["list"],
        ["list", "-s", "needs_action"],
        ["recent"],
        ["attempts", built.id("c2")],
        ["trend"],
        ["trend", "--since", "7d", "--bucket", "10m"],
    ):
        done = cli("--db", url, *argv)
        assert done.returncode == 0, (argv, done.stderr)
        lines = done.stdout.splitlines()
        wide = [line for line in lines if len(line) > int(COLUMNS) and url not in line]
        assert not wide, (argv, wide)
    listing = cli("--db", url, "list", "-s", "needs_action").stdout
    assert_event_and_reason(listing, {"c2": "[phone] phone is invalid", "c6": "token revoked"})


def test_trend_merges_columns_to_fit_and_shows_dates_across_midnight(
    db: tuple[str, Built],
) -> None:
    url, _ = db
    done = cli("--db", url, "trend", "--since", "7d", "--bucket", "10m")
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Failed attempts per ")
    assert "per 10m" not in lines[0]  # 1009 buckets cannot fit: columns were merged
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[-1] == "5"
    start = datetime.now(timezone.utc) - timedelta(days=7)
    axis = lines[3]
    assert start.strftime("%m-%d") in axis  # a week crosses midnight: dates on the axis
    short = cli("--db", url, "trend", "--since", "30h", "--bucket", "1h").stdout.splitlines()
    assert re.search(r"\d\d-\d\d \d\d:\d\d", short[3]), short[3]  # date and time
    data = cli_json("--db", url, "trend", "--since", "7d", "--bucket", "10m")
    assert len(data["buckets"]) > 1000  # JSON keeps every bucket


# -- ids by unique prefix -------------------------------------------------------------


def test_every_command_takes_a_unique_prefix(db: tuple[str, Built]) -> None:
    url, built = db
    listing = cli("--db", url, "list", "-s", "needs_action").stdout
    shown = {
        line.split()[0] for line in listing.splitlines()[2:] if line and not line.startswith(" ")
    }
    assert len(shown) == 5
    assert all(12 <= len(prefix) < 32 for prefix in shown)
    by_event = {}
    for prefix in shown:
        data = cli_json("--db", url, "show", prefix)
        by_event[data["delivery"]["event"]["id"]] = prefix
        assert data["delivery"]["id"].startswith(prefix)
    assert cli_json("--db", url, "attempts", by_event["c2"])["delivery_id"] == built.id("c2")
    edit = cli("--db", url, "edit", by_event["c2"], "--set", "phone=+31201234567")
    assert edit.returncode == 0, edit.stderr
    assert cli_json("--db", url, "retry", by_event["c2"], by_event["c4"])["changed"] == [
        built.id("c2"),
        built.id("c4"),
    ]
    assert cli_json("--db", url, "resolve", by_event["c5"])["changed"] == [built.id("c5")]
    assert cli_json("--db", url, "discard", by_event["c3"])["changed"] == [built.id("c3")]
    c6 = built.prefix(built.id("c6"), at_least=16).upper()
    assert cli("--db", url, "show", c6).returncode == 0  # any case


def test_an_ambiguous_prefix_names_the_candidates(db: tuple[str, Built]) -> None:
    url, built = db
    ids = sorted(built.ids.values())
    common = next(
        a[: n + 1]
        for a, b in itertools.pairwise(ids)
        for n in range(31, 3, -1)
        if a[:n] == b[:n] and len({i for i in ids if i.startswith(a[:n])}) >= 2
    )
    common = common[:-1]
    done = cli("--db", url, "show", common)
    assert done.returncode == 1
    assert "is ambiguous" in done.stderr
    assert "give more characters" in done.stderr
    matching = [i for i in ids if i.startswith(common)]
    for candidate in matching[:10]:
        assert candidate in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # an action is all-or-nothing: nothing changed
    nothing = cli("--db", url, "retry", built.id("c2"), common)
    assert nothing.returncode == 1
    assert cli_json("--db", url, "show", built.id("c2"))["delivery"]["status"] == "needs_action"
    short = cli("--db", url, "show", ids[0][:3])
    assert short.returncode == 1
    assert "a prefix needs 4 characters or more" in short.stderr


# -- show: what a waiting delivery waits for -------------------------------------------------


def test_show_says_what_a_waiting_delivery_waits_for(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wait.db'}"
    queue, idempotency = open_stores(url)
    try:
        pos = FlakyDestination(
            "pos",
            per_event={
                "first": [DataFormatError("phone is invalid", field="phone")],
                "later": [RetryableError("POS down")],
            },
        )
        crm = RecordingDestination("crm")
        erp = RecordingDestination("erp")
        dispatcher = Dispatcher(
            queue,
            idempotency,
            [pos, crm, erp],
            retry=RetryPolicy(max_attempts=3, initial_delay=3600, jitter=False),
        )
        dispatcher.submit(
            Event("first", "customer.created", {"phone": "1"}, ordering_key="k"), to="pos"
        )
        dispatcher.submit(Event("second", "order.created", {}, ordering_key="k"), to="pos")
        dispatcher.submit(Event("later", "order.created", {}), to="pos")
        dispatcher.run_until_idle()
        operator = Operator(queue)
        operator.pause("crm", actor="ops", note="POS maintenance until 14:00")
        dispatcher.submit(Event("paused-one", "t", {}), to="crm")
        now = datetime.now(timezone.utc)
        queue.set_destination(
            "erp", now=now, hold_until=now + timedelta(hours=1), hold_reason="rate limited: 429"
        )
        dispatcher.submit(Event("held-one", "t", {}), to="erp")
        dispatcher.submit(Event("free-one", "t", {}), to="pos")
        ids = {d.event.id: d.id for d in queue.list(limit=100).items}
    finally:
        queue.close()
        idempotency.close()

    def waiting(event_id: str) -> str:
        done = cli("--db", url, "show", ids[event_id])
        assert done.returncode == 0, done.stderr
        return flat(done.stdout)

    second = waiting("second")
    assert f"Waiting blocked behind {ids['first'][:12]}" in second
    assert "which needs action" in second
    assert "Waiting due at " in waiting("later")
    assert "the next retry" in waiting("later")
    paused = waiting("paused-one")
    assert "to be resumed: it is paused (POS maintenance until 14:00)" in paused
    assert "(resilient-sync resume crm)" in paused
    held = waiting("held-one")
    assert "held back until " in held
    assert "rate limited: 429" in held
    assert "it is due now" in waiting("free-one")
    assert "worker" in waiting("free-one")
    assert "Waiting" not in waiting("first")  # needs action: it says what to do instead

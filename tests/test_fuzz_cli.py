"""Fuzzing the ``resilient-sync`` read commands.

``main(argv)`` runs in-process with stdout and stderr as strict UTF-8 text
streams (what a UTF-8 terminal or ``PYTHONIOENCODING=utf-8`` gives the real
command); a few examples also run the real command in a subprocess, with
undecodable bytes in its arguments, and must print the same.

Properties, for random arguments to ``status``, ``list`` (``--status``,
``--category``, ``--since``, ``--destination``, ``--search``, ``--limit``,
``--cursor``), ``show`` and ``attempts`` (real ids, their prefixes, any
text), ``trend`` (``--bucket``, ``--since``) and ``recent``:

- no traceback, an exit code the help documents (0 ok, 1 failed, 2 usage,
  3 attention), output that encodes and shows no control characters;
- no error reported as "unexpected" (the catch-all for exceptions nobody
  translated), beyond the known ones;

and a queue with hostile rows (written straight into SQLite, as an older
version or another program could have) is shown without a raw control
character.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from cli_support import Built, build_queue
from fuzz_strategies import TERMINAL_FORBIDDEN, fuzz_settings
from resilient_sync._cli import main

DOCUMENTED_EXITS = {0, 1, 2, 3}


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``main(argv)`` with strict UTF-8 stdout/stderr; (code, stdout, stderr)."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="strict", write_through=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RESILIENT_SYNC_DEBUG", "RESILIENT_SYNC_DB")
    }
    with (
        mock.patch.dict(os.environ, env, clear=True),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(list(argv))
    return code, out_bytes.getvalue().decode("utf-8"), err_bytes.getvalue().decode("utf-8")


class Ids(Built):
    """The ids of the queue (a short repr for Hypothesis' reports)."""

    def __repr__(self) -> str:
        return f"<{len(self.ids)} delivery ids>"


@pytest.fixture(scope="module")
def queue_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Built]:
    """The CLI tests' queue (needs action, retries, a paused destination, 30 done)."""
    path = tmp_path_factory.mktemp("fuzz_cli") / "sync.db"
    return f"sqlite:///{path}", Ids(build_queue(f"sqlite:///{path}").ids)


# -- arguments ---------------------------------------------------------------------------------

#: Text an argv can carry: no NUL; undecodable bytes arrive as U+DC80..U+DCFF
#: (surrogateescape).
_ARG_ALPHABET = (
    [chr(c) for c in range(0x20, 0x7F)]
    + list("\x01\x07\x08\x1b\x7f\x85\x9b\u200b\u202e\u2066\u2028\ufeff\ufffd\U0010ffffİKÉé\t\n\r")
    + ["\udc80", "\udcff", "\udcc3"]
    + [chr(c) for c in range(0xA0, 0x3000, 211)]
)
arg_texts = st.text(st.sampled_from(_ARG_ALPHABET), max_size=16)

statuses = st.one_of(
    st.sampled_from(
        [
            "needs_action",
            "needs-action",
            "PENDING",
            "succeeded,retry_scheduled",
            "in_flight",
            ",",
            "",
        ]
    ),
    arg_texts,
)
categories = st.one_of(
    st.sampled_from(["mapping", "data-format", "PERMISSION", "transient"]), arg_texts
)
durations = st.one_of(
    st.sampled_from(
        [
            "90s",
            "15m",
            "2h",
            "1d",
            "1w",
            "0s",
            "0.5ms",
            "0.0000001s",
            "1e3",
            "-1h",
            "9999w",
            "99999999999d",
            "9" * 400,
            "١٢h",  # noqa: RUF001 - Arabic-Indic digits match \\d
            "10000w",
        ]
    ),
    st.integers(0, 10**12).map(lambda n: f"{n}s"),
    arg_texts,
)
whens = st.one_of(
    durations,
    st.sampled_from(
        [
            "2024-01-01",
            "2024-01-01T10:30",
            "2999-01-01",
            "0001-01-01T00:00+01:00",
            "9999-12-31T23:59:59-23:59",
            "2024-02-30",
            "Z",
            "2024-01-01T00:00:00Z",
        ]
    ),
)
limits = st.one_of(
    st.integers(-3, 300).map(str),
    st.sampled_from(["0", "99999999999999999999", str(2**63), "ten", "1e3", "٣"]),
)
cursors = st.one_of(
    st.integers(0, 10**6).map(lambda n: f"s{n}"),
    st.sampled_from(["s", "s-1", "s²", "s٣", "s" + "9" * 30, "s" + "9" * 5000, "x1"]),
    arg_texts,
)


@st.composite
def ids(draw: st.DrawFn, built: Built) -> str:
    known = sorted(built.ids.values())
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.sampled_from(known))
    if choice == 1:
        real = draw(st.sampled_from(known))
        return real[: draw(st.integers(0, len(real) - 1))]
    return draw(arg_texts)


@st.composite
def read_argv(draw: st.DrawFn, built: Built) -> list[str]:
    command = draw(
        st.sampled_from(["status", "list", "list", "show", "attempts", "trend", "recent"])
    )
    argv = [command]

    def option(name: str, values: st.SearchStrategy[str]) -> None:
        if draw(st.booleans()):
            argv.extend([name, draw(values)])

    if command == "status" and draw(st.booleans()):
        argv.append("--check")
    elif command == "list":
        option("--status", statuses)
        option("--destination", st.one_of(st.sampled_from(["pos", "crm", "POS"]), arg_texts))
        option("--category", categories)
        option("--since", whens)
        option(
            "--search", st.one_of(st.sampled_from(["c2", "PHONE", "é", "%", "_", "\\"]), arg_texts)
        )
        option("--limit", limits)
        option("--cursor", cursors)
    elif command in ("show", "attempts"):
        argv.append(draw(ids(built)))
    elif command == "trend":
        option("--bucket", durations)
        option("--since", whens)
        if draw(st.booleans()):
            argv.append("--ascii")
    elif command == "recent":
        option("--limit", limits)
    if draw(st.booleans()):
        argv.append("--json")
    return argv


# -- the properties ------------------------------------------------------------------------------


def check_streams(code: int, out: str, err: str) -> None:
    assert code in DOCUMENTED_EXITS, (code, err)
    assert "Traceback" not in err, err
    for name, text in (("stdout", out), ("stderr", err)):
        bad = TERMINAL_FORBIDDEN.search(text)
        assert bad is None, (name, bad.group(), text[max(0, bad.start() - 80) : bad.end() + 80])


#: The CLI's catch-all for an exception it did not translate into words.
UNEXPECTED = re.compile(r"error: unexpected [A-Za-z]+")


@fuzz_settings(100)
@given(data=st.data())
def test_read_commands_exit_with_a_documented_code_and_print_safely(
    queue_db: tuple[str, Built], data: st.DataObject
) -> None:
    url, built = queue_db
    argv = data.draw(read_argv(built), label="argv")
    code, out, err = run_cli("--db", url, *argv)
    event(f"{argv[0]}: exit {code}")
    check_streams(code, out, err)
    if code == 0 and "--json" in argv:
        json.loads(out)
    assert UNEXPECTED.search(err) is None, err


@fuzz_settings(5)
@given(data=st.data())
def test_the_real_command_prints_what_main_prints(
    queue_db: tuple[str, Built], data: st.DataObject
) -> None:
    url, built = queue_db
    argv = data.draw(read_argv(built), label="argv")
    assume("recent" not in argv and "trend" not in argv and "status" not in argv)  # "ago" moves
    code, out, err = run_cli("--db", url, *argv)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RESILIENT_SYNC_DEBUG", "RESILIENT_SYNC_DB")
    }
    env["PYTHONIOENCODING"] = "utf-8"
    done = subprocess.run(
        [sys.executable, "-m", "resilient_sync", "--db", url, *argv],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    real_out, real_err = done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    check_streams(done.returncode, real_out, real_err)
    assert done.returncode == code, (real_err, err)
    if "ago" not in out and "in " not in out:  # relative times move between the two runs
        assert real_out == out


# -- a queue with hostile rows -------------------------------------------------------------------

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\u202eevil\x9b31m\x7f\x08\r\x00\x85\u2028end"


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A queue whose rows hold control characters everywhere text is stored
    (written past the gate, straight into the file)."""
    path = tmp_path_factory.mktemp("fuzz_cli_hostile") / "sync.db"
    url = f"sqlite:///{path}"
    build_queue(url)
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT id, event, last_error FROM resilient_sync_deliveries"
        ).fetchall()
        chosen = {}
        for delivery_id, event_json, _ in rows[:6]:
            event = json.loads(event_json)
            event["type"] = "order" + HOSTILE
            event["payload"] = {"name": HOSTILE, "note" + HOSTILE: [HOSTILE]}
            error = {
                "category": "mapping",
                "message": "unknown SKU " + HOSTILE,
                "field": "lines" + HOSTILE,
                "exception_type": "X" + HOSTILE,
                "retry_after": None,
                "remote_field": None,
            }
            conn.execute(
                "UPDATE resilient_sync_deliveries SET event = ?, last_error = ?, "
                "error_category = 'mapping', status = 'needs_action', due_at = NULL, "
                "result = ?, destination = ? WHERE id = ?",
                (
                    json.dumps(event),
                    json.dumps(error),
                    json.dumps({"remote": HOSTILE}),
                    "pos" + HOSTILE if delivery_id == rows[0][0] else "pos",
                    delivery_id,
                ),
            )
            conn.execute(
                "UPDATE resilient_sync_audit SET reason = ?, actor = ?, error = ?, details = ? "
                "WHERE delivery_id = ?",
                (
                    "rejected " + HOSTILE,
                    "worker" + HOSTILE,
                    json.dumps(error),
                    json.dumps(
                        {"changed": ["payload.x" + HOSTILE], "after": {"payload.x": HOSTILE}}
                    ),
                    delivery_id,
                ),
            )
            chosen[event["id"]] = delivery_id
        conn.execute(
            "INSERT OR REPLACE INTO resilient_sync_destinations (name, paused, paused_reason, "
            "hold_until, hold_reason, updated_at) VALUES (?, 1, ?, NULL, NULL, 0)",
            ("crm" + HOSTILE, "paused " + HOSTILE),
        )
        conn.commit()
    finally:
        conn.close()
    return url, chosen


HOSTILE_COMMANDS = [
    ["status"],
    ["list"],
    ["list", "--status", "needs_action"],
    ["recent"],
    ["show", "{id}"],
    ["attempts", "{id}"],
]


@pytest.mark.parametrize("mode", ["text", "json"])
@pytest.mark.parametrize("argv", HOSTILE_COMMANDS, ids=[" ".join(a) for a in HOSTILE_COMMANDS])
def test_hostile_rows_print_safely(
    hostile_db: tuple[str, dict[str, str]], argv: list[str], mode: str
) -> None:
    url, chosen = hostile_db
    delivery_id = next(iter(chosen.values()))
    args = [a.format(id=delivery_id) for a in argv] + (["--json"] if mode == "json" else [])
    code, out, err = run_cli("--db", url, *args)
    assert code in DOCUMENTED_EXITS
    check_streams(code, out, err)


# -- found by fuzzing and fixed: regression tests ----------------------------------------------


@pytest.mark.parametrize("text", ["\x7f", "\x9b31m", "\u202eevil"], ids=["del", "csi", "rlo"])
@pytest.mark.parametrize("mode", ["text", "json"])
def test_a_submitted_payload_prints_safely(tmp_path: Path, text: str, mode: str) -> None:
    from resilient_sync import Event, Producer
    from resilient_sync.stores import open_stores

    url = f"sqlite:///{tmp_path / 'sync.db'}"
    queue, idempotency = open_stores(url)
    (delivery,) = Producer(queue, ["pos"]).submit(Event("e1", "t", {"name": text}))
    queue.close()
    idempotency.close()
    code, out, err = run_cli(
        "--db", url, "show", delivery.id, *(["--json"] if mode == "json" else [])
    )
    check_streams(code, out, err)


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--cursor", "s99999999999999999999999"],
        ["list", "--limit", "99999999999999999999"],
        ["trend", "--bucket", "99999999999d"],
        ["trend", "--bucket", "10000w"],
        ["trend", "--bucket", "0.0000001s"],
        ["trend", "--bucket", "0.0000001s", "--since", "1h"],
        ["trend", "--since", "2999-01-01"],
    ],
    ids=" ".join,
)
def test_out_of_range_option_values_are_usage_errors(
    queue_db: tuple[str, Built], argv: list[str]
) -> None:
    url, _ = queue_db
    code, _, err = run_cli("--db", url, *argv)
    assert UNEXPECTED.search(err) is None, err
    assert code == 2, err


@pytest.mark.parametrize(
    "argv",
    [["show", "\udcff"], ["attempts", "a\udc80"]],
    ids=["show", "attempts"],
)
def test_undecodable_arguments_are_reported_plainly(
    queue_db: tuple[str, Built], argv: list[str]
) -> None:
    url, _ = queue_db
    code, _, err = run_cli("--db", url, *argv)
    assert UNEXPECTED.search(err) is None, err
    assert code in (1, 2)


def test_a_trend_of_a_window_shorter_than_a_bucket_prints(queue_db: tuple[str, Built]) -> None:
    # found by the long run: no category in the window made the table's width
    # max() of a single number (TypeError, "unexpected")
    url, _ = queue_db
    code, out, err = run_cli("--db", url, "trend", "--since", "1s")
    check_streams(code, out, err)
    assert UNEXPECTED.search(err) is None, err
    assert code == 0, err

"""Read commands only read (item 9), and fail fast on PostgreSQL (item 11).

``status``, ``list``, ``show``, ``attempts``, ``trend`` and ``recent`` open
the store read-only: they never create, migrate or write a file (an empty
file, another application's SQLite database) or a PostgreSQL schema (a typo
in ``?schema=``), and they work on a file nobody may write. Actions check
read-only first, so they never take over a foreign database either. A
PostgreSQL server that is down, or a database that does not exist, is one
line in about a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sqlite3
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_support import assert_event_and_reason, build_queue, cli
from pg_support import PG_DSN, admin_connection, require_postgres

READS = [
    ["status"],
    ["list"],
    ["show", "0123456789abcdef"],
    ["attempts", "0123456789abcdef"],
    ["trend"],
    ["recent"],
]
WRITES = [
    ["retry", "0123456789abcdef"],
    ["pause", "pos", "--force"],
    ["purge", "--dry-run"],
]


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("argv", READS + WRITES, ids=lambda a: a[0])
def test_an_empty_file_is_refused_and_left_empty(tmp_path: Path, argv: list[str]) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    done = cli("--db", f"sqlite:///{path}", *argv)
    assert done.returncode == 1
    assert "holds no resilient_sync queue" in one_line(done.stderr)
    assert path.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]  # no -wal, no -shm


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO orders (total) VALUES (9.5)")
    conn.close()


def _tables(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    return [*sorted(r[0] for r in rows), f"journal={mode}"]


@pytest.mark.parametrize("argv", READS + WRITES, ids=lambda a: a[0])
def test_another_applications_database_is_refused_untouched(
    tmp_path: Path, argv: list[str]
) -> None:
    path = tmp_path / "shop.db"
    _foreign(path)
    before = digest(path)
    done = cli("--db", f"sqlite:///{path}", *argv)
    assert done.returncode == 1
    message = one_line(done.stderr)
    assert "holds no resilient_sync queue" in message
    assert str(path) in message
    assert digest(path) == before
    assert _tables(path) == ["orders", "journal=delete"]  # no tables added, not switched to WAL


def test_sqlite_etc_passwd_names_the_path_unredacted() -> None:
    before = os.stat("/etc/passwd").st_mtime_ns
    done = cli("--db", "sqlite:////etc/passwd", "status")
    assert done.returncode == 1
    message = one_line(done.stderr)
    assert "/etc/passwd" in message
    assert "[REDACTED]" not in message
    assert os.stat("/etc/passwd").st_mtime_ns == before


# -- a file nobody may write ---------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can read (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="rs-readonly-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(folder)


def _as_reader() -> dict[str, Any]:
    """Run as an unprivileged user when we are root (root ignores file modes)."""
    if os.geteuid() != 0:
        return {}
    return {"user": 65534, "group": 65534, "extra_groups": []}


def _read_only_run(folder: Path, url: str, argv: list[str]) -> Any:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_SYNC_")} | {
        "COLUMNS": "80",
        "PYTHONIOENCODING": "utf-8",
        "HOME": str(folder),
    }
    return subprocess.run(
        [sys.executable, "-m", "resilient_sync", "--db", url, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        check=False,
        timeout=60,
        **_as_reader(),
    )


@pytest.mark.parametrize("writer_open", [False, True], ids=["closed", "worker-running"])
def test_read_commands_work_on_a_read_only_file(shared_dir: Path, writer_open: bool) -> None:
    """chmod 444 on the file (and its -wal and -shm while a worker holds it
    open), 555 on its folder: every read command works, writes are refused
    in one line, and not one byte changes."""
    path = shared_dir / "sync.db"
    url = f"sqlite:///{path}"
    built = build_queue(url)
    writer = None
    if writer_open:  # a worker has the file open: the -wal and -shm files exist
        writer = sqlite3.connect(path)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("SELECT count(*) FROM resilient_sync_deliveries").fetchone()
        assert Path(f"{path}-shm").exists()
    try:
        files = [p for p in shared_dir.iterdir() if p.is_file()]
        for file in files:
            file.chmod(0o444)
        shared_dir.chmod(0o555)
        before = {p.name: digest(p) for p in files if not p.name.endswith("-shm")}
        c2 = built.id("c2")
        for argv in (
            ["status"],
            ["list", "--status", "needs_action"],
            ["show", c2],
            ["show", built.prefix(c2)],
            ["attempts", c2],
            ["trend"],
            ["recent"],
            ["status", "--json"],
        ):
            done = _read_only_run(shared_dir, url, argv)
            assert done.returncode == 0, (argv, done.stderr)
            assert done.stderr == "", (argv, done.stderr)
        listing = _read_only_run(shared_dir, url, ["list", "-s", "needs_action"]).stdout
        assert_event_and_reason(listing, {"c2": "[phone] phone is invalid"})
        refused = _read_only_run(shared_dir, url, ["retry", c2])
        assert refused.returncode == 1
        one_line(refused.stderr)
        after = {p.name: digest(p) for p in files if not p.name.endswith("-shm")}
        assert after == before
        assert sorted(p.name for p in shared_dir.iterdir()) == sorted(p.name for p in files)
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    finally:
        shared_dir.chmod(0o755)
        if writer is not None:
            writer.close()


def test_write_commands_open_read_write_on_a_queue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    built = build_queue(url)
    done = cli("--db", url, "retry", built.id("c2"))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "sync.db").stat().st_mode) == 0o600  # created owner-only


# -- PostgreSQL ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.postgres
@pytest.mark.parametrize("problem", ["server-down", "no-such-database"])
def test_postgresql_down_or_missing_fails_in_about_a_second(problem: str) -> None:
    require_postgres()
    if problem == "server-down":
        url = f"postgresql://postgres@127.0.0.1:{_free_port()}/test"
        reason = "Connection refused"
    else:
        url = PG_DSN.rsplit("/", 1)[0] + f"/rs_missing_{uuid.uuid4().hex[:8]}"
        reason = "does not exist"
    for argv in (["status"], ["list"], ["retry", "0123456789abcdef"]):
        started = time.monotonic()
        done = cli("--db", url, *argv)
        took = time.monotonic() - started
        assert done.returncode == 1, done.stderr
        message = one_line(done.stderr)
        assert message.startswith("resilient-sync: error: ")
        assert reason in message
        assert "psycopg.pool" not in done.stderr
        assert "WARNING" not in done.stderr
        assert took < 4.0, f"{argv} took {took:.1f}s"  # ~1s of pool timeout, plus Python startup
    verbose = cli("-v", "--db", url, "status")
    assert "psycopg.pool" in verbose.stderr  # -v shows the driver's own warnings


@pytest.mark.postgres
def test_a_typo_in_the_schema_creates_nothing() -> None:
    require_postgres()
    schema = f"rs_typo_{uuid.uuid4().hex[:8]}"
    url = f"{PG_DSN}?schema={schema}"
    for argv in (*READS, *WRITES):
        done = cli("--db", url, *argv)
        assert done.returncode == 1, (argv, done.stdout)
        message = one_line(done.stderr)
        assert f"schema {schema!r}" in message
        assert "holds no resilient_sync queue" in message
    with admin_connection() as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]
        ).fetchone()
    assert found is not None
    assert found[0] == 0

"""``resilient-sync demo --quick`` end to end: a real POS server on 127.0.0.1,
the real command in a subprocess, the SQLite queue it leaves behind, and the
commands it prints, run as printed."""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import COLUMNS, cli, cli_json, flat
from resilient_sync import Dispatcher, Event, RetryPolicy
from resilient_sync._cli._demo import invocation
from resilient_sync.stores import open_stores
from resilient_sync.testing import RecordingDestination

SRC = Path(__file__).resolve().parent.parent / "src" / "resilient_sync"
PUBLIC = {
    "resilient_sync",
    "resilient_sync.stores",
    "resilient_sync.http",
    "resilient_sync.testing",
}


def printed_commands(out: str, prefix: str) -> list[str]:
    """Every command line the demo printed (after ``$ `` or under "Explore")."""
    commands = []
    for line in out.splitlines():
        if "$ " + prefix in line:
            commands.append(prefix + line.split("$ " + prefix, 1)[1].split("   # ")[0])
        elif line.startswith("  " + prefix + " "):
            commands.append(line.strip())
    return commands


def run_printed(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a printed command the way a shell would (no shell needed: no pipes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_SYNC_")}
    env.update({"COLUMNS": COLUMNS, "PYTHONIOENCODING": "utf-8"})
    return subprocess.run(
        shlex.split(command), cwd=cwd, capture_output=True, text=True, env=env, check=False
    )


def test_the_quick_demo_runs_end_to_end_and_can_be_rerun(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    done = cli("demo", "--quick", "--db", url, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    prefix = next(line[2:].split(" --db ")[0] for line in out.splitlines() if line.startswith("$ "))
    for expected in (
        "simulated POS  http://127.0.0.1:",
        "POS: outage begins, every request gets 503",
        "PAUSED: permission denied: HTTP 401",
        f"$ {prefix} --db {url} resume pos",
        "(0 applied twice)",
        f"$ {prefix} --db {url} status",
        "Needs action, by category:",
        "Failed attempts per 1s by category",
        f"$ {prefix} --db {url} list --status needs_action",
        "What to do about each",
        "The demo fixes the first one itself",
        "--set phone=+316",
    ):
        assert expected in out, expected
    assert "Traceback" not in out + done.stderr
    # what `list` showed is the real command's output at 80 columns: EVENT and REASON
    listing = out.split("list --status needs_action\n", 1)[1].split("\n\n", 1)[0]
    assert "EVENT" in listing
    assert "REASON" in listing
    assert "unknown SKU" in flat(listing)
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


def test_every_printed_command_runs_as_printed(tmp_path: Path) -> None:
    """Item 14: the demo prints commands a reader can paste: the real path of
    the executable (or ``resilient-sync`` when that is on PATH), always with
    ``--db``; a few of them are run here exactly as printed."""
    done = cli("demo", "--quick", "--no-fix", cwd=tmp_path)  # the default demo database
    assert done.returncode == 0, done.stderr
    prefix = invocation_in(tmp_path)
    commands = printed_commands(done.stdout, prefix)
    assert len(commands) >= 10, done.stdout
    db = "--db sqlite:///resilient-sync-demo.db"
    assert all(c.startswith(f"{prefix} {db} ") for c in commands), commands
    by_name = {shlex.split(c)[len(shlex.split(prefix)) + 2]: c for c in commands}
    for name in ("status", "list", "show", "recent", "resume", "retry-all", "resolve", "retry"):
        assert name in by_name, (name, commands)
        ran = run_printed(by_name[name], tmp_path)
        assert ran.returncode == 0, (by_name[name], ran.stderr)
        assert "error" not in ran.stderr, (by_name[name], ran.stderr)
    assert "EVENT" in run_printed(by_name["list"], tmp_path).stdout


def invocation_in(folder: Path) -> str:
    """What the demo prints for the command line when run from ``folder``."""
    here = Path.cwd()
    try:
        os.chdir(folder)
        return invocation()
    finally:
        os.chdir(here)


def test_the_printed_command_is_the_one_on_path_or_a_real_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Path(sys.executable).parent / "resilient-sync"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert invocation() == "resilient-sync"
    monkeypatch.setenv("PATH", str(tmp_path))  # not on PATH: the script's own path
    assert invocation() == shlex.quote(str(script))
    root = script.parent.parent.parent
    monkeypatch.chdir(root)  # e.g. the project root: a relative path
    assert invocation() == str(script.relative_to(root))  # .venv/bin/resilient-sync


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
    # another application's SQLite file is refused without being touched
    other = tmp_path / "app.db"
    import sqlite3

    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.close()
    before = other.read_bytes()
    done = cli("demo", "--quick", "--db", f"sqlite:///{other}", cwd=tmp_path)
    assert done.returncode == 1
    assert "was not created by the demo" in done.stderr
    assert other.read_bytes() == before


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(level, module, names) of every import statement in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((0, alias.name, []) for alias in node.names)
    return found


def test_the_demo_stands_on_the_public_api_and_the_cli_on_the_demo() -> None:
    """Item 16: the demo is a user of the library (public modules and their
    ``__all__`` only); the CLI calls it, never the other way round."""
    import importlib

    for path in sorted((SRC / "_demo").glob("*.py")):
        for level, module, names in _imports(path):
            if level == 1:  # its own modules
                assert module.startswith("_"), (path.name, module)
                assert (SRC / "_demo" / f"{module}.py").exists(), (path.name, module)
                continue
            assert level == 0, f"{path.name}: relative import from {'.' * level}{module}"
            if module.split(".")[0] != "resilient_sync":
                continue
            assert module in PUBLIC, f"{path.name} imports {module}"
            public = set(importlib.import_module(module).__all__)
            assert set(names) <= public, f"{path.name}: {set(names) - public} from {module}"
    assert not any(
        "_cli" in module for path in (SRC / "_demo").glob("*.py") for _, module, _ in _imports(path)
    )

"""What every part of the benchmark suite shares: result rows and targets,
the table and the JSON file, worker processes, PostgreSQL scratch space.

A row puts our figure next to its reference (a peer or the raw engine, or
our own figure at a smaller size) measured in the same run, their ratio, and
the target where one exists. Targets are printed as they are, met or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
PG_DSN = os.environ.get("RESILIENT_SYNC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
#: what every workload sends: a small order, as a shop would
PAYLOAD = {"email": "ada@example.com", "name": "Ada Lovelace", "total": 129.5, "lines": 3}


def succeeded(delivery_id: str, lease_token: int, now: Any, worker: str) -> Any:
    """The ``Completion`` of a delivery that succeeded at its first attempt, with its
    audit record, as a store receives it from the dispatcher."""
    from resilient_sync import Attempt, DeliveryStatus
    from resilient_sync.stores import Completion

    return Completion(
        delivery_id=delivery_id,
        lease_token=lease_token,
        status=DeliveryStatus.SUCCEEDED,
        finished_at=now,
        audit=(
            Attempt(
                delivery_id=delivery_id,
                destination="noop",
                action="deliver",
                actor=f"worker:{worker}",
                started_at=now,
                finished_at=now,
                number=1,
                outcome=DeliveryStatus.SUCCEEDED,
            ),
        ),
    )


class NoOp:
    """A destination that accepts everything at once: the library's own cost is measured."""

    name = "noop"

    def deliver(self, event: Any, context: Any) -> None:
        return None


# -- rows, targets, the table -------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """``ratio >= 8``, ``ratio <= 1.3``, ``value <= 5`` (in the row's unit)."""

    on: str  # "ratio" or "value"
    op: str  # ">=" or "<="
    bound: float
    label: str

    def met(self, row: Row) -> bool | None:
        got = row.ratio if self.on == "ratio" else row.ours
        if got is None:
            return None
        return got >= self.bound if self.op == ">=" else got <= self.bound


def at_least(bound: float, label: str | None = None) -> Target:
    return Target("ratio", ">=", bound, label or f">= {bound:g}x")


def at_most(bound: float, label: str | None = None, *, on: str = "ratio") -> Target:
    return Target(on, "<=", bound, label or f"<= {bound:g}x")


@dataclass
class Row:
    section: str
    what: str
    ours: float | None
    unit: str
    ref_label: str = ""
    ref: float | None = None
    target: Target | None = None
    note: str = ""
    ratio: float | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ratio is None and self.ours is not None and self.ref:
            self.ratio = self.ours / self.ref

    @property
    def status(self) -> str:
        if self.target is None:
            return ""
        met = self.target.met(self)
        return "n/a" if met is None else ("PASS" if met else "MISS")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.target.label if self.target else None
        data["status"] = self.status or None
        return data


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ev/s", "req/s", "jobs/s"):
        return f"{value:,.0f} {unit}"
    if unit in ("us/ev", "ms"):
        return f"{value:,.1f} {unit}" if value >= 10 else f"{value:.2f} {unit}"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:.3g} {unit}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:,.0f}x"


def table(rows: Sequence[Row]) -> list[list[str]]:
    header = ["section", "what", "ours", "reference", "ratio", "target", "status"]
    body = [
        [
            r.section,
            r.what + (f" ({r.note})" if r.note else ""),
            fmt(r.ours, r.unit),
            f"{r.ref_label}: {fmt(r.ref, r.unit)}" if r.ref_label else "-",
            fmt_ratio(r.ratio),
            r.target.label if r.target else "",
            r.status,
        ]
        for r in rows
    ]
    return [header, *body]


def render_text(rows: Sequence[Row]) -> str:
    cells = table(rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render_markdown(rows: Sequence[Row]) -> str:
    cells = table(rows)
    out = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    out.extend("| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in cells[1:])
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, Any], rows: Sequence[Row], details: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "rows": [r.as_dict() for r in rows], "details": details}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# -- repeats ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def log(message: str) -> None:
    """Progress on stderr, so that stdout keeps the table."""
    print(message, file=sys.stderr, flush=True)


# -- worker processes ------------------------------------------------------------------------
#
# ``python bench/worker.py module:function '{"json": "kwargs"}'`` runs one role. A worker
# that needs a start signal calls ``wait_for_go()``: it prints "ready" when connected and
# starts on "go", so that the bench times the work, not the interpreter's start-up. Its
# last stdout line may be ``result <json>``.


def wait_for_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go' on stdin")


def say_result(value: Any) -> None:
    print("result " + json.dumps(value), flush=True)


def start(target: str, count: int = 1, **kwargs: Any) -> list[subprocess.Popen[str]]:
    """Start ``count`` processes running ``target`` and wait until each says "ready"."""
    command = [sys.executable, str(WORKER), target, json.dumps(kwargs)]
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            for q in procs:
                q.kill()
            raise SystemExit(f"{target} did not start (said {line!r})")
    return procs


def go(procs: Sequence[subprocess.Popen[str]], timeout: float = 600) -> tuple[float, list[Any]]:
    """Release the workers; the seconds until all exited, and their results."""
    started = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        assert p.stdout is not None
        out, _ = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise SystemExit(f"a worker failed with exit code {p.returncode}")
        lines = [ln for ln in out.splitlines() if ln.startswith("result ")]
        results.append(json.loads(lines[-1][len("result ") :]) if lines else None)
    return time.perf_counter() - started, results


def drain(target: str, workers: int, timeout: float = 600, **kwargs: Any) -> float:
    """Seconds ``workers`` processes of ``target`` take from "go" until all exited."""
    seconds, _ = go(start(target, workers, **kwargs), timeout)
    return seconds


# -- PostgreSQL scratch space ----------------------------------------------------------------


def pg_available() -> str | None:
    """None when the bench's PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (the postgres extra)"
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"no PostgreSQL at {PG_DSN.split('@')[-1]}: {str(exc).strip()[:120]}"


def dsn_with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.contextmanager
def pg_database(label: str) -> Iterator[str]:
    """A database of our own (``CREATE DATABASE``), dropped on the way out."""
    import psycopg

    name = f"rsbench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_with_database(PG_DSN, name)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def pg_schema(label: str) -> Iterator[str]:
    """A fresh schema name in the bench database, dropped (cascade) on the way out."""
    import psycopg

    schema = f"rsbench_{label}_{uuid.uuid4().hex[:8]}"
    try:
        yield schema
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_settings() -> dict[str, str]:
    import psycopg

    names = ("server_version", "synchronous_commit", "fsync", "shared_buffers", "autovacuum")
    with psycopg.connect(PG_DSN) as conn:
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]

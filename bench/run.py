"""The benchmark suite: the same workload through resilient_sync, its peers and
the raw engines, in one run, on one machine; one table and one JSON file.

    python3 tasks.py bench            # everything (about 35 minutes on a busy 2-core machine)
    python3 tasks.py bench --quick    # smaller N, fewer repeats, no 1M rows (< 2 minutes)
    .venv/bin/python bench/run.py --only sqlite,postgres --out /tmp/bench.json

Sections (``--only``, comma-separated):

- ``sqlite``: enqueue N events durably, then process them (deliver to a no-op,
  mark done); ours (SQLite synchronous=FULL, ``submit_many`` batches of 100 +
  ``run_until_idle``, bench_sqlite.py) next to raw sqlite3 writing the same
  rows with the same commits (bench_sqlite.py), huey (peers/huey_sqlite.py)
  and persist-queue (peers/persistqueue_sqlite.py);
- ``postgres``: enqueue N, then drain with 1 and 4 worker processes; ours and
  raw psycopg doing the same statements (bench_postgres.py), pgqueuer
  (batch_size 100 and 10) and procrastinate (concurrency 1 and 4)
  (peers/pgqueuer_pg.py, peers/procrastinate_pg.py);
- ``latency``: idle submit->delivered p50/p99 across processes on SQLite
  (at each ``--poll-intervals``) and PostgreSQL, in one process on memory
  (latency.py);
- ``shutdown``: how long ``resilient-sync worker`` takes to exit on SIGTERM
  mid-batch (it finishes the running delivery and hands the rest back), and
  on a second SIGTERM, next to its bound (shutdown.py);
- ``scale``: cost per event at 10k/100k/1M rows queued and of history, keyed
  and unkeyed, on every store (scale.py);
- ``rss``: a worker's RSS before and after draining N events (rss.py);
- ``overhead``: the library's microseconds per delivery on the memory stores,
  at 1k and 100k events (overhead.py);
- ``http``: HttpDestination through the dispatcher vs a bare httpx loop at
  equal concurrency (bench_http.py).

Every ratio compares figures measured in the same run; with repeats, each
row shows the run whose ratio is the median. Progress goes to stderr, the
table to stdout; the JSON (default ``bench/results/latest.json``) and a
Markdown copy of the table (same name, ``.md``) keep everything.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
from common import PAYLOAD, Row, Target, at_least, at_most, log

RESULTS = common.HERE / "results" / "latest.json"
SECTIONS = ("sqlite", "postgres", "latency", "shutdown", "scale", "rss", "overhead", "http")

FULL: dict[str, Any] = {
    "sqlite_events": 10_000,
    "sqlite_repeat": 3,
    "pg_events": 10_000,
    "pg_events_procrastinate": 2_000,
    "pg_repeat": 2,
    # each peer's setting and the values it is drained with (each with 1 and 4 processes)
    "pg_peer_settings": {
        "pgqueuer": ("batch_size", (100, 10)),
        "procrastinate": ("concurrency", (1, 4)),
    },
    "poll_intervals": [1.0, 0.01],
    "latency_samples": {"slow": 40, "fast": 200},
    "scale_sizes": [10_000, 100_000, 1_000_000],
    "scale_events": 1000,
    "scale_repeat": 3,
    "scale_budget": 5.0,
    "rss_events": 100_000,
    "overhead_sizes": [1_000, 100_000],
    "overhead_repeat": 3,
    "http_deliveries": 2000,
    "http_repeat": 3,
    "http_concurrency": 8,
    "shutdown_samples": 5,
}
QUICK: dict[str, Any] = {
    "sqlite_events": 500,
    "sqlite_repeat": 1,
    "pg_events": 1_000,
    "pg_events_procrastinate": 200,
    "pg_repeat": 1,
    "pg_peer_settings": {
        "pgqueuer": ("batch_size", (100,)),
        "procrastinate": ("concurrency", (4,)),
    },
    "poll_intervals": [1.0],
    "latency_samples": {"slow": 4, "fast": 30},
    "scale_sizes": [2_000, 20_000],
    "scale_events": 300,
    "scale_repeat": 1,
    "scale_budget": 0.5,
    "rss_events": 5_000,
    "overhead_sizes": [1_000, 10_000],
    "overhead_repeat": 1,
    "http_deliveries": 300,
    "http_repeat": 1,
    "http_concurrency": 8,
    "shutdown_samples": 2,
}


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


# -- comparing figures of the same run ---------------------------------------------------------
#
# A section's runs are flat dicts of figures ("ours.e2e", "huey.enqueue", ...). A row
# compares two of them, as measured in the run whose ratio is the median.


def median_run(runs: list[dict[str, Any]], ours: str, ref: str) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda run: run[ours] / run[ref])
    return ordered[(len(ordered) - 1) // 2]


class Rows:
    """Rows of one section, built from its runs."""

    def __init__(self, section: str, runs: list[dict[str, Any]]) -> None:
        self.section, self.runs, self.rows = section, runs, []  # type: ignore[var-annotated]

    def add(
        self,
        what: str,
        ours: str,
        ref: str,
        label: str | Callable[[dict[str, Any]], str],
        target: Target | None = None,
        unit: str = "ev/s",
        ceiling: tuple[str, str] | None = None,
    ) -> None:
        """``ceiling``: (figure, label) of the raw engine doing our work, in
        the same runs. A row whose target asks for a rate (``>= k x`` a
        peer's) then also says what rate that is, next to the raw engine's:
        a target above the raw engine cannot be met by a library that does
        the raw engine's work and more."""
        run = median_run(self.runs, ours, ref)
        text = label(run) if callable(label) else label
        ratios = [r[ours] / r[ref] for r in self.runs]
        notes = (
            [f"{len(ratios)} runs: {min(ratios):.2f}-{max(ratios):.2f}x"] if len(ratios) > 1 else []
        )
        if ceiling is not None and target is not None and target.on == "ratio":
            needed = target.bound * run[ref]
            key, name = ceiling
            notes.append(f"the target is {needed:,.0f} {unit}, {needed / run[key]:.2f}x {name}")
        self.rows.append(
            Row(
                self.section,
                what,
                run[ours],
                unit,
                text,
                run[ref],
                target=target,
                note="; ".join(notes),
            )
        )


def rates(n: int, enqueue_s: float, process_s: float, prefix: str) -> dict[str, float]:
    """Enqueue, process and end-to-end events/s of one run."""
    return {
        f"{prefix}.enqueue": n / enqueue_s,
        f"{prefix}.process": n / process_s,
        f"{prefix}.e2e": n / (enqueue_s + process_s),
    }


def _summary(run: dict[str, Any], suffix: str) -> str:
    return ", ".join(f"{k[: -len(suffix)]} {v:,.0f}" for k, v in run.items() if k.endswith(suffix))


# -- SQLite: end to end -------------------------------------------------------------------------


def sqlite_section(cfg: dict[str, Any], details: dict[str, Any]) -> list[Row]:
    import bench_sqlite
    from peers import huey_sqlite, persistqueue_sqlite

    n, repeat = cfg["sqlite_events"], cfg["sqlite_repeat"]
    payloads = [dict(PAYLOAD, n=i) for i in range(n)]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        for r in range(repeat):
            ours, phases = bench_sqlite.end_to_end(Path(tmp, f"ours{r}.db"), n, 100, "FULL")
            run = rates(n, phases["submit"], phases["run"], "ours")
            run["ours.e2e"] = ours
            run["raw.e2e"] = bench_sqlite.raw(Path(tmp, f"raw{r}.db"), n, 100, "FULL")
            huey = huey_sqlite.run(Path(tmp, f"huey{r}.db"), n, payloads)
            run.update(rates(n, huey["enqueue_s"], huey["process_s"], "huey"))
            pq = persistqueue_sqlite.run(Path(tmp, f"pq{r}"), n, payloads)
            run.update(rates(n, pq["enqueue_s"], pq["process_s"], "persist-queue"))
            runs.append(run)
            log(f"  sqlite run {r + 1}: " + _summary(run, ".e2e"))
    details["sqlite"] = {
        "events": n,
        "runs": runs,
        "settings": {
            "ours": "open_stores('sqlite:///...') defaults (WAL, synchronous=FULL), "
            "submit_many batches of 100, run_until_idle (batch_size=100)",
            "raw": "sqlite3 on the same schema, WAL, synchronous=FULL, 3 transactions per 100",
            "huey": huey_sqlite.SETTINGS,
            "persist-queue": persistqueue_sqlite.SETTINGS,
            "sqlite_default_synchronous_in_wal": _default_synchronous(),
        },
    }
    huey, pq = f"huey {version('huey')}", f"persist-queue {version('persist-queue')}"
    e2e = f"end to end, synchronous=FULL, N={n:,}"
    out = Rows("sqlite", runs)
    out.add(e2e, "ours.e2e", "raw.e2e", "raw sqlite3", at_least(0.7))
    raw = ("raw.e2e", "raw sqlite3")
    out.add(e2e, "ours.e2e", "huey.e2e", huey, at_least(8), ceiling=raw)
    out.add(e2e, "ours.e2e", "persist-queue.e2e", pq, at_least(10), ceiling=raw)
    for metric, what in (("enqueue", "enqueue"), ("process", "process (deliver, mark done)")):
        out.add(what, f"ours.{metric}", f"huey.{metric}", huey)
        out.add(what, f"ours.{metric}", f"persist-queue.{metric}", pq)
    return out.rows


def _default_synchronous() -> str:
    """The synchronous setting a WAL connection gets when nobody sets it (huey, persist-queue)."""
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp, "probe.db"))
        conn.execute("PRAGMA journal_mode=WAL")
        (value,) = conn.execute("PRAGMA synchronous").fetchone()
        conn.close()
    return f"{names.get(value, value)} (SQLite {sqlite3.sqlite_version})"


# -- PostgreSQL: enqueue and drain --------------------------------------------------------------

WORKERS = (1, 4)


def postgres_section(cfg: dict[str, Any], details: dict[str, Any]) -> list[Row]:
    import bench_postgres
    from peers import pgqueuer_pg, procrastinate_pg

    modules = {"pgqueuer": pgqueuer_pg, "procrastinate": procrastinate_pg}
    sizes = {"pgqueuer": cfg["pg_events"], "procrastinate": cfg["pg_events_procrastinate"]}
    n, settings = cfg["pg_events"], cfg["pg_peer_settings"]
    runs: list[dict[str, Any]] = []
    with common.pg_database("pgqueuer") as pgq, common.pg_database("procrastinate") as pro:
        dsns = {"pgqueuer": pgq, "procrastinate": pro}
        for peer, module in modules.items():
            module.install(dsns[peer])
        for r in range(cfg["pg_repeat"]):
            run: dict[str, Any] = {}
            for w in WORKERS:
                enqueue, drain = bench_postgres.lib_throughput(w, n, 100)
                run[f"ours/w{w}.enqueue"], run[f"ours/w{w}.drain"] = enqueue, drain
                run[f"ours/w{w}.e2e"] = 1 / (1 / enqueue + 1 / drain)
                run[f"raw/w{w}.drain"] = bench_postgres.raw_throughput(w, n, 100)
            for peer, (setting, values) in settings.items():
                for value in values:
                    for w in WORKERS:
                        key = f"{peer}/{value}/w{w}"
                        run.update(
                            _peer(modules[peer], dsns[peer], sizes[peer], key, w, setting, value)
                        )
                _best(run, peer, setting, values)
            runs.append(run)
            log(f"  postgres run {r + 1}: " + _summary(run, ".drain"))
    details["postgres"] = {
        "events": n,
        "events_procrastinate": sizes["procrastinate"],
        "runs": runs,
        "settings": {
            "ours": "open_stores('postgresql://...?schema=...') defaults; each worker process "
            "runs Dispatcher(batch_size=100).run_once until idle; submit_many batches of 100",
            "raw": "psycopg autocommit, the same 4 statements per batch of 100 (bench_postgres.py)",
            "pgqueuer": pgqueuer_pg.SETTINGS + "; enqueue batches of 100",
            "procrastinate": procrastinate_pg.SETTINGS + "; enqueue batches of 100",
            "server": common.pg_settings(),
        },
    }
    labels = {peer: f"{peer} {version(peer)}" for peer in modules}
    out = Rows("postgres", runs)
    drain4 = "drain, 4 worker processes"
    for peer, bound in (("pgqueuer", 1.4), ("procrastinate", 40.0)):
        best = lambda run, p=peer: f"{labels[p]} best ({run[p + '/best.config']})"  # noqa: E731
        out.add(
            drain4,
            "ours/w4.drain",
            f"{peer}/best.drain",
            best,
            at_least(bound),
            ceiling=("raw/w4.drain", "raw psycopg"),
        )
    out.add(drain4, "ours/w4.drain", "raw/w4.drain", "raw psycopg, 4 proc", at_least(0.8))
    out.add("drain, 1 worker process", "ours/w1.drain", "raw/w1.drain", "raw psycopg, 1 proc")
    for peer, (setting, values) in settings.items():
        for value in values:
            for w in WORKERS:
                out.add(
                    f"drain, {w} worker process{'es' if w > 1 else ''}",
                    f"ours/w{w}.drain",
                    f"{peer}/{value}/w{w}.drain",
                    f"{labels[peer]} ({setting}={value}, {w} proc)",
                )
    for metric, what in (("enqueue", "enqueue, batches of 100"), ("e2e", "end to end, 4 proc")):
        for peer in modules:
            best = lambda run, p=peer: f"{labels[p]} ({run[p + '/w4.config']})"  # noqa: E731
            out.add(what, f"ours/w4.{metric}", f"{peer}/w4.{metric}", best)
    return out.rows


def _peer(
    module: Any, dsn: str, n: int, key: str, workers: int, setting: str, value: int
) -> dict[str, float]:
    """Enqueue ``n`` jobs, drain them with ``workers`` processes; check that all were done."""
    module.reset(dsn)
    enqueue_s = module.enqueue(dsn, n, 100)
    target = f"peers.{module.__name__.rsplit('.', 1)[-1]}:worker"
    drain_s = common.drain(target, workers, dsn=dsn, **{setting: value})
    left, ok = module.processed(dsn)
    if left or ok != n:
        raise SystemExit(f"{key}: {left} jobs left, {ok} of {n} done")
    figures = rates(n, enqueue_s, drain_s, key)
    figures[f"{key}.drain"] = figures.pop(f"{key}.process")
    return figures


def _best(run: dict[str, Any], peer: str, setting: str, values: tuple[int, ...]) -> None:
    """The peer's best drain over its settings and worker counts (``peer/best``), and
    its best setting with 4 workers (``peer/w4``: enqueue, drain, end to end)."""
    top = max(
        ((v, w) for v in values for w in WORKERS), key=lambda c: run[f"{peer}/{c[0]}/w{c[1]}.drain"]
    )
    run[f"{peer}/best.drain"] = run[f"{peer}/{top[0]}/w{top[1]}.drain"]
    run[f"{peer}/best.config"] = f"{setting}={top[0]}, {top[1]} proc"
    top4 = max(values, key=lambda v: run[f"{peer}/{v}/w4.drain"])
    for metric in ("enqueue", "drain", "e2e"):
        run[f"{peer}/w4.{metric}"] = run[f"{peer}/{top4}/w4.{metric}"]
    run[f"{peer}/w4.config"] = f"{setting}={top4}, 4 proc"


# -- latency ------------------------------------------------------------------------------------


def latency_section(cfg: dict[str, Any], details: dict[str, Any], pg: bool) -> list[Row]:
    import latency

    rows: list[Row] = []
    out: dict[str, Any] = {}
    bounds = {"p50": 5.0, "p99": 50.0}

    def count(poll: float) -> int:
        return int(cfg["latency_samples"]["slow" if poll >= 0.1 else "fast"])

    for poll in cfg["poll_intervals"]:
        ours = out[f"sqlite/poll={poll:g}"] = latency.summary(latency.sqlite(count(poll), poll))
        what = f"SQLite across processes, {{q}} (poll_interval={poll:g}s, n={count(poll)})"
        for q, bound in bounds.items():
            target = at_most(bound, f"<= {bound:g} ms", on="value")
            rows.append(Row("latency", what.format(q=q), ours[q], "ms", target=target))
        log(f"  latency sqlite poll={poll:g}: p50 {ours['p50']:.1f} ms, p99 {ours['p99']:.1f} ms")
    if pg:
        n = count(0)
        ours = out["postgres"] = latency.summary(latency.postgres(n))
        raw = out["postgres_raw"] = latency.summary(latency.postgres_raw(n))
        for q, bound in bounds.items():
            target = at_most(bound, f"<= {bound:g} ms", on="value")
            what = f"PostgreSQL across processes, {q} (LISTEN/NOTIFY, n={n})"
            rows.append(Row("latency", what, ours[q], "ms", "raw INSERT+NOTIFY", raw[q], target))
        log(f"  latency postgres: p50 {ours['p50']:.1f} ms, p99 {ours['p99']:.1f} ms")
    raw = out["memory_raw"] = latency.summary(latency.memory_raw(count(0)))
    for poll in cfg["poll_intervals"]:
        ours = out[f"memory/poll={poll:g}"] = latency.summary(latency.memory(count(poll), poll))
        for q in bounds:
            what = f"memory in one process, {q} (poll_interval={poll:g}s, n={count(poll)})"
            rows.append(Row("latency", what, ours[q], "ms", "raw queue.Queue", raw[q]))
    details["latency"] = out
    return rows


# -- scale, rss, overhead, http -----------------------------------------------------------------

STORE_NAMES = {"memory": "memory", "sqlite": "SQLite", "postgres": "PostgreSQL"}


def scale_section(cfg: dict[str, Any], details: dict[str, Any], pg: bool) -> list[Row]:
    import scale

    stores = ["memory", "sqlite"] + (["postgres"] if pg else [])
    sizes = cfg["scale_sizes"]
    results = scale.run(
        stores, sizes, cfg["scale_events"], cfg["scale_repeat"], cfg["scale_budget"]
    )
    details["scale"] = results
    rows = []
    for store in stores:
        for kind in ("depth", "history"):
            for keying in ("unkeyed", "keyed"):
                base = results[f"{store}/{keying}/{kind}/{sizes[0]}"]["us_per_event"]
                for size in sizes[1:]:
                    result = results[f"{store}/{keying}/{kind}/{size}"]
                    what = (
                        f"{STORE_NAMES[store]}, {size_label(size)} "
                        f"{'queued' if kind == 'depth' else 'history'}, {keying}"
                    )
                    short = result["events"] < cfg["scale_events"]
                    rows.append(
                        Row(
                            "scale",
                            what,
                            result["us_per_event"],
                            "us/ev",
                            f"{size_label(sizes[0])} figure",
                            base,
                            # the target is for the largest size: 1M in a full run
                            target=at_most(1.3) if size == sizes[-1] else None,
                            note=f"{result['events']} events" if short else "",
                        )
                    )
    return rows


def rss_section(cfg: dict[str, Any], details: dict[str, Any], pg: bool) -> list[Row]:
    import rss

    n = cfg["rss_events"]
    rows, out = [], {}
    for store in ("sqlite", "postgres") if pg else ("sqlite",):
        result = out[store] = getattr(rss, store)(n)
        what = f"worker RSS after draining {size_label(n)}, {STORE_NAMES[store]}"
        rows.append(
            Row(
                "memory",
                what,
                result["after_mib"],
                "MiB",
                "after its first batch",
                result["before_mib"],
                target=at_most(1.10, "flat (<= 1.10x)"),
            )
        )
        log(f"  rss {store}: {result['before_mib']:.1f} -> {result['after_mib']:.1f} MiB")
    details["rss"] = out
    return rows


def shutdown_section(cfg: dict[str, Any], details: dict[str, Any]) -> list[Row]:
    import shutdown

    delay, bound = 0.2, 30.0
    result = details["shutdown"] = shutdown.measure(cfg["shutdown_samples"], delay, 20, bound)
    ok = result["graceful_exit_codes"] == [0] and result["in_flight_left"] == 0
    note = "exit 0, nothing left in flight" if ok else f"FAILED: {result}"
    return [
        Row(
            "worker",
            f"SIGTERM mid-batch -> exit, p50 ({note}; one delivery takes {delay:g} s)",
            result["graceful_p50_s"],
            "s",
            "bound (--shutdown-timeout)",
            bound,
            target=at_most(1.0, "<= the bound"),
        ),
        Row(
            "worker",
            "SIGTERM mid-batch -> exit, max",
            result["graceful_max_s"],
            "s",
            "bound (--shutdown-timeout)",
            bound,
            target=at_most(1.0, "<= the bound"),
        ),
        Row(
            "worker",
            f"a second SIGTERM -> exit at once (exit {result['second_signal_exit_codes']})",
            result["second_signal_max_s"],
            "s",
            "",
            None,
        ),
    ]


def overhead_section(cfg: dict[str, Any], details: dict[str, Any]) -> list[Row]:
    import overhead

    sizes = cfg["overhead_sizes"]
    results = details["overhead"] = overhead.run(sizes, cfg["overhead_repeat"])
    first = float(results[sizes[0]]["us_per_delivery"])  # type: ignore[arg-type]
    # what the contract's operations cost alone (overhead.floor): the target's yardstick
    parts = details["overhead_floor"] = overhead.floor()
    floor = sum(parts.values())
    log(f"  overhead floor: {floor:.1f} us/delivery")
    rows = []
    for size in sizes:
        cost = float(results[size]["us_per_delivery"])  # type: ignore[arg-type]
        label, ref = (
            (f"{size_label(sizes[0])} figure", first)
            if size != sizes[0]
            else ("floor: the operations every delivery needs, timed alone", floor)
        )
        what = f"library work per delivery, {size_label(size)} events"
        target = at_most(20, "<= 20 us", on="value")
        rows.append(Row("in-memory", what, cost, "us/ev", label, ref, target))
        log(f"  overhead {size}: {cost:.1f} us/delivery")
    return rows


def http_section(cfg: dict[str, Any], details: dict[str, Any]) -> list[Row]:
    import bench_http

    n, c = cfg["http_deliveries"], cfg["http_concurrency"]
    proc, url = bench_http.start_server(0.0)
    runs = []
    try:
        bench_http.plain(url, 50, c)  # warm up both paths
        bench_http.through_dispatcher(url, 50, c)
        for _ in range(cfg["http_repeat"]):
            plain = bench_http.plain(url, n, c)
            runs.append({"plain": plain, "ours": bench_http.through_dispatcher(url, n, c)})
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    details["http"] = {"deliveries": n, "concurrency": c, "runs": runs}
    out = Rows("http", runs)
    what = f"HttpDestination + Dispatcher, concurrency {c}, N={n:,}"
    label = f"bare httpx {version('httpx')} loop"
    out.add(what, "ours", "plain", label, at_least(0.85), unit="req/s")
    return out.rows


# -- the run ------------------------------------------------------------------------------------


def git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=common.HERE,
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "../src"],
            cwd=common.HERE,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() + ("+dirty src" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N, fewer repeats, no 1M rows")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections: {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="the JSON file (a .md copy of the table beside it)",
    )
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    pg_missing = common.pg_available()
    pg = pg_missing is None
    rows: list[Row] = []
    details: dict[str, Any] = {"config": cfg, "skipped": {}}
    sections: dict[str, Callable[[], list[Row]]] = {
        "sqlite": lambda: sqlite_section(cfg, details),
        "postgres": lambda: postgres_section(cfg, details),
        "latency": lambda: latency_section(cfg, details, pg),
        "shutdown": lambda: shutdown_section(cfg, details),
        "scale": lambda: scale_section(cfg, details, pg),
        "rss": lambda: rss_section(cfg, details, pg),
        "overhead": lambda: overhead_section(cfg, details),
        "http": lambda: http_section(cfg, details),
    }
    timings = {}
    for name in only:
        if name == "postgres" and not pg:
            details["skipped"][name] = pg_missing
            log(f"skipping postgres: {pg_missing}")
            continue
        log(f"{name} ...")
        section_started = time.perf_counter()
        rows.extend(sections[name]())
        timings[name] = round(time.perf_counter() - section_started, 1)
    if not pg:
        details["skipped"]["postgres parts of latency/scale/rss"] = pg_missing
    duration = time.perf_counter() - started
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python3 tasks.py bench" + (" --quick" if args.quick else "")
        if os.environ.get("RESILIENT_SYNC_BENCH_VIA_TASKS")
        else shlex.join([Path(sys.executable).name, *sys.argv]),
        "mode": "quick" if args.quick else "full",
        "sections": only,
        "duration_s": round(duration, 1),
        "section_s": timings,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "sqlite": sqlite3.sqlite_version,
            "postgres": common.pg_settings() if pg else pg_missing,
        },
        "versions": {
            d: version(d)
            for d in (
                "resilient-sync",
                "huey",
                "persist-queue",
                "pgqueuer",
                "asyncpg",
                "procrastinate",
                "psycopg",
                "httpx",
            )
        },
        "commit": git_commit(),
    }
    common.write_json(args.out, meta, rows, details)
    markdown = args.out.with_suffix(".md")
    heading = f"{meta['date']}, `{meta['command']}`, {meta['duration_s']:.0f} s"
    markdown.write_text(f"{heading}, commit {meta['commit']}\n\n{common.render_markdown(rows)}\n")
    print()
    print(common.render_text(rows))
    print()
    passed = sum(r.status == "PASS" for r in rows)
    missed = sum(r.status == "MISS" for r in rows)
    print(f"{passed} targets met, {missed} missed; {len(rows)} rows in {duration:.0f} s")
    print(f"JSON: {args.out}")
    print(f"Markdown: {markdown}")


if __name__ == "__main__":
    main()

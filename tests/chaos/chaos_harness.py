"""The chaos run: "nothing lost, nothing doubled, nothing leaked", checked.

``run_chaos(ChaosConfig(...))`` starts the hostile server (``chaos_server``)
in this process, worker processes (``chaos_worker``) and an operator process
(``chaos_operator``) on one store (SQLite file or PostgreSQL schema), submits
events while it SIGKILLs and restarts workers (and restarts the private
PostgreSQL cluster when asked), then calms the server down, resumes every
destination and drains the queue. Then it checks what the contract promises
against what the server's ledger, the store, the workers' logs and the CLI
say, and returns a :class:`ChaosReport` (``format_table`` prints it).

The work directory keeps what a post-mortem needs: ``logs/`` (every worker
incarnation's stderr, and the operator's), ``cli/`` (every CLI output that
was scanned), ``ledger.jsonl`` (every request the server read), ``config.json``,
``operator.json`` and ``report.txt`` (the table); with SQLite, ``queue.db``.

Used by ``tests/chaos/test_chaos.py`` (short run) and ``bench/chaos.py``
(long run, by command).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import secrets as secrets_module
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from chaos_server import Call, HostileServer

from resilient_sync import (
    Attempt,
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    Dispatcher,
    Event,
    Operator,
    StoreError,
)
from resilient_sync.stores import open_stores

__all__ = [
    "ChaosConfig",
    "ChaosReport",
    "Row",
    "format_table",
    "pg_restart_command",
    "run_chaos",
]

HERE = Path(__file__).resolve().parent
WORKER = HERE / "chaos_worker.py"
OPERATOR = HERE / "chaos_operator.py"
DESTINATIONS = ("pos", "crm")
ACTIVE = frozenset(
    {DeliveryStatus.PENDING, DeliveryStatus.IN_FLIGHT, DeliveryStatus.RETRY_SCHEDULED}
)
CONTROL = {"ESC": "\x1b", "BEL": "\x07", "NUL": "\x00"}
CLI_PARALLEL = 3  # CLI commands run at once by the output checks
T = TypeVar("T")


@dataclass
class ChaosConfig:
    """One chaos run. ``pg_dsn`` is needed for ``store="postgres"``;
    ``pg_restart`` is the command that restarts the *private* cluster behind
    it (see :func:`pg_restart_command`), None for no restarts."""

    store: str
    workdir: Path
    events: int = 300
    duration: float = 30.0
    workers: int = 3
    seed: int = 0
    pg_dsn: str | None = None
    pg_restart: list[str] | None = None
    pg_restart_every: float = 10.0
    kill_every: float = 2.5  # mean seconds between SIGKILLs
    drain_timeout: float = 90.0
    keys: int = 20
    batch_size: int = 4
    concurrency: int = 2
    lease: float = 10.0
    client_timeout: float = 0.5
    max_attempts: int = 6
    max_retry_after: float = 1.5
    cli_sample: int = 8
    big_body: int = 5 * 1024 * 1024


@dataclass
class Row:
    """One line of the final table: ``ok`` None is information only."""

    check: str
    value: str
    ok: bool | None = None
    details: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    store: str
    seed: int
    rows: list[Row]
    workdir: Path

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]


@dataclass
class _Secrets:
    token: str
    api_key: str
    plain_token: str
    plain_key: str
    note: str

    @classmethod
    def make(cls) -> _Secrets:
        def one(prefix: str) -> str:
            return f"{prefix}{secrets_module.token_hex(12)}"

        return cls(
            token=one("sk_chaos_bearer_"),
            api_key=one("ak_chaos_query_"),
            plain_token=one("pt_chaos_exc_"),
            plain_key=one("pk_chaos_exc_"),
            note=one("nk_chaos_note_"),
        )

    def named(self) -> dict[str, str]:
        return {
            "bearer token (pos headers)": self.token,
            "API key (pos params)": self.api_key,
            "token in crm exceptions/results": self.plain_token,
            "key in crm exception": self.plain_key,
            "secret in operator notes": self.note,
        }


@dataclass
class _Proc:
    name: str
    incarnation: int
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def tag(self) -> str:
        return f"{self.name}.{self.incarnation}"


class _Stub:
    """A destination name for the submitting dispatcher (it never delivers)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def deliver(self, event: Event, context: DeliveryContext) -> Any:
        raise RuntimeError("the harness only submits")


def _died_at(proc: _Proc) -> float:
    """When a process that ended by itself died: its last log write (its
    traceback), not when the harness noticed."""
    try:
        return min(time.time(), proc.log.stat().st_mtime)
    except OSError:
        return time.time()


def pg_restart_command(cluster: str, dsn: str) -> list[str]:
    """``pg_ctlcluster`` restart of ``VERSION/NAME``, refused unless that
    cluster is the one behind ``dsn`` and is not ``main`` (never restart a
    shared server)."""
    version, _, name = cluster.partition("/")
    if not version or not name:
        raise ValueError(f"cluster must be VERSION/NAME, e.g. 15/chaos, got {cluster!r}")
    if name == "main":
        raise ValueError("refusing to restart the cluster 'main' (shared); create a private one")
    from psycopg.conninfo import conninfo_to_dict

    port = str(conninfo_to_dict(dsn).get("port") or "5432")
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == version and parts[1] == name:
            if parts[2] != port:
                raise ValueError(
                    f"cluster {cluster} listens on port {parts[2]}, but the DSN uses {port}"
                )
            return ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart"]
    raise ValueError(f"no cluster {cluster} in pg_lsclusters")


def _retrying(fn: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    """Call ``fn`` (``what``), retrying on ``StoreError`` (the database restarting)."""
    give_up = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except StoreError:  # noqa: PERF203 - a retry loop
            if time.monotonic() > give_up:
                raise
            time.sleep(0.3)


def _event(n: int, keys: int) -> Event:
    key = f"c{n % keys}" if n % 5 else None
    payload = {
        "event": f"e{n}",
        "n": n,
        "customer": key,
        "email": f"user{n}@example.com",
        "amount": n * 3,
    }
    return Event(f"e{n}", "customer.updated", payload, ordering_key=key)


class _Run:
    """The state of one run (see :func:`run_chaos`)."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.secrets = _Secrets.make()
        self.workdir = config.workdir
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.schema: str | None = None
        self.url = self._store_url()
        self.server = HostileServer(
            seed=config.seed,
            token=self.secrets.token,
            api_key=self.secrets.api_key,
            timeout_sleep=config.client_timeout + 0.4,
            big=config.big_body,
        )
        self.workers: dict[str, _Proc] = {}
        self.incarnations: Counter[str] = Counter()
        self.killed: set[str] = set()  # tags SIGKILLed by the harness
        self.deaths: dict[str, float] = {}  # tag -> time.time() of its kill or found dead
        self.unexpected: dict[str, str] = {}  # tag -> how it ended and its stderr tail
        self.stopped_badly: dict[str, str] = {}
        self.kills = 0
        self.pg_restarts: list[tuple[float, float, int]] = []  # start, end, return code
        self.submitted: list[str] = []
        self.drain_rounds = 0
        self.drain_resumes = 0
        self.operator: _Proc | None = None
        self.operator_out = self.workdir / "operator.json"
        self.config_path = self.workdir / "config.json"

    # -- setup -----------------------------------------------------------------

    def _store_url(self) -> str:
        if self.config.store == "sqlite":
            return f"sqlite:///{(self.workdir / 'queue.db').resolve()}"
        if self.config.store != "postgres":
            raise ValueError(f"store must be sqlite or postgres, got {self.config.store!r}")
        if not self.config.pg_dsn:
            raise ValueError("store=postgres needs pg_dsn")
        self.schema = f"rs_chaos_{secrets_module.token_hex(6)}"
        sep = "&" if "?" in self.config.pg_dsn else "?"
        return f"{self.config.pg_dsn}{sep}schema={self.schema}"

    def drop_schema(self) -> None:
        if self.schema is None or not self.config.pg_dsn:
            return
        import psycopg

        for _ in range(30):
            try:
                with psycopg.connect(self.config.pg_dsn, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                return
            except psycopg.OperationalError:  # noqa: PERF203 - the cluster may be restarting
                time.sleep(1)

    def write_config(self) -> None:
        c = self.config
        data = {
            "store": self.url,
            "server": self.server.url,
            "token": self.secrets.token,
            "api_key": self.secrets.api_key,
            "plain_token": self.secrets.plain_token,
            "plain_key": self.secrets.plain_key,
            "note_secret": self.secrets.note,
            "seed": c.seed,
            "client_timeout": c.client_timeout,
            "lease": c.lease,
            "batch_size": c.batch_size,
            "concurrency": c.concurrency,
            "max_attempts": c.max_attempts,
            "max_retry_after": c.max_retry_after,
        }
        self.config_path.write_text(json.dumps(data, indent=1))

    # -- processes ---------------------------------------------------------------

    def _spawn(self, name: str, script: Path, *args: str) -> _Proc:
        self.incarnations[name] += 1
        incarnation = self.incarnations[name]
        log = self.logs / f"{name}.{incarnation}.err"
        with log.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, str(script), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return _Proc(name, incarnation, popen, log)

    def start_worker(self, name: str) -> None:
        tag = f"{name}.{self.incarnations[name] + 1}"
        self.workers[name] = self._spawn(name, WORKER, str(self.config_path), tag)

    def start_operator(self) -> None:
        self.operator = self._spawn(
            "operator", OPERATOR, str(self.config_path), str(self.operator_out)
        )

    def check_workers(self) -> None:
        """A worker that ended without being killed is a failure: record it
        (with the tail of its stderr) and start another."""
        for name, proc in list(self.workers.items()):
            code = proc.popen.poll()
            if code is None:
                continue
            self.deaths[proc.tag] = _died_at(proc)
            tail = proc.log.read_text(errors="replace")[-3000:]
            self.unexpected[proc.tag] = f"exit code {code}; stderr tail:\n{tail}"
            self.start_worker(name)

    def kill_one(self) -> None:
        name = self.rng.choice(sorted(self.workers))
        proc = self.workers[name]
        if proc.popen.poll() is not None:
            return
        os.kill(proc.popen.pid, signal.SIGKILL)
        self.deaths[proc.tag] = time.time()
        proc.popen.wait()
        self.killed.add(proc.tag)
        self.kills += 1
        self.start_worker(name)

    def restart_pg(self) -> None:
        assert self.config.pg_restart is not None
        started = time.time()
        result = subprocess.run(
            self.config.pg_restart, capture_output=True, text=True, timeout=120, check=False
        )
        self.pg_restarts.append((started, time.time(), result.returncode))

    def stop_operator(self) -> None:
        if self.operator is None:
            return
        proc = self.operator.popen
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.stopped_badly[self.operator.tag] = "did not stop within 30 s of SIGTERM"
        if proc.returncode not in (0, None) and self.operator.tag not in self.stopped_badly:
            tail = self.operator.log.read_text(errors="replace")[-3000:]
            self.unexpected[self.operator.tag] = f"exit code {proc.returncode}; {tail}"

    def stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            try:
                code = proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
                self.stopped_badly[proc.tag] = "did not stop within 30 s of SIGTERM"
                continue
            if code != 0:
                self.deaths[proc.tag] = _died_at(proc)
                tail = proc.log.read_text(errors="replace")[-3000:]
                self.unexpected[proc.tag] = f"exit code {code} after SIGTERM; stderr tail:\n{tail}"

    # -- the run -------------------------------------------------------------------

    def submit_all(self, dispatcher: Dispatcher, until: float, batches: list[list[Event]]) -> None:
        """Submit due batches (spread evenly until ``until``)."""
        now = time.monotonic()
        while batches and (now >= until or len(batches) * self._spacing > until - now):
            batch = batches.pop(0)
            _retrying(lambda b=batch: dispatcher.submit_many(b), "submit")  # type: ignore[misc]
            self.submitted.extend(e.id for e in batch)

    _spacing = 0.0

    def chaos(self) -> None:
        c = self.config
        queue, idempotency = open_stores(self.url)
        self.queue = queue
        dispatcher = Dispatcher(queue, idempotency, [_Stub(n) for n in DESTINATIONS])
        events = [_event(n, c.keys) for n in range(c.events)]
        batches = [events[i : i + 10] for i in range(0, len(events), 10)]
        start = time.monotonic()
        submit_until = start + 0.6 * c.duration
        self._spacing = (0.6 * c.duration) / max(1, len(batches))
        end = start + c.duration
        next_kill = start + self.rng.expovariate(1 / c.kill_every)
        next_restart = start + c.pg_restart_every * self.rng.uniform(0.5, 1.0)
        for i in range(c.workers):
            self.start_worker(f"w{i + 1}")
        self.start_operator()
        while time.monotonic() < end:
            self.submit_all(dispatcher, submit_until, batches)
            self.check_workers()
            now = time.monotonic()
            if now >= next_kill:
                self.kill_one()
                next_kill = now + self.rng.expovariate(1 / c.kill_every)
            if c.pg_restart is not None and now >= next_restart:
                self.restart_pg()
                next_restart = time.monotonic() + c.pg_restart_every * self.rng.uniform(0.5, 1.5)
            time.sleep(0.05)
        self.submit_all(dispatcher, 0.0, batches)

    def drain(self) -> None:
        """No more faults: resume everything, let the workers finish; when only
        deliveries held behind a NEEDS_ACTION one of their key are left,
        re-sync the NEEDS_ACTION ones (as an operator would), at most 3 times."""
        self.server.calm = True
        self.stop_operator()
        op = Operator(self.queue)
        give_up = time.monotonic() + self.config.drain_timeout
        stable_since = time.monotonic()
        last: tuple[int, ...] = ()
        while time.monotonic() < give_up:
            self.check_workers()
            for name, state in _retrying(op.destinations, "destinations").items():
                if state.paused:
                    _retrying(lambda n=name: op.resume(n, actor="chaos-harness"), "resume")  # type: ignore[misc]
                    self.drain_resumes += 1
            deliveries = _retrying(lambda: all_deliveries(op), "list")
            active = [d for d in deliveries if d.status in ACTIVE]
            if not active:
                return
            held = _held_behind_needs_action(deliveries)
            shape = tuple(sorted(Counter(d.status.value for d in deliveries).values()))
            if shape != last:
                last, stable_since = shape, time.monotonic()
            only_held = all(d.id in held for d in active)
            if only_held and self.drain_rounds >= 3 and time.monotonic() - stable_since > 1.0:
                return  # what is left waits for a person
            if only_held and self.drain_rounds < 3 and time.monotonic() - stable_since > 0.5:
                _retrying(
                    lambda: op.retry_all(
                        DeliveryStatus.NEEDS_ACTION, actor="chaos-harness", note="drain re-sync"
                    ),
                    "retry_all",
                )
                self.drain_rounds += 1
            time.sleep(0.25)


def all_deliveries(op: Operator) -> list[Delivery]:
    out: list[Delivery] = []
    cursor: str | None = None
    while True:
        page = op.list(limit=500, cursor=cursor)
        out.extend(page.items)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def _held_behind_needs_action(deliveries: Sequence[Delivery]) -> set[str]:
    """Ids of waiting deliveries with an older NEEDS_ACTION one of their key."""
    blocked: dict[tuple[str, str], int] = {}
    for d in deliveries:
        if d.status is DeliveryStatus.NEEDS_ACTION and d.ordering_key is not None:
            k = (d.destination, d.ordering_key)
            blocked[k] = min(blocked.get(k, d.seq), d.seq)
    return {
        d.id
        for d in deliveries
        if d.status in ACTIVE
        and d.ordering_key is not None
        and blocked.get((d.destination, d.ordering_key), d.seq + 1) < d.seq
    }


# -- checks -------------------------------------------------------------------------


def _ts(when: datetime) -> float:
    return when.timestamp()


def _sample(items: Iterable[str], n: int = 5) -> list[str]:
    items = list(items)
    return items[:n] + ([f"... and {len(items) - n} more"] if len(items) > n else [])


def _check_lost(
    run: _Run, deliveries: list[Delivery], calls: list[Call]
) -> tuple[Row, Row, set[str]]:
    by_event: dict[str, set[str]] = defaultdict(set)
    for d in deliveries:
        by_event[d.event.id].add(d.destination)
    missing = [
        f"{e} -> {dest}: no delivery"
        for e in run.submitted
        for dest in DESTINATIONS
        if dest not in by_event.get(e, set())
    ]
    held = _held_behind_needs_action(deliveries)
    applied = {(c.destination, c.event_id) for c in calls if c.applied}
    unsettled, phantom, odd = [], [], []
    for d in deliveries:
        if d.status in ACTIVE and d.id not in held:
            unsettled.append(f"{d.id} ({d.event.id} -> {d.destination}) still {d.status.value}")
        elif d.status in (DeliveryStatus.RESOLVED, DeliveryStatus.DISCARDED):
            odd.append(f"{d.id} ({d.event.id}) is {d.status.value}; nobody resolved or discarded")
        elif d.status is DeliveryStatus.SUCCEEDED and (d.destination, d.event.id) not in applied:
            phantom.append(
                f"{d.id} ({d.event.id} -> {d.destination}) SUCCEEDED, never applied by the server"
            )
    problems = missing + unsettled + phantom + odd
    lost = Row(
        "lost = 0",
        f"{len(problems)} (missing {len(missing)}, not settled {len(unsettled)}, "
        f"succeeded but never applied {len(phantom)}, resolved/discarded {len(odd)})",
        not problems,
        _sample(problems, 8),
    )
    held_row = Row(
        "held behind a NEEDS_ACTION of their key (waiting for a person, not lost)",
        str(len(held)),
        None,
    )
    return lost, held_row, held


def _check_doubles(calls: list[Call]) -> Row:
    keys: dict[tuple[str, str], set[str]] = defaultdict(set)
    per_key: Counter[tuple[str, str]] = Counter()
    for c in calls:
        if c.applied:
            keys[(c.destination, c.event_id)].add(c.key)
            per_key[(c.destination, c.key)] += 1
    twice = [
        f"{event} at {dest}: applied under {len(ks)} keys {sorted(ks)}"
        for (dest, event), ks in sorted(keys.items())
        if len(ks) > 1
    ]
    twice += [f"key {k} at {dest} applied {n} times" for (dest, k), n in per_key.items() if n > 1]
    return Row(
        "applied twice = 0",
        f"{len(twice)} (effects applied: {sum(per_key.values())})",
        not twice,
        _sample(twice, 8),
    )


def _check_reasons(deliveries: list[Delivery], held: set[str]) -> Row:
    bad = []
    for d in deliveries:
        if d.status is DeliveryStatus.SUCCEEDED or d.id in held:
            continue
        if d.status is not DeliveryStatus.NEEDS_ACTION:
            bad.append(f"{d.id} ({d.event.id} -> {d.destination}) is {d.status.value}")
            continue
        error = d.last_error
        if error is None or error.category is None or not (error.message or "").strip():
            bad.append(f"{d.id} NEEDS_ACTION without a category and reason: {error!r}")
    counts = Counter(d.status.value for d in deliveries)
    return Row(
        "every delivery SUCCEEDED or NEEDS_ACTION with a reason",
        f"{len(bad)} bad; final: {dict(sorted(counts.items()))}",
        not bad,
        _sample(bad, 8),
    )


_RESETS = frozenset({"retry", "edit"})


#: audit actions that record a call of the destination's ``deliver``: the
#: attempt itself, a failure deciding it, or (written when another worker
#: reclaims it) "attempt N had no recorded outcome"
_CALL_RECORDS = frozenset({"deliver", "internal_error", "lease_expired"})


def _epochs(trail: list[Attempt]) -> tuple[list[int], list[float]]:
    """Per record, its epoch (operator resets seen before it), and when each
    reset happened: attempt numbers restart at 1 after a reset."""
    epochs: list[int] = []
    resets: list[float] = []
    for record in trail:
        if record.action in _RESETS and record.number == 0:
            resets.append(_ts(record.finished_at))
        epochs.append(len(resets))
    return epochs, resets


def _check_audit(
    run: _Run,
    deliveries: list[Delivery],
    trails: dict[str, list[Attempt]],
    calls: list[Call],
) -> list[Row]:
    """Each server call is matched with the records of the same delivery,
    operator epoch and attempt number (see :data:`_CALL_RECORDS`): exactly
    one, except for a call whose record could not be written yet (its worker
    died, or PostgreSQL restarted, and nobody reclaimed the delivery since)."""
    recorded: dict[tuple[str, int, int], list[Attempt]] = defaultdict(list)
    resets: dict[str, list[float]] = {}
    inconsistent: list[str] = []
    for d in deliveries:
        trail = trails.get(d.id, [])
        epochs, resets[d.id] = _epochs(trail)
        last: dict[int, int] = {}
        for record, epoch in zip(trail, epochs, strict=True):
            if record.action not in _CALL_RECORDS or record.details.get("sent") is False:
                continue  # a client-side refusal (rate limit): nothing reached the server
            recorded[(d.id, epoch, record.number)].append(record)
            if record.action == "deliver" and record.number <= last.get(epoch, 0):
                inconsistent.append(
                    f"{d.id}: deliver record number {record.number} after {last[epoch]}"
                )
            if record.action == "deliver":
                last[epoch] = max(last.get(epoch, 0), record.number)
        outcomes = [r.outcome for r in trail if r.outcome is not None]
        if d.status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.NEEDS_ACTION) and (
            not outcomes or outcomes[-1] is not d.status
        ):
            ended = outcomes[-1].value if outcomes else "nothing"
            inconsistent.append(
                f"{d.id} ({d.event.id} -> {d.destination}) is {d.status.value}, "
                f"its audit trail ends in {ended}"
            )
    matched_twice: list[str] = []
    unmatched_alive: list[str] = []
    excused = only_internal = 0
    # a call's outcome is committed within a lease after it: a restart in that
    # time may have failed its commit (the pool reconnects once it is over)
    windows = [(s - run.config.lease, e + 1.0) for s, e, _ in run.pg_restarts]
    for c in calls:
        epoch = sum(1 for t in resets.get(c.delivery_id, []) if t < c.at)
        candidates = recorded.get((c.delivery_id, epoch, c.attempt), [])
        if len(candidates) > 1:
            actions = ", ".join(r.action for r in candidates)
            matched_twice.append(
                f"{c.destination} call for {c.delivery_id} attempt {c.attempt} at {c.at:.3f}: "
                f"{len(candidates)} records ({actions})"
            )
        if any(r.action == "internal_error" for r in candidates):
            only_internal += 1
        if candidates:
            continue
        died = run.deaths.get(c.worker)
        # (+1 s: file times come from a coarse clock, a few ms behind time.time())
        if died is not None and died - run.config.lease <= c.at <= died + 1.0:
            excused += 1  # its worker was killed (or died) before it could record it
        elif any(lo <= c.at <= hi for lo, hi in windows):
            excused += 1  # PostgreSQL was restarting: the completion may not have committed
        else:
            unmatched_alive.append(
                f"{c.destination} call by {c.worker} for {c.delivery_id} ({c.event_id}) "
                f"attempt {c.attempt}, fault {c.fault}: no audit record"
            )
    return [
        Row(
            "audit: each server call matched by at most one audit record",
            f"{len(matched_twice)} matched twice (of {len(calls)} calls)",
            not matched_twice,
            _sample(matched_twice),
        ),
        Row(
            "audit: every server call has its audit record (deliver, internal_error or "
            "lease_expired)",
            f"{len(unmatched_alive)} unaudited (+{excused} never reclaimed, in the last lease "
            "before a kill or crash, or a PostgreSQL restart: allowed)",
            not unmatched_alive,
            _sample(unmatched_alive, 8),
        ),
        Row(
            "calls audited as internal_error instead of deliver",
            str(only_internal),
            None,
        ),
        Row(
            "audit: trails consistent (one record per attempt, numbers increasing, "
            "last outcome = status)",
            f"{len(inconsistent)} inconsistencies",
            not inconsistent,
            _sample(inconsistent, 8),
        ),
    ]


def _check_unsafe_edits(
    trails: dict[str, list[Attempt]], deliveries: list[Delivery], calls: list[Call]
) -> Row:
    """An accepted edit re-keys the payload; only safe if the old key was never
    applied (ground truth: the server's ledger)."""
    applied_at = {(c.destination, c.key): c.at for c in calls if c.applied}
    dest_of = {d.id: d.destination for d in deliveries}
    bad, accepted = [], 0
    for delivery_id, trail in trails.items():
        for record in trail:
            if record.action != "edit":
                continue
            accepted += 1
            keys = record.details.get("idempotency_key") or {}
            old = keys.get("before") if isinstance(keys, dict) else None
            when = applied_at.get((dest_of.get(delivery_id, ""), str(old)))
            if when is not None and when < _ts(record.finished_at):
                bad.append(
                    f"{delivery_id}: edited at {_ts(record.finished_at):.3f} after its key "
                    f"{old} was applied at {when:.3f} (last error before the edit: "
                    f"{_last_error_before(trail, record)})"
                )
    return Row(
        "edits: none re-keyed a payload the destination had already applied",
        f"{len(bad)} of {accepted} accepted edits",
        not bad,
        _sample(bad),
    )


def _last_error_before(trail: list[Attempt], edit: Attempt) -> str:
    last = "none"
    for record in trail:
        if record is edit:
            break
        if record.error is not None:
            last = record.error.category.value
    return last


def _check_order(calls: list[Call]) -> Row:
    seen: dict[tuple[str, str], list[int]] = defaultdict(list)
    for c in sorted(calls, key=lambda c: c.at):
        if c.ordering_key:
            seen[(c.destination, c.ordering_key)].append(c.n)
    bad = []
    for (dest, key), ns in sorted(seen.items()):
        high = -1
        for i, n in enumerate(ns):
            if n < high:
                around = ns[max(0, i - 4) : i + 2]
                bad.append(f"{dest} key {key}: n={n} sent after n={high} ({around})")
                break
            high = max(high, n)
    return Row(
        "order per ordering key kept (server side)",
        f"{len(bad)} keys out of order (of {len(seen)})",
        not bad,
        _sample(bad),
    )


# -- scanning everything the library wrote or printed ---------------------------------


def _fragment(secret: str) -> str:
    """12 of the secret's 24 random hex digits: enough to find a cut-off copy."""
    return secret[-24:-12]


def _find(text: str, secrets: dict[str, str]) -> list[str]:
    """Labels of the secrets in ``text`` (whole, or a fragment of one cut off)."""
    found = []
    for label, value in secrets.items():
        if value in text:
            found.append(label)
        elif _fragment(value) in text:
            found.append(f"{label} (a fragment)")
    return found


def _scan_sqlite(path: Path, secrets: dict[str, str], hits: list[str]) -> int:
    largest = 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            columns = [c[0] for c in cursor.description]
            found: Counter[str] = Counter()
            for row in cursor:
                for column, raw in zip(columns, row, strict=True):
                    value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                    if isinstance(value, str):
                        largest = max(largest, len(value))
                        for label in _find(value, secrets):
                            found[f"{table}.{column}: {label}"] += 1
            hits.extend(f"db {k} ({n} rows)" for k, n in found.items())
    finally:
        conn.close()
    for suffix in ("", "-wal"):
        raw = Path(f"{path}{suffix}")
        if raw.exists():
            data = raw.read_bytes()
            hits.extend(
                f"file {raw.name}: {label}"
                for label, value in secrets.items()
                if _fragment(value).encode() in data
            )
    return largest


def _scan_postgres(run: _Run, secrets: dict[str, str], hits: list[str]) -> int:
    import psycopg

    largest = 0
    assert run.config.pg_dsn is not None
    assert run.schema is not None
    with psycopg.connect(run.config.pg_dsn, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                [run.schema],
            )
        ]
        for table in tables:
            found: Counter[str] = Counter()
            # row_to_json keeps json columns as they are (to_jsonb refuses a \u0000 in them)
            query = f'SELECT row_to_json(t)::text FROM "{run.schema}"."{table}" t'
            for (text_row,) in conn.execute(query):
                for column, value in json.loads(text_row).items():
                    text = value if isinstance(value, str) else json.dumps(value)
                    largest = max(largest, len(text))
                    for label in _find(text, secrets):
                        found[f"{table}.{column}: {label}"] += 1
            hits.extend(f"db {k} ({n} rows)" for k, n in found.items())
    return largest


@dataclass
class _CliRun:
    args: list[str]
    code: int
    out: str


def _cli(run: _Run, *args: str) -> _CliRun:
    command, *rest = args
    argv = [sys.executable, "-m", "resilient_sync", command, "--db", run.url, *rest]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return _CliRun(list(args), -1, out.decode("utf-8", "replace") + "\n<timed out>")
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return _CliRun(list(args), proc.returncode, text)


def _interesting(deliveries: list[Delivery], calls: list[Call], n: int) -> list[str]:
    """Deliveries worth a ``show``: ``n`` that met hostile replies, a few that
    need action, a few random ones and a few with odd results."""
    hostile = re.compile(
        r"secret|control|surrogate|nul|not_json|huge|rejected|401|str_raises|decimal|set|nan"
    )
    by_id = {d.id: d for d in deliveries}
    chosen: list[str] = []
    for c in calls:
        if len(chosen) >= n:
            break
        if hostile.search(c.fault) and c.delivery_id in by_id and c.delivery_id not in chosen:
            chosen.append(c.delivery_id)
    needs = [d.id for d in deliveries if d.status is DeliveryStatus.NEEDS_ACTION]
    chosen += [i for i in needs if i not in chosen][:3]
    odd_results = [
        d.id
        for d in deliveries
        if d.result is not None and d.id not in chosen and "pos_" not in str(d.result)[:20]
    ]
    chosen += odd_results[:3]
    rest = [d.id for d in deliveries if d.id not in chosen]
    chosen += random.Random(len(deliveries)).sample(rest, k=min(2, len(rest)))
    return chosen


def _check_outputs(run: _Run, deliveries: list[Delivery], calls: list[Call]) -> list[Row]:
    secrets = run.secrets.named()
    hits: list[str] = []
    if run.config.store == "sqlite":
        largest = _scan_sqlite(run.workdir / "queue.db", secrets, hits)
    else:
        largest = _scan_postgres(run, secrets, hits)
    for log in sorted(run.logs.glob("*.err")):
        text = log.read_text(errors="replace")
        hits.extend(f"log {log.name}: {label}" for label in _find(text, secrets))
    commands: list[list[str]] = [
        ["status"],
        ["status", "--json"],
        ["list", "--limit", "2000"],
        ["list", "--json", "--limit", "2000"],
        ["list", "--status", "needs_action", "--limit", "2000"],
        ["recent", "--limit", "300"],
        ["recent", "--json", "--limit", "300"],
        ["trend"],
    ]
    for i, delivery_id in enumerate(_interesting(deliveries, calls, run.config.cli_sample)):
        commands += [["show", delivery_id], ["show", delivery_id, "--json"]]
        commands += [["attempts", delivery_id]] + (
            [["attempts", delivery_id, "--json"]] if i < 3 else []
        )
    control: list[str] = []
    crashed: list[str] = []
    cli_dir = run.workdir / "cli"
    cli_dir.mkdir(exist_ok=True)
    # each command is its own process (most of its time is the interpreter
    # starting): run a few at once, read their outputs in order
    with ThreadPoolExecutor(max_workers=CLI_PARALLEL) as pool:
        results = list(pool.map(lambda args: _cli(run, *args), commands))
    for i, (args, result) in enumerate(zip(commands, results, strict=True)):
        (cli_dir / f"{i:03d}-{'_'.join(args)[:60]}.txt").write_text(
            result.out, errors="backslashreplace"
        )
        label = " ".join(args)
        hits.extend(f"cli `{label}`: {secret}" for secret in _find(result.out, secrets))
        found = [name for name, ch in CONTROL.items() if ch in result.out]
        if found:
            control.append(f"`{label}`: {', '.join(found)}")
        if result.code != 0 or "Traceback" in result.out:
            last = result.out.strip().splitlines()[-1:] or [""]
            crashed.append(f"`{label}` exit {result.code}: {last[0][:200]}")
    return [
        Row(
            "no planted secret in any output (db, logs, CLI)",
            f"{len(hits)} leaks",
            not hits,
            _sample(hits, 40),
        ),
        Row(
            "no control characters (ESC, BEL, NUL) in CLI output",
            f"{len(control)} of {len(commands)} commands",
            not control,
            _sample(control, 8),
        ),
        Row(
            "CLI read commands exit 0 without a traceback",
            f"{len(crashed)} of {len(commands)} failed",
            not crashed,
            _sample(crashed, 8),
        ),
        Row("largest single value stored (characters)", f"{largest:,}", None),
    ]


def _check_processes(run: _Run, tally: dict[str, Any]) -> Row:
    deaths: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for tag, why in sorted(run.unexpected.items()):
        signature = _death_signature(why)
        deaths[signature] += 1
        examples.setdefault(signature, tag)
    problems = [
        f"{n}x {signature} (e.g. {examples[signature]}, log in logs/{examples[signature]}.err)"
        for signature, n in deaths.most_common()
    ]
    problems += [f"{tag}: {why}" for tag, why in sorted(run.stopped_badly.items())]
    problems += [f"operator crash: {c[-600:]}" for c in tally.get("crashes", [])]
    return Row(
        "worker loops alive (no unexpected exits; operator never crashed)",
        f"{len(run.unexpected)} unexpected exits, {len(run.stopped_badly)} did not stop, "
        f"{len(tally.get('crashes', []))} operator crashes",
        not problems,
        _sample(problems, 6),
    )


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*$", re.M)
_SRC_LINE = re.compile(r'File "[^"]*/(resilient_sync/[^"]+)", line (\d+), in (\w+)')


def _death_signature(why: str) -> str:
    """``ExceptionType: message`` and the innermost library frame of a traceback."""
    head = why.split(";", 1)[0]
    exceptions = _EXC_LINE.findall(why)
    frames = _SRC_LINE.findall(why)
    if not exceptions:
        return head
    where = f" at {frames[-1][0]}:{frames[-1][1]} ({frames[-1][2]})" if frames else ""
    exception = re.sub(r"position \d+", "position N", exceptions[-1][:160])
    return f"{head}: {exception}{where}"


def _operator_summary(tally: dict[str, Any], run: _Run) -> str:
    counts: dict[str, dict[str, int]] = tally.get("counts", {})
    parts = []
    for action in sorted(counts):
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts[action].items()))
        parts.append(f"{action}: {detail}")
    refusals = tally.get("refusals", {})
    if refusals:
        parts.append("edit refusals: " + ", ".join(f"{k} {v}" for k, v in sorted(refusals.items())))
    parts.append(f"drain: {run.drain_rounds} retry_all rounds, {run.drain_resumes} resumes")
    return "; ".join(parts)


def _trails(queue: Any, deliveries: list[Delivery]) -> dict[str, list[Attempt]]:
    return {d.id: _retrying(lambda i=d.id: queue.attempts(i), "attempts") for d in deliveries}  # type: ignore[misc]


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """One chaos run; see the module docstring. A workdir left by an earlier
    run is emptied first: its queue would make every submit a skipped
    duplicate and its deliveries look "succeeded, never applied" here."""
    if config.workdir.exists() and any(config.workdir.iterdir()):
        if not (config.workdir / "config.json").exists():
            raise SystemExit(
                f"{config.workdir} is not empty and holds no earlier chaos run; "
                "give an empty or new --workdir"
            )
        remove_workdir(config.workdir)
    config.workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(config)
    run.server.start()
    try:
        run.write_config()
        try:
            run.chaos()
            run.drain()
        finally:
            run.stop_operator()
            run.stop_workers()
        tally: dict[str, Any] = {}
        if run.operator_out.exists():
            tally = json.loads(run.operator_out.read_text())
        op = Operator(run.queue)
        deliveries = _retrying(lambda: all_deliveries(op), "list")
        trails = _trails(run.queue, deliveries)
        calls = list(run.server.calls)
        with (config.workdir / "ledger.jsonl").open("w") as ledger:  # for post-mortems
            ledger.writelines(json.dumps(dataclasses.asdict(c)) + "\n" for c in calls)
        rows = [
            Row("seed", str(config.seed), None),
            Row("store", config.store + (f" (schema {run.schema})" if run.schema else ""), None),
            Row(
                "events submitted",
                f"{len(run.submitted)} x {len(DESTINATIONS)} destinations",
                None,
            ),
            *(
                Row(
                    f"requests by fault, {dest} (server ledger)",
                    ", ".join(
                        f"{k.split(':', 1)[1]} {v}"
                        for k, v in sorted(run.server.faults.items())
                        if k.startswith(f"{dest}:")
                    ),
                    None,
                )
                for dest in DESTINATIONS
            ),
            Row(
                "requests cut short by a killed worker (dropped by the server)",
                str(run.server.truncated),
                None,
            ),
            Row("worker SIGKILLs", str(run.kills), None),
            Row(
                "PostgreSQL restarts",
                f"{len(run.pg_restarts)}"
                + (
                    f" ({sum(1 for *_, rc in run.pg_restarts if rc != 0)} failed)"
                    if run.pg_restarts
                    else ""
                ),
                None,
            ),
            Row("operator actions", _operator_summary(tally, run), None),
            Row(
                "server-side handler errors (harness bugs)",
                str(len(run.server.errors)),
                not run.server.errors,
                _sample(run.server.errors),
            ),
        ]
        lost, held_row, held = _check_lost(run, deliveries, calls)
        rows += [lost, held_row, _check_doubles(calls), _check_reasons(deliveries, held)]
        rows += _check_audit(run, deliveries, trails, calls)
        rows.append(_check_unsafe_edits(trails, deliveries, calls))
        rows.append(_check_order(calls))
        rows += _check_outputs(run, deliveries, calls)
        rows.append(_check_processes(run, tally))
        with contextlib.suppress(Exception):
            run.queue.close()
        report = ChaosReport(config.store, config.seed, rows, config.workdir)
        (config.workdir / "report.txt").write_text(format_table(report))
        return report
    finally:
        run.server.stop()
        run.drop_schema()


def format_table(report: ChaosReport, *, details: bool = True) -> str:
    """The report as a plain-text table (PASS / FAIL / info per row)."""
    width = max(len(r.check) for r in report.rows)
    lines = [f"chaos run on {report.store}, seed {report.seed}", "-" * (width + 40)]
    for row in report.rows:
        mark = "info" if row.ok is None else ("PASS" if row.ok else "FAIL")
        lines.append(f"{mark:4}  {row.check:<{width}}  {row.value}")
        if details and row.ok is False:
            lines.extend(f"        - {_printable(d)}" for d in row.details)
    failed = len(report.failed)
    lines.append("-" * (width + 40))
    lines.append(f"{'FAILED' if failed else 'PASSED'}: {failed} failing checks")
    return "\n".join(lines)


def _printable(text: str) -> str:
    """Details quote hostile text: show control characters escaped."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode() for ch in text
    ).replace("\n", "\\n")[:1500]


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

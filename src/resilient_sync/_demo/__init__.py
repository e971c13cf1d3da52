"""``resilient-sync demo``: a web shop syncs to a misbehaving POS, end to end.

It starts the simulated POS on 127.0.0.1, submits a few hundred customers and
orders through a real :class:`~resilient_sync.Dispatcher` on the embedded
SQLite store (a demo database it recreates on every run), shows progress,
then what needs a person and the commands that fix it, and applies one fix.

The demo is a *user* of the library: it imports only the public API
(``resilient_sync``, ``resilient_sync.stores``, ``resilient_sync.http``).
The command line is built on top of it: ``resilient-sync demo`` calls
:func:`run_demo` and hands it ``show``, which runs a ``resilient-sync``
command against the demo's queue, so that what the demo shows is what that
command prints.
"""

from __future__ import annotations

import contextlib
import logging
import queue as queue_module
import re
import shlex
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import attrs

from resilient_sync import (
    DeliveryStatus,
    Dispatcher,
    DispatchEvent,
    ErrorCategory,
    Operator,
    QueueStore,
    RetryPolicy,
)
from resilient_sync.stores import open_stores

from ._destination import PosDestination, TokenHolder
from ._pos import Misbehaviour, SimulatedPos
from ._shop import CATALOGUE, Shop, make_shop

__all__ = [
    "DEMO_FILE",
    "DemoError",
    "DemoResult",
    "DemoSettings",
    "KeyValueFormatter",
    "prepare",
    "run_demo",
]

#: The demo's database file (relative to the working directory) by default.
DEMO_FILE = "resilient-sync-demo.db"
#: A source cursor that marks a database the demo created (and may recreate).
DEMO_MARK = "resilient-sync-demo"
_TIME_LIMIT = 50.0

#: Runs one ``resilient-sync`` command (its arguments after ``--db URL``)
#: against the demo's queue, printing what it prints.
Show = Callable[[Sequence[str]], None]


class DemoError(Exception):
    """The demo cannot run (e.g. its database file belongs to something else)."""


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with the dispatcher's fields."""

    FIELDS = ("delivery_id", "event_id", "destination", "attempt", "status", "category")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        pairs = [
            f"{name}={getattr(record, name)}"
            for name in self.FIELDS
            if getattr(record, name, None) is not None
        ]
        return f"{base} {' '.join(pairs)}".rstrip()


@attrs.frozen(kw_only=True)
class DemoResult:
    """What the demo did (its tests read it)."""

    succeeded: int
    needs_action: int
    waiting: int
    total: int
    duplicate_effects: int
    seconds: float
    fixed: bool

    @property
    def broken_promise(self) -> bool:
        """True when an effect was applied twice or a delivery is unaccounted for."""
        return bool(self.duplicate_effects) or (
            self.succeeded + self.needs_action + self.waiting != self.total
        )


@attrs.frozen(kw_only=True)
class DemoSettings:
    """How big a demo, and whether it applies the example fix at the end.

    :meth:`create` picks the sizes (smaller with ``quick``) and checks them.
    """

    customers: int
    orders: int
    seed: int = 7
    quick: bool = False
    fix: bool = True

    @classmethod
    def create(
        cls,
        *,
        quick: bool = False,
        customers: int | None = None,
        orders: int | None = None,
        seed: int = 7,
        fix: bool = True,
    ) -> DemoSettings:
        """Settings with the default sizes; ``ValueError`` for sizes out of range."""
        customers = customers or (40 if quick else 240)
        orders = orders or (24 if quick else 160)
        if customers < 8 or orders < 6:
            raise ValueError("the demo needs --customers 8 or more and --orders 6 or more")
        if customers > 5000 or orders > 5000:
            raise ValueError("the demo is meant to take seconds: use at most 5000 customers/orders")
        return cls(customers=customers, orders=orders, seed=seed, quick=quick, fix=fix)

    @property
    def timeout(self) -> float:
        """The POS client's timeout (a lost response costs this long)."""
        return 0.4 if self.quick else 1.0

    def misbehaviour(self) -> Misbehaviour:
        total = self.customers + self.orders
        return Misbehaviour(
            outage_at=max(10, total // 5),
            outage_seconds=0.6 if self.quick else 1.2,
            lost_responses=frozenset({max(5, total // 9), max(7, total * 3 // 5)}),
            lost_delay=self.timeout + 0.2,
            revoke_at=max(20, total * 11 // 20),
            bucket_capacity=20.0,
            bucket_rate=120.0,
        )


def _url(path: Path) -> str:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` for ``path``."""
    return f"sqlite:///{path}"


def prepare(path: Path) -> None:
    """Remove the previous demo database at ``path`` (only one the demo
    created: a file without the demo's mark is refused with
    :class:`DemoError`, and is opened read-only to find out)."""
    if path.is_dir():
        raise DemoError(f"{str(path)!r} is a directory; give the demo a file name")
    if path.exists():
        try:
            queue, idempotency = open_stores(_url(path), read_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ours": refuse below
            marked = False
            reason = f" ({' '.join(str(exc).split())})"
        else:
            try:
                marked = queue.get_cursor(DEMO_MARK) is not None
                reason = ""
            finally:
                queue.close()
                idempotency.close()
        if not marked:
            raise DemoError(
                f"{str(path)!r} exists and was not created by the demo{reason}; the demo "
                f"recreates its database, so give it another file (e.g. sqlite:///{DEMO_FILE})"
            )
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _demo_log(path: Path) -> Iterator[Path]:
    """Send the library's log records to a file for the demo's duration."""
    log_path = path.with_suffix(".log")
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    lib = logging.getLogger("resilient_sync")
    saved = (lib.level, lib.propagate)
    lib.addHandler(handler)
    lib.setLevel(logging.INFO)
    lib.propagate = False
    try:
        yield log_path
    finally:
        lib.removeHandler(handler)
        handler.close()
        lib.setLevel(saved[0])
        lib.propagate = saved[1]


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class _Screen:
    """Progress on one rewritten line on a terminal, a line a second otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._last = 0.0
        self._status = ""
        try:
            "█·→✔✖".encode(getattr(out, "encoding", None) or "ascii")
            self.unicode = True
        except (UnicodeEncodeError, LookupError):
            self.unicode = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def line(self, text: str = "") -> None:
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        if not self.unicode:
            text = text.encode("ascii", "replace").decode("ascii")
        if self.tty and self._status:
            self.out.write("\r\x1b[2K")
        self.out.write(text + "\n")
        if self.tty and self._status:
            self.out.write(self._status)
        self.out.flush()

    def lines(self, lines: list[str]) -> None:
        for text in lines:
            self.line(text)

    def event(self, text: str) -> None:
        self.line(f"[{self.elapsed:5.1f}s] {text}")

    def progress(self, text: str, *, force: bool = False) -> None:
        now = self.elapsed
        status = f"[{now:5.1f}s] {text}"
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            status = status if len(status) <= width else status[: width - 1] + "…"
            self._status = status
            self.out.write("\r\x1b[2K" + status)
            self.out.flush()
        elif force or now - self._last >= 1.0:
            self._last = now
            self.line(status)

    def done(self) -> None:
        if self.tty and self._status:
            self.out.write("\n")
            self._status = ""
            self.out.flush()


def _counts(queue: QueueStore) -> dict[DeliveryStatus, int]:
    return queue.stats().by_status


def _progress_text(
    counts: dict[DeliveryStatus, int], submitted: int, total: int, pos: SimulatedPos
) -> str:
    codes = pos.stats.by_status
    errors = " ".join(f"{c}x{n}" for c, n in sorted(codes.items()) if c >= 400)
    return (
        f"submitted {submitted}/{total} · delivered {counts.get(DeliveryStatus.SUCCEEDED, 0)} · "
        f"retrying {counts.get(DeliveryStatus.RETRY_SCHEDULED, 0)} · "
        f"need action {counts.get(DeliveryStatus.NEEDS_ACTION, 0)} · "
        f"POS requests {pos.stats.requests}" + (f" ({errors})" if errors else "")
    )


def run_demo(
    settings: DemoSettings,
    path: Path,
    *,
    out: TextIO,
    show: Show,
    command: str = "resilient-sync",
) -> DemoResult:
    """Run the demo on the SQLite file ``path`` (recreated: see :func:`prepare`).

    ``command`` is how the reader runs the command line (printed in front of
    every command shown); ``show(args)`` runs one of them against the demo's
    queue. Returns what happened; a result whose ``broken_promise`` is true
    means a bug worth reporting.
    """
    prepare(path)
    with _demo_log(path) as log_path:
        return _run(settings, path, log_path, out, show, command)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _run(
    settings: DemoSettings, path: Path, log_path: Path, out: TextIO, show: Show, command: str
) -> DemoResult:
    screen = _Screen(out)
    url = _url(path)
    prefix = f"{command} --db {shlex.quote(url)}"
    shop = make_shop(settings.customers, settings.orders, settings.seed)
    pos = SimulatedPos(
        catalogue=CATALOGUE,
        existing_customers=shop.existing_customers,
        existing_orders=shop.existing_orders,
        misbehaviour=settings.misbehaviour(),
        seed=settings.seed,
    )
    base_url = pos.start()
    queue, idempotency = open_stores(url)
    auth = TokenHolder(pos.token)
    destination = PosDestination(base_url, auth, timeout=settings.timeout)
    events: queue_module.SimpleQueue[DispatchEvent] = queue_module.SimpleQueue()
    try:
        queue.enqueue([], cursor=(DEMO_MARK, "1"))
        dispatcher = Dispatcher(
            queue,
            idempotency,
            [destination],
            retry=RetryPolicy(
                max_attempts=10, initial_delay=0.1, multiplier=2.0, max_delay=1.0, deadline=60.0
            ),
            batch_size=40,
            concurrency=8,
            lease=30.0,
            on_event=events.put,
        )
        operator = Operator(queue)
        try:
            _intro(screen, shop, base_url, url, log_path)
            _sync(screen, shop, dispatcher, operator, pos, auth, events, prefix)
            result = _report(
                screen, settings, shop, dispatcher, operator, pos, prefix, log_path, show
            )
        finally:
            dispatcher.close()
    finally:
        screen.done()
        destination.close()
        pos.stop()
        queue.close()
        idempotency.close()
    return attrs.evolve(result, seconds=screen.elapsed)


def _intro(screen: _Screen, shop: Shop, base_url: str, url: str, log_path: Path) -> None:
    c = shop.counts
    screen.lines(
        [
            "resilient_sync demo: a web shop registers customers and orders in its POS.",
            f"  simulated POS  {base_url}  (a real HTTP server in this process)",
            f"  queue          {url}  (SQLite, recreated on every run)",
            f"  log            {log_path}",
            "",
            (
                f"The shop sends {c['customers']} new customers and {c['orders']} orders. "
                "The data has the usual flaws:"
            ),
            (
                f"  {_n(c['already_in_pos'], 'customer already exists', 'customers already exist')}"
                f" in the POS ({c['ambiguous']} of them twice), "
                f"{_n(c['phones_repairable'], 'phone number', 'phone numbers')} typed the local "
                f"way, {_n(c['phones_broken'], 'is', 'are')} not a phone number at all,"
            ),
            (
                f"  {_n(c['unknown_sku_orders'], 'order', 'orders')} with an SKU the POS does not "
                f"sell, {_n(c['orders_entered_by_hand'], 'order', 'orders')} already entered in "
                "the POS by hand."
            ),
            (
                "And the POS misbehaves: an outage (503), rate limits (429 + Retry-After), "
                "responses lost after the effect, a revoked token (401)."
            ),
            "",
        ]
    )


def _sync(
    screen: _Screen,
    shop: Shop,
    dispatcher: Dispatcher,
    operator: Operator,
    pos: SimulatedPos,
    auth: TokenHolder,
    events: queue_module.SimpleQueue[DispatchEvent],
    prefix: str,
) -> None:
    todo = list(shop.events)
    total = len(todo)
    submitted = 0
    seen: dict[str, float] = {"rate_limited": 0, "circuit_open": 0}
    outage_told = lost_told = 0
    deadline = time.monotonic() + _TIME_LIMIT
    while True:
        if todo:
            chunk, todo = todo[:20], todo[20:]
            dispatcher.submit_many(chunk)
            submitted += len(chunk)
        report = dispatcher.run_once()
        stats = pos.stats
        if stats.outage_started is not None and not outage_told:
            outage_told = 1
            screen.event("POS: outage begins, every request gets 503 Service Unavailable")
        if stats.outage_ended is not None and outage_told == 1:
            outage_told = 2
            seconds = stats.outage_ended - (stats.outage_started or stats.outage_ended)
            screen.event(f"POS: back up after {seconds:.1f}s")
        if stats.lost_responses > lost_told:
            lost_told = stats.lost_responses
            screen.event(
                "POS: applied a request but the answer never arrived (client timeout); the "
                "retry carries the same Idempotency-Key"
            )
        _tell_events(screen, events, seen, operator, pos, auth, prefix)
        counts = _counts(dispatcher.queue)
        screen.progress(_progress_text(counts, submitted, total, pos))
        if not todo and report.idle:
            state = dispatcher.queue.destinations().get("pos")
            held = state is not None and (
                state.paused or (state.hold_until is not None and state.hold_until > _now())
            )
            busy = counts.get(DeliveryStatus.RETRY_SCHEDULED, 0) + counts.get(
                DeliveryStatus.IN_FLIGHT, 0
            )
            if not busy and not held:
                break
            time.sleep(0.02)
        if time.monotonic() > deadline:
            screen.event(f"stopping after {_TIME_LIMIT:.0f}s; the rest stays queued")
            break
    screen.progress(_progress_text(_counts(dispatcher.queue), submitted, total, pos), force=True)
    screen.done()
    if seen["rate_limited"] > 1:
        screen.event(
            f"rate limited {seen['rate_limited']:.0f} times in all; each time the whole "
            "destination waited for Retry-After"
        )


def _tell_events(
    screen: _Screen,
    events: queue_module.SimpleQueue[DispatchEvent],
    seen: dict[str, float],
    operator: Operator,
    pos: SimulatedPos,
    auth: TokenHolder,
    prefix: str,
) -> None:
    paused = False
    while True:
        try:
            event = events.get_nowait()
        except queue_module.Empty:
            break
        if event.kind == "circuit_open":
            seen["circuit_open"] += 1
            if screen.elapsed - seen.get("circuit_told_at", -9.0) > 1.0:
                seen["circuit_told_at"] = int(screen.elapsed * 1000) / 1000
                screen.event(
                    f"circuit open for {event.destination} after 5 transient failures in a row: "
                    "deliveries wait, then one probe goes through"
                )
        elif event.kind == "rate_limited":
            seen["rate_limited"] += 1
            if seen["rate_limited"] == 1:
                screen.event(
                    f"{event.destination} answered 429 Too Many Requests: the whole destination "
                    "waits for Retry-After, then goes on"
                )
        elif event.kind == "paused":
            if not paused:
                screen.event(f"{event.destination} PAUSED: {_short(event.reason)}")
            paused = True
    if paused:
        auth.token = pos.issue_new_token()
        operator.resume("pos", actor="demo-admin", note="the POS admin issued a new access token")
        moved = operator.retry_all(
            category=ErrorCategory.PERMISSION,
            destination="pos",
            actor="demo-admin",
            note="re-sync after the new token",
        )
        screen.event("the POS admin issues a new token; the operator runs:")
        screen.line(f"          $ {prefix} resume pos")
        screen.line(
            f"          $ {prefix} retry-all --category permission --destination pos"
            f"   # {len(moved)} re-synced"
        )


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _short(text: str | None, width: int = 110) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _report(
    screen: _Screen,
    settings: DemoSettings,
    shop: Shop,
    dispatcher: Dispatcher,
    operator: Operator,
    pos: SimulatedPos,
    prefix: str,
    log_path: Path,
    show: Show,
) -> DemoResult:
    stats = operator.stats()
    counts = stats.by_status
    total = stats.total
    duplicate_effects = sum(n - 1 for n in pos.stats.effects_per_key.values() if n > 1)
    s = pos.stats
    screen.lines(
        [
            "",
            (
                f"Done in {screen.elapsed:.1f}s: {total} deliveries, "
                f"{counts.get(DeliveryStatus.SUCCEEDED, 0)} delivered, "
                f"{counts.get(DeliveryStatus.NEEDS_ACTION, 0)} need a person, "
                f"{counts.get(DeliveryStatus.PENDING, 0)} wait behind those."
            ),
            f"  The POS answered {s.requests} requests: "
            + ", ".join(f"{n}x HTTP {c}" for c, n in sorted(s.by_status.items())),
            (
                f"  No duplicates: {s.customers_created} customers and {s.orders_created} orders "
                f"created, each once ({duplicate_effects} applied twice); {s.replayed} "
                f"retr{'y was' if s.replayed == 1 else 'ies were'} answered from the POS's "
                "idempotency cache."
            ),
        ]
    )
    since = f"{int(screen.elapsed) + 2}s"
    for args in (
        ["status"],
        ["trend", "--bucket", "1s", "--since", since],
        ["list", "--status", "needs_action"],
    ):
        screen.lines(["", f"$ {prefix} {shlex.join(args)}"])
        show(args)
    needing = list(operator.list(status="needs_action", limit=100))
    screen.lines(["", "What to do about each (the runbook: docs/howto/operate-the-queue.md):"])
    for delivery in needing:
        screen.lines(_advice(delivery, shop, pos, prefix))
    fixed = False
    if settings.fix:
        fixed = _fix_one(screen, needing, shop, dispatcher, operator, prefix)
    final = operator.stats().by_status
    example = needing[0].id if needing else None
    screen.lines(
        [
            "",
            "Explore it yourself:",
            f"  {prefix} status",
            f"  {prefix} list --status needs_action",
            *([f"  {prefix} show {example}"] if example else []),
            f"  {prefix} recent",
            f"  less {shlex.quote(str(log_path))}   # the library's log, one line per outcome",
            "Re-run the demo at any time: it recreates its database.",
        ]
    )
    return DemoResult(
        succeeded=final.get(DeliveryStatus.SUCCEEDED, 0),
        needs_action=final.get(DeliveryStatus.NEEDS_ACTION, 0),
        waiting=final.get(DeliveryStatus.PENDING, 0),
        total=total,
        duplicate_effects=duplicate_effects,
        seconds=screen.elapsed,
        fixed=fixed,
    )


def _advice(delivery: Any, shop: Shop, pos: SimulatedPos, prefix: str) -> list[str]:
    error = delivery.last_error
    event = delivery.event
    assert error is not None  # noqa: S101 - NEEDS_ACTION always has an error
    field = error.field or ""
    head = f"  {event.id} ({error.category.value}{', ' + field if field else ''}): "
    if error.category is ErrorCategory.DATA_FORMAT and field == "phone":
        phone = shop.true_phones.get(event.id, "+316XXXXXXXX")
        return [
            head + f"the POS rejects phone {event.payload.get('phone')!r}; ask the customer, then",
            f"      $ {prefix} edit {delivery.id} --set {shlex.quote('phone=' + phone)} --retry",
        ]
    if error.category is ErrorCategory.DUPLICATE:
        email = event.payload.get("email", "")
        ids = [c["id"] for c in pos.customers.values() if c.get("email") == email]
        first = ids[0] if ids else "?"
        return [
            head + f"the POS already has {len(ids)} customers with {email} "
            f"({', '.join(ids)}); pick one (or merge them in the POS), then",
            (
                f"      $ {prefix} resolve {delivery.id} "
                f"--note {shlex.quote('same customer as ' + first)}"
            ),
        ]
    if error.category is ErrorCategory.MAPPING:
        sku = _sku_at(event.payload, field)
        return [
            head + f"the POS does not sell {sku!r}; add it to the POS catalogue and",
            f"      $ {prefix} retry {delivery.id}",
            (
                f"    or sell a known SKU instead: $ {prefix} edit {delivery.id} "
                f"--set {shlex.quote(field + '=TEE-L-BLACK')} --retry"
            ),
        ]
    return [
        head + _short(error.message, 90),
        f"      $ {prefix} show {delivery.id}",
    ]


def _sku_at(payload: Any, field: str) -> Any:
    try:
        index = int(field.split("[", 1)[1].split("]", 1)[0])
        return payload["lines"][index]["sku"]
    except (IndexError, ValueError, KeyError, TypeError):
        return "?"


def _fix_one(
    screen: _Screen,
    needing: list[Any],
    shop: Shop,
    dispatcher: Dispatcher,
    operator: Operator,
    prefix: str,
) -> bool:
    target = next(
        (
            d
            for d in needing
            if d.last_error is not None
            and d.last_error.category is ErrorCategory.DATA_FORMAT
            and d.last_error.field == "phone"
            and d.event.id in shop.true_phones
        ),
        None,
    )
    if target is None:
        return False
    phone = shop.true_phones[target.event.id]
    waiting = [
        d
        for d in operator.list(status="pending", limit=500)
        if d.event.ordering_key == target.event.ordering_key
    ]
    screen.lines(
        [
            "",
            f"The demo fixes the first one itself (the customer gave {phone} on the phone):",
            f"$ {prefix} edit {target.id} --set {shlex.quote('phone=' + phone)} --retry",
        ]
    )
    edited = operator.edit(target.id, {"phone": phone}, retry=True, actor="demo-operator")
    screen.lines(
        [
            (
                f"Edited {edited.id}: payload.phone {target.event.payload.get('phone')!r} -> "
                f"{phone!r}; new idempotency key {edited.idempotency_key}"
            ),
        ]
    )
    for _ in range(50):
        if dispatcher.run_until_idle().idle:
            after = operator.get(target.id)
            if after.status is not DeliveryStatus.PENDING:
                break
        time.sleep(0.05)
    after = operator.get(target.id)
    lines = [f"  {target.event.id}: {after.status.value}, POS id {_pos_id(after.result)}"]
    for d in waiting:
        current = operator.get(d.id)
        lines.append(
            f"  {d.event.id} (waited behind it, same ordering key): {current.status.value}, "
            f"POS id {_pos_id(current.result)}"
        )
    screen.lines(lines)
    return after.status is DeliveryStatus.SUCCEEDED


def _pos_id(result: Any) -> str:
    return str(result.get("pos_id")) if isinstance(result, dict) else "-"

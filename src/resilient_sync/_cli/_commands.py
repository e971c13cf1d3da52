"""The ``resilient-sync`` commands that work on a queue, each a function of a :class:`Ctx`.

Commands raise :class:`CliError` for anything the user must be told; they
never print tracebacks. Everything goes through :class:`~resilient_sync.Operator`.
Every text that came from outside (ids, names, payloads, reasons, notes)
is escaped for the terminal on its way out (``_text.for_terminal``, and
:func:`~._render.terminal_json` for ``--json``), rows written before the
gate existed included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from types import FrameType
from typing import Any, TextIO

import attrs

from .._edit import parse_path
from .._model import Delivery, DeliveryStatus, ErrorCategory, Page
from .._operator import DISCARDABLE, RESOLVABLE, RETRYABLE_BY_OPERATOR, Operator
from .._protocols import IdempotencyStore
from .._text import for_terminal
from .._waiting import WAITING, waiting_for
from ..stores._common import MAX_PAGE, decode_cursor, encode_cursor
from . import _render as render
from ._args import (
    EXIT_ATTENTION,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    parse_assignment,
    parse_category,
    parse_duration,
    parse_since,
    parse_statuses,
    usage,
)
from ._ids import ShortIds, resolve

__all__ = ["COMMANDS", "READ_COMMANDS", "Ctx", "terminal_width"]

_CHUNK = 500


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def terminal_width(stream: TextIO) -> int | None:
    """The width to fit: ``$COLUMNS`` when set (also when piped), else the
    terminal's; None (no limit) when the output is not a terminal."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if not _isatty(stream):
        return None
    return shutil.get_terminal_size((120, 24)).columns


@attrs.define
class Ctx:
    """What a command works with."""

    operator: Operator
    idempotency: IdempotencyStore
    args: argparse.Namespace
    db: str
    actor: str
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr

    @property
    def now(self) -> datetime:
        return self.operator.clock.now()

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def width(self) -> int | None:
        return terminal_width(self.out)

    @property
    def unicode(self) -> bool:
        encoding = getattr(self.out, "encoding", None) or "ascii"
        try:
            "█▁·→…".encode(encoding)
        except (UnicodeEncodeError, LookupError):
            return False
        return True

    def lines(self, lines: Sequence[str]) -> None:
        # the renderers escape outside text already; this is the last gate
        text = "\n".join(for_terminal(line) for line in lines)
        if not self.unicode:
            text = text.encode("ascii", "replace").decode("ascii")
        print(text, file=self.out)

    def dump(self, value: Any) -> None:
        self.out.write(render.terminal_json(value) + "\n")

    def note(self, message: str) -> None:
        print(for_terminal(message), file=self.err)

    def resolve(self, text: str) -> Delivery:
        """The delivery named by an id or a unique prefix of one."""
        return resolve(self.operator.queue, text, where=self.db)

    def short(self, ids: Sequence[str]) -> ShortIds:
        """Shortest unique prefixes for these ids (for tables)."""
        return ShortIds(self.operator.queue, ids)


# -- reading ---------------------------------------------------------------


def cmd_status(ctx: Ctx) -> int:
    stats = ctx.operator.stats()
    now = ctx.now
    paused = any(s.paused for s in stats.destinations.values())
    needing = stats.by_status.get(DeliveryStatus.NEEDS_ACTION, 0)
    if ctx.json:
        ctx.dump(render.stats_json(stats, now))
    else:
        ctx.lines(render.render_status(stats, now, db=ctx.db, max_width=ctx.width))
    if ctx.args.check and (needing or paused):
        return EXIT_ATTENTION
    return EXIT_OK


@attrs.frozen
class _Filters:
    statuses: list[DeliveryStatus] | None
    destination: str | None
    category: ErrorCategory | None
    since: datetime | None
    search: str | None


def _filters(ctx: Ctx) -> _Filters:
    args = ctx.args
    search = (args.search or "").strip().lower() or None
    return _Filters(
        statuses=parse_statuses(args.status) if args.status else None,
        destination=args.destination,
        category=parse_category(args.category) if args.category else None,
        since=parse_since(args.since, ctx.now) if args.since else None,
        search=search,
    )


def _matches(delivery: Delivery, needle: str) -> bool:
    error = delivery.last_error
    haystack = [delivery.id, delivery.event.id, delivery.event.type]
    if error is not None:
        haystack.append(error.message)
        if error.field:
            haystack.append(error.field)
    return any(needle in text.lower() for text in haystack)


def _pages(operator: Operator, f: _Filters, cursor: str | None, size: int) -> Iterator[Page]:
    while True:
        try:
            page = operator.list(
                f.statuses, f.destination, f.category, limit=size, cursor=cursor, since=f.since
            )
        except ValueError as exc:  # a malformed --cursor
            raise usage(str(exc)) from exc
        yield page
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _search(operator: Operator, f: _Filters, limit: int, cursor: str | None) -> Page:
    """One page of deliveries matching the filters and the text search."""
    if f.search is None:
        return next(_pages(operator, f, cursor, limit))
    found: list[Delivery] = []
    for page in _pages(operator, f, cursor, max(limit, 200)):
        found.extend(d for d in page.items if _matches(d, f.search))
        if len(found) > limit:
            return Page(items=found[:limit], next_cursor=encode_cursor(found[limit - 1].seq))
    return Page(items=found, next_cursor=None)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise usage(f"--limit must be between 1 and {MAX_PAGE}, got {limit}")


def _describe(f: _Filters) -> str:
    parts = []
    if f.statuses:
        parts.append("status " + ",".join(s.value for s in f.statuses))
    if f.destination:
        parts.append(f"destination {f.destination}")
    if f.category:
        parts.append(f"category {f.category.value}")
    if f.since:
        parts.append(f"updated since {render.fmt_time(f.since)}")
    if f.search:
        parts.append(f"matching {f.search!r}")
    return ", ".join(parts) or "no filter"


def cmd_list(ctx: Ctx) -> int:
    _check_limit(ctx.args.limit)
    try:
        decode_cursor(ctx.args.cursor)
    except ValueError as exc:
        raise usage(f"--cursor: {exc}") from None
    f = _filters(ctx)
    page = _search(ctx.operator, f, ctx.args.limit, ctx.args.cursor)
    if ctx.json:
        ctx.dump(
            {
                "items": [render.delivery_json(d) for d in page.items],
                "next_cursor": page.next_cursor,
            }
        )
        return EXIT_OK
    short = ctx.short([d.id for d in page.items])
    lines = render.render_deliveries(page.items, ctx.now, max_width=ctx.width, short=short)
    if page.next_cursor is not None:
        lines += ["", f"More: add --cursor {page.next_cursor} for the next page."]
    ctx.lines(lines)
    return EXIT_OK


_UNFINISHED = [
    DeliveryStatus.PENDING,
    DeliveryStatus.IN_FLIGHT,
    DeliveryStatus.RETRY_SCHEDULED,
    DeliveryStatus.NEEDS_ACTION,
]


def _blocker(ctx: Ctx, delivery: Delivery) -> Delivery | None:
    """The oldest unfinished delivery ahead of ``delivery`` with the same
    destination and ordering key (which it must wait for), if any."""
    key = delivery.event.ordering_key
    if key is None:
        return None
    cursor: str | None = None
    while True:
        page = ctx.operator.queue.list(
            status=_UNFINISHED,
            destination=delivery.destination,
            search=key,
            limit=200,
            cursor=cursor,
        )
        for other in page.items:
            if other.id == delivery.id or other.seq >= delivery.seq:
                return None
            if other.event.ordering_key == key:
                return other
        if page.next_cursor is None:
            return None
        cursor = page.next_cursor


def _waiting(ctx: Ctx, delivery: Delivery, short: Callable[[str], str]) -> list[str]:
    """Why a delivery that is not final has not gone yet, in plain words (one
    that needs action says what to do instead, elsewhere on the screen)."""
    if delivery.status.is_final or delivery.status is DeliveryStatus.NEEDS_ACTION:
        return []
    blocker = _blocker(ctx, delivery) if delivery.status in WAITING else None
    return waiting_for(
        delivery,
        now=ctx.now,
        destination=ctx.operator.destinations().get(delivery.destination),
        blocker=blocker,
        name=short,
        commands=True,
    )


def cmd_show(ctx: Ctx) -> int:
    delivery = ctx.resolve(ctx.args.id)
    records = ctx.operator.attempts(delivery.id)
    if ctx.json:
        ctx.dump(
            {
                "delivery": render.delivery_json(delivery),
                "attempts": [render.attempt_json(r) for r in records],
            }
        )
        return EXIT_OK
    short = ctx.short([delivery.id])
    db = ctx.db if ctx.args.db else None  # repeat an explicit --db in the commands
    ctx.lines(
        render.render_delivery(
            delivery,
            records,
            ctx.now,
            db=db,
            max_width=ctx.width,
            waiting=_waiting(ctx, delivery, short),
            short=short,
        )
    )
    return EXIT_OK


def cmd_attempts(ctx: Ctx) -> int:
    delivery = ctx.resolve(ctx.args.id)
    records = ctx.operator.attempts(delivery.id)
    if ctx.json:
        ctx.dump(
            {"delivery_id": delivery.id, "attempts": [render.attempt_json(r) for r in records]}
        )
    else:
        ctx.lines(render.render_attempts(records, max_width=ctx.width))
    return EXIT_OK


def cmd_trend(ctx: Ctx) -> int:
    width = parse_duration(ctx.args.bucket, "--bucket")
    since = parse_since(ctx.args.since, ctx.now) if ctx.args.since else None
    if since is not None and (ctx.now - since) / width > 10_000:
        raise usage(
            f"--since {ctx.args.since} with --bucket {ctx.args.bucket} makes more than "
            "10000 buckets; use a wider --bucket"
        )
    if since is not None and since >= ctx.now:
        raise usage(f"--since {ctx.args.since} is not in the past")
    buckets = ctx.operator.error_trend(bucket=width, since=since)
    if ctx.json:
        ctx.dump(render.trend_json(buckets, width))
    else:
        ctx.lines(
            render.render_trend(
                buckets,
                width,
                unicode=ctx.unicode and not ctx.args.ascii,
                max_width=ctx.width,
            )
        )
    return EXIT_OK


def cmd_recent(ctx: Ctx) -> int:
    _check_limit(ctx.args.limit)
    records = ctx.operator.recent_errors(limit=ctx.args.limit)
    if ctx.json:
        ctx.dump({"errors": [render.attempt_json(r) for r in records]})
    else:
        short = ctx.short([r.delivery_id for r in records if r.delivery_id])
        ctx.lines(render.render_recent(records, ctx.now, max_width=ctx.width, short=short))
    return EXIT_OK


# -- acting ------------------------------------------------------------------


def _existing(ctx: Ctx, ids: Sequence[str]) -> dict[str, Delivery]:
    """Every id must exist before anything changes (all-or-nothing)."""
    found = {}
    for text in dict.fromkeys(ids):
        delivery = ctx.resolve(text)
        found[delivery.id] = delivery
    return found


def _report_action(
    ctx: Ctx,
    action: str,
    before: dict[str, Delivery],
    moved: Sequence[str],
    allowed: Sequence[DeliveryStatus],
    past: str,
) -> int:
    skipped = [d for i, d in before.items() if i not in set(moved)]
    if ctx.json:
        ctx.dump(
            {
                "action": action,
                "changed": list(moved),
                "skipped": [{"id": d.id, "status": d.status.value} for d in skipped],
            }
        )
    else:
        noun = "delivery" if len(moved) == 1 else "deliveries"
        ctx.lines([f"{past} {len(moved)} {noun}" + (": " + " ".join(moved) if moved else "")])
    if skipped:
        names = ", ".join(sorted(s.value for s in allowed))
        for d in skipped:
            ctx.note(
                f"skipped {d.id}: it is {d.status.value}; {action} applies to {names} deliveries"
            )
        return EXIT_FAILURE
    return EXIT_OK


def cmd_retry(ctx: Ctx) -> int:
    before = _existing(ctx, ctx.args.ids)
    moved = ctx.operator.retry(list(before), actor=ctx.actor, note=ctx.args.note)
    return _report_action(ctx, "retry", before, moved, sorted(RETRYABLE_BY_OPERATOR), "Re-synced")


def cmd_resolve(ctx: Ctx) -> int:
    before = _existing(ctx, ctx.args.ids)
    moved = ctx.operator.resolve(list(before), note=ctx.args.note, actor=ctx.actor)
    return _report_action(ctx, "resolve", before, moved, sorted(RESOLVABLE), "Resolved")


def cmd_discard(ctx: Ctx) -> int:
    before = _existing(ctx, ctx.args.ids)
    moved = ctx.operator.discard(list(before), note=ctx.args.note, actor=ctx.actor)
    return _report_action(ctx, "discard", before, moved, sorted(DISCARDABLE), "Discarded")


def _progress(ctx: Ctx, label: str, done: int, total: int | None, what: str) -> None:
    """``label: 500/2000 what`` on stderr (one rewritten line on a terminal)."""
    count = f"{done}/{total}" if total is not None else f"{done}"
    if _isatty(ctx.err):
        if total:
            filled = int(30 * done / total)
            text = f"\r{label} [{'#' * filled}{'-' * (30 - filled)}] {count} {what}"
        else:
            text = f"\r{label}: {count} {what}"
        end = "\n" if total is not None and done >= total else ""
        ctx.err.write(text + end)
        ctx.err.flush()
    else:
        ctx.note(f"{label}: {count} {what}")


def _interrupted(ctx: Ctx, message: str) -> int:
    if _isatty(ctx.err):
        ctx.err.write("\n")
    ctx.note(f"resilient-sync: interrupted: {message}")
    return EXIT_INTERRUPTED


class _Stop(Exception):
    """Raised from a progress callback after a Ctrl-C (between two batches)."""


class _CtrlC:
    """The first Ctrl-C (SIGINT) asks a batched command to stop after the
    batch it is in, so that what it reports done is exactly what was done;
    a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._saved: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._saved = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._saved is not None:
            signal.signal(signal.SIGINT, self._saved)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise _Stop


def cmd_retry_all(ctx: Ctx) -> int:
    f = _filters(ctx)
    statuses = f.statuses or [DeliveryStatus.NEEDS_ACTION]
    wrong = [s for s in statuses if s not in RETRYABLE_BY_OPERATOR]
    if wrong:
        allowed = ", ".join(sorted(s.value for s in RETRYABLE_BY_OPERATOR))
        raise usage(
            f"retry-all cannot retry {', '.join(s.value for s in wrong)} deliveries; "
            f"--status takes {allowed}"
        )
    f = attrs.evolve(f, statuses=statuses)
    ids: list[str] = []
    for page in _pages(ctx.operator, f, None, _CHUNK):
        items = page.items if f.search is None else [d for d in page if _matches(d, f.search)]
        ids.extend(d.id for d in items)
    scope = _describe(f)
    if ctx.args.dry_run:
        if ctx.json:
            ctx.dump({"action": "retry-all", "dry_run": True, "matched": len(ids), "ids": ids})
        else:
            ctx.lines([f"Would re-sync {len(ids)} deliveries ({scope}); nothing was changed."])
        return EXIT_OK
    moved: list[str] = []
    show_progress = len(ids) > _CHUNK
    with _CtrlC() as ctrl_c:
        try:
            for start in range(0, len(ids), _CHUNK):
                ctrl_c.check()
                chunk = ids[start : start + _CHUNK]
                moved.extend(ctx.operator.retry(chunk, actor=ctx.actor, note=ctx.args.note))
                if show_progress:
                    done = min(start + _CHUNK, len(ids))
                    _progress(ctx, "retry-all", done, len(ids), "re-synced")
        except (_Stop, KeyboardInterrupt):
            return _interrupted(
                ctx,
                f"re-synced {len(moved)} of {len(ids)} matching deliveries ({scope}); each "
                f"batch of {_CHUNK} is one transaction, so none is half-done. Run the same "
                "command again to re-sync the rest (those re-synced no longer match).",
            )
    if ctx.json:
        ctx.dump({"action": "retry-all", "dry_run": False, "matched": len(ids), "changed": moved})
    else:
        ctx.lines([f"Re-synced {len(moved)} of {len(ids)} matching deliveries ({scope})."])
    if len(moved) < len(ids):
        ctx.note(
            f"{len(ids) - len(moved)} deliveries changed state meanwhile (another worker or "
            "operator) and were left alone"
        )
    return EXIT_OK


def _known_destinations(ctx: Ctx) -> set[str]:
    stats = ctx.operator.stats()
    return set(stats.by_destination) | set(stats.destinations)


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def cmd_pause(ctx: Ctx) -> int:
    name = ctx.args.destination
    known = _known_destinations(ctx)
    if name not in known and not ctx.args.force:
        raise CliError(
            f"unknown destination {name!r} in {ctx.db} (known: {_names(known)}); "
            "pass --force to pause it before anything was sent to it"
        )
    state = ctx.operator.pause(name, note=ctx.args.note, actor=ctx.actor)
    if ctx.json:
        ctx.dump({"action": "pause", "destination": name, "paused": state.paused})
    else:
        ctx.lines(
            [f"Paused {name}: {state.paused_reason}", f"  resume: resilient-sync resume {name}"]
        )
    return EXIT_OK


def cmd_resume(ctx: Ctx) -> int:
    name = ctx.args.destination
    known = _known_destinations(ctx)
    if name not in known:
        raise CliError(f"unknown destination {name!r} in {ctx.db} (known: {_names(known)})")
    current = ctx.operator.destinations().get(name)
    if current is None or not current.paused:
        if ctx.json:
            ctx.dump({"action": "resume", "destination": name, "paused": False, "changed": False})
        else:
            ctx.lines([f"{name} is not paused; nothing to do."])
        return EXIT_OK
    ctx.operator.resume(name, actor=ctx.actor, note=ctx.args.note)
    stats = ctx.operator.stats()
    waiting = stats.needs_action.get(name, {}).get(ErrorCategory.PERMISSION, 0)
    if ctx.json:
        ctx.dump({"action": "resume", "destination": name, "paused": False, "changed": True})
    else:
        lines = [f"Resumed {name} (was paused: {current.paused_reason})."]
        if waiting:
            lines.append(
                f"  {waiting} deliveries failed with the permission error; re-sync them: "
                f"resilient-sync retry-all --category permission --destination {name}"
            )
        ctx.lines(lines)
    return EXIT_OK


def _touches(paths: Sequence[str], field: str) -> bool:
    """Does an edit of ``paths`` change ``field`` (or something inside or around it)?"""
    try:
        target = parse_path(field)
    except ValueError:
        return True  # a field we cannot read: no warning
    for path in paths:
        try:
            parts = parse_path(path)
        except ValueError:
            continue
        n = min(len(parts), len(target))
        if parts[:n] == target[:n]:
            return True
    return False


def cmd_edit(ctx: Ctx) -> int:
    args = ctx.args
    if not args.assignments and not args.additions and not args.unset:
        raise usage("edit needs at least one --set PATH=VALUE, --add PATH=VALUE or --unset PATH")
    changes = dict(parse_assignment(text) for text in args.assignments)
    additions = dict(parse_assignment(text, "--add") for text in args.additions)
    current = ctx.resolve(args.id)
    try:
        delivery = ctx.operator.edit(
            current.id,
            changes,
            add=additions,
            remove=args.unset,
            actor=ctx.actor,
            note=args.note,
            retry=args.retry,
            force=args.force,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    record = ctx.operator.attempts(delivery.id)[-1]
    details = dict(record.details)
    error = current.last_error
    edited = [*changes, *additions, *args.unset]
    if (
        error is not None
        and error.category is ErrorCategory.DATA_FORMAT
        and error.field
        and not _touches(edited, error.field)
    ):
        ctx.note(
            f"warning: {current.destination} rejected the field {error.field!r} "
            f"({' '.join(error.message.split())[:120]}), and this edit does not change it; "
            "it will likely be rejected again"
        )
    if ctx.json:
        ctx.dump(
            {
                "action": "edit",
                "delivery": render.delivery_json(delivery),
                "changed": details.get("changed", []),
                "before": details.get("before", {}),
                "after": details.get("after", {}),
                "idempotency_key": details.get("idempotency_key"),
            }
        )
        return EXIT_OK
    lines = [f"Edited {delivery.id} ({delivery.event.type} {delivery.event.id}):"]
    before = details.get("before", {})
    added = set(details.get("added") or ())
    removed = set(details.get("removed") or ())
    for path, value in details.get("after", {}).items():
        old = "(new)" if path in added else render.terminal_json(before.get(path), indent=None)
        new = "(removed)" if path in removed else render.terminal_json(value, indent=None)
        lines.append(f"  {path}: {old} -> {new}")
    keys = details.get("idempotency_key") or {}
    lines.append(f"  idempotency key: {keys.get('before')} -> {keys.get('after')}")
    if args.retry:
        lines.append("Re-synced: the next worker run delivers the corrected payload.")
    else:
        lines.append(
            f"It stays {delivery.status.value}; re-sync it with: resilient-sync retry {delivery.id}"
        )
    ctx.lines(lines)
    return EXIT_OK


def cmd_purge(ctx: Ctx) -> int:
    args = ctx.args
    age = parse_duration(args.older_than, "--older-than")
    if args.batch < 1:
        raise usage(f"--batch must be 1 or more, got {args.batch}")
    deleted = [0]
    ctrl_c = _CtrlC()

    def progress(done: int) -> None:
        deleted[0] = done
        _progress(ctx, "purge", done, None, "finished deliveries deleted")
        ctrl_c.check()

    try:
        with ctrl_c:
            report = ctx.operator.purge(
                age,
                idempotency=ctx.idempotency,
                batch=args.batch,
                dry_run=args.dry_run,
                actor=ctx.actor,
                progress=None if args.dry_run else progress,
            )
    except (_Stop, KeyboardInterrupt):
        return _interrupted(
            ctx,
            f"deleted {deleted[0]} finished deliveries older than {args.older_than} so far; "
            f"each batch of {args.batch} is one transaction, so none is half-done. Run the "
            "same command again to delete the rest.",
        )
    if _isatty(ctx.err) and not args.dry_run:
        ctx.err.write("\n")
    before = render.fmt_time(report.before)
    if ctx.json:
        ctx.dump(
            {
                "action": "purge",
                "dry_run": report.dry_run,
                "before": report.before.isoformat(),
                "deliveries": report.deliveries,
                "idempotency_keys": None if report.dry_run else report.idempotency_keys,
            }
        )
    elif report.dry_run:
        ctx.lines(
            [
                (
                    f"Would delete {report.deliveries} finished deliveries (succeeded, "
                    f"resolved, discarded) last changed before {before} (older than "
                    f"{args.older_than}), with their audit records; nothing was changed."
                )
            ]
        )
    else:
        ctx.lines(
            [
                (
                    f"Deleted {report.deliveries} finished deliveries last changed before "
                    f"{before} (older than {args.older_than}) with their audit records, and "
                    f"{report.idempotency_keys} expired idempotency keys."
                )
            ]
        )
    return EXIT_OK


#: Commands that only read: they open the store read-only.
READ_COMMANDS = frozenset({"status", "list", "show", "attempts", "trend", "recent"})


def cmd_admin(ctx: Ctx) -> int:
    try:
        from ..admin import serve  # noqa: PLC0415 - the [admin] extra, only for this command
    except ImportError as exc:
        raise CliError(str(exc)) from exc
    try:
        serve(ctx.operator.queue, host=ctx.args.host, port=ctx.args.port, label=ctx.db, out=ctx.err)
    except ValueError as exc:
        raise usage(str(exc)) from exc
    return EXIT_OK


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "status": cmd_status,
    "list": cmd_list,
    "show": cmd_show,
    "attempts": cmd_attempts,
    "trend": cmd_trend,
    "recent": cmd_recent,
    "retry": cmd_retry,
    "retry-all": cmd_retry_all,
    "resolve": cmd_resolve,
    "discard": cmd_discard,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "edit": cmd_edit,
    "purge": cmd_purge,
    "admin": cmd_admin,
}

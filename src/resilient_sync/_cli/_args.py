"""The ``resilient-sync`` argument parser and the parsers of option values."""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from .._model import DeliveryStatus, ErrorCategory

__all__ = [
    "EXIT_ATTENTION",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "parse_assignment",
    "parse_category",
    "parse_duration",
    "parse_since",
    "parse_statuses",
]

#: The command did what was asked.
EXIT_OK = 0
#: The command failed: unknown id or destination, a store that cannot be opened
#: or read, an action that changed nothing it was asked to change.
EXIT_FAILURE = 1
#: Bad usage: unknown option or command, a malformed value or store URL.
EXIT_USAGE = 2
#: ``status --check``: something needs a person (a delivery needs action or a
#: destination is paused).
EXIT_ATTENTION = 3
#: Interrupted (Ctrl-C); what was done is said on stderr, and running the
#: command again finishes the rest.
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    failed: unknown or ambiguous id, unknown destination, store missing,
       unreadable or unreachable, an action refused or that left some of
       the named deliveries unchanged
  2    usage error: bad option, value or store URL
  3    status --check: deliveries need action or a destination is paused
  130  interrupted (Ctrl-C): stderr says how much was done
"""


class CliError(Exception):
    """A failure reported as one line on stderr with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def usage(message: str) -> CliError:
    """A usage error (exit code 2)."""
    return CliError(message, EXIT_USAGE)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LONGEST = 36_500 * 86_400.0


def parse_duration(text: str, option: str = "duration") -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1w`` (a bare number is seconds)."""
    match = _DURATION.match(text or "")
    if match is None:
        raise usage(f"invalid {option} {text!r}; write it like 90s, 15m, 2h, 1d or 1w")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
    if value <= 0:
        raise usage(f"invalid {option} {text!r}; it must be more than 0")
    if value < 0.001:
        raise usage(f"invalid {option} {text!r}; the shortest is 1ms")
    if value > _LONGEST:
        raise usage(f"invalid {option} {text!r}; the longest is 36500d (100 years)")
    return timedelta(seconds=value)


def parse_since(text: str, now: datetime) -> datetime:
    """A duration ago (``2h``) or a date/time (ISO 8601; UTC when no offset)."""
    if _DURATION.match(text or ""):
        return now - parse_duration(text, "--since")
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise usage(
            f"invalid --since {text!r}; give a duration (30m, 2h, 1d) or a date/time "
            "(2026-11-22 or 2026-11-22T10:30)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when


def _norm(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def parse_statuses(text: str) -> list[DeliveryStatus]:
    """``needs_action`` or ``needs_action,retry_scheduled`` (dashes allowed)."""
    values = {s.value: s for s in DeliveryStatus}
    out = []
    for part in text.split(","):
        if _norm(part) not in values:
            known = ", ".join(values)
            raise usage(f"unknown status {part.strip()!r}; known: {known}")
        out.append(values[_norm(part)])
    return out


def parse_category(text: str) -> ErrorCategory:
    """An :class:`ErrorCategory` value (dashes allowed)."""
    try:
        return ErrorCategory(_norm(text))
    except ValueError:
        known = ", ".join(c.value for c in ErrorCategory)
        raise usage(f"unknown category {text.strip()!r}; known: {known}") from None


def parse_assignment(text: str, option: str = "--set") -> tuple[str, Any]:
    """``path=text`` (the value is a string) or ``path:=json`` (a JSON value)."""
    if "=" not in text:
        raise usage(f"invalid {option} {text!r}; write path=text or path:=json (e.g. qty:=3)")
    cut = text.index("=")
    if cut > 0 and text[cut - 1] == ":":
        path, raw = text[: cut - 1], text[cut + 1 :]
        try:
            value: Any = json.loads(raw)
        except ValueError:
            raise usage(
                f"invalid {option} {text!r}: {raw!r} is not JSON (use path=text for a string)"
            ) from None
    else:
        path, value = text[:cut], text[cut + 1 :]
    if not path.strip():
        raise usage(f"invalid {option} {text!r}: the path before '=' is empty")
    return path.strip(), value


_ID_HELP = "delivery id, or a unique prefix of it (like git's short ids)"
_IDS_HELP = "delivery ids, or unique prefixes of them"

WORKER_EXIT_HELP = """\
exit codes:
  0    stopped cleanly after SIGTERM/SIGINT
  1    cannot import or start the dispatcher, or the shutdown timeout passed
       (deliveries still running are left to their leases)
  2    usage error: bad option or TARGET
  130  a second SIGINT (143: a second SIGTERM): stopped at once
"""


def _common(*, write: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="store URL (default: $RESILIENT_SYNC_DB or sqlite:///resilient-sync.db)",
    )
    parent.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    if write:
        parent.add_argument(
            "--actor",
            default=argparse.SUPPRESS,
            help="who acts, for the audit trail (default: $RESILIENT_SYNC_ACTOR or the OS user)",
        )
    return parent


def _filters(parser: argparse.ArgumentParser, *, default_status: str | None) -> None:
    group = parser.add_argument_group("filters")
    group.add_argument(
        "--status",
        "-s",
        default=default_status,
        metavar="STATUS[,STATUS]",
        help=f"deliveries in these statuses (default: {default_status or 'any'})",
    )
    group.add_argument("--destination", "-d", metavar="NAME", help="one destination")
    group.add_argument("--category", "-c", metavar="CATEGORY", help="last error category")
    group.add_argument(
        "--since", metavar="WHEN", help="updated since: a duration ago (2h) or a date/time"
    )
    group.add_argument(
        "--search",
        "-q",
        metavar="TEXT",
        help="text in the delivery id, event id, event type or error message (any case)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``resilient-sync`` parser."""
    parser = argparse.ArgumentParser(
        prog="resilient-sync",
        description=(
            "Operate a resilient_sync queue: see what needs a person, fix it, re-sync it. "
            "Every action is written to the audit trail."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", default=None, metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--actor", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--verbose",
        "-v",
        action="count",
        default=0,
        help="log to stderr: -v info, -vv debug (default: errors only)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    read = [_common(write=False)]
    write = [_common(write=True)]

    def add(name: str, help_text: str, parents: list[argparse.ArgumentParser]) -> Any:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=parents,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("status", "counts per destination, what needs action, paused destinations", read)
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when deliveries need action or a destination is paused",
    )

    p = add("list", "list deliveries, filtered and paged", read)
    _filters(p, default_status=None)
    p.add_argument("--limit", "-n", type=int, default=50, help="page size (default 50)")
    p.add_argument("--cursor", help="the next-page cursor printed by the previous page")

    p = add("show", "one delivery: its event, last error, what it waits for, every attempt", read)
    p.add_argument("id", help=_ID_HELP)

    p = add("attempts", "the audit trail of one delivery", read)
    p.add_argument("id", help=_ID_HELP)

    p = add("retry", "re-sync deliveries now (fresh retry budget, same idempotency key)", write)
    p.add_argument("ids", nargs="+", metavar="ID", help=_IDS_HELP)
    p.add_argument("--note", help="why, for the audit trail")

    p = add("retry-all", "re-sync every delivery matching the filters", write)
    _filters(p, default_status="needs_action")
    p.add_argument("--dry-run", action="store_true", help="only say how many would be retried")
    p.add_argument("--note", help="why, for the audit trail")

    p = add("resolve", "mark deliveries as handled outside the library (final)", write)
    p.add_argument("ids", nargs="+", metavar="ID", help=_IDS_HELP)
    p.add_argument("--note", help="how it was handled, for the audit trail")

    p = add("discard", "give up on deliveries on purpose (retry revives them)", write)
    p.add_argument("ids", nargs="+", metavar="ID", help=_IDS_HELP)
    p.add_argument("--note", "--reason", dest="note", help="why, for the audit trail")

    p = add("pause", "stop delivering to a destination until it is resumed", write)
    p.add_argument("destination", help="destination name")
    p.add_argument("--note", "--reason", dest="note", help="why, for the audit trail and status")
    p.add_argument("--force", action="store_true", help="pause a destination not seen yet")

    p = add("resume", "deliver to a paused destination again", write)
    p.add_argument("destination", help="destination name")
    p.add_argument("--note", help="what was fixed, for the audit trail")

    p = add(
        "edit",
        "correct a delivery's payload by hand (old and new values are audited)",
        write,
    )
    p.add_argument("id", help=_ID_HELP)
    p.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="PATH=TEXT|PATH:=JSON",
        help="change an existing payload value: phone=+31201234567 (a string) or qty:=3 "
        "(JSON); repeatable",
    )
    p.add_argument(
        "--add",
        dest="additions",
        action="append",
        default=[],
        metavar="PATH=TEXT|PATH:=JSON",
        help="add a payload value that is not there yet (same syntax); repeatable",
    )
    p.add_argument(
        "--unset", action="append", default=[], metavar="PATH", help="remove a payload value"
    )
    p.add_argument("--retry", action="store_true", help="re-sync it at once")
    p.add_argument(
        "--force",
        action="store_true",
        help="edit even though the destination may have applied the original (see the docs)",
    )
    p.add_argument("--note", help="why, for the audit trail")

    p = add("trend", "failed attempts over time by category, as a terminal chart", read)
    p.add_argument("--bucket", default="1h", help="bucket width (default 1h)")
    p.add_argument("--since", help="start (default: 24 buckets ago)")
    p.add_argument("--ascii", action="store_true", help="ASCII characters only")

    p = add("recent", "the latest failed attempts, newest first", read)
    p.add_argument("--limit", "-n", type=int, default=20, help="how many (default 20)")

    p = add("admin", "serve the admin web panel (extra [admin]; sign-in set in the env)", read)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")

    p = add(
        "purge",
        "retention: delete finished deliveries (succeeded, resolved, discarded) and their "
        "audit records after a while, and expired idempotency keys",
        write,
    )
    p.add_argument(
        "--older-than",
        default="30d",
        metavar="AGE",
        help="finished (last changed) more than AGE ago (default 30d)",
    )
    p.add_argument("--dry-run", action="store_true", help="only say how many would be deleted")
    p.add_argument(
        "--batch",
        type=int,
        default=1000,
        metavar="N",
        help="deliveries per transaction (default 1000; workers run on meanwhile)",
    )

    p = sub.add_parser(
        "worker",
        help="run a dispatcher until SIGTERM/SIGINT (module:attribute names it)",
        description=(
            "Run your Dispatcher (or AsyncDispatcher) until SIGTERM or SIGINT. TARGET is "
            "module:attribute, like uvicorn's: the attribute is a dispatcher, or a function "
            "that returns one (a factory). On the first signal the worker stops claiming, "
            "lets the deliveries it started finish (handing back the rest), closes the "
            "dispatcher and its stores and exits 0; a second signal exits at once."
        ),
        epilog=WORKER_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="MODULE:ATTRIBUTE", help="e.g. myapp.sync:dispatcher")
    _app_dir(p)
    p.add_argument(
        "--shutdown-timeout",
        default="30s",
        metavar="SECONDS",
        help="longest wait for started deliveries after the first signal (default 30s)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (default text)",
    )

    p = add(
        "pull",
        "read a Source from its saved cursor and enqueue what is new (once, or --every)",
        write,
    )
    p.add_argument(
        "target", metavar="MODULE:ATTRIBUTE", help="a Source, or a function returning one"
    )
    p.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="NAME",
        help="a destination the events go to (repeatable)",
    )
    p.add_argument(
        "--every", metavar="INTERVAL", help="pull again every INTERVAL (5m) until SIGTERM/SIGINT"
    )
    p.add_argument(
        "--limit", type=int, default=100, help="events per page read from the source (default 100)"
    )
    _app_dir(p)

    p = add(
        "demo",
        "run the demo: a misbehaving POS on 127.0.0.1 and a few hundred shop events",
        read,
    )
    p.add_argument("--quick", action="store_true", help="a short run (CI)")
    p.add_argument("--customers", type=int, help="shop customers to sync")
    p.add_argument("--orders", type=int, help="shop orders to sync")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--no-fix", action="store_true", help="do not apply the example fix at the end")
    return parser


def _app_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="where MODULE is imported from (default: the current directory)",
    )

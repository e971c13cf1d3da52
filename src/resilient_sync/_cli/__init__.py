"""The ``resilient-sync`` command line (also ``python -m resilient_sync``).

Built on :class:`~resilient_sync.Operator`; stdlib ``argparse`` only. See
``docs/reference/cli.md``. Errors are one line on stderr and an exit code
(0 ok, 1 failed, 2 usage, 3 attention, 130 interrupted), never a traceback.

Read commands (``status``, ``list``, ``show``, ``attempts``, ``trend``,
``recent``) open the store read-only: they never create, migrate or write
anything. Operator actions open it read-write, after checking read-only that
it is a queue at the current schema version (so they never migrate or take
over another application's database either). ``worker``, ``pull`` and
``demo`` are programs of their own (``_worker.py``, ``_demo.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from .._errors import StoreError, SyncError
from .._operator import Operator
from .._protocols import IdempotencyStore, QueueStore
from .._redact import redact
from .._text import clean, for_terminal
from .._version import __version__
from ._args import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    build_parser,
    parse_assignment,
    parse_category,
    parse_duration,
    parse_since,
    parse_statuses,
    usage,
)
from ._commands import COMMANDS, READ_COMMANDS, Ctx

__all__ = ["DEFAULT_DB", "main", "open_for", "run_command", "sqlite_file"]

#: The store URL used when neither ``--db`` nor ``$RESILIENT_SYNC_DB`` is set.
DEFAULT_DB = "sqlite:///resilient-sync.db"
_PROG = "resilient-sync"
#: PostgreSQL for an operator's command: a server that is down or a database
#: that is missing fails in about a second, not after the pool's 10 s.
#: (libpq counts ``connect_timeout`` in whole seconds, 2 at least.)
CLI_PG_OPTIONS: dict[str, Any] = {"connect_timeout": 2, "pool_timeout": 1.0}


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL, or None for other schemes."""
    scheme, sep, _rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        return None
    from ..stores._open import sqlite_path  # noqa: PLC0415 - keeps --help fast

    try:
        return Path(sqlite_path(url))
    except ValueError as exc:
        raise usage(str(exc)) from exc


def _is_postgres(url: str) -> bool:
    return url.partition("://")[0].lower() in ("postgresql", "postgres")


def _actor(given: str | None) -> str:
    if given is not None:
        if not given.strip():
            raise usage("--actor must not be empty")
        return given.strip()
    env = os.environ.get("RESILIENT_SYNC_ACTOR", "").strip()
    if env:
        return env
    try:
        return getpass.getuser() or "operator"
    except (OSError, KeyError, ImportError):
        return "operator"


def _open(url: str, *, read_only: bool, **options: Any) -> tuple[QueueStore, IdempotencyStore]:
    from ..stores import open_stores  # noqa: PLC0415 - keeps --help fast

    try:
        return open_stores(url, read_only=read_only, **options)
    except ValueError as exc:
        raise usage(clean(exc, limit=2000)) from exc
    except ImportError as exc:
        raise CliError(
            f"cannot open {redact(url)}: {exc} (PostgreSQL needs the package's postgres "
            "extra: pip install -e '.[postgres]' in a checkout, or install psycopg[binary] "
            "and psycopg-pool)"
        ) from exc


def open_for(
    url: str, *, write: bool, create: bool = False, **options: Any
) -> tuple[QueueStore, IdempotencyStore]:
    """Open the stores of ``url`` for a command.

    - reading (``write=False``): read-only; nothing is created, migrated or
      written, and a file or schema without the library's tables is refused;
    - acting (``write=True``): first checked read-only (an existing queue at
      the current schema version), then opened read-write;
    - producing (``create=True``, ``pull``): opened read-write, so a new queue
      is created (SQLite files are created owner-only) and migrated.

    A missing SQLite file is an error unless ``create`` (the CLI never makes
    an empty queue by accident).
    """
    path = sqlite_file(url)
    if path is not None and not create:
        if not path.exists():
            raise CliError(
                f"no queue database at {str(path)!r} (from --db {url}); point --db or "
                "$RESILIENT_SYNC_DB at an existing store (e.g. sqlite:///path/to/sync.db), "
                "or run 'resilient-sync demo' to create one"
            )
        if path.is_dir():
            raise CliError(f"{str(path)!r} (from --db {url}) is a directory, not a SQLite file")
    if _is_postgres(url):
        options = {**CLI_PG_OPTIONS, **options}
    if create:
        return _open(url, read_only=False, **options)
    if not write:
        return _open(url, read_only=True, **options)
    queue, idempotency = _open(url, read_only=True, **options)
    queue.close()
    idempotency.close()
    if _is_postgres(url):
        options["migrate"] = False
    return _open(url, read_only=False, **options)


def _configure_logging(verbose: int) -> None:
    """Log records to stderr: errors only by default, ``-v`` info, ``-vv`` debug.

    (A driver's connection retries are WARNINGs; the command reports the
    failure itself in one line.)"""
    root = logging.getLogger()
    if root.handlers:  # called from a program that set up logging itself: leave it
        return
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


@contextlib.contextmanager
def _quiet_pool(verbose: int) -> Iterator[None]:
    """Without ``-v``, the PostgreSQL pool's own warnings (one per failed
    connection attempt) stay quiet: the command says what failed, once."""
    if verbose:
        yield
        return
    pool_logger = logging.getLogger("psycopg.pool")
    saved = pool_logger.level
    pool_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        pool_logger.setLevel(saved)


def _validate(args: argparse.Namespace) -> None:
    """Usage errors in option values come before opening the store."""
    now = datetime.now(timezone.utc)
    if getattr(args, "status", None):
        parse_statuses(args.status)
    if getattr(args, "category", None):
        parse_category(args.category)
    if getattr(args, "since", None):
        parse_since(args.since, now)
    for option in ("bucket", "older_than", "every", "shutdown_timeout"):
        value = getattr(args, option, None)
        if isinstance(value, str):
            parse_duration(value, "--" + option.replace("_", "-"))
    for option in ("assignments", "additions"):
        for text in getattr(args, option, None) or ():
            parse_assignment(text, "--add" if option == "additions" else "--set")


def _say(stream: TextIO, message: str) -> None:
    """One error line on the terminal, through the gate (redacted, capped at
    2,000 characters, control characters inert)."""
    text = for_terminal(" ".join(clean(message, limit=2000, single_line=True).split()))
    print(f"{_PROG}: error: {text}", file=stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        print(f"{_PROG} {__version__}", file=out)
        return EXIT_OK
    if args.command is None:
        parser.print_help(err)
        return EXIT_USAGE
    if args.command == "worker":  # a service: it logs as it is told (--log-level)
        return _guarded(args, out, err)
    _configure_logging(args.verbose)
    with _quiet_pool(args.verbose):
        return _guarded(args, out, err)


def run_command(argv: Sequence[str], *, out: TextIO, err: TextIO) -> int:
    """Run one command in-process without touching logging (the demo shows
    the real commands' output this way); returns the exit code."""
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        return EXIT_USAGE
    return _guarded(args, out, err)


def _guarded(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the command; every failure becomes one line and an exit code."""
    ctx: Ctx | None = None
    try:
        _validate(args)
        if args.command == "demo":
            from ._demo import cmd_demo  # noqa: PLC0415 - only this command needs it

            return cmd_demo(args, out=out, err=err)
        if args.command in ("worker", "pull"):
            from ._worker import cmd_pull, cmd_worker  # noqa: PLC0415

            return (cmd_worker if args.command == "worker" else cmd_pull)(args, out=out, err=err)
        url = args.db or os.environ.get("RESILIENT_SYNC_DB") or DEFAULT_DB
        actor = _actor(args.actor)
        queue, idempotency = open_for(url, write=args.command not in READ_COMMANDS)
        ctx = Ctx(
            operator=Operator(queue),
            idempotency=idempotency,
            args=args,
            db=redact(url),
            actor=actor,
            out=out,
            err=err,
        )
        return COMMANDS[args.command](ctx)
    except CliError as exc:
        _say(err, exc.message)
        return exc.code
    except (StoreError, SyncError) as exc:
        _say(err, clean(exc, limit=2000))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _say(err, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `resilient-sync list | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("RESILIENT_SYNC_DEBUG"):
            raise
        _say(
            err,
            f"unexpected {type(exc).__name__}: {clean(exc, limit=2000)} "
            "(set RESILIENT_SYNC_DEBUG=1 to see the traceback)",
        )
        return EXIT_FAILURE
    finally:
        if ctx is not None:
            _close(ctx, err)


def _close(ctx: Ctx, err: TextIO) -> None:
    for store in (ctx.operator.queue, ctx.idempotency):
        try:
            store.close()
        except Exception as exc:  # noqa: BLE001, PERF203 - reported, the result stands
            _say(err, f"closing the store failed: {clean(exc, limit=2000)}")

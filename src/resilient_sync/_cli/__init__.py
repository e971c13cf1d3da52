"""The ``resilient-sync`` command line (also ``python -m resilient_sync``).

Built on :class:`~resilient_sync.Operator`; stdlib ``argparse`` only. See
``docs/reference/cli.md``. Errors are one line on stderr and an exit code
(0 ok, 1 failed, 2 usage, 3 attention), never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from .._errors import StoreError, SyncError
from .._operator import Operator
from .._redact import redact
from .._version import __version__
from ._args import (
    EXIT_FAILURE,
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
from ._commands import COMMANDS, Ctx

__all__ = ["DEFAULT_DB", "main", "sqlite_file"]

#: The store URL used when neither ``--db`` nor ``$RESILIENT_SYNC_DB`` is set.
DEFAULT_DB = "sqlite:///resilient-sync.db"
_PROG = "resilient-sync"


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


def _open(url: str) -> Operator:
    """Open the queue store of ``url``; a missing SQLite file is an error
    (the CLI never creates an empty queue by accident)."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise CliError(
            f"no queue database at {str(path)!r} (from --db {url}); point --db or "
            "$RESILIENT_SYNC_DB at an existing store (e.g. sqlite:///path/to/sync.db), "
            "or run 'resilient-sync demo' to create one"
        )
    if path is not None and path.is_dir():
        raise CliError(f"{str(path)!r} (from --db {url}) is a directory, not a SQLite file")
    from ..stores import open_stores  # noqa: PLC0415 - keeps --help fast

    try:
        queue, idempotency = open_stores(url)
    except ValueError as exc:
        raise usage(redact(str(exc))) from exc
    except ImportError as exc:
        raise CliError(
            f"cannot open {redact(url)}: {exc} (PostgreSQL needs: "
            "pip install 'resilient-sync[postgres]')"
        ) from exc
    idempotency.close()
    return Operator(queue)


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


def _validate(args: argparse.Namespace) -> None:
    """Usage errors in option values come before opening the store."""
    now = datetime.now(timezone.utc)
    if getattr(args, "status", None):
        parse_statuses(args.status)
    if getattr(args, "category", None):
        parse_category(args.category)
    if getattr(args, "since", None):
        parse_since(args.since, now)
    if getattr(args, "bucket", None):
        parse_duration(args.bucket, "--bucket")
    for text in getattr(args, "assignments", None) or ():
        parse_assignment(text)


def _say(stream: TextIO, message: str) -> None:
    print(f"{_PROG}: error: {' '.join(message.split())}", file=stream)


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
    _configure_logging(args.verbose)
    operator: Operator | None = None
    try:
        _validate(args)
        if args.command == "demo":
            from .._demo import run_demo  # noqa: PLC0415

            return run_demo(args, out=out, err=err)
        url = args.db or os.environ.get("RESILIENT_SYNC_DB") or DEFAULT_DB
        actor = _actor(args.actor)
        operator = _open(url)
        ctx = Ctx(operator=operator, args=args, db=redact(url), actor=actor, out=out, err=err)
        return COMMANDS[args.command](ctx)
    except CliError as exc:
        _say(err, exc.message)
        return exc.code
    except StoreError as exc:
        _say(err, redact(str(exc)))
        return EXIT_FAILURE
    except SyncError as exc:
        _say(err, redact(str(exc)))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _say(err, "interrupted")
        return 130
    except BrokenPipeError:  # e.g. `resilient-sync list | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("RESILIENT_SYNC_DEBUG"):
            raise
        _say(
            err,
            f"unexpected {type(exc).__name__}: {redact(str(exc))} "
            "(set RESILIENT_SYNC_DEBUG=1 to see the traceback)",
        )
        return EXIT_FAILURE
    finally:
        if operator is not None:
            try:
                operator.queue.close()
            except Exception as exc:  # noqa: BLE001 - reported, the command's result stands
                _say(err, f"closing the store failed: {redact(str(exc))}")

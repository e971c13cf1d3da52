"""``resilient-sync demo``: the command line's side of the demo.

The demo itself (``resilient_sync._demo``) stands on the public API only;
this module turns the options into its settings, tells it how the reader
runs this command line (so that every command it prints can be pasted as
it is), and lets it show the real output of ``status``, ``trend`` and
``list`` by running them in-process.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .._redact import redact
from ._args import EXIT_FAILURE, EXIT_OK, CliError, usage

__all__ = ["cmd_demo", "invocation"]


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    text = str(relative)
    return text if os.sep in text else f".{os.sep}{text}"


def invocation() -> str:
    """How to run this command line from the working directory, as typed.

    ``resilient-sync`` when that name on ``PATH`` is this installation;
    otherwise the path of this installation's script (``.venv/bin/resilient-sync``),
    or ``python -m resilient_sync`` with this interpreter.
    """
    here = Path(sys.executable).parent
    script = here / ("resilient-sync.exe" if os.name == "nt" else "resilient-sync")
    found = shutil.which("resilient-sync")
    if found and script.exists():
        try:
            if os.path.samefile(found, script):
                return "resilient-sync"
        except OSError:
            pass
    if script.exists():
        return shlex.quote(_shown(script))
    return f"{shlex.quote(_shown(Path(sys.executable)))} -m resilient_sync"


def cmd_demo(args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """Run the demo; returns the exit code."""
    from .._demo import DEMO_FILE, DemoError, DemoSettings, run_demo  # noqa: PLC0415
    from . import run_command, sqlite_file  # noqa: PLC0415 - the package imports this module

    try:
        settings = DemoSettings.create(
            quick=args.quick,
            customers=args.customers,
            orders=args.orders,
            seed=args.seed,
            fix=not args.no_fix,
        )
    except ValueError as exc:
        raise usage(str(exc)) from exc
    url = args.db or f"sqlite:///{DEMO_FILE}"
    path = sqlite_file(url)
    if path is None:
        raise usage(f"the demo runs on SQLite: give --db sqlite:///path.db, not {redact(url)}")
    demo_url = f"sqlite:///{path}"

    def show(command: Sequence[str]) -> None:
        out.flush()
        run_command(["--db", demo_url, *command], out=out, err=err)
        out.flush()

    try:
        result = run_demo(settings, path, out=out, show=show, command=invocation())
    except DemoError as exc:
        raise CliError(str(exc)) from exc
    if result.broken_promise:
        print(
            f"resilient-sync: error: the demo broke a promise ({result.duplicate_effects} "
            "duplicate effects, or deliveries unaccounted for); please report it",
            file=err,
        )
        return EXIT_FAILURE
    return EXIT_OK

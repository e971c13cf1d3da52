"""Pages each batch writes to SQLite's WAL, at queue depth and history size.

    .venv/bin/python bench/wal_pages.py [--sizes 10000,1000000] [--batches 10]

For each scenario of ``bench/scale.py`` on the SQLite store (keyed and
unkeyed, queued and history), built to each size the same way, this runs one
``run_once`` batch of 100 to warm up, checkpoints the WAL to nothing
(``wal_checkpoint(TRUNCATE)``), then runs ``--batches`` more with the
store's automatic checkpoints off and prints how many 4 KiB pages the WAL
grew by per batch (each batch: a claim with its idempotency keys, then the
outcomes with their audit records and keys; two commits). A page written
twice in one commit counts once; a page written by both commits, twice.

This is what the depth rows of ``bench/scale.py`` pay for on SQLite beyond
the statements themselves: every page a commit changes is written whole to
the WAL and, at the next checkpoint, copied into the database file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from typing import Any

import scale
from common import NoOp

from resilient_sync import Dispatcher
from resilient_sync.stores import _sqlite

FRAME = 24 + 4096  # a WAL frame: its header and one page (the store's page size)


def _no_autocheckpoint(real: Any) -> Any:
    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    return connect


def pages_per_batch(s: Any, batches: int) -> float:
    dispatcher = Dispatcher(s.queue, s.idempotency, [NoOp()], batch_size=100)
    dispatcher.run_once()
    with contextlib.closing(sqlite3.connect(s.path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    wal = f"{s.path}-wal"
    before = os.path.getsize(wal) if os.path.exists(wal) else 0
    done = 0
    for _ in range(batches):
        done += dispatcher.run_once().succeeded
    grown = os.path.getsize(wal) - before
    return grown / FRAME / (done / 100)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    _sqlite.sqlite3.connect = _no_autocheckpoint(sqlite3.connect)  # type: ignore[assignment]
    print(f"{'WAL pages per batch of 100':<30}" + "".join(f"{n:>12,}" for n in sizes))
    for keyed in (True, False):
        for kind in ("depth", "history"):
            row = []
            with scale.scenario("sqlite", keyed, kind) as s:
                for size in sizes:
                    s.grow_to(size)
                    row.append(pages_per_batch(s, args.batches))
                    if kind == "depth":
                        s.submit(100 * (args.batches + 1))  # back to the depth
            label = f"{'keyed' if keyed else 'unkeyed'}, {'queued' if kind == 'depth' else kind}"
            print(f"{label:<30}" + "".join(f"{v:>12.0f}" for v in row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

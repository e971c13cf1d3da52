"""CPU instructions per delivery, counted by valgrind: a figure noise cannot move.

Wall-clock figures on a shared 2-core machine move by tens of percent from
one run to the next; the number of instructions the library executes for the
same work does not (the same total twice, one core loaded or not). This
counts them with ``valgrind --tool=callgrind`` for one lifecycle:
``submit_many`` of N events in batches of 100, then ``run_until_idle`` to a
no-op destination, on the memory stores and on a SQLite file
(``synchronous=FULL``; the time spent waiting for the disk is not an
instruction, so this is the library's CPU cost, not its I/O), and with
``--stores postgres`` on a scratch schema of the bench's PostgreSQL (the
worker's own instructions: the server is another process). Each figure is
``(I(N2) - I(N1)) / (N2 - N1)``: start-up, imports and the first batch cancel
out.

``--against REV`` counts the same workload on another revision of the
library (a ``git worktree`` of REV, put first on ``sys.path``) in the same
run, and prints the ratio: how much CPU a change saved or cost.

    .venv/bin/python bench/instructions.py [--stores memory,sqlite] [--against 407e07f]
                                           [--sizes 500,1500]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(store: str, total: int) -> None:
    """The workload, run under valgrind (``--child STORE N``)."""
    sys.path.insert(1, str(HERE))
    from common import PAYLOAD, NoOp

    from resilient_sync import Dispatcher, Event
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, open_stores

    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory())
        if store == "memory":
            queue, idempotency = MemoryQueueStore(), MemoryIdempotencyStore()
        elif store == "postgres":
            from common import PG_DSN, pg_schema

            schema = stack.enter_context(pg_schema("instr"))
            joiner = "&" if "?" in PG_DSN else "?"  # the DSN may carry parameters already
            queue, idempotency = open_stores(f"{PG_DSN}{joiner}schema={schema}")
        else:
            queue, idempotency = open_stores(f"sqlite:///{scratch}/queue.db")
        dispatcher = Dispatcher(queue, idempotency, [NoOp()])
        events = [Event(f"order-{n}", "order.paid", dict(PAYLOAD, n=n)) for n in range(total)]
        for first in range(0, total, 100):
            dispatcher.submit_many(events[first : first + 100])
        report = dispatcher.run_until_idle()
        assert report.succeeded == total, report
        dispatcher.close()
        queue.close()
        idempotency.close()


def count(store: str, total: int, src: Path | None) -> int:
    """Instructions of one child run (the whole process)."""
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts every run
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            store,
            str(total),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed ({store}, {total}):\n{result.stderr[-2000:]}")
    return int(found.group(1))


def per_delivery(store: str, sizes: tuple[int, int], src: Path | None) -> float:
    small, large = (count(store, n, src) for n in sizes)
    return (large - small) / (sizes[1] - sizes[0])


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """The library's ``src`` at ``rev``, in a scratch git worktree."""
    scratch = Path(tempfile.mkdtemp(prefix="rs-instructions-"))
    tree = scratch / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True
    )
    try:
        yield tree / "src"
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
        )
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="memory,sqlite")
    parser.add_argument("--sizes", default="500,1500", help="N1,N2 (the figure is their slope)")
    parser.add_argument("--against", metavar="REV", help="also count this git revision")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    small, large = (int(s) for s in args.sizes.split(","))
    if not 0 < small < large:
        raise SystemExit(f"--sizes must be N1,N2 with 0 < N1 < N2, got {args.sizes!r}")
    stores = args.stores.split(",")
    unknown = set(stores) - {"memory", "sqlite", "postgres"}
    if unknown:
        raise SystemExit(
            f"unknown store(s) {sorted(unknown)}; choose from memory, sqlite, postgres"
        )
    results: dict[str, dict[str, float]] = {}
    with worktree(args.against) if args.against else contextlib.nullcontext() as other:
        for store in stores:
            row = {"this": per_delivery(store, (small, large), ROOT / "src")}
            if other is not None:
                row[args.against] = per_delivery(store, (small, large), other)
            results[store] = row
            print(f"  instructions {store}: {row}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    header = f"{'instructions/delivery':<24}{'this tree':>14}"
    if args.against:
        header += f"{args.against:>14}{'ratio':>8}"
    print(header)
    for store, row in results.items():
        line = f"{store:<24}{row['this']:>14,.0f}"
        if args.against:
            line += f"{row[args.against]:>14,.0f}{row['this'] / row[args.against]:>8.2f}"
        print(line)


if __name__ == "__main__":
    main()

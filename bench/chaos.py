"""The long chaos run: "nothing lost, nothing doubled, nothing leaked".

    python bench/chaos.py --store sqlite|postgres|both --events N --duration S \
        --workers K [--seed X] [--pg-restart] [--pg-dsn DSN] [--pg-cluster 15/chaos]

Worker processes deliver to a hostile HTTP server (5xx, 429 with odd
Retry-After values, timeouts after applying, resets, hostile bodies, 401s)
and to a plain-Python destination that raises odd exceptions, while the
harness SIGKILLs and restarts workers, an operator process races them, and
(with ``--pg-restart``) the *private* PostgreSQL cluster is restarted. Then
it drains the queue without faults and prints a table of checks; the exit
code is 1 if any check fails. See ``tests/chaos/chaos_harness.py``.

PostgreSQL: the DSN comes from ``--pg-dsn``, else ``RESILIENT_SYNC_CHAOS_PG``,
else ``RESILIENT_SYNC_TEST_PG``, else the local default. ``--pg-restart``
restarts the cluster ``--pg-cluster`` (``RESILIENT_SYNC_CHAOS_PG_CLUSTER``,
default ``15/chaos``) with ``pg_ctlcluster``; it refuses ``main`` and a
cluster that is not the one behind the DSN. Create one for yourself with
``pg_createcluster 15 chaos --port 5433 -- --auth=trust``, start it, and
``CREATE DATABASE test`` in it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "chaos"))

from chaos_harness import (
    ChaosConfig,
    format_table,
    pg_restart_command,
    remove_workdir,
    run_chaos,
)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of faults")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--pg-restart", action="store_true", help="restart the private cluster")
    parser.add_argument("--pg-dsn", default=None)
    parser.add_argument(
        "--pg-cluster", default=os.environ.get("RESILIENT_SYNC_CHAOS_PG_CLUSTER", "15/chaos")
    )
    parser.add_argument("--pg-restart-every", type=float, default=20.0)
    parser.add_argument("--kill-every", type=float, default=2.5, help="mean seconds between kills")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    print(f"chaos seed: {seed}", flush=True)
    dsn = (
        args.pg_dsn
        or os.environ.get("RESILIENT_SYNC_CHAOS_PG")
        or os.environ.get("RESILIENT_SYNC_TEST_PG")
        or DEFAULT_DSN
    )
    restart = pg_restart_command(args.pg_cluster, dsn) if args.pg_restart else None
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    failed = False
    for store in stores:
        workdir = args.workdir / store if args.workdir else Path(tempfile.mkdtemp(prefix="chaos-"))
        config = ChaosConfig(
            store=store,
            workdir=workdir,
            events=args.events,
            duration=args.duration,
            workers=args.workers,
            seed=seed,
            pg_dsn=dsn if store == "postgres" else None,
            pg_restart=restart if store == "postgres" else None,
            pg_restart_every=args.pg_restart_every,
            kill_every=args.kill_every,
            drain_timeout=args.drain_timeout,
        )
        print(
            f"running {store}: {args.events} events, {args.duration:.0f}s, "
            f"{args.workers} workers, logs in {workdir}",
            flush=True,
        )
        report = run_chaos(config)
        print(format_table(report), flush=True)
        failed = failed or bool(report.failed)
        if args.workdir is None and not report.failed:
            remove_workdir(workdir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

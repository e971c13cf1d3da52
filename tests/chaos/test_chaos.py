"""The short chaos run, in CI: "nothing lost, nothing doubled, nothing leaked".

300 events to a hostile HTTP destination and an odd plain-Python one, 3
worker processes SIGKILLed and restarted at random, an operator process
racing them, for 30 s on each store; then a drain without faults and the
checks of ``chaos_harness`` (the table is printed; run with ``-s`` to see
it). ``bench/chaos.py`` is the long run.

PostgreSQL uses ``RESILIENT_SYNC_TEST_PG`` (skipped without a server, failed
under ``CI=true``, as the other PostgreSQL tests) and is never restarted,
unless ``RESILIENT_SYNC_CHAOS_PG_RESTART=1``: then the run uses
``RESILIENT_SYNC_CHAOS_PG`` (the DSN of a *private* cluster) and restarts
the cluster ``RESILIENT_SYNC_CHAOS_PG_CLUSTER`` (e.g. ``15/chaos``).
``RESILIENT_SYNC_CHAOS_SEED`` replays a seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chaos_harness import ChaosConfig, format_table, pg_restart_command, run_chaos

pytestmark = pytest.mark.slow
pytest_plugins = ["pg_fixtures"]

SEED = int(os.environ.get("RESILIENT_SYNC_CHAOS_SEED", "20241129"))
EVENTS = 300
DURATION = 30.0
WORKERS = 3


def _run(config: ChaosConfig) -> None:
    print(f"\nchaos seed {config.seed}; logs and CLI outputs in {config.workdir}")
    report = run_chaos(config)
    table = format_table(report)
    if report.failed:
        pytest.fail(table, pytrace=False)
    print(table)


def test_chaos_sqlite(tmp_path: Path) -> None:
    _run(
        ChaosConfig(
            store="sqlite",
            workdir=tmp_path,
            events=EVENTS,
            duration=DURATION,
            workers=WORKERS,
            seed=SEED,
        )
    )


@pytest.mark.postgres
def test_chaos_postgres(pg_dsn: str, tmp_path: Path) -> None:
    restart = None
    dsn = pg_dsn
    if os.environ.get("RESILIENT_SYNC_CHAOS_PG_RESTART") == "1":
        dsn = os.environ.get("RESILIENT_SYNC_CHAOS_PG", "")
        cluster = os.environ.get("RESILIENT_SYNC_CHAOS_PG_CLUSTER", "")
        if not dsn or not cluster:
            pytest.fail(
                "RESILIENT_SYNC_CHAOS_PG_RESTART=1 needs RESILIENT_SYNC_CHAOS_PG (the DSN of a "
                "private cluster) and RESILIENT_SYNC_CHAOS_PG_CLUSTER (e.g. 15/chaos)"
            )
        restart = pg_restart_command(cluster, dsn)
    _run(
        ChaosConfig(
            store="postgres",
            workdir=tmp_path,
            events=EVENTS,
            duration=DURATION,
            workers=WORKERS,
            seed=SEED,
            pg_dsn=dsn,
            pg_restart=restart,
        )
    )

"""The worker's shutdown: how long `resilient-sync worker` takes to stop on
SIGTERM mid-batch, and what it leaves behind.

A worker process (`python -m resilient_sync worker shutdown:make_dispatcher`,
SQLite, a destination that takes ``--delay`` seconds per delivery, batches of
``--batch``) is given a queue of work; once it is delivering, SIGTERM. A
sample is the time from the signal to the process's exit, next to the bound
(``--shutdown-timeout``, the worker's own) and to the time one delivery takes
(the batch's running delivery is let finish; the rest is handed back). Each
sample also checks the exit code (0) and that nothing is left in flight.
Then the same with a second SIGTERM right after the first: the worker exits
at once.

    .venv/bin/python bench/shutdown.py [--samples 5] [--delay 0.2] [--batch 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import log, percentile

HERE = Path(__file__).resolve().parent


class Slow:
    """A destination that takes a while per delivery."""

    name = "pos"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def deliver(self, event: Any, context: Any) -> None:
        time.sleep(self.delay)


def make_dispatcher() -> Any:
    """The worker's factory (read by ``resilient-sync worker shutdown:make_dispatcher``)."""
    from resilient_sync import Dispatcher
    from resilient_sync.stores import open_stores

    queue, idempotency = open_stores(os.environ["RESILIENT_SYNC_DB"])
    return Dispatcher(
        queue,
        idempotency,
        [Slow(float(os.environ["BENCH_DELAY"]))],
        batch_size=int(os.environ["BENCH_BATCH"]),
    )


def _state(url: str) -> dict[str, int]:
    from resilient_sync.stores import open_stores

    queue, idempotency = open_stores(url, read_only=True)
    try:
        return {s.value: n for s, n in queue.stats().by_status.items()}
    finally:
        queue.close()
        idempotency.close()


def one(delay: float, batch: int, bound: float, twice: bool) -> dict[str, Any]:
    """One worker stopped mid-batch; the seconds to exit and what it left."""
    from resilient_sync import Event, Producer
    from resilient_sync.stores import open_stores

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'sync.db'}"
        queue, idempotency = open_stores(url)
        Producer(queue, ["pos"]).submit_many(
            [Event(f"e{i}", "customer.created", {"n": i}) for i in range(batch * 5)]
        )
        queue.close()
        idempotency.close()
        env = dict(os.environ, RESILIENT_SYNC_DB=url, BENCH_DELAY=str(delay))
        env["BENCH_BATCH"] = str(batch)
        env["PYTHONPATH"] = f"{HERE}{os.pathsep}{env.get('PYTHONPATH', '')}"
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "resilient_sync",
                "worker",
                "shutdown:make_dispatcher",
                "--shutdown-timeout",
                f"{bound:g}s",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while _state(url).get("in_flight", 0) == 0:  # wait until it is delivering
                if time.monotonic() > deadline:
                    raise SystemExit("the worker never started delivering")
                time.sleep(0.05)
            time.sleep(delay * 2.5)  # mid-batch
            started = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            if twice:
                time.sleep(0.05)
                worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=bound + 30)
            took = time.monotonic() - started
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        left = _state(url)
    return {"seconds": took, "exit": code, "left": left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--bound", type=float, default=30.0)
    args = parser.parse_args()
    results = measure(args.samples, args.delay, args.batch, args.bound)
    for label, value in results.items():
        print(f"{label}: {value}")


def measure(samples: int, delay: float, batch: int, bound: float) -> dict[str, Any]:
    """The shutdown figures: p50/max seconds to exit (one and two SIGTERMs),
    exit codes and deliveries left in flight."""
    graceful = [one(delay, batch, bound, twice=False) for _ in range(samples)]
    log(f"  shutdown: graceful {[round(r['seconds'], 3) for r in graceful]}")
    forced = [one(delay, batch, bound, twice=True) for _ in range(max(1, samples // 2))]
    log(f"  shutdown: second signal {[round(r['seconds'], 3) for r in forced]}")
    seconds = [r["seconds"] for r in graceful]
    return {
        "graceful_p50_s": percentile(seconds, 50),
        "graceful_max_s": max(seconds),
        "graceful_exit_codes": sorted({r["exit"] for r in graceful}),
        "in_flight_left": max(r["left"].get("in_flight", 0) for r in graceful),
        "second_signal_max_s": max(r["seconds"] for r in forced),
        "second_signal_exit_codes": sorted({r["exit"] for r in forced}),
        "delivery_s": delay,
        "bound_s": bound,
    }


if __name__ == "__main__":
    main()

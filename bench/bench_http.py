"""Deliveries per second through HttpDestination, next to a plain httpx loop.

Both send the same requests (POST /customers, canonical JSON body, an
Idempotency-Key and a bearer token, the JSON answer decoded) with the same
concurrency to the same local server (tests/http_server.py, run in its own
process so it does not share our GIL):

- **plain**: N threads sharing one ``httpx.Client``, a bare loop;
- **dispatcher**: ``Dispatcher(concurrency=N)`` on the memory stores, with an
  ``HttpDestination`` (classification, idempotency store, audit records,
  rate limiter and circuit breaker bookkeeping included) whose result is the
  remote customer id, as a real adapter keeps it (the plain loop decodes the
  same JSON). Events are submitted before the clock starts; the time is
  ``run_until_idle()``.

Runs alternate (plain, dispatcher, ...) ``--repeat`` times; the best of each
is reported, and their ratio (target: >= 0.85), with this process's CPU time
per delivery (steadier than the rate on a busy machine). A third line times
``HttpDestination.deliver`` from N threads without the dispatcher, to show
which share of the overhead is the adapter's::

    .venv/bin/python bench/bench_http.py [--deliveries 2000] [--concurrency 8]
                                         [--repeat 3] [--latency 0.0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from resilient_sync import DeliveryContext, DeliveryStatus, Dispatcher, Event, RetryPolicy
from resilient_sync.http import HttpDestination
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-1234"  # noqa: S105 - the local test server's token
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "http_server.py"),
            "--token",
            TOKEN,
            "--latency",
            str(latency),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        raise SystemExit(f"the benchmark server did not start (printed {port!r})")
    return proc, f"http://127.0.0.1:{port}"


def payloads(run: str, n: int) -> list[dict[str, str]]:
    return [{"name": f"Customer {i}", "email": f"{run}-{i}@example.com"} for i in range(n)]


def measured(fn: Callable[[str, int, int], float], url: str, n: int, c: int) -> tuple[float, float]:
    """Deliveries/s and this process's CPU microseconds per delivery."""
    cpu = time.process_time()
    rate = fn(url, n, c)
    return rate, (time.process_time() - cpu) / n * 1e6


def plain(url: str, n: int, concurrency: int) -> float:
    """A bare httpx loop: N threads, one shared client."""
    run = uuid.uuid4().hex[:8]
    bodies = payloads(run, n)
    counter = itertools.count()
    failures: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, headers=HEADERS, limits=limits) as client:

        def worker() -> None:
            while (i := next(counter)) < n:
                body = json.dumps(bodies[i], sort_keys=True, separators=(",", ":")).encode()
                headers = {"Idempotency-Key": f"{run}-{i}", "Content-Type": "application/json"}
                for _ in range(3):  # a dropped keep-alive connection: send again, same key
                    try:
                        response = client.post("/customers", content=body, headers=headers)
                        break
                    except httpx.TransportError as exc:
                        error = exc
                else:
                    failures.append(repr(error))
                    continue
                if response.status_code != 201:
                    failures.append(f"{response.status_code} {response.text}")
                response.json()

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"plain loop failed: {failures[:3]}")
    return n / elapsed


def adapter_only(url: str, n: int, concurrency: int) -> float:
    """``HttpDestination.deliver`` called from N threads, without the dispatcher:
    shows which share of the overhead is the adapter's and which the core's."""
    run = uuid.uuid4().hex[:8]
    events = [Event(f"{run}-{i}", "customer.created", p) for i, p in enumerate(payloads(run, n))]
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(base_url=url, headers=HEADERS, limits=limits) as client,
        HttpDestination("pos", path="/customers", client=client, read_result=customer_id) as pos,
    ):

        def worker() -> None:
            while (i := next(counter)) < n:
                context = DeliveryContext(
                    delivery_id=str(i), destination="pos", idempotency_key=f"{run}-{i}", attempt=1
                )
                pos.deliver(events[i], context)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return n / (time.perf_counter() - started)


def customer_id(response: httpx.Response) -> str:
    """The result a POS adapter keeps: the remote id (as in the how-to's example)."""
    return str(response.json()["customer"]["id"])


def through_dispatcher(url: str, n: int, concurrency: int) -> float:
    """The same requests through Dispatcher(concurrency=N) and an HttpDestination."""
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(base_url=url, headers=HEADERS, limits=limits) as client,
        HttpDestination("pos", path="/customers", client=client, read_result=customer_id) as pos,
    ):
        queue = MemoryQueueStore()
        dispatcher = Dispatcher(
            queue,
            MemoryIdempotencyStore(),
            [pos],
            # a dropped keep-alive connection is retried at once, like the plain loop does
            retry=RetryPolicy(max_attempts=3, initial_delay=0, jitter=False),
            concurrency=concurrency,
            batch_size=500,
        )
        dispatcher.submit_many(
            Event(f"{run}-{i}", "customer.created", body) for i, body in enumerate(payloads(run, n))
        )
        started = time.perf_counter()
        report = dispatcher.run_until_idle()
        elapsed = time.perf_counter() - started
    if report.succeeded != n:
        stuck = [d for d in queue.list(limit=3) if d.status is not DeliveryStatus.SUCCEEDED]
        raise SystemExit(f"dispatcher run failed: {report} {stuck[:1]}")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0, help="server seconds per create")
    args = parser.parse_args()
    proc, url = start_server(args.latency)
    try:
        plain(url, 50, args.concurrency)  # warm up both paths
        through_dispatcher(url, 50, args.concurrency)
        plain_runs: list[tuple[float, float]] = []
        our_runs: list[tuple[float, float]] = []
        adapter_runs: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            plain_runs.append(measured(plain, url, args.deliveries, args.concurrency))
            our_runs.append(measured(through_dispatcher, url, args.deliveries, args.concurrency))
            adapter_runs.append(measured(adapter_only, url, args.deliveries, args.concurrency))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    (best_plain, plain_cpu), (best_ours, our_cpu) = max(plain_runs), max(our_runs)
    best_adapter, adapter_cpu = max(adapter_runs)
    print(
        f"{args.deliveries} deliveries, concurrency {args.concurrency}, "
        f"server latency {args.latency * 1000:.0f} ms, best of {args.repeat}"
    )
    print(
        f"plain httpx loop:            {best_plain:8.0f} requests/s    "
        f"(client CPU {plain_cpu:4.0f} us/request)"
    )
    print(
        f"HttpDestination+Dispatcher:  {best_ours:8.0f} deliveries/s  "
        f"(client CPU {our_cpu:4.0f} us/delivery)"
    )
    print(f"ratio:                       {best_ours / best_plain:8.2f}  (target >= 0.85)")
    print(
        f"(HttpDestination alone:      {best_adapter:8.0f} deliveries/s  "
        f"(client CPU {adapter_cpu:4.0f} us/delivery), ratio {best_adapter / best_plain:.2f})"
    )


if __name__ == "__main__":
    main()

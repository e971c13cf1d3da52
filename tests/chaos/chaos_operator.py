"""The operator of the chaos run: a separate process racing the workers.

    python tests/chaos/chaos_operator.py CONFIG.json OUT.json

Until SIGTERM, every few hundred milliseconds it does one of: resume paused
destinations, ``Operator.retry_all``, ``Operator.retry`` on random
NEEDS_ACTION ids, ``Operator.edit`` on random deliveries (any status: the
library must refuse the unsafe ones with a ``ValueError``). Some notes carry
a planted secret. Counts go to OUT.json (rewritten after every action);
an exception other than a refusal, a missing id or a store error is a crash:
recorded, and the loop goes on.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import traceback
from collections import Counter
from pathlib import Path

from chaos_worker import exit_with_parent, open_retrying

from resilient_sync import DeliveryNotFoundError, DeliveryStatus, Operator, StoreError

ACTOR = "chaos-operator"


class Tally:
    """What the operator did, by action: calls, moved, refused, errors."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.counts: dict[str, Counter[str]] = {}
        self.refusals: Counter[str] = Counter()
        self.crashes: list[str] = []

    def add(self, action: str, what: str, n: int = 1) -> None:
        self.counts.setdefault(action, Counter())[what] += n

    def save(self) -> None:
        data = {
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "refusals": dict(self.refusals),
            "crashes": self.crashes,
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.out)


def _refusal_kind(message: str) -> str:
    if "may have applied" in message:
        return "unsafe: outcome unknown"
    if "can be edited" in message:
        return "state not editable"
    if "changed while" in message:
        return "raced a worker"
    if "changes nothing" in message:
        return "no change"
    return "other: " + message[:60]


def step(op: Operator, rng: random.Random, tally: Tally, secret_note: str) -> None:
    """One operator action."""
    roll = rng.random()
    note = secret_note if rng.random() < 0.3 else None
    if roll < 0.25:
        for name, state in op.destinations().items():
            if state.paused:
                op.resume(name, actor=ACTOR, note=note)
                tally.add("resume", "moved")
        tally.add("resume", "calls")
    elif roll < 0.35:
        moved = op.retry_all(DeliveryStatus.NEEDS_ACTION, actor=ACTOR, note=note)
        tally.add("retry_all", "calls")
        tally.add("retry_all", "moved", len(moved))
    elif roll < 0.6:
        page = op.list(DeliveryStatus.NEEDS_ACTION, limit=200)
        if not page.items:
            return
        ids = [d.id for d in rng.sample(page.items, k=min(len(page.items), rng.randint(1, 5)))]
        moved = op.retry(ids, actor=ACTOR, note=note)
        tally.add("retry", "calls")
        tally.add("retry", "moved", len(moved))
        tally.add("retry", "unchanged", len(ids) - len(moved))
    else:
        if rng.random() < 0.5:
            page = op.list(DeliveryStatus.NEEDS_ACTION, limit=200)
        else:
            page = op.list(limit=500)
        if not page.items:
            return
        delivery = rng.choice(page.items)
        n = delivery.event.payload.get("n") if isinstance(delivery.event.payload, dict) else None
        changes = (
            {"email": f"fixed{n}.{rng.randint(0, 999)}@example.com"}
            if rng.random() < 0.7
            else {"note": f"edited by the operator {rng.randint(0, 999)}"}
        )
        tally.add("edit", "calls")
        try:
            op.edit(delivery.id, changes, actor=ACTOR, note=note, retry=rng.random() < 0.5)
        except ValueError as exc:
            tally.add("edit", "refused")
            tally.refusals[_refusal_kind(str(exc))] += 1
        else:
            tally.add("edit", "accepted")


def main(config_path: str, out_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    rng = random.Random(int(config["seed"]) * 7 + 3)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    exit_with_parent(stop)
    tally = Tally(Path(out_path))
    queue, _idempotency = open_retrying(config["store"])
    op = Operator(queue)
    secret_note = f"ticket 4711: customer sent api_key={config['note_secret']} by mail"
    while not stop.is_set():
        try:
            step(op, rng, tally, secret_note)
        except (StoreError, DeliveryNotFoundError) as exc:
            tally.add("errors", type(exc).__name__)
        except Exception:
            tally.crashes.append(traceback.format_exc()[-2000:])
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        tally.save()
        stop.wait(rng.uniform(0.1, 0.5))
    tally.save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

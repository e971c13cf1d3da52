"""A small but varied queue for the CLI tests, on any store URL, and a runner
of the real ``resilient-sync`` command in a subprocess.

Every command runs at ``COLUMNS=80`` (an 80-column terminal, also when the
output is piped), and the tests that list deliveries check that EVENT and
REASON are there (:func:`assert_event_and_reason`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs

from resilient_sync import (
    DataFormatError,
    Dispatcher,
    DuplicateError,
    Event,
    MappingError,
    PermissionDeniedError,
    RetryableError,
    RetryPolicy,
)
from resilient_sync.stores import open_stores
from resilient_sync.testing import FlakyDestination

#: Event id -> what the pos destination says on the first (and only) attempt.
POS_FAILURES = {
    "c2": DataFormatError("phone is invalid", field="phone"),
    "c3": MappingError("unknown SKU 'TEE-XXL'", field="lines[0].sku"),
    "c4": RetryableError("POS down (HTTP 503)"),
    "c5": DuplicateError("email has already been taken", field="email"),
}
BULK = 30
#: The terminal width every CLI test runs at.
COLUMNS = "80"


def payload(n: str) -> dict[str, Any]:
    return {
        "email": f"{n}@example.com",
        "phone": "12 34" if n == "c2" else "+31201234567",
        "lines": [{"sku": "TEE-XXL" if n == "c3" else "TEE-M", "qty": 1}],
    }


@attrs.frozen
class Built:
    """Ids of the deliveries, by (event id, destination)."""

    ids: dict[tuple[str, str], str]

    def id(self, event_id: str, destination: str = "pos") -> str:
        return self.ids[(event_id, destination)]

    def prefix(self, delivery_id: str, at_least: int = 14) -> str:
        """The shortest prefix of ``delivery_id`` (``at_least`` characters)
        that no other delivery shares: ids made in the same millisecond share
        their first 12 characters, and a fixed length is sometimes ambiguous."""
        for n in range(at_least, len(delivery_id) + 1):
            head = delivery_id[:n]
            if sum(other.startswith(head) for other in self.ids.values()) <= 1:
                return head
        return delivery_id


def build_queue(url: str) -> Built:
    """pos: c1..c8 (c2 data_format, c3 mapping, c4 transient, c5 duplicate need
    action) and 30 bulk events that succeed; crm: c1 ok, c6 permission (crm is
    paused). Real clock, one attempt per delivery."""
    queue, idempotency = open_stores(url)
    try:
        pos = FlakyDestination("pos", per_event={k: [v] for k, v in POS_FAILURES.items()})
        crm = FlakyDestination("crm", per_event={"c6": [PermissionDeniedError("token revoked")]})
        dispatcher = Dispatcher(
            queue, idempotency, [pos, crm], retry=RetryPolicy(max_attempts=1, jitter=False)
        )
        customers = [
            Event(f"c{n}", "customer.created", payload(f"c{n}"), ordering_key=f"c{n}")
            for n in range(1, 9)
        ]
        dispatcher.submit_many(customers, to="pos")
        dispatcher.submit_many([customers[0], customers[5]], to="crm")
        dispatcher.submit_many(
            [Event(f"bulk-{n:02d}", "order.created", {"n": n}) for n in range(BULK)], to="pos"
        )
        dispatcher.run_until_idle()
        ids: dict[tuple[str, str], str] = {}
        cursor = None
        while True:
            page = queue.list(limit=100, cursor=cursor)
            ids.update({(d.event.id, d.destination): d.id for d in page.items})
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return Built(ids)
    finally:
        queue.close()
        idempotency.close()


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    """Run ``python -m resilient_sync ARGS`` for real; returns the CompletedProcess."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RESILIENT_SYNC_DB", "RESILIENT_SYNC_ACTOR")
    }
    environ.update(
        {"RESILIENT_SYNC_ACTOR": "tester", "PYTHONIOENCODING": "utf-8", "COLUMNS": COLUMNS}
    )
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "resilient_sync", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=cwd,
        check=False,
    )


def cli_json(*args: str, **kwargs: Any) -> Any:
    """Run a command with ``--json``; assert exit 0 and parse its output."""
    done = cli(*args, "--json", **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space (wrapped lines joined)."""
    return " ".join(text.split())


def assert_event_and_reason(out: str, pairs: dict[str, str]) -> None:
    """A delivery table shows the EVENT and REASON headers, and for each
    ``event id -> reason`` the event and the whole reason (perhaps wrapped);
    no line is wider than the terminal."""
    header = out[: out.index("\n", out.index("ID")) + 80]
    assert "EVENT" in header, out
    assert "REASON" in header, out
    text = flat(out)
    for event_id, reason in pairs.items():
        assert f" {event_id}" in text, (event_id, out)
        assert flat(reason) in text, (reason, out)
    too_wide = [line for line in out.splitlines() if len(line) > int(COLUMNS)]
    assert not too_wide, too_wide

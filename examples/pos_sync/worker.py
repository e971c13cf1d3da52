"""The worker: ``resilient-sync worker pos_sync.worker:build_dispatcher``.

Configured from the environment, as a service is (see
``docs/howto/deploy-a-worker.md`` for the systemd unit):

- ``RESILIENT_SYNC_DB``: the queue (default ``sqlite:///pos-sync.db``);
- ``TILLPOINT_URL`` and ``TILLPOINT_TOKEN``: the till's API.
"""

from __future__ import annotations

import os

from resilient_sync import Dispatcher, RetryPolicy
from resilient_sync.stores import open_stores

from .destination import TillPointCustomers


def build_dispatcher() -> Dispatcher:
    """The dispatcher the worker runs (``resilient-sync worker`` calls this)."""
    till = TillPointCustomers(os.environ["TILLPOINT_URL"], os.environ["TILLPOINT_TOKEN"])
    queue, idempotency = open_stores(os.environ.get("RESILIENT_SYNC_DB", "sqlite:///pos-sync.db"))
    return Dispatcher(
        queue,
        idempotency,
        [till],
        retry=RetryPolicy(max_attempts=10, initial_delay=5, max_delay=600, deadline=6 * 3600),
        batch_size=50,
        lease=120,
    )

"""PostgreSQL for the tests: reachability, a fresh schema per test, a TCP proxy.

The server is ``RESILIENT_SYNC_TEST_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Without it the PostgreSQL
tests are skipped with the reason, except under ``CI=true`` where they fail:
CI must prove them. Every test gets its own schema (random name), dropped
afterwards, so runs never see each other's rows.

The fixtures (``pg_dsn``, ``pg_schema``, ``pg_stores``) live in
``pg_fixtures.py``; a test module loads them with
``pytest_plugins = ["pg_fixtures"]``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import socket
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from resilient_sync import Attempt

PG_DSN = os.environ.get("RESILIENT_SYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


@functools.lru_cache(maxsize=1)
def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used (None when it can)."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}); pip install 'resilient-sync[postgres]'"
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"cannot connect to {PG_DSN}: {exc}".strip()
    return None


def require_postgres() -> str:
    """The DSN, or skip the test (fail it under ``CI=true``)."""
    reason = postgres_unavailable()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true but PostgreSQL is not usable: {reason}")
        pytest.skip(f"PostgreSQL not available: {reason}")
    return PG_DSN


def new_schema_name(prefix: str = "rs_test") -> str:
    """A schema name no other run uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def admin_connection() -> Any:
    """A plain autocommit connection for setting up and checking."""
    import psycopg

    return psycopg.connect(require_postgres(), autocommit=True)


def drop_schema(name: str) -> None:
    """Drop a test schema and everything in it."""
    with admin_connection() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def terminate_backends(application_name: str) -> int:
    """Kill every server connection with this ``application_name``; returns how many."""
    with admin_connection() as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            [application_name],
        ).fetchone()
    return int(row[0]) if row else 0


def with_params(dsn: str, **params: str | int) -> str:
    """The DSN with extra libpq parameters (host, port, application_name ...)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, **params)


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that can be cut, like a network blip.

    ``cut()`` closes every forwarded connection and refuses new ones until
    ``restore()``; the server behind it never notices anything but closed
    sockets.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._up = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    client, _ = self._listener.accept()
                    with self._lock:
                        up = self._up
                    if not up:
                        client.close()
                        continue
                    try:
                        upstream = socket.create_connection(self.target, timeout=3)
                    except OSError:
                        client.close()
                        continue
                    peers[client], peers[upstream] = upstream, client
                    sel.register(client, selectors.EVENT_READ)
                    sel.register(upstream, selectors.EVENT_READ)
                    continue
                other = peers.get(sock)
                data = b""
                with contextlib.suppress(OSError):
                    data = sock.recv(65536)
                if other is not None and data:
                    with contextlib.suppress(OSError):
                        other.sendall(data)
                        continue
                for s in (sock, other):
                    if s is not None and s in peers:
                        sel.unregister(s)
                        peers.pop(s, None)
                        s.close()
            with self._lock:
                cut = not self._up
            if cut and peers:
                for s in list(peers):
                    sel.unregister(s)
                    s.close()
                peers.clear()
        for s in peers:
            s.close()
        sel.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        with self._lock:
            self._up = False

    def restore(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def operator_audit(action: str, at: datetime | None = None) -> Attempt:
    """The audit record template of an operator's action (for ``transition``)."""
    when = at if at is not None else datetime(2024, 1, 1, tzinfo=timezone.utc)
    return Attempt(
        delivery_id=None,
        destination="",
        action=action,
        actor="ops",
        started_at=when,
        finished_at=when,
    )

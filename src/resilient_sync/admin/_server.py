"""``resilient-sync admin``: the panel on its own, served by uvicorn.

Sign-in comes from the environment (see :meth:`Login.from_env`); the
session key from ``RESILIENT_SYNC_ADMIN_SECRET`` (without it, a random key:
sign-ins end when the process stops); ``RESILIENT_SYNC_ADMIN_HTTPS=1``
marks the session cookie Secure (when a TLS proxy is in front).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from .._protocols import IdempotencyStore, QueueStore
from ._app import create_app
from ._auth import ENV_OPERATOR_TOKEN, ENV_USERS, Login

__all__ = ["ENV_HTTPS", "ENV_SECRET", "serve"]

#: The key that signs the session cookie (at least 16 characters).
ENV_SECRET = "RESILIENT_SYNC_ADMIN_SECRET"  # noqa: S105 - the variable's name
#: ``1`` marks the session cookie Secure (served behind TLS).
ENV_HTTPS = "RESILIENT_SYNC_ADMIN_HTTPS"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    queue: QueueStore,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    environ: Mapping[str, str] | None = None,
    idempotency: IdempotencyStore | None = None,
    label: str | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve the admin panel over ``queue`` with uvicorn until interrupted.

    Raises ``ValueError`` (before listening) when the environment lets
    nobody sign in or holds a malformed entry.
    """
    import uvicorn  # noqa: PLC0415 - the [admin] extra, only when serving

    env = os.environ if environ is None else environ
    stream = out if out is not None else sys.stderr
    login = Login.from_env(env)
    if not login.configured:
        raise ValueError(
            f"nobody could sign in: set {ENV_USERS} (name:role:password, e.g. "
            f"'ann:operator:...') or {ENV_OPERATOR_TOKEN} (a token of 16+ characters); "
            "see docs/howto/admin-panel.md"
        )
    secret = env.get(ENV_SECRET) or None
    https = env.get(ENV_HTTPS, "").strip().lower() in ("1", "true", "yes", "on")
    app = create_app(
        queue, login=login, idempotency=idempotency, secret_key=secret, https_only=https
    )
    where = f" over {label}" if label else ""
    print(f"resilient-sync admin: http://{host}:{port}/{where}", file=stream)
    if secret is None:
        print(f"  no {ENV_SECRET}: sign-ins end when this process stops", file=stream)
    if not _loopback(host) and not https:
        print(
            f"  listening on {host}: put it behind TLS and set {ENV_HTTPS}=1",
            file=stream,
        )
    stream.flush()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    uvicorn.Server(config).run()

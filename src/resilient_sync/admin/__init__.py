"""The admin panel (extra ``[admin]``: Starlette, Jinja2, uvicorn).

Support staff see what failed, why, and re-sync it from a web page; every
action goes through :class:`~resilient_sync.Operator` and names the
signed-in user in the audit trail. Mount it in your application::

    from resilient_sync.admin import User, create_app

    def authenticate(request):            # your own login
        account = request.session.get("account")
        if account is None:
            return None
        return User(account["email"], "operator" if account["staff"] else "viewer")

    app.mount("/admin", create_app(queue, authenticate=authenticate))

or run it alone: ``resilient-sync admin --db sqlite:///sync.db`` with
``RESILIENT_SYNC_ADMIN_USERS`` (or ``RESILIENT_SYNC_ADMIN_TOKEN``) and
``RESILIENT_SYNC_ADMIN_SECRET`` set. See ``docs/howto/admin-panel.md``.
"""

from __future__ import annotations

import importlib.util

_MISSING = [
    name
    for name, module in (
        ("starlette", "starlette"),
        ("jinja2", "jinja2"),
        ("itsdangerous", "itsdangerous"),
        ("python-multipart", "python_multipart"),
    )
    if importlib.util.find_spec(module) is None
]
if _MISSING:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"resilient_sync.admin needs {', '.join(_MISSING)}; install the extra: "
        "pip install 'resilient-sync[admin]'"
    )

from ._app import create_app  # noqa: E402
from ._auth import Authenticate, Login, Role, User  # noqa: E402
from ._server import serve  # noqa: E402

__all__ = ["Authenticate", "Login", "Role", "User", "create_app", "serve"]

"""Type-checked only (mypy --strict): the admin panel as a user mounts it,
with their own login, or serves it with the built-in one."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from resilient_sync.admin import Authenticate, Login, Role, User, create_app, serve
from resilient_sync.stores import open_stores


def staff(request: Request) -> User | None:
    account = request.session.get("account")
    if not isinstance(account, dict):
        return None
    role: Role = "operator" if account.get("staff") else "viewer"
    return User(str(account["email"]), role)


async def staff_async(request: Request) -> User | None:
    return staff(request)


def application() -> Starlette:
    queue, idempotency = open_stores("sqlite:///sync.db")
    hook: Authenticate = staff
    panel = create_app(
        queue,
        authenticate=hook,
        idempotency=idempotency,
        login_url="/login",
        create_anyway_field="allow_duplicate",
        title="Shop sync",
        page_size=100,
    )
    create_app(queue, authenticate=staff_async, secret_key=os.environ["ADMIN_SECRET"])
    return Starlette(routes=[Mount("/admin", panel)])


def standalone() -> None:
    queue, _ = open_stores("sqlite:///sync.db")
    login = Login(users={"ann": ("a-long-password", "operator")}, viewer_token="v" * 16)
    create_app(queue, login=login, https_only=True)
    create_app(queue, login=Login.from_env(os.environ))
    user = User("ann", "operator")
    if user.can_act:
        serve(queue, host="127.0.0.1", port=8080, environ={"RESILIENT_SYNC_ADMIN_TOKEN": "t" * 16})

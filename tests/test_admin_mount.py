"""The panel mounted inside a host application (Starlette here; FastAPI mounts
the same way): the host's own login through ``authenticate``, links and
redirects under the mount path, the host's session left alone, and failures
shown as pages, never tracebacks."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from admin_support import Panel, login, populate, text_of
from resilient_sync import DeliveryStatus, StoreError
from resilient_sync.admin import User, create_app
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore


def staff_login(request: Request) -> User | None:
    account = request.session.get("account")
    if account is None:
        return None
    return User(account["email"], "operator" if account["staff"] else "viewer")


async def async_staff_login(request: Request) -> User | None:
    return staff_login(request)


def host(
    queue: Any,
    authenticate: Callable[[Request], Any] = staff_login,
    **options: Any,
) -> Starlette:
    async def home(request: Request) -> Response:
        return PlainTextResponse(f"host account: {request.session.get('account')}")

    async def sign_in(request: Request) -> Response:
        request.session["account"] = {
            "email": request.query_params["as"],
            "staff": request.query_params.get("staff") == "1",
        }
        return PlainTextResponse("signed in")

    admin = create_app(queue, authenticate=authenticate, **options)
    return Starlette(
        routes=[Route("/", home), Route("/signin", sign_in), Mount("/admin", admin)],
        middleware=[Middleware(SessionMiddleware, secret_key="the-host-apps-secret")],
    )


@pytest.fixture
def queue() -> MemoryQueueStore:
    queue = MemoryQueueStore()
    populate(queue, MemoryIdempotencyStore())
    return queue


def outside(panel: Panel, path: str) -> Any:
    prefix, panel.prefix = panel.prefix, ""
    try:
        return panel.get(path)
    finally:
        panel.prefix = prefix


@pytest.mark.parametrize("authenticate", [staff_login, async_staff_login])
def test_mounted_under_a_prefix_with_the_hosts_login(
    queue: MemoryQueueStore, authenticate: Callable[[Request], Any]
) -> None:
    panel = Panel(host(queue, authenticate, login_url="/signin"), prefix="/admin")
    anonymous = panel.get("/deliveries?status=needs_action")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == (
        "/signin?next=%2Fadmin%2Fdeliveries%3Fstatus%3Dneeds_action"
    )
    assert outside(panel, "/signin?as=ann@shop.example&staff=1").text == "signed in"
    page = panel.get("/")
    assert page.status_code == 200
    assert 'href="/admin/deliveries?status=needs_action"' in page.text
    assert 'href="/admin/static/admin.css"' in page.text
    assert 'action="/admin/destinations/resume"' in page.text
    assert 'href="/deliveries' not in page.text
    assert "Sign out" not in page.text  # the host's login, the host's sign-out
    assert panel.get("/static/admin.css").status_code == 200
    failed = panel.get("/deliveries?status=needs_action")
    first = failed.text.split('<tr data-id="', 1)[1].split('"', 1)[0]
    assert f'href="/admin/deliveries/{first}"' in failed.text
    done = panel.act("/deliveries/retry", {"one": first, "next": "/admin/deliveries"})
    assert done.headers["location"] == "/admin/deliveries"
    assert queue.get(first).status is DeliveryStatus.PENDING  # type: ignore[union-attr]
    assert queue.attempts(first)[-1].actor == "ann@shop.example"
    elsewhere = panel.act("/deliveries/retry", {"one": first, "next": "/signin?as=evil"})
    assert elsewhere.headers["location"] == "/admin/deliveries"  # never outside the panel
    assert outside(panel, "/").text == (
        "host account: {'email': 'ann@shop.example', 'staff': True}"
    )


def test_the_hosts_viewers_cannot_act(queue: MemoryQueueStore) -> None:
    panel = Panel(host(queue), prefix="/admin")
    outside(panel, "/signin?as=vic@shop.example")
    page = panel.get("/deliveries?status=needs_action")
    assert "vic@shop.example" in page.text
    assert "Re-sync selected" not in page.text
    target = page.text.split('<tr data-id="', 1)[1].split('"', 1)[0]
    refused = panel.act("/deliveries/retry", {"one": target})
    assert refused.status_code == 403
    assert queue.get(target).status is DeliveryStatus.NEEDS_ACTION  # type: ignore[union-attr]


def test_without_a_login_url_a_stranger_gets_a_401_page(queue: MemoryQueueStore) -> None:
    panel = Panel(host(queue), prefix="/admin")
    page = panel.get("/")
    assert page.status_code == 401
    assert "Sign in to the application first" in page.text
    assert panel.get("/login").status_code == 404  # no built-in sign-in here


def test_an_authenticate_that_returns_something_else_is_a_500_page(
    queue: MemoryQueueStore, caplog: pytest.LogCaptureFixture
) -> None:
    panel = Panel(create_app(queue, authenticate=lambda request: "ann"))
    page = panel.get("/")
    assert page.status_code == 500
    assert "Something went wrong" in page.text
    assert "Traceback" not in page.text
    assert "must return a resilient_sync.admin.User or None" in caplog.text


class Broken(MemoryQueueStore):
    """A store that fails the way real ones do."""

    def stats(self) -> Any:
        raise StoreError("SQLite store sync.db: database is locked (while reading stats)")

    def get(self, delivery_id: str) -> Any:
        raise RuntimeError("a bug with password=hunter2 in it")


def test_store_failures_and_bugs_are_pages_not_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    panel = Panel(create_app(Broken(), login=login(), secret_key="s" * 16))
    assert panel.sign_in("ann", "ann-password-1").status_code == 303
    down = panel.get("/")
    assert down.status_code == 503
    assert "The queue store is unavailable" in down.text
    assert "database is locked" in down.text
    bug = panel.get("/deliveries/some-id")
    assert bug.status_code == 500
    assert "Something went wrong" in bug.text
    assert "hunter2" not in bug.text
    assert "Traceback" not in bug.text
    assert "hunter2" not in caplog.text  # the log passes the redacting gate too


def test_create_app_refuses_what_could_not_work() -> None:
    queue = MemoryQueueStore()
    with pytest.raises(ValueError, match="exactly one of authenticate="):
        create_app(queue)
    with pytest.raises(ValueError, match="exactly one of authenticate="):
        create_app(queue, authenticate=staff_login, login=login())
    from resilient_sync.admin import Login

    with pytest.raises(ValueError, match="nobody could sign in"):
        create_app(queue, login=Login())
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(queue, login=login(), secret_key="short")
    with pytest.raises(ValueError, match="page_size must be one of"):
        create_app(queue, login=login(), page_size=7)
    with pytest.raises(ValueError, match="role is 'viewer' or 'operator'"):
        User("ann", "admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a name"):
        User(" ")


def test_an_empty_queue_has_pages_too() -> None:
    panel = Panel(create_app(MemoryQueueStore(), login=login(), secret_key="s" * 16))
    panel.sign_in("vic", "vic-password-1")
    overview = panel.get("/?range=30d")
    assert overview.status_code == 200
    assert "The queue is empty: nothing was submitted yet." in overview.text
    assert "No failed attempts in this period" in overview.text
    assert "No failed attempts recorded." in overview.text
    assert "No deliveries match" in panel.get("/deliveries").text
    assert "No potential duplicates wait for a person" in panel.get("/duplicates").text
    unknown = panel.get("/deliveries?destination=pos")
    assert unknown.status_code == 400
    assert "unknown destination 'pos'; known: none yet" in text_of(unknown)


def _session_of(panel: Panel) -> dict[str, Any]:
    """The panel's own session cookie, decoded (signed, not encrypted: anyone
    holding the cookie can read it)."""
    cookie = panel.cookies.get("resilient_sync_admin")
    assert cookie is not None
    data = cookie.split(".", 1)[0]
    decoded: dict[str, Any] = json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))
    return decoded


def test_a_csrf_token_minted_for_someone_else_is_refused() -> None:
    """An attacker can mint a panel cookie with a readable token (any page
    sets one, a 404 too); planted in an operator's browser (a sibling
    subdomain, plain HTTP), its token must not carry the operator's action."""
    queue = MemoryQueueStore()
    built = populate(queue, MemoryIdempotencyStore())
    app = host(queue)
    attacker = Panel(app, prefix="/admin")
    assert attacker.get("/no-such-page").status_code == 404
    minted = attacker.cookies.get("resilient_sync_admin")
    token = _session_of(attacker)["csrf"]

    operator = Panel(app, prefix="/admin")
    outside(operator, "/signin?as=ann@shop.test&staff=1")
    operator.cookies.set("resilient_sync_admin", minted or "", domain="admin.test", path="/")
    target = built.id("c2")
    response = operator.post(
        "/deliveries/discard", {"csrf_token": token, "one": target, "note": "planted"}
    )
    assert response.status_code == 403
    assert "nothing was changed" in text_of(response)
    assert queue.get(target).status is DeliveryStatus.NEEDS_ACTION  # type: ignore[union-attr]
    # the operator's own page gives a token of theirs, which works
    mine = operator.csrf("/deliveries")
    assert mine != token
    done = operator.post("/deliveries/discard", {"csrf_token": mine, "one": target, "note": "n"})
    assert done.status_code == 303
    assert queue.get(target).status is DeliveryStatus.DISCARDED  # type: ignore[union-attr]

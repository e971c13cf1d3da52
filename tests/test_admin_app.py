"""The admin panel through its ASGI interface, on every store (memory, SQLite,
PostgreSQL): every page and action, refused access, a viewer trying to act,
missing and wrong CSRF tokens, bad input (a message on the page, nothing
changed), and markup from the store always escaped."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from admin_support import (
    OPERATOR,
    SECRET,
    TOKEN,
    VIEWER,
    XSS,
    Built,
    Panel,
    flashes,
    login,
    populate,
    text_of,
)
from resilient_sync import Attempt, Delivery, DeliveryStatus, ErrorCategory
from resilient_sync._runbook import advice_for
from resilient_sync.admin import create_app
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, open_stores
from resilient_sync.testing import FakeClock

pytest_plugins = ["pg_fixtures"]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    if request.param == "memory":
        yield MemoryQueueStore(), MemoryIdempotencyStore()
    elif request.param == "sqlite":
        queue, idempotency = open_stores(f"sqlite:///{tmp_path / 'queue.db'}")
        try:
            yield queue, idempotency
        finally:
            queue.close()
            idempotency.close()
    else:
        yield request.getfixturevalue("pg_stores")


@attrs.define
class World:
    queue: Any
    idempotency: Any
    built: Built
    app: Any

    def panel(self, who: tuple[str, str] = OPERATOR) -> Panel:
        panel = Panel(self.app)
        response = panel.sign_in(*who)
        assert response.status_code == 303, response.text[:500]
        return panel

    def id(self, event_id: str, destination: str = "pos") -> str:
        return self.built.id(event_id, destination)

    def get(self, event_id: str, destination: str = "pos") -> Delivery:
        found = self.queue.get(self.id(event_id, destination))
        assert found is not None
        return found

    def trail(self, event_id: str, destination: str = "pos") -> list[Attempt]:
        return list(self.queue.attempts(self.id(event_id, destination)))

    def statuses(self) -> dict[str, str]:
        out = {}
        for (event_id, destination), delivery_id in self.built.ids.items():
            found = self.queue.get(delivery_id)
            out[f"{event_id}@{destination}"] = found.status.value if found else "gone"
        return out


@pytest.fixture
def world(stores: tuple[Any, Any]) -> World:
    queue, idempotency = stores
    built = populate(queue, idempotency)
    app = create_app(
        queue,
        login=login(),
        idempotency=idempotency,
        secret_key=SECRET,
        create_anyway_field="allow_duplicate",
    )
    return World(queue, idempotency, built, app)


PAGES = ["/", "/deliveries", "/deliveries?status=needs_action", "/duplicates"]


# --- access ------------------------------------------------------------------------------


def test_nothing_is_served_without_signing_in(world: World) -> None:
    anonymous = Panel(world.app)
    for path in [*PAGES, f"/deliveries/{world.id('c2')}", "/deliveries/retry-all"]:
        response = anonymous.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")
    before = world.statuses()
    token = anonymous.csrf("/login")  # even with a token of its own session
    for path in [
        "/deliveries/retry",
        "/deliveries/resolve",
        "/deliveries/discard",
        "/deliveries/retry-all",
        f"/deliveries/{world.id('c2')}/edit",
        "/duplicates/link",
        "/duplicates/create-anyway",
        "/destinations/resume",
    ]:
        response = anonymous.post(
            path, {"csrf_token": token, "one": world.id("c2"), "note": "x", "name": "crm"}
        )
        assert response.status_code == 401, path
        assert "Sign in first" in response.text
    assert world.statuses() == before
    assert anonymous.get("/login").status_code == 200
    assert anonymous.get("/static/admin.css").status_code == 200


def test_wrong_credentials_are_refused_then_throttled(world: World) -> None:
    panel = Panel(world.app)
    for secret in ["wrong", "", "vic-password-1"]:  # vic's password is not ann's
        response = panel.sign_in("ann", secret)
        assert response.status_code == 401
        assert "Wrong name, password or token" in response.text
    assert panel.sign_in("nobody", "whatever").status_code == 401
    assert panel.get("/").status_code == 303
    panel.sign_in("ann", "wrong")
    panel.sign_in("ann", "wrong")
    response = panel.sign_in("ann", OPERATOR[1])  # the right password, too late
    assert response.status_code == 429
    assert "Too many failed sign-ins" in response.text
    assert panel.get("/").status_code == 303
    assert panel.sign_in(*VIEWER).status_code == 303  # another name from there still may


def test_sign_in_go_back_where_you_were_and_sign_out(world: World) -> None:
    panel = Panel(world.app)
    first = panel.get("/deliveries?status=needs_action")
    assert first.headers["location"] == "/login?next=%2Fdeliveries%3Fstatus%3Dneeds_action"
    form = panel.get(first.headers["location"])
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    assert 'name="next" value="/deliveries?status=needs_action"' in form.text
    response = panel.post(
        "/login",
        {
            "csrf_token": token.group(1),
            "name": "ann",
            "secret": OPERATOR[1],
            "next": "/deliveries?status=needs_action",
        },
    )
    assert response.headers["location"] == "/deliveries?status=needs_action"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert panel.get("/").status_code == 200
    assert panel.post("/logout", {"csrf_token": "forged"}).status_code == 403
    assert panel.get("/").status_code == 200
    out = panel.act("/logout")
    assert out.headers["location"] == "/login"
    assert panel.get("/").status_code == 303


def test_signing_out_ends_a_copy_of_the_session_too() -> None:
    """Sessions are signed cookies: a copy taken before sign-out (another
    browser, a stolen cookie) must not outlive it."""
    app = create_app(MemoryQueueStore(), login=login(), secret_key=SECRET)
    panel = Panel(app)
    assert panel.sign_in(*OPERATOR).status_code == 303
    copy = Panel(app)
    copy.cookies = httpx.Cookies(panel.cookies)
    assert copy.get("/").status_code == 200
    token = copy.csrf("/deliveries")
    assert panel.act("/logout").status_code == 303
    assert copy.get("/").status_code == 303  # to the sign-in page
    refused = copy.post("/destinations/resume", {"csrf_token": token, "name": "crm", "note": "n"})
    assert refused.status_code == 401
    # signing in again gives a working session
    again = Panel(app)
    assert again.sign_in(*OPERATOR).status_code == 303
    assert again.get("/").status_code == 200


def test_a_session_ends_12_hours_after_sign_in_however_much_it_is_used() -> None:
    clock = FakeClock()
    app = create_app(MemoryQueueStore(), login=login(), secret_key=SECRET, clock=clock)
    panel = Panel(app)
    assert panel.sign_in(*OPERATOR).status_code == 303
    for _ in range(11):
        clock.advance(3600)
        assert panel.get("/").status_code == 200  # each answer re-signs the cookie
    clock.advance(3600)
    expired = panel.get("/")
    assert expired.status_code == 303
    assert "expired" in text_of(panel.follow(expired))


def test_a_login_never_redirects_to_another_site(world: World) -> None:
    for target in ["https://evil.example/", "//evil.example/x", "/\\evil", "javascript:x"]:
        panel = Panel(world.app)
        token = panel.csrf("/login")
        response = panel.post(
            "/login",
            {"csrf_token": token, "name": "ann", "secret": OPERATOR[1], "next": target},
        )
        assert response.headers["location"] == "/", target


def test_a_token_signs_in_under_the_typed_name(world: World) -> None:
    panel = Panel(world.app)
    assert panel.sign_in("Bob", TOKEN).status_code == 303
    assert "Bob (token)" in panel.get("/").text
    panel.act("/deliveries/retry", {"one": world.id("c4")})
    assert world.trail("c4")[-1].actor == "Bob (token)"


def test_a_session_ends_when_its_credential_changes(world: World) -> None:
    panel = world.panel()
    assert panel.get("/").status_code == 200
    from resilient_sync.admin import Login

    changed = Login(users={"ann": ("a-new-password", "operator")})
    panel.app = create_app(world.queue, login=changed, secret_key=SECRET)
    response = panel.get("/")
    assert response.status_code == 303
    assert panel.get("/deliveries").status_code == 303


def test_a_forged_or_foreign_session_cookie_is_no_session(world: World) -> None:
    panel = world.panel()
    stolen = panel.cookies.get("resilient_sync_admin")
    assert stolen
    forged = Panel(world.app)
    forged.cookies.set("resilient_sync_admin", stolen[:-3] + "abc", domain="admin.test")
    assert forged.get("/").status_code == 303
    other = create_app(world.queue, login=login(), secret_key="another-secret-of-16+")
    foreign = Panel(other)
    foreign.cookies.set("resilient_sync_admin", stolen, domain="admin.test")
    assert foreign.get("/").status_code == 303


# --- CSRF and roles ------------------------------------------------------------------


def test_actions_need_this_sessions_csrf_token(world: World) -> None:
    panel = world.panel()
    intruder = world.panel()
    their_token = intruder.csrf()
    before = world.statuses()
    trail = len(world.trail("c2"))
    for data in [
        {},
        {"csrf_token": ""},
        {"csrf_token": "not-the-token"},
        {"csrf_token": their_token},
    ]:
        for path in ["/deliveries/retry", "/deliveries/discard", "/destinations/resume"]:
            response = panel.post(path, {**data, "one": world.id("c2"), "note": "n", "name": "crm"})
            assert response.status_code == 403, (path, data)
            assert "nothing was changed" in text_of(response)
        edit = panel.post(
            f"/deliveries/{world.id('c2')}/edit",
            {**data, "set-path-0": "phone", "set-value-0": "+31611111111", "retry": "1"},
        )
        assert edit.status_code == 403
    assert world.statuses() == before
    assert len(world.trail("c2")) == trail
    assert world.get("c2").event.payload["phone"] == "12 34"


def test_a_viewer_sees_no_action_and_cannot_act(world: World) -> None:
    viewer = world.panel(VIEWER)
    listing = viewer.get("/deliveries?status=needs_action")
    assert listing.status_code == 200
    for marker in [
        'name="ids"',
        ">Re-sync<",
        "Re-sync selected",
        "Re-sync all matching",
        "Discard selected",
    ]:
        assert marker not in listing.text
    detail = viewer.get(f"/deliveries/{world.id('c2')}")
    assert "Correct the payload" not in detail.text
    assert ">Re-sync<" not in detail.text
    assert ">Discard<" not in detail.text
    overview = viewer.get("/")
    assert "Resume crm" not in overview.text
    assert "An operator resumes it" in overview.text
    duplicates = viewer.get("/duplicates")
    assert "Link to existing</button>" not in duplicates.text
    before = world.statuses()
    for path, data in [
        ("/deliveries/retry", {"one": world.id("c2")}),
        ("/deliveries/resolve", {"one": world.id("c2"), "note": "x"}),
        ("/deliveries/retry-all", {"status": "needs_action"}),
        ("/duplicates/link", {"id": world.id("c5"), "note": "x"}),
        ("/destinations/resume", {"name": "crm"}),
        (f"/deliveries/{world.id('c2')}/edit", {"set-path-0": "phone", "set-value-0": "1"}),
    ]:
        response = viewer.act(path, data)
        assert response.status_code == 403, path
        assert "Viewers cannot change anything" in response.text
    assert viewer.get("/deliveries/retry-all?status=needs_action").status_code == 403
    assert world.statuses() == before
    assert world.queue.destinations()["crm"].paused


# --- the overview ------------------------------------------------------------------------


def test_overview_counts_needs_action_halts_trend_and_recent_errors(world: World) -> None:
    panel = world.panel()
    page = panel.get("/")
    assert page.status_code == 200
    text = text_of(page)
    assert "7 need action" in text  # c2 c3 c4 c5 k1 markup (pos), c6 (crm)
    for category in (ErrorCategory.DATA_FORMAT, ErrorCategory.PERMISSION):
        assert advice_for(category).action in text
    assert 'href="/deliveries?status=needs_action&amp;destination=pos&amp;category=mapping"' in (
        page.text
    )
    assert "crm is paused since" in text
    assert "token revoked" in text
    assert "Resume crm" in text
    assert "Oldest waiting delivery: submitted" in text  # k2 waits behind k1
    assert page.text.count("<rect ") >= 5  # bars (and the legend has none)
    assert "Failed attempts per hour by category (UTC): 7 failed attempts" in text
    assert "1 delivery, needs action" in text
    assert re.search(r"\d\d:\d\d permission refused crm token revoked", text)
    for query, title in [
        ("?range=7d", "per day"),
        ("?range=30d", "per day"),
        ("?range=7d&bucket=hour", "per hour"),
    ]:
        other = panel.get("/" + query)
        assert other.status_code == 200
        assert f"Failed attempts {title}" in other.text
    bad = panel.get("/?range=1y&bucket=minute")
    assert bad.status_code == 400
    assert "unknown range '1y'" in text_of(bad)
    assert "unknown bucket 'minute'" in text_of(bad)


def test_resume_a_paused_destination(world: World) -> None:
    panel = world.panel()
    response = panel.act("/destinations/resume", {"name": "crm", "note": "new token"}, page="/")
    page = panel.follow(response)
    ((kind, message),) = flashes(page)
    assert kind == "ok"
    assert "Resumed crm" in message
    assert "1 deliveries failed with the permission error" in message
    assert not world.queue.destinations()["crm"].paused
    again = panel.follow(panel.act("/destinations/resume", {"name": "crm"}, page="/"))
    assert flashes(again) == [("error", "'crm' is not paused; nothing to do.")]
    unknown = panel.follow(panel.act("/destinations/resume", {"name": "<b>x</b>"}, page="/"))
    assert "&lt;b&gt;" in unknown.text
    assert "<b>x</b>" not in unknown.text


# --- the deliveries list ----------------------------------------------------------------


def rows(page: Any) -> list[str]:
    return re.findall(r'<tr data-id="([^"]+)"', page.text)


def test_filters_narrow_the_list(world: World) -> None:
    panel = world.panel()
    failed = panel.get("/deliveries?status=needs_action")
    assert failed.status_code == 200
    assert "<h1>Sync failed</h1>" in failed.text
    assert set(rows(failed)) == {world.id(e) for e in ("c2", "c3", "c4", "c5", "k1", XSS)} | {
        world.id("c6", "crm")
    }
    assert rows(panel.get("/deliveries?destination=crm")) == [
        world.id("c1", "crm"),
        world.id("c6", "crm"),
    ]
    assert rows(panel.get("/deliveries?category=mapping")) == [world.id("c3")]
    assert rows(panel.get("/deliveries?status=needs_action&category=data-format")) == [
        world.id("c2"),
        world.id(XSS),
        world.id("k1"),
    ]
    assert len(rows(panel.get("/deliveries?type=order.created&limit=100"))) == 12
    assert rows(panel.get("/deliveries?q=C3%40EXAMPLE")) == [world.id("c3")]
    assert rows(panel.get("/deliveries?status=pending&status=retry_scheduled")) == [world.id("k2")]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert len(rows(panel.get(f"/deliveries?from={today}&to={today}&limit=100"))) == len(
        world.built.ids
    )
    assert rows(panel.get("/deliveries?from=2999-01-01")) == []
    assert rows(panel.get("/deliveries?to=2000-01-01T10:30")) == []
    empty = panel.get("/deliveries?q=nothing-like-this")
    assert "No deliveries match" in empty.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("destination=nowhere", "unknown destination 'nowhere'; known: crm, pos"),
        ("status=lost", "unknown status 'lost'"),
        ("category=gremlins", "unknown category 'gremlins'"),
        ("from=yesterday", "from 'yesterday' is not a date"),
        ("from=2026-02-02&to=2026-01-01", "'from' (2026-02-02) must be before 'to'"),
        ("cursor=xyz", "invalid page cursor 'xyz'"),
        ("limit=7", "page size '7' is not one of 20, 50, 100, 200"),
        ("destination=%3Cscript%3E", "unknown destination '<script>'"),
    ],
)
def test_bad_filters_are_a_message_and_list_nothing(world: World, query: str, message: str) -> None:
    page = world.panel().get(f"/deliveries?{query}")
    assert page.status_code == 400
    assert any(message in text for kind, text in flashes(page) if kind == "error"), flashes(page)
    assert rows(page) == []
    assert "Nothing is listed until the filters above are corrected" in page.text
    assert "<script>" not in page.text


def test_keyset_pages_go_through_everything_once(world: World) -> None:
    panel = world.panel()
    seen: list[str] = []
    page = panel.get("/deliveries?limit=20")
    while True:
        seen += rows(page)
        found = re.search(r'href="(/deliveries\?[^"]*cursor=[^"]+)" rel="next"', page.text)
        if found is None:
            break
        page = panel.get(found.group(1).replace("&amp;", "&"))
        assert "First page" in page.text
    assert len(seen) == len(set(seen)) == len(world.built.ids)


# --- acting on deliveries -----------------------------------------------------------------


def test_resync_one_and_selected(world: World) -> None:
    panel = world.panel()
    back = "/deliveries?status=needs_action"
    response = panel.act("/deliveries/retry", {"one": world.id("c4"), "next": back})
    assert response.headers["location"] == back
    assert flashes(panel.follow(response)) == [("ok", "Re-synced 1 delivery.")]
    assert world.get("c4").status is DeliveryStatus.PENDING
    record = world.trail("c4")[-1]
    assert (record.action, record.actor) == ("retry", "ann")
    both = panel.act(
        "/deliveries/retry",
        {"ids": [world.id("c3"), world.id("c1")], "note": "mapping added"},
    )
    ((kind, message),) = flashes(panel.follow(both))
    assert kind == "ok"
    assert message.startswith("Re-synced 1 delivery. 1 left as they were")
    assert "is succeeded); retry applies to discarded, needs_action, retry_scheduled" in message
    assert world.trail("c3")[-1].reason == "mapping added"
    nothing = panel.follow(panel.act("/deliveries/retry", {}))
    assert flashes(nothing) == [
        ("error", "Select at least one delivery first; nothing was changed.")
    ]


def test_resolve_and_discard_need_a_note(world: World) -> None:
    panel = world.panel()
    before = world.statuses()
    for action in ("resolve", "discard"):
        page = panel.follow(panel.act(f"/deliveries/{action}", {"ids": [world.id("c2")]}))
        assert flashes(page) == [
            (
                "error",
                (
                    f"A note is required to {action} (say why; it goes into the audit trail). "
                    "Nothing was changed."
                ),
            )
        ]
    assert world.statuses() == before
    panel.act("/deliveries/resolve", {"ids": [world.id("c2")], "note": "fixed in the POS"})
    panel.act("/deliveries/discard", {"one": world.id("c3"), "note": "test order"})
    assert world.get("c2").status is DeliveryStatus.RESOLVED
    assert world.get("c3").status is DeliveryStatus.DISCARDED
    resolved = world.trail("c2")[-1]
    assert (resolved.action, resolved.actor, resolved.reason) == (
        "resolve",
        "ann",
        "fixed in the POS",
    )


def test_an_unknown_id_changes_nothing(world: World) -> None:
    panel = world.panel()
    before = world.statuses()
    page = panel.follow(panel.act("/deliveries/retry", {"ids": [world.id("c2"), "no-such-id"]}))
    assert flashes(page) == [("error", "no delivery with id 'no-such-id'; nothing was changed.")]
    assert world.statuses() == before


def test_resync_all_matching_counts_first_then_runs_in_batches(world: World) -> None:
    panel = world.panel()
    confirm = panel.get("/deliveries/retry-all?destination=pos&category=data_format")
    assert confirm.status_code == 200
    text = text_of(confirm)
    assert "3 deliveries match: status needs_action, destination pos, category data_format" in (
        text
    )
    assert "Nothing has changed yet" in text
    assert world.get("c2").status is DeliveryStatus.NEEDS_ACTION
    token = re.search(r'name="csrf_token" value="([^"]+)"', confirm.text)
    assert token is not None
    started = panel.post(
        "/deliveries/retry-all",
        {
            "csrf_token": token.group(1),
            "destination": "pos",
            "category": "data_format",
            "note": "the POS accepts it now",
        },
    )
    assert started.status_code == 303
    job_url = started.headers["location"]
    assert job_url.startswith("/jobs/")
    deadline = time.monotonic() + 20
    while True:
        page = panel.get(job_url)
        if "Done:" in page.text or time.monotonic() > deadline:
            break
        assert '<meta http-equiv="refresh" content="1">' in page.text
        time.sleep(0.05)
    assert "Done: re-synced 3 of 3 matching deliveries." in text_of(page)
    assert '<meta http-equiv="refresh"' not in page.text
    for event_id in ("c2", "k1", XSS):
        assert world.get(event_id).status is DeliveryStatus.PENDING
        assert world.trail(event_id)[-1].reason == "the POS accepts it now"
    assert world.get("c3").status is DeliveryStatus.NEEDS_ACTION
    listing = panel.get("/deliveries?status=needs_action")
    assert 'Sync failed <span class="count">4</span>' in listing.text


def test_resync_all_refuses_what_cannot_be_resynced(world: World) -> None:
    panel = world.panel()
    page = panel.get("/deliveries/retry-all?status=succeeded")
    assert page.status_code == 400
    assert "succeeded deliveries cannot be re-synced" in text_of(page)
    before = world.statuses()
    done = panel.act("/deliveries/retry-all", {"status": "succeeded"})
    assert "succeeded deliveries cannot be re-synced" in flashes(panel.follow(done))[0][1]
    bad = panel.follow(panel.act("/deliveries/retry-all", {"destination": "nowhere"}))
    assert "unknown destination 'nowhere'" in flashes(bad)[0][1]
    assert world.statuses() == before
    nothing = panel.get("/deliveries/retry-all?q=no-such-text")
    assert "No delivery matches" in nothing.text
    assert panel.get("/jobs/unknown").status_code == 404


# --- one delivery ------------------------------------------------------------------


def test_delivery_page_shows_the_error_the_field_the_trail_and_what_it_waits_for(
    world: World,
) -> None:
    panel = world.panel()
    page = panel.get(f"/deliveries/{world.id('c2')}")
    assert page.status_code == 200
    assert '<span class="line marked">  &#34;phone&#34;: &#34;12 34&#34;,</span>' in page.text
    text = text_of(page)
    assert "Last error: data rejected phone is invalid Field: phone" in text
    assert f"What to do: {advice_for(ErrorCategory.DATA_FORMAT).action}." in text
    assert "a person: correct the value" in text
    assert re.search(r"deliver attempt 1 by worker:\S+ → needs action data format", text)
    blocked = panel.get(f"/deliveries/{world.id('k2')}")
    assert (
        f"blocked behind {world.id('k1')}, which needs action: a person must re-sync, resolve "
        "or discard it first (same ordering key 'cust-7')"
    ) in text_of(blocked)
    missing = panel.get(f"/deliveries/{world.id('k1')}")
    assert "The field vat_number is not in the payload: add it below" in text_of(missing)
    assert 'name="add-path-0" value="vat_number"' in missing.text
    done = panel.get(f"/deliveries/{world.id('c1')}")
    assert "What it is waiting for" not in done.text
    unknown = panel.get("/deliveries/does-not-exist")
    assert unknown.status_code == 404
    assert "no delivery with id 'does-not-exist'" in text_of(unknown)


def edit_form(**fields: str) -> dict[str, str]:
    return {"retry": "1", **fields}


def test_edit_and_resync(world: World) -> None:
    panel = world.panel()
    url = f"/deliveries/{world.id('c2')}"
    before_key = world.get("c2").idempotency_key
    response = panel.act(
        f"{url}/edit",
        edit_form(**{"set-path-0": "phone", "set-value-0": "+31612345678", "note": "typo"}),
        page=url,
    )
    assert response.headers["location"] == url
    page = panel.follow(response)
    assert flashes(page)[0] == (
        "ok",
        (
            "Edited phone and re-synced: the next worker run delivers the corrected payload "
            "under a new idempotency key."
        ),
    )
    delivery = world.get("c2")
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.event.payload["phone"] == "+31612345678"
    assert delivery.idempotency_key.startswith(before_key + ":")
    record = world.trail("c2")[-1]
    assert (record.action, record.actor) == ("edit", "ann")
    assert record.details["before"] == {"payload.phone": "12 34"}
    assert "+31612345678" in text_of(page)  # the timeline shows old -> new


def test_edit_adds_a_missing_field_and_json_values(world: World) -> None:
    panel = world.panel()
    url = f"/deliveries/{world.id('k1')}"
    panel.act(
        f"{url}/edit",
        {
            "add-path-0": "vat_number",
            "add-value-0": "NL123456789B01",
            "add-path-1": "tags",
            "add-value-1": '["vip", 2]',
            "add-json-1": "1",
        },
        page=url,
    )
    delivery = world.get("k1")
    assert delivery.event.payload["vat_number"] == "NL123456789B01"
    assert delivery.event.payload["tags"] == ["vip", 2]
    assert delivery.status is DeliveryStatus.NEEDS_ACTION  # "re-sync" was not ticked


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"set-path-0": "phone", "set-value-0": "{oops", "set-json-0": "1"}, "is not JSON"),
        ({"set-path-0": "", "set-value-0": "+316"}, "has no field path next to it"),
        ({}, "the form changes nothing"),
        ({"set-path-0": "phnoe", "set-value-0": "1"}, "The edit was refused"),
        ({"set-path-0": "phone", "set-value-0": "12 34"}, "changes nothing"),
        ({"set-path-0": "lines[", "set-value-0": "1"}, "invalid payload path"),
    ],
)
def test_a_bad_or_refused_edit_is_a_message_and_changes_nothing(
    world: World, fields: dict[str, str], message: str
) -> None:
    panel = world.panel()
    url = f"/deliveries/{world.id('c2')}"
    trail = len(world.trail("c2"))
    page = panel.act(f"{url}/edit", edit_form(**fields), page=url)
    assert page.status_code == 400
    assert any(message in text for _, text in flashes(page)), flashes(page)
    assert 'id="edit"' in page.text  # the form is shown again, as typed
    for name, value in fields.items():
        if name.endswith(("path-0", "value-0")) and value:
            assert f'name="{name}" value="{value}"'.replace('"{', '"&#34;{') in page.text or (
                value in page.text
            )
    assert len(world.trail("c2")) == trail
    assert world.get("c2").event.payload["phone"] == "12 34"


def test_an_unsafe_edit_is_refused_with_the_reason_unless_forced(world: World) -> None:
    panel = world.panel()
    url = f"/deliveries/{world.id('c4')}"  # a 503: pos may have applied it
    page = panel.get(url)
    assert "Careful: attempt 1 failed with a transient error" in text_of(page)
    assert 'name="force"' in page.text
    fields = {"set-path-0": "phone", "set-value-0": "+31699999999"}
    refused = panel.act(f"{url}/edit", edit_form(**fields), page=url)
    assert refused.status_code == 400
    assert "The edit was refused" in flashes(refused)[0][1]
    assert "may have applied the original payload" in flashes(refused)[0][1]
    assert world.get("c4").event.payload["phone"] == "+31201234567"
    forced = panel.act(f"{url}/edit", edit_form(force="1", **fields), page=url)
    assert forced.status_code == 303
    assert world.get("c4").event.payload["phone"] == "+31699999999"
    assert world.trail("c4")[-1].details.get("forced") is True


def test_editing_a_succeeded_delivery_is_refused(world: World) -> None:
    panel = world.panel()
    url = f"/deliveries/{world.id('c1')}"
    assert 'id="edit"' not in panel.get(url).text
    page = panel.act(f"{url}/edit", {"set-path-0": "phone", "set-value-0": "1"}, page=url)
    assert page.status_code == 400
    assert "only discarded, needs_action, pending, retry_scheduled" in flashes(page)[0][1]
    missing = panel.act("/deliveries/nope/edit", {"set-path-0": "a", "set-value-0": "1"})
    assert missing.status_code == 404


# --- potential duplicates -------------------------------------------------------------


def test_duplicates_show_ours_beside_the_match_and_link(world: World) -> None:
    panel = world.panel()
    page = panel.get("/duplicates")
    assert page.status_code == 200
    assert rows(page) == []
    assert f'data-id="{world.id("c5")}"' in page.text
    text = text_of(page)
    assert "Our record" in text
    assert "The match (reported by pos (existing))" in text
    assert '"id": "cus_9"' in text
    assert 'value="same record as cus_9"' in page.text
    refused = panel.follow(
        panel.act("/duplicates/link", {"id": world.id("c5")}, page="/duplicates")
    )
    assert "Say which record it is" in flashes(refused)[0][1]
    assert world.get("c5").status is DeliveryStatus.NEEDS_ACTION
    linked = panel.follow(
        panel.act(
            "/duplicates/link",
            {"id": world.id("c5"), "note": "same record as cus_9"},
            page="/duplicates",
        )
    )
    assert flashes(linked)[0][0] == "ok"
    assert world.get("c5").status is DeliveryStatus.RESOLVED
    record = world.trail("c5")[-1]
    assert (record.action, record.actor, record.reason) == (
        "resolve",
        "ann",
        "linked to the existing record: same record as cus_9",
    )
    assert "No potential duplicates wait for a person" in panel.get("/duplicates").text


def test_create_anyway_is_an_audited_edit_and_resync(world: World) -> None:
    panel = world.panel()
    data = {"id": world.id("c5")}
    no_note = panel.follow(panel.act("/duplicates/create-anyway", data, page="/duplicates"))
    assert "Say why a second record is right" in flashes(no_note)[0][1]
    done = panel.follow(
        panel.act(
            "/duplicates/create-anyway",
            {**data, "note": "another person, same e-mail"},
            page="/duplicates",
        )
    )
    assert flashes(done)[0][0] == "ok"
    delivery = world.get("c5")
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.event.payload["allow_duplicate"] is True
    record = world.trail("c5")[-1]
    assert (record.action, record.actor) == ("edit", "ann")
    assert (
        record.reason
        == "edited payload.allow_duplicate: create anyway: another person, same e-mail"
    )
    assert record.details["added"] == ["payload.allow_duplicate"]
    assert record.details["after"] == {"payload.allow_duplicate": True}


def test_create_anyway_is_not_offered_unless_configured(world: World) -> None:
    app = create_app(world.queue, login=login(), secret_key=SECRET)
    panel = Panel(app)
    panel.sign_in(*OPERATOR)
    page = panel.get("/duplicates")
    assert "Create anyway</button>" not in page.text
    assert "Correct and re-sync" in page.text
    refused = panel.follow(
        panel.act("/duplicates/create-anyway", {"id": world.id("c5"), "note": "x"})
    )
    assert "'Create anyway' is not set up" in flashes(refused)[0][1]
    assert world.get("c5").status is DeliveryStatus.NEEDS_ACTION


# --- escaping -----------------------------------------------------------------------


def test_markup_from_the_store_is_shown_never_run(world: World) -> None:
    panel = world.panel()
    pages = [
        panel.get("/"),
        panel.get("/deliveries?status=needs_action"),
        panel.get(f"/deliveries/{world.id(XSS)}"),
        panel.get(f"/deliveries?q={XSS}"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert "<script>" not in page.text
        assert "&lt;script&gt;" in page.text
    assert f"bad name {XSS}" in text_of(pages[2])


def test_pages_forbid_framing_and_inline_scripts(world: World) -> None:
    page = world.panel().get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text


def test_unknown_addresses_are_pages(world: World) -> None:
    panel = world.panel()
    missing = panel.get("/no/such/page")
    assert missing.status_code == 404
    assert "There is no page at this address" in missing.text
    wrong = panel.post("/deliveries", {})
    assert wrong.status_code == 405

"""The admin panel in a real headless Chromium (Debian's ``chromium``, driven
by Playwright; no browser is downloaded): an operator signs in, filters the
failed deliveries, opens one, corrects a field and re-syncs it, re-syncs all
matching and sees the counts change; a viewer sees no action. The screenshots
in ``docs/images/`` are taken here with
``RESILIENT_SYNC_SCREENSHOTS=1 python3 tasks.py test tests/test_admin_browser.py``;
otherwise they go to a temporary folder, so a test run never changes the
repository.

Without a usable Chromium the tests are skipped with the reason, except under
``CI=true``, where they fail: CI must prove them (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from admin_support import OPERATOR, SECRET, VIEWER, Built, login, populate_shop
from resilient_sync import DeliveryStatus, Dispatcher
from resilient_sync.admin import create_app
from resilient_sync.stores import open_stores
from resilient_sync.testing import RecordingDestination
from served import Served

CHROMIUM = (
    os.environ.get("RESILIENT_SYNC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() == "true"
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but the browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed ({exc}); pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    playwright = sync_playwright().start()
    try:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:
            unavailable(f"{CHROMIUM} did not start: {exc}")
        yield launched
        launched.close()
    finally:
        playwright.stop()


@attrs.define
class Shop:
    queue: Any
    idempotency: Any
    built: Built
    url: str

    def status(self, event_id: str, destination: str = "pos") -> DeliveryStatus:
        found = self.queue.get(self.built.id(event_id, destination))
        assert found is not None
        return found.status  # type: ignore[no-any-return]

    def work(self) -> None:
        """A worker run against a POS (and CRM) that accept everything now."""
        Dispatcher(
            self.queue,
            self.idempotency,
            [RecordingDestination("pos"), RecordingDestination("crm")],
        ).run_until_idle()


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    queue, idempotency = open_stores(f"sqlite:///{tmp_path / 'shop.db'}")
    try:
        built = populate_shop(queue, idempotency)
        app = create_app(queue, login=login(), idempotency=idempotency, secret_key=SECRET)
        with Served(app) as served:
            yield Shop(queue, idempotency, built, served.url)
    finally:
        queue.close()
        idempotency.close()


def sign_in(browser: Any, shop: Shop, who: tuple[str, str]) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(shop.url + "/")
    assert page.url.startswith(shop.url + "/login?next=")
    page.fill("input[name=name]", who[0])
    page.fill("input[name=secret]", who[1])
    page.click("button:has-text('Sign in')")
    page.wait_for_url(shop.url + "/")
    return page


def text(page: Any, selector: str) -> str:
    """The text of an element as a person reads it (spaces folded)."""
    return " ".join(page.inner_text(selector).split())


def count(page: Any, label: str) -> int:
    text = page.locator(f".quick a:has-text('{label}') .count").inner_text()
    return int(text)


def test_an_operator_corrects_one_and_resyncs_the_rest(
    browser: Any, shop: Shop, tmp_path: Path
) -> None:
    keep = os.environ.get("RESILIENT_SYNC_SCREENSHOTS", "") == "1"
    IMAGES = DOCS_IMAGES if keep else tmp_path
    page = sign_in(browser, shop, OPERATOR)
    assert "6 need action" in text(page, "p.summary")
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "admin-overview.png"), full_page=True)

    page.click("nav >> text=Sync failed")
    page.wait_for_selector("h1:has-text('Sync failed')")
    assert page.locator("tr[data-id]").count() == 6
    assert count(page, "Sync failed") == 6
    page.screenshot(path=str(IMAGES / "admin-deliveries.png"), full_page=True)

    page.select_option("select[name=category]", "data_format")
    page.click("button:has-text('Filter')")
    page.wait_for_url(re.compile(r".*category=data_format.*"))
    rows = page.locator("tr[data-id]")
    assert rows.count() == 2
    phone = shop.built.id("cus-0801")
    page.click(f"tr[data-id='{phone}'] a")
    page.wait_for_selector("h2:has-text('Last error')")
    assert page.locator("pre.json .line.marked").inner_text().strip() == '"phone": "0612 34"'
    assert page.input_value("input[name=set-path-0]") == "phone"
    page.fill("input[name=set-value-0]", "+31612340000")
    page.fill("#edit input[name=note]", "the customer's number, by phone")
    page.screenshot(path=str(IMAGES / "admin-delivery.png"), full_page=True)
    page.click("button:has-text('Save the correction')")
    page.wait_for_selector("p.flash.ok")
    assert "Edited phone and re-synced" in page.inner_text("p.flash.ok")
    assert shop.status("cus-0801") is DeliveryStatus.PENDING
    shop.work()
    assert shop.status("cus-0801") is DeliveryStatus.SUCCEEDED

    page.click("nav >> text=Sync failed")
    page.wait_for_selector("h1:has-text('Sync failed')")
    assert count(page, "Sync failed") == 5
    page.click("text=Re-sync all matching…")
    page.wait_for_selector("#match-count")
    assert page.inner_text("#match-count") == "5"
    assert shop.status("ord-1101") is DeliveryStatus.NEEDS_ACTION  # nothing changed yet
    page.fill("input[name=note]", "POS fixed, mappings added")
    page.click("button:has-text('Re-sync 5 deliveries')")
    page.wait_for_selector("#job-done", timeout=20_000)
    assert "Done: re-synced 5 of 5 matching deliveries." in page.inner_text("#job-done")

    page.click("text=Back to the list")
    page.wait_for_selector(".quick")
    assert count(page, "Sync failed") == 0
    assert count(page, "Waiting") == 7  # the 5 re-synced, and 2 for the paused CRM
    page.goto(shop.url + "/")
    assert "0 need action" in text(page, "p.summary")
    page.fill("input[name=note]", "new API token")
    page.click("button:has-text('Resume crm')")
    page.wait_for_selector("p.flash.ok")
    shop.work()
    page.reload()
    assert "Nothing needs a person" in page.inner_text("#needs-h + p")
    assert page.locator(".badge.paused").count() == 0
    page.close()


def test_a_viewer_sees_no_action(browser: Any, shop: Shop) -> None:
    page = sign_in(browser, shop, VIEWER)
    assert page.locator("button:has-text('Resume')").count() == 0
    page.click("nav >> text=Sync failed")
    page.wait_for_selector("h1:has-text('Sync failed')")
    assert page.locator("tr[data-id]").count() == 6
    assert page.locator("input[name=ids]").count() == 0
    assert (
        page.locator("button").filter(has_text=re.compile("Re-sync|Resolve|Discard")).count() == 0
    )
    assert page.locator("text=Re-sync all matching").count() == 0
    page.click("tr[data-id] a >> nth=0")
    page.wait_for_selector("h2:has-text('Last error')")
    assert page.locator("#edit").count() == 0
    assert page.locator("form[action$='/deliveries/retry']").count() == 0
    page.goto(shop.url + "/duplicates")
    assert page.locator("text=Our record").count() == 1
    assert page.locator("button:has-text('Link to existing')").count() == 0
    page.close()

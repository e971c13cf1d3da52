"""The admin panel's test kit: a varied queue on any store, and a client that
talks to the panel through the ASGI interface (httpx.ASGITransport), keeps its
cookies like a browser and reads the CSRF token from the pages it gets."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import httpx

from resilient_sync import (
    DataFormatError,
    Dispatcher,
    DuplicateError,
    Event,
    MappingError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
)
from resilient_sync.admin import Login
from resilient_sync.testing import FakeClock, FlakyDestination

OPERATOR = ("ann", "ann-password-1")
VIEWER = ("vic", "vic-password-1")
TOKEN = "operator-token-0123456789"
SECRET = "a-session-secret-for-the-tests"
#: The text an attacker put in an event, an error and a payload.
XSS = "<script>alert('x')</script>"

#: Event id -> what pos says on the first (and only) attempt.
POS_FAILURES: dict[str, Exception] = {
    "c2": DataFormatError("phone is invalid", field="phone"),
    "c3": MappingError("unknown SKU 'TEE-XXL'", field="lines[0].sku"),
    "c4": RetryableError("POS down (HTTP 503)"),
    "c5": DuplicateError(
        "email has already been taken",
        field="email",
        details={"existing": {"id": "cus_9", "email": "c5@example.com", "name": "C. Five"}},
    ),
    "k1": DataFormatError("vat_number is required", field="vat_number"),
    XSS: DataFormatError(f"bad name {XSS}", field="name"),
}
BULK = 12


def login() -> Login:
    """The built-in login of the tests: an operator, a viewer, an operator token."""
    return Login(
        users={OPERATOR[0]: (OPERATOR[1], "operator"), VIEWER[0]: (VIEWER[1], "viewer")},
        operator_token=TOKEN,
    )


def payload(n: str) -> dict[str, Any]:
    return {
        "email": f"{n}@example.com",
        "phone": "12 34" if n == "c2" else "+31201234567",
        "lines": [{"sku": "TEE-XXL" if n == "c3" else "TEE-M", "qty": 1}],
    }


@attrs.frozen
class Built:
    """Delivery ids by (event id, destination)."""

    ids: dict[tuple[str, str], str]

    def id(self, event_id: str, destination: str = "pos") -> str:
        return self.ids[(event_id, destination)]


def populate(queue: Any, idempotency: Any) -> Built:
    """pos: c1..c8 (c2 data_format, c3 mapping, c4 transient, c5 duplicate with
    the existing record in its details, need action), k1 (needs action) and
    k2 (same ordering key: waits behind k1), an event full of markup, and
    ``BULK`` orders that succeed; crm: c1 ok, c6 permission (crm paused).
    Real clock, one attempt per delivery."""
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
        [Event(f"order-{n:02d}", "order.created", {"n": n}) for n in range(BULK)], to="pos"
    )
    dispatcher.submit_many(
        [Event(XSS, "customer.created", {"name": XSS, "email": "x@example.com"})], to="pos"
    )
    dispatcher.submit_many(
        [Event("k1", "customer.updated", {"name": "Kay"}, ordering_key="cust-7")], to="pos"
    )
    dispatcher.run_until_idle()
    dispatcher.submit_many(
        [Event("k2", "customer.updated", {"name": "Kay B."}, ordering_key="cust-7")], to="pos"
    )
    dispatcher.run_until_idle()
    return _ids(queue)


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_FLASH = re.compile(r'<p class="flash (\w+)" role="(?:status|alert)">(.*?)</p>', re.S)


class Panel:
    """A browser-like client of the panel over ASGI: cookies kept between
    requests, redirects not followed (tests look at them)."""

    def __init__(self, app: Any, *, prefix: str = "", host: str = "http://admin.test") -> None:
        self.app = app
        self.prefix = prefix
        self.host = host
        self.cookies = httpx.Cookies()
        self.last: httpx.Response | None = None

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, client=("203.0.113.9", 4711))
        async with httpx.AsyncClient(
            transport=transport, base_url=self.host, cookies=self.cookies
        ) as client:
            response = await client.request(method, self.prefix + path, **kwargs)
            self.cookies = httpx.Cookies(client.cookies)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.last = asyncio.run(self._send(method, path, **kwargs))
        return self.last

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: Mapping[str, Any] | None = None) -> httpx.Response:
        return self.request("POST", path, data=dict(data or {}))

    def csrf(self, path: str = "/") -> str:
        """The CSRF token on a page (of this client's session)."""
        found = _CSRF.search(self.get(path).text)
        assert found is not None, f"no CSRF token on {path}"
        return html.unescape(found.group(1))

    def act(
        self, path: str, data: Mapping[str, Any] | None = None, *, page: str = "/deliveries"
    ) -> httpx.Response:
        """POST a form the way the page would (with its CSRF token)."""
        return self.post(path, {"csrf_token": self.csrf(page), **dict(data or {})})

    def follow(self, response: httpx.Response) -> httpx.Response:
        """GET where a redirect points (inside the panel)."""
        assert response.status_code == 303, (response.status_code, response.text[:500])
        location = response.headers["location"]
        assert location.startswith(self.prefix), location
        return self.get(location[len(self.prefix) :])

    def sign_in(self, name: str, secret: str) -> httpx.Response:
        token = self.csrf("/login")
        return self.post("/login", {"csrf_token": token, "name": name, "secret": secret})


def flashes(page: httpx.Response) -> list[tuple[str, str]]:
    """The messages on a page, unescaped: ``[(kind, text)]``."""
    return [(kind, html.unescape(text)) for kind, text in _FLASH.findall(page.text)]


def text_of(page: httpx.Response) -> str:
    """The page's text without tags (unescaped, spaces folded)."""
    body = re.sub(r"<[^>]+>", " ", page.text)
    text = " ".join(html.unescape(body).split())
    return re.sub(r" ([,.;:)])", r"\1", text)


# --- a shop's day, for the browser tests and the screenshots ---------------------------


def populate_shop(queue: Any, idempotency: Any) -> Built:
    """Twenty hours of a shop syncing to its POS and CRM, ending now: most
    deliveries succeed, some after automatic retries (a POS outage, a 429),
    and six wait for a person (a phone the POS rejects, an unknown SKU, a
    missing VAT number, a potential duplicate with the record the POS named,
    retries exhausted, and a revoked CRM token that paused the CRM)."""
    now = datetime.now(timezone.utc)
    clock = FakeClock(now - timedelta(hours=19, minutes=40))
    down = RetryableError("POS down (HTTP 503)")
    script: dict[str, list[Exception]] = {
        "cus-0201": [down],
        "cus-0202": [down],
        "ord-0201": [down],
        "cus-0501": [RateLimitedError("429 Too Many Requests", retry_after=30)],
        "cus-0801": [DataFormatError("phone '0612 34' is not a valid number", field="phone")],
        "ord-1101": [MappingError("unknown SKU 'TEE-XXL' in line 1", field="lines[0].sku")],
        "cus-1401": [
            DuplicateError(
                "email has already been taken",
                field="email",
                details={
                    "existing": {
                        "id": "cus_8812",
                        "email": "noor@example.com",
                        "name": "Noor Bakker",
                        "created": "2025-03-02",
                    }
                },
            )
        ],
        "ord-1801": [down, down],
        "cus-1901": [DataFormatError("vat_number is required for companies", field="vat_number")],
    }
    crm_script: dict[str, list[Exception]] = {
        "cus-1701": [PermissionDeniedError("401 Unauthorized: API token revoked")]
    }
    pos = FlakyDestination("pos", per_event=script)
    crm = FlakyDestination("crm", per_event=crm_script)
    dispatcher = Dispatcher(
        queue,
        idempotency,
        [pos, crm],
        retry=RetryPolicy(max_attempts=2, initial_delay=300, jitter=False),
        clock=clock,
    )
    names = ["Noor", "Daan", "Emma", "Liam", "Sara", "Milan", "Julia", "Sem"]
    for hour in range(20):
        customers = []
        for i in range(1, 4):
            name = names[(hour + i) % len(names)]
            event_id = f"cus-{hour:02d}{i:02d}"
            customer = {
                "email": f"{name.lower()}{hour}@example.com",
                "name": f"{name} {hour}",
                "phone": "0612 34" if event_id == "cus-0801" else "+31612345678",
            }
            if event_id == "cus-1401":
                customer["email"] = "noor@example.com"
            if event_id == "cus-1901":
                customer["company"] = "Bakker BV"
            customers.append(Event(event_id, "customer.created", customer, ordering_key=event_id))
        orders = [
            Event(
                f"ord-{hour:02d}{i:02d}",
                "order.created",
                {
                    "order": f"#{1000 + hour * 10 + i}",
                    "lines": [{"sku": "TEE-XXL" if (hour, i) == (11, 1) else "TEE-M", "qty": i}],
                },
            )
            for i in range(1, 3)
        ]
        dispatcher.submit_many([*customers, *orders], to="pos")
        dispatcher.submit_many(customers[:1], to="crm")
        dispatcher.run_until_idle()
        clock.advance(1800)
        dispatcher.run_until_idle()
        clock.advance(1800)
    return _ids(queue)


def _ids(queue: Any) -> Built:
    ids: dict[tuple[str, str], str] = {}
    cursor = None
    while True:
        page = queue.list(limit=200, cursor=cursor)
        ids.update({(d.event.id, d.destination): d.id for d in page.items})
        if page.next_cursor is None:
            return Built(ids)
        cursor = page.next_cursor

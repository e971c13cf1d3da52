"""HttpPollingSource: reconciliation by polling "list records changed since"
APIs. Unit cases on httpx.MockTransport; then a scripted changes API on
127.0.0.1 (Shopify-style Link pages, Stripe-style has_more pages): resume
after a restart from the SQLite cursor, ties on updated_at, 429s, and the
dedupe against the same changes received by webhook."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from resilient_sync import (
    Dispatcher,
    InvalidEventError,
    PermissionDeniedError,
    Producer,
    RateLimitedError,
    RetryableError,
    Source,
    SyncError,
)
from resilient_sync.http import (
    HttpDestination,
    HttpPollingSource,
    LinkPagination,
    Pagination,
    RecordEvents,
    TokenPagination,
)
from resilient_sync.http._source import format_timestamp, parse_timestamp
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, SQLiteQueueStore
from resilient_sync.testing import FakeClock, RecordingDestination

START = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
EST = timezone(timedelta(hours=-5))
TOKEN = "shpat_0123456789abcdef0123456789abcdef"
ORDERS = RecordEvents("order")


def stamp(minutes: float) -> str:
    """Shopify-style updated_at: local time with an offset."""
    return (START + timedelta(minutes=minutes)).astimezone(EST).isoformat()


def order(n: int, minutes: float) -> dict[str, Any]:
    return {"id": n, "updated_at": stamp(minutes), "email": f"c{n}@example.com"}


# --- a scripted changes API on 127.0.0.1 -------------------------------------------------------


class ChangesApi:
    """Orders the Shopify way (``updated_at_min`` inclusive, sorted by
    updated_at then id, ``Link`` pages with an opaque ``page_info`` that must
    not be combined with filters, ``X-Shopify-Access-Token``), and events the
    Stripe way (``created[gte]``, newest first, ``has_more`` +
    ``starting_after``, a bearer key). ``script`` queues failures for the
    next requests."""

    def __init__(self) -> None:
        self.orders: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.script: list[tuple[int, dict[str, str], Any]] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, headers, body = api.handle(self.path, dict(self.headers.items()))
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def upsert(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.orders[record["id"]] = record

    def handle(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.requests.append(path)
            if self.script:
                return self.script.pop(0)
            url = urlsplit(path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/admin/api/2024-07/orders.json":
                if headers.get("X-Shopify-Access-Token") != TOKEN:
                    return 401, {}, {"errors": "[API] Invalid API key or access token"}
                return self._orders(query)
            if url.path == "/v1/events":
                if headers.get("Authorization") != "Bearer sk_test_abcdefgh12345678":
                    return 401, {}, {"error": {"type": "invalid_request_error"}}
                return self._events(query)
            return 404, {}, {"errors": "Not Found"}

    def _orders(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        limit = int(query.get("limit", 50))
        if "page_info" in query:
            if set(query) - {"page_info", "limit"}:
                return 400, {}, {"errors": "page_info cannot be combined with other filters"}
            state = json.loads(base64.urlsafe_b64decode(query["page_info"]))
            since, after = state["min"], tuple(state["after"])
        else:
            since, after = query.get("updated_at_min"), None
        rows = sorted(
            self.orders.values(), key=lambda r: (parse_timestamp(r["updated_at"]), r["id"])
        )
        if since is not None:
            bound = parse_timestamp(since)
            rows = [r for r in rows if parse_timestamp(r["updated_at"]) >= bound]
        if after is not None:
            rows = [
                r
                for r in rows
                if (parse_timestamp(r["updated_at"]), r["id"])
                > (parse_timestamp(after[0]), after[1])
            ]
        page, more = rows[:limit], len(rows) > limit
        headers = {}
        if more:
            last = page[-1]
            token = json.dumps({"min": since, "after": [last["updated_at"], last["id"]]})
            info = base64.urlsafe_b64encode(token.encode()).decode()
            query = urlencode({"limit": limit, "page_info": info})
            link = f"{self.url}/admin/api/2024-07/orders.json?{query}"
            headers["Link"] = f'<{link}>; rel="next"'
        return 200, headers, {"orders": page}

    def _events(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        limit = int(query.get("limit", 10))
        rows = sorted(self.events, key=lambda e: (e["created"], e["id"]), reverse=True)
        if "created[gte]" in query:
            rows = [e for e in rows if e["created"] >= int(query["created[gte]"])]
        if "starting_after" in query:
            ids = [e["id"] for e in rows]
            rows = rows[ids.index(query["starting_after"]) + 1 :]
        return 200, {}, {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}

    def __enter__(self) -> ChangesApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def api() -> Iterator[ChangesApi]:
    with ChangesApi() as server:
        yield server


def shop(api: ChangesApi, clock: FakeClock | None = None) -> HttpDestination:
    return HttpDestination(
        "shop",
        f"{api.url}/admin/api/2024-07",
        headers={"X-Shopify-Access-Token": TOKEN},
        clock=clock or FakeClock(START),
        timeout=5,
    )


def orders_source(api: ChangesApi, **options: Any) -> HttpPollingSource:
    clock = options.pop("clock", None)
    return HttpPollingSource(
        "shopify-orders",
        shop(api, clock),
        "/orders.json",
        records=ORDERS,
        items="orders",
        params={"status": "any"},
        **options,
    )


# --- unit cases on MockTransport ----------------------------------------------------------------


class Mock:
    """An API answering from a handler, recording every request."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        self.transport = httpx.MockTransport(record)

    def api(self, clock: FakeClock | None = None, **options: Any) -> HttpDestination:
        return HttpDestination(
            "api",
            "https://api.example.com/v1",
            transport=self.transport,
            clock=clock or FakeClock(START),
            **options,
        )


def pages(*bodies: Any, links: bool = True) -> Callable[[httpx.Request], httpx.Response]:
    """Answer page i (``?page=i``) with ``bodies[i]``, linking to the next."""

    def handler(request: httpx.Request) -> httpx.Response:
        index = int(request.url.params.get("page", "0"))
        headers = {}
        if links and index + 1 < len(bodies):
            headers["Link"] = f'<https://api.example.com/v1/items?page={index + 1}>; rel="next"'
        return httpx.Response(200, json=bodies[index], headers=headers)

    return handler


def test_the_source_satisfies_the_protocol() -> None:
    source = HttpPollingSource("s", Mock(pages([])).api(), "/items", records=ORDERS)
    assert isinstance(source, Source)
    assert isinstance(LinkPagination(), Pagination)
    assert isinstance(TokenPagination(), Pagination)


def test_link_pages_and_the_cursor_after_a_sweep() -> None:
    mock = Mock(
        pages(
            [order(1, 1), order(2, 2)],
            [order(3, 3), order(4, 3)],
            [order(5, 4)],
        )
    )
    source = HttpPollingSource("s", mock.api(), "/items", records=ORDERS)
    events, cursor = source.read(None, 2)
    assert [e.id for e in events] == [
        "order:1@2024-03-01T12:01:00Z",
        "order:2@2024-03-01T12:02:00Z",
    ]
    assert json.loads(cursor or "") == {
        "high": "2024-03-01T12:02:00Z",
        "high_ids": ["2"],
        "page": "https://api.example.com/v1/items?page=1",
        "v": 1,
    }
    events, cursor = source.read(cursor, 2)
    assert [e.payload["id"] for e in events] == [3, 4]
    events, cursor = source.read(cursor, 2)
    assert [e.payload["id"] for e in events] == [5]
    assert json.loads(cursor or "") == {"seen": ["5"], "since": "2024-03-01T12:04:00Z", "v": 1}
    first = mock.requests[0]
    assert first.url.path == "/v1/items"
    assert dict(first.url.params) == {"limit": "2"}  # no mark on the very first sweep
    assert str(mock.requests[1].url) == "https://api.example.com/v1/items?page=1"


def test_the_next_sweep_asks_from_the_mark_and_skips_what_it_submitted() -> None:
    records = [order(1, 1), order(2, 4), order(3, 4)]
    mock = Mock(lambda request: httpx.Response(200, json=records))
    source = HttpPollingSource("s", mock.api(), "/items", records=ORDERS, start=START)
    events, cursor = source.read(None, 10)
    assert [e.payload["id"] for e in events] == [1, 2, 3]
    assert mock.requests[0].url.params["updated_at_min"] == "2024-03-01T12:00:00Z"
    records.append(order(4, 4))  # same instant as 2 and 3, listed later
    events, cursor = source.read(cursor, 10)
    assert [e.payload["id"] for e in events] == [4]  # 1, 2, 3 are not repeated
    assert mock.requests[1].url.params["updated_at_min"] == "2024-03-01T12:04:00Z"
    events, again = source.read(cursor, 10)
    assert events == []
    assert again == cursor


def test_ties_on_updated_at_across_pages_in_any_order() -> None:
    """Five records changed in the same second, listed two per page in an
    order unrelated to their ids: each is submitted once; a sixth that
    appears later at the same instant is picked up; none is repeated."""
    same = [order(n, 5) for n in (9, 2, 7, 4, 5)]
    listing = list(same)

    def handler(request: httpx.Request) -> httpx.Response:
        token = int(request.url.params.get("page_token", "0"))
        body: dict[str, Any] = {"items": listing[token : token + 2]}
        if token + 2 < len(listing):
            body["next_page_token"] = str(token + 2)
        return httpx.Response(200, json=body)

    source = HttpPollingSource(
        "s",
        Mock(handler).api(),
        "/items",
        records=ORDERS,
        items="items",
        pagination=TokenPagination(),
    )
    seen: list[int] = []
    cursor = None
    for _ in range(6):
        events, cursor = source.read(cursor, 2)
        seen += [e.payload["id"] for e in events]
    assert sorted(seen) == [2, 4, 5, 7, 9]
    listing.insert(2, order(3, 5))
    listing.reverse()
    more: list[int] = []
    for _ in range(6):
        events, cursor = source.read(cursor, 2)
        more += [e.payload["id"] for e in events]
    assert more == [3]


def test_pages_of_known_records_are_skipped_within_one_read() -> None:
    """A sweep whose first pages hold only records submitted before (the
    same instant as the mark) goes on to the next page in the same read, up
    to max_pages; the rest follows in the next read."""
    known = [[order(n, 5), order(n + 10, 5)] for n in range(4)]
    mock = Mock(pages(*known, [order(99, 6), order(100, 6)]))
    resume = json.dumps(
        {
            "v": 1,
            "since": "2024-03-01T12:05:00Z",
            "seen": [str(n) for n in (0, 1, 2, 3, 10, 11, 12, 13)],
        }
    )
    source = HttpPollingSource("s", mock.api(), "/items", records=ORDERS)
    events, _cursor = source.read(resume, 2)
    assert [e.payload["id"] for e in events] == [99, 100]
    assert len(mock.requests) == 5

    limited = HttpPollingSource("s", mock.api(), "/items", records=ORDERS, max_pages=2)
    events, cursor = limited.read(resume, 2)
    assert events == []
    assert json.loads(cursor or "")["page"].endswith("page=2")
    events, cursor = limited.read(cursor, 2)
    assert events == []
    events, cursor = limited.read(cursor, 2)
    assert [e.payload["id"] for e in events] == [99, 100]


def test_stripe_style_has_more_and_starting_after() -> None:
    events_list = [
        {"id": f"evt_{n}", "type": "customer.updated", "created": 1709294400 + n}
        for n in range(5, 0, -1)
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        rows = list(events_list)
        if "starting_after" in request.url.params:
            ids = [e["id"] for e in rows]
            rows = rows[ids.index(request.url.params["starting_after"]) + 1 :]
        limit = int(request.url.params["limit"])
        return httpx.Response(200, json={"data": rows[:limit], "has_more": len(rows) > limit})

    mock = Mock(handler)
    stripe_events = RecordEvents("stripe_event", updated_field="created", type=lambda e: e["type"])
    source = HttpPollingSource(
        "stripe-events",
        mock.api(),
        "/events",
        records=stripe_events,
        items="data",
        since_param="created[gte]",
        since_format=lambda moment: str(int(moment.timestamp())),
        pagination=TokenPagination(param="starting_after", token=None, has_more="has_more"),
    )
    got: list[str] = []
    cursor = None
    for _ in range(3):
        events, cursor = source.read(cursor, 2)
        got += [e.id for e in events]
    assert got == [
        f"stripe_event:evt_{n}@{format_timestamp(parse_timestamp(1709294400 + n))}"
        for n in range(5, 0, -1)
    ]
    assert [r.url.params.get("starting_after") for r in mock.requests] == [None, "evt_4", "evt_2"]
    events, _ = source.read(cursor, 2)
    assert events == []
    assert mock.requests[-1].url.params["created[gte]"] == "1709294405"


def test_429_is_waited_out_on_the_clock_then_retried() -> None:
    answers = [
        httpx.Response(
            429, headers={"Retry-After": "2"}, json={"errors": "Exceeded 2 calls per second"}
        ),
        httpx.Response(200, json=[order(1, 1)]),
    ]
    mock = Mock(lambda request: answers.pop(0))
    clock = FakeClock(START)
    source = HttpPollingSource("s", mock.api(clock), "/items", records=ORDERS)
    events, _ = source.read(None, 10)
    assert [e.payload["id"] for e in events] == [1]
    assert clock.now() >= START + timedelta(seconds=2)
    assert len(mock.requests) == 2


def test_a_long_retry_after_is_raised_not_slept() -> None:
    mock = Mock(lambda request: httpx.Response(429, headers={"Retry-After": "600"}))
    clock = FakeClock(START)
    source = HttpPollingSource("s", mock.api(clock), "/items", records=ORDERS, max_wait=60)
    with pytest.raises(RateLimitedError) as info:
        source.read(None, 10)
    assert info.value.retry_after == 600
    assert clock.now() == START  # nothing slept
    assert len(mock.requests) == 1


def test_retries_are_bounded() -> None:
    mock = Mock(lambda request: httpx.Response(503))
    clock = FakeClock(START)
    source = HttpPollingSource("s", mock.api(clock), "/items", records=ORDERS, retries=3)
    with pytest.raises(RetryableError, match="503"):
        source.read(None, 10)
    assert len(mock.requests) == 4
    assert clock.now() == START + timedelta(seconds=1 + 2 + 4)


def test_permission_errors_raise_at_once_with_secrets_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mock = Mock(lambda request: httpx.Response(401, json={"errors": "Invalid API key"}))
    api = mock.api(
        headers={"X-Shopify-Access-Token": TOKEN}, params={"api_key": "key-abcdef123456"}
    )
    source = HttpPollingSource("s", api, "/items", records=ORDERS)
    with caplog.at_level(logging.DEBUG), pytest.raises(PermissionDeniedError) as info:
        source.read(None, 10)
    assert len(mock.requests) == 1
    for text in (str(info.value), caplog.text, repr(source)):
        assert TOKEN not in text
        assert "key-abcdef123456" not in text


def test_secret_query_parameters_never_reach_the_saved_cursor() -> None:
    """A next link that repeats the API key (some APIs echo every parameter):
    the cursor keeps the link without it; the request still sends it."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page") == "1":
            return httpx.Response(200, json=[order(2, 2)])
        link = "https://api.example.com/v1/items?page=1&api_key=key-abcdef123456"
        return httpx.Response(200, json=[order(1, 1)], headers={"Link": f'<{link}>; rel="next"'})

    mock = Mock(handler)
    api = mock.api(params={"api_key": "key-abcdef123456"})
    source = HttpPollingSource("s", api, "/items", records=ORDERS)
    _events, cursor = source.read(None, 10)
    assert "key-abcdef123456" not in (cursor or "")
    assert json.loads(cursor or "")["page"] == "https://api.example.com/v1/items?page=1"
    events, _ = source.read(cursor, 10)
    assert [e.payload["id"] for e in events] == [2]
    assert mock.requests[1].url.params["api_key"] == "key-abcdef123456"


def test_a_next_link_to_another_host_is_refused() -> None:
    link = '<https://collector.evil.example/steal?page=1>; rel="next"'
    mock = Mock(lambda request: httpx.Response(200, json=[order(1, 1)], headers={"Link": link}))
    source = HttpPollingSource("s", mock.api(), "/items", records=ORDERS)
    _events, cursor = source.read(None, 10)
    with pytest.raises(SyncError, match="another host"):
        source.read(cursor, 10)
    assert len(mock.requests) == 1


def test_relative_links_are_resolved_against_the_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page") == "1":
            return httpx.Response(200, json=[order(2, 2)])
        return httpx.Response(
            200, json=[order(1, 1)], headers={"Link": '</v1/items?page=1>; rel="next"'}
        )

    mock = Mock(handler)
    source = HttpPollingSource("s", mock.api(), "/items", records=ORDERS)
    events, cursor = source.read(None, 10)
    events, cursor = source.read(cursor, 10)
    assert [e.payload["id"] for e in events] == [2]
    assert str(mock.requests[1].url) == "https://api.example.com/v1/items?page=1"


def test_bad_records_and_bodies_say_what_is_wrong() -> None:
    source = HttpPollingSource(
        "s", Mock(pages([order(1, 1), {"id": 2}])).api(), "/items", records=ORDERS
    )
    with pytest.raises(
        InvalidEventError,
        match=r"item 1 of GET api\.example\.com/v1/items: the order record has no 'updated_at'",
    ) as info:
        source.read(None, 10)
    assert info.value.field == "updated_at"
    bad_time = HttpPollingSource(
        "s", Mock(pages([{"id": 1, "updated_at": "yesterday"}])).api(), "/items", records=ORDERS
    )
    with pytest.raises(InvalidEventError, match="not an ISO 8601 timestamp"):
        bad_time.read(None, 10)
    no_list = HttpPollingSource(
        "s", Mock(pages({"orders": []})).api(), "/items", records=ORDERS, items="customers"
    )
    with pytest.raises(SyncError, match="has no 'customers' list"):
        no_list.read(None, 10)
    not_list = HttpPollingSource("s", Mock(pages({"orders": 3})).api(), "/items", records=ORDERS)
    with pytest.raises(SyncError, match="not a list of records"):
        not_list.read(None, 10)
    html = Mock(lambda request: httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(SyncError, match="not JSON"):
        HttpPollingSource("s", html.api(), "/items", records=ORDERS).read(None, 10)
    with pytest.raises(SyncError, match="is not one HttpPollingSource wrote"):
        HttpPollingSource("s", html.api(), "/items", records=ORDERS).read("42", 10)


def test_configuration_is_checked() -> None:
    api = Mock(pages([])).api()
    with pytest.raises(TypeError, match="HttpDestination"):
        HttpPollingSource("s", "https://api.example.com", "/x", records=ORDERS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RecordEvents"):
        HttpPollingSource("s", api, "/x", records="order")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        HttpPollingSource("s", api, "/x", records=ORDERS, start=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="max_pages"):
        HttpPollingSource("s", api, "/x", records=ORDERS, max_pages=0)
    with pytest.raises(ValueError, match="resource"):
        RecordEvents("")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-01T07:00:00-05:00", "2024-03-01T12:00:00Z"),
        ("2024-03-01T12:00:00Z", "2024-03-01T12:00:00Z"),
        ("2024-03-01T12:00:00.000Z", "2024-03-01T12:00:00Z"),
        ("2024-03-01T12:00:00.1234567Z", "2024-03-01T12:00:00.123456Z"),
        ("2024-03-01 12:00:00", "2024-03-01T12:00:00Z"),
        ("2024-03-01T13:00:00+0100", "2024-03-01T12:00:00Z"),
        (1709294400, "2024-03-01T12:00:00Z"),
        ("1709294400", "2024-03-01T12:00:00Z"),
        (1709294400.5, "2024-03-01T12:00:00.500000Z"),
        (datetime(2024, 3, 1, 7, tzinfo=EST), "2024-03-01T12:00:00Z"),
    ],
)
def test_timestamps_normalise_to_one_form(value: Any, expected: str) -> None:
    assert format_timestamp(parse_timestamp(value)) == expected


@pytest.mark.parametrize("value", ["", "soon", "2024-13-01T00:00:00Z", True, None, [1]])
def test_bad_timestamps(value: Any) -> None:
    with pytest.raises(ValueError, match=r"timestamp|date"):
        parse_timestamp(value)


# --- against a real HTTP server ------------------------------------------------------


def test_pull_resumes_after_a_restart_from_the_sqlite_cursor(
    tmp_path: Path, api: ChangesApi
) -> None:
    for n in range(1, 8):
        api.upsert(order(n, n))
    path = tmp_path / "sync.db"

    queue = SQLiteQueueStore(path)
    with orders_source(api) as source:
        assert Producer(queue, ["pos"]).pull(source, limit=3) == 7
    queue.close()
    # pages of 3, 3 and 1 linked by page_info, then a sweep from the mark: nothing new
    assert len(api.requests) == 4
    assert "page_info" in api.requests[1]
    assert "updated_at_min=2024-03-01T12%3A07%3A00Z" in api.requests[3]

    api.upsert(order(3, 20))  # order 3 changed again
    api.upsert(order(8, 21))  # a new order
    api.requests.clear()
    queue = SQLiteQueueStore(path)  # a new process: the cursor comes from the file
    try:
        with orders_source(api) as source:
            assert Producer(queue, ["pos"]).pull(source, limit=3) == 2
        first = parse_qs(urlsplit(api.requests[0]).query)
        assert first["updated_at_min"] == ["2024-03-01T12:07:00Z"]
        ids = [d.event.id for d in queue.list(limit=100).items]
        assert len(ids) == len(set(ids)) == 9
        assert "order:3@2024-03-01T12:20:00Z" in ids
    finally:
        queue.close()


def test_a_pull_stopped_mid_sweep_resumes_at_the_page_it_stopped(
    tmp_path: Path, api: ChangesApi
) -> None:
    for n in range(1, 7):
        api.upsert(order(n, n))
    path = tmp_path / "sync.db"
    queue = SQLiteQueueStore(path)
    try:
        with orders_source(api, retries=0) as source:
            producer = Producer(queue, ["pos"])
            original = source.read
            calls = {"n": 0}

            def read_then_fail(cursor: str | None, limit: int) -> Any:
                calls["n"] += 1
                if calls["n"] == 2:
                    api.script.append((500, {}, {"errors": "Internal Server Error"}))
                return original(cursor, limit)

            source.read = read_then_fail  # type: ignore[method-assign]
            with pytest.raises(RetryableError, match="500"):
                producer.pull(source, limit=2)
        assert len(queue.list().items) == 2
        saved = json.loads(queue.get_cursor("shopify-orders") or "")
        assert "page_info=" in saved["page"]
    finally:
        queue.close()

    api.requests.clear()
    queue = SQLiteQueueStore(path)
    try:
        with orders_source(api) as source:
            assert Producer(queue, ["pos"]).pull(source, limit=2) == 4
        assert "page_info=" in api.requests[0]  # went on from page 2, not from the start
        assert sorted(d.event.payload["id"] for d in queue.list().items) == [1, 2, 3, 4, 5, 6]
    finally:
        queue.close()


def test_ties_with_a_real_server(api: ChangesApi) -> None:
    for n in (5, 1, 4, 2, 3):
        api.upsert(order(n, 10))
    queue = MemoryQueueStore()
    producer = Producer(queue, ["pos"])
    with orders_source(api) as source:
        assert producer.pull(source, limit=2) == 5
        assert producer.pull(source, limit=2) == 0
        api.upsert(order(6, 10))  # same instant, committed late
        assert producer.pull(source, limit=2) == 1
    assert sorted(d.event.payload["id"] for d in queue.list().items) == [1, 2, 3, 4, 5, 6]


def test_429_over_real_http_is_honoured(api: ChangesApi) -> None:
    api.upsert(order(1, 1))
    api.script = [
        (429, {"Retry-After": "3"}, {"errors": "Exceeded 2 calls per second for api client"})
    ]
    clock = FakeClock(START)
    queue = MemoryQueueStore()
    with orders_source(api, clock=clock) as source:
        assert Producer(queue, ["pos"], clock=clock).pull(source) == 1
    assert clock.now() >= START + timedelta(seconds=3)
    assert len(api.requests) == 3  # the 429, its retry, and a last sweep finding nothing new

    api.script = [(429, {"Retry-After": "120"}, {})]
    api.upsert(order(2, 2))
    with orders_source(api, clock=clock) as source:
        cursor = queue.get_cursor("shopify-orders")
        with pytest.raises(RateLimitedError) as info:
            Producer(queue, ["pos"], clock=clock).pull(source)
        assert info.value.retry_after == 120
        assert queue.get_cursor("shopify-orders") == cursor  # nothing skipped


def test_stripe_style_events_over_real_http(api: ChangesApi) -> None:
    api.events = [
        {"id": f"evt_{n}", "type": "invoice.paid", "created": 1709294400 + n} for n in range(1, 6)
    ]
    stripe = HttpDestination(
        "stripe",
        api.url + "/v1",
        headers={"Authorization": "Bearer sk_test_abcdefgh12345678"},
        clock=FakeClock(START),
    )
    source = HttpPollingSource(
        "stripe-events",
        stripe,
        "/events",
        records=RecordEvents("stripe_event", updated_field="created", type=lambda e: e["type"]),
        items="data",
        since_param="created[gte]",
        since_format=lambda moment: str(int(moment.timestamp())),
        pagination=TokenPagination(param="starting_after", token=None, has_more="has_more"),
    )
    queue = MemoryQueueStore()
    producer = Producer(queue, ["ledger"])
    with source:
        assert producer.pull(source, limit=2) == 5
        api.events.append({"id": "evt_6", "type": "invoice.paid", "created": 1709294406})
        assert producer.pull(source, limit=2) == 1
    assert len({d.event.id for d in queue.list().items}) == 6


# --- webhooks and polling together ------------------------------------------------------


def test_changes_received_by_webhook_are_not_sent_twice(tmp_path: Path, api: ChangesApi) -> None:
    """The reconciliation setup of docs/howto/reconcile.md: the same
    RecordEvents on the intake and the poller. Orders 1 and 2 arrive by
    webhook; the webhook for order 3 is lost. The poll finds all three:
    1 and 2 are skipped by the queue (same event ids), 3 is enqueued; the
    POS receives each change exactly once."""
    import asyncio

    from resilient_sync.web import ShopifyWebhook, create_intake
    from test_web_verifiers import NEW_SECRET, encode, sign_shopify

    path = tmp_path / "sync.db"
    queue = SQLiteQueueStore(path)
    clock = FakeClock(START + timedelta(minutes=30))
    try:
        producer = Producer(queue, ["pos"], clock=clock)
        intake = create_intake(
            producer, {"/webhooks/shopify/orders": ShopifyWebhook([NEW_SECRET], records=ORDERS)}
        )
        for n in (1, 2, 3):
            api.upsert(order(n, n))

        async def deliver_webhook(record: dict[str, Any]) -> int:
            body = encode(record)
            transport = httpx.ASGITransport(app=intake)
            async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
                response = await client.post(
                    "/webhooks/shopify/orders",
                    content=body,
                    headers=sign_shopify(body, NEW_SECRET, webhook_id=f"wh-{record['id']}"),
                )
            return response.status_code

        assert asyncio.run(deliver_webhook(api.orders[1])) == 202
        assert asyncio.run(deliver_webhook(api.orders[2])) == 202
        # the webhook for order 3 never arrives

        with orders_source(api, clock=clock) as source:
            assert producer.pull(source, limit=10) == 1  # only order 3 is new
        stored = queue.list(limit=100).items
        assert sorted(d.event.id for d in stored) == [
            "order:1@2024-03-01T12:01:00Z",
            "order:2@2024-03-01T12:02:00Z",
            "order:3@2024-03-01T12:03:00Z",
        ]
        via = {d.event.payload["id"]: d.event.metadata["via"] for d in stored}
        assert via == {1: "webhook", 2: "webhook", 3: "poll"}

        # a late webhook for order 3 (Shopify retried it) is acknowledged, not enqueued
        assert asyncio.run(deliver_webhook(api.orders[3])) == 200

        pos = RecordingDestination("pos")
        dispatcher = Dispatcher(queue, MemoryIdempotencyStore(), [pos], clock=clock)
        dispatcher.run_until_idle()
        dispatcher.close()
        assert sorted(e.payload["id"] for e in pos.events) == [1, 2, 3]
    finally:
        queue.close()

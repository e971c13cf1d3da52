"""Reading "list records changed since" APIs as a :class:`~resilient_sync.Source`.

Webhooks get lost (a sender gives up after its retries, an endpoint was down
for a day, a subscription was missing). A reconciliation job reads the same
changes from the API's list endpoint and submits them too; the queue keeps
one of each because both paths give the same change the same event id
(:class:`RecordEvents`).

:class:`HttpPollingSource` reads in *sweeps*: one sweep asks for every record
changed at or after a high-water mark (``updated_at_min=...``) and follows the
pages to the end; the next sweep starts at the newest ``updated_at`` the
previous one saw. Records at exactly that instant were already submitted, so
the cursor also keeps their ids: records sharing one ``updated_at`` are
neither skipped nor repeated, whatever order the API returns them in. The
cursor (saved by ``pull`` with each page) also holds the next page's token,
so a restarted pull resumes mid-sweep.

HTTP goes through an :class:`~resilient_sync.http.HttpDestination` used as
the API client (``request()``): its base URL, headers, client-side rate
limit, error classification and secret redaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import httpx

from .._errors import InvalidEventError, RetryableError, SyncError
from .._json import check_name
from .._model import Event
from .._protocols import Clock
from .._redact import redact
from .._text import get_logger, one_line
from ._classify import describe_request
from ._destination import HttpDestination

__all__ = [
    "HttpPollingSource",
    "LinkPagination",
    "Pagination",
    "RecordEvents",
    "TokenPagination",
    "format_timestamp",
    "parse_timestamp",
]

logger = get_logger("resilient_sync.http")

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH = re.compile(r"\d{1,12}(?:\.\d{1,9})?")


def parse_timestamp(value: Any) -> datetime:
    """A timezone-aware UTC datetime from an API's timestamp.

    Accepts an aware ``datetime``, seconds since the epoch (``int``/``float``
    or a string of digits, as Stripe's ``created``) and ISO 8601 text with
    ``Z`` or an offset (``2024-01-01T05:00:00-05:00``, as Shopify sends;
    up to nine fractional digits, cut to microseconds). A value without a
    zone is taken as UTC. Raises ``ValueError`` for anything else.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range (300+ digits)
            raise ValueError("timestamp out of range") from None
        moment = _from_epoch(seconds)
    elif isinstance(value, str):
        text = value.strip()
        moment = _from_epoch(float(text)) if _EPOCH.fullmatch(text) else _from_iso(text)
    else:
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _from_epoch(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"{seconds!r} seconds since the epoch is not a usable date") from exc


def _from_iso(text: str) -> datetime:
    match = _ISO.fullmatch(text)
    if match is None:
        raise ValueError(f"{one_line(text, limit=60)!r} is not an ISO 8601 timestamp")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz: timezone | None = None
    if zone is not None:
        if zone in "Zz":
            tz = timezone.utc
        else:
            digits = zone[1:].replace(":", "")
            offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
            tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micro,
            tzinfo=tz,
        )
    except ValueError as exc:
        raise ValueError(f"{one_line(text, limit=60)!r} is not a valid date: {exc}") from exc


def format_timestamp(moment: datetime) -> str:
    """``2024-01-01T10:00:00Z``: UTC, seconds (microseconds only when not
    zero) and ``Z``; the form used in event ids and cursors."""
    utc = moment.astimezone(timezone.utc)
    spec = "microseconds" if utc.microsecond else "seconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _dig(value: Any, path: str) -> Any:
    """``value`` at a dotted path (``"data.object"``; ``""`` is ``value``
    itself); raises ``KeyError(path)`` when a part is missing."""
    if not path:
        return value
    current = value
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif (
            isinstance(current, list)
            and part.isascii()
            and part.isdigit()
            and int(part) < len(current)
        ):
            current = current[int(part)]
        else:
            raise KeyError(path)
    return current


def _is_name(_inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    check_name(value, f"RecordEvents.{attribute.name}")


def _is_path(_inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"RecordEvents.{attribute.name} must be a dotted path, got {value!r}")


def _is_type(_inst: object, _attribute: object, value: Any) -> None:
    if value is not None and not isinstance(value, str) and not callable(value):
        raise TypeError(f"RecordEvents.type must be a str, a callable or None, got {value!r}")


@attrs.frozen
class RecordEvents:
    """How a changed record becomes an :class:`~resilient_sync.Event`, the same
    way for the webhook intake and for :class:`HttpPollingSource`.

    The event id names the *change*: the resource, the record's id and its
    ``updated_at`` (normalised to UTC), e.g. ``order:450789469@2024-01-01T10:00:00Z``.
    A webhook and a poll that see the same change give the same id, so the
    queue keeps one of them (the second is skipped); a later change of the
    same record is a new event. The ordering key is ``resource:id``, so the
    changes of one record reach each destination in order.

    >>> orders = RecordEvents("order")
    >>> event = orders.to_event({"id": 450789469, "updated_at": "2024-01-01T05:00:00-05:00"})
    >>> event.id, event.type, event.ordering_key
    ('order:450789469@2024-01-01T10:00:00Z', 'order.changed', 'order:450789469')

    Args:
        resource: the kind of record (``"order"``, ``"customer"``); the first
            part of every event id.
        type: the event type: a string, or a callable ``record -> str``
            (e.g. ``lambda event: event["type"]`` for Stripe events);
            ``"<resource>.changed"`` by default.
        id_field: dotted path of the record's id.
        updated_field: dotted path of its last-change time (ISO 8601 text or
            seconds since the epoch; see :func:`parse_timestamp`). Both sides
            must report it at the same precision (they do for Shopify,
            Stripe and GitHub).
        ordered: give events the ordering key ``resource:id``.
    """

    resource: str = attrs.field(validator=_is_name)
    type: str | Callable[[Any], str] | None = attrs.field(
        default=None, kw_only=True, validator=_is_type
    )
    id_field: str = attrs.field(default="id", kw_only=True, validator=_is_path)
    updated_field: str = attrs.field(default="updated_at", kw_only=True, validator=_is_path)
    ordered: bool = attrs.field(default=True, kw_only=True)

    def record_id(self, record: Any) -> str:
        """The record's id as text; :class:`~resilient_sync.InvalidEventError` naming the field."""
        try:
            value = _dig(record, self.id_field)
        except KeyError:
            raise InvalidEventError(
                f"the {self.resource} record has no {self.id_field!r}", field=self.id_field
            ) from None
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise InvalidEventError(
                f"the {self.resource} record's {self.id_field!r} must be a string or an "
                f"integer, got {type(value).__name__}",
                field=self.id_field,
            )
        return str(value)

    def updated_at(self, record: Any) -> datetime:
        """When the record last changed (UTC); :class:`~resilient_sync.InvalidEventError`
        naming the field when it is missing or not a timestamp."""
        try:
            value = _dig(record, self.updated_field)
        except KeyError:
            raise InvalidEventError(
                f"the {self.resource} record has no {self.updated_field!r}",
                field=self.updated_field,
            ) from None
        try:
            return parse_timestamp(value)
        except ValueError as exc:
            raise InvalidEventError(
                f"the {self.resource} record's {self.updated_field!r}: {exc}",
                field=self.updated_field,
            ) from None

    def event_id(self, record: Any) -> str:
        """``resource:id@updated_at``: the same for every path a change arrives
        by. Override it in a subclass to add a version the API bumps on every
        change, if two changes of one record can share an ``updated_at``."""
        stamp = format_timestamp(self.updated_at(record))
        return f"{self.resource}:{self.record_id(record)}@{stamp}"

    def event_type(self, record: Any) -> str:
        """The event type for ``record``."""
        if self.type is None:
            return f"{self.resource}.changed"
        if callable(self.type):
            try:
                value = self.type(record)
            except (KeyError, IndexError, TypeError) as exc:
                raise InvalidEventError(
                    f"the {self.resource} record has no event type ({type(exc).__name__}: "
                    f"{one_line(exc, limit=80)})",
                    field="type",
                ) from None
            if not isinstance(value, str):
                raise InvalidEventError(
                    f"the event type of a {self.resource} record must be a str, got "
                    f"{type(value).__name__}",
                    field="type",
                )
            return value
        return self.type

    def to_event(self, record: Any, *, metadata: Mapping[str, Any] | None = None) -> Event:
        """The event of this change: id = :meth:`event_id`, payload = the
        record, occurred_at = its ``updated_at``, metadata = ``resource``,
        ``record_id`` and ``metadata``."""
        record_id = self.record_id(record)
        updated = self.updated_at(record)
        return Event(
            self.event_id(record),
            self.event_type(record),
            record,
            ordering_key=f"{self.resource}:{record_id}" if self.ordered else None,
            occurred_at=updated,
            metadata={"resource": self.resource, "record_id": record_id, **(metadata or {})},
        )


# --- pagination ---------------------------------------------------------------------


@runtime_checkable
class Pagination(Protocol):
    """How a list endpoint says where the next page is.

    ``next_page`` reads a response and returns a token for the next page
    (kept in the source's cursor, so it must be text), or None on the last
    page. ``page_request`` turns a token back into the request for that
    page, given the first page's path and query parameters.
    """

    def next_page(self, response: httpx.Response, body: Any, items: Sequence[Any]) -> str | None:
        """The next page's token, or None when ``response`` was the last page."""
        ...

    def page_request(
        self, token: str, path: str, params: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """``(path or absolute URL, query parameters)`` of the page ``token`` names."""
        ...


@attrs.frozen
class LinkPagination:
    """Pages linked with ``Link: <https://...>; rel="next"`` (RFC 8288), as
    Shopify's REST API and GitHub's do. The next URL carries the filter
    itself, so it is requested as given (a relative link is resolved against
    the response's URL; a link to another host is refused)."""

    rel: str = "next"

    def next_page(self, response: httpx.Response, body: Any, items: Sequence[Any]) -> str | None:
        """The ``rel="next"`` URL, or None."""
        link = response.links.get(self.rel)
        url = link.get("url") if link else None
        if not url:
            return None
        return str(response.url.join(url))

    def page_request(
        self, token: str, path: str, params: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The linked URL, with no parameters added."""
        return token, {}


@attrs.frozen(kw_only=True)
class TokenPagination:
    """Pages named by a token in the body, sent back as a query parameter.

    A "next page token" (``{"next_page_token": "abc"}`` -> ``?page_token=abc``)
    by default; Stripe's ``has_more`` + ``starting_after`` is
    ``TokenPagination(param="starting_after", token=None, has_more="has_more")``
    (the token is then the last item's id).

    Args:
        param: the query parameter that asks for the next page.
        token: dotted path of the next page's token in the body; None: the
            last item's ``item_id``.
        has_more: dotted path of a "more pages follow" flag; when given and
            false, the page is the last whatever the token says.
        item_id: with ``token=None``, the field of the last item to send.
    """

    param: str = "page_token"
    token: str | None = "next_page_token"  # noqa: S105 - a field name, not a secret
    has_more: str | None = None
    item_id: str = "id"

    def next_page(self, response: httpx.Response, body: Any, items: Sequence[Any]) -> str | None:
        """The token of the next page, or None on the last."""
        if self.has_more is not None:
            try:
                more = _dig(body, self.has_more)
            except KeyError:
                more = False
            if more is not True:
                return None
        try:
            if self.token is None:
                if not items:
                    return None
                value = _dig(items[-1], self.item_id)
            else:
                value = _dig(body, self.token)
        except KeyError:
            return None
        if value is None or value == "" or isinstance(value, (bool, dict, list)):
            return None
        return str(value)

    def page_request(
        self, token: str, path: str, params: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The first page's request with ``param=token``."""
        return path, {**params, self.param: token}


# --- the cursor --------------------------------------------------------------------------


@attrs.define
class _State:
    """Where a source is: the sweep's lower bound and the ids already submitted
    at exactly that instant; within a sweep, the next page and the newest
    change seen so far."""

    since: datetime | None = None
    seen: set[str] = attrs.field(factory=set)
    page: str | None = None
    high: datetime | None = None
    high_ids: set[str] = attrs.field(factory=set)

    def encode(self) -> str:
        data: dict[str, Any] = {"v": 1}
        if self.since is not None:
            data["since"] = format_timestamp(self.since)
        if self.seen:
            data["seen"] = sorted(self.seen)
        if self.page is not None:
            data["page"] = self.page
        if self.high is not None and (self.high != self.since or self.high_ids != self.seen):
            data["high"] = format_timestamp(self.high)
            data["high_ids"] = sorted(self.high_ids)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, cursor: str, source: str) -> _State:
        try:
            data = json.loads(cursor)
            if not isinstance(data, dict) or data.get("v") != 1:
                raise ValueError("not a version 1 polling cursor")
            since = parse_timestamp(data["since"]) if data.get("since") else None
            high = parse_timestamp(data["high"]) if data.get("high") else since
            seen = {str(i) for i in data.get("seen", [])}
            high_ids = {str(i) for i in data.get("high_ids", [])} if "high" in data else set(seen)
            page = data.get("page")
            if page is not None and not isinstance(page, str):
                raise ValueError("page is not text")
        except (ValueError, TypeError, KeyError) as exc:
            raise SyncError(
                f"the saved cursor of source {source!r} is not one HttpPollingSource wrote "
                f"({type(exc).__name__}: {one_line(exc, limit=120)}); reset it to start over"
            ) from None
        return cls(since=since, seen=seen, page=page, high=high, high_ids=high_ids)

    def keep(self, record_id: str, updated: datetime) -> bool:
        """Whether a record read now is new (not submitted by an earlier sweep),
        noting it as the newest when it is."""
        if self.since is not None and (
            updated < self.since or (updated == self.since and record_id in self.seen)
        ):
            return False
        if self.high is None or updated > self.high:
            self.high, self.high_ids = updated, {record_id}
        elif updated == self.high:
            self.high_ids.add(record_id)
        return True

    def end_sweep(self) -> None:
        """The sweep read its last page: the next one starts at the newest change."""
        if self.high is not None and (self.since is None or self.high > self.since):
            self.since, self.seen = self.high, set(self.high_ids)
        elif self.high is not None:
            self.seen |= self.high_ids
        self.page = None
        self.high, self.high_ids = self.since, set(self.seen)


def _split_query(path: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``path`` without its query string, and the query's parameters merged
    under ``params``: httpx replaces a URL's query when ``params`` are given
    (and the API client always adds its own), so a next-page link such as
    ``...?page_info=abc&limit=50`` must travel as parameters."""
    if "?" not in path:
        return path, dict(params)
    parts = urlsplit(path)
    merged: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in merged:
            previous = merged[key]
            merged[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            merged[key] = value
    merged.update(params)
    return urlunsplit(parts._replace(query="")), merged


def _default_since(moment: datetime) -> str:
    return format_timestamp(moment)


# --- the source ----------------------------------------------------------------------------


class HttpPollingSource:
    """A :class:`~resilient_sync.Source` over an API's "list records changed
    since" endpoint, for reconciliation (webhooks get lost).

    >>> from resilient_sync.http import HttpDestination, HttpPollingSource, RecordEvents
    >>> shop = HttpDestination("shop", "https://example.myshopify.com/admin/api/2024-07")
    >>> orders = HttpPollingSource(
    ...     "shopify-orders", shop, "/orders.json",
    ...     records=RecordEvents("order"), items="orders", params={"status": "any"},
    ... )

    ``Producer.pull(orders)`` (or ``Dispatcher.pull``) then reads from the
    saved cursor until nothing is new; run it on a schedule. ``read`` is
    blocking (``httpx.Client``): from asyncio code, pull with a ``Producer``
    in a worker thread. Each change
    becomes ``records.to_event(record)``, so a change that also arrived by
    webhook (with the same :class:`RecordEvents`) is skipped by the queue.

    Requests: the first page of a sweep is ``GET path`` with ``params``, the
    high-water mark as ``since_param`` (absent on the very first sweep
    unless ``start`` is given) and ``limit`` as ``limit_param``; the API
    must treat the mark as inclusive (``>=``). Later pages come from
    ``pagination`` (default :class:`LinkPagination`). Records need not be
    sorted, but page through a stable order (links or ids, not offsets:
    an offset page shifts when a record changes during the sweep).

    Rate limits: ``api``'s client-side :class:`~resilient_sync.http.RateLimit`
    applies to every request. A 429 or a transient failure (5xx, timeout,
    network) is retried after its ``Retry-After`` (else 1, 2, 4 ... seconds)
    by sleeping on ``clock``, at most ``retries`` times and only when the
    wait is at most ``max_wait``; otherwise the classified error is raised
    (:class:`~resilient_sync.RateLimitedError` with ``retry_after`` for a
    429) and the pull stops with the cursor before that page: run it again
    later. Every other failure raises at once (a 401 is a
    :class:`~resilient_sync.PermissionDeniedError`, a record without an id
    or ``updated_at`` an :class:`~resilient_sync.InvalidEventError`).
    Messages never show the API's secrets (``api``'s redaction).

    Args:
        name: the source's name; its cursor is saved under it.
        api: the API client: an :class:`~resilient_sync.http.HttpDestination`
            with the base URL, auth headers, rate limit and transport.
        path: the list endpoint, relative to ``api``'s base URL.
        records: how a record becomes an event (its id and ``updated_at``
            fields, the event id); use the same one for the webhook intake.
        items: dotted path of the list of records in the JSON body
            (``"orders"``, ``"data"``), a callable ``body -> list``, or None
            when the body is the list.
        params: query parameters of every sweep's first page (filters,
            sort order: e.g. ``{"status": "any"}``).
        since_param: the query parameter of the high-water mark
            (Shopify: ``updated_at_min``; Stripe events: ``created[gte]``).
        since_format: ``datetime -> str`` for it; ISO 8601 UTC by default
            (Stripe: ``lambda t: str(int(t.timestamp()))``).
        limit_param: the page-size parameter (None: not sent).
        pagination: a :class:`Pagination` (:class:`LinkPagination`,
            :class:`TokenPagination`, or your own).
        start: the first sweep's mark (None: everything the API lists).
        max_pages: most pages one ``read`` fetches while they hold nothing
            new (the rest follows in the next ``read``).
        retries: retries of a 429 or transient failure per request.
        max_wait: longest single wait (seconds) slept before a retry.
        clock: sleeps and ``now``; ``api``'s clock by default.
    """

    def __init__(
        self,
        name: str,
        api: HttpDestination,
        path: str,
        *,
        records: RecordEvents,
        items: str | Callable[[Any], Sequence[Any]] | None = None,
        params: Mapping[str, Any] | None = None,
        since_param: str | None = "updated_at_min",
        since_format: Callable[[datetime], str] | None = None,
        limit_param: str | None = "limit",
        pagination: Pagination | None = None,
        start: datetime | None = None,
        max_pages: int = 10,
        retries: int = 3,
        max_wait: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self.name = check_name(name, "source name")
        if not isinstance(api, HttpDestination):
            raise TypeError(
                f"api must be an HttpDestination (the API client), got {type(api).__name__}"
            )
        if not isinstance(records, RecordEvents):
            raise TypeError(f"records must be a RecordEvents, got {type(records).__name__}")
        if items is not None and not isinstance(items, str) and not callable(items):
            raise TypeError(f"items must be a dotted path, a callable or None, got {items!r}")
        if pagination is not None and not isinstance(pagination, Pagination):
            raise TypeError(f"pagination must be a Pagination, got {pagination!r}")
        if start is not None and (not isinstance(start, datetime) or start.utcoffset() is None):
            raise ValueError(f"start must be a timezone-aware datetime, got {start!r}")
        for label, number in (("max_pages", max_pages), ("retries", retries)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ValueError(f"{label} must be an int >= 0, got {number!r}")
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)) or max_wait < 0:
            raise ValueError(f"max_wait must be a number of seconds >= 0, got {max_wait!r}")
        self.api = api
        self.path = path
        self.records = records
        self.items = items
        self.params = dict(params or {})
        self.since_param = since_param
        self.since_format = since_format if since_format is not None else _default_since
        self.limit_param = limit_param
        self.pagination: Pagination = pagination if pagination is not None else LinkPagination()
        self.start = start
        self.max_pages = max_pages
        self.retries = retries
        self.max_wait = float(max_wait)
        self.clock: Clock = clock if clock is not None else api.clock

    # -- Source ---------------------------------------------------------------------------

    def read(self, cursor: str | None, limit: int) -> tuple[list[Event], str | None]:
        """Up to a page of new changes after ``cursor``, and the cursor after them.

        Fetches pages until one holds a change not submitted before, the
        sweep ends, or ``max_pages`` were read; an empty list means nothing
        new for now (the cursor may still have moved).
        """
        state = _State.decode(cursor, self.name) if cursor else _State(since=self.start)
        if cursor is None:
            state.high = state.since
        events: list[Event] = []
        for _ in range(self.max_pages):
            first_path, first_params = self._first(state, limit)
            if state.page is None:
                path, params = first_path, first_params
            else:
                path, params = self.pagination.page_request(state.page, first_path, first_params)
                self._same_origin(path)
            response = self._get(path, params)
            body = self._json(response)
            items = self._items(response, body)
            for index, record in enumerate(items):
                events.extend(self._event(state, response, index, record))
            token = self.pagination.next_page(response, body, items)
            if token is None:
                state.end_sweep()
                break
            state.page = self._scrub(token)
            if events:
                break
        return events, state.encode()

    # -- steps ----------------------------------------------------------------------------

    def _first(self, state: _State, limit: int) -> tuple[str, dict[str, Any]]:
        params = dict(self.params)
        if self.since_param is not None and state.since is not None:
            params[self.since_param] = self.since_format(state.since)
        if self.limit_param is not None:
            params[self.limit_param] = limit
        return self.path, params

    def _event(
        self, state: _State, response: httpx.Response, index: int, record: Any
    ) -> list[Event]:
        try:
            record_id = self.records.record_id(record)
            updated = self.records.updated_at(record)
            if not state.keep(record_id, updated):
                return []
            return [self.records.to_event(record, metadata={"source": self.name, "via": "poll"})]
        except InvalidEventError as exc:
            where = describe_request(response.request)
            raise InvalidEventError(
                f"{self.name}: item {index} of {where}: {exc}", field=exc.field
            ) from None

    def _get(self, path: str, params: Mapping[str, Any]) -> httpx.Response:
        path, params = _split_query(path, params)
        attempt = 0
        while True:
            try:
                return self.api.request("GET", path, params=params)
            except RetryableError as exc:  # noqa: PERF203 - 429s and transient failures
                attempt += 1
                wait = exc.retry_after
                if wait is None:
                    wait = float(2 ** min(attempt - 1, 10))
                if attempt > self.retries or wait > self.max_wait:
                    raise
                logger.info(
                    "%s: %s; retry %d of %d in %.1fs", self.name, exc, attempt, self.retries, wait
                )
                self.clock.sleep(wait)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise self.api.classifier.undecodable(
                response, reason=f"the list is not JSON ({type(exc).__name__})"
            ) from None

    def _items(self, response: httpx.Response, body: Any) -> Sequence[Any]:
        where = describe_request(response.request)
        if callable(self.items):
            found: Any = self.items(body)
        elif self.items is None:
            found = body
        else:
            try:
                found = _dig(body, self.items)
            except KeyError:
                raise SyncError(
                    f"{self.name}: the response of {where} has no {self.items!r} list"
                ) from None
        if not isinstance(found, (list, tuple)):
            label = repr(self.items) if isinstance(self.items, str) else "the body"
            raise SyncError(
                f"{self.name}: {label} in the response of {where} is a "
                f"{type(found).__name__}, not a list of records"
            )
        return found

    def _origin(self, url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        return parts.scheme.lower(), parts.netloc.lower()

    def _same_origin(self, path: str) -> None:
        """A next-page URL must stay on the API's host: the client sends its
        credentials with every request."""
        if not re.match(r"(?i)^[a-z][a-z0-9+.\-]*://", path) or not self.api.base_url:
            return
        if self._origin(path) != self._origin(self.api.base_url):
            host = urlsplit(path).netloc
            raise SyncError(
                f"{self.name}: the next page is on another host ({one_line(host, limit=80)}); "
                "refused, as the API's credentials would go there too"
            )

    def _scrub(self, token: str) -> str:
        """A next-page URL without the API's own secret parameters (they are
        added again from ``api``'s params on the request), so the cursor
        saved in the queue store holds no credential."""
        secrets = self.api.classifier.secrets
        if "?" not in token or not secrets:
            return token
        parts = urlsplit(token)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        kept = [(k, v) for k, v in query if v not in secrets]
        if len(kept) == len(query):
            return token
        return urlunsplit(parts._replace(query=urlencode(kept)))

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close ``api`` (its client, if it created one)."""
        self.api.close()

    def __enter__(self) -> HttpPollingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpPollingSource({self.name!r}, {self.api!r}, {redact(self.path)!r})"

"""Vendor presets: what one argument, ``preset="stripe" | "shopify" |
"square"``, sets on an HTTP destination. Pure, no I/O.

A :class:`Preset` gathers what the vendor's public docs say about its API:
how its error bodies read (which errors are duplicates, which mean "the same
idempotency key is still in flight", which are key reuse, where the field
is), where the idempotency key goes, how bodies are encoded, how
``Retry-After`` is sent, and how its lists are paged (:class:`PresetPagination`,
data for a polling source; the destination itself does not page). Explicit
arguments to the destination override the preset's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import attrs
import httpx

from .._model import ErrorCategory
from ._classify import (
    SHOULD_RETRY_HEADERS,
    ErrorField,
    VendorRules,
    Verdict,
    _normalize_field,
)

if TYPE_CHECKING:
    from ._source import Pagination

__all__ = ["PRESETS", "Preset", "PresetPagination", "preset_named"]

Encoding = Literal["json", "form"]

_KEY_REUSE_NOTE = (
    "idempotency key reused for a different request: a key bug, never fixed under the same key"
)
_IN_FLIGHT_NOTE = "idempotency key still in flight; retrying shortly"


@attrs.frozen(kw_only=True)
class PresetPagination:
    """How a vendor's list endpoints page, for a polling source to follow.

    Attributes:
        style: ``"cursor"`` (the next page is asked for with a cursor taken
            from the body) or ``"link"`` (the next page's URL is in the
            ``Link`` response header).
        items: where the records are in a page's body (``"data"``); None
            when it depends on the endpoint (Shopify: ``"customers"``,
            ``"orders"`` ...).
        cursor_param: the parameter that takes the cursor on the next request.
        next_cursor: the body field holding the next page's cursor (Square's
            ``"cursor"``); None when the cursor is the last record's
            ``cursor_item_field`` (Stripe's ``starting_after``) or in a link.
        cursor_item_field: the record field whose value (of the last record
            of a page) is the next cursor (Stripe: ``"id"``).
        has_more: the body flag saying another page exists (Stripe's
            ``"has_more"``); None when the cursor's presence says it.
        link_rel: the ``Link`` header relation of the next page.
        limit_param, max_limit: the page-size parameter and its largest value.
        cursor_in_body: the cursor goes into the JSON body (Square's search
            endpoints) rather than the query string.
    """

    style: Literal["cursor", "link"]
    items: str | None = None
    cursor_param: str
    next_cursor: str | None = None
    cursor_item_field: str | None = None
    has_more: str | None = None
    link_rel: str = "next"
    limit_param: str = "limit"
    max_limit: int | None = None
    cursor_in_body: bool = False

    def for_source(self) -> Pagination:
        """The same paging as a pagination object of :class:`HttpPollingSource`
        (``LinkPagination`` or ``TokenPagination``)."""
        from ._source import LinkPagination, TokenPagination  # noqa: PLC0415 - no cycle at import

        if self.cursor_in_body:
            raise ValueError(
                "this vendor pages its search endpoints with a cursor in the JSON body; "
                "HttpPollingSource pages with query parameters: use a list endpoint"
            )
        if self.style == "link":
            return LinkPagination(rel=self.link_rel)
        if self.next_cursor is None:
            return TokenPagination(
                param=self.cursor_param,
                token=None,
                has_more=self.has_more,
                item_id=self.cursor_item_field or "id",
            )
        return TokenPagination(
            param=self.cursor_param, token=self.next_cursor, has_more=self.has_more
        )

    def next_params(self, response: httpx.Response) -> dict[str, str] | None:
        """The parameters asking for the page after ``response``, or None on
        the last page.

        >>> stripe = PRESETS["stripe"].pagination
        >>> page = httpx.Response(200, json={"data": [{"id": "cus_1"}, {"id": "cus_2"}],
        ...                                  "has_more": True})
        >>> stripe.next_params(page)
        {'starting_after': 'cus_2'}
        """
        if self.style == "link":
            url = _link(response.headers.get("link", ""), self.link_rel)
            if url is None:
                return None
            params = dict(parse_qsl(urlsplit(url).query))
            cursor = params.get(self.cursor_param)
            return {self.cursor_param: cursor} if cursor else None
        try:
            body = response.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        if self.has_more is not None and not body.get(self.has_more):
            return None
        if self.next_cursor is not None:
            cursor = body.get(self.next_cursor)
            return {self.cursor_param: str(cursor)} if cursor else None
        records = body.get(self.items) if self.items else None
        if not isinstance(records, list) or not records or self.cursor_item_field is None:
            return None
        last = records[-1]
        cursor = last.get(self.cursor_item_field) if isinstance(last, dict) else None
        return {self.cursor_param: str(cursor)} if cursor else None


_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[\w-]+\s*=\s*(?:"[^"]*"|[^;,]*)\s*)*)')


def _link(header: str, rel: str) -> str | None:
    """The URL of relation ``rel`` in a ``Link`` header (RFC 8288)."""
    for match in _LINK.finditer(header):
        for name, value in re.findall(r';\s*([\w-]+)\s*=\s*("[^"]*"|[^;,]*)', match.group(2)):
            if name.lower() == "rel" and rel in value.strip('"').split():
                return match.group(1)
    return None


@attrs.frozen(kw_only=True)
class Preset:
    """What a vendor preset sets on an HTTP destination (explicit arguments
    to the destination override each of these).

    Attributes:
        name: ``"stripe"``, ``"shopify"``, ``"square"`` or your own.
        classify: body rules ``(response, body) -> Verdict | None``
            (:class:`~resilient_sync.http.Verdict`), consulted after your
            ``classify_body``; a verdict is final.
        error_field: where error bodies name the field (``body -> name``).
        idempotency_header, idempotency_key_field: where the key goes.
        honours_idempotency_key: whether the API dedupes by the key at all
            (Shopify's REST Admin API does not: look before you create with
            ``find_existing``).
        encoding: the default body: ``"json"`` or ``"form"``.
        should_retry_headers: the vendor's override headers.
        retry_after_default: the wait after a 429 without ``Retry-After``
            (None: the retry policy's backoff).
        max_retry_after: cap of a ``Retry-After``.
        in_flight_delay: the retry delay when the key is still in flight.
        pagination: how the vendor's lists page (:class:`PresetPagination`).
        notes: what a person should know (shown in the docs and ``repr``).
        docs: the vendor pages this preset follows.
    """

    name: str
    classify: VendorRules | None = None
    error_field: ErrorField | None = None
    idempotency_header: str | None = "Idempotency-Key"
    idempotency_key_field: str | None = None
    honours_idempotency_key: bool = True
    encoding: Encoding = "json"
    should_retry_headers: tuple[str, ...] = SHOULD_RETRY_HEADERS
    retry_after_default: float | None = None
    max_retry_after: float = 3600.0
    in_flight_delay: float = 1.0
    pagination: PresetPagination | None = None
    notes: str = ""
    docs: tuple[str, ...] = ()


# --- Stripe ------------------------------------------------------------------------------


def _stripe_error(body: Any) -> dict[str, Any]:
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def stripe_field(body: Any) -> str | None:
    """Stripe names the field in ``error.param`` (``tax_id_data[0][value]``)."""
    param = _stripe_error(body).get("param")
    return _normalize_field(param) or None if isinstance(param, str) else None


def stripe_rules(response: httpx.Response, body: Any) -> Verdict | None:
    """Stripe's error bodies (https://docs.stripe.com/api/errors,
    https://docs.stripe.com/error-codes, https://docs.stripe.com/api/idempotent_requests):

    - ``idempotency_error`` with code ``idempotency_key_in_use`` (409): the
      same key is still being processed: TRANSIENT, retried shortly;
    - any other ``idempotency_error`` (a 400: the key was used with other
      parameters): UNEXPECTED, a key bug;
    - a 402 is "the parameters were valid but the request failed" (a
      declined card): this delivery's failure, DATA_FORMAT with ``param``
      (MAPPING for ``resource_missing``), never a pause;
    - ``resource_missing`` with a ``param`` on a 400: MAPPING (a missing
      reference such as an unknown customer or price).

    Everything else is left to the table (``Stripe-Should-Retry`` included).
    """
    error = _stripe_error(body)
    if not error:
        return None
    kind, code = error.get("type"), str(error.get("code") or "")
    status = response.status_code
    if kind == "idempotency_error":
        if code == "idempotency_key_in_use" or status == 409:
            return Verdict(ErrorCategory.TRANSIENT, _IN_FLIGHT_NOTE, in_flight=True)
        return Verdict(ErrorCategory.UNEXPECTED, _KEY_REUSE_NOTE)
    if status == 402:
        missing = code == "resource_missing"
        category = ErrorCategory.MAPPING if missing else ErrorCategory.DATA_FORMAT
        return Verdict(category, "an error of this request only; the destination is not paused")
    if status == 400 and code == "resource_missing" and error.get("param"):
        return Verdict(ErrorCategory.MAPPING, "the request refers to a record that does not exist")
    return None


# --- Shopify -----------------------------------------------------------------------------

_TAKEN = re.compile(r"already (?:been )?taken|already exists")


def shopify_field(body: Any) -> str | None:
    """Shopify names fields as the keys of ``errors`` (``{"errors": {"email": [...]}}``)."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, dict):
        for key in errors:
            if isinstance(key, str) and key not in ("base", "message", "detail"):
                return _normalize_field(key) or None
    return None


def shopify_rules(response: httpx.Response, body: Any) -> Verdict | None:
    """Shopify's REST Admin API (https://shopify.dev/docs/api/admin-rest/usage/response-codes):
    a 422 whose ``errors`` say a value "has already been taken" is a
    DUPLICATE (the customer exists: link to it); other 422s are left to the
    table (DATA_FORMAT with the field)."""
    if response.status_code != 422 or not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if isinstance(errors, dict):
        for messages in errors.values():
            items = messages if isinstance(messages, list) else [messages]
            if any(isinstance(m, str) and _TAKEN.search(m.lower()) for m in items):
                return Verdict(ErrorCategory.DUPLICATE, "the record already exists")
    return None


# --- Square ------------------------------------------------------------------------------

_SQUARE_CATEGORIES: Mapping[str, ErrorCategory] = {
    "RATE_LIMIT_ERROR": ErrorCategory.RATE_LIMITED,
    "AUTHENTICATION_ERROR": ErrorCategory.PERMISSION,
    "API_ERROR": ErrorCategory.TRANSIENT,
    "PAYMENT_METHOD_ERROR": ErrorCategory.DATA_FORMAT,
    "REFUND_ERROR": ErrorCategory.DATA_FORMAT,
}


def _square_errors(body: Any) -> list[dict[str, Any]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def square_field(body: Any) -> str | None:
    """Square names the field in ``errors[].field``."""
    for error in _square_errors(body):
        field = error.get("field")
        if isinstance(field, str) and field:
            return _normalize_field(field) or None
    return None


def square_rules(response: httpx.Response, body: Any) -> Verdict | None:
    """Square's error list (https://developer.squareup.com/docs/build-basics/handling-errors,
    ``ErrorCategory`` and ``ErrorCode`` in its API reference): the first
    error decides (its status is the response's). ``IDEMPOTENCY_KEY_REUSED``
    is UNEXPECTED (a key bug); ``NOT_FOUND`` is MAPPING; the categories map
    as ``RATE_LIMIT_ERROR``: RATE_LIMITED, ``AUTHENTICATION_ERROR``:
    PERMISSION, ``API_ERROR``: TRANSIENT, ``PAYMENT_METHOD_ERROR`` and
    ``REFUND_ERROR``: DATA_FORMAT (that payment only);
    ``INVALID_REQUEST_ERROR`` is left to the table (DATA_FORMAT with the
    field, 404: MAPPING)."""
    errors = _square_errors(body)
    if not errors:
        return None
    first = errors[0]
    code, category = str(first.get("code") or ""), str(first.get("category") or "")
    if code == "IDEMPOTENCY_KEY_REUSED":
        return Verdict(ErrorCategory.UNEXPECTED, _KEY_REUSE_NOTE)
    if code == "NOT_FOUND":
        return Verdict(ErrorCategory.MAPPING)
    if category in _SQUARE_CATEGORIES:
        found = _SQUARE_CATEGORIES[category]
        note = "an error of this request only" if found is ErrorCategory.DATA_FORMAT else ""
        return Verdict(found, note)
    return None


STRIPE = Preset(
    name="stripe",
    classify=stripe_rules,
    error_field=stripe_field,
    idempotency_header="Idempotency-Key",
    encoding="form",
    should_retry_headers=("Stripe-Should-Retry",),
    pagination=PresetPagination(
        style="cursor",
        items="data",
        cursor_param="starting_after",
        cursor_item_field="id",
        has_more="has_more",
        max_limit=100,
    ),
    notes=(
        "Form-encoded bodies (a[b]=1); the key in Idempotency-Key, replayed by Stripe for 24 "
        "hours (a cached 500 included, with Stripe-Should-Retry: false: UNEXPECTED). Stripe "
        "sends no Retry-After on a 429: the retry policy's backoff decides."
    ),
    docs=(
        "https://docs.stripe.com/api/errors",
        "https://docs.stripe.com/api/idempotent_requests",
        "https://docs.stripe.com/api/pagination",
        "https://docs.stripe.com/rate-limits",
    ),
)

SHOPIFY = Preset(
    name="shopify",
    classify=shopify_rules,
    error_field=shopify_field,
    idempotency_header="Idempotency-Key",
    honours_idempotency_key=False,
    retry_after_default=2.0,
    pagination=PresetPagination(
        style="link", cursor_param="page_info", link_rel="next", max_limit=250
    ),
    notes=(
        "Shopify's REST Admin API takes no idempotency key: the Idempotency-Key header is sent "
        "(for your logs) and ignored, so a create retried after a timeout can create twice. "
        "Look before you create with find_existing, and link duplicates with "
        "resolve_duplicate (422 'has already been taken' is a DUPLICATE). A 429 carries "
        "Retry-After in seconds as a decimal ('2.0')."
    ),
    docs=(
        "https://shopify.dev/docs/api/admin-rest/usage/response-codes",
        "https://shopify.dev/docs/api/admin-rest/usage/rate-limits",
        "https://shopify.dev/docs/api/admin-rest/usage/pagination",
    ),
)

SQUARE = Preset(
    name="square",
    classify=square_rules,
    error_field=square_field,
    idempotency_header=None,
    idempotency_key_field="idempotency_key",
    pagination=PresetPagination(style="cursor", cursor_param="cursor", next_cursor="cursor"),
    notes=(
        "The key goes in the JSON body as idempotency_key (Square ignores a header). Errors "
        "come as a list of {category, code, detail, field}. List endpoints take the cursor "
        "as a query parameter, search endpoints in the body (cursor_in_body)."
    ),
    docs=(
        "https://developer.squareup.com/docs/build-basics/handling-errors",
        "https://developer.squareup.com/docs/build-basics/common-api-patterns/idempotency",
        "https://developer.squareup.com/docs/working-with-apis/pagination",
    ),
)

#: The built-in presets by name.
PRESETS: Mapping[str, Preset] = {p.name: p for p in (STRIPE, SHOPIFY, SQUARE)}


def preset_named(preset: str | Preset | None) -> Preset | None:
    """A preset from its name (or the preset itself)."""
    if preset is None or isinstance(preset, Preset):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    raise ValueError(f"preset must be one of {sorted(PRESETS)} or a Preset, got {preset!r}")

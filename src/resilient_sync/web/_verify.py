"""Who sent this webhook? Signature checks and the request-to-event mapping.

Pure: no I/O and no web framework, so a verifier works in any framework
(the Starlette intake in ``_intake.py`` is one caller). ``verify`` answers
"is this request authentic and fresh?"; ``to_event`` turns an authentic one
into an :class:`~resilient_sync.Event`.

Every check follows the vendor's documentation (the tests cite it): HMAC-
SHA256 over the raw body bytes (never re-serialised JSON), compared with
:func:`hmac.compare_digest`, against each of several secrets (rotation), and
for the schemes that sign a timestamp, a tolerance window both ways (a
replayed request is refused once it is old; within the window the queue
drops it by event id anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from .._errors import InvalidEventError, SyncError
from .._model import Event
from .._submit import destination_names
from .._text import one_line
from ..http._source import RecordEvents, _dig, parse_timestamp

__all__ = [
    "GitHubWebhook",
    "ShopifyWebhook",
    "StandardWebhook",
    "StripeWebhook",
    "ToEvent",
    "WebhookVerificationError",
    "WebhookVerifier",
]

#: ``to_event(headers, body) -> Event``: headers with lower-case names, body
#: the decoded JSON.
ToEvent = Callable[[Mapping[str, str], Any], Event]


class WebhookVerificationError(SyncError):
    """The webhook's signature is missing, malformed, does not match, or its
    timestamp is outside the tolerance window.

    The message says which, for the intake's log; the sender only ever sees
    a bare 401.
    """


@runtime_checkable
class WebhookVerifier(Protocol):
    """Checks one sender's webhooks and maps them to events.

    Header names are lower case (``"x-shopify-topic"``). Both methods are
    called for every request, possibly from several threads at once, so
    they must not keep per-request state. ``to`` (a plain attribute is
    fine) names the destinations the events go to (None: every destination
    the submitter knows).
    """

    @property
    def to(self) -> str | Sequence[str] | None:
        """The destination names the events go to (None: all)."""
        ...

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: datetime) -> None:
        """Raise :class:`WebhookVerificationError` unless the request is authentic
        and fresh at ``now``. ``body`` is the raw body, exactly as received."""
        ...

    def to_event(self, headers: Mapping[str, str], body: Any) -> Event:
        """The event of an authentic request (``body``: the decoded JSON).

        Raise :class:`~resilient_sync.InvalidEventError` (or ``KeyError``,
        ``ValueError``) saying what is missing: the sender gets a 400 with
        that message.
        """
        ...


def _keys(
    secrets: str | bytes | Sequence[str | bytes], decode: Callable[[str], bytes]
) -> list[bytes]:
    items: Sequence[str | bytes] = [secrets] if isinstance(secrets, (str, bytes)) else secrets
    keys: list[bytes] = []
    for index, secret in enumerate(items):
        if isinstance(secret, bytes):
            key = secret
        elif isinstance(secret, str):
            key = decode(secret)
        else:
            raise TypeError(f"secret #{index} must be a str or bytes, got {type(secret).__name__}")
        if not key:
            raise ValueError(f"secret #{index} is empty")
        keys.append(key)
    if not keys:
        raise ValueError("give at least one secret (several while rotating them)")
    return keys


def _utf8(secret: str) -> bytes:
    return secret.encode("utf-8")


def _ascii(value: str) -> bytes:
    """A header value as bytes for compare_digest (which refuses non-ASCII str)."""
    return value.encode("utf-8", "replace")


def _matches(expected: Sequence[bytes], given: Sequence[bytes]) -> bool:
    """Whether any given signature equals any expected one, comparing every
    pair in constant time (no early exit that would tell which secret matched)."""
    found = False
    for mine in expected:
        for theirs in given:
            found |= hmac.compare_digest(mine, theirs)
    return found


def _label(value: Any) -> str:
    """A header value fit for metadata and logs (the text gate, one line)."""
    return one_line(value, limit=255)


class _SignedWebhook:
    """What the four vendor verifiers share: secrets, destinations and the
    mapping (default, ``records=`` or ``to_event=``)."""

    #: The vendor's name in messages and metadata.
    vendor: ClassVar[str] = "webhook"

    def __init__(
        self,
        secrets: str | bytes | Sequence[str | bytes],
        *,
        to: str | Sequence[str] | None = None,
        records: RecordEvents | None = None,
        record_path: str = "",
        to_event: ToEvent | None = None,
    ) -> None:
        self._secrets = _keys(secrets, self._decode_secret)
        self.to: list[str] | None = None if to is None else list(destination_names(to))
        if records is not None and not isinstance(records, RecordEvents):
            raise TypeError(f"records must be a RecordEvents, got {type(records).__name__}")
        if to_event is not None and not callable(to_event):
            raise TypeError(f"to_event must be callable, got {to_event!r}")
        if records is not None and to_event is not None:
            raise ValueError("give records= or to_event=, not both")
        if not isinstance(record_path, str):
            raise TypeError(f"record_path must be a dotted path, got {record_path!r}")
        self.records = records
        self.record_path = record_path
        self._to_event = to_event

    @staticmethod
    def _decode_secret(secret: str) -> bytes:
        return _utf8(secret)

    # -- mapping ---------------------------------------------------------------------

    def to_event(self, headers: Mapping[str, str], body: Any) -> Event:
        """The event of a verified request: ``to_event(headers, body)`` when
        given; with ``records``, the change of the record at ``record_path``
        (its id from :meth:`RecordEvents.event_id`, the vendor's ids in
        metadata); otherwise the vendor's own event (see the class)."""
        if self._to_event is not None:
            event = self._to_event(headers, body)
            if not isinstance(event, Event):
                raise TypeError(f"to_event must return an Event, got {type(event).__name__}")
            return event
        if self.records is not None:
            try:
                record = _dig(body, self.record_path)
            except KeyError:
                raise InvalidEventError(
                    f"the body has no {self.record_path!r}", field=self.record_path
                ) from None
            meta = {**self.metadata(headers, body), "via": "webhook"}
            return self.records.to_event(record, metadata=meta)
        return self.default_event(headers, body)

    def metadata(self, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
        """What the event's metadata records about the webhook (vendor ids,
        topic ...), each value through the text gate."""
        return {"webhook": self.vendor}

    def default_event(self, headers: Mapping[str, str], body: Any) -> Event:
        """The vendor's own event (overridden per vendor)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        count = len(self._secrets)
        mapping = ""
        if self.records is not None:
            mapping = f", records={self.records!r}"
        elif self._to_event is not None:
            mapping = ", to_event=<custom>"
        plural = "s" if count != 1 else ""
        return f"{type(self).__name__}(<{count} secret{plural}>, to={self.to!r}{mapping})"


def _header(headers: Mapping[str, str], name: str, label: str) -> str:
    value = headers.get(name)
    if not value:
        raise InvalidEventError(f"the {label} header is missing", field=label)
    return value


def _body_text(body: Any, key: str, what: str) -> str:
    if not isinstance(body, Mapping):
        raise InvalidEventError(f"the body is not a JSON object ({what})", field=key)
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidEventError(f"the body has no {key!r} ({what})", field=key)
    return value


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _tolerance(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"tolerance must be a number of seconds > 0 (or None), got {value!r}")
    return float(value)


def _fresh(timestamp: int, now: datetime, tolerance: float | None) -> None:
    if tolerance is None:
        return
    age = now.timestamp() - timestamp
    if age > tolerance:
        raise WebhookVerificationError(
            f"the signed timestamp is {age:.0f}s old; the tolerance is {tolerance:g}s"
        )
    if -age > tolerance:
        raise WebhookVerificationError(
            f"the signed timestamp is {-age:.0f}s in the future; the tolerance is {tolerance:g}s"
        )


_DIGITS = re.compile(r"\d{1,15}")


class _TimedWebhook(_SignedWebhook):
    """A scheme that signs a timestamp: ``tolerance`` seconds either way (None
    disables the check, not recommended)."""

    def __init__(
        self,
        secrets: str | bytes | Sequence[str | bytes],
        *,
        tolerance: float | None = 300.0,
        to: str | Sequence[str] | None = None,
        records: RecordEvents | None = None,
        record_path: str = "",
        to_event: ToEvent | None = None,
    ) -> None:
        super().__init__(
            secrets, to=to, records=records, record_path=record_path, to_event=to_event
        )
        self.tolerance = _tolerance(tolerance)


# --- Shopify ---------------------------------------------------------------------------


class ShopifyWebhook(_SignedWebhook):
    """Shopify's webhooks: ``X-Shopify-Hmac-Sha256`` is the base64 HMAC-SHA256
    of the raw body, keyed with the app's client secret.

    Shopify signs no timestamp, so there is no replay window: a redelivery
    is dropped by the queue by event id. The id and topic headers are not
    signed either: a captured request sent again under a new
    ``X-Shopify-Event-Id`` is a new event. Map the body with ``records=``
    (ids from the signed record) where replays matter.

    The default event: id = ``X-Shopify-Event-Id`` (Shopify's documented
    duplicate key, the same for every webhook of one event), or
    ``X-Shopify-Webhook-Id`` when absent; type = ``X-Shopify-Topic``
    (``orders/create``); payload = the body; occurred_at =
    ``X-Shopify-Triggered-At``; metadata = webhook id, event id, topic, shop
    domain, API version.

    Args:
        secrets: the client secret, or several while rotating (any matches).
        to: destination names (None: all).
        records: map the body as a changed record instead (same event ids
            as :class:`~resilient_sync.http.HttpPollingSource` with the same
            :class:`~resilient_sync.http.RecordEvents`).
        record_path: where the record is in the body (``""``: the body).
        to_event: your own mapping ``(headers, body) -> Event``.
    """

    vendor = "shopify"

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: datetime) -> None:
        """See :class:`WebhookVerifier`."""
        header = headers.get("x-shopify-hmac-sha256")
        if not header:
            raise WebhookVerificationError("the X-Shopify-Hmac-Sha256 header is missing")
        try:
            given = base64.b64decode(header.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookVerificationError("X-Shopify-Hmac-Sha256 is not base64") from None
        expected = [hmac.new(key, body, hashlib.sha256).digest() for key in self._secrets]
        if not _matches(expected, [given]):
            raise WebhookVerificationError(
                f"X-Shopify-Hmac-Sha256 matches none of the {len(expected)} secret(s)"
            )

    def metadata(self, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
        """Webhook id, event id, topic, shop domain, API version, triggered at."""
        meta: dict[str, Any] = {"webhook": self.vendor}
        for name, key in (
            ("x-shopify-webhook-id", "webhook_id"),
            ("x-shopify-event-id", "event_id"),
            ("x-shopify-topic", "topic"),
            ("x-shopify-shop-domain", "shop_domain"),
            ("x-shopify-api-version", "api_version"),
            ("x-shopify-triggered-at", "triggered_at"),
        ):
            value = headers.get(name)
            if value:
                meta[key] = _label(value)
        return meta

    def default_event(self, headers: Mapping[str, str], body: Any) -> Event:
        """See the class docstring."""
        event_id = headers.get("x-shopify-event-id") or _header(
            headers, "x-shopify-webhook-id", "X-Shopify-Webhook-Id"
        )
        topic = _header(headers, "x-shopify-topic", "X-Shopify-Topic")
        return Event(
            event_id,
            topic,
            body,
            occurred_at=_when(headers.get("x-shopify-triggered-at")),
            metadata=self.metadata(headers, body),
        )


# --- Stripe ----------------------------------------------------------------------------


class StripeWebhook(_TimedWebhook):
    """Stripe's webhooks: ``Stripe-Signature: t=<unix time>,v1=<hex>[,v1=...]``,
    the hex HMAC-SHA256 of ``"<t>.<raw body>"`` keyed with the endpoint's
    signing secret (``whsec_...``, used as it is). Any ``v1`` may match (Stripe
    sends several while a secret is being rolled); ``t`` must be within
    ``tolerance`` seconds of now, either way.

    The default event: id = the body's ``id`` (``evt_...``; Stripe resends an
    event under the same id), type = its ``type``, payload = the body,
    occurred_at = its ``created``; metadata = event id, type, livemode, API
    version, connected account.

    Args:
        secrets: the signing secret, or several while rotating.
        tolerance: seconds (default 300, as Stripe's libraries); None
            disables the check (not recommended).
        to: as for :class:`ShopifyWebhook`.
        records: as for :class:`ShopifyWebhook`.
        record_path: as for :class:`ShopifyWebhook`.
        to_event: as for :class:`ShopifyWebhook`.
    """

    vendor = "stripe"

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: datetime) -> None:
        """See :class:`WebhookVerifier`."""
        header = headers.get("stripe-signature")
        if not header:
            raise WebhookVerificationError("the Stripe-Signature header is missing")
        timestamp: int | None = None
        given: list[bytes] = []
        for item in header.split(","):
            name, sep, value = item.strip().partition("=")
            if not sep:
                continue
            if name == "t" and _DIGITS.fullmatch(value):
                timestamp = int(value)
            elif name == "v1" and value:
                given.append(_ascii(value.strip().lower()))
        if timestamp is None:
            raise WebhookVerificationError("Stripe-Signature has no usable t= timestamp")
        if not given:
            raise WebhookVerificationError("Stripe-Signature has no v1= signature")
        _fresh(timestamp, now, self.tolerance)
        signed = f"{timestamp}.".encode() + body
        expected = [
            hmac.new(key, signed, hashlib.sha256).hexdigest().encode() for key in self._secrets
        ]
        if not _matches(expected, given):
            raise WebhookVerificationError(
                f"no v1 signature of Stripe-Signature matches the {len(expected)} secret(s)"
            )

    def metadata(self, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
        """Stripe's event id, type, livemode, API version and account."""
        meta: dict[str, Any] = {"webhook": self.vendor}
        if isinstance(body, Mapping):
            for key, label in (
                ("id", "event_id"),
                ("type", "type"),
                ("api_version", "api_version"),
                ("account", "account"),
            ):
                value = body.get(key)
                if isinstance(value, str) and value:
                    meta[label] = _label(value)
            if isinstance(body.get("livemode"), bool):
                meta["livemode"] = body["livemode"]
        return meta

    def default_event(self, headers: Mapping[str, str], body: Any) -> Event:
        """See the class docstring."""
        event_id = _body_text(body, "id", "a Stripe event id such as evt_...")
        kind = _body_text(body, "type", "a Stripe event type such as customer.created")
        return Event(
            event_id,
            kind,
            body,
            occurred_at=_when(body.get("created")),
            metadata=self.metadata(headers, body),
        )


# --- Standard Webhooks -------------------------------------------------------------------


def _standard_secret(secret: str) -> bytes:
    """A Standard Webhooks secret: ``whsec_`` + base64 (padding optional), as
    the reference library reads it; a malformed one fails at startup."""
    text = secret.strip()
    if text.startswith("whsec_"):
        text = text[len("whsec_") :]
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "a Standard Webhooks secret is 'whsec_' followed by base64; this one is not base64"
        ) from None


class StandardWebhook(_TimedWebhook):
    """`Standard Webhooks <https://www.standardwebhooks.com>`_ (Svix, Resend,
    Clerk, OpenAI, ...): headers ``webhook-id``, ``webhook-timestamp`` (unix
    seconds) and ``webhook-signature``, a space-separated list of
    ``v1,<base64>`` signatures (several during a secret rotation), each the
    HMAC-SHA256 of ``"<id>.<timestamp>.<raw body>"`` keyed with the base64
    secret after ``whsec_``. Signatures of other versions (``v1a``) are
    ignored; the timestamp must be within ``tolerance`` seconds of now.

    The default event: id = ``webhook-id`` (the same on every retry), type =
    the body's ``type``, payload = the body, occurred_at = the body's
    ``timestamp`` (else the header's); metadata = webhook id and timestamp.

    Args:
        secrets: ``whsec_...`` secrets (or raw key bytes), several while rotating.
        tolerance: seconds (default 300, as the reference libraries).
        to: as for :class:`ShopifyWebhook`.
        records: as for :class:`ShopifyWebhook`.
        record_path: as for :class:`ShopifyWebhook`.
        to_event: as for :class:`ShopifyWebhook`.
    """

    vendor = "standard-webhooks"

    @staticmethod
    def _decode_secret(secret: str) -> bytes:
        return _standard_secret(secret)

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: datetime) -> None:
        """See :class:`WebhookVerifier`."""
        msg_id = headers.get("webhook-id")
        stamp = headers.get("webhook-timestamp")
        signature = headers.get("webhook-signature")
        if not (msg_id and stamp and signature):
            raise WebhookVerificationError(
                "a webhook-id, webhook-timestamp or webhook-signature header is missing"
            )
        if not _DIGITS.fullmatch(stamp.strip()):
            raise WebhookVerificationError("webhook-timestamp is not a unix time in seconds")
        timestamp = int(stamp.strip())
        _fresh(timestamp, now, self.tolerance)
        given: list[bytes] = []
        for item in signature.split():
            version, sep, value = item.partition(",")
            if version != "v1" or not sep:
                continue
            try:
                given.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
        if not given:
            raise WebhookVerificationError("webhook-signature has no v1 signature")
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in self._secrets]
        if not _matches(expected, given):
            raise WebhookVerificationError(
                f"no v1 signature of webhook-signature matches the {len(expected)} secret(s)"
            )

    def metadata(self, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
        """The webhook id and timestamp."""
        meta: dict[str, Any] = {"webhook": self.vendor}
        for name, key in (("webhook-id", "webhook_id"), ("webhook-timestamp", "timestamp")):
            value = headers.get(name)
            if value:
                meta[key] = _label(value)
        return meta

    def default_event(self, headers: Mapping[str, str], body: Any) -> Event:
        """See the class docstring."""
        event_id = _header(headers, "webhook-id", "webhook-id")
        kind = _body_text(body, "type", "the event type, e.g. contact.created")
        occurred = _when(body.get("timestamp")) or _when(headers.get("webhook-timestamp"))
        return Event(
            event_id, kind, body, occurred_at=occurred, metadata=self.metadata(headers, body)
        )


# --- GitHub ------------------------------------------------------------------------------


class GitHubWebhook(_SignedWebhook):
    """GitHub's webhooks (and others of the same style):
    ``X-Hub-Signature-256: sha256=<hex>``, the hex HMAC-SHA256 of the raw
    body keyed with the webhook's secret.

    GitHub signs no timestamp, so there is no replay window: a redelivery
    (same ``X-GitHub-Delivery``) is dropped by the queue by event id. The
    delivery and event headers are not signed either: a captured request
    sent again under a new ``X-GitHub-Delivery`` is a new event.

    The default event: id = ``X-GitHub-Delivery``; type = ``X-GitHub-Event``,
    plus ``.<action>`` when the body has one (``issues.opened``); payload =
    the body; metadata = delivery, event, action, hook id.

    Args:
        secrets: the webhook secret, or several while rotating.
        to: as for :class:`ShopifyWebhook`.
        records: as for :class:`ShopifyWebhook`.
        record_path: as for :class:`ShopifyWebhook`.
        to_event: as for :class:`ShopifyWebhook`.
    """

    vendor = "github"

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: datetime) -> None:
        """See :class:`WebhookVerifier`."""
        header = headers.get("x-hub-signature-256")
        if not header:
            raise WebhookVerificationError("the X-Hub-Signature-256 header is missing")
        scheme, sep, value = header.strip().partition("=")
        if scheme != "sha256" or not sep or not value:
            raise WebhookVerificationError("X-Hub-Signature-256 is not sha256=<hex>")
        expected = [
            hmac.new(key, body, hashlib.sha256).hexdigest().encode() for key in self._secrets
        ]
        if not _matches(expected, [_ascii(value.lower())]):
            raise WebhookVerificationError(
                f"X-Hub-Signature-256 matches none of the {len(expected)} secret(s)"
            )

    def metadata(self, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
        """The delivery id, event, action and hook id."""
        meta: dict[str, Any] = {"webhook": self.vendor}
        for name, key in (
            ("x-github-delivery", "delivery"),
            ("x-github-event", "event"),
            ("x-github-hook-id", "hook_id"),
        ):
            value = headers.get(name)
            if value:
                meta[key] = _label(value)
        if isinstance(body, Mapping) and isinstance(body.get("action"), str):
            meta["action"] = _label(body["action"])
        return meta

    def default_event(self, headers: Mapping[str, str], body: Any) -> Event:
        """See the class docstring."""
        delivery = _header(headers, "x-github-delivery", "X-GitHub-Delivery")
        kind = _header(headers, "x-github-event", "X-GitHub-Event")
        action = body.get("action") if isinstance(body, Mapping) else None
        if isinstance(action, str) and action:
            kind = f"{kind}.{action}"
        return Event(delivery, kind, body, metadata=self.metadata(headers, body))

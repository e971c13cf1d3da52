"""The webhook verifiers, on their own (no HTTP): signatures computed here the
way each vendor documents them, independently of the code under test, and
the vendors' own published test vectors.

The signing helpers (``SIGNERS``) are shared with ``test_web_intake.py`` and
``test_web_http.py``, which run the same matrix through the ASGI interface
and through real HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from resilient_sync import Event, InvalidEventError
from resilient_sync.http import RecordEvents
from resilient_sync.web import (
    GitHubWebhook,
    ShopifyWebhook,
    StandardWebhook,
    StripeWebhook,
    WebhookVerificationError,
    WebhookVerifier,
)

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
OLD_SECRET = "old-secret-0123456789"
NEW_SECRET = "new-secret-9876543210"
#: Standard Webhooks secrets are ``whsec_`` + base64 of 24..64 random bytes.
STD_OLD = "whsec_" + base64.b64encode(b"old-standard-webhooks-key-01").decode()
STD_NEW = "whsec_" + base64.b64encode(b"new-standard-webhooks-key-02").decode()


def _hmac(key: bytes, message: bytes) -> hmac.HMAC:
    return hmac.new(key, message, hashlib.sha256)


# --- signing as the vendors document it ---------------------------------------------------


def sign_shopify(body: bytes, secret: str, *, at: datetime = NOW, **ids: str) -> dict[str, str]:
    """Shopify, "Verify the webhook" (shopify.dev/docs/apps/build/webhooks/subscribe/https,
    step "Verify the webhook"): the ``X-Shopify-Hmac-SHA256`` header is the
    base64-encoded HMAC-SHA256 digest of the raw request body, keyed with the
    app's client secret. Headers per shopify.dev/docs/apps/build/webhooks
    ("Webhook headers")."""
    digest = _hmac(secret.encode("utf-8"), body).digest()
    return {
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Topic": ids.get("topic", "orders/updated"),
        "X-Shopify-Webhook-Id": ids.get("webhook_id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
        "X-Shopify-Shop-Domain": "example.myshopify.com",
        "X-Shopify-API-Version": "2024-07",
        "X-Shopify-Triggered-At": at.isoformat(),
        "Content-Type": "application/json",
    }


def sign_stripe(
    body: bytes, secret: str | list[str], *, at: datetime = NOW, **_: str
) -> dict[str, str]:
    """Stripe, "Verify signatures manually" (docs.stripe.com/webhooks#verify-manually):
    ``Stripe-Signature: t=<timestamp>,v1=<signature>``; the signed payload is
    the timestamp, the character ``.`` and the raw body; the signature is the
    hex HMAC-SHA256 of it keyed with the endpoint's signing secret. While a
    secret is rolled, Stripe sends one ``v1`` per secret."""
    t = int(at.timestamp())
    secrets = [secret] if isinstance(secret, str) else secret
    signed = f"{t}.".encode() + body
    parts = [f"t={t}", *("v1=" + _hmac(s.encode(), signed).hexdigest() for s in secrets)]
    parts.append("v0=" + "0" * 64)  # the test-mode scheme Stripe also sends; ignored
    return {"Stripe-Signature": ",".join(parts), "Content-Type": "application/json"}


def sign_standard(
    body: bytes, secret: str | list[str], *, at: datetime = NOW, **ids: str
) -> dict[str, str]:
    """Standard Webhooks spec (github.com/standard-webhooks/standard-webhooks,
    spec/standard-webhooks.md, "Signature scheme" and "Webhook headers"): sign
    ``msg_id.timestamp.payload`` with HMAC-SHA256 keyed with the base64-decoded
    secret after ``whsec_``; ``webhook-signature`` is a space-delimited list of
    ``v1,<base64>`` (one per secret during rotation)."""
    msg_id = ids.get("webhook_id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
    t = int(at.timestamp())
    secrets = [secret] if isinstance(secret, str) else secret
    signatures = []
    for s in secrets:
        key = base64.b64decode(s.removeprefix("whsec_"))
        mac = _hmac(key, f"{msg_id}.{t}.".encode() + body).digest()
        signatures.append("v1," + base64.b64encode(mac).decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(t),
        "webhook-signature": " ".join(signatures),
        "Content-Type": "application/json",
    }


def sign_github(body: bytes, secret: str, *, at: datetime = NOW, **ids: str) -> dict[str, str]:
    """GitHub, "Validating webhook deliveries"
    (docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries):
    ``X-Hub-Signature-256`` is ``sha256=`` followed by the hex HMAC-SHA256 of
    the payload keyed with the webhook secret."""
    digest = _hmac(secret.encode("utf-8"), body).hexdigest()
    return {
        "X-Hub-Signature-256": "sha256=" + digest,
        "X-GitHub-Event": ids.get("topic", "issues"),
        "X-GitHub-Delivery": ids.get("webhook_id", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        "X-GitHub-Hook-ID": "292430182",
        "Content-Type": "application/json",
    }


@attrs.frozen
class Vendor:
    """One verifier with its signer and test secrets."""

    name: str
    make: Callable[..., Any]
    sign: Callable[..., dict[str, str]]
    old: str
    new: str
    signs_time: bool
    signature_header: str
    body: dict[str, Any]

    def verifier(self, secrets: list[str] | None = None, **options: Any) -> Any:
        return self.make(secrets if secrets is not None else [self.new], **options)


SHOPIFY = Vendor(
    "shopify",
    ShopifyWebhook,
    sign_shopify,
    OLD_SECRET,
    NEW_SECRET,
    False,
    "X-Shopify-Hmac-Sha256",
    {"id": 450789469, "updated_at": "2024-03-01T07:00:00-05:00", "email": "bob@example.com"},
)
STRIPE = Vendor(
    "stripe",
    StripeWebhook,
    sign_stripe,
    "whsec_oldStripeSigningSecret01",
    "whsec_newStripeSigningSecret02",
    True,
    "Stripe-Signature",
    {
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
        "object": "event",
        "type": "customer.updated",
        "created": int(NOW.timestamp()) - 5,
        "livemode": False,
        "api_version": "2023-10-16",
        "data": {"object": {"id": "cus_9s6XKzkNRiz8i3", "email": "bob@example.com"}},
    },
)
STANDARD = Vendor(
    "standard",
    StandardWebhook,
    sign_standard,
    STD_OLD,
    STD_NEW,
    True,
    "webhook-signature",
    {
        "type": "contact.created",
        "timestamp": "2024-03-01T11:59:58.344522Z",
        "data": {"id": "1f81eb52-5198-4599-803e-771906343485"},
    },
)
GITHUB = Vendor(
    "github",
    GitHubWebhook,
    sign_github,
    OLD_SECRET,
    NEW_SECRET,
    False,
    "X-Hub-Signature-256",
    {"action": "opened", "issue": {"id": 1, "number": 1347}},
)
VENDORS = [SHOPIFY, STRIPE, STANDARD, GITHUB]


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


#: What the request matrix sends and what the intake must answer.
#: ``case -> (build(vendor) -> (body, headers), expected status)``.
def matrix_case(vendor: Vendor, case: str) -> tuple[bytes, dict[str, str], int]:
    body = encode(vendor.body)
    if case == "valid":
        return body, vendor.sign(body, vendor.new), 202
    if case == "tampered body":
        tampered = body[:-1] + b',"amount":1}'
        return tampered, vendor.sign(body, vendor.new), 401
    if case == "wrong secret":
        wrong = STD_OLD.replace("b2xk", "d3Jv") if vendor is STANDARD else "not-the-secret"
        return body, vendor.sign(body, wrong), 401
    if case == "old secret during rotation":
        return body, vendor.sign(body, vendor.old), 202
    if case == "missing signature":
        headers = vendor.sign(body, vendor.new)
        del headers[vendor.signature_header]
        return body, headers, 401
    if case == "expired timestamp":
        at = NOW - timedelta(seconds=301)
        return body, vendor.sign(body, vendor.new, at=at), 401 if vendor.signs_time else 202
    if case == "future timestamp":
        at = NOW + timedelta(seconds=301)
        return body, vendor.sign(body, vendor.new, at=at), 401 if vendor.signs_time else 202
    raise AssertionError(case)


CASES = [
    "valid",
    "tampered body",
    "wrong secret",
    "old secret during rotation",
    "missing signature",
    "expired timestamp",
    "future timestamp",
]


# --- the vendors' own test vectors ---------------------------------------------------------


def test_github_documented_test_vector() -> None:
    """docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries,
    "Testing the webhook payload validation": secret ``It's a Secret to
    Everybody``, payload ``Hello, World!``, signature
    ``sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17``."""
    verifier = GitHubWebhook(["It's a Secret to Everybody"])
    digest = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    headers = {"x-hub-signature-256": f"sha256={digest}"}
    verifier.verify(headers, b"Hello, World!", now=NOW)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(headers, b"Hello, World?", now=NOW)


def test_standard_webhooks_reference_test_vector() -> None:
    """The reference library's ``test_sign_function`` (standard-webhooks,
    libraries/python/tests/test_webhooks.py): key
    ``whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw``, id ``msg_p5jXN8AQM9LWM0D4loKWxJek``,
    timestamp 1614265330, payload ``{"test": 2432232314}`` signs to
    ``v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=``."""
    at = datetime.fromtimestamp(1614265330, tz=timezone.utc)
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = b'{"test": 2432232314}'
    for secret in ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"):
        StandardWebhook([secret]).verify(headers, body, now=at + timedelta(seconds=10))
    # the reference's invalid signature (last character changed)
    bad = {**headers, "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="}
    with pytest.raises(WebhookVerificationError, match="matches the 1 secret"):
        StandardWebhook(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).verify(bad, body, now=at)


def test_standard_webhooks_multi_signature_header_as_the_reference_tests_it() -> None:
    """``test_multi_sig_payload_is_valid``: wrong v1, a v2, the valid one and
    another wrong v1, space-separated: valid. Unpadded secrets are read too."""
    body = encode(STANDARD.body)
    headers = sign_standard(body, STD_NEW)
    junk = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    headers["webhook-signature"] = " ".join(
        [
            junk,
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            headers["webhook-signature"],
            junk,
        ]
    )
    StandardWebhook([STD_NEW.rstrip("=")]).verify(lower(headers), body, now=NOW)


# --- the matrix, straight on the verifiers ---------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_matrix(vendor: Vendor, case: str) -> None:
    body, headers, status = matrix_case(vendor, case)
    verifier = vendor.verifier([vendor.new, vendor.old])
    assert isinstance(verifier, WebhookVerifier)
    if status == 202:
        verifier.verify(lower(headers), body, now=NOW)
    else:
        with pytest.raises(WebhookVerificationError):
            verifier.verify(lower(headers), body, now=NOW)


@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_rotation_old_secret_refused_once_removed(vendor: Vendor) -> None:
    body = encode(vendor.body)
    headers = lower(vendor.sign(body, vendor.old))
    vendor.verifier([vendor.old, vendor.new]).verify(headers, body, now=NOW)
    with pytest.raises(WebhookVerificationError):
        vendor.verifier([vendor.new]).verify(headers, body, now=NOW)


@pytest.mark.parametrize("vendor", [STRIPE, STANDARD], ids=lambda v: v.name)
def test_sender_signing_with_both_secrets_during_its_rotation(vendor: Vendor) -> None:
    """Stripe and Standard Webhooks send one signature per secret while one is
    rolled: a receiver that only knows the new one (or the old) accepts it."""
    body = encode(vendor.body)
    headers = lower(vendor.sign(body, [vendor.old, vendor.new]))
    vendor.verifier([vendor.new]).verify(headers, body, now=NOW)
    vendor.verifier([vendor.old]).verify(headers, body, now=NOW)


@pytest.mark.parametrize("vendor", [STRIPE, STANDARD], ids=lambda v: v.name)
def test_tolerance_edges(vendor: Vendor) -> None:
    body = encode(vendor.body)
    verifier = vendor.verifier(tolerance=60)
    for offset in (-60, 0, 60):
        at = NOW + timedelta(seconds=offset)
        verifier.verify(lower(vendor.sign(body, vendor.new, at=at)), body, now=NOW)
    for offset in (-61, 61):
        at = NOW + timedelta(seconds=offset)
        with pytest.raises(WebhookVerificationError, match="tolerance is 60s"):
            verifier.verify(lower(vendor.sign(body, vendor.new, at=at)), body, now=NOW)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("t=abc,v1=00", "no usable t="),
        ("v1=00", "no usable t="),
        ("t=1709294400", "no v1= signature"),
        ("t=1709294400,v0=00", "no v1= signature"),
        ("garbage", "no usable t="),
        ("t=1709294400,v1=ünïcode", "matches the 1 secret"),
    ],
)
def test_stripe_malformed_headers(header: str, problem: str) -> None:
    with pytest.raises(WebhookVerificationError, match=problem):
        StripeWebhook(["whsec_x1234"]).verify({"stripe-signature": header}, b"{}", now=NOW)


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"webhook-id": "m", "webhook-timestamp": "1709294400"}, "header is missing"),
        (
            {"webhook-id": "m", "webhook-timestamp": "17.5", "webhook-signature": "v1,AA=="},
            "not a unix time",
        ),
        (
            {"webhook-id": "m", "webhook-timestamp": "1709294400", "webhook-signature": "v1a,AA=="},
            "no v1 signature",
        ),
        (
            {"webhook-id": "m", "webhook-timestamp": "1709294400", "webhook-signature": "v1,%%%"},
            "no v1 signature",
        ),
    ],
)
def test_standard_malformed_headers(headers: dict[str, str], problem: str) -> None:
    with pytest.raises(WebhookVerificationError, match=problem):
        StandardWebhook([STD_NEW]).verify(headers, b"{}", now=NOW)


def test_shopify_and_github_malformed_headers() -> None:
    with pytest.raises(WebhookVerificationError, match="not base64"):
        ShopifyWebhook(["s3cr"]).verify({"x-shopify-hmac-sha256": "%%%"}, b"{}", now=NOW)
    with pytest.raises(WebhookVerificationError, match="sha256=<hex>"):
        GitHubWebhook(["s3cr"]).verify({"x-hub-signature-256": "sha1=abc"}, b"{}", now=NOW)
    with pytest.raises(WebhookVerificationError, match="matches none"):
        GitHubWebhook(["s3cr"]).verify({"x-hub-signature-256": "sha256=ÿÿ"}, b"{}", now=NOW)


def test_signature_checks_use_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant-time comparison: every check goes through hmac.compare_digest."""
    from resilient_sync.web import _verify

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_verify.hmac, "compare_digest", spy)
    for vendor in VENDORS:
        body = encode(vendor.body)
        calls.clear()
        vendor.verifier([vendor.old, vendor.new]).verify(
            lower(vendor.sign(body, vendor.new)), body, now=NOW
        )
        assert len(calls) >= 2, vendor.name  # each secret compared, no early exit


# --- configuration ----------------------------------------------------------------------------


def test_secrets_are_checked_at_startup_and_never_shown() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        ShopifyWebhook([])
    with pytest.raises(ValueError, match="secret #1 is empty"):
        GitHubWebhook(["ok", ""])
    with pytest.raises(TypeError, match="secret #0"):
        StripeWebhook([None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not base64"):
        StandardWebhook(["whsec_not*base64"])
    with pytest.raises(ValueError, match="tolerance"):
        StripeWebhook(["whsec_abc"], tolerance=0)
    with pytest.raises(ValueError, match="not both"):
        ShopifyWebhook(
            ["s"], records=RecordEvents("order"), to_event=lambda h, b: Event("1", "t", b)
        )
    verifier = StripeWebhook(["whsec_topSecretValue123", "whsec_otherSecret456"], to="pos")
    assert "topSecret" not in repr(verifier)
    assert repr(verifier) == "StripeWebhook(<2 secrets>, to=['pos'])"
    # a single secret given as a string is one secret, not one per character
    single = ShopifyWebhook("just-one")
    assert repr(single).startswith("ShopifyWebhook(<1 secret>")


# --- the default events -------------------------------------------------------------------------


def test_shopify_default_event() -> None:
    body = SHOPIFY.body
    headers = lower(sign_shopify(encode(body), NEW_SECRET))
    event = ShopifyWebhook([NEW_SECRET]).to_event(headers, body)
    assert event.id == "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    assert event.type == "orders/updated"
    assert event.payload == body
    assert event.occurred_at == NOW
    assert event.metadata == {
        "webhook": "shopify",
        "webhook_id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "topic": "orders/updated",
        "shop_domain": "example.myshopify.com",
        "api_version": "2024-07",
        "triggered_at": NOW.isoformat(),
    }
    # Shopify's documented duplicate key wins when present
    headers["x-shopify-event-id"] = "98880550-7158-44d4-b7cd-2c97c8a091b5"
    event = ShopifyWebhook([NEW_SECRET]).to_event(headers, body)
    assert event.id == "98880550-7158-44d4-b7cd-2c97c8a091b5"
    assert event.metadata["webhook_id"] == "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    del headers["x-shopify-topic"]
    with pytest.raises(InvalidEventError, match="X-Shopify-Topic header is missing"):
        ShopifyWebhook([NEW_SECRET]).to_event(headers, body)


def test_stripe_default_event() -> None:
    body = STRIPE.body
    event = StripeWebhook([STRIPE.new]).to_event({}, body)
    assert (event.id, event.type, event.payload) == (body["id"], "customer.updated", body)
    assert event.occurred_at == NOW - timedelta(seconds=5)
    assert event.metadata == {
        "webhook": "stripe",
        "event_id": body["id"],
        "type": "customer.updated",
        "api_version": "2023-10-16",
        "livemode": False,
    }
    with pytest.raises(InvalidEventError, match="no 'id'"):
        StripeWebhook([STRIPE.new]).to_event({}, {"type": "x"})
    with pytest.raises(InvalidEventError, match="not a JSON object"):
        StripeWebhook([STRIPE.new]).to_event({}, [1, 2])


def test_standard_and_github_default_events() -> None:
    headers = lower(sign_standard(encode(STANDARD.body), STD_NEW))
    event = StandardWebhook([STD_NEW]).to_event(headers, STANDARD.body)
    assert (event.id, event.type) == ("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "contact.created")
    assert event.occurred_at == datetime(2024, 3, 1, 11, 59, 58, 344522, tzinfo=timezone.utc)
    with pytest.raises(InvalidEventError, match="no 'type'"):
        StandardWebhook([STD_NEW]).to_event(headers, {"data": {}})

    headers = lower(sign_github(encode(GITHUB.body), NEW_SECRET))
    event = GitHubWebhook([NEW_SECRET]).to_event(headers, GITHUB.body)
    assert (event.id, event.type) == ("72d3162e-cc78-11e3-81ab-4c9367dc0958", "issues.opened")
    assert event.metadata == {
        "webhook": "github",
        "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "event": "issues",
        "hook_id": "292430182",
        "action": "opened",
    }
    ping = GitHubWebhook([NEW_SECRET]).to_event({**headers, "x-github-event": "ping"}, {"zen": "x"})
    assert ping.type == "ping"


def test_metadata_from_headers_passes_the_text_gate() -> None:
    headers = lower(sign_shopify(b"{}", NEW_SECRET))
    headers["x-shopify-shop-domain"] = "evil\x1b[31m.myshopify.com" + "x" * 400
    event = ShopifyWebhook([NEW_SECRET]).to_event(headers, {})
    domain = event.metadata["shop_domain"]
    assert "\x1b" not in domain
    assert len(domain) <= 255


def test_records_mapping_gives_change_ids() -> None:
    orders = RecordEvents("order")
    body = SHOPIFY.body
    headers = lower(sign_shopify(encode(body), NEW_SECRET))
    event = ShopifyWebhook([NEW_SECRET], records=orders).to_event(headers, body)
    assert event.id == "order:450789469@2024-03-01T12:00:00Z"
    assert event.type == "order.changed"
    assert event.ordering_key == "order:450789469"
    assert event.payload == body
    assert event.metadata["via"] == "webhook"
    assert event.metadata["webhook_id"] == "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    assert event.metadata["record_id"] == "450789469"

    customers = RecordEvents("customer", updated_field="created")
    stripe = StripeWebhook([STRIPE.new], records=customers, record_path="data.object")
    with pytest.raises(InvalidEventError, match="no 'created'"):
        stripe.to_event({}, STRIPE.body)
    stripe_events = RecordEvents("stripe_event", updated_field="created", type=lambda e: e["type"])
    event = StripeWebhook([STRIPE.new], records=stripe_events).to_event({}, STRIPE.body)
    assert event.id == f"stripe_event:{STRIPE.body['id']}@2024-03-01T11:59:55Z"
    assert event.type == "customer.updated"
    stripe = StripeWebhook([STRIPE.new], records=customers, record_path="data.object")
    with pytest.raises(InvalidEventError, match=r"no 'data\.object'"):
        stripe.to_event({}, {"id": "evt_1"})


def test_custom_to_event() -> None:
    def mapping(headers: Mapping[str, str], body: Any) -> Event:
        return Event(f"gh-{headers['x-github-delivery']}", "github", body["issue"])

    verifier = GitHubWebhook([NEW_SECRET], to_event=mapping)
    headers = lower(sign_github(encode(GITHUB.body), NEW_SECRET))
    event = verifier.to_event(headers, GITHUB.body)
    assert event == Event(
        "gh-72d3162e-cc78-11e3-81ab-4c9367dc0958", "github", {"id": 1, "number": 1347}
    )
    wrong = GitHubWebhook([NEW_SECRET], to_event=lambda h, b: {"id": 1})  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must return an Event"):
        wrong.to_event(headers, GITHUB.body)


class HeaderTokenVerifier:
    """A verifier for another sender, written against the public protocol:
    a shared token in a header (constant-time), the id in the body."""

    to = None

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: datetime) -> None:
        given = headers.get("x-token", "").encode()
        if not hmac.compare_digest(given, self._token):
            raise WebhookVerificationError("bad token")

    def to_event(self, headers: Mapping[str, str], body: Any) -> Event:
        return Event(body["id"], "thing.happened", body)


def test_a_custom_verifier_satisfies_the_protocol() -> None:
    assert isinstance(HeaderTokenVerifier("t0ken"), WebhookVerifier)

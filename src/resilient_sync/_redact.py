"""Keep secrets out of messages, logs and the audit trail.

:func:`redact` replaces secret-looking values: credentials after ``Bearer`` /
``Basic``, values of secret-looking names (``api_key=``, ``"password": ...``,
``?key=``, ``&sig=``, ``Pwd=``, ``private_key=``), credentials in URLs
(``scheme://user:password@host``), well-known token shapes (``sk_live_…``,
``whsec_…``, ``ghp_…``, ``xoxb-…``, ``AKIA…``, JWTs) and any string the
caller names. It is one step of the text gate in ``_text.py``; call
:func:`resilient_sync._text.clean` rather than this on outside text.
"""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Iterable

__all__ = ["REDACTED", "SECRET_HEADERS", "redact"]

REDACTED = "[REDACTED]"

#: Header names whose values are never shown (lower case).
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-access-token",
        "x-shopify-access-token",
        "x-shopify-hmac-sha256",
        "stripe-signature",
        "x-hub-signature",
        "x-hub-signature-256",
        "webhook-signature",
        "x-webhook-signature",
    }
)

# Names whose value is a secret. A name with a prefix ("client_secret",
# "access_token", "private_key") or one of a few exact short names ("key",
# "sig", "pwd") that must not be part of a longer word ("idempotency_key",
# "ordering_key" and "sort_key" stay readable).
_SUFFIXED = (
    r"api[_-]?key|apikey|secret|token|password|passwd|passphrase|authorization|"
    r"access[_-]?key|private[_-]?key|signing[_-]?key|secret[_-]?key|client[_-]?secret|"
    r"signature|cookie|credentials?|session[_-]?id|x-amz-credential|x-amz-security-token"
)
_EXACT = r"key|sig|pwd|pass|auth"
# Where a secret or a name may start: after a non-word character, or right
# after an escape as a repr shows it (str(KeyError("\nsk_live_...")) is
# "'\\nsk_live_...'": the "n" of the escape is no word of the message).
_ESCAPED = r"(?<=\\[ntrfvab0])|(?<=\\x[0-9a-fA-F]{2})|(?<=\\u[0-9a-fA-F]{4})|(?<=\\U[0-9a-fA-F]{8})"
_START = rf"(?:(?<!\w)|{_ESCAPED})"
_NAME = rf"(?:[a-z0-9_\-]{{0,40}}?(?:{_SUFFIXED})|(?:(?<![\w-])|{_ESCAPED})(?:{_EXACT}))"

_PATTERNS = [
    # "Authorization: Bearer abc", "Bearer abc", "Basic abc==" ("token" only
    # before a credential-like value, so "token revoked" stays readable)
    re.compile(
        rf"(?i){_START}(bearer|basic|token(?=\s+(?:[\w.~+/=\-]*\d|[\w.~+/=\-]{{16,}})))"
        r"\s+[A-Za-z0-9._~+/=\-]{4,}"
    ),
    # name=value, name: value, "name": "value", 'name': 'value' (a quoted
    # name only between matching quotes: "/etc/passwd': open" is no pair)
    re.compile(
        rf"""(?ix)
        ((?:"{_NAME}"|'{_NAME}'|(?<![/\\.])(?:\b|{_ESCAPED}){_NAME})\s*[:=]\s*(?:(?:bearer|basic)\s+)?)
        (?:\[REDACTED\]|"[^"]*"|'[^']*'|[^\s,;&}}\]"'<>]+)
        """
    ),
    # credentials in URLs: scheme://user:password@host
    re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,30}://[^/\s:@]+:)[^@\s/]+(@)"),
]

#: Token shapes that are secrets wherever they appear, whatever name they have.
_TOKENS = re.compile(
    rf"""(?x)
    {_START}(?:
        (?:sk|rk)_(?:live|test)_[A-Za-z0-9]{{8,}}       # Stripe secret / restricted keys
      | whsec_[A-Za-z0-9+/=]{{8,}}                       # Stripe / Standard Webhooks secrets
      | gh[pousr]_[A-Za-z0-9]{{20,}}                     # GitHub tokens
      | github_pat_[A-Za-z0-9_]{{20,}}
      | xox[abprse]-[A-Za-z0-9-]{{10,}}                  # Slack tokens
      | shp(?:at|ss|ca|pa)_[A-Fa-f0-9]{{16,}}            # Shopify access tokens
      | AKIA[0-9A-Z]{16}                               # AWS access key ids
      | AIza[0-9A-Za-z_\-]{{30,}}                        # Google API keys
      | eyJ[A-Za-z0-9_\-]{{5,}}\.eyJ[A-Za-z0-9_\-]{{5,}}\.[A-Za-z0-9_\-]{{10,}}  # JWTs
    )
    """
)


@functools.lru_cache(maxsize=256)
def _spellings(secret: str) -> tuple[str, ...]:
    """A secret as it may appear in a text: itself, percent-encoded (httpx
    logs the query string so, APIs echo URLs), and JSON-escaped (``\\/``,
    ``\\uXXXX``) — longest first, so no part of a longer one is left."""
    found = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        secret.replace("/", "\\/"),
    }
    return tuple(sorted(found, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace secret-looking values and each of ``secrets`` in ``text`` (also
    percent-encoded or JSON-escaped)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            for spelling in _spellings(secret):
                text = text.replace(spelling, REDACTED)
    text = _TOKENS.sub(REDACTED, text)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _PATTERNS[2].sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)

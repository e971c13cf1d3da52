"""Keep secrets out of messages, logs and the audit trail."""

from __future__ import annotations

import re
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
        "x-auth-token",
        "x-access-token",
        "x-shopify-access-token",
    }
)

_PATTERNS = [
    # "Authorization: Bearer abc", "Bearer abc", "Basic abc=="
    # ("token" only before a credential-like value, so "token revoked" stays readable)
    re.compile(
        r"(?i)\b(bearer|basic|token(?=\s+(?:[\w.~+/=\-]*\d|[\w.~+/=\-]{16,})))"
        r"\s+[A-Za-z0-9._~+/=\-]{4,}"
    ),
    # key=value and "key": "value" pairs for secret-looking keys
    # (\b and bounded runs: a long run of letters must not make it quadratic)
    re.compile(
        r"""(?ix)
        \b(["']?(?:[a-z0-9_\-]{0,40}?(?:api[_-]?key|secret|token|password|passwd|authorization|
        access[_-]?key|client[_-]?secret|signature|cookie))["']?\s*[:=]\s*
        (?:(?:bearer|basic)\s+)?)
        (?:\[REDACTED\]|"[^"]*"|'[^']*'|[^\s,;&}\]]+)
        """
    ),
    # credentials in URLs: scheme://user:password@host
    re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,30}://[^/\s:@]+:)[^@\s/]+(@)"),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace secret-looking values and each of ``secrets`` in ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _PATTERNS[2].sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)

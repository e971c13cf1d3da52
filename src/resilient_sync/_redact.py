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
    re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{4,}"),
    # key=value and "key": "value" pairs for secret-looking keys
    re.compile(
        r"""(?ix)
        (["']?(?:[a-z0-9_\-]*?(?:api[_-]?key|secret|token|password|passwd|authorization|
        access[_-]?key|client[_-]?secret|signature|cookie))["']?\s*[:=]\s*)
        (?:"[^"]*"|'[^']*'|[^\s,;&}\]]+)
        """
    ),
    # credentials in URLs: scheme://user:password@host
    re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^@\s/]+(@)"),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace secret-looking values and each of ``secrets`` in ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _PATTERNS[2].sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)

"""The one gate for outside text, and the renderers' escapes.

Everything that comes from outside — error messages and results from
destinations and APIs, notes and names from people — passes through
:func:`clean` (text) or :func:`clean_json` (JSON values) before anything
stores, logs, prints or alerts it. The gate never raises, whatever it is
given, and:

- turns any object into text (an exception whose ``__str__`` raises too);
- replaces lone surrogates (which no store can encode) with U+FFFD;
- shows control characters (NUL, ESC, BEL, ...) and invisible direction
  overrides as inert escapes (``\\x1b``), keeping tabs and newlines;
- redacts secrets (:func:`~resilient_sync._redact.redact`);
- caps the size, saying how much was cut.

Renderers escape once more for their medium: :func:`for_terminal` (rows
stored before the gate existed), :func:`for_slack` (``<!channel>``, links);
HTML templates escape with Jinja2's autoescape.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ._redact import REDACTED, redact

__all__ = [
    "MAX_FIELD",
    "MAX_NOTE",
    "MAX_RESULT_BYTES",
    "MAX_TEXT",
    "RedactingFilter",
    "clean",
    "clean_json",
    "clean_retry_after",
    "cut",
    "for_slack",
    "for_terminal",
    "get_logger",
    "one_line",
    "safe_str",
]

#: Longest message, reason or note stored (characters).
MAX_TEXT = 2_000
#: Longest operator note (characters).
MAX_NOTE = 2_000
#: Longest field name, actor or other short label (characters).
MAX_FIELD = 255
#: Default cap of a stored result (bytes of compact JSON); configurable on the
#: dispatcher (``max_result_bytes``).
MAX_RESULT_BYTES = 64 * 1024
#: Deepest nesting kept in a stored result or audit detail.
_MAX_DEPTH = 64
#: Longest ``Retry-After`` honoured from anyone (a policy caps it further).
_MAX_RETRY_AFTER = 366 * 86_400.0

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CRLF = re.compile("\r\n?")


def safe_str(value: Any) -> str:
    """``str(value)``, never raising (falls back to ``repr`` and then the type)."""
    if type(value) is str:
        return value
    for convert in (str, repr):
        try:
            text = convert(value)
        except Exception:  # noqa: BLE001, S112 - any __str__ may fail; try the next form
            continue
        if isinstance(text, str):
            return text
    return f"<{type(value).__name__} object: str() and repr() failed>"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = f"… [{len(text) - limit} more characters cut]"
    if limit <= len(marker):
        return text[:limit]
    return text[: limit - len(marker)] + marker


def clean(
    value: Any, *, limit: int = MAX_TEXT, secrets: Iterable[str] = (), single_line: bool = False
) -> str:
    """The gate for outside text: a safe, redacted, capped ``str`` of ``value``.

    ``single_line`` also folds newlines and tabs into spaces (names, actors,
    log fields).
    """
    text = safe_str(value)
    if len(text) > 4 * limit + 64:  # don't run the patterns over megabytes
        text = text[: 4 * limit] + f"… [{len(text) - 4 * limit} more characters cut]"
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    # redact before escaping: "\x00sk_live_..." escaped first would glue the
    # secret to the "x00" of its escape and hide it from the word boundary
    text = redact(_CRLF.sub("\n", text), secrets)
    text = _CONTROL.sub(_escape, text)
    if single_line:
        text = " ".join(text.split())
    return cut(text, limit)


def one_line(value: Any, *, limit: int = MAX_FIELD) -> str:
    """:func:`clean` for short labels: one line, ``MAX_FIELD`` characters."""
    return clean(value, limit=limit, single_line=True)


def clean_retry_after(value: Any) -> float | None:
    """A usable ``Retry-After`` in seconds: finite, >= 0, at most a year; None
    for anything else (a string, NaN, infinity, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except (OverflowError, ValueError):  # an int too large for a float
        return _MAX_RETRY_AFTER if value > 0 else None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


_SECRET_KEY = re.compile(
    r"(?i)^(?:[a-z0-9_\-]{0,40}?(?:api[_-]?key|apikey|secret|token|password|passwd|passphrase|"
    r"authorization|access[_-]?key|private[_-]?key|signing[_-]?key|client[_-]?secret|signature|"
    r"cookie|credentials?)|key|sig|pwd|pass|auth)$"
)


_PATH_PARTS = re.compile(r"[.\[\]]")


def _last_part(name: str) -> str:
    """``"password"`` of ``"payload.customer.password"`` (edit labels are paths)."""
    parts = [p for p in _PATH_PARTS.split(name) if p]
    return parts[-1] if parts else name


class _Walk:
    """One :func:`clean_json` pass: the converted value and what was changed."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self.notes: list[str] = []

    def note(self, path: str, what: str) -> None:
        if len(self.notes) < 5:
            self.notes.append(f"{path} {what}")
        elif len(self.notes) == 5:
            self.notes.append("...")

    def text(self, value: str, path: str) -> str:
        if not value.isascii() and _SURROGATE.search(value):
            self.note(path, "had unencodable characters (replaced with U+FFFD)")
            value = _SURROGATE.sub("\ufffd", value)
        if len(value) >= 8:
            value = redact(value, self.secrets)
        return value

    def value(self, value: Any, path: str, depth: int) -> Any:
        kind = type(value)
        if value is None or kind is bool:
            return value
        if kind is str:
            return self.text(value, path)
        if kind is int:
            if -(10**18) <= value <= 10**18:
                return value
            try:
                repr(value)
            except ValueError:
                self.note(path, "was an integer too large to store (replaced with its size)")
                return f"<integer of {value.bit_length()} bits>"
            return value
        if kind is float:
            if math.isfinite(value):
                return value
            self.note(path, f"was {value!r}, which JSON cannot hold (stored as text)")
            return repr(value)
        if depth >= _MAX_DEPTH:
            self.note(path, "was nested too deeply (cut)")
            return "<nested too deeply>"
        if isinstance(value, (Mapping, list, tuple)):
            try:  # a lazy mapping or a list subclass may fail as it is read
                items = list(value.items()) if isinstance(value, Mapping) else list(value)
            except Exception as exc:  # noqa: BLE001 - reported in the notes and stored as text
                reason = clean(f"{type(exc).__name__}: {safe_str(exc)}", secrets=self.secrets)
                self.note(path, f"could not be read ({reason[:120]}; stored as text)")
                return f"<{kind.__name__} that could not be read: {reason[:500]}>"
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in items:
                name = key if type(key) is str else safe_str(key)
                name = self.text(name, f"{path} key")
                if type(key) is not str:
                    self.note(f"{path}.{name}", f"had a {type(key).__name__} key (stored as text)")
                if isinstance(item, str) and item and _SECRET_KEY.match(_last_part(name)):
                    out[name] = REDACTED
                else:
                    out[name] = self.value(item, f"{path}.{name}", depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            return [self.value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items)]
        text = clean(value, limit=MAX_TEXT, secrets=self.secrets)
        self.note(path, f"was a {kind.__name__}, which is not JSON (stored as text: {text[:60]})")
        return text


def clean_json(
    value: Any,
    *,
    path: str = "result",
    limit: int = MAX_RESULT_BYTES,
    secrets: Iterable[str] = (),
) -> tuple[Any, list[str]]:
    """The gate for outside JSON-ish values (results, audit details).

    Returns ``(value, notes)``: a JSON value safe to store anywhere (strings
    encodable, secrets under secret-looking keys or of known token shapes
    redacted, numbers finite, anything else as text) and a few notes saying
    what had to change (empty when nothing did). A value whose compact JSON
    exceeds ``limit`` bytes is replaced by a marker object
    ``{"truncated": true, "bytes": N, "preview": "..."}``.
    """
    walk = _Walk(tuple(s for s in secrets if s))
    try:
        out = walk.value(value, path, 0)
    except RecursionError:
        return "<nested too deeply>", [f"{path} was nested too deeply (cut)"]
    except Exception as exc:  # noqa: BLE001 - the gate never raises; say what failed
        reason = clean(f"{type(exc).__name__}: {safe_str(exc)}", limit=500, secrets=walk.secrets)
        return f"<unreadable value: {reason}>", [f"{path} could not be read ({reason})"]
    from ._json import compact_dumps  # noqa: PLC0415 - _json imports this module

    encoded = compact_dumps(out)
    size = len(encoded) if encoded.isascii() else len(encoded.encode("utf-8"))
    if size > limit:
        walk.notes.append(f"{path} was {size} bytes, over the {limit}-byte limit (cut)")
        out = {"truncated": True, "bytes": size, "preview": cut(encoded, 500)}
    return out, walk.notes


_TERMINAL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def for_terminal(text: Any) -> str:
    """Text safe to print on a terminal: control characters (ESC, BEL, CR ...),
    direction overrides and lone surrogates as inert escapes; tabs and
    newlines kept."""
    value = safe_str(text)
    return _TERMINAL.sub(_escape, value)


def for_slack(text: Any) -> str:
    """Text safe inside a Slack message: ``&``, ``<`` and ``>`` escaped (so
    ``<!channel>``, ``<!here>`` and ``<http://...|links>`` are shown, never
    acted on), control characters escaped."""
    value = for_terminal(text)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class RedactingFilter(logging.Filter):
    """Passes every record of the library's loggers through the gate: the
    message and any traceback text are cleaned (redacted, control characters
    escaped, capped) before a handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: show what we can
            message = f"{safe_str(record.msg)} (arguments: {safe_str(record.args)})"
        cleaned = clean(message, limit=8 * MAX_TEXT)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # formatters print exc_text when it is set; exc_info stays for tools
            # that want the exception object itself
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = clean(formatted, limit=32 * MAX_TEXT)
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """A library logger whose records pass through the gate."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger

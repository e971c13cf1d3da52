"""Classification: any exception -> an :class:`ErrorInfo` with its category.

Pure functions, no I/O. The default rules know this library's own errors,
httpx's exceptions and the standard network errors; users extend them with
their own exception types and rules::

    classifier = Classifier()
    classifier.register(MyPosTimeout, ErrorCategory.TRANSIENT)
    classifier.add_rule(lambda exc: ErrorCategory.MAPPING if "unknown sku" in str(exc) else None)
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from types import ModuleType

from ._errors import SyncError
from ._model import ErrorCategory, ErrorInfo
from ._text import clean, clean_retry_after, one_line, safe_str


def _httpx_for(exc: BaseException) -> ModuleType | None:
    """The httpx module if ``exc`` is one of its exceptions, else None.

    The core does not import httpx (the CLI and a process that never speaks
    HTTP need not pay for it): an exception can only be an httpx one if one
    of its classes comes from httpx, and then ``import httpx`` is a lookup,
    or waits for another thread's first import to finish (a bare
    ``sys.modules`` lookup could see a half-built module)."""
    for cls in type(exc).__mro__:
        module = getattr(cls, "__module__", None)
        if isinstance(module, str) and (module == "httpx" or module.startswith("httpx.")):
            import httpx  # noqa: PLC0415

            return httpx
    return None


__all__ = [
    "Classifier",
    "Rule",
    "category_for_status",
    "classify",
    "clean_error",
    "parse_retry_after",
]

#: A rule returns a category or a full ErrorInfo for exceptions it knows, else None.
Rule = Callable[[BaseException], "ErrorCategory | ErrorInfo | None"]

_MAX_MESSAGE = 2_000


def category_for_status(status_code: int) -> ErrorCategory | None:
    """The default category of an HTTP status (the HTTP table of
    ``docs/concepts/error-taxonomy.md``); None for success."""
    if status_code < 400:
        return None
    if status_code in (408, 423, 425) or 500 <= status_code <= 599:
        return ErrorCategory.TRANSIENT
    if status_code == 429:
        return ErrorCategory.RATE_LIMITED
    if status_code == 409:
        return ErrorCategory.DUPLICATE
    if status_code in (400, 413, 422):
        return ErrorCategory.DATA_FORMAT
    if status_code in (401, 402, 403):
        return ErrorCategory.PERMISSION
    if status_code in (404, 410):
        return ErrorCategory.MAPPING
    return ErrorCategory.UNEXPECTED


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value.

    Accepts an integer, a decimal (some APIs send ``"1.5"``) or an HTTP date;
    a date in the past means now (0). Returns None for a missing or
    unparseable value.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - now).total_seconds())
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _message(exc: BaseException) -> str:
    if isinstance(exc, SyncError):
        text = safe_str(getattr(exc, "message", None) or safe_str(exc))
        if not text.strip():  # an operator must always read a reason
            text = f"{type(exc).__name__} (no message given)"
    else:
        detail = safe_str(exc)
        text = f"{type(exc).__name__}: {detail}" if detail.strip() else type(exc).__name__
    return clean(text, limit=_MAX_MESSAGE)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _label(value: object) -> str | None:
    """A field name from outside (an exception's ``field``): one clean line, or None."""
    if value is None:
        return None
    text = one_line(value)
    return text or None


def _info(exc: BaseException, category: ErrorCategory) -> ErrorInfo:
    sync = isinstance(exc, SyncError)
    return ErrorInfo(
        category=category,
        message=_message(exc),
        field=_label(getattr(exc, "field", None)) if sync else None,
        exception_type=_type_name(exc),
        retry_after=_retry_after(exc),
        remote_field=_label(getattr(exc, "remote_field", None)) if sync else None,
    )


def clean_error(info: ErrorInfo, *, secrets: Iterable[str] = ()) -> ErrorInfo:
    """An :class:`ErrorInfo` through the gate (a user rule may build any);
    ``secrets`` are redacted from its message too."""
    return ErrorInfo(
        category=ErrorCategory(info.category),
        message=clean(info.message, limit=_MAX_MESSAGE, secrets=secrets),
        field=_label(info.field),
        exception_type=_label(info.exception_type),
        retry_after=clean_retry_after(info.retry_after),
        remote_field=_label(info.remote_field),
    )


def _retry_after(exc: BaseException) -> float | None:
    """``retry_after`` of our errors, or the ``Retry-After`` header of an
    ``httpx.HTTPStatusError`` (e.g. from ``response.raise_for_status()``); an
    HTTP date is measured from the response's own ``Date`` header."""
    if isinstance(exc, SyncError):
        return clean_retry_after(getattr(exc, "retry_after", None))
    httpx = _httpx_for(exc)
    if httpx is not None and isinstance(exc, httpx.HTTPStatusError):
        headers = exc.response.headers
        now: datetime | None = None
        if "date" in headers:
            try:
                now = email.utils.parsedate_to_datetime(headers["date"])
            except (TypeError, ValueError, IndexError):
                now = None
        if now is None or now.tzinfo is None:
            now = datetime.now(timezone.utc)
        return clean_retry_after(parse_retry_after(headers.get("retry-after"), now))
    return None


def _default_category(exc: BaseException) -> ErrorCategory:
    if isinstance(exc, SyncError) and exc.category is not None:
        return exc.category
    httpx = _httpx_for(exc)
    if httpx is not None:
        if isinstance(exc, httpx.HTTPStatusError):
            return category_for_status(exc.response.status_code) or ErrorCategory.UNEXPECTED
        if isinstance(
            exc,
            (
                httpx.TimeoutException,
                httpx.NetworkError,
                httpx.RemoteProtocolError,
                httpx.ProxyError,
            ),
        ):
            return ErrorCategory.TRANSIENT
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return ErrorCategory.TRANSIENT
    return ErrorCategory.UNEXPECTED


class Classifier:
    """Maps exceptions to error categories; extensible, pure.

    Lookup order: rules added with :meth:`add_rule` (newest first), then types
    registered with :meth:`register` (most specific class first), then the
    defaults: this library's errors by their category, ``httpx`` errors
    (status errors by the HTTP table of the error taxonomy, timeouts and network errors as
    TRANSIENT), ``TimeoutError``/``ConnectionError`` as TRANSIENT, anything
    else UNEXPECTED.

    A rule returns a category (the redacted message is then taken from the
    exception, and ``field``/``retry_after`` from a ``SyncError``) or a complete
    :class:`~resilient_sync.ErrorInfo`, which is used as it is (its texts
    still pass the gate: redacted, escaped, capped). A rule that raises makes
    the error UNEXPECTED, with both exceptions in the message.
    """

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        types: Mapping[type[BaseException], ErrorCategory] | None = None,
    ) -> None:
        self._rules: list[Rule] = list(rules)
        self._types: dict[type[BaseException], ErrorCategory] = dict(types or {})

    def register(self, exc_type: type[BaseException], category: ErrorCategory) -> Classifier:
        """Classify ``exc_type`` (and subclasses) as ``category``. Returns self."""
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            raise TypeError(f"register() needs an exception class, got {exc_type!r}")
        self._types[exc_type] = ErrorCategory(category)
        return self

    def add_rule(self, rule: Rule) -> Classifier:
        """Add a rule consulted before everything else. Returns self."""
        if not callable(rule):
            raise TypeError(f"a rule must be callable, got {rule!r}")
        self._rules.insert(0, rule)
        return self

    def classify(self, exc: BaseException) -> ErrorInfo:
        """The classified error, its message and field through the text gate
        (redacted, control characters escaped, capped)."""
        for rule in self._rules:
            verdict = rule(exc)
            if isinstance(verdict, ErrorInfo):
                return clean_error(verdict)
            if verdict is not None:
                return _info(exc, ErrorCategory(verdict))
        for cls in type(exc).__mro__:
            if cls in self._types:
                return _info(exc, self._types[cls])
        return _info(exc, _default_category(exc))

    __call__ = classify


_DEFAULT = Classifier()


def classify(exc: BaseException) -> ErrorInfo:
    """Classify with the default rules only."""
    return _DEFAULT.classify(exc)

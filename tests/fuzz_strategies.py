"""Hypothesis strategies and oracles shared by the fuzz tests (``tests/test_fuzz_*.py``).

What the strategies draw is what the outside world can hand the library:
texts from anywhere in Unicode (control characters, lone surrogates, NUL,
direction overrides, very long), JSON-ish values that are not quite JSON
(big integers, NaN, Decimals, bytes, tuples, non-string keys, cycles),
and destinations that return or raise anything. The oracles say, without
asking the library, what its documented rules make of a value.

Runs: a small deterministic run by default (part of the normal suite, well
under a minute); ``RESILIENT_SYNC_FUZZ=long`` multiplies the examples and
explores at random (with Hypothesis' example database), for a run of a few
minutes by hand before a release.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from resilient_sync import (
    DataFormatError,
    DeliveryNotFoundError,
    DuplicateError,
    Event,
    InvalidEventError,
    MappingError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    StoreError,
    SyncError,
)

# -- run sizes -------------------------------------------------------------------

LONG = os.environ.get("RESILIENT_SYNC_FUZZ", "").strip().lower() == "long"
#: How many more examples the long run tries.
LONG_FACTOR = 8


def fuzz_settings(examples: int, **kwargs: Any) -> settings:
    """Settings for one fuzz test: ``examples`` in the normal run (derandomized,
    so that the suite is repeatable), ``LONG_FACTOR`` times more, at random,
    under ``RESILIENT_SYNC_FUZZ=long``."""
    return settings(
        max_examples=examples * LONG_FACTOR if LONG else examples,
        deadline=None,
        derandomize=not LONG,
        database=None if not LONG else settings.default.database,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
        **kwargs,
    )


# -- texts -------------------------------------------------------------------------

#: Characters that broke something somewhere: C0/C1 controls, DEL, NUL, ESC,
#: BEL, CSI (U+009B), line separators, direction overrides and isolates,
#: zero-width and BOM, lone surrogates of both halves, the last code point,
#: letters whose case folding differs between Python and SQL, LIKE wildcards.
NASTY = (
    "\x00\x01\x07\x08\x0b\x0c\x1b\x1f\x7f\x80\x85\x9b\x9f"
    "\u200b\u200e\u200f\u2028\u2029\u202a\u202e\u2066\u2069\ufeff\ufffd\uffff"
    "\ud800\udbff\udc00\udcff\udfff\U0010ffff"
    "\r\n\t İKÉéßſ%_\\\"'[].:="  # noqa: RUF001 - the look-alikes are the point
)
#: What the text gate promises never to store or print raw (``_text.py``).
GATE_FORBIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
#: What a terminal must never receive raw (``for_terminal``'s set; the CLI prints lines).
TERMINAL_FORBIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)

_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]
#: A spread over all of Unicode (every plane, surrogates included), fixed so
#: that a failing example replays.
_SPREAD = [chr(c) for c in range(0x80, 0x110000, 997)]
_ALPHABET = list(NASTY) * 12 + _PRINTABLE * 4 + _SPREAD
# (a list for sampled_from, not a one_of with st.characters(): st.text() over
# such a one_of almost never draws the sampled characters, and flatmap is slow)
any_char = st.sampled_from(_ALPHABET)


@functools.cache
def texts(*, min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    """Any text, weighted towards the characters that break things."""
    return st.text(any_char, min_size=min_size, max_size=max_size)


@functools.cache
def long_texts() -> st.SearchStrategy[str]:
    """Texts of thousands to hundreds of thousands of characters (cheap to draw)."""
    return st.builds(
        lambda unit, times: unit * times,
        texts(min_size=1, max_size=6),
        st.sampled_from([300, 2_001, 20_000, 120_000]),
    )


@functools.cache
def any_text() -> st.SearchStrategy[str]:
    return st.one_of(texts(), texts(max_size=300), long_texts())


#: Ids that look like what programs send (most examples must get past the checks).
plain_ids = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-", min_size=1, max_size=24
)


@functools.cache
def identifiers() -> st.SearchStrategy[Any]:
    """Event ids, types and keys: plain ones, hostile ones, boundary lengths, non-strings."""
    return st.one_of(
        plain_ids,
        plain_ids,
        texts(min_size=1, max_size=20),
        st.builds(lambda a, c, b: a + c + b, plain_ids, st.sampled_from(NASTY), plain_ids),
        st.integers(253, 258).map(lambda n: "x" * n),
        st.integers(253, 258).map(lambda n: "é" * n),
        st.sampled_from(["", " ", "\t\n", "\u3000", "a" * 100_000]),
        st.sampled_from([None, 7, b"bytes", 1.5]),
    )


#: The documented id rule (``_json.py``): printable text, 1..255 characters.
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def identifier_ok(value: Any) -> bool:
    """Whether ``value`` may be an event id, type, key or destination name."""
    return (
        isinstance(value, str)
        and bool(value.strip())
        and len(value) <= 255
        and _BAD_ID_CHAR.search(value) is None
    )


# -- JSON-ish values ---------------------------------------------------------------


class StrKey(str):
    """A ``str`` subclass (an enum member, a markup string) used as a key or value."""

    __slots__ = ()


class Opaque:
    """An object no JSON encoder knows, with a repr that says so."""

    def __repr__(self) -> str:
        return "<Opaque>"


class Unprintable:
    """An object whose ``str`` and ``repr`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


_BIG_INTS = [
    10**300 - 1,
    10**300,
    -(10**300) + 1,
    -(10**300),
    10**400,
    2**63,
    -(2**63) - 1,
    2**64,
]

json_ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from(_BIG_INTS),
    # more digits than int() turns into text (CPython's 4300-digit limit); drawn
    # as an exponent, because such an int has no repr
    st.sampled_from([4301, 5000]).map(lambda digits: 10**digits),
)
json_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]),
)
valid_char = st.sampled_from([c for c in _ALPHABET if not 0xD800 <= ord(c) <= 0xDFFF])
#: Text a store can hold (no lone surrogates), control characters included.
valid_texts = st.text(valid_char, max_size=30)

#: Values JSON holds, as submit() accepts them.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**300 - 1, -(10**300) + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    valid_texts,
)
valid_keys = st.one_of(plain_ids, valid_texts)


@functools.cache
def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Valid JSON values (dicts with str keys, lists, finite numbers, text without surrogates)."""
    return st.recursive(
        json_scalars,
        lambda kids: st.one_of(
            st.lists(kids, max_size=4), st.dictionaries(valid_keys, kids, max_size=4)
        ),
        max_leaves=max_leaves,
    )


@functools.cache
def json_objects(max_leaves: int = 12) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(valid_keys, json_values(max_leaves), max_size=5)


#: Scalars that are not quite JSON.
hostile_scalars = st.one_of(
    json_scalars,
    json_ints,
    json_floats,
    texts(),
    st.decimals(allow_nan=True, places=2),
    st.binary(max_size=8),
    st.sampled_from([Opaque(), frozenset({1}), datetime(2024, 1, 1), Ellipsis]),
    valid_texts.map(StrKey),
)
hostile_keys = st.one_of(
    valid_keys,
    texts(max_size=8),
    st.integers(-5, 5),
    st.sampled_from([None, True, False, 1.5, (1, 2)]),
    texts(max_size=8).map(StrKey),
)


@functools.cache
def hostile_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """JSON-ish values: what a careless caller or remote API produces."""
    return st.recursive(
        hostile_scalars,
        lambda kids: st.one_of(
            st.lists(kids, max_size=4),
            st.lists(kids, max_size=3).map(tuple),
            st.dictionaries(hostile_keys, kids, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def json_problem(value: Any, path: str = "payload", depth: int = 0) -> str | None:
    """Where ``value`` breaks submit()'s documented rule (``None`` when it is
    JSON): dicts with string keys, lists or tuples, text without lone
    surrogates, integers of at most 300 digits, finite floats, bools, None."""
    if depth > 100:
        return f"{path} (nested too deeply)"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} (a {type(key).__name__} key)"
            if re.search("[\ud800-\udfff]", key):
                return f"{path} (a key with a lone surrogate)"
            found = json_problem(item, f"{path}.{key}", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = json_problem(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, str):
        return f"{path} (lone surrogate)" if re.search("[\ud800-\udfff]", value) else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -(10**300) < value < 10**300 else f"{path} (integer too big)"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} ({value!r})"
    return f"{path} (a {type(value).__name__})"


def normalised(value: Any) -> Any:
    """What a store keeps of a valid JSON value: tuples as lists, plain types."""
    if isinstance(value, Mapping):
        return {str(k): normalised(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalised(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def canonical(value: Any) -> str:
    """Exact JSON text: key order kept, ``1``, ``1.0`` and ``true`` told apart."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


# -- events -------------------------------------------------------------------------

#: Fixed offsets from -23:59 to +23:59 and one zone with summer time (not
#: ``st.timezones()``: it imports every tzdata package, seconds per process).
_ZONES = st.one_of(
    st.just(timezone.utc),
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ).map(lambda offset: timezone(timedelta(minutes=offset // timedelta(minutes=1)))),
    st.just(ZoneInfo("Europe/Amsterdam")),
)
_AWARE = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES
)
occurred = st.one_of(
    st.none(),
    _AWARE,
    st.datetimes(),  # naive: refused
    st.sampled_from(["2024-01-01T00:00:00Z", 0]),
)


@functools.cache
def optional_identifiers() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.none(), identifiers())


@st.composite
def events(draw: st.DrawFn, *, valid: bool | None = None) -> Event:
    """Events whose fields may be hostile (``valid=True``: only valid ones).

    Each example picks which fields are hostile (none, one, some or all),
    so that a hostile payload is also tried behind valid ids, and the other
    way round.
    """
    hostile = (
        set()
        if valid
        else draw(
            st.one_of(
                st.just(frozenset()),
                st.sets(
                    st.sampled_from(["id", "type", "keys", "payload", "occurred_at", "metadata"]),
                    min_size=1,
                    max_size=2,
                ),
                st.just(frozenset({"id", "type", "keys", "payload", "occurred_at", "metadata"})),
            )
        )
    )

    def pick(field: str, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return draw(bad if field in hostile else good)

    return Event(
        pick("id", plain_ids, identifiers()),
        pick("type", plain_ids, identifiers()),
        pick("payload", json_values(), hostile_values()),
        ordering_key=pick("keys", st.none() | plain_ids, optional_identifiers()),
        idempotency_key=pick("keys", st.none(), optional_identifiers()),
        occurred_at=pick("occurred_at", st.none() | _AWARE, occurred),
        metadata=pick(
            "metadata",
            json_objects(4),
            st.dictionaries(hostile_keys, hostile_values(4), max_size=3),
        ),
    )


def event_problem(event: Event) -> str | None:
    """Why submit() must refuse ``event`` (None when it must accept it)."""
    for name in ("id", "type"):
        if not identifier_ok(getattr(event, name)):
            return name
    for name in ("ordering_key", "idempotency_key"):
        value = getattr(event, name)
        if value is not None and not identifier_ok(value):
            return name
    when = event.occurred_at
    if when is not None and not (isinstance(when, datetime) and when.utcoffset() is not None):
        return "occurred_at"
    return json_problem(event.payload) or json_problem(dict(event.metadata), "metadata")


# -- secrets -------------------------------------------------------------------------

#: The secrets planted in what destinations return and raise.
STRIPE_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
BEARER_TOKEN = "abcdef0123456789TOKENxyz"
SECRETS = (STRIPE_KEY, BEARER_TOKEN)
#: What may stand before a secret (redaction needs a word boundary there; a
#: letter glued to the secret makes it another word, which is not promised).
SEPARATORS = [
    " ",
    ":",
    "=",
    "\n",
    "\t",
    "(",
    '"',
    "'",
    "/",
    ",",
    "\x00",
    "\x1b",
    "\x07",
    "\u202e",
    "\x85",
]
SECRET_KEYS = ["api_key", "Authorization", "password", "client_secret", "access_token", "secret"]


@st.composite
def with_secret(draw: st.DrawFn, text: st.SearchStrategy[str] | None = None) -> str:
    """A text with a planted secret somewhere inside."""
    before = draw(text if text is not None else texts(max_size=20))
    after = draw(texts(max_size=20))
    sep = draw(st.sampled_from(SEPARATORS))
    secret = draw(st.sampled_from([STRIPE_KEY, f"Bearer {BEARER_TOKEN}"]))
    return f"{before}{sep}{secret} {after}"


def leaked(text: str) -> str | None:
    """The planted secret found in ``text``, or None."""
    for secret in SECRETS:
        if secret in text:
            return secret
    return None


# -- what destinations do ------------------------------------------------------------


class UnprintableError(Exception):
    """An exception whose ``str`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class UnreprableError(Exception):
    """An exception whose ``str`` and ``repr`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class NonStrError(Exception):
    """An exception whose ``__str__`` returns something that is not a str."""

    def __str__(self) -> Any:
        return b"bytes, not text"  # noqa: PLE0307 - the point of this class


class SecretError(Exception):
    """An arbitrary exception (e.g. from an HTTP client) with a message."""


class Behaviour:
    """What a destination does on one call: return a value or raise, built
    fresh on every call (cycles and exceptions are not shared).
    """

    def __init__(
        self,
        label: str,
        make: Callable[[], Any],
        *,
        raises: bool,
        category: str | None = None,
    ) -> None:
        self.label = label
        self.make = make
        self.raises = raises
        #: the category a library error announces (None for other outcomes)
        self.category = category

    def __call__(self) -> Any:
        value = self.make()
        if self.raises:
            raise value
        return value

    def __repr__(self) -> str:
        return self.label


def short(value: Any, limit: int) -> str:
    """A repr for labels that never fails (some ints and objects have none)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} without a repr>"
    return text if len(text) <= limit else text[:limit] + "..."


class FailingMapping(Mapping[str, Any]):
    """A mapping whose iteration fails (a lazy result after its session closed)."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("lazy result: the session is closed")


class FailingList(list):  # type: ignore[type-arg]
    """A list whose iteration fails."""

    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("lazy list: the cursor is closed")


def _cyclic_list() -> list[Any]:
    value: list[Any] = [1, "x"]
    value.append(value)
    return value


def _cyclic_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


def _deep(n: int) -> Any:
    value: Any = "bottom"
    for _ in range(n):
        value = {"d": [value]}
    return value


@functools.cache
def returns() -> st.SearchStrategy[Behaviour]:
    """A destination that returns something."""
    fixed = st.one_of(
        json_values(),
        hostile_values(),
        long_texts(),
        st.builds(lambda t: {"blob": t}, long_texts()),
        st.builds(lambda key, s: {"id": "r1", key: s}, st.sampled_from(SECRET_KEYS), with_secret()),
        st.builds(
            lambda key, s: {"nested": [{key: s}]}, st.sampled_from(SECRET_KEYS), with_secret()
        ),
    )
    made = st.sampled_from(
        [
            ("a cyclic list", _cyclic_list),
            ("a cyclic dict", _cyclic_dict),
            ("a 200-deep nesting", lambda: _deep(200)),
            ("a 5000-deep nesting", lambda: _deep(5000)),
            ("an object", Opaque),
            ("an unprintable object", Unprintable),
            ("a generator", lambda: (i for i in range(3))),
            ("an exception instance", lambda: ValueError("returned, not raised")),
        ]
    )
    failing = st.sampled_from(
        [
            ("a mapping whose iteration fails", FailingMapping),
            ("a list whose iteration fails", lambda: FailingList([1])),
            ("a dict holding a failing mapping", lambda: {"id": "r1", "raw": FailingMapping()}),
        ]
    )
    return st.one_of(
        fixed.map(lambda v: Behaviour(f"return {short(v, 200)}", lambda: v, raises=False)),
        made.map(lambda p: Behaviour(f"return {p[0]}", p[1], raises=False)),
        failing.map(lambda p: Behaviour(f"return {p[0]}", p[1], raises=False)),
    )


_LIBRARY_ERRORS = [
    SyncError,
    RetryableError,
    RateLimitedError,
    DuplicateError,
    DataFormatError,
    MappingError,
    PermissionDeniedError,
]

retry_afters = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0, 1, 30, -5, 10**400, -(10**400), True, "30", "soon", Decimal("5"), timedelta(seconds=5)]
    ),
)
field_values = st.one_of(
    st.none(), texts(), long_texts(), st.sampled_from([42, b"f", Unprintable()])
)
message_values = st.one_of(
    texts(),
    with_secret(),
    long_texts(),
    with_secret(long_texts()),
    st.none(),
    st.sampled_from([42, b"m", Unprintable()]),
)
details_values = st.one_of(
    st.none(),
    st.dictionaries(hostile_keys, hostile_values(6), max_size=4),
    st.builds(
        lambda key, s: {key: s, "request_id": "req_1"}, st.sampled_from(SECRET_KEYS), with_secret()
    ),
    st.builds(lambda s: {"error": {"message": s}}, with_secret()),
    st.builds(lambda t: {"blob": t}, long_texts()),
)


@st.composite
def library_errors(draw: st.DrawFn) -> Behaviour:
    """One of the library's errors, with any message, field, retry_after,
    details, remote_field and sent (set after construction when the
    constructor would refuse them)."""
    cls = draw(st.sampled_from(_LIBRARY_ERRORS))
    message = draw(message_values)
    attrs_ = {
        "field": draw(field_values),
        "retry_after": draw(retry_afters),
        "details": draw(details_values),
        "remote_field": draw(field_values),
        "sent": draw(st.sampled_from([None, True, False, "no"])),
    }
    odd_details = draw(st.sampled_from([None, None, None, None, "cyclic", "failing"]))

    def make() -> SyncError:
        exc = cls(None if message is None else message)  # type: ignore[arg-type]
        for name, value in attrs_.items():
            setattr(exc, name, value)
        if odd_details == "cyclic":
            exc.details = _cyclic_dict()
        elif odd_details == "failing":
            exc.details = {"raw": FailingMapping()}
        return exc

    label = (
        f"raise {cls.__name__}({short(message, 120)}, "
        + ", ".join(f"{k}={short(v, 60)}" for k, v in attrs_.items())
        + (f", {odd_details} details" if odd_details else "")
        + ")"
    )
    category = cls.category.value if cls.category is not None else None
    return Behaviour(label, make, raises=True, category=category)


def _status_error(status: int, retry_after: str, body: str) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://pos.example/api?api_key=" + STRIPE_KEY)
    response = httpx.Response(
        status, request=request, headers={"Retry-After": retry_after}, text=body
    )
    return httpx.HTTPStatusError(f"HTTP {status}: {body}", request=request, response=response)


@st.composite
def other_errors(draw: st.DrawFn) -> Behaviour:
    """Exceptions that are not the library's: builtins, httpx, broken ones."""
    message = draw(message_values)
    text = message if isinstance(message, str) else "m"
    kind = draw(
        st.sampled_from(
            [
                "ValueError",
                "KeyError",
                "TimeoutError",
                "ConnectionResetError",
                "OSError",
                "SecretError",
                "UnprintableError",
                "UnreprableError",
                "NonStrError",
                "http",
                "httpx.ReadTimeout",
                "httpx.ConnectError",
                "chained",
                "InvalidEventError",
                "StoreError",
                "DeliveryNotFoundError",
                "RecursionError",
                "MemoryError",
            ]
        )
    )
    status = draw(
        st.sampled_from([400, 401, 402, 403, 404, 408, 409, 410, 418, 422, 423, 429, 500, 503, 599])
    )
    header = draw(
        st.one_of(
            st.sampled_from(
                [
                    "",
                    "30",
                    "1.5",
                    "-1",
                    "nan",
                    "inf",
                    "1e400",
                    "Wed, 21 Oct 2015 07:28:00 GMT",
                    "Fri, 31 Dec 9999 23:59:59 GMT",
                ]
            ),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
        )
    )

    def make() -> BaseException:
        if kind == "ValueError":
            return ValueError(message)
        if kind == "KeyError":
            return KeyError(message)
        if kind == "TimeoutError":
            return TimeoutError(message)
        if kind == "ConnectionResetError":
            return ConnectionResetError(errno.ECONNRESET, text)
        if kind == "OSError":
            return OSError(errno.EIO, text, "/srv/x\x1b[31m")
        if kind == "SecretError":
            return SecretError(message, {"headers": {"Authorization": f"Bearer {BEARER_TOKEN}"}})
        if kind == "UnprintableError":
            return UnprintableError(message)
        if kind == "UnreprableError":
            return UnreprableError(message)
        if kind == "NonStrError":
            return NonStrError(message)
        if kind == "http":
            return _status_error(status, header, text)
        if kind == "httpx.ReadTimeout":
            return httpx.ReadTimeout(text)
        if kind == "httpx.ConnectError":
            return httpx.ConnectError(text)
        if kind == "chained":
            try:
                raise ValueError(f"inner Bearer {BEARER_TOKEN}")
            except ValueError as inner:
                outer = RuntimeError(message)
                outer.__cause__ = inner
                return outer
        if kind == "InvalidEventError":
            return InvalidEventError(text, field=text)
        if kind == "StoreError":
            return StoreError(text)
        if kind == "DeliveryNotFoundError":
            return DeliveryNotFoundError(text)
        if kind == "RecursionError":
            return RecursionError(text)
        return MemoryError(text)

    label = f"raise {kind}({short(message, 120)})" + (
        f" status={status} Retry-After={header!r}" if kind == "http" else ""
    )
    return Behaviour(label, make, raises=True)


@functools.cache
def behaviours() -> st.SearchStrategy[Behaviour]:
    """Anything a destination's ``deliver`` may do."""
    return st.one_of(returns(), library_errors(), other_errors())


class ScriptedDestination:
    """A destination that does, per event id, what its script says, and
    counts the effects it applied (a call that returned)."""

    def __init__(self, name: str, script: Mapping[str, Behaviour]) -> None:
        self.name = name
        self.script = dict(script)
        self.calls: dict[str, int] = {}
        self.effects: dict[str, int] = {}

    def deliver(self, event: Event, context: Any) -> Any:
        self.calls[event.id] = self.calls.get(event.id, 0) + 1
        value = self.script[event.id]()
        self.effects[event.id] = self.effects.get(event.id, 0) + 1
        return value


class AsyncScriptedDestination(ScriptedDestination):
    """The same, with ``async def deliver`` (and a cancellation among the outcomes)."""

    async def deliver(self, event: Event, context: Any) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        return ScriptedDestination.deliver(self, event, context)


# -- checks on what was stored --------------------------------------------------------


def json_strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from json_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from json_strings(item)


def encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


# -- stores ----------------------------------------------------------------------------

BACKENDS = ["memory", "sqlite", "postgres"]


def open_backend(kind: str, directory: Any, name: str) -> tuple[Any, Any, Callable[[], None]]:
    """``(queue, idempotency, close)`` of a fresh store of ``kind``: a SQLite
    file in ``directory``, a PostgreSQL schema of its own (dropped by
    ``close``), or memory."""
    from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, open_stores

    if kind == "memory":
        return MemoryQueueStore(), MemoryIdempotencyStore(), lambda: None
    if kind == "sqlite":
        # NORMAL: no fsync per commit (durability is not what these tests are about)
        queue, idempotency = open_stores(f"sqlite:///{directory}/{name}.db", synchronous="NORMAL")

        def close_sqlite() -> None:
            queue.close()
            idempotency.close()

        return queue, idempotency, close_sqlite
    from pg_support import drop_schema, new_schema_name, require_postgres

    dsn, schema = require_postgres(), new_schema_name(f"rs_fz_{name}"[:20])
    queue, idempotency = open_stores(f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}")

    def close_pg() -> None:
        try:
            queue.close()
            idempotency.close()
        finally:
            drop_schema(schema)

    return queue, idempotency, close_pg


def backend_params() -> list[Any]:
    import pytest

    return ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Counter:
    """Fresh names per example (``dest-1``, ``dest-2`` ...), so that examples
    sharing one store never see each other's deliveries or destination state."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, prefix: str = "dest") -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

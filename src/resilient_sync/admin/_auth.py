"""Who may use the admin panel: users, the built-in login, CSRF, throttling.

Two roles: a ``viewer`` reads, an ``operator`` also acts. The host
application's own login plugs in as ``authenticate(request) -> User | None``;
the standalone server uses :class:`Login` (users with passwords and/or
shared tokens, from the environment).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Literal

import attrs
from starlette.requests import Request

from .._protocols import Clock
from .._text import one_line

__all__ = [
    "ENV_OPERATOR_TOKEN",
    "ENV_USERS",
    "ENV_VIEWER_TOKEN",
    "ROLES",
    "Authenticate",
    "Login",
    "Role",
    "Throttle",
    "User",
    "csrf_ok",
    "csrf_token",
]

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")

#: ``name:role:password`` entries, separated by commas or newlines.
ENV_USERS = "RESILIENT_SYNC_ADMIN_USERS"
#: A shared token that signs in as an operator (the person gives a name).
ENV_OPERATOR_TOKEN = "RESILIENT_SYNC_ADMIN_TOKEN"  # noqa: S105 - the variable's name
#: A shared token that signs in as a viewer.
ENV_VIEWER_TOKEN = "RESILIENT_SYNC_ADMIN_VIEWER_TOKEN"  # noqa: S105 - the variable's name


def _check_name(_: Any, __: Any, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a user needs a name (the actor in the audit trail), got {value!r}")


def _check_role(_: Any, __: Any, value: Any) -> None:
    if value not in ROLES:
        raise ValueError(f"a user's role is 'viewer' or 'operator', got {value!r}")


@attrs.frozen
class User:
    """Who uses the panel. ``name`` is the actor of every action they take
    (the audit trail); a ``viewer`` reads, an ``operator`` also acts."""

    name: str = attrs.field(validator=_check_name)
    role: Role = attrs.field(default="viewer", validator=_check_role)

    @property
    def can_act(self) -> bool:
        """True for operators."""
        return self.role == "operator"


#: The host application's login: the user of a request, or None (not signed in).
#: A plain function runs in a worker thread; an ``async def`` on the event loop.
Authenticate = Callable[[Request], User | Awaitable[User | None] | None]


def _digest(key: str, credential: str) -> str:
    return hmac.new(key.encode(), credential.encode(), hashlib.sha256).hexdigest()[:32]


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@attrs.frozen(kw_only=True)
class Login:
    """The built-in login: named users with passwords, and/or shared tokens.

    ``users`` maps a name to ``(password, role)``. With a token the person
    types a name too; it is recorded as ``"<name> (token)"``, since anyone
    holding the token can type any name. Build it from the environment with
    :meth:`from_env`.
    """

    users: Mapping[str, tuple[str, Role]] = attrs.field(factory=dict)
    operator_token: str | None = None
    viewer_token: str | None = None

    def __attrs_post_init__(self) -> None:
        for name, entry in self.users.items():
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise ValueError(
                    f"a user name must be non-empty text without outer spaces: {name!r}"
                )
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise ValueError(f"user {name!r}: expected (password, role)")
            password, role = entry
            if not isinstance(password, str) or not password:
                raise ValueError(f"user {name!r} has an empty password")
            _check_role(None, None, role)
        for label, token in (("operator", self.operator_token), ("viewer", self.viewer_token)):
            if token is not None and len(token) < 16:
                raise ValueError(f"the {label} token is too short: use at least 16 characters")

    @property
    def configured(self) -> bool:
        """Whether anyone at all can sign in."""
        return bool(self.users or self.operator_token or self.viewer_token)

    @property
    def uses_tokens(self) -> bool:
        return bool(self.operator_token or self.viewer_token)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Login:
        """From ``RESILIENT_SYNC_ADMIN_USERS`` (``name:role:password`` entries
        separated by commas or newlines; a password may hold ``:`` but no
        comma), ``RESILIENT_SYNC_ADMIN_TOKEN`` (operators) and
        ``RESILIENT_SYNC_ADMIN_VIEWER_TOKEN``. Raises ``ValueError`` naming the
        malformed entry (never its password)."""
        env = os.environ if environ is None else environ
        users: dict[str, tuple[str, Role]] = {}
        text = env.get(ENV_USERS, "")
        for number, entry in enumerate(text.replace("\n", ",").split(","), start=1):
            if not entry.strip():
                continue
            parts = entry.strip().split(":", 2)
            if len(parts) != 3 or not parts[0].strip() or not parts[2]:
                raise ValueError(
                    f"{ENV_USERS}: entry {number} is not name:role:password "
                    f"(starts with {one_line(parts[0], limit=20)!r})"
                )
            name, role, password = parts[0].strip(), parts[1].strip(), parts[2]
            if role not in ROLES:
                raise ValueError(
                    f"{ENV_USERS}: user {one_line(name, limit=40)!r} has role {one_line(role)!r}; "
                    "use viewer or operator"
                )
            if name in users:
                raise ValueError(f"{ENV_USERS}: user {one_line(name, limit=40)!r} appears twice")
            users[name] = (password, role)
        return cls(
            users=users,
            operator_token=env.get(ENV_OPERATOR_TOKEN) or None,
            viewer_token=env.get(ENV_VIEWER_TOKEN) or None,
        )

    def check(self, name: str, secret: str, *, key: str) -> tuple[User, str, str] | None:
        """The user signed in by ``name`` and ``secret`` (a password, or a token),
        how (``"password"`` or ``"token"``) and a fingerprint of the
        credential keyed by ``key`` (a session stays valid only while the
        credential is unchanged); None when they do not match."""
        name = name.strip()
        if not name or not secret:
            return None
        entry = self.users.get(name)
        if entry is not None:
            password, role = entry
            if _same(secret, password):
                return User(name, role), "password", _digest(key, password)
            return None
        _same(secret, "x" * 32)  # the same work for an unknown name
        for role, token in (("operator", self.operator_token), ("viewer", self.viewer_token)):
            if token and _same(secret, token):
                shown = f"{one_line(name, limit=60)} (token)"
                return User(shown, role), "token", _digest(key, token)
        return None

    def revalidate(self, session: Mapping[str, Any], *, key: str) -> User | None:
        """The user of a session, if its credential is still the configured one."""
        name, role, via, fingerprint = (
            session.get("user"),
            session.get("role"),
            session.get("via"),
            session.get("fp"),
        )
        if not isinstance(name, str) or not isinstance(fingerprint, str):
            return None
        if via == "password":
            entry = self.users.get(name)
            if entry is None or not hmac.compare_digest(_digest(key, entry[0]), fingerprint):
                return None
            return User(name, entry[1])
        if via == "token" and role in ROLES:
            token = self.operator_token if role == "operator" else self.viewer_token
            if token and hmac.compare_digest(_digest(key, token), fingerprint):
                return User(name, role)
        return None


class Throttle:
    """Failed sign-ins per key (a client address, an address and a name):
    after ``limit`` failures within ``window`` seconds the key is refused
    until the window has passed since its first failure."""

    def __init__(self, clock: Clock, *, limit: int = 5, window: float = 900.0) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, ...], tuple[datetime, int]] = {}

    def wait(self, *keys: tuple[str, ...], limits: tuple[int, ...] = ()) -> float:
        """Seconds until the first of ``keys`` may try again (0: now)."""
        now = self.clock.now()
        worst = 0.0
        with self._lock:
            for i, key in enumerate(keys):
                limit = limits[i] if i < len(limits) else self.limit
                found = self._failures.get(key)
                if found is None:
                    continue
                first, count = found
                left = self.window - (now - first).total_seconds()
                if left <= 0:
                    del self._failures[key]
                elif count >= limit:
                    worst = max(worst, left)
        return worst

    def failed(self, *keys: tuple[str, ...]) -> None:
        now = self.clock.now()
        with self._lock:
            if len(self._failures) > 10_000:  # forget the oldest half
                ordered = sorted(self._failures.items(), key=lambda item: item[1][0])
                self._failures = dict(ordered[len(ordered) // 2 :])
            for key in keys:
                first, count = self._failures.get(key, (now, 0))
                if (now - first).total_seconds() >= self.window:
                    first, count = now, 0
                self._failures[key] = (first, count + 1)

    def succeeded(self, *keys: tuple[str, ...]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


def csrf_token(session: dict[str, Any], owner: str) -> str:
    """The session's CSRF token for ``owner`` (the signed-in user's name, ``""``
    before sign-in), made on first use and made anew for another owner: a
    token minted by someone else (a cookie planted in the user's browser)
    is never the user's."""
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32 or session.get("csrf_for") != owner:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
        session["csrf_for"] = owner
    return token


def csrf_ok(session: Mapping[str, Any], sent: Any, owner: str) -> bool:
    """Whether a form's token is the session's, minted for ``owner``."""
    token = session.get("csrf")
    if not isinstance(token, str) or not isinstance(sent, str) or not sent:
        return False
    return _same(sent, token) and session.get("csrf_for") == owner

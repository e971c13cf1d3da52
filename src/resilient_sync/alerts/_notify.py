"""Notifiers: where alerts go (a log, a chat webhook, your own function)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from .._errors import SyncError
from .._redact import SECRET_HEADERS, redact
from .._text import clean, for_slack
from ..http._deadline import SyncSender, install
from ._alert import Alert

__all__ = [
    "CallbackNotifier",
    "LogNotifier",
    "NotificationError",
    "Notifier",
    "WebhookNotifier",
]


class NotificationError(SyncError):
    """A notifier could not deliver an alert (the message names the notifier,
    never a webhook URL's secret path)."""


@runtime_checkable
class Notifier(Protocol):
    """Sends an :class:`Alert` somewhere; raises when it could not.

    The :class:`Alerter` calls ``notify`` from the thread that runs
    ``check()``; a notifier that raises is logged and the alert is tried again
    at the next check if no other notifier took it.
    """

    def notify(self, alert: Alert) -> None:
        """Deliver one alert."""
        ...


_LEVELS = {"critical": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}


class LogNotifier:
    """Logs alerts through :mod:`logging` (logger ``resilient_sync.alerts``).

    Critical alerts log at ``ERROR``, warnings at ``WARNING``, info and
    resolved ones at ``INFO``. The record carries ``alert_key``,
    ``alert_rule``, ``destination``, ``category`` and ``count`` as extra
    fields for structured handlers.
    """

    def __init__(self, logger: logging.Logger | str = "resilient_sync.alerts") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def notify(self, alert: Alert) -> None:
        level = logging.INFO if alert.resolved else _LEVELS[alert.severity]
        self.logger.log(
            level,
            "%s",
            alert.text(),
            extra={
                "alert_key": alert.key,
                "alert_rule": alert.rule,
                "destination": alert.destination,
                "category": alert.category.value if alert.category else None,
                "count": alert.count,
            },
        )

    def __repr__(self) -> str:
        return f"LogNotifier({self.logger.name!r})"


class CallbackNotifier:
    """Calls ``fn(alert)``: send an e-mail, page someone, feed a dashboard."""

    def __init__(self, fn: Callable[[Alert], Any], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"CallbackNotifier needs a callable, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callback")

    def notify(self, alert: Alert) -> None:
        self.fn(alert)

    def __repr__(self) -> str:
        return f"CallbackNotifier({self.name!r})"


Style = Literal["slack", "teams", "json"]
_COLOURS = {"critical": "D70000", "warning": "FFA500", "info": "2F80ED"}
#: Longest text put into one field of a webhook body (characters).
_MAX_BODY_TEXT = 8_000


class WebhookNotifier:
    """POSTs alerts as JSON to a chat webhook (Slack, Teams, Mattermost ...).

    Alert texts carry outside text (error messages from APIs, event ids), so
    every body passes the text gate (secrets redacted, control characters
    shown as escapes), and the Slack style also escapes ``&``, ``<`` and
    ``>``: a ``<!channel>``, ``<!here>`` or ``<http://x|link>`` inside an
    error message is shown, never acted on.

    Args:
        url: the incoming-webhook URL. It is a secret (its path is the
            token): it never appears in messages, ``repr`` or errors.
        style: ``"slack"`` (``{"text": ...}``, also Mattermost/Rocket.Chat),
            ``"teams"`` (a MessageCard) or ``"json"`` (:meth:`Alert.to_json`).
        headers: extra request headers (e.g. an ``Authorization`` header).
        secrets: strings to redact from every message (tokens, passwords),
            on top of the built-in patterns.
        timeout: seconds for the whole request, enforced in total (a server
            that drips its answer cannot stretch it).
        transport: an ``httpx`` transport (``httpx.MockTransport`` in tests;
            a custom one is bounded from outside, see
            ``docs/howto/http-destination.md``).
    """

    def __init__(
        self,
        url: str,
        *,
        style: Style = "slack",
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("WebhookNotifier needs an http(s) URL (the URL is not shown)")
        if style not in ("slack", "teams", "json"):
            raise ValueError(f"style must be 'slack', 'teams' or 'json', got {style!r}")
        self.url = url
        self.style: Style = style
        self.host = parts.hostname
        self.headers = dict(headers or {})
        secret_values = [v for k, v in self.headers.items() if k.lower() in SECRET_HEADERS]
        path_secrets = [p for p in (parts.path or "").split("/") if len(p) >= 8]
        self.secrets = [*secrets, *secret_values, *path_secrets, url]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._sender = SyncSender(self._client, native=install(self._client), name="webhook")

    def body(self, alert: Alert) -> dict[str, Any]:
        """The JSON body sent for ``alert`` (secrets redacted, control
        characters escaped; Slack's ``& < >`` escaped in the Slack style)."""
        if self.style == "json":
            data = alert.to_json()
            for key in ("title", "details", "action"):
                data[key] = self._clean(data[key])
            data["commands"] = [self._clean(c) for c in data["commands"]]
            return data
        if self.style == "slack":
            return {"text": for_slack(self._clean(alert.text()))}
        mark = "RESOLVED" if alert.resolved else alert.severity.upper()
        return {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": self._clean(alert.title),
            "themeColor": "2DC72D" if alert.resolved else _COLOURS[alert.severity],
            "title": self._clean(f"[{mark}] {alert.title}"),
            "text": self._clean("\n\n".join(alert.text().splitlines()[1:])) or " ",
        }

    def _clean(self, text: str) -> str:
        return clean(text, limit=_MAX_BODY_TEXT, secrets=self.secrets)

    def notify(self, alert: Alert) -> None:
        request = self._client.build_request(
            "POST", self.url, json=self.body(alert), headers=self.headers
        )
        try:
            response = self._sender.send(request, time.monotonic() + self.timeout)
        except httpx.HTTPError as exc:
            raise NotificationError(
                f"webhook to {self.host} failed: {type(exc).__name__}: "
                f"{redact(str(exc), self.secrets)}"
            ) from None  # the chained httpx error would show the secret URL
        if response.status_code >= 300:
            raise NotificationError(
                f"webhook to {self.host} answered HTTP {response.status_code}: "
                f"{self._clean(response.text[:200])}"
            )

    def close(self) -> None:
        """Close the HTTP client."""
        self._sender.close()
        self._client.close()

    def __repr__(self) -> str:
        return f"WebhookNotifier(host={self.host!r}, style={self.style!r})"

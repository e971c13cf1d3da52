"""The :class:`Alert` value: what happened, how much of it, what to do next."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from .._model import ErrorCategory

__all__ = ["Alert"]

_SEVERITIES = ("critical", "warning", "info")


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _severity(_inst: Any, _attr: Any, value: str) -> None:
    if value not in _SEVERITIES:
        raise ValueError(f"Alert.severity must be one of {_SEVERITIES}, got {value!r}")


@attrs.frozen(kw_only=True)
class Alert:
    """One alert: a summary of one condition, never one message per failure.

    Attributes:
        rule: the rule that raised it (``"needs_action"``, ``"error_rate"``,
            ``"oldest_waiting"``, ``"destination_paused"``, ``"circuit_open"``
            or a custom rule's name).
        severity: ``"critical"``, ``"warning"`` or ``"info"``.
        title: one line, e.g. ``"12 deliveries to pos need action (data_format)"``.
        details: what is known (counts, examples, the last reason); may span lines.
        action: what a person should do next (the runbook line).
        commands: CLI commands that help (``resilient-sync ...``).
        destination, category: what the alert is about, where it applies;
            with ``rule`` they form the deduplication :attr:`key`.
        count: how many things it summarises now (deliveries, failures ...).
        new: how many of them are new since the last message about this key.
        delivery_ids: a few example deliveries.
        first_seen: when the condition was first seen.
        at: when this alert was made.
        resolved: True for the message that says the condition cleared.
    """

    rule: str
    severity: str = attrs.field(validator=_severity)
    title: str
    details: str = ""
    action: str = ""
    commands: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    destination: str | None = None
    category: ErrorCategory | None = None
    count: int = 0
    new: int = 0
    delivery_ids: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    first_seen: datetime | None = None
    at: datetime | None = None
    resolved: bool = False

    @property
    def key(self) -> str:
        """``rule/destination/category``: alerts with one key are one conversation."""
        category = self.category.value if self.category is not None else "*"
        return f"{self.rule}/{self.destination or '*'}/{category}"

    def text(self) -> str:
        """Plain text for logs, chat and e-mail: title, details, what to do."""
        mark = "RESOLVED" if self.resolved else self.severity.upper()
        lines = [f"[{mark}] {self.title}"]
        if self.details:
            lines.append(self.details)
        if self.action and not self.resolved:
            lines.append(f"What to do: {self.action}")
            lines.extend(f"  $ {command}" for command in self.commands)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``WebhookNotifier`` ``style="json"`` body)."""
        return {
            "key": self.key,
            "rule": self.rule,
            "severity": self.severity,
            "resolved": self.resolved,
            "title": self.title,
            "details": self.details,
            "action": self.action,
            "commands": list(self.commands),
            "destination": self.destination,
            "category": self.category.value if self.category is not None else None,
            "count": self.count,
            "new": self.new,
            "delivery_ids": list(self.delivery_ids),
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "at": self.at.isoformat() if self.at else None,
        }

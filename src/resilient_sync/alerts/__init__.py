"""Escalation: tell a person when the queue needs one, once, with what to do.

An :class:`Alerter` reads the queue store with a set of rules and sends
deduplicated :class:`Alert` values to notifiers::

    from resilient_sync.alerts import Alerter, LogNotifier, WebhookNotifier

    alerter = Alerter(queue, [LogNotifier(), WebhookNotifier(SLACK_URL)])
    alerter.check()  # every minute

Rules: :class:`NeedsActionRule` (deliveries wait for a person, per
category), :class:`ErrorRateRule` (too many attempts fail),
:class:`OldestWaitingRule` (work is stuck) and :class:`DestinationRule` (a
destination is paused or its circuit opened). Write your own with the
:class:`AlertRule` protocol. See ``docs/howto/alerting.md``.
"""

from __future__ import annotations

from ._alert import Alert
from ._alerter import Alerter
from ._notify import (
    CallbackNotifier,
    LogNotifier,
    NotificationError,
    Notifier,
    WebhookNotifier,
)
from ._rules import (
    AlertRule,
    DestinationRule,
    ErrorRateRule,
    NeedsActionRule,
    OldestWaitingRule,
    QueueView,
    default_rules,
)

__all__ = [
    "Alert",
    "AlertRule",
    "Alerter",
    "CallbackNotifier",
    "DestinationRule",
    "ErrorRateRule",
    "LogNotifier",
    "NeedsActionRule",
    "NotificationError",
    "Notifier",
    "OldestWaitingRule",
    "QueueView",
    "WebhookNotifier",
    "default_rules",
]

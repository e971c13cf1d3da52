"""Small formatters shared by the operator surfaces (the CLI, the admin panel).

Pure functions over model values: times in UTC, ages, the display order of
statuses and categories. Nothing here reads a store or prints.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ._model import DeliveryStatus, ErrorCategory

__all__ = ["CATEGORY_ORDER", "STATUS_ORDER", "fmt_age", "fmt_ago", "fmt_time"]

#: The order statuses are shown in (the life of a delivery, left to right).
STATUS_ORDER = [
    DeliveryStatus.PENDING,
    DeliveryStatus.IN_FLIGHT,
    DeliveryStatus.RETRY_SCHEDULED,
    DeliveryStatus.SUCCEEDED,
    DeliveryStatus.NEEDS_ACTION,
    DeliveryStatus.RESOLVED,
    DeliveryStatus.DISCARDED,
]
#: The order categories are shown in (the taxonomy's order).
CATEGORY_ORDER = list(ErrorCategory)
_UTC = timezone.utc


def fmt_time(when: datetime | None) -> str:
    """``2026-11-22 18:40:12Z`` (UTC), or ``-``."""
    if when is None:
        return "-"
    return when.astimezone(_UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_age(delta: timedelta) -> str:
    """``45s``, ``4m 12s``, ``10m``, ``2h 05m``, ``3d 04h``."""
    seconds = int(max(delta.total_seconds(), 0))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s" if seconds else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h" if hours else f"{days}d"


def fmt_ago(when: datetime | None, now: datetime) -> str:
    """``4m 12s ago``, ``in 30s`` (a time to come), or ``-``."""
    if when is None:
        return "-"
    if when > now:
        return f"in {fmt_age(when - now)}"
    return f"{fmt_age(now - when)} ago"

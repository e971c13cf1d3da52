"""Small helpers every store shares (paging cursors, audit fill-in)."""

from __future__ import annotations

import attrs

from .._model import Attempt, Delivery

__all__ = ["check_page_args", "decode_cursor", "encode_cursor", "fill_audit"]


def check_page_args(limit: int) -> None:
    """Reject a page size that is not a positive int."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")


def encode_cursor(seq: int) -> str:
    """An opaque page cursor after the delivery with this ``seq``."""
    return f"s{seq}"


def decode_cursor(cursor: str | None) -> int:
    """The ``seq`` a cursor points after (0 for the first page)."""
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or not cursor.startswith("s") or not cursor[1:].isdigit():
        raise ValueError(f"invalid page cursor {cursor!r}; pass a next_cursor from a previous page")
    return int(cursor[1:])


def fill_audit(template: Attempt, delivery: Delivery) -> Attempt:
    """An operator action's audit record for one delivery."""
    return attrs.evolve(
        template,
        delivery_id=delivery.id,
        destination=delivery.destination,
        outcome=delivery.status,
        number=delivery.attempts,
    )

"""Delivery ids on the command line: unique prefixes, like git's short ids.

Every command that takes a delivery id also takes a unique prefix of one
(:func:`resolve`); tables show the shortest prefix that is unique in the
store (:class:`ShortIds`), so a row's id can be pasted back as it is.

Ids made by the library start with 12 hex digits of their creation time
(milliseconds), then 20 random ones, so the deliveries of one batch share a
long prefix; a prefix of 12 or more digits that no other delivery of the same
millisecond shares is unique in the whole store. The lookups use the store's
``ids_with_prefix(prefix, limit=)`` when it has one (an index range scan);
otherwise they page through ``list()``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from .._model import Delivery
from .._protocols import QueueStore
from ._args import CliError

__all__ = ["MIN_PREFIX", "ShortIds", "ids_with_prefix", "resolve"]

#: The shortest prefix accepted for an id (git's minimum too).
MIN_PREFIX = 4
#: Ids shown are never shorter than this (the time part of the library's ids).
_SHOWN = 12
#: The most ids of one millisecond looked at to shorten ids (more: full ids).
_GROUP_LIMIT = 10_000
_CANDIDATES = 10


def ids_with_prefix(queue: QueueStore, prefix: str, *, limit: int) -> list[str]:
    """The ids that start with ``prefix``, sorted, at most ``limit``."""
    lookup = getattr(queue, "ids_with_prefix", None)
    if callable(lookup):
        found: list[str] = lookup(prefix, limit=limit)
        return found
    matches: list[str] = []
    cursor: str | None = None
    while True:  # a store without the lookup: read every delivery once
        page = queue.list(limit=500, cursor=cursor)
        matches.extend(d.id for d in page.items if d.id.startswith(prefix))
        if page.next_cursor is None:
            return sorted(matches)[:limit]
        cursor = page.next_cursor


def resolve(queue: QueueStore, text: str, *, where: str) -> Delivery:
    """The delivery named by ``text``: its id, or a unique prefix of it.

    Raises :class:`CliError` (exit 1) when none matches, or when several do
    (listing them).
    """
    wanted = text.strip()
    delivery = queue.get(wanted) if wanted else None
    if delivery is not None:
        return delivery
    if len(wanted) < MIN_PREFIX:
        hint = f" (a prefix needs {MIN_PREFIX} characters or more)" if wanted else ""
        raise CliError(f"no delivery with id {text!r} in {where}{hint}")
    found = ids_with_prefix(queue, wanted, limit=_CANDIDATES + 1)
    if not found and wanted.lower() != wanted:  # the library's ids are lower-case hex
        found = ids_with_prefix(queue, wanted.lower(), limit=_CANDIDATES + 1)
    if not found:
        raise CliError(f"no delivery with id {text!r} in {where}")
    if len(found) == 1:
        delivery = queue.get(found[0])
        if delivery is None:  # purged between the two reads
            raise CliError(f"no delivery with id {text!r} in {where}")
        return delivery
    shown = []
    for delivery_id in found[:_CANDIDATES]:
        candidate = queue.get(delivery_id)
        if candidate is not None:
            shown.append(
                f"{delivery_id} ({candidate.destination}, {candidate.event.type} "
                f"{candidate.event.id}, {candidate.status.value})"
            )
    more = " and more" if len(found) > _CANDIDATES else ""
    raise CliError(
        f"delivery id prefix {text!r} is ambiguous in {where}: it starts "
        f"{'; '.join(shown)}{more}; give more characters"
    )


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ShortIds:
    """The shortest prefix of a set of ids that is unique in the store, one
    length for all of them (so columns line up), at least 12 characters."""

    def __init__(self, queue: QueueStore, ids: Iterable[str]) -> None:
        self.length = self._length(queue, list(dict.fromkeys(ids)))

    @staticmethod
    def _length(queue: QueueStore, ids: Sequence[str]) -> int | None:
        if not ids:
            return None
        length = _SHOWN
        groups: dict[str, list[str]] = {}
        for delivery_id in ids:
            groups.setdefault(delivery_id[:_SHOWN], []).append(delivery_id)
        for head, members in groups.items():
            same = ids_with_prefix(queue, head, limit=_GROUP_LIMIT + 1)
            if len(same) > _GROUP_LIMIT:
                return None
            others = sorted(set(same) | set(members))
            for delivery_id in members:
                at = bisect.bisect_left(others, delivery_id)
                neighbours = others[max(at - 1, 0) : at] + others[at + 1 : at + 2]
                need = max((_common(delivery_id, n) + 1 for n in neighbours), default=0)
                length = max(length, need)
        return length

    def __call__(self, delivery_id: str) -> str:
        if self.length is None or self.length >= len(delivery_id):
            return delivery_id
        return delivery_id[: self.length]

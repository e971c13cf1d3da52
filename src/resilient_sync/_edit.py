"""Hand corrections of a payload (``Operator.edit``): paths, values, the diff.

Pure functions, no I/O. A path names a place in the payload the way error
fields do: ``phone``, ``customer.phone``, ``lines[2].sku`` (a leading
``payload.`` is accepted and ignored).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["EditResult", "apply_edits", "parse_path"]

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")

#: Marks a path that :func:`apply_edits` removed.
_MISSING: Any = object()


def parse_path(path: str) -> list[str | int]:
    """Split ``"lines[2].sku"`` into ``["lines", 2, "sku"]``.

    Raises ``ValueError`` naming the path when it is empty or malformed.
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"a payload path must be a non-empty string, got {path!r}")
    text = path.strip()
    if text.startswith("payload."):
        text = text[len("payload.") :]
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        if parts and text[pos] == ".":
            pos += 1
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(
                f"invalid payload path {path!r}; write it like phone, customer.phone or "
                "lines[2].sku"
            )
        name, index = match.groups()
        parts.append(int(index) if index is not None else name)
        pos = match.end()
    if not parts or text.endswith("."):
        raise ValueError(f"invalid payload path {path!r}")
    return parts


def _label(parts: list[str | int]) -> str:
    out = "payload"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _parent(root: Any, parts: list[str | int], path: str) -> Any:
    node = root
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, parts[: depth + 1], path)
    return node


def _child(node: Any, part: str | int, walked: list[str | int], path: str) -> Any:
    if isinstance(part, int):
        if not isinstance(node, list) or part >= len(node):
            raise ValueError(f"{path!r}: {_label(walked)} does not exist in the payload")
        return node[part]
    if not isinstance(node, dict) or part not in node:
        raise ValueError(f"{path!r}: {_label(walked)} does not exist in the payload")
    return node[part]


def _get(root: Any, parts: list[str | int]) -> Any:
    node = root
    for part in parts:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return _MISSING
        elif not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


class EditResult:
    """The corrected payload and, per changed path, the old and new value.

    ``before``/``after`` map ``"payload.<path>"`` labels to values; a value
    that did not exist (before) or was removed (after) is ``None`` and the
    label is listed in ``added`` or ``removed``.
    """

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        self.added: list[str] = []
        self.removed: list[str] = []

    @property
    def changed(self) -> list[str]:
        """The labels of the paths whose value changed, in the order given."""
        return list(self.after)


def _did_you_mean(parent: Any, last: str | int) -> str:
    if not isinstance(parent, dict) or not isinstance(last, str):
        return ""
    close = difflib.get_close_matches(last, [k for k in parent if isinstance(k, str)], n=1)
    if not close:
        lowered = {k.lower(): k for k in parent if isinstance(k, str)}
        close = [lowered[last.lower()]] if last.lower() in lowered else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _same(old: Any, new: Any) -> bool:
    """Whether a change leaves the JSON the same (``1`` and ``true`` or ``1.0``
    are equal in Python but not in the payload a destination receives)."""
    try:
        return json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)
    except (TypeError, ValueError):  # not JSON: the caller's check refuses it later
        return False


def _original(payload: Any, parts: list[str | int], current: Any) -> Any:
    """The value at ``parts`` in the payload as it was before any of the edits
    (an earlier edit of this place or of a parent may have changed it);
    ``current`` where the original has no such place."""
    found = _get(payload, parts)
    return current if found is _MISSING else found


def apply_edits(
    payload: Any,
    changes: Mapping[str, Any],
    remove: Iterable[str] = (),
    add: Mapping[str, Any] | None = None,
) -> EditResult:
    """Return a corrected deep copy of ``payload``; ``payload`` is not modified.

    ``changes`` maps *existing* paths to new JSON values (a key or list item
    that is not there is refused, with a "did you mean" for a near miss, so a
    typo never adds a field silently); ``add`` maps paths that do not exist
    yet to their values (the parent must exist); ``remove`` lists paths to
    delete. A change that sets the value it already has is ignored. Raises
    ``ValueError`` naming the path for a path that cannot be applied.
    """
    result = EditResult(copy.deepcopy(payload))
    for path, value in changes.items():
        parts = parse_path(path)
        parent = _parent(result.payload, parts, path)
        last = parts[-1]
        label = _label(parts)
        old = _get(result.payload, parts)
        if old is _MISSING:
            raise ValueError(
                f"{path!r}: {label} does not exist in the payload"
                f"{_did_you_mean(parent, last)}; to add a new field, pass it in add= "
                "(CLI: --add)"
            )
        parent[last] = value
        if _same(old, value) and label not in result.after:
            continue
        result.before.setdefault(label, _original(payload, parts, old))
        result.after[label] = value
    for path, value in (add or {}).items():
        parts = parse_path(path)
        parent = _parent(result.payload, parts, path)
        last = parts[-1]
        label = _label(parts)
        if _get(result.payload, parts) is not _MISSING:
            raise ValueError(
                f"{path!r}: {label} already exists in the payload; change it with "
                "changes= (CLI: --set)"
            )
        if isinstance(last, int) or not isinstance(parent, dict):
            raise ValueError(f"{path!r}: the parent of {label} is not an object")
        parent[last] = value
        result.before.setdefault(label, None)
        result.after[label] = value
        result.added.append(label)
    for path in remove:
        parts = parse_path(path)
        parent = _parent(result.payload, parts, path)
        last = parts[-1]
        label = _label(parts)
        old = _get(result.payload, parts)
        if old is _MISSING:
            raise ValueError(
                f"{path!r}: {label} does not exist in the payload{_did_you_mean(parent, last)}"
            )
        del parent[last]
        result.before.setdefault(label, _original(payload, parts, old))
        result.after[label] = None
        result.removed.append(label)
    return result

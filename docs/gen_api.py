#!/usr/bin/env python3
"""Generate docs/reference/api.md from the docstrings of the public API.

    .venv/bin/python docs/gen_api.py           # rewrite docs/reference/api.md
    .venv/bin/python docs/gen_api.py --check   # exit 1 if it is out of date

Every name in the ``__all__`` of ``resilient_sync`` and of each public
module below it (``resilient_sync.stores``, ``resilient_sync.http``,
``resilient_sync.testing`` ... : every module whose dotted name has no part
starting with ``_`` and that defines ``__all__``) is rendered with its
signature and docstring; classes also list their public methods and
properties. The output depends only on the code (no memory
addresses, no version numbers), so ``tests/test_docs.py`` can compare it with
the committed file.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import pkgutil
import re
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "reference" / "api.md"
#: The root package; its public modules are found by :func:`public_modules`.
PACKAGE = "resilient_sync"
REGENERATE = ".venv/bin/python docs/gen_api.py"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ROLE = re.compile(r":(?:class|func|meth|attr|exc|mod|data|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


# -- docstrings to Markdown ---------------------------------------------------


def _inline(text: str) -> str:
    """reST inline markup to Markdown: ``x`` -> `x`, :class:`~a.B` -> `B`."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        if match.group(0).startswith(":") and "`~" in match.group(0):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return _LITERAL.sub(r"`\1`", _ROLE.sub(role, text))


_SECTION = re.compile(r"^(Args|Arguments|Attributes|Returns|Raises|Example|Examples):\s*$")
_ITEM = re.compile(r"^(\*?\*?[A-Za-z_][\w.]*)(\s*\([^)]*\))?:\s*(.*)$")


def _docstring_markdown(doc: str) -> str:
    """Render a cleaned docstring as Markdown.

    Google-style sections (``Args:``, ``Attributes:``) become bullet lists,
    ``>>>`` examples and ``::`` literal blocks become fenced blocks (never
    ``python``-fenced, so the docs test does not run them), the rest is
    paragraphs with inline markup converted.
    """
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        section = _SECTION.match(line)
        if section:
            i = _render_section(section.group(1), lines, i + 1, out)
            continue
        if stripped.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out.extend(["", "```pycon", *_dedent(block), "```", ""])
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            text = stripped[:-2].rstrip()
            if text:
                out.append(_inline(line[: len(line) - len(line.lstrip())] + text + ":"))
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            base = len(line) - len(line.lstrip())
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base
            ):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out.extend(["", "```text", *_dedent(block), "```", ""])
            continue
        out.append(_inline(line))
        i += 1
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def _render_section(title: str, lines: list[str], i: int, out: list[str]) -> int:
    out.extend(["", f"**{title}:**", ""])
    items: list[list[str]] = []
    base: int | None = None
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            # a blank line ends the section unless the next line is still indented
            if i + 1 < len(lines) and lines[i + 1].startswith(" "):
                i += 1
                continue
            break
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break
        if base is None:
            base = indent
        match = _ITEM.match(line.strip())
        if indent == base and match:
            name, kind, rest = match.groups()
            head = f"`{name}`" + (f" {kind.strip()}" if kind else "")
            items.append([f"{head}: {rest}".rstrip()])
        elif items:
            items[-1].append(line.strip())
        else:
            items.append([line.strip()])
        i += 1
    out.extend("- " + _inline(" ".join(part for part in item if part)) for item in items)
    out.append("")
    return i


def _dedent(block: list[str]) -> list[str]:
    indents = [len(x) - len(x.lstrip()) for x in block if x.strip()]
    cut = min(indents) if indents else 0
    return [x[cut:] for x in block]


# -- signatures ---------------------------------------------------------------


def _clean(text: str) -> str:
    return _ADDRESS.sub("", text).replace("builtins.", "")


def _format_default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        module = getattr(value, "__module__", "") or ""
        return f"{module}.{value.__qualname__}" if module else value.__qualname__
    return _clean(repr(value))


def _attrs_defaults(cls: type) -> dict[str, str]:
    """Readable defaults of attrs fields whose __init__ default is a factory."""
    out: dict[str, str] = {}
    if not attrs.has(cls):
        return out
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            factory = default.factory
            name = getattr(factory, "__name__", repr(factory))
            out[field.alias or field.name.lstrip("_")] = "{}" if factory is dict else f"{name}()"
    return out


def _signature_text(sig: inspect.Signature, overrides: dict[str, str] | None = None) -> str:
    overrides = overrides or {}
    parts: list[str] = []
    seen_kw_only = False
    previous_kind: Any = None
    for param in sig.parameters.values():
        kind = param.kind
        if kind is inspect.Parameter.KEYWORD_ONLY and not seen_kw_only:
            if previous_kind is not inspect.Parameter.VAR_POSITIONAL:
                parts.append("*")
            seen_kw_only = True
        if (
            previous_kind is inspect.Parameter.POSITIONAL_ONLY
            and kind is not inspect.Parameter.POSITIONAL_ONLY
        ):
            parts.append("/")
        text = param.name
        if kind is inspect.Parameter.VAR_POSITIONAL:
            text = "*" + text
        elif kind is inspect.Parameter.VAR_KEYWORD:
            text = "**" + text
        if param.annotation is not inspect.Parameter.empty:
            annotation = param.annotation
            text += ": " + (annotation if isinstance(annotation, str) else _type_name(annotation))
        if param.name in overrides:
            text += " = " + overrides[param.name]
        elif param.default is not inspect.Parameter.empty:
            text += " = " + _format_default(param.default)
        parts.append(text)
        previous_kind = kind
    if previous_kind is inspect.Parameter.POSITIONAL_ONLY:
        parts.append("/")
    result = "(" + ", ".join(parts) + ")"
    if sig.return_annotation is not inspect.Signature.empty:
        ret = sig.return_annotation
        result += " -> " + (ret if isinstance(ret, str) else _type_name(ret))
    return _clean(result)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__qualname__
    return _clean(str(tp)).replace("typing.", "")


def _is_bare_varargs(sig: inspect.Signature) -> bool:
    kinds = {p.kind for p in sig.parameters.values()}
    return kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}


def _class_signature(cls: type) -> str | None:
    """The constructor's signature, skipping ``__init__(*args, **kwargs)`` wrappers."""
    if issubclass(cls, enum.Enum) or _is_protocol(cls):
        return None
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            return None
        params = list(sig.parameters.values())[1:]  # drop self
        sig = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
        if _is_bare_varargs(sig) and params:
            continue
        return _signature_text(sig, _attrs_defaults(cls))
    return "()"


def _is_protocol(cls: type) -> bool:
    return bool(getattr(cls, "_is_protocol", False))


# -- walking the API ------------------------------------------------------------


def _own_classes(cls: type) -> list[type]:
    """The classes of ``cls``'s MRO that belong to this package, most derived first."""
    return [
        klass
        for klass in cls.__mro__
        if getattr(klass, "__module__", "").startswith("resilient_sync") and klass is not object
    ]


def _members(cls: type) -> Iterator[tuple[str, Any, type]]:
    """Public methods and properties, in definition order, subclass first."""
    seen: set[str] = set()
    for klass in _own_classes(cls):
        for name, value in klass.__dict__.items():
            if name.startswith("_") or name in seen:
                continue
            if isinstance(value, (staticmethod, classmethod, property)) or inspect.isfunction(
                value
            ):
                seen.add(name)
                yield name, value, klass


def _protocol_docs(protocols: list[type]) -> Callable[[type, str], str | None]:
    """Find the protocol method a structural implementation fulfils."""

    def methods(proto: type) -> set[str]:
        return {n for n, v in proto.__dict__.items() if inspect.isfunction(v) and n[0] != "_"}

    def lookup(cls: type, name: str) -> str | None:
        for proto in protocols:
            wanted = methods(proto)
            if name in wanted and all(callable(getattr(cls, m, None)) for m in wanted):
                return f"{proto.__name__}.{name}"
        return None

    return lookup


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        if issubclass(obj, enum.Enum):
            return "enum"
        if _is_protocol(obj):
            return "protocol"
        return "class"
    if inspect.isfunction(obj):
        return "function"
    return "data"


def _render_member(
    cls: type, name: str, value: Any, implements: Callable[[type, str], str | None]
) -> list[str]:
    out: list[str] = []
    if isinstance(value, property):
        ret = ""
        if value.fget is not None:
            sig = inspect.signature(value.fget)
            if sig.return_annotation is not inspect.Signature.empty:
                annotation = sig.return_annotation
                ret = ": " + (annotation if isinstance(annotation, str) else _type_name(annotation))
        out.append(f"#### `{cls.__name__}.{name}{ret}` (property)")
        doc = inspect.getdoc(value)
    else:
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        sig = inspect.signature(func)
        params = list(sig.parameters.values())
        if not isinstance(value, staticmethod) and params:
            params = params[1:]
        sig = sig.replace(parameters=params)
        prefix = "async " if inspect.iscoroutinefunction(func) else ""
        label = " (classmethod)" if isinstance(value, classmethod) else ""
        out.append(f"#### `{prefix}{cls.__name__}.{name}{_signature_text(sig)}`{label}")
        doc = func.__doc__ and inspect.cleandoc(func.__doc__)
    out.append("")
    if doc:
        out.append(_docstring_markdown(doc))
    else:
        target = implements(cls, name)
        out.append(f"Implements `{target}`.\n" if target else "(No docstring.)\n")
    return out


def _render_object(
    qualname: str, obj: Any, implements: Callable[[type, str], str | None]
) -> list[str]:
    kind = _kind(obj)
    out = [f"### `{qualname}`", ""]
    if kind == "data":
        if typing.get_origin(obj) is not None:
            out.append(f"*type alias*: `{_type_name(obj)}`\n")
        elif qualname.endswith("__version__"):
            out.append("*str*: the installed version of the package (from its metadata).\n")
        else:
            out.append(f"*{type(obj).__name__}*: `{_data_repr(obj)}`\n")
        return out
    if kind == "function":
        out.extend(
            [
                "```python no-run",
                f"def {obj.__name__}{_signature_text(inspect.signature(obj))}",
                "```",
                "",
            ]
        )
    else:
        bases = [b.__name__ for b in obj.__bases__ if b is not object and b.__name__[0] != "_"]
        signature = _class_signature(obj)
        head = f"class {obj.__name__}"
        if signature is not None:
            head += signature
        out.extend(["```python no-run", head, "```", ""])
        out.append(
            f"*{kind}*" + (f"; bases: {', '.join(f'`{b}`' for b in bases)}" if bases else "")
        )
        out.append("")
    doc = obj.__doc__ and inspect.cleandoc(obj.__doc__)
    if kind == "exception" and obj.__doc__ is None:
        doc = None
    out.append(_docstring_markdown(doc) if doc else "(No docstring.)\n")
    if kind == "enum":
        out.append("| member | value |")
        out.append("|---|---|")
        out.extend(f"| `{m.name}` | `{m.value!r}` |" for m in obj)
        out.append("")
    if kind == "exception":
        category = getattr(obj, "category", None)
        if category is not None:
            out.append(f"`category = ErrorCategory.{category.name}`\n")
    if kind == "protocol":
        annotations = {n: a for n, a in inspect.get_annotations(obj).items() if n[0] != "_"}
        for name, annotation in annotations.items():
            text = annotation if isinstance(annotation, str) else _type_name(annotation)
            out.append(f"#### `{obj.__name__}.{name}: {text}` (attribute)\n")
    if inspect.isclass(obj):
        for name, value, _owner in _members(obj):
            out.extend(_render_member(obj, name, value, implements))
    return out


def public_modules() -> list[tuple[str, Any]]:
    """``(name, module)`` of the package and every public module below it that
    has ``__all__``, the package first, then sorted by name."""
    root = importlib.import_module(PACKAGE)
    found = [(PACKAGE, root)]
    pending = [root]
    while pending:
        package = pending.pop()
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            module = importlib.import_module(info.name)
            if isinstance(getattr(module, "__all__", None), (list, tuple)):
                found.append((info.name, module))
            if info.ispkg:
                pending.append(module)
    return [found[0], *sorted(found[1:])]


def _data_repr(obj: Any) -> str:
    """A repr that does not depend on hash seeds or memory addresses."""
    if isinstance(obj, (set, frozenset)):
        items = ", ".join(repr(x) for x in sorted(obj, key=repr))
        return f"{type(obj).__name__}({{{items}}})"
    return _clean(repr(obj))


def _anchor(module: str) -> str:
    return module.replace(".", "")


def generate() -> str:
    """The whole reference page as Markdown."""
    modules = public_modules()
    protocols = [
        obj
        for _name, module in modules
        for obj in (getattr(module, n) for n in module.__all__)
        if inspect.isclass(obj) and _is_protocol(obj)
    ]
    implements = _protocol_docs(list(dict.fromkeys(protocols)))

    out = [
        "# API reference",
        "",
        "<!-- Generated from the docstrings by docs/gen_api.py; do not edit by hand.",
        f"     Regenerate with: {REGENERATE} -->",
        "",
        "Generated from the docstrings of every public name (the `__all__` of each public",
        "module). For explanations and worked examples, start at the [docs index](../index.md).",
        "",
    ]
    out.extend(f"- [`{name}`](#{_anchor(name)})" for name, _module in modules)
    out.append("")
    for name, module in modules:
        out.extend([f"## {name}", ""])
        if module.__doc__:
            out.append(_docstring_markdown(inspect.cleandoc(module.__doc__)))
        for public in sorted(module.__all__, key=lambda n: (n.startswith("_"), n.lower())):
            out.extend(_render_object(f"{name}.{public}", getattr(module, public), implements))
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if api.md is out of date")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUTPUT.relative_to(ROOT)} is out of date; run: {REGENERATE}\n")
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {OUTPUT.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

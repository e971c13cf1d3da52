"""griffe extensions for the API reference (loaded by mkdocs.yml).

``AttrsInit``: griffe reads the source without importing it, so a class
decorated with ``@attrs.frozen`` / ``@attrs.define`` has no ``__init__`` to
show: its signature would read ``Event()`` and the names under "Args:" would
not match any parameter. For those classes only, this extension imports the
class and copies the signature attrs generated (field order, keyword-only
fields, defaults, the annotation a converter accepts, private names without
their underscore) into an ``__init__`` that ``merge_init_into_class`` then
shows. Importing the classes of ``resilient_sync.web`` and
``resilient_sync.admin`` needs their extras, which the ``docs`` extra pulls
in; a class that cannot be imported is reported, and ``mkdocs build
--strict`` fails on that warning.

``SphinxMarkup``: the docstrings use two bits of reStructuredText that
Markdown would print as they are. A role (``:class:`~resilient_sync.Event```,
``:meth:`close```) becomes a link to the object's entry when the reference
documents it, else inline code; a hyperlink (```text <url>`_``) a Markdown
link; a paragraph ending in ``::`` loses one colon
and the indented block after it becomes a fenced ``python`` (or ``text``)
block.
"""

from __future__ import annotations

import ast
import html
import inspect
import re
import textwrap
from typing import Any

import attrs
import griffe

_LOGGER = griffe.get_logger("griffe_extensions")
_DECORATORS = ("attrs.", "attr.")
_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _is_attrs_decorated(cls: griffe.Class) -> bool:
    return any(str(d.value).startswith(_DECORATORS) for d in cls.decorators)


def _default_text(runtime_cls: Any, name: str, default: Any) -> str | None:
    """How a default reads in the signature: ``dict()`` for ``factory=dict``."""
    if default is inspect.Parameter.empty:
        return None
    if default is attrs.NOTHING:
        for field in attrs.fields(runtime_cls):
            if (field.alias or field.name) == name and isinstance(field.default, attrs.Factory):
                factory = field.default.factory
                label = getattr(factory, "__name__", "")
                return f"{label}()" if label.isidentifier() else "<factory>"
        return "<factory>"
    if inspect.isroutine(default):
        return getattr(default, "__qualname__", repr(default))
    return repr(default)


class AttrsInit(griffe.Extension):
    """Add the attrs-generated ``__init__`` to classes decorated with attrs."""

    def on_class_members(
        self,
        *,
        node: Any,
        cls: griffe.Class,
        agent: Any,
        **kwargs: Any,
    ) -> None:
        if isinstance(node, griffe.ObjectNode) or "__init__" in cls.members:
            return
        if not _is_attrs_decorated(cls):
            return
        try:
            runtime_cls = griffe.dynamic_import(cls.path)
            signature = inspect.signature(runtime_cls)
        except (ImportError, ValueError, TypeError) as exc:
            _LOGGER.warning(
                "cannot import %s to read its attrs signature (%s); "
                "install the docs extra: pip install -e '.[docs]'",
                cls.path,
                exc,
            )
            return
        scope = griffe.Docstring("", parent=cls)  # annotations resolve in the class's module
        parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
        for name, param in signature.parameters.items():
            annotation: str | griffe.Expr | None = None
            if param.annotation is not inspect.Parameter.empty:
                text = param.annotation
                if not isinstance(text, str):
                    text = inspect.formatannotation(text)
                annotation = griffe.parse_docstring_annotation(text, scope)
            elif name in cls.members and isinstance(cls.members[name], griffe.Attribute):
                annotation = cls.members[name].annotation  # e.g. converter=float
            parameters.append(
                griffe.Parameter(
                    name,
                    annotation=annotation,
                    kind=_KINDS[param.kind],
                    default=_default_text(runtime_cls, name, param.default),
                )
            )
        init = griffe.Function(
            "__init__",
            parameters=griffe.Parameters(*parameters),
            returns="None",
            lineno=cls.lineno,
            endlineno=cls.lineno,
        )
        cls.set_member("__init__", init)


_LINK = re.compile(r"`(?P<text>[^`<]+?) <(?P<url>https?://[^>]+)>`__?")
_ROLE = re.compile(r":(?:class|meth|func|attr|exc|data|mod|obj|const):`(?P<target>[^`]+)`")


def _role_html(owner: griffe.Object, target: str) -> str:
    """A role as an optional autorefs link: a link when the target is documented."""
    target = target.lstrip("!")
    short = target.startswith("~")
    path = target.lstrip("~").removesuffix("()")
    label = path.rsplit(".", 1)[-1] if short else path
    code = f"<code>{html.escape(label)}</code>"
    first, _, rest = path.partition(".")
    try:
        resolved = path if first == owner.package.name else owner.resolve(first)
    except griffe.NameResolutionError:
        return code
    if resolved != path and rest:
        resolved = f"{resolved}.{rest}"
    return f'<autoref identifier="{html.escape(resolved)}" optional>{code}</autoref>'


def _literal_blocks(text: str) -> str:
    """``para::`` + indented block -> ``para:`` + a fenced block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        base = len(line) - len(line.lstrip())
        block_start = i + 2
        if (
            line.rstrip().endswith("::")
            and i + 2 < len(lines)
            and not lines[i + 1].strip()
            and len(lines[block_start]) - len(lines[block_start].lstrip()) > base
        ):
            end = block_start
            while end < len(lines) and (
                not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > base
            ):
                end += 1
            while end > block_start and not lines[end - 1].strip():
                end -= 1
            code = textwrap.dedent("\n".join(lines[block_start:end]))
            try:
                ast.parse(code)
                language = "python"
            except SyntaxError:
                language = "text"
            pad = " " * base
            stripped = line.rstrip()[:-1]
            if stripped.strip() != ":":
                out.append(stripped)
            out.extend(["", f"{pad}```{language}"])
            out.extend(f"{pad}{code_line}".rstrip() for code_line in code.split("\n"))
            out.append(f"{pad}```")
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class SphinxMarkup(griffe.Extension):
    """Turn reST roles, hyperlinks and ``::`` literal blocks in docstrings into Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        pending: list[griffe.Object] = [pkg]
        while pending:
            obj = pending.pop()
            if obj.docstring is not None:
                value = _literal_blocks(obj.docstring.value)
                value = _LINK.sub(r"[\g<text>](\g<url>)", value)
                value = _ROLE.sub(lambda m, o=obj: _role_html(o, m["target"]), value)
                obj.docstring.value = value
            pending.extend(m for m in obj.members.values() if not m.is_alias)

"""Building a request from an event: path templates, canonical JSON bodies and
the idempotency key. Pure, no I/O.

A retried request must be byte-identical to the first one (same key, same
body), or an API that remembers keys would see a different request under the
same key. So bodies are serialised canonically (JSON: sorted keys, no
spaces; forms: sorted keys, Stripe's bracket nesting), and nothing in a
request may depend on the attempt number.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import attrs

from .._errors import DataFormatError, SyncError
from .._json import canonical_dumps
from .._model import Event

__all__ = ["HttpRequest", "PathTemplate", "encode_body", "encode_form", "join_url"]

#: Methods whose default request carries no body.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

#: Names a path template may use.
TEMPLATE_NAMES = ("id", "type", "ordering_key", "payload", "key")


def _method(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]+", value):
        raise ValueError(f"an HTTP method is a word like 'POST', got {value!r}")
    return value.upper()


def _headers(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value or {})


def _params(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


@attrs.frozen(kw_only=True)
class HttpRequest:
    """What a ``build_request(event)`` hook returns: the parts of one request.

    Every part left as ``None`` takes the destination's default: its
    ``method``, its rendered ``path``, and no body. Give one body: ``json``
    (serialised canonically, so a retry sends the same bytes), ``form``
    (``application/x-www-form-urlencoded`` with Stripe's bracket nesting, see
    :func:`encode_form`) or ``content`` (bytes sent as they are). The
    idempotency key is added by the destination.

    Args:
        method: e.g. ``"PUT"``; the destination's method when None.
        path: relative to the destination's ``base_url`` (or an absolute
            URL); the destination's path (template) when None.
        json: the JSON body.
        form: the form body: a mapping, nested mappings and lists allowed.
        content: a raw body (set ``Content-Type`` in ``headers``).
        params: query-string parameters.
        headers: extra headers for this request.
    """

    method: str | None = attrs.field(default=None, converter=_method)
    path: str | None = None
    json: Any = None
    form: Mapping[str, Any] | None = None
    content: bytes | None = None
    params: Mapping[str, Any] | None = attrs.field(default=None, converter=_params)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_headers)

    def __attrs_post_init__(self) -> None:
        given = [n for n in ("json", "form", "content") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"HttpRequest takes one body: json, form or content, not {given}")
        if self.content is not None and not isinstance(self.content, bytes):
            raise TypeError(f"HttpRequest.content must be bytes, got {type(self.content).__name__}")
        if self.form is not None and not isinstance(self.form, Mapping):
            raise TypeError(f"HttpRequest.form must be a mapping, got {type(self.form).__name__}")


def _form_pairs(value: Any, key: str, out: list[tuple[str, str]]) -> None:
    if value is None:
        return  # omitted, as Stripe's libraries do
    if isinstance(value, Mapping):
        for name in sorted(value, key=str):
            _form_pairs(value[name], f"{key}[{name}]" if key else str(name), out)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _form_pairs(item, f"{key}[{index}]", out)
    elif isinstance(value, bool):
        out.append((key, "true" if value else "false"))
    elif isinstance(value, (str, int, float)):
        out.append((key, value if isinstance(value, str) else repr(value)))
    else:
        raise TypeError(f"{key!r} is a {type(value).__name__}, which a form cannot carry")


def encode_form(data: Mapping[str, Any]) -> bytes:
    """A form body as Stripe encodes one: ``a[b]=1``, ``l[0][x]=2``, booleans
    as ``true``/``false``, None omitted, keys sorted (so the same data always
    gives the same bytes).

    >>> encode_form({"email": "ada@example.com", "metadata": {"vip": True},
    ...              "tax_id_data": [{"type": "eu_vat", "value": "DE123"}], "phone": None})
    b'email=ada%40example.com&metadata%5Bvip%5D=true&tax_id_data%5B0%5D%5Btype%5D=eu_vat&tax_id_data%5B0%5D%5Bvalue%5D=DE123'
    """
    pairs: list[tuple[str, str]] = []
    _form_pairs(data, "", pairs)
    return urlencode(pairs).encode("ascii")


def _field_of(name: str) -> str:
    """``payload[lines][0][sku]`` -> ``lines[0].sku``; ``id`` -> ``id``."""
    head, _, rest = name.partition("[")
    parts = re.findall(r"\[([^\]]*)\]", "[" + rest) if rest else []
    if head != "payload" or not parts:
        parts = [head, *parts]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


class _QuotingFormatter(string.Formatter):
    """Fills a path template; each value is percent-encoded, a missing or
    empty one is a :class:`DataFormatError` naming the field."""

    def __init__(self, template: str) -> None:
        self.template = template

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        try:
            value, first = super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise DataFormatError(
                f"the path {self.template!r} needs {_field_of(field_name)!r}, "
                "which the event does not have",
                field=_field_of(field_name),
            ) from exc
        if value is None or value == "" or isinstance(value, (dict, list)):
            raise DataFormatError(
                f"the path {self.template!r} needs {_field_of(field_name)!r} to be a "
                f"plain value, got {value!r}",
                field=_field_of(field_name),
            )
        return value, first

    def format_field(self, value: Any, format_spec: str) -> str:
        return quote(str(super().format_field(value, format_spec)), safe="")


class PathTemplate:
    """A request path that may name parts of the event, percent-encoded.

    Names: ``{id}`` (the event id), ``{type}``, ``{ordering_key}``,
    ``{key}`` (the idempotency key) and ``{payload[...]}``:

    >>> PathTemplate("/customers/{payload[customer][id]}/notes").render(
    ...     Event("e1", "note.added", {"customer": {"id": "c/42"}}), key="k")
    '/customers/c%2F42/notes'
    """

    def __init__(self, template: str) -> None:
        if not isinstance(template, str):
            raise TypeError(f"a path template must be a str, got {type(template).__name__}")
        self.template = template
        self._formatter = _QuotingFormatter(template)
        self.fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"the path template {template!r} is malformed: {exc}") from exc
        for _text, name, _spec, _conv in parsed:
            if name is None:
                continue
            root = re.split(r"[.\[]", name, maxsplit=1)[0]
            if root not in TEMPLATE_NAMES:
                raise ValueError(
                    f"the path template {template!r} uses {{{name}}}; "
                    f"it may use {', '.join('{' + n + '}' for n in TEMPLATE_NAMES)} "
                    "(e.g. {payload[customer_id]})"
                )
            self.fields.append(name)

    def render(self, event: Event, *, key: str) -> str:
        """The path for ``event`` (sent under idempotency key ``key``)."""
        if not self.fields:
            return self.template
        values = {
            "id": event.id,
            "type": event.type,
            "ordering_key": event.ordering_key,
            "payload": event.payload,
            "key": key,
        }
        return self._formatter.vformat(self.template, (), values)

    def __repr__(self) -> str:
        return f"PathTemplate({self.template!r})"


_ABSOLUTE = re.compile(r"(?i)^[a-z][a-z0-9+.\-]*://")


def join_url(base_url: str, path: str) -> str:
    """``base_url`` + ``path`` the way a browser joins a folder and a file name,
    except that a leading ``/`` in ``path`` does not drop the base path::

        join_url("https://pos.example.com/api/v2", "/customers")
        -> "https://pos.example.com/api/v2/customers"

    An absolute ``path`` (``https://...``) is returned as is.
    """
    if _ABSOLUTE.match(path) or not base_url:
        return path
    if not path:
        return base_url
    base, sep, query = base_url.partition("?")
    if path.startswith("?"):
        return base + path
    joined = base.rstrip("/") + "/" + path.lstrip("/")
    if sep:  # a query in base_url (an API key, say) stays last
        joined += ("&" if "?" in joined else "?") + query
    return joined


def _set_path(body: dict[str, Any], dotted: str, value: str) -> dict[str, Any]:
    """A copy of ``body`` with ``value`` at the dotted path (creating objects)."""
    head, _, rest = dotted.partition(".")
    out = dict(body)
    if not rest:
        out[head] = value
        return out
    inner = out.get(head)
    if inner is None:
        inner = {}
    if not isinstance(inner, dict):
        raise SyncError(
            f"idempotency_key_field {dotted!r}: {head!r} in the request body is "
            f"{type(inner).__name__}, not an object"
        )
    out[head] = _set_path(inner, rest, value)
    return out


def encode_body(
    request: HttpRequest, *, key: str, key_field: str | None
) -> tuple[bytes | None, str | None]:
    """The body bytes and their Content-Type (``None`` when there is no body).

    JSON is serialised canonically (sorted keys, no whitespace) and forms
    with :func:`encode_form`, so the same request always gives the same
    bytes. With ``key_field`` the idempotency key is put into the JSON object
    (or the form) at that dotted path (Square's style).
    """
    value: Any = request.json
    form = request.form
    if key_field is not None:
        if request.content is not None:
            raise SyncError(
                f"idempotency_key_field {key_field!r} needs a JSON or form body; "
                "build_request returned raw content"
            )
        if form is not None:
            form = _set_path(dict(form), key_field, key)
        else:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise SyncError(
                    f"idempotency_key_field {key_field!r} needs a JSON object body, "
                    f"got {type(value).__name__}"
                )
            value = _set_path(value, key_field, key)
    if form is not None:
        try:
            return encode_form(form), "application/x-www-form-urlencoded"
        except (TypeError, ValueError) as exc:
            raise SyncError(f"the form body cannot be encoded: {exc}") from exc
    if value is not None:
        try:
            text = canonical_dumps(value)
        except (TypeError, ValueError) as exc:
            raise SyncError(f"the request body is not JSON-serialisable: {exc}") from exc
        return text.encode("utf-8"), "application/json"
    if request.content is not None:
        return request.content, None
    return None, None


#: A ``build_request`` hook: the request for an event.
BuildRequest = Callable[[Event], HttpRequest]

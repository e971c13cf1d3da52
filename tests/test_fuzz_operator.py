"""Fuzzing the Operator: random edits, notes and actors, on every store.

Properties:

- ``edit`` with any paths (existing, new, malformed, with a ``payload.``
  prefix or spaces) and any values (JSON or not) either raises ValueError
  and changes nothing (payload, key, status, attempts, audit trail), or
  makes one valid edit: the payload stays JSON, the idempotency key is
  revised, the status follows the documented rule, and one ``"edit"``
  audit record explains every change (each changed place is under an
  audited path, and the audited old and new values are the real ones);
- notes and actors with control characters and secrets come out of every
  operator action clean in the audit trail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz_strategies import (
    GATE_FORBIDDEN,
    Counter,
    backend_params,
    canonical,
    encodes,
    fuzz_settings,
    hostile_values,
    json_problem,
    json_values,
    leaked,
    open_backend,
    texts,
    with_secret,
)
from resilient_sync import (
    DataFormatError,
    DeliveryStatus,
    Dispatcher,
    Event,
    Operator,
    RetryableError,
    RetryPolicy,
)
from resilient_sync.testing import FakeClock


@attrs.define
class Backend:
    kind: str
    queue: Any
    idempotency: Any
    fresh: Counter


@pytest.fixture(scope="module", params=backend_params())
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    queue, idempotency, close = open_backend(
        request.param, tmp_path_factory.mktemp("fuzz_operator"), "operator"
    )
    try:
        yield Backend(request.param, queue, idempotency, Counter())
    finally:
        close()


class Rejects:
    """Rejects every event the way the history asks (or accepts nothing: pending)."""

    def __init__(self, name: str, history: str) -> None:
        self.name = name
        self.history = history

    def deliver(self, event: Event, context: Any) -> Any:
        if self.history == "transient":
            raise RetryableError("read timeout after sending")
        raise DataFormatError("rejected", field="phone")


def prepare(backend: Backend, payload: Any, history: str) -> tuple[Operator, str]:
    """One delivery of ``payload``: NEEDS_ACTION after a rejection, RETRY_SCHEDULED
    after a transient error (an edit is unsafe), or PENDING (never attempted)."""
    name = backend.fresh()
    clock = FakeClock()
    dispatcher = Dispatcher(
        backend.queue,
        backend.idempotency,
        [Rejects(name, history)],
        clock=clock,
        retry=RetryPolicy(max_attempts=3, jitter=False, deadline=None),
    )
    (delivery,) = dispatcher.submit(Event("ev", "t", payload))
    if history != "pending":
        dispatcher.run_once()
    return Operator(backend.queue, clock=clock), delivery.id


# -- paths ------------------------------------------------------------------------------------


def _walk(value: Any, parts: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*parts, key)
            yield from _walk(item, (*parts, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*parts, i)
            yield from _walk(item, (*parts, i))


def render(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def label(parts: tuple[Any, ...]) -> str:
    """The audit label of a place (``payload.customer.phone``, ``payload.lines[2]``)."""
    return "payload" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


@st.composite
def paths(draw: st.DrawFn, payload: Any, *, new: bool = False) -> str:
    """A path into ``payload``: an existing place, a new key under an existing
    object (``new``), or any text; spelled with or without ``payload.``, with
    spaces around, or with an index past the end."""
    existing = list(_walk(payload))
    choice = draw(st.integers(0, 9))
    if existing and choice < 7:
        parts = draw(st.sampled_from(existing))
        if new and draw(st.booleans()):
            parts = (*parts[:-1], draw(st.sampled_from(["added", "x", "ñew", "a b"])))
        elif choice == 5 and isinstance(parts[-1], int):
            parts = (*parts[:-1], parts[-1] + 1000)
        text = render(parts)
    elif new and choice < 8:
        text = draw(st.sampled_from(["added", "new_field", "n"]))
    else:
        text = draw(texts(max_size=12))
    spelling = draw(st.sampled_from(["", "", "", "", "payload.", " ", "payload. "]))
    return f"{spelling}{text}" if spelling.strip() != "payload." or text else text


# -- the edit property ----------------------------------------------------------------------------


def _diff(old: Any, new: Any, parts: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The places where ``old`` and ``new`` differ (types told apart: 1, 1.0, true)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if key not in old or key not in new:
                yield (*parts, key)
            else:
                yield from _diff(old[key], new[key], (*parts, key))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _diff(a, b, (*parts, i))
    elif canonical(old) != canonical(new):
        yield parts


def _covered(place: str, labels: list[str]) -> bool:
    return any(
        place == lab
        or place.startswith((lab + ".", lab + "["))
        or lab.startswith((place + ".", place + "["))
        for lab in labels
    )


def _at(payload: Any, parts: tuple[Any, ...]) -> Any:
    for part in parts:
        payload = payload[part]
    return payload


def _plain(value: Any) -> bool:
    """An audited value shown as it is (not redacted, not cut)."""
    text = canonical(value)
    return "[REDACTED]" not in text and '"truncated":true' not in text and len(text) < 1000


def same(audited: Any, real: Any) -> bool:
    """Equal JSON, types told apart, key order aside (PostgreSQL stores audit
    details with sorted keys, like results)."""
    return json.dumps(audited, sort_keys=True) == json.dumps(real, sort_keys=True)


def snapshot(queue: Any, delivery_id: str) -> tuple[Any, ...]:
    d = queue.get(delivery_id)
    return (
        canonical(d.event.payload),
        d.idempotency_key,
        d.status,
        d.attempts,
        d.updated_at,
        len(queue.attempts(delivery_id)),
    )


payloads = st.one_of(
    st.dictionaries(
        st.sampled_from(["a", "b", "phone", "password", "lines", "n", "é"]),
        json_values(8),
        max_size=5,
    ),
    json_values(8),
)
actors = st.one_of(st.sampled_from(["ada", "ops@example.com"]), texts(max_size=20), with_secret())
notes = st.one_of(st.none(), texts(max_size=40), with_secret())
edit_values = st.one_of(json_values(6), json_values(6), json_values(6), hostile_values(4))


@fuzz_settings(40)
@given(
    data=st.data(),
    payload=payloads,
    history=st.sampled_from(["rejected", "rejected", "rejected", "transient", "pending"]),
    force=st.booleans(),
    retry=st.booleans(),
    actor=actors,
    note=notes,
)
def test_an_edit_is_valid_and_audited_or_changes_nothing(
    backend: Backend,
    data: Any,
    payload: Any,
    history: str,
    force: bool,
    retry: bool,
    actor: str,
    note: str | None,
) -> None:
    queue = backend.queue
    op, delivery_id = prepare(backend, payload, history)
    original = queue.get(delivery_id)
    before = snapshot(queue, delivery_id)
    changes = data.draw(st.dictionaries(paths(payload), edit_values, max_size=3), label="changes")
    add = data.draw(st.dictionaries(paths(payload, new=True), edit_values, max_size=2), label="add")
    remove = data.draw(st.lists(paths(payload), max_size=2), label="remove")
    if not (changes or add or remove):
        changes = data.draw(
            st.dictionaries(paths(payload), edit_values, min_size=1, max_size=2), label="changes"
        )
    try:
        edited = op.edit(
            delivery_id,
            changes,
            add=add,
            remove=remove,
            actor=actor,
            note=note,
            retry=retry,
            force=force,
        )
    except ValueError as exc:
        message = str(exc)
        event(
            "refused: "
            + (
                "unsafe"
                if "force" in message
                else "nothing"
                if "changes nothing" in message
                else "not JSON"
                if "JSON" in message or "surrogate" in message or "integer" in message
                else "path"
            )
        )
        assert snapshot(queue, delivery_id) == before  # nothing changed
        return
    event("edited")
    after = queue.get(delivery_id)
    assert after == edited
    new_payload = after.event.payload
    assert json_problem(new_payload) is None
    assert after.idempotency_key != original.idempotency_key
    assert after.idempotency_key.startswith(original.idempotency_key + ":")
    if retry:
        assert (after.status, after.attempts) == (DeliveryStatus.PENDING, 0)
    elif original.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED):
        assert after.status is DeliveryStatus.PENDING
    else:
        assert after.status is original.status
    records = queue.attempts(delivery_id)
    assert len(records) == before[-1] + 1
    record = records[-1]
    assert record.action == "edit"
    details = dict(record.details)
    labels = list(details["changed"])
    # every changed place is under an audited path
    for place in _diff(original.event.payload, new_payload):
        assert _covered(label(place), labels), (label(place), labels)
    # the audited old and new values are the real ones
    places = {label(p): p for p in _walk(original.event.payload)}
    new_places = {label(p): p for p in _walk(new_payload)}
    for lab, value in details.get("before", {}).items():
        if lab in places and lab not in (details.get("added") or []) and _plain(value):
            assert same(value, _at(original.event.payload, places[lab])), lab
    for lab, value in details.get("after", {}).items():
        if lab in new_places and lab not in (details.get("removed") or []) and _plain(value):
            assert same(value, _at(new_payload, new_places[lab])), lab
    check_audit_texts(record, actor, note)


def check_audit_texts(record: Any, actor: str, note: str | None) -> None:
    for what, text, limit in (("actor", record.actor, 255), ("reason", record.reason, 2_000)):
        assert encodes(text), what
        assert GATE_FORBIDDEN.search(text) is None, (what, text)
        assert len(text) <= limit, what
        assert leaked(text) is None, (what, text)


# -- notes and actors of every action ----------------------------------------------------------


@fuzz_settings(30)
@given(
    action=st.sampled_from(["retry", "resolve", "discard", "pause", "resume"]),
    actor=actors,
    note=notes,
)
def test_notes_and_actors_come_out_clean_in_the_audit_trail(
    backend: Backend, action: str, actor: str, note: str | None
) -> None:
    op, delivery_id = prepare(backend, {"phone": "0151"}, "rejected")
    destination = op.get(delivery_id).destination
    try:
        if action in ("pause", "resume"):
            getattr(op, action)(destination, actor=actor, note=note)
        else:
            assert getattr(op, action)([delivery_id], actor=actor, note=note) == [delivery_id]
    except ValueError:
        assert not actor.strip()  # the only reason to refuse: nobody named
        return
    if action in ("pause", "resume"):
        record = next(r for r in backend.queue.audit(limit=5) if r.action == action)
    else:
        record = backend.queue.attempts(delivery_id)[-1]
    assert record.action == action
    check_audit_texts(record, actor, note)
    if action == "pause":
        state = op.destinations()[destination]
        assert GATE_FORBIDDEN.search(state.paused_reason or "") is None


# -- found by fuzzing and fixed: regression tests ------------------------------------------------


def _edited(
    payload: Any, changes: dict[str, Any], remove: list[str] = ()
) -> tuple[Any, dict[str, Any]]:
    from resilient_sync import Producer
    from resilient_sync.stores import MemoryQueueStore

    queue, clock = MemoryQueueStore(), FakeClock()
    (delivery,) = Producer(queue, ["pos"], clock=clock).submit(Event("e", "t", payload))
    op = Operator(queue, clock=clock)
    op.edit(delivery.id, changes, remove=list(remove), actor="ada")
    return queue.get(delivery.id).event.payload, dict(op.attempts(delivery.id)[-1].details)


@pytest.mark.parametrize("new", [True, 1.0], ids=["true", "float"])
def test_an_edit_audits_a_change_between_equal_values(new: Any) -> None:
    payload, details = _edited({"a": 1, "b": "x"}, {"a": new, "b": "y"})
    assert canonical(payload["a"]) == canonical(new)  # written
    assert "payload.a" in details["changed"]  # seen: only payload.b


@pytest.mark.parametrize(
    ("changes", "remove", "label_", "original"),
    [
        ({"a": 1, "payload.a": 2}, [], "payload.a", 5),
        ({"a": 3}, ["a"], "payload.a", 5),
        ({}, ["lines[0]", "lines[0]"], "payload.lines[0]", 10),
    ],
    ids=["two-spellings", "change-then-remove", "remove-twice"],
)
def test_an_edit_audits_every_old_value(
    changes: dict[str, Any], remove: list[str], label_: str, original: Any
) -> None:
    _, details = _edited({"a": 5, "lines": [10, 20, 30]}, changes, remove)
    assert details["before"][label_] == original


@pytest.mark.parametrize("where", ["note", "actor"])
def test_a_secret_after_a_control_character_in_a_note_is_redacted(where: str) -> None:
    from fuzz_strategies import STRIPE_KEY
    from resilient_sync import Producer
    from resilient_sync.stores import MemoryQueueStore

    queue, clock = MemoryQueueStore(), FakeClock()
    (delivery,) = Producer(queue, ["pos"], clock=clock).submit(Event("e", "t", {}))
    words = {"note": f"refunded with\x1b{STRIPE_KEY}", "actor": "ada"}
    if where == "actor":
        words = {"note": "done", "actor": f"ada\x07{STRIPE_KEY}"}
    Operator(queue, clock=clock).resolve(delivery.id, **words)
    record = queue.attempts(delivery.id)[-1]
    assert leaked(f"{record.reason} {record.actor}") is None, (record.reason, record.actor)

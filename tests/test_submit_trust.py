"""submit() checks an event once, and a store skips its own checks only for
the very delivery objects submit() built from checked values. Nothing a
caller passes in may ride along unchecked: not a name object that only
*says* it is a known destination, not a delivery that a wrapper store put in
place of one of submit()'s."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from resilient_sync import Delivery, Event, InvalidEventError, Producer, QueueStore
from resilient_sync.stores import MemoryQueueStore, open_stores

HOSTILE_NAME = "\x1b[2J\u202e" + "A" * 300
HOSTILE_TENANT = "acme\x1b[31m\x00" + "x" * 300


@pytest.fixture(params=["memory", "sqlite"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueStore]:
    if request.param == "memory":
        yield MemoryQueueStore()
        return
    store, idempotency = open_stores(f"sqlite:///{tmp_path / 'queue.db'}")
    yield store
    store.close()
    idempotency.close()


class YesToEveryName(str):
    """A name that claims to equal every destination (a buggy or hostile
    ``__eq__``), hashed as a known name so a lookup finds it."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("pos")


class Pos(str):
    """A str subclass (e.g. from an ORM or an enum) equal to "pos"."""

    __slots__ = ()


def _stored(queue: QueueStore) -> list[Delivery]:
    return list(queue.list(limit=10).items)


def test_a_name_that_only_claims_to_be_known_is_refused_or_made_ours(queue: QueueStore) -> None:
    producer = Producer(queue, ["pos"])
    submitted = producer.submit(Event("e1", "t", {"a": 1}), to=YesToEveryName(HOSTILE_NAME))
    # the lookup matched "pos": what is stored is our own checked name, never the caller's text
    ((delivery,),) = [submitted]
    for d in (delivery, *_stored(queue)):
        assert type(d.destination) is str
        assert d.destination == "pos"
        assert str.__eq__(d.destination, "pos")


def test_a_str_subclass_naming_a_destination_is_stored_as_plain_text(queue: QueueStore) -> None:
    (delivery,) = Producer(queue, ["pos"]).submit(Event("e1", "t", {}), to=[Pos("pos")])
    (stored,) = _stored(queue)
    assert type(delivery.destination) is str
    assert type(stored.destination) is str


SECRET = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"


@pytest.mark.parametrize(
    "bad",
    [
        HOSTILE_NAME,
        "pos\x00evil",
        "lone \ud800 surrogate",
        f"Bearer {SECRET}",
        "x" * 5_000_000,
        ["pos", 7],
    ],
    ids=["ansi", "nul", "surrogate", "token", "5mb", "not-text"],
)
def test_an_unknown_name_is_refused_with_nothing_enqueued(queue: QueueStore, bad: Any) -> None:
    producer = Producer(queue, ["pos"])
    with pytest.raises(ValueError, match="unknown destination") as refused:
        producer.submit(Event("e1", "t", {}), to=bad)
    # the message quotes the caller's text through the gate
    message = str(refused.value)
    assert len(message) < 1_000
    assert not any(ch in message for ch in "\x00\x1b\u202e")
    assert not any("\ud800" <= ch <= "\udfff" for ch in message)
    assert SECRET not in message
    assert _stored(queue) == []


def test_a_to_that_is_not_a_name_is_a_type_error(queue: QueueStore) -> None:
    producer = Producer(queue, ["pos"])
    with pytest.raises(TypeError, match="to= takes a destination name or a list of names"):
        producer.submit(Event("e1", "t", {}), to=7)  # type: ignore[arg-type]
    assert _stored(queue) == []


@attrs.define
class TenantStore:
    """A wrapper store that prefixes event ids with a tenant taken from a
    request header, rewriting the list it was given in place (or a new one)."""

    inner: Any
    tenant: str
    in_place: bool

    def enqueue(self, deliveries: Sequence[Delivery], **kwargs: Any) -> list[Delivery]:
        def tenanted(d: Delivery) -> Delivery:
            return attrs.evolve(d, event=attrs.evolve(d.event, id=f"{self.tenant}/{d.event.id}"))

        if self.in_place:
            assert isinstance(deliveries, list)
            for i, d in enumerate(deliveries):
                deliveries[i] = tenanted(d)
            return list(self.inner.enqueue(deliveries, **kwargs))
        return list(self.inner.enqueue([tenanted(d) for d in deliveries], **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "new-list"])
def test_a_wrapper_stores_rewritten_deliveries_are_checked(
    queue: QueueStore, in_place: bool
) -> None:
    producer = Producer(TenantStore(queue, HOSTILE_TENANT, in_place), ["pos"])  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match=r"event\.id"):
        producer.submit(Event("order-1", "t", {"a": 1}))
    assert _stored(queue) == []
    # a well-behaved tenant goes through the same wrapper
    Producer(TenantStore(queue, "acme", in_place), ["pos"]).submit(Event("order-1", "t", {}))  # type: ignore[arg-type]
    assert [d.event.id for d in _stored(queue)] == ["acme/order-1"]


@pytest.mark.parametrize("code", [*range(0x100), 0x2028, 0x202E, 0x2066, 0xD800, 0xFEFF])
def test_the_one_pass_look_at_ids_agrees_with_the_detailed_check(code: int) -> None:
    """``ids_look_fine`` (the one-pass look submit() and the stores give every
    id, key and name) and ``identifier_problem`` (the detailed check that
    says what is wrong) accept exactly the same texts: every character up to
    U+00FF (the one-pass look tells ASCII text by ``isprintable``) and the
    refused invisible ones above, alone and among other ids."""
    from resilient_sync._json import identifier_problem, ids_look_fine

    text = f"id-{chr(code)}-x"
    for values in ((text,), ("order-1", text, "pos"), ("café", text)):
        expected = all(identifier_problem(value) is None for value in values)
        assert ids_look_fine(*values) is expected, (hex(code), values)

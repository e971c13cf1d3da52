"""The demo's web shop: customers and orders with the flaws real data has."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from resilient_sync import Event

__all__ = ["CATALOGUE", "Shop", "make_shop", "normalise_phone"]

CATALOGUE = (
    "TEE-S-BLACK",
    "TEE-M-BLACK",
    "TEE-L-BLACK",
    "TEE-M-WHITE",
    "HOODIE-M-GREY",
    "HOODIE-L-GREY",
    "CAP-NAVY",
    "MUG-LOGO",
    "SOCKS-3PACK",
    "TOTE-CANVAS",
)
_UNKNOWN_SKUS = ("TEE-XXL-PURPLE", "HOODIE-XS-LIME", "MUG-GOLD")
_PRICES = {sku: 5 + 3 * i for i, sku in enumerate(CATALOGUE)}
_FIRST = (
    "Ada", "Bram", "Chloe", "Daan", "Emma", "Finn", "Git", "Hugo", "Iris", "Jens", "Kim",
    "Lotte", "Milan", "Noor", "Otto", "Puck", "Quinn", "Roos", "Sem", "Tess", "Umut", "Vera",
    "Wout", "Xena", "Yara", "Zeno",
)  # fmt: skip
_LAST = (
    "de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "Bos", "Vos",
    "Peters", "Hendriks", "Dekker", "Brouwer", "de Wit", "Dijkstra", "Kok",
)  # fmt: skip
_CITIES = ("Amsterdam", "Utrecht", "Rotterdam", "Haarlem", "Leiden", "Delft", "Groningen")


def _phone(rng: random.Random) -> str:
    return "+316" + "".join(str(rng.randrange(10)) for _ in range(8))


def _local_format(phone: str, rng: random.Random) -> str:
    """How shoppers type a valid number: ``06-1234 5678``, ``0031 6 ...``."""
    digits = phone[4:]  # after "+316"
    style = rng.randrange(3)
    if style == 0:
        return f"06-{digits[:4]} {digits[4:]}"
    if style == 1:
        return f"0031 6 {digits}"
    return f"(06) {digits[:2]} {digits[2:5]} {digits[5:]}"


_UNFIXABLE = ("call after 5pm", "06-1234", "n/a", "+31 6 123 456 789 0")


def normalise_phone(value: Any) -> str | None:
    """What the shop's ``fix_data`` hook can repair: Dutch mobile numbers typed
    locally become ``+316xxxxxxxx``; anything else returns None."""
    if not isinstance(value, str):
        return None
    digits = "".join(ch for ch in value if ch.isdigit())
    if value.strip().startswith("+"):
        digits = "00" + digits
    if digits.startswith("0031"):
        digits = "0" + digits[4:]
    if len(digits) == 10 and digits.startswith("06"):
        return "+31" + digits[1:]
    return None


@attrs.frozen(kw_only=True)
class Shop:
    """What the shop submits and what the POS already holds."""

    events: list[Event]
    existing_customers: list[dict[str, Any]]
    existing_orders: list[str]
    #: the correct phone of each customer whose typed number cannot be repaired
    true_phones: dict[str, str]
    counts: dict[str, int]


def make_shop(customers: int, orders: int, seed: int = 7) -> Shop:
    """A shop with ``customers`` new customers and ``orders`` orders, in the
    order they happen (a customer before their orders).

    Flaws, at least one of each: customers already in the POS (most with one
    record, some with two: ambiguous), phone numbers typed locally (repairable)
    or not at all (a person must fix them), orders of unknown SKUs, orders
    already entered in the POS by hand.
    """
    if customers < 8 or orders < 6:
        raise ValueError("the demo needs at least 8 customers and 6 orders")
    rng = random.Random(seed)  # noqa: S311 - demo data, not cryptography
    start = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
    ids = [f"cust-{n:04d}" for n in range(1, customers + 1)]
    picks = rng.sample(ids, k=len(ids))
    n_dup = max(2, customers // 16)
    n_ambiguous = max(1, customers // 100)
    n_fixable = max(2, customers // 15)
    n_unfixable = max(1, customers // 80)
    cursor = 0

    def take(n: int) -> list[str]:
        nonlocal cursor
        chosen = picks[cursor : cursor + n]
        cursor += n
        return chosen

    duplicates, ambiguous = set(take(n_dup)), set(take(n_ambiguous))
    fixable, unfixable = set(take(n_fixable)), set(take(n_unfixable))

    events: list[Event] = []
    existing: list[dict[str, Any]] = []
    true_phones: dict[str, str] = {}
    emails: dict[str, str] = {}
    for index, cid in enumerate(ids):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first}.{last.replace(' ', '')}.{index + 1}@example.com".lower()
        emails[cid] = email
        phone = _phone(rng)
        typed = phone
        if cid in fixable:
            typed = _local_format(phone, rng)
        elif cid in unfixable:
            typed = _UNFIXABLE[len(true_phones) % len(_UNFIXABLE)]
            true_phones[cid] = phone
        if cid in duplicates or cid in ambiguous:
            copies = 2 if cid in ambiguous else 1
            record = {"email": email, "first_name": first, "last_name": last, "source": "in-store"}
            existing.extend(dict(record) for _ in range(copies))
        events.append(
            Event(
                id=cid,
                type="customer.created",
                payload={
                    "shop_id": cid,
                    "email": email,
                    "first_name": first,
                    "last_name": last,
                    "phone": typed,
                    "city": rng.choice(_CITIES),
                },
                ordering_key=cid,
                occurred_at=start + timedelta(minutes=3 * index),
            )
        )
    # orders: every stuck customer gets one (it waits behind them), the rest at random
    stuck = sorted(ambiguous | unfixable)
    buyers = stuck + [rng.choice(ids) for _ in range(orders - len(stuck))]
    numbers = [str(1001 + n) for n in range(orders)]
    unknown = set(rng.sample(range(len(stuck), orders), k=max(1, orders // 60)))
    manual = set(rng.sample(sorted(set(range(len(stuck), orders)) - unknown), k=2))
    existing_orders = [numbers[i] for i in sorted(manual)]
    order_events = []
    for i, (cid, number) in enumerate(zip(buyers, numbers, strict=True)):
        skus = rng.sample(CATALOGUE, k=rng.randint(1, 3))
        if i in unknown:
            skus[-1] = rng.choice(_UNKNOWN_SKUS)
        quantities = [rng.randint(1, 3) for _ in skus]
        lines = [{"sku": sku, "qty": qty} for sku, qty in zip(skus, quantities, strict=True)]
        total = sum(_PRICES.get(sku, 20) * qty for sku, qty in zip(skus, quantities, strict=True))
        position = ids.index(cid)
        order_events.append(
            (
                position + 0.5 + rng.random() * 5,
                Event(
                    id=f"order-{number}",
                    type="order.created",
                    payload={
                        "number": number,
                        "customer_email": emails[cid],
                        "lines": lines,
                        "total": f"{total}.00",
                        "currency": "EUR",
                    },
                    ordering_key=cid,
                    occurred_at=start + timedelta(minutes=3 * position + 1),
                ),
            )
        )
    timeline = [(float(i), e) for i, e in enumerate(events)] + order_events
    timeline.sort(key=lambda pair: pair[0])
    return Shop(
        events=[e for _, e in timeline],
        existing_customers=existing,
        existing_orders=existing_orders,
        true_phones=true_phones,
        counts={
            "customers": customers,
            "orders": orders,
            "already_in_pos": n_dup,
            "ambiguous": n_ambiguous,
            "phones_repairable": n_fixable,
            "phones_broken": n_unfixable,
            "unknown_sku_orders": len(unknown),
            "orders_entered_by_hand": len(manual),
        },
    )

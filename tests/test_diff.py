"""The pure decisions: what a page changes, and the mass-removal guard."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from etl.records import Price, StockItem
from etl.store.diff import (
    StoredNumber,
    attribute_values,
    dedupe,
    diff_page,
    price_values,
    removal_guard,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def item(number: str = "+12125550100", **kw: object) -> StockItem:
    fields: dict[str, object] = {
        "number": number,
        "stock_item_id": "id-" + number,
        "country_code": "US",
        "number_type": "local",
        "capabilities": (("sms_inbound", True), ("voice_inbound", True)),
        "price": Price("EUR", 3500000, -6),
        "back_order_required": False,
        "back_order_stock_id": None,
    }
    fields.update(kw)
    return StockItem(**fields)  # type: ignore[arg-type]


def stored(it: StockItem, id_: int = 1, removed_at: datetime | None = None) -> StoredNumber:
    row = {
        "id": id_,
        "number": it.number,
        **attribute_values(it),
        **price_values(it.price),
        "last_seen_at": T0,
        "removed_at": removed_at,
    }
    return StoredNumber.from_row(row)


def test_new_number_is_listed() -> None:
    changes = diff_page({}, [item()])
    assert [i.number for i in changes.new] == ["+12125550100"]
    assert [(e.number, e.event) for e in changes.events] == [("+12125550100", "listed")]
    assert changes.seen_ids == []
    assert changes.updated == []
    assert changes.price_changes == []


def test_unchanged_number_is_only_seen() -> None:
    it = item()
    changes = diff_page({it.number: stored(it, 5)}, [it])
    assert changes.seen_ids == [5]
    assert changes.events == []
    assert changes.updated == []
    assert changes.price_changes == []


def test_equal_price_written_differently_is_no_change() -> None:
    it = item()
    same = item(price=Price("EUR", 35, -1))
    changes = diff_page({it.number: stored(it)}, [same])
    assert changes.price_changes == []
    assert changes.updated == []


def test_price_change_and_currency_change() -> None:
    it = item()
    for new in (Price("EUR", 3600000, -6), Price("USD", 3500000, -6)):
        changes = diff_page({it.number: stored(it)}, [item(price=new)])
        assert [(s.price, i.price) for s, i in changes.price_changes] == [(it.price, new)]
        assert changes.events == []  # a price change is a price_changes row, not an event
        assert len(changes.updated) == 1


def test_new_stock_item_id_is_a_changed_event_naming_the_field() -> None:
    it = item()
    changes = diff_page({it.number: stored(it)}, [item(stock_item_id="other")])
    assert [(e.event, e.detail) for e in changes.events] == [
        ("changed", f"stock_item_id: {it.stock_item_id} -> other")
    ]


def test_capability_and_extra_channel_changes_are_named() -> None:
    it = item()
    new = item(
        capabilities=(("rcs_inbound", True), ("sms_inbound", False), ("voice_inbound", True))
    )
    (event,) = diff_page({it.number: stored(it)}, [new]).events
    assert event.detail == "sms_inbound: true -> false; other_capabilities: null -> rcs_inbound"


def test_removed_number_seen_again_is_relisted() -> None:
    it = item()
    changes = diff_page({it.number: stored(it, 3, removed_at=T0)}, [it])
    assert [e.event for e in changes.events] == ["relisted"]
    assert [s.id for s, _ in changes.updated] == [3]
    assert changes.seen_ids == [3]


def test_rejected_number_counts_as_seen_without_other_change() -> None:
    it = item()
    changes = diff_page({it.number: stored(it, 9)}, [], rejected_numbers=[it.number, "+1999"])
    assert changes.seen_ids == [9]
    assert changes.events == []
    assert changes.updated == []


def test_removed_number_seen_only_as_rejected_item_is_relisted() -> None:
    it = item()
    changes = diff_page({it.number: stored(it, 4, removed_at=T0)}, [], [it.number, it.number])
    assert changes.seen_ids == [4]
    assert [s.id for s in changes.relisted] == [4]
    assert [(e.number, e.event) for e in changes.events] == [(it.number, "relisted")]
    assert changes.updated == []  # its stored attributes and price stay as they were


def test_guard_holds_an_empty_listing_before_its_removals_are_due() -> None:
    """removal_confirmations 2: the first empty listing removes nothing yet, but is held."""
    held = removal_guard(
        country="NL",
        available=3,
        would_remove=0,
        missed=3,
        max_fraction=Decimal("0.5"),
        accepted=False,
    )
    assert not held.proceed
    assert removal_guard(
        country="NL",
        available=3,
        would_remove=0,
        missed=2,
        max_fraction=Decimal("0.5"),
        accepted=False,
    ).proceed
    # a max_removal_fraction of 1 turns the guard off, empty listings included
    assert removal_guard(
        country="NL",
        available=3,
        would_remove=3,
        missed=3,
        max_fraction=Decimal(1),
        accepted=False,
    ).proceed


def test_dedupe_keeps_the_last_item_of_a_number() -> None:
    first, second = item(stock_item_id="a"), item(stock_item_id="b")
    assert dedupe([first, item("+12125550101"), second])[0].stock_item_id == "b"


def test_guard_holds_an_empty_listing_and_lets_accepted_removals_through() -> None:
    half = Decimal("0.5")
    held = removal_guard(
        country="US", available=1000, would_remove=1000, max_fraction=half, accepted=False
    )
    assert not held.proceed
    assert held.reason is not None
    assert "none of the 1000 available numbers" in held.reason
    assert held.reason.endswith("run `numbers-etl sync --accept-removals US` once")
    assert "on each run until they are removed" in (
        removal_guard(
            country="US",
            available=1000,
            would_remove=1000,
            max_fraction=half,
            accepted=False,
            confirmations=2,
        ).reason
        or ""
    )
    assert removal_guard(
        country="US", available=1000, would_remove=1000, max_fraction=half, accepted=True
    ).proceed
    assert removal_guard(
        country="US", available=1000, would_remove=500, max_fraction=half, accepted=False
    ).proceed
    too_many = removal_guard(
        country="US", available=1000, would_remove=501, max_fraction=half, accepted=False
    )
    assert not too_many.proceed
    assert too_many.reason is not None
    assert "would remove 501 of 1000" in too_many.reason
    assert removal_guard(
        country="US", available=0, would_remove=0, max_fraction=half, accepted=False
    ).proceed

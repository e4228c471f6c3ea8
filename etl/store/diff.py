"""Pure decisions: what one page changes, and whether a scope's removals may go through.

No I/O here: ``writer.py`` reads the rows these functions need and writes what they return."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from etl.records import CAPABILITY_COLUMNS, Price, StockItem, other_capabilities

# Attributes whose change is a `changed` event (the price has its own table).
TRACKED_FIELDS = (
    "stock_item_id",
    "country_code",
    "number_type",
    *CAPABILITY_COLUMNS,
    "other_capabilities",
    "back_order_required",
    "back_order_stock_id",
)


def attribute_values(item: StockItem) -> dict[str, Any]:
    """The tracked column values of an item (capabilities flattened to columns)."""
    return dict(zip(TRACKED_FIELDS, attribute_tuple(item), strict=True))


def attribute_tuple(item: StockItem) -> tuple[Any, ...]:
    """The tracked column values of an item, in ``TRACKED_FIELDS`` order."""
    return (
        item.stock_item_id,
        item.country_code,
        item.number_type,
        *capability_values(item.capabilities),
        item.back_order_required,
        item.back_order_stock_id,
    )


def state_tuple(item: StockItem) -> tuple[Any, ...]:
    """What the database holds of an item: its tracked values, then currency, amount and
    exponent (``StoredNumber.COLUMNS`` without id, number and removed_at)."""
    price = item.price
    return (*attribute_tuple(item), price.currency, price.amount, price.exponent)


@functools.lru_cache(maxsize=1024)
def capability_values(capabilities: tuple[tuple[str, bool], ...]) -> tuple[Any, ...]:
    """The capability columns of ``capabilities``, then ``other_capabilities``. A listing
    has a handful of distinct capability sets, so this is almost always a cache hit."""
    caps = dict(capabilities)
    return (
        *(bool(caps.get(column, False)) for column in CAPABILITY_COLUMNS),
        other_capabilities(caps.items()),
    )


def price_values(price: Price) -> dict[str, Any]:
    return {
        "monthly_price": price.value,
        "currency": price.currency,
        "price_amount": price.amount,
        "price_exponent": price.exponent,
    }


@dataclass(frozen=True, slots=True)
class StoredNumber:
    """The current state of a number as the database holds it."""

    id: int
    number: str
    attributes: tuple[Any, ...]  # in TRACKED_FIELDS order
    price: Price
    removed_at: datetime | None

    # The columns ``from_tuple`` reads, in its order.
    COLUMNS = (
        "id",
        "number",
        *TRACKED_FIELDS,
        "currency",
        "price_amount",
        "price_exponent",
        "removed_at",
    )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredNumber:
        return cls.from_tuple(tuple(row[name] for name in cls.COLUMNS))

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> StoredNumber:
        """From the values of ``COLUMNS``, in that order (a database row)."""
        end = 2 + len(TRACKED_FIELDS)
        currency, amount, exponent, removed_at = row[end:]
        return cls(
            id=row[0],
            number=row[1],
            attributes=tuple(row[2:end]),
            price=Price(currency, int(amount), int(exponent)),
            removed_at=removed_at,
        )


@dataclass(frozen=True, slots=True)
class Event:
    number: str
    event: str  # listed | removed | relisted | changed
    detail: str | None = None
    # The earliest it may be dated: a relisting never before the removal it ends, whatever
    # the clock does (None: the page's time, always).
    not_before: datetime | None = None


def relisted(stored: StoredNumber) -> Event:
    assert stored.removed_at is not None
    return Event(
        stored.number, "relisted", f"removed at {stored.removed_at.isoformat()}", stored.removed_at
    )


@dataclass(slots=True)
class PageChanges:
    """Everything one page changes, computed before anything is written."""

    new: list[StockItem] = field(default_factory=list)
    # Existing numbers whose tracked attributes or price changed, or that are relisted:
    # (stored state, new item) -- written in one executemany UPDATE.
    updated: list[tuple[StoredNumber, StockItem]] = field(default_factory=list)
    # Every existing number seen on the page, valid or rejected: last_seen_at advances.
    seen_ids: list[int] = field(default_factory=list)
    # Removed numbers seen again only as rejected items: back in stock (removed_at cleared,
    # a `relisted` event), with nothing else of theirs changed.
    relisted: list[StoredNumber] = field(default_factory=list)
    price_changes: list[tuple[StoredNumber, StockItem]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e.event == event)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def changed_fields(old: Sequence[Any], new: Sequence[Any]) -> list[str]:
    """``field: old -> new`` for every tracked attribute that differs (both in
    ``TRACKED_FIELDS`` order)."""
    if tuple(old) == tuple(new):
        return []
    return [
        f"{name}: {_fmt(before)} -> {_fmt(after)}"
        for name, before, after in zip(TRACKED_FIELDS, old, new, strict=True)
        if before != after
    ]


def dedupe(items: Iterable[StockItem]) -> list[StockItem]:
    """One item per number; when a page lists a number twice the last one wins."""
    return list({item.number: item for item in items}.values())


def diff_page(
    existing: Mapping[str, StoredNumber],
    items: Sequence[StockItem],
    rejected_numbers: Iterable[str] = (),
) -> PageChanges:
    """What a page changes, given the stored rows of the numbers on it.

    ``items`` must be deduplicated. ``rejected_numbers`` are numbers of items that failed
    validation: they count as seen (a removed one is relisted), and nothing else about them
    changes."""
    changes = PageChanges()
    for item in items:
        stored = existing.get(item.number)
        if stored is None:
            changes.new.append(item)
            changes.events.append(Event(item.number, "listed", None))
            continue
        changes.seen_ids.append(stored.id)
        diffs = changed_fields(stored.attributes, attribute_tuple(item))
        price_changed = not item.price.same_as(stored.price)
        if stored.removed_at is not None:
            changes.events.append(relisted(stored))
        if diffs:
            changes.events.append(Event(item.number, "changed", "; ".join(diffs)))
        if price_changed:
            changes.price_changes.append((stored, item))
        if diffs or price_changed or stored.removed_at is not None:
            changes.updated.append((stored, item))
    valid = {item.number for item in items}
    for number in rejected_numbers:
        stored = existing.get(number)
        if stored is not None and number not in valid:
            changes.seen_ids.append(stored.id)
            if stored.removed_at is not None and stored not in changes.relisted:
                changes.relisted.append(stored)
                changes.events.append(relisted(stored))
    changes.seen_ids = sorted(set(changes.seen_ids))
    return changes


def diff_rows(
    rows: Mapping[str, Sequence[Any]],
    items: Sequence[StockItem],
    rejected_numbers: Sequence[str] = (),
    typed: Callable[[Sequence[Any]], Sequence[Any]] | None = None,
) -> PageChanges:
    """``diff_page`` on the database rows of the page's numbers (``StoredNumber.COLUMNS``
    order). Most numbers of a page are unchanged: one tuple comparison tells, and only the
    others become StoredNumbers and go through ``diff_page``.

    ``typed``: the rows are the driver's own (SQLite's booleans as 0 and 1, which compare
    equal to an item's; ``removed_at`` as text), and this gives one its column types."""
    unchanged: list[int] = []
    rest: list[StockItem] = []
    for item in items:
        row = rows.get(item.number)
        if row is not None and row[-1] is None and row[2:-1] == state_tuple(item):
            unchanged.append(row[0])
        else:
            rest.append(item)
    wanted = {*(item.number for item in rest), *rejected_numbers}
    existing = {
        n: StoredNumber.from_tuple(rows[n] if typed is None else typed(rows[n]))
        for n in wanted
        if n in rows
    }
    changes = diff_page(existing, rest, rejected_numbers)
    if unchanged:
        changes.seen_ids = sorted({*changes.seen_ids, *unchanged})
    return changes


@dataclass(frozen=True, slots=True)
class RemovalDecision:
    """What a complete scope's close does with the numbers it missed."""

    proceed: bool
    reason: str | None = None


def removal_guard(
    *,
    country: str,
    available: int,
    would_remove: int,
    max_fraction: Decimal,
    accepted: bool,
    missed: int | None = None,
    confirmations: int = 1,
) -> RemovalDecision:
    """The mass-removal guard: hold a scope that would remove more than ``max_fraction`` of
    its available numbers, unless an operator accepted the removals for this run.

    ``missed``: how many available numbers the complete listing missed (by default
    ``would_remove``). A listing that missed every one of them (an empty listing, the
    typical outage) is held even when ``removal_confirmations`` means this run would
    remove none of them yet; a ``max_fraction`` of 1 turns the guard off. The reason says
    how to accept: once, or with ``removal_confirmations`` above 1 on each run until the
    numbers are removed (acceptance is for one run, each missed number needs that many)."""
    missed = would_remove if missed is None else missed
    if accepted or available == 0 or max_fraction >= 1:
        return RemovalDecision(True)
    if missed >= available:
        return RemovalDecision(
            False,
            f"the listing had none of the {available} available numbers; nothing removed. "
            f"If they really are all gone, {_how_to_accept(country, confirmations)}",
        )
    if would_remove == 0 or Decimal(would_remove) <= max_fraction * available:
        return RemovalDecision(True)
    share = Decimal(would_remove) / Decimal(available)
    return RemovalDecision(
        False,
        f"would remove {would_remove} of {available} available numbers "
        f"({share:.0%} > max_removal_fraction {max_fraction:.0%}); nothing removed. "
        f"If the listing really shrank, {_how_to_accept(country, confirmations)}",
    )


def _how_to_accept(country: str, confirmations: int) -> str:
    command = f"`numbers-etl sync --accept-removals {country}`"
    if confirmations <= 1:
        return f"run {command} once"
    return (
        f"run {command} on each run until they are removed: with removal_confirmations = "
        f"{confirmations}, a number goes only once {confirmations} complete runs in a row "
        "missed it (this one counted)"
    )

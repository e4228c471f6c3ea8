"""Plain data passed between the source, the decisions and the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

# Capability channels Bird documents; others (``whatsapp`` ...) are kept too.
KNOWN_CHANNELS = ("voice", "sms", "mms")
DIRECTIONS = ("inbound", "outbound")
# The channels with columns of their own: the ones Bird documents, plus WhatsApp, which it
# has started to list. Any other channel lands in ``other_capabilities``: the names of its
# directions that are on, comma-separated, at most OTHER_CAPABILITIES_CHARS characters.
CAPABILITY_COLUMNS = tuple(
    f"{channel}_{direction}"
    for channel in (*KNOWN_CHANNELS, "whatsapp")
    for direction in DIRECTIONS
)
OTHER_CAPABILITIES_CHARS = 512


def other_capabilities(flags: Iterable[tuple[str, bool]]) -> str | None:
    """The ``other_capabilities`` value of capability flags (name, on): the names that are
    on and have no column of their own, sorted and comma-separated; None when there are none."""
    return ",".join(sorted(n for n, on in flags if on and n not in CAPABILITY_COLUMNS)) or None


# Bird's ids (a stock item's, a back order's): the longest a column holds.
ID_CHARS = 64
NUMBER_TYPES = ("local", "national", "mobile", "toll-free")


def price_value(amount: int, exponent: int) -> Decimal:
    """``amount`` x 10 ** ``exponent``, exactly."""
    return Decimal(amount).scaleb(exponent)


# Price and StockItem are made for every item of every page: as frozen dataclasses their
# construction was a quarter of the parser's time (frozen __init__ sets each field through
# object.__setattr__). They are treated as immutable all the same and stay hashable.
@dataclass(slots=True, unsafe_hash=True)
class Price:
    """An exact monthly price: ``amount`` x 10 ** ``exponent`` in ``currency``."""

    currency: str
    amount: int
    exponent: int

    @property
    def value(self) -> Decimal:
        return price_value(self.amount, self.exponent)

    def __str__(self) -> str:
        """``0.000000000001 EUR``, ``1.50 EUR``: plain digits, never ``1E-12``."""
        return f"{self.value:f} {self.currency}"

    def same_as(self, other: Price | None) -> bool:
        """Equal as exact decimals with the same currency (35,-1 == 3500000,-6)."""
        if other is None or self.currency != other.currency:
            return False
        if self.amount == other.amount and self.exponent == other.exponent:
            return True  # the usual case, without building two Decimals
        return self.value == other.value


@dataclass(slots=True, unsafe_hash=True)
class StockItem:
    """One valid item of Bird's stock listing."""

    number: str  # E.164, the identity
    stock_item_id: str
    country_code: str
    number_type: str
    capabilities: tuple[tuple[str, bool], ...]  # sorted (("mms_inbound", True), ...)
    price: Price
    back_order_required: bool
    back_order_stock_id: str | None = None

    def capability(self, name: str) -> bool:
        return dict(self.capabilities).get(name, False)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An item that failed validation. ``number`` is set when it could still be read."""

    reason: str
    payload: Any
    number: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One fetched page: its valid items, its rejections and when it was fetched."""

    scope_key: str
    index: int
    fetched_at: datetime
    items: tuple[StockItem, ...]
    rejections: tuple[Rejection, ...] = ()
    next_page_token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scope:
    """One configured country, optionally narrowed to an area-code prefix and number types.
    Each scope is paged to its end independently and its removals stay inside it."""

    country_code: str
    prefix: str | None = None
    types: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        parts = [self.country_code]
        if self.prefix:
            parts.append(self.prefix)
        if self.types:
            parts.append("/".join(self.types))
        return " ".join(parts)

    def query(self) -> dict[str, str | list[str]]:
        """The query parameters of this scope (without limit and pageToken)."""
        params: dict[str, str | list[str]] = {"countryCodes": [self.country_code]}
        if self.prefix:
            params["prefix"] = self.prefix
        if self.types:
            params["types"] = list(self.types)
        return params

    def contains(self, item: StockItem) -> bool:
        return (
            item.country_code == self.country_code
            and (not self.prefix or item.number.startswith(self.prefix))
            and (not self.types or item.number_type in self.types)
        )

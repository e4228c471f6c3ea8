"""Validation of one Bird stock item into a StockItem, or a Rejection that says why.

Every problem of an item is named in its rejection reason, with the field and the bad value
(shortened). ``parse_item`` never raises, whatever JSON it is given."""

from __future__ import annotations

import functools
import re
import sys
from decimal import Decimal
from typing import Any

import msgspec
import pycountry

from etl.records import (
    CAPABILITY_COLUMNS,
    DIRECTIONS,
    ID_CHARS,
    OTHER_CAPABILITIES_CHARS,
    Price,
    Rejection,
    StockItem,
    other_capabilities,
)

MAX_ID = ID_CHARS  # an item's id and its back order's
MAX_TYPE = 32
MAX_CHANNELS = 32
MAX_CHANNEL_NAME = 32
# Up to this many channels, their names cannot outgrow other_capabilities (each channel adds
# at most two names of MAX_CHANNEL_NAME + len("_outbound") characters, and two commas): the
# fast path takes no more, and the full check measures the names.
_FAST_CHANNELS = (OTHER_CAPABILITIES_CHARS + 1) // (2 * (MAX_CHANNEL_NAME + len("_outbound") + 1))
MAX_AMOUNT = 10**18
MIN_EXPONENT, MAX_EXPONENT = -12, 2
MAX_PRICE = Decimal(10**12)
# exponent -> the smallest amount whose price is MAX_PRICE or more
_PRICE_LIMITS = {
    e: -(-(10**12) // 10**e) if e >= 0 else 10 ** (12 - e)
    for e in range(MIN_EXPONENT, MAX_EXPONENT + 1)
}

E164_RE = re.compile(r"\+[1-9][0-9]{7,14}")
COUNTRY_RE = re.compile(r"[A-Z]{2}")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
TYPE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
CHANNEL_RE = re.compile(rf"[a-z0-9_]{{1,{MAX_CHANNEL_NAME}}}")
# Text a database can store: no control characters, and no lone surrogates (JSON can carry
# "\ud800", which no database driver can encode: it would fail the whole page).
PRINTABLE_RE = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]+")


_MISSING: Any = object()  # a field that is not in the item at all


class _Problems(list[str]):
    """The problems found in one item, each naming its field and value."""

    def add(self, field: str, value: Any, expected: str) -> None:
        self.append(
            f"{field} is missing" if value is _MISSING else f"{field} {show(value)} {expected}"
        )


def show(value: Any, limit: int = 60) -> str:
    """A short, readable rendering of a bad value for a rejection reason."""
    try:
        text = repr(value)
    except Exception:  # a repr that fails must not break the parser
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def is_country(code: str) -> bool:
    """An ISO 3166-1 alpha-2 code (upper case)."""
    return bool(COUNTRY_RE.fullmatch(code)) and pycountry.countries.get(alpha_2=code) is not None


@functools.cache
def is_currency(code: str) -> bool:
    """An ISO 4217 currency code (upper case)."""
    return bool(CURRENCY_RE.fullmatch(code)) and pycountry.currencies.get(alpha_3=code) is not None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def e164(value: Any) -> str | None:
    """``value`` if it is an E.164 number string, else None."""
    if isinstance(value, str) and E164_RE.fullmatch(value):
        return value
    return None


def _string(item: dict[str, Any], field: str, problems: _Problems, limit: int) -> str | None:
    value = item.get(field, _MISSING)
    if not isinstance(value, str):
        problems.add(field, value, "is not a string")
    elif not value.strip():
        problems.add(field, value, "is empty")
    elif len(value) > limit:
        problems.add(field, value, f"is longer than {limit} characters")
    elif not PRINTABLE_RE.fullmatch(value):
        problems.add(field, value, "contains control characters or lone surrogates")
    else:
        return value
    return None


def _number(item: dict[str, Any], problems: _Problems) -> str | None:
    value = item.get("numberString", _MISSING)
    if e164(value) is None:
        problems.add("numberString", value, "is not an E.164 number (+ and 8 to 15 digits)")
        return None
    return str(value)


def _country(item: dict[str, Any], problems: _Problems) -> str | None:
    value = item.get("countryCode", _MISSING)
    if isinstance(value, str) and len(value) == 2 and is_country(value):
        return value
    problems.add("countryCode", value, "is not an ISO 3166-1 alpha-2 country code")
    return None


def _type(item: dict[str, Any], problems: _Problems) -> str | None:
    value = _string(item, "type", problems, MAX_TYPE)
    if value is None:
        return None
    normal = value.strip().lower()
    if not TYPE_RE.fullmatch(normal):
        problems.add("type", value, "is not a number type such as local, mobile or toll-free")
        return None
    return normal


def _capabilities(item: dict[str, Any], problems: _Problems) -> tuple[tuple[str, bool], ...]:
    value = item.get("capabilities", _MISSING)
    if not isinstance(value, dict):
        problems.add("capabilities", value, "is not an object of channel -> {inbound, outbound}")
        return ()
    if len(value) > MAX_CHANNELS:
        problems.add("capabilities", value, f"has more than {MAX_CHANNELS} channels")
        return ()
    flags: list[tuple[str, bool]] = []
    for channel, directions in value.items():
        names = _CHANNEL_COLUMNS.get(channel) if isinstance(channel, str) else None
        if names is None:
            if not (isinstance(channel, str) and CHANNEL_RE.fullmatch(channel)):
                problems.add("capabilities channel", channel, "is not a name of [a-z0-9_]{1,32}")
                continue
            names = tuple(f"{channel}_{direction}" for direction in DIRECTIONS)
            if len(_CHANNEL_COLUMNS) < 1000:  # a hostile listing cannot grow it without end
                _CHANNEL_COLUMNS[channel] = names
        if not isinstance(directions, dict):
            problems.add(f"capabilities.{channel}", directions, "is not {inbound, outbound}")
            continue
        inbound = directions.get("inbound", _MISSING)
        outbound = directions.get("outbound", _MISSING)
        if (inbound is True or inbound is False) and (outbound is True or outbound is False):
            flags.append((names[0], inbound))  # the usual case, in one test
            flags.append((names[1], outbound))
            continue
        for direction, name in zip(DIRECTIONS, names, strict=True):
            flag = directions.get(direction, _MISSING)
            if flag is True or flag is False:
                flags.append((name, flag))
            else:
                problems.add(f"capabilities.{channel}.{direction}", flag, "is not true or false")
    flags.sort()
    chars = len(other_capabilities(flags) or "")
    if chars > OTHER_CAPABILITIES_CHARS:
        problems.add(
            "capabilities",
            value,
            f"has more other channels on than fit in other_capabilities ({chars} characters "
            f"of names, at most {OTHER_CAPABILITIES_CHARS})",
        )
        return ()
    return tuple(flags)


# Valid channel name -> its column names ("sms" -> ("sms_inbound", "sms_outbound")): the
# channels with columns of their own, and the others as ``_capabilities`` meets them.
_CHANNEL_COLUMNS: dict[str, tuple[str, ...]] = {
    channel: tuple(f"{channel}_{direction}" for direction in DIRECTIONS)
    for channel in dict.fromkeys(column.rpartition("_")[0] for column in CAPABILITY_COLUMNS)
}


def _price(item: dict[str, Any], problems: _Problems) -> Price | None:
    value = item.get("monthlyPrice", _MISSING)
    if not isinstance(value, dict):
        problems.add("monthlyPrice", value, "is not an object {currencyCode, amount, exponent}")
        return None
    before = len(problems)
    currency = value.get("currencyCode", _MISSING)
    if not (isinstance(currency, str) and len(currency) == 3 and is_currency(currency)):
        problems.add("monthlyPrice.currencyCode", currency, "is not an ISO 4217 currency code")
    amount = value.get("amount", _MISSING)
    if not is_int(amount):
        problems.add("monthlyPrice.amount", amount, "is not a whole number")
    elif not 0 <= amount < MAX_AMOUNT:
        problems.add("monthlyPrice.amount", amount, "is not between 0 and 10**18 - 1")
    exponent = value.get("exponent", _MISSING)
    if not is_int(exponent):
        problems.add("monthlyPrice.exponent", exponent, "is not a whole number")
    elif not MIN_EXPONENT <= exponent <= MAX_EXPONENT:
        problems.add(
            "monthlyPrice.exponent", exponent, f"is not between {MIN_EXPONENT} and {MAX_EXPONENT}"
        )
    if len(problems) > before:
        return None
    if amount >= _PRICE_LIMITS[exponent]:  # amount x 10**exponent >= 10**12, in integers
        problems.add("monthlyPrice", value, "is 10**12 or more")
        return None
    return Price(currency=currency, amount=amount, exponent=exponent)


def _back_order(item: dict[str, Any], problems: _Problems) -> tuple[bool, str | None]:
    required = item.get("backOrderRequired")
    if required is None:  # missing or null: no back order
        required = False
    elif not isinstance(required, bool):
        problems.add("backOrderRequired", required, "is not true or false")
    stock_id = item.get("backOrderStockId")
    if stock_id == "":  # no back-order stock, written as an empty string
        stock_id = None
    elif stock_id is not None:
        stock_id = _string(item, "backOrderStockId", problems, MAX_ID)
    return required is True, stock_id


def _parse(raw: Any) -> StockItem | Rejection:
    if not isinstance(raw, dict):
        return Rejection(reason=f"item {show(raw)} is not a JSON object", payload=raw)
    problems = _Problems()
    number = _number(raw, problems)
    stock_item_id = _string(raw, "id", problems, MAX_ID)
    country = _country(raw, problems)
    number_type = _type(raw, problems)
    capabilities = _capabilities(raw, problems)
    price = _price(raw, problems)
    back_order_required, back_order_stock_id = _back_order(raw, problems)
    if problems or not (number and stock_item_id and country and number_type and price):
        return Rejection(reason="; ".join(problems), payload=raw, number=number)
    return StockItem(
        number=number,
        stock_item_id=stock_item_id,
        country_code=country,
        number_type=number_type,
        capabilities=capabilities,
        price=price,
        back_order_required=back_order_required,
        back_order_stock_id=back_order_stock_id,
    )


@functools.lru_cache(maxsize=256)
def _normal_type(value: str) -> str | None:
    """A ``type`` value as stored (``Mobile `` -> ``mobile``), None when it is not one."""
    if len(value) > MAX_TYPE or not PRINTABLE_RE.fullmatch(value):
        return None
    normal = value.strip().lower()
    return normal if TYPE_RE.fullmatch(normal) else None


@functools.lru_cache(maxsize=1024)
def _usual_type(country: str, currency: str, kind: str) -> str | None:
    """``kind`` as stored (``_normal_type``) when ``country`` and ``currency`` are known
    codes, else None. A listing has a handful of each: one cached call per item, not five."""
    if len(country) != 2 or not is_country(country):
        return None
    if len(currency) != 3 or not is_currency(currency):
        return None
    return _normal_type(kind)


def _fast(raw: Any) -> StockItem | None:
    """The usual, valid item in one pass with no messages: the same StockItem ``_parse``
    returns, or None for anything else (then ``_parse`` finds and names every problem).
    About twice as fast as ``_parse``; tests check that the two never disagree."""
    if type(raw) is not dict:
        return None
    get = raw.get
    number = get("numberString")
    stock_item_id = get("id")
    country = get("countryCode")
    kind = get("type")
    if (
        type(number) is not str
        or type(stock_item_id) is not str
        or type(country) is not str
        or type(kind) is not str
    ):
        return None
    capabilities = get("capabilities")
    if type(capabilities) is not dict or len(capabilities) > _FAST_CHANNELS:
        return None
    flags: list[tuple[str, bool]] = []
    for channel, directions in capabilities.items():
        names = _CHANNEL_COLUMNS.get(channel)
        if names is None or type(directions) is not dict:
            return None
        inbound = directions.get("inbound")
        outbound = directions.get("outbound")
        if not (inbound is True or inbound is False) or not (outbound is True or outbound is False):
            return None
        flags.append((names[0], inbound))
        flags.append((names[1], outbound))
    price = get("monthlyPrice")
    if type(price) is not dict:
        return None
    currency = price.get("currencyCode")
    amount = price.get("amount")
    exponent = price.get("exponent")
    if type(currency) is not str or type(amount) is not int or type(exponent) is not int:
        return None
    required = get("backOrderRequired")
    if required is not None and required is not True and required is not False:
        return None
    stock_id = get("backOrderStockId")
    if stock_id is not None and type(stock_id) is not str:
        return None
    flags.sort()
    return _checked(
        number,
        stock_item_id,
        country,
        kind,
        tuple(flags),
        currency,
        amount,
        exponent,
        required,
        stock_id,
    )


def _checked(
    number: str,
    stock_item_id: str,
    country: str,
    kind: str,
    flags: tuple[tuple[str, bool], ...],
    currency: str,
    amount: int,
    exponent: int,
    required: bool | None,
    stock_id: str | None,
) -> StockItem | None:
    """The checks of an item's values that ``_fast`` and ``decode_page`` share, once each
    value has its JSON type (``flags``: the capabilities' columns, of known channels,
    sorted), and the StockItem; None when any fails."""
    if (
        not E164_RE.fullmatch(number)
        or len(stock_item_id) > MAX_ID
        or not stock_item_id.strip()
        or not PRINTABLE_RE.fullmatch(stock_item_id)
        or not MIN_EXPONENT <= exponent <= MAX_EXPONENT
        or not 0 <= amount < MAX_AMOUNT
        or amount >= _PRICE_LIMITS[exponent]
    ):
        return None
    number_type = _usual_type(country, currency, kind)
    if number_type is None:
        return None
    if stock_id == "":
        stock_id = None
    elif stock_id is not None and (
        len(stock_id) > MAX_ID or not stock_id.strip() or not PRINTABLE_RE.fullmatch(stock_id)
    ):
        return None
    return StockItem(  # positional: keywords cost a third more, for every item
        number,
        stock_item_id,
        country,
        number_type,
        flags,
        Price(currency, amount, exponent),
        required is True,
        stock_id,
    )


def parse_item(raw: Any) -> StockItem | Rejection:
    """A StockItem when ``raw`` is a valid Bird stock item, else a Rejection. Never raises."""
    try:
        return _fast(raw) or _parse(raw)
    except Exception as exc:  # a bug here must cost one item, not the page
        number = e164(raw.get("numberString")) if isinstance(raw, dict) else None
        return Rejection(
            reason=f"item could not be validated ({type(exc).__name__})", payload=raw, number=number
        )


def parse_results(results: list[Any]) -> tuple[list[StockItem], list[Rejection]]:
    """The valid items and the rejections of one page's ``results``, in order."""
    if type(results) is Parsed:
        return list(results), []
    items: list[StockItem] = []
    rejections: list[Rejection] = []
    for raw in results:
        parsed = parse_item(raw)
        if isinstance(parsed, StockItem):
            items.append(parsed)
        else:
            rejections.append(parsed)
    return items, rejections


# The usual page, decoded by msgspec straight into typed objects: each field's JSON type is
# checked as it is decoded (a bool is not an int, nor 1.0), unknown fields are skipped, and
# the values get ``_checked``'s checks: 168-171 us for a page of 99 against 402-407 for
# decoding it to dicts and ``parse_results`` (bench/parse_bench.py). Any page that does not
# fit (an invalid item, a channel not met yet, a body that is not the usual object) goes
# the whole way: decoded to dicts, each item through ``parse_item``.
class _Directions(msgspec.Struct):
    inbound: bool
    outbound: bool


class _WirePrice(msgspec.Struct):
    currencyCode: str  # Bird's names
    amount: int
    exponent: int


class _WireItem(msgspec.Struct):
    numberString: str
    id: str
    countryCode: str
    type: str
    capabilities: msgspec.Raw  # its JSON, the key of _WIRE_FLAGS
    monthlyPrice: _WirePrice
    backOrderRequired: bool | None = None
    backOrderStockId: str | None = None


class _WirePage(msgspec.Struct):
    results: list[_WireItem]
    nextPageToken: Any = msgspec.UNSET  # checked by the paginator


_PAGE_DECODER = msgspec.json.Decoder(_WirePage)
_CAPABILITIES_DECODER = msgspec.json.Decoder(dict[str, _Directions])


class Parsed(list[StockItem]):
    """A page's ``results`` parsed already, every one a valid item (``decode_page``)."""


def _wire_flags(capabilities: msgspec.Raw) -> tuple[tuple[str, bool], ...] | None:
    """The sorted capability flags of an item's ``capabilities`` (its JSON); None when they
    are not the usual ones: not an object of channels' {inbound, outbound} flags, too many
    channels, or a channel not known yet. A listing writes a handful of distinct capability
    sets, so this is almost always a lookup of the JSON's bytes."""
    key = bytes(capabilities)
    flags = _WIRE_FLAGS.get(key)
    if flags is not None:
        return flags
    try:
        channels = _CAPABILITIES_DECODER.decode(key)
    except (ValueError, RecursionError):  # a DecodeError, or a name that is not UTF-8
        return None
    if len(channels) > _FAST_CHANNELS:
        return None
    pairs: list[tuple[str, bool]] = []
    for channel, directions in channels.items():
        names = _CHANNEL_COLUMNS.get(channel)
        if names is None:
            return None  # not cached: the full check may learn the channel
        pairs.append((names[0], directions.inbound))
        pairs.append((names[1], directions.outbound))
    flags = tuple(sorted(pairs))
    if len(_WIRE_FLAGS) < _WIRE_FLAGS_MAX and len(key) <= _WIRE_KEY_MAX:
        _WIRE_FLAGS[key] = flags  # a hostile listing cannot grow it without end
    return flags


_WIRE_FLAGS: dict[bytes, tuple[tuple[str, bool], ...]] = {}
_WIRE_FLAGS_MAX, _WIRE_KEY_MAX = 1000, 512  # entries, and bytes of JSON in one key
_DIGITS = bytes.maketrans(b"123456789", b"000000000")


def _json_refuses(content: bytes) -> bool:
    """Whether decoding ``content`` to objects, as ``decode_json`` does, would fail where the
    typed decode did not, because of what the typed decode only skips: bytes that are not
    UTF-8, or an integer longer than Python converts (sys.get_int_max_str_digits, 4300 by
    default). Both cost a microsecond or two a page: ``isascii`` first, and digits looked
    for only where two neighbouring samples, ``limit // 2`` bytes apart, are digits."""
    if not content.isascii():
        try:
            content.decode()
        except UnicodeDecodeError:
            return True
    limit = sys.get_int_max_str_digits()
    if not limit:
        return False
    stride = limit // 2 or 1  # a run of more than `limit` digits holds two neighbouring samples
    samples = content[::stride]
    for at in range(len(samples) - 1):
        if samples[at : at + 2].isdigit() and content[at * stride : (at + 1) * stride].isdigit():
            return b"0" * (limit + 1) in content.translate(_DIGITS)
    return False


def decode_page(content: bytes) -> dict[str, Any] | None:
    """The body of the usual listing page, every item valid, as its JSON decodes but with
    ``results`` a Parsed list: decoded and parsed in one pass, the same StockItems that
    ``parse_results`` makes of the decoded JSON (the body keeps only ``results`` and
    ``nextPageToken``, all the paginator reads). None for any other body, which the caller
    decodes as JSON, for ``parse_results`` to take item by item, or to refuse: never raises."""
    try:
        page = _PAGE_DECODER.decode(content)
    except (ValueError, RecursionError):  # a DecodeError, or a string that is not UTF-8
        return None
    if _json_refuses(content):
        return None
    items = Parsed()
    append = items.append
    for wire in page.results:
        flags = _wire_flags(wire.capabilities)
        if flags is None:
            return None
        price = wire.monthlyPrice
        item = _checked(
            wire.numberString,
            wire.id,
            wire.countryCode,
            wire.type,
            flags,
            price.currencyCode,
            price.amount,
            price.exponent,
            wire.backOrderRequired,
            wire.backOrderStockId,
        )
        if item is None:
            return None
        append(item)
    body: dict[str, Any] = {"results": items}
    if page.nextPageToken is not msgspec.UNSET:
        body["nextPageToken"] = page.nextPageToken
    return body

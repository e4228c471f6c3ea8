"""The item parser: valid items, every rejection reason, and two properties."""

from __future__ import annotations

import copy
import itertools
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.records import Price, Rejection, StockItem
from etl.source import parser
from etl.source.client import decode_json
from etl.source.parser import Parsed, _fast, _parse, decode_page, parse_item, parse_results


def bird_item(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": "9b1d0c3e-4c8a-4f7e-9d2b-2f5a6c7d8e9f",
        "countryCode": "NL",
        "type": "mobile",
        "numberString": "+31612345678",
        "capabilities": {
            "voice": {"inbound": True, "outbound": False},
            "sms": {"inbound": True, "outbound": True},
            "mms": {"inbound": False, "outbound": False},
        },
        "monthlyPrice": {"currencyCode": "EUR", "amount": 3500000, "exponent": -6},
        "backOrderRequired": False,
        "backOrderStockId": None,
    }
    item.update(changes)
    return item


def rejected(raw: Any) -> Rejection:
    result = parse_item(raw)
    assert isinstance(result, Rejection), result
    return result


def test_valid_item() -> None:
    raw = bird_item()
    item = parse_item(raw)
    assert item == StockItem(
        number="+31612345678",
        stock_item_id="9b1d0c3e-4c8a-4f7e-9d2b-2f5a6c7d8e9f",
        country_code="NL",
        number_type="mobile",
        capabilities=(
            ("mms_inbound", False),
            ("mms_outbound", False),
            ("sms_inbound", True),
            ("sms_outbound", True),
            ("voice_inbound", True),
            ("voice_outbound", False),
        ),
        price=Price("EUR", 3500000, -6),
        back_order_required=False,
        back_order_stock_id=None,
    )
    assert item.price.value == Decimal("3.5")


def test_back_order_fields() -> None:
    raw = bird_item(backOrderRequired=True, backOrderStockId="bo-1")
    item = parse_item(raw)
    assert isinstance(item, StockItem)
    assert (item.back_order_required, item.back_order_stock_id) == (True, "bo-1")
    del raw["backOrderRequired"], raw["backOrderStockId"]
    item = parse_item(raw)
    assert isinstance(item, StockItem)
    assert (item.back_order_required, item.back_order_stock_id) == (False, None)


def test_unknown_channels_and_types_are_kept() -> None:
    caps = {
        "whatsapp": {"inbound": True, "outbound": False},
        "rcs_2": {"inbound": False, "outbound": True},
    }
    item = parse_item(bird_item(capabilities=caps, type="Shared-Cost"))
    assert isinstance(item, StockItem)
    assert item.capabilities == (
        ("rcs_2_inbound", False),
        ("rcs_2_outbound", True),
        ("whatsapp_inbound", True),
        ("whatsapp_outbound", False),
    )
    assert item.capability("whatsapp_inbound") is True
    assert item.capability("voice_inbound") is False
    assert item.number_type == "shared-cost"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"numberString": "0612345678"}, "numberString '0612345678' is not an E.164 number"),
        ({"numberString": "+0612345678"}, "numberString '+0612345678' is not an E.164"),
        ({"numberString": "+1234567"}, "numberString '+1234567' is not an E.164"),
        ({"numberString": "+1234567890123456"}, "numberString '+1234567890123456' is not"),
        ({"numberString": 31612345678}, "numberString 31612345678 is not an E.164"),
        ({"countryCode": "XX"}, "countryCode 'XX' is not an ISO 3166-1 alpha-2"),
        ({"countryCode": "nl"}, "countryCode 'nl' is not an ISO 3166-1 alpha-2"),
        ({"countryCode": None}, "countryCode None is not"),
        ({"type": ""}, "type '' is empty"),
        ({"type": "x" * 33}, "type 'xxxxxxxx"),
        ({"type": "local number!"}, "type 'local number!' is not a number type"),
        ({"type": 5}, "type 5 is not a string"),
        ({"id": ""}, "id '' is empty"),
        ({"id": "i" * 65}, "is longer than 64 characters"),
        ({"id": 17}, "id 17 is not a string"),
        ({"id": "a\x00b"}, "contains control characters or lone surrogates"),
        ({"id": "a\ud800b"}, "contains control characters or lone surrogates"),
        ({"backOrderStockId": "b\udfff"}, "contains control characters or lone surrogates"),
        ({"capabilities": []}, "capabilities [] is not an object"),
        ({"capabilities": {"Voice": {"inbound": True, "outbound": True}}}, "channel 'Voice'"),
        ({"capabilities": {"sms": True}}, "capabilities.sms True is not {inbound, outbound}"),
        ({"capabilities": {"sms": {"inbound": "yes", "outbound": True}}}, "sms.inbound 'yes'"),
        ({"capabilities": {"sms": {"inbound": True}}}, "capabilities.sms.outbound is missing"),
        ({"monthlyPrice": None}, "monthlyPrice None is not an object"),
        ({"monthlyPrice": {"currencyCode": "EURO", "amount": 1, "exponent": 0}}, "'EURO'"),
        ({"monthlyPrice": {"currencyCode": "XYZ", "amount": 1, "exponent": 0}}, "'XYZ' is not"),
        ({"monthlyPrice": {"currencyCode": "eur", "amount": 1, "exponent": 0}}, "ISO 4217"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": 3.5, "exponent": 0}}, "amount 3.5"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": "35", "exponent": 0}}, "'35' is not"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": True, "exponent": 0}}, "amount True"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": -1, "exponent": 0}}, "amount -1 is"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": 10**18, "exponent": -9}}, "10**18"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": 1, "exponent": 3}}, "exponent 3 is"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": 1, "exponent": -13}}, "-13 is not"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": 1, "exponent": 1.0}}, "exponent 1.0"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": 10**12, "exponent": 0}}, "10**12"),
        ({"monthlyPrice": {"currencyCode": "EUR", "amount": 1}}, "exponent is missing"),
        ({"backOrderRequired": "no"}, "backOrderRequired 'no' is not true or false"),
        ({"backOrderStockId": 5}, "backOrderStockId 5 is not a string"),
        ({"backOrderStockId": "b" * 65}, "longer than 64 characters"),
        (
            {"capabilities": {c * 32: {"inbound": True, "outbound": True} for c in "abcdefg"}},
            "more other channels on than fit in other_capabilities (580 characters of names, "
            "at most 512)",
        ),
    ],
)
def test_rejection_reasons(changes: dict[str, Any], reason: str) -> None:
    raw = bird_item(**changes)
    result = rejected(raw)
    assert reason in result.reason
    assert_page_agrees([raw])  # the page goes the way that names the problem
    assert result.payload is raw
    readable = isinstance(raw["numberString"], str) and raw["numberString"] == "+31612345678"
    assert result.number == ("+31612345678" if readable else None)


@pytest.mark.parametrize(
    "field", ["id", "countryCode", "type", "numberString", "capabilities", "monthlyPrice"]
)
def test_a_missing_required_field_is_named(field: str) -> None:
    raw = bird_item()
    del raw[field]
    assert f"{field} is missing" in rejected(raw).reason


def test_every_problem_is_named_and_long_values_are_shortened() -> None:
    raw = bird_item(numberString="+1" + "9" * 300, countryCode="ZZ")
    reason = rejected(raw).reason
    assert "numberString '+1999" in reason
    assert "countryCode 'ZZ'" in reason
    assert "9" * 100 not in reason


@pytest.mark.parametrize("raw", [None, 5, "item", [bird_item()], 1.5])
def test_an_item_that_is_not_an_object(raw: Any) -> None:
    result = rejected(raw)
    assert "is not a JSON object" in result.reason
    assert result.number is None


def test_parse_results_keeps_order_and_the_rest_of_the_page() -> None:
    good = [bird_item(numberString=f"+3161234567{i}") for i in range(3)]
    bad = bird_item(monthlyPrice={"currencyCode": "EUR"})
    items, rejections = parse_results([good[0], bad, good[1], "junk", good[2]])
    assert [i.number for i in items] == ["+31612345670", "+31612345671", "+31612345672"]
    assert [r.payload for r in rejections] == [bad, "junk"]


# --- properties ---------------------------------------------------------------------------

prices = st.builds(
    lambda amount, exponent: (amount, exponent),
    st.integers(0, 10**9),
    st.integers(-9, 2),
)


def same_price_forms(amount: int, exponent: int, shift: int) -> tuple[int, int]:
    """The same value with ``shift`` more decimal places: 35, -1 -> 3500000, -6."""
    return amount * 10**shift, exponent - shift


def price_of(amount: int, exponent: int, currency: str = "EUR") -> Price:
    item = parse_item(
        bird_item(monthlyPrice={"currencyCode": currency, "amount": amount, "exponent": exponent})
    )
    assert isinstance(item, StockItem), item
    return item.price


@given(prices, st.integers(0, 3))
def test_equal_prices_in_different_forms_compare_equal(price: tuple[int, int], shift: int) -> None:
    amount, exponent = price
    other_amount, other_exponent = same_price_forms(amount, exponent, shift)
    first, second = price_of(amount, exponent), price_of(other_amount, other_exponent)
    assert first.same_as(second)
    assert second.same_as(first)
    assert first.value == second.value


@given(prices, prices)
def test_different_prices_do_not_compare_equal(a: tuple[int, int], b: tuple[int, int]) -> None:
    first, second = price_of(*a), price_of(*b)
    equal = Decimal(a[0]) * Decimal(10) ** a[1] == Decimal(b[0]) * Decimal(10) ** b[1]
    assert first.same_as(second) is equal
    assert (first.value == second.value) is equal
    assert not first.same_as(price_of(*a, currency="USD"))
    assert not first.same_as(None)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["+31612345678", "NL", "EUR", "mobile", "inbound", "outbound"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from([*list(bird_item()), "voice", "inbound", "outbound", "amount"])
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@given(json_like)
def test_parse_never_raises_on_arbitrary_json(raw: Any) -> None:
    result = parse_item(raw)
    assert isinstance(result, StockItem | Rejection)


@given(
    st.dictionaries(st.sampled_from(list(bird_item())), json_like, max_size=4),
)
def test_parse_never_raises_on_a_partly_broken_item(changes: dict[str, Any]) -> None:
    raw = bird_item(**changes)
    before = copy.deepcopy(raw)
    result = parse_item(raw)
    assert isinstance(result, StockItem | Rejection)
    assert raw == before  # the payload is kept as given
    if isinstance(result, Rejection):
        assert result.reason
        assert result.payload is raw


def directions() -> st.SearchStrategy[Any]:
    flag = st.sampled_from([True, False, 1, 0, None, "true"])
    return st.fixed_dictionaries({}, optional={"inbound": flag, "outbound": flag}) | st.none()


PRICE_EDGES: dict[str, list[Any]] = {
    "currencyCode": ["EUR", "eur", "XXX", "EU", "USD", 978],
    "amount": [0, 1, -1, 10**12 - 1, 10**12, 10**18 - 1, 10**18, 10**30, True, 1.5, "1"],
    "exponent": [-12, -13, 2, 3, 0, -6, -9, False, 0.0],
}


def price_edges() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={name: st.sampled_from(values) for name, values in PRICE_EDGES.items()},
    )


# Each field of an item, from values at and around the edges of what is valid.
ITEM_EDGES: dict[str, st.SearchStrategy[Any]] = {
    "numberString": st.sampled_from(
        [
            *("+31612345678", "31612345678", "+0123456789", "+1234567", "+123456789012345"),
            *("+1234567890123456", " +31612345678", "+3161234567\n"),
        ]
    ),
    "id": st.sampled_from(["x", " ", "", "a" * 64, "a" * 65, "a\x00b", "a\ud800", "an id "])
    | st.integers(),
    "countryCode": st.sampled_from(["NL", "nl", "XX", "NLD", "", "US"]),
    "type": st.sampled_from(
        [
            *("mobile", "Mobile ", " local", "toll-free", "TOLL_FREE", "a" * 32, "a" * 33),
            *("", " ", "mob ile", "-x", "x\ty", " " * 40 + "x"),
        ]
    ),
    "capabilities": st.dictionaries(
        st.sampled_from(["voice", "sms", "mms", "whatsapp", "Voice", "x y", "", "a" * 33]),
        directions(),
        max_size=4,
    )
    | st.none(),
    "monthlyPrice": price_edges() | st.none(),
    "backOrderRequired": st.sampled_from([None, True, False, 0, 1, "false"]),
    "backOrderStockId": st.sampled_from(
        [None, "", " ", "abc", "a" * 256, "a" * 257, "a\nb", 5, False]
    ),
}
edge_items = st.lists(st.sampled_from(sorted(ITEM_EDGES)), max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: ITEM_EDGES[n] for n in names}).map(
        lambda changes: bird_item(**changes)
    )
)


def assert_fast_agrees(raw: dict[str, Any]) -> None:
    full = _parse(raw)  # first: it learns the channel names the fast path looks up
    assert _fast(raw) == (full if isinstance(full, StockItem) else None), raw


def test_the_fast_path_agrees_on_every_price_edge() -> None:
    for values in itertools.product(*PRICE_EDGES.values()):
        assert_fast_agrees(bird_item(monthlyPrice=dict(zip(PRICE_EDGES, values, strict=True))))


@settings(max_examples=500)
@given(edge_items)
def test_the_fast_path_and_the_full_check_agree(raw: dict[str, Any]) -> None:
    assert_fast_agrees(raw)


def test_the_fast_path_takes_a_usual_item() -> None:
    raw = bird_item()
    assert isinstance(_parse(raw), StockItem)
    assert _fast(raw) == _parse(raw)


# decode_page: the usual page decoded and parsed in one pass. Whatever the page, it gives
# exactly what decoding the JSON and parsing it item by item gives, or None, and it gives
# None only when an item is not the usual, valid one (``_fast`` refuses it).


def assert_page_agrees(raws: list[Any]) -> None:
    content = json.dumps({"results": raws, "nextPageToken": "next", "extra": [1]}).encode()
    decoded = decode_json(content)["results"]
    for raw in decoded:
        _parse(raw)  # it learns the channel names both fast paths look up
    fast = [_fast(raw) for raw in decoded]
    page = decode_page(content)
    if any(item is None for item in fast):
        assert page is None, raws
        return
    assert page is not None, raws
    assert type(page["results"]) is Parsed
    assert page["nextPageToken"] == "next"
    assert list(page["results"]) == fast == [_parse(raw) for raw in decoded]
    assert parse_results(page["results"]) == (fast, [])


def test_the_page_path_takes_a_usual_page() -> None:
    raws = [bird_item(), bird_item(numberString="+31612345679", unknown={"x": 1})]
    page = decode_page(json.dumps({"results": raws}).encode())
    assert page is not None
    assert [item.number for item in page["results"]] == ["+31612345678", "+31612345679"]
    assert "nextPageToken" not in page  # the last page: as its JSON decodes
    assert_page_agrees(raws)


def test_the_page_path_agrees_on_every_price_edge() -> None:
    for values in itertools.product(*PRICE_EDGES.values()):
        assert_page_agrees([bird_item(monthlyPrice=dict(zip(PRICE_EDGES, values, strict=True)))])


@settings(max_examples=500)
@given(st.lists(edge_items, max_size=4))
def test_the_page_path_and_the_item_path_agree(raws: list[dict[str, Any]]) -> None:
    assert_page_agrees(raws)


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b"{}",
        b'{"results": 5}',
        b'{"results": [1]}',
        b'{"results": [null]}',
        b'{"results": [{"numberString": "+31612345678"}]}',
        b'{"results": [], "nextPageToken": NaN}',
        json.dumps({"results": [bird_item()]}).encode("utf-16"),
        b"<html>",
    ],
)
def test_the_page_path_leaves_any_other_body_to_the_json_decoder(content: bytes) -> None:
    assert decode_page(content) is None


USUAL_PAGE = json.dumps({"results": [bird_item()]}).encode()


def with_field(raw: bytes) -> bytes:
    """The usual page, with a field the typed decode skips: ``"x": <raw>``."""
    return USUAL_PAGE[:-1] + b', "x": ' + raw + b"}"


@pytest.mark.parametrize(
    "content",
    [
        with_field(b'"\xff\xfe"'),  # not UTF-8, where only the typed decode skips it
        with_field(b"1" * 4301),  # longer than Python converts an integer
        with_field(b"[-" + b"9" * 5000 + b"]"),
        USUAL_PAGE[:-1] + b', "nextPageToken": "\xff"}',
        USUAL_PAGE.replace(b'"sms"', b'"s\xffms"'),  # a channel name
    ],
)
def test_a_body_the_json_decoder_refuses_is_refused_the_same_way(content: bytes) -> None:
    # Else a page the item path refuses (PaginationError, the run retried) would be synced.
    with pytest.raises(ValueError, match=r"utf-8|integer string conversion"):
        decode_json(content)
    assert decode_page(content) is None  # and it does not raise


@pytest.mark.parametrize(
    "raw",
    [
        '"Zürich ☎"'.encode(),  # UTF-8 that is not ASCII
        b"1" * 4300,  # as long as Python converts
        b"[" + b"1" * 2200 + b", " + b"2" * 2200 + b"]",  # two runs, each sampled
    ],
)
def test_the_page_path_still_takes_a_body_the_json_decoder_takes(raw: bytes) -> None:
    content = with_field(raw)
    assert decode_json(content)["x"] == json.loads(raw)
    page = decode_page(content)
    assert page is not None
    assert list(page["results"]) == [parse_item(bird_item())]


def test_the_capability_cache_keeps_only_short_keys() -> None:
    long = json.dumps(bird_item()["capabilities"], indent=600).encode()
    assert len(long) > parser._WIRE_KEY_MAX
    content = USUAL_PAGE.replace(json.dumps(bird_item()["capabilities"]).encode(), long)
    assert content != USUAL_PAGE
    page = decode_page(content)
    assert page is not None
    assert list(page["results"]) == [parse_item(bird_item())]
    assert long not in parser._WIRE_FLAGS
    assert json.dumps(bird_item()["capabilities"]).encode() in parser._WIRE_FLAGS


def test_a_channel_the_page_path_has_not_met_is_learned_by_the_item_path() -> None:
    raws = [bird_item(capabilities={"zz_carrier_pigeon": {"inbound": True, "outbound": True}})]
    content = json.dumps({"results": raws}).encode()
    assert decode_page(content) is None
    item = parse_item(raws[0])
    assert isinstance(item, StockItem)
    page = decode_page(content)
    assert page is not None
    assert list(page["results"]) == [item]
    assert item.capabilities == (
        ("zz_carrier_pigeon_inbound", True),
        ("zz_carrier_pigeon_outbound", True),
    )

"""The paginator against the simulator, and against scripted bodies for shapes the simulator
does not serve."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from etl.config import Secret
from etl.errors import Interrupted, PaginationError
from etl.records import Page, Scope, StockItem
from etl.simulator import Simulator, SyntheticStock
from etl.source.client import BirdClient
from etl.source.paginator import MAX_TOKEN_LENGTH, TokenPaginator, iter_pages
from etl.source.ratelimit import RateLimiter
from tests.conftest import ACCESS_KEY, ORGANIZATION_ID

US = Scope("US")


@pytest.fixture
def client(simulator: Simulator) -> Iterator[BirdClient]:
    with BirdClient(
        simulator.url,
        Secret(ACCESS_KEY),
        ORGANIZATION_ID,
        rate_limiter=RateLimiter(10_000),
        sleep=lambda _seconds: None,
    ) as bird:
        yield bird


def numbers(pages: list[Page]) -> list[str]:
    return [item.number for page in pages for item in page.items]


def listed(stock: SyntheticStock, country: str) -> set[str]:
    return {item["numberString"] for item in stock.items(country)}


@pytest.mark.parametrize("page_size", [1, 7, 99])
def test_pages_a_scope_to_its_end(
    client: BirdClient, stock: SyntheticStock, simulator: Simulator, page_size: int
) -> None:
    pages = list(iter_pages(client, US, page_size=page_size, max_pages=1000))
    expected = listed(stock, "US")
    assert len(numbers(pages)) == len(expected)
    assert set(numbers(pages)) == expected
    assert [p.index for p in pages] == list(range(len(pages)))
    assert len(pages) == -(-len(expected) // page_size)
    assert all(len(p.items) == page_size for p in pages[:-1])
    assert all(p.scope_key == "US" and p.fetched_at.tzinfo is UTC for p in pages)
    assert all(p.next_page_token for p in pages[:-1])
    assert pages[-1].next_page_token is None
    assert len(simulator.requests) == len(pages)
    assert "pageToken" not in simulator.requests[0].query
    assert all("pageToken=" in r.query for r in simulator.requests[1:])
    assert all(f"limit={page_size}" in r.query for r in simulator.requests)


def test_a_listing_that_divides_exactly_into_pages(
    client: BirdClient, stock: SyntheticStock
) -> None:
    count = len(stock.items("NL"))
    page_size = next(size for size in range(7, 99) if count % size == 0) if count > 7 else count
    pages = list(iter_pages(client, Scope("NL"), page_size=page_size, max_pages=1000))
    assert set(numbers(pages)) == listed(stock, "NL")
    assert pages[-1].next_page_token is None
    # the last full page either ends the listing or is followed by one empty page
    assert all(p.items for p in pages[:-1])


def test_an_empty_listing_is_one_empty_page(client: BirdClient, stock: SyntheticStock) -> None:
    stock.clear("NL")
    pages = list(iter_pages(client, Scope("NL"), page_size=10, max_pages=10))
    assert [(p.index, p.items, p.next_page_token) for p in pages] == [(0, (), None)]


def test_scope_filters_are_sent(
    client: BirdClient, stock: SyntheticStock, simulator: Simulator
) -> None:
    scope = Scope("US", types=("mobile",))
    pages = list(iter_pages(client, scope, page_size=50, max_pages=100))
    items = [i for p in pages for i in p.items]
    assert all(i.number_type == "mobile" and scope.contains(i) for i in items)
    assert "types=mobile" in simulator.requests[0].query


def test_invalid_items_are_rejected_and_the_rest_kept(
    client: BirdClient, simulator: Simulator
) -> None:
    simulator.faults.add("invalid_items", count=3, unreadable=True)
    pages = list(iter_pages(client, US, page_size=20, max_pages=1000))
    rejections = [r for p in pages for r in p.rejections]
    assert len(rejections) >= 3
    assert all(r.reason for r in rejections)
    assert all(isinstance(i, StockItem) for p in pages for i in p.items)


def test_a_repeated_token_is_a_loop(client: BirdClient, simulator: Simulator) -> None:
    simulator.faults.add("repeat_token")
    seen: list[Page] = []
    with pytest.raises(PaginationError, match=r"scope US, page \d+: loop detected") as raised:
        seen.extend(iter_pages(client, US, page_size=10, max_pages=1000))
    assert seen  # the pages before the loop were yielded
    assert "characters starting" in str(raised.value)


def test_max_pages(client: BirdClient) -> None:
    seen: list[Page] = []
    with pytest.raises(PaginationError, match="scope US, page 3: has more than max_pages = 3"):
        seen.extend(iter_pages(client, US, page_size=5, max_pages=3))
    assert [p.index for p in seen] == [0, 1, 2]


def test_html_body_fails_the_scope(client: BirdClient, simulator: Simulator) -> None:
    simulator.faults.add("html")
    with pytest.raises(PaginationError, match="body was not JSON"):
        list(iter_pages(client, US, page_size=5, max_pages=10))


def test_stop_is_checked_before_each_page(client: BirdClient, simulator: Simulator) -> None:
    stop = threading.Event()
    pages = iter_pages(client, US, page_size=5, max_pages=100, stop=stop)
    next(pages)
    sent = client.stats.snapshot()["requests"]  # page 0, and page 1 if it went out ahead
    stop.set()
    with pytest.raises(Interrupted, match="page 1 of scope US"):
        next(pages)
    assert sent in (1, 2)
    assert client.stats.snapshot()["requests"] == sent  # nothing sent after the stop
    deadline = time.monotonic() + 5
    while len(simulator.requests) < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(simulator.requests) == sent


# --- bodies the simulator does not serve -----------------------------------------------------


class Scripted:
    """A page source that returns the given bodies in turn and records each query."""

    def __init__(self, *bodies: Any) -> None:
        self.bodies = list(bodies)
        self.queries: list[dict[str, Any]] = []

    def fetch(self, params: Mapping[str, Any]) -> tuple[Any, datetime]:
        self.queries.append(dict(params))
        return self.bodies.pop(0), datetime.now(UTC)


ITEM = {
    "id": "a1",
    "countryCode": "US",
    "type": "local",
    "numberString": "+12125550100",
    "capabilities": {"voice": {"inbound": True, "outbound": True}},
    "monthlyPrice": {"currencyCode": "USD", "amount": 115, "exponent": -2},
}


def test_scripted_pages_and_queries() -> None:
    source = Scripted(
        {"results": [ITEM], "nextPageToken": "t1"},
        {"results": [], "nextPageToken": "t2"},
        {"results": [ITEM, {"bad": 1}], "nextPageToken": None},
    )
    scope = Scope("US", prefix="+1212", types=("local", "mobile"))
    pages = list(iter_pages(source, scope, page_size=2, max_pages=10))
    assert [(len(p.items), len(p.rejections), p.next_page_token) for p in pages] == [
        (1, 0, "t1"),
        (0, 0, "t2"),
        (1, 1, None),
    ]
    assert source.queries[0] == {
        "countryCodes": ["US"],
        "prefix": "+1212",
        "types": ["local", "mobile"],
        "limit": 2,
    }
    assert [q.get("pageToken") for q in source.queries] == [None, "t1", "t2"]
    assert all(p.scope_key == "US +1212 local/mobile" for p in pages)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([ITEM], "page 1: body is a JSON list, not an object"),
        ("results", "page 1: body is a JSON str, not an object"),
        ({"nextPageToken": "x"}, "page 1: 'results' is missing, not a list"),
        ({"results": {"a": ITEM}}, "page 1: 'results' is a dict, not a list"),
        ({"results": None}, "page 1: 'results' is missing, not a list"),
        ({"results": [], "nextPageToken": 5}, "page 1: nextPageToken is a int, not a string"),
        ({"results": [], "nextPageToken": ""}, "page 1: nextPageToken is an empty string"),
        (
            {"results": [], "nextPageToken": "x" * (MAX_TOKEN_LENGTH + 1)},
            "page 1: nextPageToken is longer than 8000 characters (a token of 8001 characters",
        ),
        ({"results": [], "nextPageToken": "t0"}, "page 1: loop detected"),
    ],
)
def test_bodies_that_fail_the_scope(body: Any, problem: str) -> None:
    source = Scripted({"results": [ITEM], "nextPageToken": "t0"}, body)
    pages: list[Page] = []
    with pytest.raises(PaginationError) as raised:
        pages.extend(iter_pages(source, US, page_size=1, max_pages=10))
    assert f"scope US, {problem}" in str(raised.value)
    assert [p.index for p in pages] == [0]


def test_a_token_of_exactly_the_maximum_length_is_fine() -> None:
    token = "y" * MAX_TOKEN_LENGTH
    source = Scripted({"results": [], "nextPageToken": token}, {"results": []})
    pages = list(iter_pages(source, US, page_size=1, max_pages=10))
    assert len(pages) == 2
    assert source.queries[1]["pageToken"] == token


def test_a_message_never_shows_a_whole_token() -> None:
    token = "secretish-" + "z" * 7000
    source = Scripted(
        {"results": [], "nextPageToken": token}, {"results": [], "nextPageToken": token}
    )
    with pytest.raises(PaginationError) as raised:
        list(iter_pages(source, US, page_size=1, max_pages=10))
    message = str(raised.value)
    assert token not in message
    assert "a token of 7010 characters starting 'secretish-zzzzzz...'" in message


def test_the_paginator_state() -> None:
    paginator = TokenPaginator(US, page_size=3, max_pages=5)
    assert paginator.has_next_page
    assert paginator.request_params() == {"countryCodes": ["US"], "limit": 3}
    assert paginator.update_state({"results": [1], "nextPageToken": "a"}) == [1]
    assert paginator.request_params()["pageToken"] == "a"
    assert paginator.has_next_page
    paginator.update_state({"results": []})
    assert not paginator.has_next_page

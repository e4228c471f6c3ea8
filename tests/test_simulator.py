"""The Bird simulator over real HTTP on 127.0.0.1: paging, validation, filters, faults, the
evolving stock, the control endpoints and the command line."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from click.testing import CliRunner

from etl.simulator import Faults, Simulator, SyntheticStock
from etl.simulator.cli import simulator_command
from etl.source.parser import parse_item

KEY = "test-sim-key-81c2"
ORG = "org-sim"
PATH = f"/organizations/{ORG}/numbers-stock-items"
E164 = re.compile(r"\+[1-9][0-9]{7,14}")


@pytest.fixture(scope="module")
def base_stock() -> SyntheticStock:
    return SyntheticStock(seed=3, countries=("US", "NL", "GB", "DE"), size=800)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    stock = SyntheticStock(seed=3, countries=("US", "NL", "GB", "DE"), size=800)
    with Simulator(stock, access_key=KEY, organization_id=ORG) as simulator:
        yield simulator


@pytest.fixture
def bird(sim: Simulator) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = f"AccessKey {KEY}"
        yield session


def get(
    session: requests.Session, sim: Simulator, params: Any = None, path: str = PATH
) -> requests.Response:
    response = session.get(sim.url + path, params=params, timeout=10)
    response.close()
    return response


def page_all(
    session: requests.Session, sim: Simulator, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    token: str | None = None
    pages = 0
    while True:
        query = dict(params, **({"pageToken": token} if token else {}))
        response = get(session, sim, query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        items.extend(body["results"])
        if "nextPageToken" not in body:
            return items, pages
        token = body["nextPageToken"]
        assert isinstance(token, str)
        assert 0 < len(token) <= 8000


# --- the stock ---------------------------------------------------------------------------------


def test_the_stock_is_plausible_and_deterministic(base_stock: SyntheticStock) -> None:
    items = base_stock.items()
    assert len(items) == 800
    numbers = [i["numberString"] for i in items]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == 800
    assert {i["countryCode"] for i in items} == {"US", "NL", "GB", "DE"}
    assert all(len(base_stock.items(c)) == 200 for c in ("US", "NL", "GB", "DE"))
    dial = {"US": "+1", "NL": "+31", "GB": "+44", "DE": "+49"}
    for item in items:
        assert E164.fullmatch(item["numberString"])
        assert item["numberString"].startswith(dial[item["countryCode"]])
        assert item["type"] in ("local", "national", "mobile", "toll-free")
        price = item["monthlyPrice"]
        assert price["currencyCode"] == "EUR"
        assert price["exponent"] == -6
        assert 1_000_000 <= price["amount"] <= 25_000_000
        assert {"voice", "sms", "mms"} <= set(item["capabilities"])
        assert isinstance(item["backOrderRequired"], bool)
        assert (item["backOrderStockId"] is None) != item["backOrderRequired"]
        assert parse_item(item).__class__.__name__ == "StockItem"
    assert {i["type"] for i in items} == {"local", "national", "mobile", "toll-free"}
    assert any("whatsapp" in i["capabilities"] for i in items)
    assert sum(i["backOrderRequired"] for i in items) < 80
    assert len({i["id"] for i in items}) == 800
    toll_free_us = [
        i["numberString"] for i in items if i["type"] == "toll-free" and i["countryCode"] == "US"
    ]
    assert all(n[2:5] in ("800", "888", "877", "866", "855", "844", "833") for n in toll_free_us)
    assert SyntheticStock(seed=3, countries=("US", "NL", "GB", "DE"), size=800).items() == items
    assert SyntheticStock(seed=4, countries=("US", "NL", "GB", "DE"), size=800).items() != items


def test_put_remove_clear_and_set_price() -> None:
    stock = SyntheticStock(seed=1, countries=("NL",), size=20)
    first = stock.numbers("NL")[0]
    stock.set_price(first, 35, -1)
    assert stock.items("NL")[0]["monthlyPrice"] == {
        "currencyCode": "EUR",
        "amount": 35,
        "exponent": -1,
    }
    stock.remove(first)
    assert first not in stock.numbers()
    odd = {"id": "x", "countryCode": "NL", "numberString": 31201234567}  # invalid on purpose
    stock.put(odd)
    assert odd in stock.items("NL")
    body, _ = stock.query(country_codes=["NL"], prefix=None, types=[], after=None, limit=99)
    assert b'"numberString":31201234567' in b"".join(body)
    stock.clear("NL")
    assert stock.items() == []
    assert stock.query(country_codes=["NL"], prefix=None, types=[], after=None, limit=5) == (
        [],
        None,
    )


def test_evolve_is_deterministic_and_changes_the_stock() -> None:
    def run() -> tuple[list[dict[str, int]], list[dict[str, Any]]]:
        stock = SyntheticStock(seed=11, countries=("US", "NL"), size=1000)
        counts = [stock.evolve(relist_rate=0.5) for _ in range(3)]
        return counts, stock.items()

    counts, items = run()
    assert run() == (counts, items)
    assert all(c["price_changes"] == 20 and c["removed"] == 20 for c in counts)
    assert all(c["added"] == 20 for c in counts)
    assert counts[0]["relisted"] == 0
    assert counts[1]["relisted"] == 10

    before = {
        i["numberString"]: i
        for i in SyntheticStock(seed=11, countries=("US", "NL"), size=1000).items()
    }
    stock = SyntheticStock(seed=11, countries=("US", "NL"), size=1000)
    stock.evolve()
    after = {i["numberString"]: i for i in stock.items()}
    gone = set(before) - set(after)
    new = set(after) - set(before)
    repriced = [
        n for n in set(before) & set(after) if before[n]["monthlyPrice"] != after[n]["monthlyPrice"]
    ]
    assert (len(gone), len(new), len(repriced)) == (20, 20, 20)
    stock.evolve(relist_rate=1.0, removal_rate=0, arrival_rate=0, price_change_rate=0)
    back = {i["numberString"]: i for i in stock.items()}
    assert gone <= set(back)  # every sold number came back, the same number
    assert all(back[n]["countryCode"] == before[n]["countryCode"] for n in gone)


@pytest.mark.parametrize("seed", range(5))
def test_evolve_reports_what_a_sync_can_see(seed: int) -> None:
    # a number repriced and sold in one step was counted as a price change no sync can see
    # (the demo announced 18 changes and its sync found 17)
    stock = SyntheticStock(seed=seed, countries=("US", "NL"), size=200)
    before = {i["numberString"]: i["monthlyPrice"] for i in stock.items()}
    counts = stock.evolve(price_change_rate=0.4, removal_rate=0.4, arrival_rate=0, relist_rate=0)
    after = {i["numberString"]: i["monthlyPrice"] for i in stock.items()}
    repriced = [n for n in set(before) & set(after) if before[n] != after[n]]
    assert (len(repriced), len(set(before) - set(after))) == (80, 80)
    assert (counts["price_changes"], counts["removed"]) == (80, 80)


def test_a_large_stock_builds() -> None:
    stock = SyntheticStock(seed=5, countries=("US", "GB"), size=100_000)
    assert len(stock.numbers("US")) == 50_000
    body, last = stock.query(country_codes=["GB"], prefix="+4420", types=[], after=None, limit=99)
    assert len(body) == 99
    assert last is not None
    assert last.startswith("+4420")


# --- paging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 10, 37, 99])
def test_paging_to_the_end_gives_every_item_once_in_order(
    sim: Simulator, bird: requests.Session, limit: int
) -> None:
    items, pages = page_all(bird, sim, {"countryCodes": ["US", "NL"], "limit": limit})
    expected = sim.stock.items("NL") + sim.stock.items("US")
    expected.sort(key=lambda i: i["numberString"])
    assert items == expected
    assert pages == -(-len(expected) // limit)
    assert len(sim.requests) == pages
    assert all(r.status == 200 for r in sim.requests)
    assert "pageToken" not in sim.requests[0].params
    assert all("pageToken" in r.params for r in sim.requests[1:])


def test_default_limit_and_response_shape(sim: Simulator, bird: requests.Session) -> None:
    response = get(bird, sim, {"countryCodes": "DE"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"results", "nextPageToken"}
    assert len(body["results"]) == 10
    assert sim.requests[-1].path == PATH
    assert sim.requests[-1].query == "countryCodes=DE"


def test_the_listing_can_change_while_paged(sim: Simulator, bird: requests.Session) -> None:
    first = get(bird, sim, {"countryCodes": "NL", "limit": 50}).json()
    served = [i["numberString"] for i in first["results"]]
    later = sim.stock.numbers("NL")[60]
    sim.stock.remove(served[10])
    sim.stock.remove(later)
    second = get(
        bird, sim, {"countryCodes": "NL", "limit": 50, "pageToken": first["nextPageToken"]}
    )
    numbers = [i["numberString"] for i in second.json()["results"]]
    assert numbers[0] > served[-1]  # keyset: continues after the last number served
    assert later not in numbers
    assert len(numbers) == 50


def test_keep_alive_serves_many_requests_on_one_connection(sim: Simulator) -> None:
    parts = urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        for _ in range(5):
            conn.request("GET", PATH + "?limit=99", headers={"Authorization": f"AccessKey {KEY}"})
            response = conn.getresponse()
            assert response.status == 200
            assert response.version == 11
            assert len(json.loads(response.read())["results"]) == 99
    finally:
        conn.close()


# --- validation --------------------------------------------------------------------------------


def error(response: requests.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"code", "message"}
    return body  # type: ignore[no-any-return]


def test_auth_and_unknown_organization(sim: Simulator, bird: requests.Session) -> None:
    with requests.Session() as anonymous:
        assert error(get(anonymous, sim))["code"] == "unauthorized"
        assert get(anonymous, sim).status_code == 401
        anonymous.headers["Authorization"] = "AccessKey wrong"
        assert get(anonymous, sim).status_code == 401
        anonymous.headers["Authorization"] = f"Bearer {KEY}"
        assert get(anonymous, sim).status_code == 401
    response = get(bird, sim, path="/organizations/someone-else/numbers-stock-items")
    assert response.status_code == 404
    assert "someone-else" in error(response)["message"]
    assert get(bird, sim, path="/organizations").status_code == 404
    assert get(bird, sim, path=f"/organizations/{ORG}/numbers").status_code == 404
    assert [r.status for r in sim.requests] == [401, 401, 401, 401, 404]


@pytest.mark.parametrize("limit", ["0", "100", "-1", "abc", "5.5", ""])
def test_limit_outside_1_to_99_is_400(sim: Simulator, bird: requests.Session, limit: str) -> None:
    response = get(bird, sim, {"limit": limit})
    assert response.status_code == 400
    assert repr(limit) in error(response)["message"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"prefix": "+1212"}, "only allowed together with countryCodes"),
        ({"countryCodes": "US", "prefix": "1212"}, "area code"),
        ({"countryCodes": "USA"}, "'USA'"),
        ({"countryCodes": "US", "types": "premium"}, "'premium'"),
        ({"pageToken": "x" * 8001}, "longer than 8000"),
        ({"pageToken": "not-a-token"}, "pageToken"),
    ],
)
def test_bad_queries_are_400(
    sim: Simulator, bird: requests.Session, params: dict[str, str], message: str
) -> None:
    response = get(bird, sim, params)
    assert response.status_code == 400
    assert message in error(response)["message"]


def test_a_tampered_or_mismatched_token_is_400(sim: Simulator, bird: requests.Session) -> None:
    token = get(bird, sim, {"countryCodes": "US", "limit": 5}).json()["nextPageToken"]
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[-3] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert get(bird, sim, {"countryCodes": "US", "pageToken": tampered}).status_code == 400
    assert get(bird, sim, {"countryCodes": "US", "pageToken": token[:-2]}).status_code == 400
    other = get(bird, sim, {"countryCodes": "NL", "limit": 5, "pageToken": token})
    assert other.status_code == 400
    assert "does not match" in error(other)["message"]
    # the limit may change between pages; the filters may not
    assert get(bird, sim, {"countryCodes": "US", "limit": 9, "pageToken": token}).ok


# --- filters -----------------------------------------------------------------------------------


def test_country_filter_repeated_and_comma_separated(
    sim: Simulator, bird: requests.Session
) -> None:
    repeated, _ = page_all(bird, sim, {"countryCodes": ["GB", "DE"], "limit": 99})
    comma, _ = page_all(bird, sim, {"countryCodes": "GB,DE", "limit": 99})
    assert repeated == comma
    assert {i["countryCode"] for i in repeated} == {"GB", "DE"}
    assert len(repeated) == 400
    assert "countryCodes=GB&countryCodes=DE" in sim.requests[0].query
    nothing, _ = page_all(bird, sim, {"countryCodes": "FR"})
    assert nothing == []


def test_prefix_and_types_filters(sim: Simulator, bird: requests.Session) -> None:
    london, _ = page_all(bird, sim, {"countryCodes": "GB", "prefix": "+4420", "limit": 7})
    assert london
    assert all(i["numberString"].startswith("+4420") for i in london)
    expected = [i for i in sim.stock.items("GB") if i["numberString"].startswith("+4420")]
    assert london == expected

    query = urlencode([("countryCodes", "NL"), ("types", "mobile"), ("types", "toll-free")])
    typed, _ = page_all(bird, sim, {"countryCodes": "NL", "types": ["mobile", "toll-free"]})
    comma, _ = page_all(bird, sim, {"countryCodes": "NL", "types": "mobile,toll-free"})
    assert typed == comma
    assert {i["type"] for i in typed} == {"mobile", "toll-free"}
    assert typed == [i for i in sim.stock.items("NL") if i["type"] in ("mobile", "toll-free")]
    assert any(r.query.startswith(query) for r in sim.requests)


# --- faults ------------------------------------------------------------------------------------


def test_status_429_with_retry_after(sim: Simulator, bird: requests.Session) -> None:
    sim.faults.add("status", status=429, retry_after="2")
    response = get(bird, sim, {"limit": 5})
    assert response.status_code == 429
    assert response.reason == "Too Many Requests"
    assert response.headers["Retry-After"] == "2"
    assert error(response)["code"] == "too_many_requests"
    assert get(bird, sim, {"limit": 5}).status_code == 200


def test_the_rate_limit_refuses_what_is_over_it_in_any_second(
    sim: Simulator, bird: requests.Session
) -> None:
    """Ten requests as fast as one connection sends them, at a limit of 3 a second: each
    admitted request had fewer than 3 admitted in the second before it, each refused one
    had 3, whatever the machine's speed; a request after Retry-After gets in."""
    sim.rate_limit = 3
    responses = [get(bird, sim, {"limit": 5}) for _ in range(10)]
    records = list(sim.requests)
    assert [r.status for r in records] == [r.status_code for r in responses]
    for index, record in enumerate(records):
        before = [r for r in records[:index] if r.status == 200 and r.time > record.time - 1]
        assert record.status == (200 if len(before) < 3 else 429), (index, records)
    refused = [r for r in responses if r.status_code == 429]
    assert refused, "ten requests took more than three seconds"
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    assert error(refused[0]) == {
        "code": "too_many_requests",
        "message": "more than 3 requests in one second; slow down",
    }
    time.sleep(1.0)
    assert get(bird, sim, {"limit": 5}).status_code == 200
    assert sim.stats()["rate_limit"] == 3


def test_the_rate_limit_counts_only_authorized_listing_requests(sim: Simulator) -> None:
    sim.rate_limit = 1
    with requests.Session() as stranger:
        assert get(stranger, sim).status_code == 401
    with requests.Session() as session:
        session.headers["Authorization"] = f"AccessKey {KEY}"
        assert get(session, sim).status_code == 200
        assert get(session, sim).status_code == 429


def test_a_rate_limit_below_one_a_second_is_refused() -> None:
    with pytest.raises(ValueError, match=r"rate_limit 0\.5: at least 1"):
        Simulator(SyntheticStock(size=10), rate_limit=0.5)


def test_503_twice_then_success(sim: Simulator, bird: requests.Session) -> None:
    sim.faults.add("status", status=503, times=2)
    statuses = [get(bird, sim, {"limit": 5}).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert "Retry-After" not in get(bird, sim).headers
    assert [r.status for r in sim.requests] == [503, 503, 200, 200]


def test_faults_by_country_and_page(sim: Simulator, bird: requests.Session) -> None:
    sim.faults.add("status", status=500, times=0, country="NL", page=1)
    _, pages = page_all(bird, sim, {"countryCodes": "US", "limit": 99})
    assert pages == 3
    first = get(bird, sim, {"countryCodes": "NL", "limit": 99})
    assert first.status_code == 200
    token = first.json()["nextPageToken"]
    for _ in range(2):  # times=0: every time
        assert (
            get(bird, sim, {"countryCodes": "NL", "limit": 99, "pageToken": token}).status_code
            == 500
        )
    sim.faults.clear()
    assert get(bird, sim, {"countryCodes": "NL", "limit": 99, "pageToken": token}).ok


def test_html_instead_of_json(sim: Simulator, bird: requests.Session) -> None:
    sim.faults.add("html")
    response = get(bird, sim)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")


def test_repeat_token(sim: Simulator, bird: requests.Session) -> None:
    sim.faults.add("repeat_token")
    query = {"countryCodes": "US", "limit": 10}
    first = get(bird, sim, query).json()["nextPageToken"]
    second = get(bird, sim, dict(query, pageToken=first)).json()
    assert second["nextPageToken"] == first
    third = get(bird, sim, dict(query, pageToken=first)).json()  # the fault was used once
    assert third["nextPageToken"] != first
    assert third["results"] == second["results"]


def test_repeat_token_on_a_later_page(sim: Simulator, bird: requests.Session) -> None:
    query = {"countryCodes": "US", "limit": 10}
    token = get(bird, sim, query).json()["nextPageToken"]
    sim.faults.add("repeat_token", page=1)
    again = get(bird, sim, dict(query, pageToken=token)).json()
    assert again["nextPageToken"] == token
    assert len(again["results"]) == 10


@pytest.mark.parametrize("unreadable", [False, True])
def test_invalid_items(sim: Simulator, bird: requests.Session, unreadable: bool) -> None:
    sim.faults.add("invalid_items", count=5, unreadable=unreadable)
    body = get(bird, sim, {"countryCodes": "US", "limit": 20}).json()
    parsed = [parse_item(item) for item in body["results"]]
    rejected = parsed[:5]
    assert all(type(p).__name__ == "Rejection" for p in rejected)
    assert all(type(p).__name__ == "StockItem" for p in parsed[5:])
    readable = [getattr(p, "number", None) for p in rejected]
    if unreadable:
        assert readable[0] is None
        assert "numberString" not in body["results"][0]
        assert readable[1] is None
        assert all(readable[2:])
    else:
        assert all(readable)
    assert len(body["results"]) == 20
    clean = get(bird, sim, {"countryCodes": "US", "limit": 20}).json()
    assert all(type(parse_item(i)).__name__ == "StockItem" for i in clean["results"])


def test_disconnect_mid_body(sim: Simulator) -> None:
    sim.faults.add("disconnect")
    parts = urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", PATH + "?limit=50", headers={"Authorization": f"AccessKey {KEY}"})
        response = conn.getresponse()
        assert response.status == 200
        length = int(response.headers["Content-Length"])
        with pytest.raises(http.client.IncompleteRead) as raised:
            response.read()
        assert 0 < len(raised.value.partial) < length
    finally:
        conn.close()
    with requests.Session() as session:
        session.headers["Authorization"] = f"AccessKey {KEY}"
        assert get(session, sim, {"limit": 50}).status_code == 200
    assert [r.status for r in sim.requests] == [200, 200]


def test_latency(sim: Simulator, bird: requests.Session) -> None:
    sim.faults.add("latency", seconds=1.0)
    with pytest.raises(requests.ReadTimeout):
        bird.get(sim.url + PATH, timeout=(5, 0.1)).close()
    sim.faults.set_latency(1.0)
    with pytest.raises(requests.ReadTimeout):
        bird.get(sim.url + PATH, timeout=(5, 0.1)).close()
    sim.faults.clear()
    assert get(bird, sim).status_code == 200


def test_fault_arguments_are_checked() -> None:
    faults = Faults()
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.add("teapot")
    with pytest.raises(ValueError, match="needs status"):
        faults.add("status")
    with pytest.raises(ValueError, match="takes no parameter"):
        faults.add("html", status=500)
    with pytest.raises(ValueError, match="fault '429' is status 429: drop status=503"):
        faults.add("429", status=503)
    with pytest.raises(ValueError, match="latency"):
        faults.set_latency(-1)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("429:times=3,retry_after=2", ("status", {"status": 429, "times": 3, "retry_after": "2"})),
        ("status:status=503,times=2", ("status", {"status": 503, "times": 2})),
        ("latency:seconds=0.05", ("latency", {"seconds": 0.05})),
        ("html", ("html", {})),
        ("disconnect:page=2", ("disconnect", {"page": 2})),
        (
            "invalid_items:count=4,unreadable=true,country=nl",
            ("invalid_items", {"count": 4, "unreadable": True, "country": "nl"}),
        ),
        ("repeat-token", ("repeat_token", {})),
    ],
)
def test_parse_cli(spec: str, expected: tuple[str, dict[str, Any]]) -> None:
    assert Faults.parse_cli(spec) == expected
    kind, params = Faults.parse_cli(spec)
    Faults().add(kind, **params)


@pytest.mark.parametrize(
    "spec", ["teapot", "429:times", "html:status=500", "429:times=x", "429:status=503"]
)
def test_parse_cli_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        Faults.parse_cli(spec)


# --- control endpoints -------------------------------------------------------------------------


def test_control_endpoints(sim: Simulator) -> None:
    with requests.Session() as control, requests.Session() as client:
        client.headers["Authorization"] = f"AccessKey {KEY}"
        stats = control.get(sim.url + "/_simulator/stats", timeout=10)
        assert stats.json()["requests"] == 0
        assert stats.json()["numbers"] == 800

        added = control.post(
            sim.url + "/_simulator/faults", json={"kind": "status", "status": 503, "times": 2}
        )
        assert added.json() == {"faults": 1}
        assert [get(client, sim).status_code for _ in range(3)] == [503, 503, 200]

        control.post(sim.url + "/_simulator/faults", json={"kind": "html", "times": 0})
        assert get(client, sim).headers["Content-Type"].startswith("text/html")
        assert control.delete(sim.url + "/_simulator/faults").json() == {"faults": 0}
        assert get(client, sim).headers["Content-Type"] == "application/json"

        # a status code as the kind, as --fault takes it
        control.post(sim.url + "/_simulator/faults", json={"kind": "429", "retry_after": 2})
        control.post(sim.url + "/_simulator/faults", json={"kind": 503})
        limited = get(client, sim)
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "2")
        assert [get(client, sim).status_code for _ in range(2)] == [503, 200]

        bad = control.post(sim.url + "/_simulator/faults", json={"kind": "teapot"})
        assert bad.status_code == 400
        assert "teapot" in bad.json()["message"]

        counts = control.post(sim.url + "/_simulator/evolve", json={"removal_rate": 0.1}).json()
        assert counts["removed"] == 80
        assert set(counts) == {"price_changes", "removed", "added", "relisted"}
        assert control.post(sim.url + "/_simulator/evolve").status_code == 200
        assert sim.stock.steps == 2
        wrong = control.post(sim.url + "/_simulator/evolve", json={"removal_rate": 2})
        assert wrong.status_code == 400

        stats = control.get(sim.url + "/_simulator/stats", timeout=10).json()
        assert stats["requests"] == 8
        assert stats["statuses"] == {"200": 4, "429": 1, "503": 3}
        assert control.get(sim.url + "/_simulator/nothing").status_code == 404


def test_stop_ends_open_connections_and_restart_works() -> None:
    sim = Simulator(SyntheticStock(size=50), access_key=KEY, organization_id=ORG).start()
    session = requests.Session()
    session.headers["Authorization"] = f"AccessKey {KEY}"
    try:
        assert get(session, sim).ok  # leaves a keep-alive connection open
        sim.faults.set_latency(30)
        sim.stop()
        with pytest.raises(RuntimeError, match="not running"):
            _ = sim.url
    finally:
        session.close()
        sim.stop()


# --- command line ------------------------------------------------------------------------------


def test_cli_help() -> None:
    result = CliRunner().invoke(simulator_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--seed",
        "--countries",
        "--size",
        "--access-key",
        "--organization-id",
        "--latency",
        "--fault",
        "--evolve-every",
        "--allow-remote",
        "--rate-limit",
    ):
        assert option in result.output


def test_cli_refuses_a_remote_host_and_bad_faults() -> None:
    result = CliRunner().invoke(simulator_command, ["--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "loopback" in result.output
    result = CliRunner().invoke(simulator_command, ["--port", "0", "--fault", "teapot"])
    assert result.exit_code == 2
    assert "teapot" in result.output
    result = CliRunner().invoke(simulator_command, ["--port", "0", "--countries", "US,XX"])
    assert result.exit_code == 2
    assert "XX" in result.output
    # these parsed, then failed as the simulator armed them: a traceback, exit 1
    for fault in ("latency:seconds=-5", "latency", "status", "status:status=99", "429:times=-1"):
        result = CliRunner().invoke(simulator_command, ["--port", "0", "--fault", fault])
        assert result.exit_code == 2, (fault, result.output)
        assert f"Invalid value for '--fault': {fault!r}: " in result.output
        assert "Traceback" not in result.output
    result = CliRunner().invoke(simulator_command, ["--port", "0", "--rate-limit", "0"])
    assert result.exit_code == 2
    assert "--rate-limit" in result.output


def test_cli_serves_until_sigterm() -> None:
    code = "from etl.simulator.cli import simulator_command; simulator_command()"
    args = ["--port", "0", "--size", "300", "--countries", "NL", "--fault", "503:times=1"]
    args += ["--rate-limit", "50"]
    env = {**os.environ, "NUMBERS_ETL_SIMULATOR_ACCESS_KEY": KEY}
    with subprocess.Popen(
        [sys.executable, "-c", code, *args, "--organization-id", ORG],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"NUMBERS_ETL_API_URL=(http://127\.0\.0\.1:\d+) ", line)
            assert match, line
            assert f"NUMBERS_ETL_ORGANIZATION_ID={ORG}" in line
            assert KEY not in line
            url = match[1]
            with requests.Session() as session:
                session.headers["Authorization"] = f"AccessKey {KEY}"
                statuses = []
                for _ in range(2):
                    response = session.get(url + PATH, params={"limit": 99}, timeout=10)
                    statuses.append(response.status_code)
                    response.close()
                assert statuses == [503, 200]
                assert session.get(url + "/_simulator/stats", timeout=10).json()["rate_limit"] == 50
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_old_request_records_are_dropped_but_counted() -> None:
    stock = SyntheticStock(size=20)
    with (
        Simulator(stock, access_key=KEY, organization_id=ORG, keep_requests=10) as sim,
        requests.Session() as session,
    ):
        session.headers["Authorization"] = f"AccessKey {KEY}"
        for _ in range(25):
            assert get(session, sim).ok
        assert 5 <= len(sim.requests) <= 10
        assert sim.stats()["requests"] == 25

"""BirdClient over real HTTP against the simulator, one fault at a time."""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import logging
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from etl.config import Secret
from etl.errors import (
    AuthError,
    FatalSourceError,
    Interrupted,
    PaginationError,
    RetriesExhausted,
    SourceError,
)
from etl.records import Page, Scope
from etl.simulator import Simulator, SyntheticStock
from etl.source.client import BirdClient, ClientStats, parse_retry_after
from etl.source.paginator import iter_pages
from etl.source.ratelimit import RateLimiter
from tests.conftest import ACCESS_KEY, ORGANIZATION_ID

QUERY = {"countryCodes": ["US"], "limit": 5}


class Waits(list[float]):
    """A ``sleep`` that records the waits instead of sleeping; ``then`` runs on each."""

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.then = then

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.then is not None:
            self.then()


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def make_client(simulator: Simulator, waits: Waits) -> Iterator[Callable[..., BirdClient]]:
    clients: list[BirdClient] = []

    def make(**options: Any) -> BirdClient:
        options.setdefault("sleep", waits)
        options.setdefault("rate_limiter", RateLimiter(1000))
        key = options.pop("access_key", ACCESS_KEY)
        org = options.pop("organization_id", ORGANIZATION_ID)
        client = BirdClient(simulator.url, Secret(key), org, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., BirdClient]) -> BirdClient:
    return make_client()


def served(sim: Simulator) -> list[int]:
    return [r.status for r in sim.requests]


def test_a_page(client: BirdClient, simulator: Simulator) -> None:
    before = time.time()
    body, fetched_at = client.fetch({"countryCodes": ["US", "NL"], "limit": 7})
    assert len(body["results"]) == 7
    assert isinstance(body["nextPageToken"], str)
    assert fetched_at.tzinfo is not None
    assert fetched_at.utcoffset() is not None
    assert fetched_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert fetched_at.timestamp() >= before
    assert client.stats.snapshot() == {"requests": 1, "retries": 0, "errors": {}}


class RecordingLimiter(RateLimiter):
    """Records when each request was reported written."""

    def __init__(self) -> None:
        super().__init__(1000)
        self.writes: list[float] = []

    def written(self) -> None:
        self.writes.append(time.monotonic())
        super().written()


def test_a_request_is_reported_written_when_written_not_when_answered(
    make_client: Callable[..., BirdClient], simulator: Simulator
) -> None:
    """The rate limiter paces writes (see RateLimiter.written): a page fetched through the
    pooled adapter is reported as soon as its request is written, not after Bird's 0.5 s
    answer; one sent early on a Channel, too; a request that fails is reported all the
    same, so no start is ever left unreported."""
    limiter = RecordingLimiter()
    client = make_client(rate_limiter=limiter)
    simulator.faults.set_latency(0.5)
    before = time.monotonic()
    client.fetch({"countryCodes": ["US"], "limit": 3})
    assert len(limiter.writes) == 1
    assert limiter.writes[0] - before < 0.4 < time.monotonic() - before
    with client.channel() as channel:
        sent = time.monotonic()
        early = channel.send({"countryCodes": ["US"], "limit": 3})
        assert early is not None
        assert len(limiter.writes) == 2
        assert limiter.writes[1] - sent < 0.4
        early.reply()
    simulator.faults.set_latency(0)
    simulator.faults.add("status", status=503, times=3)
    with pytest.raises(RetriesExhausted):
        make_client(rate_limiter=limiter, max_attempts=3).fetch(QUERY)
    assert len(limiter.writes) == 5
    assert not limiter._unwritten


def test_lists_are_sent_as_repeated_parameters(client: BirdClient, simulator: Simulator) -> None:
    client.fetch({"countryCodes": ["US", "NL"], "types": ["mobile"], "limit": 99})
    assert simulator.requests[-1].params["countryCodes"] == ["US", "NL"]
    assert "countryCodes=US&countryCodes=NL" in simulator.requests[-1].query


@pytest.mark.parametrize("retry_after", ["2", None])
def test_429_is_retried(
    client: BirdClient, simulator: Simulator, waits: Waits, retry_after: str | None
) -> None:
    simulator.faults.add("status", status=429, retry_after=retry_after, times=2)
    body, _ = client.fetch(QUERY)
    assert len(body["results"]) == 5
    assert served(simulator) == [429, 429, 200]
    assert len(waits) == 2
    if retry_after is not None:
        assert waits == [2.0, 2.0]
    else:  # exponential backoff with full jitter: 0..0.5 s, then 0..1 s
        assert 0 <= waits[0] <= 0.5
        assert 0 <= waits[1] <= 1.0
    assert client.stats.snapshot() == {"requests": 3, "retries": 2, "errors": {"429": 2}}


def test_429_with_an_http_date(client: BirdClient, simulator: Simulator, waits: Waits) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    simulator.faults.add("status", status=429, retry_after=when, times=1)
    client.fetch(QUERY)
    assert len(waits) == 1
    assert 25 <= waits[0] <= 30


def test_retry_after_is_capped_by_the_budget(
    make_client: Callable[..., BirdClient], simulator: Simulator, waits: Waits
) -> None:
    client = make_client(max_total_wait=5.0)
    simulator.faults.add("status", status=429, retry_after="3", times=10)
    with pytest.raises(RetriesExhausted) as raised:
        client.fetch(QUERY)
    assert waits == [3.0, 2.0]  # 3 s, then only the 2 s left of the budget
    assert sum(waits) <= 5.0
    message = str(raised.value)
    assert "429" in message
    assert "3 times" in message
    assert f"/organizations/{ORGANIZATION_ID}/numbers-stock-items" in message


def test_a_retry_after_beyond_the_budget_waits_only_the_budget(
    client: BirdClient, simulator: Simulator, waits: Waits
) -> None:
    simulator.faults.add("status", status=429, retry_after="3600", times=1)
    client.fetch(QUERY)
    assert waits == [60.0]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_then_success(client: BirdClient, simulator: Simulator, status: int) -> None:
    simulator.faults.add("status", status=status, times=2)
    body, _ = client.fetch(QUERY)
    assert len(body["results"]) == 5
    assert served(simulator) == [status, status, 200]
    assert client.stats.snapshot()["errors"] == {str(status): 2}


def test_408_request_timeout_is_retried(
    client: BirdClient, simulator: Simulator, waits: Waits
) -> None:
    simulator.faults.add("status", status=408, retry_after="1", times=2)
    body, _ = client.fetch(QUERY)
    assert len(body["results"]) == 5
    assert served(simulator) == [408, 408, 200]
    assert waits == [1.0, 1.0]
    assert client.stats.snapshot()["errors"] == {"408": 2}


def test_408_is_retried_within_the_same_budget(
    client: BirdClient, simulator: Simulator, waits: Waits
) -> None:
    simulator.faults.add("status", status=408, times=100)
    with pytest.raises(RetriesExhausted, match="408 Request Timeout"):
        client.fetch(QUERY)
    assert served(simulator) == [408] * 6
    assert len(waits) == 5


def test_retries_are_exhausted(client: BirdClient, simulator: Simulator, waits: Waits) -> None:
    simulator.faults.add("status", status=503, times=100)
    with pytest.raises(RetriesExhausted) as raised:
        client.fetch(QUERY)
    assert served(simulator) == [503] * 6
    assert len(waits) == 5
    message = str(raised.value)
    assert "503 Service Unavailable" in message
    assert "failed 6 times" in message
    assert f"GET /organizations/{ORGANIZATION_ID}/numbers-stock-items" in message
    assert client.stats.snapshot() == {"requests": 6, "retries": 5, "errors": {"503": 6}}


def test_max_attempts(make_client: Callable[..., BirdClient], simulator: Simulator) -> None:
    client = make_client(max_attempts=2)
    simulator.faults.add("status", status=500, times=100)
    with pytest.raises(RetriesExhausted, match="failed 2 times"):
        client.fetch(QUERY)
    assert served(simulator) == [500, 500]


def test_connection_closed_mid_body_then_success(client: BirdClient, simulator: Simulator) -> None:
    simulator.faults.add("disconnect", times=1)
    body, _ = client.fetch(QUERY)
    assert len(body["results"]) == 5
    assert client.stats.snapshot()["errors"] == {"ChunkedEncodingError": 1}


def test_a_slow_response_is_retried(
    make_client: Callable[..., BirdClient], simulator: Simulator
) -> None:
    """The first try times out; the server is quick again by the time of the retry."""
    client = make_client(read_timeout=0.2, sleep=Waits(then=simulator.faults.clear))
    simulator.faults.set_latency(2.0)
    body, _ = client.fetch(QUERY)
    assert len(body["results"]) == 5
    assert client.stats.snapshot()["errors"] == {"ReadTimeout": 1}


def test_an_unreachable_server_exhausts_retries(waits: Waits) -> None:
    client = BirdClient(
        "http://127.0.0.1:9",  # discard port: nothing listens
        Secret(ACCESS_KEY),
        ORGANIZATION_ID,
        rate_limiter=RateLimiter(1000),
        connect_timeout=0.5,
        sleep=waits,
    )
    with client, pytest.raises(RetriesExhausted) as raised:
        client.fetch(QUERY)
    assert "ConnectionError" in str(raised.value)
    assert "pageToken" not in str(raised.value)


def test_an_html_page_is_not_json(client: BirdClient, simulator: Simulator) -> None:
    simulator.faults.add("html")
    with pytest.raises(PaginationError) as raised:
        client.fetch(QUERY)
    message = str(raised.value)
    assert "body was not JSON" in message
    assert "Content-Type: text/html" in message
    assert "<" in message
    assert served(simulator) == [200]  # not retried


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_access_is_an_auth_error(
    client: BirdClient, simulator: Simulator, status: int
) -> None:
    simulator.faults.add("status", status=status)
    with pytest.raises(AuthError) as raised:
        client.fetch(QUERY)
    message = str(raised.value)
    assert str(status) in message
    assert "access key or organization id" in message
    assert "NUMBERS_ETL_ACCESS_KEY" in message
    assert len(simulator.requests) == 1  # not retried


def test_a_wrong_access_key(make_client: Callable[..., BirdClient]) -> None:
    client = make_client(access_key="wrong-key-1234")
    with pytest.raises(AuthError) as raised:
        client.fetch(QUERY)
    assert "wrong-key-1234" not in str(raised.value)


def test_a_wrong_organization(make_client: Callable[..., BirdClient]) -> None:
    client = make_client(organization_id="someone-else")
    with pytest.raises(AuthError, match="organizations/someone-else"):
        client.fetch(QUERY)


def test_another_4xx_is_fatal(client: BirdClient, simulator: Simulator) -> None:
    simulator.faults.add("status", status=400)
    with pytest.raises(FatalSourceError) as raised:
        client.fetch(QUERY)
    assert not isinstance(raised.value, AuthError)
    assert "400 Bad Request" in str(raised.value)
    assert len(simulator.requests) == 1


def test_a_redirect_is_not_followed(client: BirdClient, simulator: Simulator) -> None:
    simulator.faults.add("status", status=301)
    with pytest.raises(FatalSourceError) as raised:
        client.fetch(QUERY)
    assert "301 Moved Permanently" in str(raised.value)
    assert "does not follow redirects" in str(raised.value)
    assert "NUMBERS_ETL_API_URL" in str(raised.value)
    assert len(simulator.requests) == 1


def test_the_access_key_never_shows(
    make_client: Callable[..., BirdClient],
    simulator: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(max_attempts=3)
    caplog.set_level(logging.DEBUG)
    messages: list[str] = [repr(client), repr(client.stats), str(vars(client))]
    faults: list[tuple[str, dict[str, Any]]] = [
        ("status", {"status": 503, "times": 3}),
        ("status", {"status": 429, "retry_after": "1", "times": 3}),
        ("status", {"status": 401}),
        ("status", {"status": 400}),
        ("html", {}),
        ("disconnect", {"times": 3}),
    ]
    for fault, options in faults:
        simulator.faults.clear()
        simulator.faults.add(fault, **options)
        with pytest.raises(SourceError) as raised:
            client.fetch(QUERY)
        messages.append(str(raised.value))
        messages.append(repr(raised.value))
    messages.extend(record.getMessage() for record in caplog.records)
    messages.extend(str(vars(record)) for record in caplog.records)
    assert any(r.name == "etl.source" and r.levelno == logging.WARNING for r in caplog.records)
    for message in messages:
        assert ACCESS_KEY not in message


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize(
    "key", ["sk_live_first_line\nsk_live_second_line", "sk_live_zero\u200bwidth_space"]
)
def test_an_access_key_a_header_cannot_carry_is_a_source_error_that_hides_it(
    make_client: Callable[..., BirdClient], simulator: Simulator, key: str, ahead: bool
) -> None:
    """Config refuses such a key; a client given one anyway raised http.client's bare
    ValueError (its message the whole key) or UnicodeEncodeError, in a traceback."""
    client = make_client(access_key=key, rate_limiter=RateLimiter(UNLIMITED))
    with client.channel() as channel, pytest.raises(FatalSourceError) as raised:
        client.fetch(QUERY, channel.send(QUERY) if ahead else None)
    shown = "".join(traceback.format_exception(raised.value))
    assert "a header holds a character HTTP cannot carry" in shown
    assert "access_key" in shown
    for part in ("sk_live", "first_line", "second_line", "zero", "width_space"):
        assert part not in shown
    assert simulator.requests == []
    assert client.stats.snapshot()["retries"] == 0


def test_a_set_stop_interrupts_before_sending(make_client: Callable[..., BirdClient]) -> None:
    stop = threading.Event()
    client = make_client(stop=stop, sleep=None)
    stop.set()
    with pytest.raises(Interrupted):
        client.fetch(QUERY)


def test_stop_set_while_waiting_to_retry(
    make_client: Callable[..., BirdClient], simulator: Simulator
) -> None:
    stop = threading.Event()
    client = make_client(stop=stop, sleep=None)
    simulator.faults.add("status", status=429, retry_after="30", times=1)
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(Interrupted):
        client.fetch(QUERY)
    assert len(simulator.requests) == 1


def test_threads_share_one_client(client: BirdClient) -> None:
    stats = ClientStats()
    client.stats = stats
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            for _ in range(5):
                client.fetch(QUERY)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert stats.snapshot()["requests"] == 80


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("5", 5.0), (" 7 ", 7.0), (None, None), ("", None), ("soon", None), ("-3", None)],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize("header", ["Fri, 31 Dec 10000 23:59:59 GMT", "9" * 5000])
def test_an_unparseable_retry_after_is_ignored(
    client: BirdClient, simulator: Simulator, waits: Waits, header: str
) -> None:
    """urllib3 raises ValueError (not InvalidHeader) for these: a bare crash until it was
    caught; now the 429 is retried with the usual backoff, as without the header."""
    assert parse_retry_after(header) is None
    simulator.faults.add("status", status=429, retry_after=header, times=1)
    body, _ = client.fetch(QUERY)
    assert len(body["results"]) == 5
    assert served(simulator) == [429, 200]
    assert len(waits) == 1
    assert 0 <= waits[0] <= 0.5  # the first step of the exponential backoff


def test_parse_retry_after_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# --- pages sent one ahead (Channel) ---------------------------------------------------------


def pages_of(client: BirdClient, **options: Any) -> list[Page]:
    return list(iter_pages(client, Scope("US"), page_size=5, max_pages=1000, **options))


UNLIMITED = 1e9  # requests/s: the next request may always go out at once


@pytest.fixture
def ahead(make_client: Callable[..., BirdClient]) -> BirdClient:
    """A client that always sends the next page's request ahead."""
    return make_client(rate_limiter=RateLimiter(UNLIMITED))


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_pages_are_the_same_sent_ahead_or_not(
    ahead: BirdClient, make_client: Callable[..., BirdClient], simulator: Simulator
) -> None:
    early = pages_of(ahead)
    plain_client = make_client(rate_limiter=RateLimiter(UNLIMITED))
    plain_client.pipelining = False
    plain = pages_of(plain_client)
    assert len(early) > 10
    assert [(p.index, p.items, p.next_page_token) for p in early] == [
        (p.index, p.items, p.next_page_token) for p in plain
    ]


def test_the_next_request_goes_out_before_the_page_is_used(
    ahead: BirdClient, simulator: Simulator
) -> None:
    client = ahead
    pages = iter_pages(client, Scope("US"), page_size=5, max_pages=1000)
    assert next(pages).index == 0
    wait_until(lambda: len(simulator.requests) == 2)  # page 1, asked for already
    assert next(pages).index == 1
    wait_until(lambda: len(simulator.requests) == 3)
    pages.close()  # a response not read: its connection is closed, nothing is raised
    assert client.stats.snapshot() == {"requests": 3, "retries": 0, "errors": {}}


def test_a_connection_closed_while_idle_is_replaced(
    ahead: BirdClient, simulator: Simulator
) -> None:
    with ahead.channel() as channel:
        first = channel.send(QUERY)
        assert first is not None
        ahead.fetch(QUERY, first)
        assert simulator._server is not None
        simulator._server.drop_connections()  # as a server does with an idle keep-alive
        time.sleep(0.05)
        second = channel.send(QUERY)
        assert second is not None
        body, _ = ahead.fetch(QUERY, second)
    assert len(body["results"]) == 5
    assert ahead.stats.snapshot() == {"requests": 2, "retries": 0, "errors": {}}


def test_without_a_proxy_only(monkeypatch: pytest.MonkeyPatch, simulator: Simulator) -> None:
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    client = BirdClient(
        simulator.url, Secret(ACCESS_KEY), ORGANIZATION_ID, rate_limiter=RateLimiter(1000)
    )
    with client, client.channel() as channel:
        assert not client.pipelining
        assert channel.send(QUERY) is None
    assert simulator.requests == []


def test_nothing_goes_out_ahead_of_the_rate_limit(
    make_client: Callable[..., BirdClient], simulator: Simulator
) -> None:
    client = make_client(rate_limiter=RateLimiter(1))  # one request a second
    pages = iter_pages(client, Scope("US"), page_size=5, max_pages=1000)
    next(pages)
    time.sleep(0.1)
    assert len(simulator.requests) == 1  # the next one waits for the limit, as always
    assert next(pages).index == 1
    pages.close()


@pytest.mark.parametrize(
    ("kind", "options", "error"),
    [
        ("status", {"status": 503}, "503"),
        ("status", {"status": 429, "retry_after": "0"}, "429"),
        ("disconnect", {}, "ChunkedEncodingError"),
    ],
)
def test_a_page_sent_ahead_that_fails_is_retried(
    ahead: BirdClient, simulator: Simulator, kind: str, options: dict[str, Any], error: str
) -> None:
    client = ahead
    expected = pages_of(client)
    simulator.requests.clear()
    simulator.faults.add(kind, page=2, **options)
    pages = pages_of(client)
    assert [p.items for p in pages] == [p.items for p in expected]
    assert client.stats.snapshot()["errors"] == {error: 1}


def test_a_page_sent_ahead_that_times_out_is_retried(
    make_client: Callable[..., BirdClient], simulator: Simulator
) -> None:
    client = make_client(read_timeout=0.3, rate_limiter=RateLimiter(UNLIMITED))
    simulator.faults.add("latency", seconds=2.0, page=2)
    pages = pages_of(client)
    assert [p.index for p in pages] == list(range(len(pages)))
    assert client.stats.snapshot()["errors"] == {"ReadTimeout": 1}


def test_a_page_sent_ahead_that_is_refused_is_fatal(
    ahead: BirdClient, simulator: Simulator
) -> None:
    simulator.faults.add("status", status=400, page=2)
    with pytest.raises(FatalSourceError, match="400 Bad Request"):
        pages_of(ahead)
    assert ahead.stats.snapshot()["errors"] == {"400": 1}


def test_https_with_a_ca_bundle_ahead_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stock: SyntheticStock
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with Simulator(
        stock, access_key=ACCESS_KEY, organization_id=ORGANIZATION_ID, ssl_context=context
    ) as simulator:
        assert simulator.url.startswith("https://")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        client = BirdClient(
            simulator.url, Secret(ACCESS_KEY), ORGANIZATION_ID, rate_limiter=RateLimiter(UNLIMITED)
        )
        with client:
            pages = pages_of(client)
        assert len(pages) > 10
        assert len(simulator.requests) == len(pages)
        assert client.stats.snapshot()["errors"] == {}


def test_https_refuses_a_certificate_it_cannot_verify(stock: SyntheticStock, waits: Waits) -> None:
    ca = trustme.CA()  # a CA the client does not know
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with Simulator(
        stock, access_key=ACCESS_KEY, organization_id=ORGANIZATION_ID, ssl_context=context
    ) as simulator:
        client = BirdClient(
            simulator.url,
            Secret(ACCESS_KEY),
            ORGANIZATION_ID,
            rate_limiter=RateLimiter(UNLIMITED),
            max_attempts=2,
            sleep=waits,
        )
        with client, pytest.raises(RetriesExhausted, match="SSLError"):
            pages_of(client)
        assert simulator.requests == []  # nothing got past the handshake


# --- replies the simulator cannot give: a scripted server -----------------------------------

Script = bytes | Callable[[socket.socket], None]


class Scripted:
    """A raw HTTP/1.1 server on 127.0.0.1 for replies the simulator cannot give (an error body
    that echoes the access key, a body that trickles in): each request gets the next scripted
    reply, the last one again and again. A reply is the raw bytes to send, or a function that
    writes to the socket itself. ``heads`` are the requests' header blocks as received."""

    def __init__(self, *replies: Script) -> None:
        self.replies = list(replies)
        self.heads: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                self.heads.append(head.decode("latin-1"))
                script = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
                if callable(script):
                    script(conn)
                else:
                    conn.sendall(script)
        except OSError:
            return  # the client went away, or close() below

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(5)


def raw_reply(status: int, reason: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
def scripted() -> Iterator[Callable[..., tuple[Scripted, BirdClient]]]:
    """``scripted(*replies, **client_options)``: a Scripted server and a client of it."""
    made: list[tuple[Scripted, BirdClient]] = []

    def make(*replies: Script, **options: Any) -> tuple[Scripted, BirdClient]:
        server = Scripted(*replies)
        options.setdefault("sleep", Waits())
        options.setdefault("rate_limiter", RateLimiter(1000))
        key = options.pop("access_key", ACCESS_KEY)
        client = BirdClient(server.url, Secret(key), ORGANIZATION_ID, **options)
        made.append((server, client))
        return server, client

    yield make
    for server, client in made:
        client.close()
        server.close()


KEY = "SECRETKEY0123456789abcdefghijklmnopqrstuv"  # 40 characters


def assert_no_part_of_key(text: str) -> None:
    for start in range(len(KEY) - 5):
        assert KEY[start : start + 6] not in text, text


@pytest.mark.parametrize("status", [400, 200])
def test_a_key_echoed_where_a_long_body_is_cut_shows_no_part_of_it(
    scripted: Callable[..., tuple[Scripted, BirdClient]], status: int
) -> None:
    """A server (or proxy) echoing the request's headers in its body, the key straddling the
    300th character where the body is shortened for the message: the key was redacted only
    after the cut, so its first 20-odd characters showed."""
    body = b'{"echo": "' + b"x" * 250 + b" Authorization: AccessKey " + KEY.encode() + b'"}'
    if status == 200:
        body = body[1:]  # not JSON: the "body was not JSON" message quotes it
    reply = raw_reply(status, "Bad Request" if status == 400 else "OK", body)
    _, client = scripted(reply, access_key=KEY)
    with pytest.raises(FatalSourceError if status == 400 else PaginationError) as raised:
        client.fetch(QUERY)
    assert "AccessKey ***" in str(raised.value)
    assert_no_part_of_key(str(raised.value))


def test_a_key_in_a_long_exception_message_is_redacted_before_the_cut(
    scripted: Callable[..., tuple[Scripted, BirdClient]],
) -> None:
    _, client = scripted(raw_reply(200, "OK", b"{}"), access_key=KEY)
    exc = OSError("x" * 270 + " AccessKey " + KEY)
    for error in (client._failure("ConnectionError", exc), client._fatal("SSLError", exc)):
        assert "AccessKey ***" in str(error)
        assert_no_part_of_key(str(error))


def drip(conn: socket.socket) -> None:
    """A 200 whose body comes a byte every 50 ms: each read is quick, the whole is not."""
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    )
    for byte in b'{"results": [' + b" " * 187:
        conn.sendall(bytes([byte]))
        time.sleep(0.05)


@pytest.mark.parametrize("ahead", [False, True])
def test_a_body_that_trickles_in_is_cut_at_the_total_timeout(
    scripted: Callable[..., tuple[Scripted, BirdClient]], ahead: bool
) -> None:
    """read_timeout bounds each wait for bytes, so a body dripping in held a page for as long
    as the server liked (10 s here, each try; minutes in the reviewer's probe); now each try
    ends at total_timeout and is retried."""
    server, client = scripted(drip, read_timeout=1, total_timeout=0.5, max_attempts=2)
    started = time.monotonic()
    with client.channel() as channel, pytest.raises(RetriesExhausted) as raised:
        client.fetch(QUERY, channel.send(QUERY) if ahead else None)
    assert time.monotonic() - started < 3  # two tries of 0.5 s, not two of 10 s
    assert "still coming in after 0.5s" in str(raised.value)
    assert "failed 2 times" in str(raised.value)
    assert client.stats.snapshot()["errors"] == {"ReadTimeout": 2}
    assert len(server.heads) == 2


def drip_head(conn: socket.socket) -> None:
    """A 200 whose status line and headers come a byte every 50 ms (10 s in all), each byte
    well within read_timeout."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"p" * 120
    for byte in head + b"\r\nContent-Length: 15\r\n\r\n":
        conn.sendall(bytes([byte]))
        time.sleep(0.05)
    conn.sendall(b'{"results": []}')


@pytest.mark.parametrize("way", ["straight", "ahead", "proxy"])
def test_headers_that_trickle_in_are_cut_at_the_total_timeout(
    scripted: Callable[..., tuple[Scripted, BirdClient]],
    monkeypatch: pytest.MonkeyPatch,
    way: str,
) -> None:
    """read_timeout bounds each wait for bytes and total_timeout was checked only as the
    body came in, so headers sent a byte at a time held a page for as long as the server
    (or a proxy on the way) liked: 10 s here, each try. Through a proxy, the client talks
    to the scripted server as an HTTP proxy, with an absolute URL."""
    options: dict[str, Any] = {"read_timeout": 1, "total_timeout": 0.5, "max_attempts": 2}
    if way == "proxy":
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        proxy = Scripted(drip_head)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        server, client = scripted(raw_reply(200, "OK", b"{}"), **options)  # never reached
    else:
        server, client = scripted(drip_head, **options)
    started = time.monotonic()
    try:
        with client.channel() as channel, pytest.raises(RetriesExhausted) as raised:
            client.fetch(QUERY, channel.send(QUERY) if way == "ahead" else None)
    finally:
        if way == "proxy":
            proxy.close()
    assert time.monotonic() - started < 3  # two tries of 0.5 s, not two of 10 s
    assert "ReadTimeout on GET" in str(raised.value)
    assert "status line and headers were still coming in after 0.5s" in str(raised.value)
    assert "failed 2 times" in str(raised.value)
    assert client.stats.snapshot()["errors"] == {"ReadTimeout": 2}
    if way == "proxy":
        assert server.heads == []
        assert len(proxy.heads) == 2
        assert proxy.heads[0].startswith(f"GET {server.url}/organizations/")
    else:
        assert len(server.heads) == 2


@pytest.mark.parametrize("ahead", [False, True])
def test_headers_slower_than_read_timeout_are_a_read_timeout(
    scripted: Callable[..., tuple[Scripted, BirdClient]], ahead: bool
) -> None:
    """The deadline does not hide read_timeout: a head that stops coming fails the attempt
    at read_timeout, well before total_timeout, as a plain read timeout."""

    def stall(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        time.sleep(3)

    _, client = scripted(stall, read_timeout=0.3, total_timeout=30, max_attempts=1)
    started = time.monotonic()
    with client.channel() as channel, pytest.raises(RetriesExhausted) as raised:
        client.fetch(QUERY, channel.send(QUERY) if ahead else None)
    assert time.monotonic() - started < 2
    assert "ReadTimeout" in str(raised.value)
    assert "still coming in" not in str(raised.value)
    assert client.stats.snapshot()["errors"] == {"ReadTimeout": 1}


def test_a_keep_alive_connection_serves_the_next_page_after_a_deadline_read(
    scripted: Callable[..., tuple[Scripted, BirdClient]],
) -> None:
    """The reader that bounds the headers is closed with its response, not the socket: the
    next pages go out on the same connection, past the first response's deadline."""
    body = b'{"results": []}'
    server, client = scripted(raw_reply(200, "OK", body), read_timeout=5, total_timeout=0.2)
    for _ in range(3):
        parsed, _ = client.fetch(QUERY)
        assert parsed == {"results": []}
        time.sleep(0.3)  # past the first response's deadline
    assert len(server.heads) == 3
    assert len(server._conns) == 1
    assert client.stats.snapshot()["errors"] == {}


def slow_body(conn: socket.socket) -> None:
    """Headers at once, the body 0.6 s later."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n")
    time.sleep(0.6)
    conn.sendall(b'{"results": []}')


@pytest.mark.parametrize("ahead", [False, True])
def test_the_body_is_read_with_read_timeout_again_once_the_headers_are_in(
    scripted: Callable[..., tuple[Scripted, BirdClient]], ahead: bool
) -> None:
    """The socket's timeout goes back to read_timeout after the headers: the body's wait is
    not cut at what was left of the deadline (a bare "Read timed out"), and the body that
    comes too late fails as one still coming in after total_timeout."""
    _, client = scripted(slow_body, read_timeout=5, total_timeout=0.3, max_attempts=1)
    with client.channel() as channel, pytest.raises(RetriesExhausted) as raised:
        client.fetch(QUERY, channel.send(QUERY) if ahead else None)
    assert "the response was still coming in after 0.3s (15 bytes of body so far)" in str(
        raised.value
    )


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_a_body_larger_than_32_mib_fails_the_page(
    scripted: Callable[..., tuple[Scripted, BirdClient]], ahead: bool, encoding: str
) -> None:
    body = b" " * ((32 << 20) + 1)  # gzip: 33 MiB from about 30 KB, a small bomb
    if encoding == "gzip":
        body = gzip.compress(body, compresslevel=1)
    reply = raw_reply(200, "OK", body, f"Content-Encoding: {encoding}")
    server, client = scripted(reply)
    with client.channel() as channel, pytest.raises(FatalSourceError) as raised:
        client.fetch(QUERY, channel.send(QUERY) if ahead else None)
    assert "returned a body of more than 32 MiB" in str(raised.value)
    assert "NUMBERS_ETL_API_URL" in str(raised.value)
    assert client.stats.snapshot()["errors"] == {"BodyTooLarge": 1}
    assert len(server.heads) == 1  # not retried


def test_a_retry_warning_names_its_scope(
    make_client: Callable[..., BirdClient],
    simulator: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # countries page at once: the warning said which request, not which country it was for
    client = make_client(max_attempts=3)
    simulator.faults.add("status", status=503, times=1)
    caplog.set_level(logging.WARNING, "etl.source")
    scope = Scope("US", "+1212", ("local", "mobile"))
    body, _ = client.fetch({**scope.query(), "limit": 5})
    assert len(body["results"]) <= 5
    (record,) = [r for r in caplog.records if "retry 1 of 2" in r.getMessage()]
    assert record.getMessage().startswith("scope US +1212 local/mobile: 503 Service Unavailable")
    assert record.__dict__["scope"] == "US +1212 local/mobile"

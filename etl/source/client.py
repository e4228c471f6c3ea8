"""The HTTP client of Bird's stock listing: one session, the access key, timeouts, the rate
limit and bounded retries.

One request reads as: wait for the rate limit, send, read the response within
``total_timeout``, classify it (a page, a retriable failure or a fatal one), and on a
retriable failure back off and try again, at most ``max_attempts`` times and
``max_total_wait`` seconds of waiting per page."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import msgspec
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from etl import __version__
from etl.config import Secret
from etl.errors import (
    AuthError,
    FatalSourceError,
    Interrupted,
    PaginationError,
    RetriableSourceError,
    RetriesExhausted,
    SourceError,
)
from etl.records import Scope
from etl.source.parser import decode_page
from etl.source.ratelimit import RateLimiter

log = logging.getLogger("etl.source")

MAX_BODY_SHOWN = 300
MAX_BODY = 32 << 20  # bytes of a decoded body; a page of 99 items is about 50 KB
READ_CHUNK = 1 << 16  # at most this much per read of a body (one recv of the socket at most)
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
POOL_SIZE = 32
MIN_REDACTED_KEY = 8
AUTH_STATUSES = (401, 403, 404)
# retried like a 5xx, with the server's Retry-After when it gives one: over the rate limit,
# or a server (or a proxy on the way) that gave up waiting for the request
RETRY_AFTER_STATUSES = (408, 429)
_QUERY_RE = re.compile(r"\?[^\s'\")]*")


@dataclass
class ClientStats:
    """Request counters shared by the threads of one run."""

    requests: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def count_error(self, kind: str, *, retried: bool) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.retries += retried

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "errors": dict(sorted(self.errors.items())),
            }


class _AccessKeyAuth(requests.auth.AuthBase):
    """Adds ``Authorization: AccessKey <key>``; the key stays out of session headers and reprs."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    def header(self) -> str:
        """The Authorization header's value, for a request sent without requests."""
        return f"AccessKey {self._key.reveal()}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self.header()
        return request

    def __repr__(self) -> str:
        return "_AccessKeyAuth(***)"


class _Failure(RetriableSourceError):
    """One retriable attempt: ``kind`` counts it in the stats ("503", "ReadTimeout" ...)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class _Reply:
    """A response read whole: what the client needs of it, whichever way it came."""

    status: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


def shorten(text: str, limit: int = MAX_BODY_SHOWN) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exc_text(exc: Exception) -> str:
    """An exception message with URL query strings (page tokens) left out; not yet shortened
    (the access key is redacted first, then the message is shortened)."""
    return _QUERY_RE.sub("?...", str(exc))


_DECODER = msgspec.json.Decoder()


def decode_json(content: bytes) -> Any:
    """``json.loads(content)``, in half the time for the usual body: msgspec decodes it to the
    same objects (integers of any size stay exact), and whatever msgspec refuses (NaN, a lone
    surrogate, a UTF-16 body ...) goes to the standard library, which has the last word."""
    try:
        return _DECODER.decode(content)
    except msgspec.DecodeError:
        return json.loads(content)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), None if unusable
    (urllib3 raises ValueError or OverflowError, not InvalidHeader, for a date past year 9999
    or a number of more than 4300 digits: the retry then backs off as without the header)."""
    if not value:
        return None
    try:
        return float(Retry().parse_retry_after(value))
    except (InvalidHeader, ValueError, OverflowError):
        return None


def _scope_key(params: Mapping[str, Any]) -> str:
    """The key of the scope whose page ``params`` asks for (as ``Scope.key`` gives it)."""
    countries = params.get("countryCodes") or ["?"]
    types = params.get("types") or ()
    return Scope(str(countries[0]), params.get("prefix"), tuple(types)).key


class BirdClient:
    """GETs pages of one organization's stock listing. Safe to share between threads."""

    def __init__(
        self,
        api_url: str,
        access_key: Secret,
        organization_id: str,
        *,
        rate_limiter: RateLimiter,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        total_timeout: float = 60.0,
        max_attempts: int = 6,
        max_total_wait: float = 60.0,
        stats: ClientStats | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        user_agent: str = f"numbers-etl/{__version__}",
    ) -> None:
        self.path = f"/organizations/{quote(organization_id, safe='')}/numbers-stock-items"
        self.url = api_url.rstrip("/") + self.path
        self.rate_limiter = rate_limiter
        self.timeout = (connect_timeout, read_timeout)
        # read_timeout bounds each wait for the next bytes; total_timeout the whole response,
        # which a server sending a byte now and then would otherwise hold open for hours
        self.total_timeout = total_timeout
        self.max_attempts = max(1, max_attempts)
        self.max_total_wait = max_total_wait
        self.stats = stats if stats is not None else ClientStats()
        self.stop = stop
        self._sleep = sleep
        self._key = access_key
        # Every page is a GET of the same URL with another query, so the request is built
        # here once and each page goes straight to the connection-pooling adapter: the
        # Session's per-request merging of settings, cookies, hooks and redirects cost
        # about a fifth of a page's CPU (bench/RESULTS.md). No redirect is followed: a
        # 3xx is an error that names the new address (the access key never goes along).
        self._adapter = _Adapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
        self._auth = _AccessKeyAuth(access_key)
        self._headers = {
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "Connection": "keep-alive",
            "User-Agent": user_agent,
        }
        # The proxy and CA-bundle variables, read once as requests would read them.
        self._proxies = requests.utils.get_environ_proxies(self.url)
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._verify: bool | str = bundle or True
        self._split = urlsplit(self.url)
        # A Channel sends a page's request early on a connection of its own: only straight
        # to Bird; through a proxy every page goes through the adapter.
        self.pipelining = not self._proxies

    def __repr__(self) -> str:
        return f"BirdClient({self.url!r})"

    def close(self) -> None:
        self._adapter.close()

    def __enter__(self) -> BirdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one page, with retries -----------------------------------------------------------

    def fetch(self, params: Mapping[str, Any], sent: Sent | None = None) -> tuple[Any, datetime]:
        """GET one page: its parsed JSON body and the UTC time its response arrived.
        ``sent``: the page's request, already sent on a Channel; its reply is the first
        attempt, and any retry goes the ordinary way."""
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                if sent is not None:
                    early, sent = sent, None  # one attempt only: a retry goes the usual way
                    reply = early.reply()
                else:
                    self.rate_limiter.acquire(self.stop)
                    _WRITING.limiter = self.rate_limiter
                    try:
                        reply = self._exchange(params)
                    finally:
                        # not written through a reporting connection (a proxy's) or not at
                        # all: reported now, later than the write (which errs on the safe side)
                        _report_written()
                fetched_at = datetime.now(UTC)
                return self._classify(reply), fetched_at
            except _Failure as failure:
                budget = self.max_total_wait - waited
                retry = attempt < self.max_attempts and budget > 0
                self.stats.count_error(failure.kind, retried=retry)
                if not retry:
                    raise RetriesExhausted(
                        self._redact(
                            f"GET {self.path} failed {attempt} times"
                            f" ({waited:.1f}s of waiting); last error: {failure}"
                        )
                    ) from None
                delay = min(self._backoff(attempt, failure.retry_after), budget)
                scope = _scope_key(params)  # countries page at once: which one
                log.warning(
                    "scope %s: %s; retry %d of %d in %.2fs",
                    scope,
                    failure,
                    attempt,
                    self.max_attempts - 1,
                    delay,
                    extra={"error_kind": failure.kind, "attempt": attempt, "scope": scope},
                )
                self._wait(delay)
                waited += delay

    def channel(self) -> Channel:
        """A connection for one scope's pages, sent one ahead (see Channel)."""
        return Channel(self)

    @staticmethod
    def _backoff(attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server gave one, else exponential backoff with full jitter."""
        if retry_after is not None:
            return retry_after
        return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        elif self.stop is not None:
            self.stop.wait(seconds)
        else:
            time.sleep(seconds)
        if self.stop is not None and self.stop.is_set():
            raise Interrupted(f"stopped while waiting to retry GET {self.path}")

    # --- one attempt ----------------------------------------------------------------------

    def _exchange(self, params: Mapping[str, Any]) -> _Reply:
        """One attempt through the connection-pooling adapter."""
        if self.stop is not None and self.stop.is_set():
            raise Interrupted(f"stopped before GET {self.path}")
        self.stats.count_request()
        deadline = time.monotonic() + self.total_timeout
        _HEAD.arm(deadline, self.total_timeout)
        try:
            with self._adapter.send(
                self._request(params),
                timeout=self.timeout,
                verify=self._verify,
                proxies=self._proxies,
            ) as response:
                # the body is read here, where its errors are retried
                content = self._read_body(response.raw, deadline)
                return _Reply(
                    response.status_code, response.reason or "", response.headers, content
                )
        except requests.Timeout as exc:
            if _HEAD.passed:  # urllib3 words it as a plain read timeout
                message = f"ReadTimeout on GET {self.path}: {_HEAD.passed}"
                raise _Failure("ReadTimeout", message) from exc
            raise self._failure(type(exc).__name__, exc) from exc
        except (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            raise self._failure(type(exc).__name__, exc) from exc
        except requests.RequestException as exc:  # an invalid URL ...
            raise self._fatal(type(exc).__name__, exc) from None
        except urllib3.exceptions.DecodeError as exc:  # as requests: not worth retrying
            raise self._fatal("ContentDecodingError", exc) from None
        except _TRANSPORT_ERRORS as exc:  # reading the body
            raise self._failure(_kind(exc, reading_body=True), exc) from exc
        except (ValueError, UnicodeError) as exc:
            raise self._unsendable(exc) from None
        finally:
            _HEAD.disarm()

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        """The whole body, decoded, taken as it arrives (``read1``: what the socket holds, up
        to READ_CHUNK), so that a body still coming in at ``deadline`` fails the attempt as a
        ReadTimeout (no later than one ``read_timeout`` after it), and one larger than
        MAX_BODY (a gzip bomb too) fails the page. A usual page takes a few reads."""
        chunks = []
        size = 0
        while chunk := response.read1(READ_CHUNK, decode_content=True):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY:
                self.stats.count_error("BodyTooLarge", retried=False)
                raise FatalSourceError(
                    f"GET {self.path} returned a body of more than {MAX_BODY >> 20} MiB, where "
                    "a page of 99 items is about 50 KB; check that api_url "
                    "(NUMBERS_ETL_API_URL) is Bird's API"
                )
            if time.monotonic() > deadline:
                raise _Failure(
                    "ReadTimeout",
                    f"ReadTimeout on GET {self.path}: the response was still coming in after "
                    f"{self.total_timeout:g}s ({size} bytes of body so far)",
                )
        return b"".join(chunks)

    def _failure(self, kind: str, exc: Exception) -> _Failure:
        return _Failure(kind, f"{kind} on GET {self.path}: {self._shown(_exc_text(exc))}")

    def _fatal(self, kind: str, exc: Exception) -> FatalSourceError:
        self.stats.count_error(kind, retried=False)
        return FatalSourceError(f"{kind} on GET {self.path}: {self._shown(_exc_text(exc))}")

    def _unsendable(self, exc: Exception) -> FatalSourceError:
        """http.client refused to write the request: a header value holds a line break or a
        character outside Latin-1. Its message quotes the header whole, in a form that
        redaction cannot match, so only the exception's name is shown."""
        kind = type(exc).__name__
        self.stats.count_error(kind, retried=False)
        return FatalSourceError(
            f"{kind} on GET {self.path}: the request could not be written, because a header "
            "holds a character HTTP cannot carry; check that access_key "
            "(NUMBERS_ETL_ACCESS_KEY or NUMBERS_ETL_ACCESS_KEY_FILE) is printable ASCII "
            "without spaces or line breaks"
        )

    def _target(self, params: Mapping[str, Any]) -> str:
        return f"{self._split.path}?{urlencode(params, doseq=True)}"

    def _connection(self) -> HTTPConnection:
        """A new connection to Bird, set up as requests sets up its own (CA bundle, timeouts)."""
        host, port = self._split.hostname or "", self._split.port
        connect_timeout = self.timeout[0]
        if self._split.scheme == "https":
            bundle = self._verify if isinstance(self._verify, str) else DEFAULT_CA_BUNDLE_PATH
            return _TimedHTTPSConnection(
                host, port, timeout=connect_timeout, cert_reqs="CERT_REQUIRED", ca_certs=bundle
            )
        return _TimedHTTPConnection(host, port, timeout=connect_timeout)

    def _request(self, params: Mapping[str, Any]) -> requests.PreparedRequest:
        request = requests.PreparedRequest()
        request.method = "GET"
        request.url = f"{self.url}?{urlencode(params, doseq=True)}"
        request.headers = requests.structures.CaseInsensitiveDict(self._headers)
        request.body = None
        return self._auth(request)

    def _classify(self, response: _Reply) -> Any:
        status = response.status
        if 200 <= status < 300:
            return self._json(response)
        detail = self._describe(response)
        if 300 <= status < 400:
            location = response.headers.get("Location")
            raise FatalSourceError(
                f"{detail}; numbers-etl does not follow redirects (the access key would go "
                f"along): set api_url (NUMBERS_ETL_API_URL) to the API's address"
                + (f", which the response gives as {self._redact(location)!r}" if location else "")
            )
        if status in RETRY_AFTER_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _Failure(str(status), detail, retry_after)
        if status >= 500:
            raise _Failure(str(status), detail)
        self.stats.count_error(str(status), retried=False)
        if status in AUTH_STATUSES:
            raise AuthError(
                f"Bird refused the access key or organization id: {detail}. Check that "
                "access_key (NUMBERS_ETL_ACCESS_KEY, or the file NUMBERS_ETL_ACCESS_KEY_FILE "
                "names) is a valid Bird access key, that "
                "organization_id (NUMBERS_ETL_ORGANIZATION_ID) names your organization, and "
                "that the key may read its numbers stock"
            )
        raise FatalSourceError(detail)

    def _json(self, response: _Reply) -> Any:
        try:
            return decode_page(response.content) or decode_json(response.content)
        except (ValueError, RecursionError):
            content_type = response.headers.get("Content-Type", "none")
            raise PaginationError(
                self._redact(
                    f"GET {self.path} returned {response.status} {response.reason} but the "
                    f"body was not JSON (Content-Type: {content_type}): "
                    f"{self._shown(response.text)!r}"
                )
            ) from None

    def _describe(self, response: _Reply) -> str:
        return self._redact(
            f"{response.status} {response.reason} for GET {self.path}: "
            f"{self._shown(response.text) or '(empty body)'}"
        )

    def _shown(self, text: str) -> str:
        """``text`` (a body, an exception's message) as an error shows it: the access key
        redacted in the whole text first, then shortened, so that a key straddling the cut
        cannot show in part."""
        return shorten(self._redact(text))

    def _redact(self, text: str) -> str:
        """``text`` without the access key, should a server or library ever echo it (keys of
        fewer than 8 characters are test keys and would mangle every message)."""
        key = self._key.reveal()
        return text.replace(key, "***") if len(key) >= MIN_REDACTED_KEY else text


# What a connection of a Channel raises when the network, TLS or the server fails it.
_TRANSPORT_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)

# The rate limiter of the request this thread is about to write through the adapter (see
# RateLimiter.written): the connection reports the write as soon as it is done.
_WRITING = threading.local()


def _report_written() -> None:
    limiter: RateLimiter | None = getattr(_WRITING, "limiter", None)
    if limiter is not None:
        _WRITING.limiter = None
        limiter.written()


class _HeadDeadline(threading.local):
    """By when the response this thread is about to read must have brought its status line
    and headers: http.client makes the response (a _DeadlineResponse) in the thread that
    asked for it. ``passed``: the message of the last response that did not, if any."""

    at: float | None = None
    seconds: float = 0.0
    passed: str = ""

    def arm(self, deadline: float, seconds: float) -> None:
        self.at, self.seconds, self.passed = deadline, seconds, ""

    def disarm(self) -> None:
        self.at = None


_HEAD = _HeadDeadline()


class _HeadReader(io.RawIOBase):
    """A response's socket reader that, until ``end()`` (when the headers are in), waits for
    each read no longer than the time left before ``deadline``: read_timeout bounds only
    each wait for the next bytes, so a server (or proxy) sending its status line and
    headers a byte at a time held a request for as long as it liked."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float, seconds: float):
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._timeout = sock.gettimeout()  # read_timeout, as urllib3 set it
        self._deadline: float | None = deadline
        self._seconds = seconds

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer: Any) -> int | None:
        if self._deadline is None:
            return self._raw.readinto(buffer)
        left = self._deadline - time.monotonic()
        if left > 0:
            self._sock.settimeout(left if self._timeout is None else min(left, self._timeout))
            try:
                return self._raw.readinto(buffer)
            except TimeoutError:
                if time.monotonic() < self._deadline:
                    raise  # read_timeout: no byte for that long
        _HEAD.passed = f"the status line and headers were still coming in after {self._seconds:g}s"
        raise TimeoutError(_HEAD.passed)

    def end(self) -> None:
        """The headers are in (or failed): the body is read with read_timeout alone (and
        total_timeout, by BirdClient._read_body)."""
        if self._deadline is not None:
            self._deadline = None
            with contextlib.suppress(OSError):  # closed after a failure
                self._sock.settimeout(self._timeout)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """http.client's response, reading its status line and headers by ``_HEAD``'s deadline
    when one is armed."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self._head: _HeadReader | None = None
        if _HEAD.at is not None:
            self._head = _HeadReader(self.fp.detach(), sock, _HEAD.at, _HEAD.seconds)
            self.fp = io.BufferedReader(self._head)

    def begin(self) -> None:
        try:
            super().begin()
        finally:
            if self._head is not None:
                self._head.end()


class _TimedHTTPConnection(HTTPConnection):
    response_class = _DeadlineResponse


class _TimedHTTPSConnection(HTTPSConnection):
    response_class = _DeadlineResponse


class _ReportsWrites:
    """A connection that reports its request written (urllib3's ``request`` writes it; the
    response is read afterwards)."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().request(*args, **kwargs)  # type: ignore[misc]
        finally:
            _report_written()


class _ReportingHTTPConnection(_ReportsWrites, _TimedHTTPConnection):
    pass


class _ReportingHTTPSConnection(_ReportsWrites, _TimedHTTPSConnection):
    pass


class _ReportingHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _ReportingHTTPConnection


class _ReportingHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _ReportingHTTPSConnection


_REPORTING_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {
    "http": _ReportingHTTPPool,
    "https": _ReportingHTTPSPool,
}


class _TimedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection


class _TimedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' pooling adapter whose connections read a response's headers by the
    attempt's deadline; straight to Bird they also tell the rate limiter when a page's
    request has been written. Through a proxy, a request written is not yet at Bird: its
    write is reported when its answer comes (BirdClient.fetch)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _REPORTING_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = {"http": _TimedHTTPPool, "https": _TimedHTTPSPool}
        return manager


def _kind(exc: BaseException, *, reading_body: bool = False) -> str:
    """The name of a Channel's failure, as requests names the same failure."""
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "ConnectTimeout"
    if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
        return "ReadTimeout"
    if isinstance(exc, ssl.SSLError | urllib3.exceptions.SSLError):
        return "SSLError"
    return "ChunkedEncodingError" if reading_body else "ConnectionError"


class Channel:
    """A connection of one scope's own, on which the next page's request goes out before the
    current page is written; ``BirdClient.fetch(params, sent)`` reads the response when that
    page is wanted. Bird's time to answer then overlaps the database's time to write
    (bench/RESULTS.md). A request is sent early only when the rate limit allows it at once
    and no proxy is in the way; otherwise ``send`` returns None and the page is fetched the
    ordinary way. A failed early request is the page's first attempt: the ordinary retries
    take over. Used by one thread at a time."""

    def __init__(self, client: BirdClient) -> None:
        self._client = client
        self._conn: HTTPConnection | None = None

    def send(self, params: Mapping[str, Any]) -> Sent | None:
        client = self._client
        if not client.pipelining or (client.stop is not None and client.stop.is_set()):
            return None
        if not client.rate_limiter.try_acquire():
            return None
        try:
            return self._send(params)
        finally:
            client.rate_limiter.written()  # written, or failed before it could be

    def _send(self, params: Mapping[str, Any]) -> Sent:
        client = self._client
        client.stats.count_request()
        headers = {**client._headers, "Authorization": client._auth.header()}
        try:
            conn = self._conn
            if conn is not None and conn.sock is not None and not conn.is_connected:
                self.close()  # Bird closed it while it was idle: a new one
            if self._conn is None:
                self._conn = client._connection()
            self._conn.timeout = client.timeout[0]  # to connect, when it must
            self._conn.request(
                "GET", client._target(params), headers=headers, preload_content=False
            )
            self._conn.timeout = client.timeout[1]  # for the response (getresponse applies it)
        except _TRANSPORT_ERRORS as exc:
            self.close()
            return Sent(self, client._failure(_kind(exc), exc))
        except (ValueError, UnicodeError) as exc:
            self.close()
            return Sent(self, client._unsendable(exc))
        return Sent(self, None)

    def _reply(self) -> _Reply:
        client = self._client
        assert self._conn is not None
        deadline = time.monotonic() + client.total_timeout
        reading_body = False
        _HEAD.arm(deadline, client.total_timeout)
        try:
            response = self._conn.getresponse()
            reading_body = True
            content = client._read_body(response, deadline)
        except urllib3.exceptions.DecodeError as exc:  # as requests: not worth retrying
            self.close()
            raise client._fatal("ContentDecodingError", exc) from None
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise client._failure(_kind(exc, reading_body=reading_body), exc) from exc
        except SourceError:  # too slow or too large: the rest of the body is not wanted
            self.close()
            raise
        finally:
            _HEAD.disarm()
        return _Reply(response.status, response.reason or "", response.headers, content)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Sent:
    """A page's request sent early on a Channel (or the failure of sending it)."""

    channel: Channel
    failure: SourceError | None  # raised when the page is wanted: _Failure is retried

    def reply(self) -> _Reply:
        if self.failure is not None:
            raise self.failure
        return self.channel._reply()

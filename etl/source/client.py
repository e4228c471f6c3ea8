"""The HTTP client of Bird's stock listing: one session, the access key, timeouts, the rate
limit and bounded retries.

One request reads as: wait for the rate limit, send, classify the response (a page, a
retriable failure or a fatal one), and on a retriable failure back off and try again, at most
``max_attempts`` times and ``max_total_wait`` seconds of waiting per page."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import requests
from requests.adapters import HTTPAdapter
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
)
from etl.source.ratelimit import RateLimiter

log = logging.getLogger("etl.source")

MAX_BODY_SHOWN = 300
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
POOL_SIZE = 32
MIN_REDACTED_KEY = 8
AUTH_STATUSES = (401, 403, 404)
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

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"AccessKey {self._key.reveal()}"
        return request

    def __repr__(self) -> str:
        return "_AccessKeyAuth(***)"


class _Failure(RetriableSourceError):
    """One retriable attempt: ``kind`` counts it in the stats ("503", "ReadTimeout" ...)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after)
        self.kind = kind


def shorten(text: str, limit: int = MAX_BODY_SHOWN) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exc_text(exc: Exception) -> str:
    """A shortened exception message, with URL query strings (page tokens) left out."""
    return shorten(_QUERY_RE.sub("?...", str(exc)))


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
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), None if unusable."""
    if not value:
        return None
    try:
        return float(Retry().parse_retry_after(value))
    except InvalidHeader:
        return None


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
        self._adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
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

    def __repr__(self) -> str:
        return f"BirdClient({self.url!r})"

    def close(self) -> None:
        self._adapter.close()

    def __enter__(self) -> BirdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one page, with retries -----------------------------------------------------------

    def fetch(self, params: Mapping[str, Any]) -> tuple[Any, datetime]:
        """GET one page: its parsed JSON body and the UTC time its response arrived."""
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            self.rate_limiter.acquire(self.stop)
            try:
                return self._send(params)
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
                log.warning(
                    "%s; retry %d of %d in %.2fs",
                    failure,
                    attempt,
                    self.max_attempts - 1,
                    delay,
                    extra={"error_kind": failure.kind, "attempt": attempt},
                )
                self._wait(delay)
                waited += delay

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

    def _send(self, params: Mapping[str, Any]) -> tuple[Any, datetime]:
        if self.stop is not None and self.stop.is_set():
            raise Interrupted(f"stopped before GET {self.path}")
        self.stats.count_request()
        try:
            response = self._adapter.send(
                self._request(params),
                timeout=self.timeout,
                verify=self._verify,
                proxies=self._proxies,
            )
            response.content  # noqa: B018 -- read the body here, where its errors are retried
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            kind = type(exc).__name__
            message = self._redact(f"{kind} on GET {self.path}: {_exc_text(exc)}")
            raise _Failure(kind, message) from exc
        except requests.RequestException as exc:  # an invalid URL, too many redirects ...
            kind = type(exc).__name__
            self.stats.count_error(kind, retried=False)
            raise FatalSourceError(
                self._redact(f"{kind} on GET {self.path}: {_exc_text(exc)}")
            ) from None
        fetched_at = datetime.now(UTC)
        with response:
            return self._classify(response), fetched_at

    def _request(self, params: Mapping[str, Any]) -> requests.PreparedRequest:
        request = requests.PreparedRequest()
        request.method = "GET"
        request.url = f"{self.url}?{urlencode(params, doseq=True)}"
        request.headers = requests.structures.CaseInsensitiveDict(self._headers)
        request.body = None
        return self._auth(request)

    def _classify(self, response: requests.Response) -> Any:
        status = response.status_code
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
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _Failure(str(status), detail, retry_after)
        if status >= 500:
            raise _Failure(str(status), detail)
        self.stats.count_error(str(status), retried=False)
        if status in AUTH_STATUSES:
            raise AuthError(
                f"Bird refused the access key or organization id: {detail}. Check that "
                "access_key (NUMBERS_ETL_ACCESS_KEY) is a valid Bird access key, that "
                "organization_id (NUMBERS_ETL_ORGANIZATION_ID) names your organization, and "
                "that the key may read its numbers stock"
            )
        raise FatalSourceError(detail)

    def _json(self, response: requests.Response) -> Any:
        try:
            return decode_json(response.content)
        except (ValueError, RecursionError):
            content_type = response.headers.get("Content-Type", "none")
            raise PaginationError(
                self._redact(
                    f"GET {self.path} returned {response.status_code} {response.reason} but the "
                    f"body was not JSON (Content-Type: {content_type}): "
                    f"{shorten(response.text)!r}"
                )
            ) from None

    def _describe(self, response: requests.Response) -> str:
        return self._redact(
            f"{response.status_code} {response.reason} for GET {self.path}: "
            f"{shorten(response.text) or '(empty body)'}"
        )

    def _redact(self, text: str) -> str:
        """``text`` without the access key, should a server or library ever echo it (keys of
        fewer than 8 characters are test keys and would mangle every message)."""
        key = self._key.reveal()
        return text.replace(key, "***") if len(key) >= MIN_REDACTED_KEY else text

"""Paging one scope of Bird's stock listing to its end, refusing every way it could loop.

The listing ends only on a page without ``nextPageToken``. Tokens are opaque: they are never
parsed, only checked for being a non-empty string of at most MAX_TOKEN_LENGTH characters
that this scope has not sent before."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from etl.errors import Interrupted, PaginationError
from etl.records import Page, Scope
from etl.source.parser import parse_results

if TYPE_CHECKING:
    from etl.source.client import Channel, Sent

MAX_TOKEN_LENGTH = 8000


class PageFetcher(Protocol):
    """What the paginator needs of a client (BirdClient): one GET of the listing."""

    def fetch(self, params: Mapping[str, Any]) -> tuple[Any, datetime]: ...


@runtime_checkable
class PipeliningFetcher(Protocol):
    """A client that can send a page's request before the page before it is used."""

    def fetch(
        self, params: Mapping[str, Any], sent: Sent | None = None
    ) -> tuple[Any, datetime]: ...

    def channel(self) -> Channel: ...


def describe_token(token: str) -> str:
    """A token for a message: its length and first characters, never the whole of it."""
    start = token[:16] + ("..." if len(token) > 16 else "")
    return f"a token of {len(token)} characters starting {start!r}"


class TokenPaginator:
    """The state of one scope's pagination: the next token, the tokens sent, the page index."""

    def __init__(self, scope: Scope, *, page_size: int, max_pages: int) -> None:
        self.scope = scope
        self.page_size = page_size
        self.max_pages = max_pages
        self.index = 0  # of the next page
        self.next_token: str | None = None
        self.seen: set[str] = set()
        self.finished = False

    def request_params(self) -> dict[str, Any]:
        """The query of the next page."""
        if self.index >= self.max_pages:
            raise self.error(f"has more than max_pages = {self.max_pages} pages")
        params: dict[str, Any] = {**self.scope.query(), "limit": self.page_size}
        if self.next_token is not None:
            params["pageToken"] = self.next_token
        return params

    def update_state(self, body: Any) -> list[Any]:
        """Check one response body, advance to the next page and return its ``results``."""
        if not isinstance(body, dict):
            raise self.error(f"body is a JSON {type(body).__name__}, not an object")
        results = body.get("results")
        if not isinstance(results, list):
            found = "missing" if results is None else f"a {type(results).__name__}"
            raise self.error(f"'results' is {found}, not a list")
        self.next_token = self.checked_token(body.get("nextPageToken"))
        self.finished = self.next_token is None
        self.index += 1
        return results

    def checked_token(self, token: Any) -> str | None:
        if token is None:
            return None
        if not isinstance(token, str):
            raise self.error(f"nextPageToken is a {type(token).__name__}, not a string")
        if not token:
            raise self.error("nextPageToken is an empty string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise self.error(
                f"nextPageToken is longer than {MAX_TOKEN_LENGTH} characters"
                f" ({describe_token(token)})"
            )
        if token in self.seen:
            raise self.error(f"loop detected: nextPageToken repeats {describe_token(token)}")
        self.seen.add(token)
        return token

    @property
    def has_next_page(self) -> bool:
        return not self.finished

    def error(self, problem: str) -> PaginationError:
        return PaginationError(
            f"scope {self.scope.key}, page {self.index}: {problem}; "
            "the scope cannot be paged to its end"  # the sync adds "; nothing removed"
        )


def iter_pages(
    client: PageFetcher,
    scope: Scope,
    *,
    page_size: int,
    max_pages: int,
    stop: threading.Event | None = None,
) -> Iterator[Page]:
    """Every page of ``scope``, parsed, in order. Raises PaginationError when the listing
    cannot be paged to its end, Interrupted when ``stop`` is set between pages."""
    paginator = TokenPaginator(scope, page_size=page_size, max_pages=max_pages)
    pipe = client if isinstance(client, PipeliningFetcher) else None
    with pipe.channel() if pipe is not None else nullcontext() as channel:
        sent: Sent | None = None
        while paginator.has_next_page:
            if stop is not None and stop.is_set():
                raise Interrupted(f"stopped before page {paginator.index} of scope {scope.key}")
            index = paginator.index
            params = paginator.request_params()
            if pipe is not None and sent is not None:
                body, fetched_at = pipe.fetch(params, sent)
            else:
                body, fetched_at = client.fetch(params)
            sent = None
            results = paginator.update_state(body)
            if channel is not None and paginator.has_next_page and paginator.index < max_pages:
                # The next page's request goes out now, before this page is parsed and
                # written; its response is read at the top of the next round.
                sent = channel.send(paginator.request_params())
            items, rejections = parse_results(results)
            yield Page(
                scope_key=scope.key,
                index=index,
                fetched_at=fetched_at,
                items=tuple(items),
                rejections=tuple(rejections),
                next_page_token=paginator.next_token,
            )

"""``numbers-etl sync --dry-run``: fetch every scope and report what a sync would change,
using the same decisions as the sync (``diff_page``, ``removal_guard``), writing nothing."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine, create_engine, inspect, select
from sqlalchemy.exc import DBAPIError

from etl.config import Settings
from etl.errors import AuthError, Interrupted, SourceError
from etl.records import Page, Scope
from etl.store.diff import (
    TRACKED_FIELDS,
    PageChanges,
    StoredNumber,
    attribute_tuple,
    dedupe,
    diff_page,
    removal_guard,
)
from etl.store.engine import make_engine, sqlite_path
from etl.store.migrate import check_schema, no_database
from etl.store.schema import numbers
from etl.store.writer import read_stored, scope_filter
from etl.sync import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGTERM,
    confine,
    database_failed,
    scopes_for,
)

EXAMPLES = 3


@dataclass
class ScopeReport:
    scope: Scope
    status: str = "complete"  # complete | held | failed | aborted
    pages: int = 0
    items: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("listed", "removed", "relisted", "changed", "price_changes", "rejected"), 0
        )
    )
    examples: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def note(self, kind: str, example: str, n: int = 1) -> None:
        self.counts[kind] += n
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(example)


@dataclass
class DryRunReport:
    scopes: list[ScopeReport]
    auth_failed: bool = False
    error: str | None = None  # what Bird said when it refused the key

    @property
    def exit_code(self) -> int:
        if self.auth_failed:
            return EXIT_CONFIG
        if any(s.status == "aborted" for s in self.scopes):
            return EXIT_SIGTERM
        return EXIT_OK if all(s.status == "complete" for s in self.scopes) else EXIT_FAILED

    def render(self) -> str:
        lines = ["dry run: nothing was written"]
        for s in self.scopes:
            counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s.counts.items())
            lines.append(
                f"{s.scope.key}: {s.status}, {s.items} numbers on {s.pages} pages; {counts}"
            )
            for kind, shown in s.examples.items():
                lines.extend(f"    {kind.replace('_', ' ')}: {e}" for e in shown)
            if s.error:
                lines.append(f"    {s.error}")
        return "\n".join(lines)


@dataclass
class _Listed:
    """What one scope's listing showed: the numbers of its valid items and of its rejected
    items."""

    valid: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    unreadable: int = 0


class _Written:
    """What the run would have stored by now of each number its pages showed. A later page,
    of the same scope or of another one (a +1 number can be in both the US and the Canadian
    listing), is compared with that, as the sync's later page reads what the earlier one
    wrote: the number is not new again, nor relisted again, and its price changed only if
    it differs from the earlier page's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers: dict[str, StoredNumber] = {}

    def diff(self, stored: Mapping[str, StoredNumber], page: Page) -> PageChanges:
        """``diff_page`` of ``page`` against the database's rows (``stored``) as this run
        would have changed them; then the page's own changes are kept."""
        items = dedupe(page.items)
        rejected = [r.number for r in page.rejections if r.number]
        with self._lock:
            written = self._numbers
            existing = dict(stored)
            for number in (*(i.number for i in items), *rejected):
                if number in written:
                    existing[number] = written[number]
            changes = diff_page(existing, items, rejected)
            for item in items:
                before = existing.get(item.number)
                written[item.number] = StoredNumber(
                    before.id if before is not None else 0,
                    item.number,
                    attribute_tuple(item),
                    item.price,
                    None,
                )
            for back in changes.relisted:  # seen only as a rejected item: back in stock
                written[back.number] = dataclasses.replace(back, removed_at=None)
        return changes

    def __contains__(self, number: str) -> bool:
        return number in self._numbers

    def available_in(self, scope: Scope) -> int:
        """How many of the numbers the run changed or saw end up in stock in ``scope`` (a
        number two countries listed ends where the later page put it)."""
        country, kind = _COUNTRY, _TYPE
        return sum(
            1
            for s in self._numbers.values()
            if s.removed_at is None
            and s.attributes[country] == scope.country_code
            and (not scope.prefix or s.number.startswith(scope.prefix))
            and (not scope.types or s.attributes[kind] in scope.types)
        )


_COUNTRY = TRACKED_FIELDS.index("country_code")
_TYPE = TRACKED_FIELDS.index("number_type")


def _read_engine(settings: Settings) -> Engine | None:
    """An engine that only reads, or None for a SQLite file that does not exist yet (an
    empty history; it is not created). On SQLite a plain engine: the sync's own would take
    the write lock (BEGIN IMMEDIATE) for every read, and wait for a running sync's page."""
    url = settings.database_url
    path = sqlite_path(url)
    if path is None:
        return make_engine(url)
    if not str(path).startswith("file:") and not path.exists():
        return None
    return create_engine(url, connect_args={"timeout": 60})


def _uses_history(settings: Settings, engine: Engine | None) -> bool:
    """Whether there is a history to compare with. A database behind the migrations is
    refused as the sync refuses it (SchemaOutOfDate), except the default SQLite file,
    which the sync would create."""
    if engine is None:
        if settings.uses_default_database:
            return False  # the sync creates the default file
        raise no_database(sqlite_path(settings.database_url))
    if settings.uses_default_database:
        with engine.connect() as conn:
            if "numbers" not in inspect(conn).get_table_names():
                return False
    check_schema(engine)
    return True


def dry_run(
    settings: Settings,
    *,
    countries: Sequence[str] | None = None,
    accept_removals: Iterable[str] = (),
    stop: threading.Event | None = None,
    page_source: Callable[[Scope], Iterable[Page]] | None = None,
) -> DryRunReport:
    """What a sync would do: every scope's pages compared with the stored history, then,
    as the sync closes scopes only once every scope is paged, each complete scope's
    removals, counted against every number the whole run saw."""
    stop = stop or threading.Event()
    accepted = {c.upper() for c in accept_removals}
    engine = _read_engine(settings)
    client = None
    if page_source is None:
        from etl.source.client import BirdClient
        from etl.source.paginator import iter_pages
        from etl.source.ratelimit import RateLimiter

        settings.require("access_key", "organization_id")
        assert settings.access_key is not None
        assert settings.organization_id is not None
        bird = BirdClient(
            settings.api_url,
            settings.access_key,
            settings.organization_id,
            rate_limiter=RateLimiter(settings.max_requests_per_second),
            stop=stop,
        )
        client = bird

        def page_source(scope: Scope) -> Iterable[Page]:
            return iter_pages(
                bird, scope, page_size=settings.page_size, max_pages=settings.max_pages, stop=stop
            )

    try:
        history = engine if _uses_history(settings, engine) else None
        scopes = scopes_for(settings, countries)
        workers = max(1, min(settings.concurrency, len(scopes)))
        auth: list[AuthError] = []
        source = page_source

        written = _Written()
        why_stopped: list[str] = []  # when it is not a signal: set before `stop`

        def one(scope: Scope) -> tuple[ScopeReport, _Listed]:
            try:
                return _scope(history, scope, source, written, why_stopped)
            except AuthError as exc:
                auth.append(exc)
                why_stopped.append("stopped: Bird refused the access key or organization")
                stop.set()
                return ScopeReport(scope, status="failed", error=str(exc)), _Listed()

        with ThreadPoolExecutor(workers) as pool:
            listed = list(pool.map(one, scopes))
        if history is not None:
            seen_any = set().union(*(seen.valid | seen.rejected for _, seen in listed))
            for report, seen in listed:
                if report.status == "complete" and not seen.unreadable:
                    _removals(settings, history, report, written, seen_any, accepted)
        return DryRunReport(
            [report for report, _ in listed],
            auth_failed=bool(auth),
            error=str(auth[0]) if auth else None,
        )
    except DBAPIError as exc:
        raise database_failed(settings.database_url, exc) from None
    finally:
        if client is not None:
            client.close()
        if engine is not None:
            engine.dispose()


def _scope(
    engine: Engine | None,
    scope: Scope,
    source: Callable[[Scope], Iterable[Page]],
    written: _Written,
    why_stopped: Sequence[str] = (),
) -> tuple[ScopeReport, _Listed]:
    report = ScopeReport(scope)
    seen = _Listed()
    try:
        for page in source(scope):
            page = confine(page, scope)  # as the sync: other countries' items are rejected
            report.pages += 1
            report.items += len(page.items) + len(page.rejections)
            for rejection in page.rejections:
                report.note("rejected", f"{rejection.number or '?'}: {rejection.reason}")
                seen.unreadable += rejection.number is None
            wanted = sorted(
                {*(i.number for i in page.items), *(r.number for r in page.rejections if r.number)}
            )
            seen.valid.update(i.number for i in page.items)
            seen.rejected.update(r.number for r in page.rejections if r.number)
            stored: dict[str, StoredNumber] = {}
            if engine is not None and wanted:
                with engine.connect() as conn:
                    rows, typed = read_stored(conn, wanted)
                stored = {
                    number: StoredNumber.from_tuple(row if typed is None else typed(row))
                    for number, row in rows.items()
                }
            changes = written.diff(stored, page)
            for item in changes.new:
                report.note("listed", f"{item.number} {item.price}")
            for event in changes.events:
                if event.event != "listed":
                    report.note(event.event, f"{event.number}: {event.detail}")
            for before, item in changes.price_changes:
                report.note(
                    "price_changes",
                    f"{item.number}: {before.price} -> {item.price}",
                )
    except Interrupted:
        report.status = "aborted"
        report.error = why_stopped[0] if why_stopped else "stopped by a signal"
    except SourceError as exc:
        if isinstance(exc, AuthError):
            raise
        report.status, report.error = "failed", f"{exc}; a sync would remove nothing here"
    return report, seen


def _removals(
    settings: Settings,
    engine: Engine,
    report: ScopeReport,
    written: _Written,
    seen_any: set[str],
    accepted: set[str],
) -> None:
    """The close of a complete scope, as ``close_scope`` would decide it after the run's
    pages. Its available numbers: the stored ones in stock there that the run left alone,
    and those the run's pages would leave in stock there (listed there, moved there from
    another scope, or removed ones of this scope that a rejected item brings back)."""
    scope = report.scope
    with engine.connect() as conn:
        rows = conn.execute(
            select(numbers.c.number, numbers.c.missed_runs).where(scope_filter(scope))
        ).all()
    available = sum(1 for r in rows if r.number not in written) + written.available_in(scope)
    missed = [r.number for r in rows if r.number not in seen_any]
    due = [
        r.number
        for r in rows
        if r.number not in seen_any and r.missed_runs + 1 >= settings.removal_confirmations
    ]
    decision = removal_guard(
        country=scope.country_code,
        available=available,
        would_remove=len(due),
        max_fraction=settings.max_removal_fraction,
        accepted=scope.country_code in accepted,
        missed=len(missed),
        confirmations=settings.removal_confirmations,
    )
    if not decision.proceed:
        report.status, report.error = "held", decision.reason
        return
    for number in due:
        report.note("removed", number)
    if len(missed) > len(due):
        report.error = (
            f"{len(missed) - len(due)} missing number(s) wait for more confirmations "
            f"(removal_confirmations = {settings.removal_confirmations})"
        )

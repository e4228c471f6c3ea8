"""``numbers-etl sync --dry-run``: fetch every scope and report what a sync would change,
using the same decisions as the sync (``diff_page``, ``removal_guard``), writing nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine, create_engine, func, inspect, select
from sqlalchemy.exc import DBAPIError

from etl.config import Settings
from etl.errors import AuthError, Interrupted, SchemaOutOfDate, SourceError
from etl.records import Page, Scope
from etl.store.diff import dedupe, removal_guard
from etl.store.engine import make_engine, sqlite_path
from etl.store.migrate import check_schema
from etl.store.schema import numbers
from etl.store.writer import page_changes, scope_filter
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


class _Relistings:
    """The numbers a run relists, once each, whichever page or scope shows them first (the
    sync relists a number once: the next page finds it in stock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers: set[str] = set()

    def first(self, number: str) -> bool:
        with self._lock:
            if number in self._numbers:
                return False
            self._numbers.add(number)
            return True


@dataclass(frozen=True)
class _RunSeen:
    """The numbers the run's scopes saw: as valid items, at all, and only as rejected
    items."""

    valid: set[str]
    any: set[str]
    rejected_only: set[str]


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
        raise SchemaOutOfDate(
            f"there is no database at {sqlite_path(settings.database_url)}; create it with "
            "`numbers-etl db upgrade` first"
        )
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

        relistings = _Relistings()

        def one(scope: Scope) -> tuple[ScopeReport, _Listed]:
            try:
                return _scope(history, scope, source, relistings)
            except AuthError as exc:
                auth.append(exc)
                stop.set()
                return ScopeReport(scope, status="failed", error=str(exc)), _Listed()

        with ThreadPoolExecutor(workers) as pool:
            listed = list(pool.map(one, scopes))
        if history is not None:
            seen_valid = set().union(*(seen.valid for _, seen in listed))
            seen_any = seen_valid.union(*(seen.rejected for _, seen in listed))
            run = _RunSeen(seen_valid, seen_any, seen_any - seen_valid)
            for report, seen in listed:
                if report.status == "complete" and not seen.unreadable:
                    _removals(settings, history, report, seen, run, accepted)
        return DryRunReport([report for report, _ in listed], auth_failed=bool(auth))
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
    relistings: _Relistings,
) -> tuple[ScopeReport, _Listed]:
    report = ScopeReport(scope)
    seen = _Listed()
    try:
        for page in source(scope):
            page = confine(page, scope)  # as the sync: other countries' items are rejected
            report.pages += 1
            report.items += len(page.items) + len(page.rejections)
            fresh = [i for i in dedupe(page.items) if i.number not in seen.valid]
            rejected = []
            for rejection in page.rejections:
                report.note("rejected", f"{rejection.number or '?'}: {rejection.reason}")
                seen.unreadable += rejection.number is None
                number = rejection.number
                if number and number not in seen.valid and number not in seen.rejected:
                    rejected.append(rejection)
            page = Page(page.scope_key, page.index, page.fetched_at, tuple(fresh), tuple(rejected))
            seen.valid.update(i.number for i in fresh)
            seen.rejected.update(r.number for r in rejected if r.number)
            if engine is None:
                for item in fresh:
                    report.note("listed", f"{item.number} {item.price.value} {item.price.currency}")
                continue
            with engine.connect() as conn:
                changes = page_changes(conn, page)
            for item in changes.new:
                report.note("listed", f"{item.number} {item.price.value} {item.price.currency}")
            for event in changes.events:
                if event.event == "relisted" and not relistings.first(event.number):
                    continue
                if event.event != "listed":
                    report.note(event.event, f"{event.number}: {event.detail}")
            for stored, item in changes.price_changes:
                report.note(
                    "price_changes",
                    f"{item.number}: {stored.price.value} {stored.price.currency} -> "
                    f"{item.price.value} {item.price.currency}",
                )
    except Interrupted:
        report.status, report.error = "aborted", "stopped by a signal"
    except SourceError as exc:
        if isinstance(exc, AuthError):
            raise
        report.status, report.error = "failed", f"{exc}; a sync would remove nothing here"
    return report, seen


def _removals(
    settings: Settings,
    engine: Engine,
    report: ScopeReport,
    seen: _Listed,
    run: _RunSeen,
    accepted: set[str],
) -> None:
    """The close of a complete scope, as ``close_scope`` would decide it after the run's
    pages. Its available numbers: the stored ones no scope listed elsewhere, the ones its
    listing showed, and the removed ones of this scope (by their stored country, area and
    type) that some scope's rejected item brings back."""
    scope = report.scope
    with engine.connect() as conn:
        rows = conn.execute(
            select(numbers.c.number, numbers.c.missed_runs).where(scope_filter(scope))
        ).all()
        back = 0
        if run.rejected_only:
            back = conn.execute(
                select(func.count()).where(
                    scope_filter(scope, in_stock=False),
                    numbers.c.removed_at.is_not(None),
                    numbers.c.number.in_(sorted(run.rejected_only)),
                )
            ).scalar_one()
    seen_any = run.any
    available = (
        sum(1 for r in rows if r.number not in run.valid)  # moved elsewhere if seen there
        + len(seen.valid)
        + back
    )
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

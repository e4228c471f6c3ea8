"""``numbers-etl sync --dry-run``: fetch every scope and report what a sync would change,
using the same decisions as the sync (``diff_page``, ``removal_guard``), writing nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine, inspect, select

from etl.config import Settings
from etl.errors import AuthError, Interrupted, SourceError
from etl.records import Page, Scope
from etl.store.diff import dedupe, removal_guard
from etl.store.engine import make_engine, sqlite_path
from etl.store.schema import numbers
from etl.store.writer import page_changes, scope_filter
from etl.sync import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_SIGTERM, scopes_for

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


def _has_schema(engine: Engine | None) -> bool:
    if engine is None:
        return False
    with engine.connect() as conn:
        return "numbers" in inspect(conn).get_table_names()


def dry_run(
    settings: Settings,
    *,
    countries: Sequence[str] | None = None,
    stop: threading.Event | None = None,
    page_source: Callable[[Scope], Iterable[Page]] | None = None,
) -> DryRunReport:
    stop = stop or threading.Event()
    path = sqlite_path(settings.database_url)
    # A SQLite file that does not exist yet is an empty history; do not create it.
    engine = None if path is not None and not path.exists() else make_engine(settings.database_url)
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
        use_db = _has_schema(engine)
        scopes = scopes_for(settings, countries)
        workers = max(1, min(settings.concurrency, len(scopes)))
        auth: list[AuthError] = []
        source = page_source

        def one(scope: Scope) -> ScopeReport:
            try:
                return _scope(settings, engine if use_db else None, scope, source)
            except AuthError as exc:
                auth.append(exc)
                stop.set()
                return ScopeReport(scope, status="failed", error=str(exc))

        with ThreadPoolExecutor(workers) as pool:
            reports = list(pool.map(one, scopes))
        return DryRunReport(reports, auth_failed=bool(auth))
    finally:
        if client is not None:
            client.close()
        if engine is not None:
            engine.dispose()


def _scope(
    settings: Settings,
    engine: Engine | None,
    scope: Scope,
    source: Callable[[Scope], Iterable[Page]],
) -> ScopeReport:
    report = ScopeReport(scope)
    seen: set[str] = set()
    unreadable = 0
    try:
        for page in source(scope):
            report.pages += 1
            report.items += len(page.items) + len(page.rejections)
            fresh = [i for i in dedupe(page.items) if i.number not in seen]
            for rejection in page.rejections:
                report.note("rejected", f"{rejection.number or '?'}: {rejection.reason}")
                unreadable += rejection.number is None
                if rejection.number:
                    seen.add(rejection.number)
            page = Page(page.scope_key, page.index, page.fetched_at, tuple(fresh), page.rejections)
            seen.update(i.number for i in fresh)
            if engine is None:
                for item in fresh:
                    report.note("listed", f"{item.number} {item.price.value} {item.price.currency}")
                continue
            with engine.connect() as conn:
                changes = page_changes(conn, page)
            for item in changes.new:
                report.note("listed", f"{item.number} {item.price.value} {item.price.currency}")
            for event in changes.events:
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
        return report
    except SourceError as exc:
        if isinstance(exc, AuthError):
            raise
        report.status, report.error = "failed", f"{exc}; a sync would remove nothing here"
        return report
    if engine is None or unreadable:
        return report
    with engine.connect() as conn:
        rows = conn.execute(
            select(numbers.c.number, numbers.c.missed_runs).where(scope_filter(scope))
        ).all()
    missed = [r.number for r in rows if r.number not in seen]
    due = [
        r.number
        for r in rows
        if r.number not in seen and r.missed_runs + 1 >= settings.removal_confirmations
    ]
    decision = removal_guard(
        country=scope.country_code,
        available=len(rows),
        would_remove=len(due),
        max_fraction=settings.max_removal_fraction,
        accepted=False,
        missed=len(missed),
    )
    if not decision.proceed:
        report.status, report.error = "held", decision.reason
        return report
    for number in due:
        report.note("removed", number)
    if len(missed) > len(due):
        report.error = (
            f"{len(missed) - len(due)} missing number(s) wait for more confirmations "
            f"(removal_confirmations = {settings.removal_confirmations})"
        )
    return report

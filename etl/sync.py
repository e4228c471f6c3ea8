"""One sync run: lock, run record, scopes in parallel (page -> transaction), close, finish."""

from __future__ import annotations

import functools
import logging
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from etl.config import Settings, redact_url
from etl.errors import (
    AuthError,
    ConfigError,
    DatabaseError,
    Interrupted,
    LockLost,
    SourceError,
)
from etl.records import Page, Rejection, Scope
from etl.store import runs
from etl.store.demo_mark import DEMO_MARK_TABLE, is_demo
from etl.store.engine import (
    async_commits,
    begin_write,
    db_message,
    error_codes,
    make_engine,
    sqlite_path,
    write_transaction,
)
from etl.store.lock import DatabaseLock
from etl.store.migrate import check_schema, missing_database
from etl.store.planner import TableGrowth
from etl.store.writer import PageCounts, ScopeClose, apply_page, close_scope

if TYPE_CHECKING:
    from etl.source.client import BirdClient

log = logging.getLogger("etl.sync")
T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 75
EXIT_SIGTERM = 143
# Each stops a run after the page in flight. SIGHUP too: a terminal or ssh session that
# closes sends it, and its default would end the process mid-page.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def utcnow() -> datetime:
    return datetime.now(UTC)


def scopes_for(settings: Settings, countries: Iterable[str] | None = None) -> list[Scope]:
    """One scope per country, or one per configured prefix of a country."""
    chosen = list(countries) if countries else list(settings.countries)
    out: list[Scope] = []
    for country in chosen:
        prefixes = settings.prefixes.get(country) or (None,)
        out.extend(Scope(country, prefix, settings.types) for prefix in prefixes)
    return out


@dataclass
class ScopeResult:
    scope: Scope
    status: str = "running"  # complete | held | failed | aborted
    pages: int = 0
    items: int = 0
    listed: int = 0
    removed: int = 0
    relisted: int = 0
    changed: int = 0
    price_changes: int = 0
    rejected: int = 0
    available: int | None = None
    error: str | None = None

    def add(self, counts: PageCounts) -> None:
        self.pages += 1
        for name in ("items", "listed", "relisted", "changed", "price_changes", "rejected"):
            setattr(self, name, getattr(self, name) + getattr(counts, name))


@dataclass
class RunResult:
    run_id: int | None
    status: str  # succeeded | partial | failed | aborted
    started_at: datetime
    finished_at: datetime | None = None
    scopes: list[ScopeResult] = field(default_factory=list)
    error: str | None = None
    auth_failed: bool = False
    http: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.auth_failed:
            return EXIT_CONFIG
        if self.status == "aborted":
            return EXIT_SIGTERM
        return EXIT_OK if self.status == "succeeded" else EXIT_FAILED

    def total(self, name: str) -> int:
        return sum(int(getattr(s, name)) for s in self.scopes)


# Called after each page is committed: (scope, page, counts). Used for progress and metrics.
PageHook = Callable[[Scope, Page, PageCounts], None]
# Yields a scope's pages in order; raises SourceError / Interrupted. Default: Bird's listing.
PageSource = Callable[[Scope], Iterable[Page]]


def _is_transient(exc: DBAPIError) -> bool:
    """Deadlocks and serialization failures: the whole page transaction can be retried. So
    can a number inserted twice at once, by two countries whose listings both have it (each
    read it as new): on the retry it is stored, and the page updates it instead."""
    sqlstate, errno = error_codes(exc)
    if sqlstate == "23505" or errno == 1062:
        return "uq_numbers_number" in str(exc.orig)
    return (
        exc.connection_invalidated
        or sqlstate in ("40001", "40P01", "55P03")  # ... and PostgreSQL's lock timeout
        or errno in (1213, 1205)  # deadlock, lock wait timeout
    )


def in_transaction(
    bind: Engine | Connection, work: Callable[[Connection], T], attempts: int = 4
) -> T:
    """Run ``work`` in one transaction, retried on a deadlock or a dropped connection (a
    Connection that lost its database connection gets a new one on its next use)."""
    for attempt in range(1, attempts + 1):
        try:
            if isinstance(bind, Connection):
                with write_transaction(bind) as conn:
                    return work(conn)
            with begin_write(bind) as conn:
                return work(conn)
        except DBAPIError as exc:
            if attempt == attempts or not _is_transient(exc):
                raise
            log.warning("transient database error (attempt %d), retrying: %s", attempt, exc.orig)
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


class Sync:
    """One run over the configured scopes. ``run()`` never raises for a source failure: it
    records it in the scope and the run; it raises LockHeld, SchemaOutOfDate, DatabaseError."""

    def __init__(
        self,
        settings: Settings,
        *,
        countries: Sequence[str] | None = None,
        accept_removals: Iterable[str] = (),
        stop: threading.Event | None = None,
        engine: Engine | None = None,
        on_page: PageHook | None = None,
        client: BirdClient | None = None,
        page_source: PageSource | None = None,
        on_stuck: Callable[[float], None] | None = None,
        demo: bool = False,
    ) -> None:
        self.settings = settings
        self.demo = demo  # the demo's runs: a database it marked is theirs
        self.scopes = scopes_for(settings, countries)
        self.accept = {c.upper() for c in accept_removals}
        self.stop = stop or threading.Event()
        self.engine = engine or make_engine(settings.database_url, pool_size=settings.concurrency)
        self.owns_engine = engine is None
        self.on_page = on_page
        self.stats = None if client is None else client.stats
        self._client = client
        self._page_source = page_source
        # called (after the run was told to stop) when the database has not answered the
        # lock's refreshes past its expiry: the CLI exits, so that a supervisor restarts
        self.on_stuck = on_stuck
        self._auth_error: AuthError | None = None
        self._lock_lost = False
        # why the run stops early when it is not a signal (set before `stop`)
        self._stop_reason: str | None = None
        self._growth = TableGrowth(None)  # the run's, made when it starts

    def _make_client(self) -> BirdClient:
        from etl.source.client import BirdClient, ClientStats
        from etl.source.ratelimit import RateLimiter

        self.stats = ClientStats()
        settings = self.settings
        settings.require("access_key", "organization_id")
        assert settings.access_key is not None
        assert settings.organization_id is not None
        return BirdClient(
            settings.api_url,
            settings.access_key,
            settings.organization_id,
            rate_limiter=RateLimiter(settings.max_requests_per_second),
            stats=self.stats,
            stop=self.stop,
        )

    def run(self) -> RunResult:
        if not self.scopes:
            self.settings.require("countries")
        client = None
        if self._page_source is None:
            client = self._client or self._make_client()
            self._page_source = functools.partial(self._bird_pages, client)
        try:
            return self._run()
        except DBAPIError as exc:  # unreachable, refused the connection's options, ...
            url = self.engine.url.render_as_string(hide_password=False)
            raise database_failed(url, exc) from None
        finally:
            if client is not None and self._client is None:
                client.close()
            if self.owns_engine:
                self.engine.dispose()

    def _refuse_the_demos_database(self) -> None:
        """A real run never writes into the demo's made-up history: it would record every
        demo number as removed, and the next demo would delete the file, real runs and all."""
        path = sqlite_path(self.settings.database_url)
        if path is not None and not path.exists():
            return  # the default file, which this run creates
        with self.engine.connect() as conn:
            if not is_demo(conn):
                return
        where = path.absolute() if path is not None else redact_url(self.settings.database_url)
        undo = (
            f"delete it ({shlex.quote(str(where))} and any -wal or -shm file beside it)"
            if path is not None
            else f"drop its numbers-etl tables and views and its {DEMO_MARK_TABLE} table"
        )
        raise ConfigError(
            [
                f"database_url: {where} holds the made-up history of `numbers-etl demo`, "
                f"which a real sync must not mix with; {undo} to start the real history "
                "there, or set database_url to another database"
            ]
        )

    def _bird_pages(self, client: BirdClient, scope: Scope) -> Iterable[Page]:
        from etl.source.paginator import iter_pages

        pages: Iterable[Page] = iter_pages(
            client,
            scope,
            page_size=self.settings.page_size,
            max_pages=self.settings.max_pages,
            stop=self.stop,
        )
        return pages

    def _run(self) -> RunResult:
        # The default SQLite file is created and migrated on first use; any other database
        # must be migrated on purpose (`numbers-etl db upgrade`).
        default = self.settings.uses_default_database
        missing = missing_database(self.settings.database_url, default=default)
        if missing is not None:
            raise missing  # before connecting, which would leave an empty file
        if not self.demo:
            self._refuse_the_demos_database()
        check_schema(self.engine, create_if_new=default)
        lock = DatabaseLock(self.engine, ttl=self.settings.lock_ttl_seconds)
        lock.acquire()
        try:
            lock.keep_alive(on_lost=self._on_lock_lost, on_stuck=self._on_stuck)
            return self._locked_run(lock)
        finally:
            lock.release()

    def _halt(self, reason: str) -> None:
        """Stop the other scopes after their page in flight, saying why."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self.stop.set()

    def _on_stuck(self, seconds: float) -> None:
        log.critical(
            "the database has not answered for %.0f s: the sync lock could not be refreshed "
            "and has expired, and the run cannot stop while its statements wait",
            seconds,
        )
        self._lock_lost = True
        self._halt("stopped: the database stopped answering and the sync lock expired")
        if self.on_stuck is not None:
            self.on_stuck(seconds)

    def _on_lock_lost(self) -> None:
        self._lock_lost = True
        self._halt("stopped: the sync lock was lost to another sync")

    def _locked_run(self, lock: DatabaseLock) -> RunResult:
        started = utcnow()

        def begin(conn: Connection) -> tuple[int, list[int]]:
            abandoned = runs.mark_abandoned(conn, started)
            if abandoned:
                log.warning(
                    "marked run(s) %s abandoned (never finished: their process died or lost "
                    "the database)",
                    abandoned,
                )
            return runs.start_run(conn, started, self.scopes)

        run_id, scope_ids = in_transaction(self.engine, begin)
        lock.set_run(run_id)
        self._growth = TableGrowth.start(self.engine)
        result = RunResult(run_id, "running", started)
        log.info("run %d started: %s", run_id, ", ".join(s.key for s in self.scopes))
        workers = max(1, min(self.settings.concurrency, len(self.scopes)))
        with ThreadPoolExecutor(workers, thread_name_prefix="scope") as pool:
            # Every scope is paged before any closes: a number that moved from one scope
            # to another (its country changed) is then seen in this run by whichever scope
            # lists it now, and no scope counts it as missed, whatever their order.
            paged = list(
                pool.map(
                    lambda pair: self._sync_scope(run_id, *pair),
                    zip(self.scopes, scope_ids, strict=True),
                )
            )
            result.scopes = list(pool.map(lambda p: self._close(run_id, lock, p), paged))
        result.status, result.error = self._run_status(result.scopes)
        result.auth_failed = self._auth_error is not None
        result.finished_at = utcnow()
        result.http = self.stats.snapshot() if self.stats is not None else {}
        in_transaction(
            self.engine,
            lambda conn: runs.finish_run(
                conn,
                run_id,
                result.status,
                result.finished_at or utcnow(),
                result.error,
                int(result.http.get("retries", 0)),
            ),
        )
        log.info("run %d %s", run_id, result.status)
        return result

    def _run_status(self, scopes: list[ScopeResult]) -> tuple[str, str | None]:
        error = runs.joined_errors(
            [f"{s.scope.key}: {s.status}: {s.error}" for s in scopes if s.error]
        )
        if self._auth_error is not None:
            return "failed", str(self._auth_error)
        if self._lock_lost:
            return "failed", error
        if any(s.status == "aborted" for s in scopes):
            return "aborted", error or "stopped by a signal"
        if all(s.status == "complete" for s in scopes):
            return "succeeded", error
        if all(s.status == "failed" for s in scopes):
            return "failed", error
        return "partial", error

    def _sync_scope(self, run_id: int, scope: Scope, row_id: int) -> _Paged:
        """Page ``scope`` to its end; a scope that could not be is finished here."""
        result = ScopeResult(scope)
        try:
            if self.stop.is_set():
                raise Interrupted("stopped before the scope started")
            with self.engine.connect() as conn, async_commits(conn), self._growth.planning(conn):
                return self._page(run_id, scope, row_id, conn, result)
        except Interrupted:
            reason = self._stop_reason or "stopped by a signal"
            result.status, result.error = "aborted", f"{reason}; nothing removed"
        except AuthError as exc:
            self._auth_error = exc
            # the other scopes would fail the same way
            self._halt("stopped: Bird refused the access key or organization")
            result.status, result.error = "failed", str(exc)
        except SourceError as exc:
            result.status, result.error = "failed", f"{exc}; nothing removed"
        except SQLAlchemyError as exc:
            result.status, result.error = "failed", f"database error: {db_message(exc)}"
        except Exception as exc:  # a bug: record the scope as failed rather than leave
            # the run `running` and its other scopes unrecorded; the traceback goes to the log
            log.exception("scope %s: unexpected error", scope.key)
            result.status = "failed"
            result.error = f"unexpected error {type(exc).__name__} (see the log); nothing removed"
        self._finish_scope(row_id, result)
        return _Paged(result, row_id)

    def _finish_scope(self, row_id: int, result: ScopeResult) -> None:
        log.warning("scope %s %s: %s", result.scope.key, result.status, result.error)
        try:
            in_transaction(
                self.engine,
                lambda conn: runs.finish_scope(conn, row_id, result.status, utcnow(), result.error),
            )
        except SQLAlchemyError as exc:  # the database went away: a line, not a traceback
            log.error(
                "could not record the end of scope %s: %s",
                result.scope.key,
                db_message(exc),
                exc_info=log.isEnabledFor(logging.DEBUG),
            )

    def _page(
        self, run_id: int, scope: Scope, row_id: int, conn: Connection, result: ScopeResult
    ) -> _Paged:
        """Every page of ``scope`` in its own transaction on ``conn``."""
        unreadable = 0
        last_fetch: datetime | None = None
        debug = log.isEnabledFor(logging.DEBUG)  # -v: a line a page
        assert self._page_source is not None
        for page in self._page_source(scope):
            page = confine(page, scope)
            counts = in_transaction(
                conn,
                lambda c, p=page: apply_page(  # type: ignore[misc]
                    c, run_id=run_id, scope_row_id=row_id, page=p
                ),
            )
            result.add(counts)
            if self._growth.added(counts.listed):
                self._growth.analyze(conn)
            unreadable += counts.unreadable
            last_fetch = page.fetched_at
            if debug:
                log.debug(
                    "scope %s page %d: %d items, %d rejected; %d listed, %d relisted, "
                    "%d changed, %d price changes",
                    scope.key,
                    page.index,
                    counts.items,
                    counts.rejected,
                    counts.listed,
                    counts.relisted,
                    counts.changed,
                    counts.price_changes,
                    extra={"scope": scope.key, "page": page.index},
                )
            if self.on_page is not None:
                self.on_page(scope, page, counts)
            if self.stop.is_set() and page.next_page_token is not None:
                raise Interrupted("stopped after the page in flight")
        return _Paged(result, row_id, last_fetch or utcnow(), unreadable)

    def _close(self, run_id: int, lock: DatabaseLock, paged: _Paged) -> ScopeResult:
        """Close a scope paged to its end: removals, snapshot, status; in one transaction
        with a refresh of the lock, so a run that lost its lock closes nothing."""
        result, scope = paged.result, paged.result.scope
        completed_at = paged.completed_at
        if completed_at is None:
            return result

        def close(conn: Connection) -> ScopeClose:
            closed = close_scope(
                conn,
                run_id=run_id,
                scope_row_id=paged.row_id,
                scope=scope,
                completed_at=completed_at,
                confirmations=self.settings.removal_confirmations,
                max_fraction=self.settings.max_removal_fraction,
                accepted=scope.country_code in self.accept,
                removals_allowed=paged.unreadable == 0,
            )
            # Last, so that the lock's row is locked only for the commit (the scopes close
            # in parallel); another sync that took the lock before this rolls it all back.
            if not lock.fence(conn):
                raise LockLost(
                    "the sync lock expired and another sync took it (was this process "
                    "paused for longer than lock_ttl_seconds?); nothing removed"
                )
            return closed

        try:
            closed = in_transaction(self.engine, close)
        except LockLost as exc:
            result.status, result.error = "failed", str(exc)
        except SQLAlchemyError as exc:
            result.status, result.error = "failed", f"database error: {db_message(exc)}"
        except Exception as exc:  # a bug, as in _sync_scope: the run must still finish
            log.exception("scope %s: unexpected error in its close", scope.key)
            result.status = "failed"
            result.error = f"unexpected error {type(exc).__name__} (see the log); nothing removed"
        else:
            log.debug(
                "scope %s closed: %s, %d removed, %d available",
                scope.key,
                closed.status,
                closed.removed,
                closed.available,
                extra={"scope": scope.key},
            )
            result.status, result.removed, result.available = (
                closed.status,
                closed.removed,
                closed.available,
            )
            result.error = closed.reason
            if paged.unreadable:
                result.error = (
                    f"{paged.unreadable} rejected item(s) had no readable number, so nothing "
                    "was removed in this scope this run"
                )
            return result
        self._finish_scope(paged.row_id, result)
        return result


@dataclass
class _Paged:
    """A scope after its pages: finished (failed, aborted) or, with ``completed_at`` (when
    its last page was fetched), listed completely and waiting for its close."""

    result: ScopeResult
    row_id: int
    completed_at: datetime | None = None
    unreadable: int = 0


def confine(page: Page, scope: Scope) -> Page:
    """Reject items outside the scope asked for (Bird returning another country's numbers)."""
    outside = [item for item in page.items if not scope.contains(item)]
    if not outside:
        return page
    return Page(
        scope_key=page.scope_key,
        index=page.index,
        fetched_at=page.fetched_at,
        items=tuple(item for item in page.items if scope.contains(item)),
        rejections=page.rejections
        + tuple(
            Rejection(
                f"outside the scope {scope.key}: {item.country_code} {item.number_type}",
                {"numberString": item.number, "countryCode": item.country_code},
                item.number,
            )
            for item in outside
        ),
        next_page_token=page.next_page_token,
    )


def database_failed(url: str, exc: SQLAlchemyError) -> DatabaseError:
    """The error of a database that failed: which database (its password hidden; a SQLite
    file by its absolute path, with what to check) and the driver's message."""
    path = sqlite_path(url)
    if path is not None:
        message = db_message(exc)
        hint = (
            " (check that its directory exists and that this user may write there)"
            if "unable to open database file" in message
            else ""
        )
        where = str(path.absolute())
        return DatabaseError(f"the SQLite database {where!r} failed: {message}{hint}")
    return DatabaseError(f"the database {redact_url(url)} failed: {db_message(exc)}")


def run_sync(settings: Settings, **kwargs: Any) -> RunResult:
    return Sync(settings, **kwargs).run()

"""Prometheus metrics: written to a file after each run (node_exporter's textfile collector,
for cron and systemd timers) or served on ``/metrics`` by the scheduler.

Run and stock figures are read from the database, so they are right whichever process or
host ran the last sync; HTTP figures come from this process's last run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server, write_to_textfile
from prometheus_client.metrics_core import Metric
from sqlalchemy import Connection, Engine, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from etl.errors import LockHeld
from etl.store.schema import numbers, sync_runs, sync_scopes
from etl.sync import RunResult

log = logging.getLogger("etl.metrics")

RUN_STATUSES = ("succeeded", "partial", "failed", "aborted", "abandoned")
SCOPE_STATUSES = ("complete", "held", "failed", "aborted", "running")
# This process's last attempt: a run status, or skipped (lock held), or error (it raised).
OUTCOMES = ("succeeded", "partial", "failed", "aborted", "skipped", "error")
EVENTS = ("listed", "removed", "relisted", "changed")
PREFIX = "numbers_etl_"


class _LockedRegistry(CollectorRegistry):
    """A registry collected under the lock that ``Metrics.record`` updates its gauges under,
    so that a scrape never sees a refresh half done (a scope's series cleared, not yet set
    again)."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(auto_describe=True)
        self._update_lock = lock

    def collect(self) -> Iterator[Metric]:
        with self._update_lock:
            families = list(super().collect())
        yield from families


@dataclass
class _Snapshot:
    """The database's figures, read before any gauge changes."""

    has_runs: bool = False
    last: Any = None
    success: datetime | None = None
    scopes: list[Any] = field(default_factory=list)
    stock: list[tuple[str, bool, int]] = field(default_factory=list)


# Series read from the database: a process that never read it leaves them out rather than
# report 0 ("never succeeded", run 0 in 1970) while the database is down.
_FROM_DATABASE = ("last_id", "last_time", "last_duration", "last_success")


class Metrics:
    """The gauges of one process, in their own registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.registry = _LockedRegistry(self._lock)
        self._read_once = False
        self.up = False  # the last read of the database answered
        self._server: Any = None
        self._thread: threading.Thread | None = None

        def gauge(name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, help_text, labels, registry=self.registry)

        self.attempt = gauge(
            "attempt_outcome",
            "This process's last sync attempt: 1 for its outcome (skipped: lock held)",
            ("outcome",),
        )
        self.attempt_time = gauge("attempt_timestamp_seconds", "When that attempt ended")
        self.database_up = gauge("database_up", "1 when the database could be read")
        self.last_status = gauge(
            "last_run_status", "The last finished run: 1 for its status", ("status",)
        )
        self.last_id = gauge("last_run_id", "Id of the last finished run")
        self.last_time = gauge("last_run_timestamp_seconds", "When the last finished run ended")
        self.last_duration = gauge("last_run_duration_seconds", "How long the last run took")
        self.last_success = gauge(
            "last_success_timestamp_seconds", "When the last succeeded run ended (0: never)"
        )
        self.pages = gauge("last_run_pages", "Pages fetched by the last run", ("scope",))
        self.items = gauge("last_run_numbers", "Numbers seen by the last run", ("scope",))
        self.events = gauge("last_run_events", "Events written by the last run", ("scope", "event"))
        self.prices = gauge("last_run_price_changes", "Price changes of the last run", ("scope",))
        self.rejected = gauge("last_run_rejected", "Rejected items of the last run", ("scope",))
        self.scope_status = gauge(
            "last_run_scope_status",
            "Each scope of the last run: 1 for its status",
            ("scope", "status"),
        )
        self.numbers = gauge("numbers", "Numbers in the history by state", ("country", "state"))
        self.http_requests = gauge("http_requests", "HTTP requests of this process's last run")
        self.http_retries = gauge("http_retries", "HTTP retries of this process's last run")
        self.http_errors = gauge(
            "http_errors", "Failed HTTP requests of this process's last run", ("status",)
        )

    def record(
        self,
        engine: Engine | None,
        result: RunResult | None = None,
        outcome: str | None = None,
        at: datetime | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        """Refresh every gauge after an attempt (``result`` is None when it raised;
        ``outcome`` None: no attempt yet, only the database's figures). ``quiet``: a database
        that cannot be read is logged at DEBUG (a retry of a read that failed)."""
        with self._lock:
            if outcome is not None:
                _one_hot(self.attempt, outcome, OUTCOMES)
            if at is not None:
                self.attempt_time.set(at.timestamp())
            if result is not None and result.http:
                self.http_requests.set(result.http.get("requests", 0))
                self.http_retries.set(result.http.get("retries", 0))
                self.http_errors.clear()
                for status, count in (result.http.get("errors") or {}).items():
                    self.http_errors.labels(str(status)).set(count)
        if engine is None:
            return
        try:
            with engine.connect() as conn:
                snapshot = _read(conn)
        except SQLAlchemyError as exc:
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "metrics: could not read the database: %s",
                str(exc).splitlines()[0],
            )
            with self._lock:
                self.up = False
                self.database_up.set(0)
                if not self._read_once:
                    for name in _FROM_DATABASE:
                        with suppress(KeyError):
                            self.registry.unregister(getattr(self, name))
            return
        with self._lock:
            if not self._read_once:
                self._read_once = True
                for name in _FROM_DATABASE:
                    with suppress(ValueError):  # registered already
                        self.registry.register(getattr(self, name))
            self._apply(snapshot)
            self.up = True
            self.database_up.set(1)

    def record_unanswered(self, at: datetime) -> None:
        """An attempt ended because the database stopped answering (it is not asked)."""
        self.record(None, None, "error", at)
        self.database_unanswered()

    def database_unanswered(self) -> None:
        """The database did not answer a read in time (the read may still end, later)."""
        with self._lock:
            self.up = False
            self.database_up.set(0)

    def _apply(self, snapshot: _Snapshot) -> None:
        if not snapshot.has_runs:
            self.last_success.set(0)  # a new database: no runs yet
            return
        success = snapshot.success
        self.last_success.set(success.timestamp() if success is not None else 0)
        for gauge in (self.pages, self.items, self.events, self.prices, self.rejected):
            gauge.clear()
        self.scope_status.clear()
        last = snapshot.last
        if last is not None:
            _one_hot(self.last_status, last.status, RUN_STATUSES)
            self.last_id.set(last.id)
            if last.finished_at is not None:
                self.last_time.set(last.finished_at.timestamp())
                self.last_duration.set((last.finished_at - last.started_at).total_seconds())
            for scope in snapshot.scopes:
                key = scope.scope_key
                self.pages.labels(key).set(scope.pages)
                self.items.labels(key).set(scope.items)
                for event in EVENTS:
                    self.events.labels(key, event).set(getattr(scope, event))
                self.prices.labels(key).set(scope.price_changes)
                self.rejected.labels(key).set(scope.rejected)
                for status in SCOPE_STATUSES:
                    self.scope_status.labels(key, status).set(int(scope.status == status))
        self.numbers.clear()
        for country, available, count in snapshot.stock:
            self.numbers.labels(country, "available" if available else "removed").set(count)

    def write(self, path: str | Path) -> None:
        """Write the text format to ``path`` atomically (a temporary file, then a rename)."""
        write_to_textfile(str(path), self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread until ``close()``."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("serving metrics on http://%s:%d/metrics", host, self.port)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else 0

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _read(conn: Connection) -> _Snapshot:
    if not inspect(conn).has_table(sync_runs.name):
        return _Snapshot()
    last = conn.execute(
        select(sync_runs)
        .where(sync_runs.c.status != "running")
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).first()
    success = conn.scalar(
        select(func.max(sync_runs.c.finished_at)).where(sync_runs.c.status == "succeeded")
    )
    scopes = (
        list(conn.execute(select(sync_scopes).where(sync_scopes.c.run_id == last.id)))
        if last is not None
        else []
    )
    in_stock = numbers.c.removed_at.is_(None)
    stock = [
        (country, bool(available), int(count))
        for country, available, count in conn.execute(
            select(numbers.c.country_code, in_stock, func.count()).group_by(
                numbers.c.country_code, in_stock
            )
        )
    ]
    return _Snapshot(True, last, success, scopes, stock)


def _one_hot(gauge: Gauge, value: str, values: tuple[str, ...]) -> None:
    for name in dict.fromkeys((*values, value)):
        gauge.labels(name).set(int(name == value))


def write_file(path: str | Path, database_url: str, result: RunResult | None, outcome: str) -> None:
    """After a ``sync``: record its outcome and the database's figures, write ``path``.
    A failure is logged, never raised: the metrics must not change the sync's exit code."""
    from etl.store.engine import make_engine, sqlite_path

    metrics = Metrics()
    db_file = sqlite_path(database_url)
    engine = None if db_file is not None and not db_file.exists() else make_engine(database_url)
    try:
        metrics.record(engine, result, outcome, datetime.now(UTC))
        metrics.write(path)
    except OSError as exc:
        log.error("could not write the metrics file %s: %s", path, exc.strerror or exc)
    finally:
        if engine is not None:
            engine.dispose()


def record_unanswered(metrics: Metrics, path: str | Path | None) -> None:
    """Before a process exits because its database stopped answering: the attempt is an
    ``error`` and the database is down, without asking it (that would hang); written to
    ``path`` when given. Never raises."""
    try:
        metrics.record_unanswered(datetime.now(UTC))
        if path is not None:
            metrics.write(path)
    except Exception as exc:  # the process is about to exit: say why the file is old
        log.error("could not write the metrics file %s: %s", path, exc)


def outcome_of(result: RunResult | None, exc: BaseException | None) -> str:
    """A sync attempt's outcome: its run status, ``skipped`` (lock held) or ``error``."""
    if result is not None:
        return result.status
    return "skipped" if isinstance(exc, LockHeld) else "error"

"""``numbers-etl schedule``: APScheduler wiring around ``Sync``, nothing more.

Never two runs at once: ``max_instances=1`` and ``coalesce`` in this process, the database
lock across processes and hosts. A run that raises is logged and the next one comes at its
time. SIGTERM / SIGINT / SIGHUP: no new runs, the run in flight stops after its page (``aborted``),
then ``run_forever`` returns."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_SCHEDULER_STARTED,
    JobEvent,
)
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, func, inspect, select

from etl.config import Settings, crontab_trigger, parse_interval
from etl.errors import EtlError, LockHeld
from etl.metrics import Metrics
from etl.report import run_fields, summary_line
from etl.store.engine import make_engine, sqlite_path
from etl.store.schema import sync_runs
from etl.sync import STOP_SIGNALS, RunResult, Sync

log = logging.getLogger("etl.scheduler")
JOB_ID = "sync"
CRON_GRACE = 300  # seconds a cron run may start late (a busy host, a suspended VM)
METRICS_READ_WAIT = 60  # seconds the scheduler waits on the database's figures
METRICS_RETRY = 60  # seconds between reads of the figures while the database is not up
METRICS_JOB_ID = "metrics"
CATCH_UP_JOB_ID = "catch-up"


def make_trigger(schedule: str) -> tuple[Any, int]:
    """The trigger of a ``schedule`` value and its misfire grace time in seconds: a cron
    expression in UTC, or an interval such as ``30m`` (grace: half of it, 5 s to 5 min)."""
    seconds = parse_interval(schedule)
    if seconds is not None:
        return IntervalTrigger(seconds=seconds, timezone=UTC), min(CRON_GRACE, max(5, seconds // 2))
    return crontab_trigger(schedule), CRON_GRACE


class SyncScheduler:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        metrics_file: Path | None = None,
        on_stuck: Callable[[float], None] | None = None,
        on_signal: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.metrics_file = metrics_file
        self.on_stuck = on_stuck  # see Sync
        self.on_signal = on_signal  # called once, on the first SIGTERM / SIGINT / SIGHUP
        self.trigger, self.grace = make_trigger(settings.schedule)
        self.scheduler = BlockingScheduler(timezone=UTC)
        self.outcomes: deque[str] = deque(maxlen=100)  # the latest runs' outcomes, bounded
        self._closing = threading.Event()
        # Re-entrant: a signal handler calls close() on the main thread, which may hold it.
        self._lock = threading.RLock()
        self._current: threading.Event | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._started = threading.Event()
        self._engine: Engine | None = None  # the metrics'
        self._reader: threading.Thread | None = None  # the metrics' read of the database
        self._reader_lock = threading.Lock()  # a run's read and the retry's, one at a time
        # One engine for every run, its connections closed after each: an engine per run
        # left a dialect behind in caches keyed by it (SQLAlchemy's own keeps 128).
        self._sync_engine: Engine | None = None
        self.stopped_by: str | None = None  # the signal that stopped run_forever

    # --- one run -------------------------------------------------------------------------

    def run_once(self) -> str:
        """Run one sync; return its outcome (a run status, ``skipped`` when another sync
        holds the lock, ``error`` when it raised). Never raises."""
        with self._lock:
            if self._closing.is_set():
                return "closing"
            stop = threading.Event()
            self._current = stop
            self._idle.clear()
        try:
            result, outcome = self._sync(stop)
            self._record(result, outcome)
            self.outcomes.append(outcome)
            self._log_next()
            return outcome
        finally:
            with self._lock:
                self._current = None
                self._idle.set()

    def _sync(self, stop: threading.Event) -> tuple[RunResult | None, str]:
        try:
            if self._sync_engine is None:
                self._sync_engine = make_engine(
                    self.settings.database_url, pool_size=self.settings.concurrency
                )
            try:
                result = Sync(
                    self.settings, stop=stop, engine=self._sync_engine, on_stuck=self.on_stuck
                ).run()
            finally:
                self._sync_engine.dispose()  # no connection kept open between runs
        except LockHeld as exc:
            log.warning("skipped: another sync holds the lock (%s)", exc)
            return None, "skipped"
        except EtlError as exc:
            log.error("sync failed: %s", exc)
            return None, "error"
        except Exception:
            log.exception("sync crashed; the scheduler carries on")
            return None, "error"
        level = logging.INFO if result.status in ("succeeded", "aborted") else logging.WARNING
        if result.auth_failed:
            level = logging.ERROR
        message = summary_line(result) + (f"; {result.error}" if result.error else "")
        log.log(level, message, extra=run_fields(result))
        return result, result.status

    def _record(
        self, result: RunResult | None, outcome: str | None, *, quiet: bool = False
    ) -> None:
        """The attempt's outcome at once, then the database's figures (see ``_read``), then
        the metrics file. Never raises: metrics must never stop the syncs."""
        if self.metrics is None:
            return
        try:
            at = None if outcome is None else datetime.now(UTC)
            self.metrics.record(None, result, outcome, at)
            self._read(self.metrics, quiet=quiet)
            self._retry_while_down()
            if self.metrics_file is not None:
                self.metrics.write(self.metrics_file)
        except Exception as exc:
            log.error("could not update the metrics: %s", exc)
            log.debug("could not update the metrics", exc_info=True)

    def _retry_while_down(self) -> None:
        """A job that reads the figures again every ``METRICS_RETRY`` seconds exists while
        the last read failed (a database down when the scheduler started, or when a run
        ended), so that ``database_up`` and the last run's figures come back without waiting
        for the next run (up to 6 h on the default schedule); not otherwise."""
        if self.metrics is None or self._closing.is_set():
            return
        job = self.scheduler.get_job(METRICS_JOB_ID)
        if self.metrics.up and job is not None:
            job.remove()
        elif not self.metrics.up and job is None:
            self._add_retry(self._retry_metrics, METRICS_JOB_ID, "numbers-etl metrics retry")

    def _add_retry(self, func: Callable[[], None], job_id: str, name: str) -> None:
        """A job that calls ``func`` every ``METRICS_RETRY`` seconds until it is removed."""
        self.scheduler.add_job(
            func,
            IntervalTrigger(seconds=METRICS_RETRY, timezone=UTC),
            id=job_id,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=METRICS_RETRY,
            replace_existing=True,
        )

    def _retry_metrics(self) -> None:
        # A run in flight reads them when it ends.
        if self._idle.is_set() and not self._closing.is_set():
            self._record(None, None, quiet=True)

    def _read(self, metrics: Metrics, *, quiet: bool = False) -> None:
        """The database's figures, in a thread of their own that the scheduler waits on for
        at most ``METRICS_READ_WAIT`` seconds: a database that stops answering (PostgreSQL's
        driver waits for ever on a connection made before) must not stop the schedule. One
        read at a time; each on a new connection, closed after (a pooled one is what hangs).
        A SQLite file that is not there is not created by reading it."""
        path = sqlite_path(self.settings.database_url)
        if path is not None and not path.exists():
            return
        with self._reader_lock:
            if self._reader is not None and self._reader.is_alive():
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "metrics: the database has not answered the previous read yet",
                )
                metrics.database_unanswered()
                return
            if self._engine is None:
                self._engine = make_engine(self.settings.database_url, pool_size=1)
            engine = self._engine

            def read() -> None:
                try:
                    metrics.record(engine, quiet=quiet)
                finally:
                    engine.dispose()

            reader = self._reader = threading.Thread(target=read, name="metrics-read", daemon=True)
            reader.start()
        if not self._waited(reader, quiet=quiet):
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "metrics: the database has not answered in %d s; the schedule goes on, "
                "database_up is 0",
                METRICS_READ_WAIT,
            )
            metrics.database_unanswered()

    def _waited(self, reader: threading.Thread, *, quiet: bool) -> bool:
        """Whether a read's thread ended within ``METRICS_READ_WAIT`` seconds. A ``quiet``
        read (a retry's job) stops waiting once the scheduler is closing: a job still in
        its executor holds up the process's exit."""
        deadline = time.monotonic() + METRICS_READ_WAIT
        while reader.is_alive() and (left := deadline - time.monotonic()) > 0:
            reader.join(min(1.0, left))
            if quiet and self._closing.is_set():
                break
        return not reader.is_alive()

    def _log_skipped(self, event: JobEvent) -> None:
        """A run that did not happen, why, and when the next one is. APScheduler's own
        warning shows the time it skipped as the job's "next run at"."""
        if getattr(event, "job_id", JOB_ID) != JOB_ID:  # a retry's job: no run skipped
            return
        due = (
            getattr(event, "scheduled_run_time", None)
            or getattr(event, "scheduled_run_times", [None])[-1]
        )
        why = (
            "the run before it was still going"
            if event.code == EVENT_JOB_MAX_INSTANCES
            else f"it could not start within {self.grace} s of its time (a busy or suspended host)"
        )
        job = self.scheduler.get_job(JOB_ID)
        when = getattr(job, "next_run_time", None)
        log.warning(
            "skipped the run due at %s: %s%s",
            f"{due:%Y-%m-%d %H:%M:%S} UTC" if due is not None else "its time",
            why,
            f"; next run at {when:%Y-%m-%d %H:%M:%S} UTC" if when is not None else "",
        )

    def _log_next(self) -> None:
        job = self.scheduler.get_job(JOB_ID)
        when = getattr(job, "next_run_time", None)
        if when is not None and not self._closing.is_set():
            log.info("next run at %s", f"{when:%Y-%m-%d %H:%M:%S} UTC")

    # --- the long-running process ----------------------------------------------------------

    def last_started(self, *, quiet: bool = False) -> tuple[bool, datetime | None]:
        """Whether the database answered, and when its latest run started (None: no run, or
        no database: a SQLite file that is not there is not created). No answer within
        ``METRICS_READ_WAIT`` seconds is logged (at DEBUG when ``quiet``). Never raises."""
        path = sqlite_path(self.settings.database_url)
        if path is not None and not path.exists():
            return True, None
        found: list[datetime | None] = []
        level = logging.DEBUG if quiet else logging.WARNING

        def read() -> None:
            try:
                engine = make_engine(self.settings.database_url, pool_size=1)
                try:
                    with engine.connect() as conn:
                        last = None
                        if inspect(conn).has_table(sync_runs.name):
                            last = conn.scalar(select(func.max(sync_runs.c.started_at)))
                        found.append(last)
                finally:
                    engine.dispose()
            except Exception as exc:
                log.log(
                    level,
                    "could not read when the last run started (a missed run is caught up "
                    "once it can be read): %s",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )

        reader = threading.Thread(target=read, name="last-run-read", daemon=True)
        reader.start()
        if not self._waited(reader, quiet=quiet):
            log.log(
                level,
                "the database has not said in %d s when the last run started (a missed run is "
                "caught up once it can be read)",
                METRICS_READ_WAIT,
            )
            return False, None
        return (True, found[0]) if found else (False, None)

    def _catch_up_later(self) -> None:
        """Every ``METRICS_RETRY`` seconds after a start at which the database could not say
        when the last run started: once it can, a missed slot is run at once."""
        if self._closing.is_set():
            return
        known, last = self.last_started(quiet=True)
        if not known:
            return
        with suppress(JobLookupError):
            self.scheduler.remove_job(CATCH_UP_JOB_ID)
        if not self._idle.is_set():  # a run is in flight: it is the catch-up
            return
        _, first_run, why = self.plan(datetime.now(UTC), last)
        if why and first_run is not None:
            log.warning("%s", why)
            self.scheduler.modify_job(JOB_ID, next_run_time=first_run)

    def plan(self, now: datetime, last: datetime | None) -> tuple[Any, datetime | None, str]:
        """The sync's trigger, its first run when that is not the trigger's own, and why,
        given when the latest run started. A slot of the schedule that passed since then (a
        crash, a restart, a host that was down) is run at once, as systemd's
        ``Persistent=true`` timers do. Otherwise an interval keeps its cadence: the first
        run comes an interval after the last one, not an interval after this start."""
        if last is None or last >= now:  # (later: another host's clock ahead of this one's)
            return self.trigger, None, ""
        if isinstance(self.trigger, IntervalTrigger):
            due = last + self.trigger.interval
            if due > now:  # explicit: a start slower than due - now must not skip it
                seconds = self.trigger.interval_length
                return IntervalTrigger(seconds=seconds, start_date=last, timezone=UTC), due, ""
        else:
            due = self.trigger.get_next_fire_time(None, last)
            if due is None or due > now:
                return self.trigger, None, ""
        return (
            self.trigger,
            now,
            f"catching up: the run due at {due:%Y-%m-%d %H:%M:%S} UTC did not happen (the last "
            f"run started at {last:%Y-%m-%d %H:%M:%S} UTC); running one now",
        )

    def run_forever(self, *, run_now: bool = False, catch_up: bool = True) -> None:
        """Block, running syncs on the schedule, until a stop signal (or ``close()``).
        ``run_now``: a run at once. ``catch_up``: a run at once only when a slot of the
        schedule passed since the latest run started (``plan``)."""
        options: dict[str, Any] = {}
        trigger, first_run, why, known = self.trigger, None, "", True
        if run_now:
            first_run = datetime.now(UTC)
        elif catch_up:
            known, last = self.last_started()
            trigger, first_run, why = self.plan(datetime.now(UTC), last)
        now = datetime.now(UTC)
        if first_run is not None:
            options["next_run_time"] = first_run
        first = first_run or trigger.get_next_fire_time(None, now)
        self.scheduler.add_job(
            self.run_once,
            trigger,
            id=JOB_ID,
            name="numbers-etl sync",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=self.grace,
            **options,
        )
        if not known:
            self._add_retry(self._catch_up_later, CATCH_UP_JOB_ID, "numbers-etl catch-up check")
        if why:
            log.warning("%s", why)
        self._record(None, None)
        self.scheduler.add_listener(lambda _event: self._started.set(), EVENT_SCHEDULER_STARTED)
        self.scheduler.add_listener(self._log_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        watcher = threading.Thread(target=self._shutdown_when_closing, name="scheduler-stop")
        watcher.start()
        previous = self._install_signals()
        try:
            log.info(
                "scheduler started: schedule %r (UTC), misfire grace %ds; first run at %s",
                self.settings.schedule,
                self.grace,
                f"{first:%Y-%m-%d %H:%M:%S} UTC",
            )
            self.scheduler.start()
            self._idle.wait()  # the run in flight, stopping after its page
        finally:
            self.close()
            self._started.set()
            watcher.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for engine in (self._engine, self._sync_engine):
                if engine is not None:
                    engine.dispose()
        log.info("scheduler stopped")

    def close(self, reason: str | None = None) -> None:
        """No new runs; ask the run in flight to stop after its page."""
        with self._lock:
            if reason and not self._closing.is_set():
                running = " the run in flight stops after its page;" if self._current else ""
                log.warning("%s: no new runs;%s then exiting", reason, running)
            self._closing.set()
            if self._current is not None:
                self._current.set()

    def _shutdown_when_closing(self) -> None:
        # APScheduler is shut down from this thread, not from the signal handler, which may
        # have interrupted the main thread inside the scheduler's own locked sections.
        self._closing.wait()
        self._started.wait()
        self.scheduler.remove_all_jobs()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _install_signals(self) -> dict[signal.Signals, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, _frame: FrameType | None) -> None:
            first = self.stopped_by is None
            self.stopped_by = signal.Signals(signum).name
            self.close(self.stopped_by)
            if first and self.on_signal is not None:
                self.on_signal()

        return {s: signal.signal(s, handler) for s in STOP_SIGNALS}

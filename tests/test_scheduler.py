"""`numbers-etl schedule`: runs on a short interval against the simulator, never overlaps
another scheduler on the same database, survives failing syncs, and stops cleanly on SIGTERM
(the run in flight `aborted`, exit 143). Real processes, real databases."""

from __future__ import annotations

import gc
import itertools
import logging
import re
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Dialect

import etl.scheduler as scheduler_module
from etl.config import Settings
from etl.metrics import Metrics
from etl.scheduler import SyncScheduler, make_trigger
from etl.simulator import Simulator
from etl.store.engine import make_engine
from etl.store.lock import DatabaseLock
from etl.store.schema import sync_lock, sync_runs
from tests.conftest import make_settings, sim_env
from tests.procs import (
    Output,
    etl_process,
    proxy_to,
    running_with_pages,
    runs_of,
    signal_after_first_page,
    stop,
    wait_for,
)


def test_interval_trigger_and_grace() -> None:
    trigger, grace = make_trigger("30m")
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.interval == timedelta(minutes=30)
    assert grace == 300
    assert make_trigger("2s")[1] == 5
    assert make_trigger("4m")[1] == 120


def test_cron_trigger_is_utc() -> None:
    trigger, grace = make_trigger("0 */6 * * *")
    assert isinstance(trigger, CronTrigger)
    assert str(trigger.timezone) == "UTC"
    assert grace == 300
    after = datetime(2026, 1, 1, 7, 30, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, after) == datetime(2026, 1, 1, 12, tzinfo=UTC)


def _weekdays(schedule: str, runs: int = 5) -> list[str]:
    trigger, _ = make_trigger(schedule)
    at, out = datetime(2026, 1, 3, 12, tzinfo=UTC), []  # a Saturday
    for _ in range(runs):
        at = trigger.get_next_fire_time(None, at)
        out.append(at.strftime("%a"))
        at += timedelta(minutes=1)
    return out


@pytest.mark.parametrize(
    ("schedule", "days"),
    [
        ("0 6 * * 1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),  # APScheduler's 1-5: Tue-Sat
        ("0 0 * * 0", ["Sun"] * 5),
        ("0 0 * * 7", ["Sun"] * 5),
        ("0 0 * * 5-7", ["Sun", "Fri", "Sat", "Sun", "Fri"]),
        ("0 0 * * */2", ["Sun", "Tue", "Thu", "Sat", "Sun"]),
        ("0 0 * * mon-fri", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("0 0 * * 1,3", ["Mon", "Wed", "Mon", "Wed", "Mon"]),
        ("0 0 * * 7-7", ["Sun"] * 5),
        ("0 0 * * sun-sun", ["Sun"] * 5),
        ("0 0 * * 5-07", ["Sun", "Fri", "Sat", "Sun", "Fri"]),
        ("0 0 * * 0-7", ["Sun", "Mon", "Tue", "Wed", "Thu"]),
        ("0 0 * * 1-5/2", ["Mon", "Wed", "Fri", "Mon", "Wed"]),
        # a day of month starting with '*' is ANDed with the day of week, in cron too
        ("0 0 */2 * 1-5", ["Mon", "Wed", "Fri", "Tue", "Thu"]),  # odd days of January
    ],
)
def test_cron_days_of_the_week_are_counted_as_cron_counts_them(
    schedule: str, days: list[str]
) -> None:
    assert _weekdays(schedule) == days


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("0 0 1 * 1", "day of month and day of week are both set"),
        ("0 0 * * 8", "'8' is not a day of the week"),
        ("0 0 * * 5-1", "a range must go forwards"),
        ("3000000d", "longer than 3650 days"),
    ],
)
def test_schedules_cron_would_read_otherwise_are_refused(schedule: str, message: str) -> None:
    from etl.config import load_settings
    from etl.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_settings(env={"NUMBERS_ETL_SCHEDULE": schedule})


def test_a_huge_max_age_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from etl.cli import cli

    url = f"sqlite:///{tmp_path}/none.sqlite"
    result = CliRunner().invoke(cli, ["status", "--database-url", url, "--max-age", "99999999d"])
    assert result.exit_code == 2, result.output
    assert "longer than 3650 days" in result.output


def test_a_run_that_cannot_take_the_lock_is_skipped_not_raised(
    simulator: Simulator, db_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = SyncScheduler(make_settings(simulator, db_url))
    lock = DatabaseLock(engine, holder="other:1:x")
    lock.acquire()
    try:
        assert scheduler.run_once() == "skipped"
    finally:
        lock.release()
    assert "skipped: another sync holds the lock (another sync is running (other:1:x" in (
        caplog.text
    )
    assert scheduler.run_once() == "succeeded"
    assert [r.status for r in runs_of(db_url)] == ["succeeded"]


def test_a_sync_that_raises_is_logged_and_the_next_one_runs(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(simulator, "postgresql+psycopg://nobody@127.0.0.1:1/none")
    scheduler = SyncScheduler(settings)
    assert scheduler.run_once() == "error"
    assert scheduler.run_once() == "error"
    assert "sync failed: the database postgresql+psycopg://nobody@127.0.0.1:1/none failed: " in (
        caplog.text
    )


def test_close_ends_run_forever_after_the_run_in_flight(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    metrics_file = tmp_path / "numbers_etl.prom"
    scheduler = SyncScheduler(
        make_settings(simulator, db_url, schedule="1d"),
        metrics=Metrics(),
        metrics_file=metrics_file,
    )

    def close_after_first_run() -> None:
        wait_for(lambda: scheduler.outcomes, "the first run")
        scheduler.close("test")

    closer = threading.Thread(target=close_after_first_run)
    closer.start()
    scheduler.run_forever(run_now=True)  # returns once closed
    closer.join()
    assert list(scheduler.outcomes) == ["succeeded"]
    assert not scheduler.scheduler.running
    families = {f.name for f in text_string_to_metric_families(metrics_file.read_text())}
    assert "numbers_etl_last_run_status" in families


def test_schedule_runs_syncs_on_an_interval_and_serves_metrics(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    env = sim_env(simulator, db_url, schedule="1s")
    proc = etl_process(["schedule", "--metrics-port", "0"], env, tmp_path)
    output = Output(proc)
    try:
        wait_for(
            lambda: sum(r.status == "succeeded" for r in runs_of(db_url)) >= 2,
            "two runs on the schedule",
        )
        match = output.search(r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics")
        assert match is not None
        with requests.Session() as session:
            response = session.get(f"http://127.0.0.1:{match.group(1)}/metrics", timeout=10)
            body = response.text
            response.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        err = output.text()  # before stop(), which would read the pipe as well
    finally:
        stop(proc)
    assert proc.returncode == 143, err  # the contract's "stopped by SIGTERM", as `sync`
    assert "next run at " in err
    assert "SIGTERM: no new runs" in err
    assert "scheduler stopped" in err
    families = {f.name: f for f in text_string_to_metric_families(body)}
    status = {s.labels["status"]: s.value for s in families["numbers_etl_last_run_status"].samples}
    assert status["succeeded"] == 1
    assert all(r.finished_at is not None for r in runs_of(db_url))


# SIGHUP: a terminal or ssh session that closed
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_mid_run_aborts_it_and_exits_143(
    simulator: Simulator, db_url: str, tmp_path: Path, sig: signal.Signals
) -> None:
    simulator.faults.set_latency(0.2)
    env = sim_env(simulator, db_url, page_size=10, schedule="1d")
    proc = etl_process(["schedule", "--run-now"], env, tmp_path)
    _, err = signal_after_first_page(proc, db_url, sig)
    assert proc.returncode == 143, err
    assert f"{sig.name}: no new runs; the run in flight stops after its page; then exiting" in err
    (run,) = runs_of(db_url)
    assert run.status == "aborted"
    assert run.finished_at is not None
    assert run.removed == 0


def test_two_schedulers_on_one_database_never_overlap(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    # Every run takes longer than the interval, so the two processes keep colliding.
    simulator.faults.set_latency(0.05)
    env = sim_env(simulator, db_url, page_size=10, schedule="1s")
    procs = [etl_process(["schedule"], env, tmp_path) for _ in range(2)]
    errs = []
    try:
        wait_for(
            lambda: sum(r.finished_at is not None for r in runs_of(db_url)) >= 4,
            "four finished runs",
            timeout=180,
        )
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            errs.append(proc.communicate(timeout=90)[1])
    finally:
        for proc in procs:
            stop(proc)
    assert [p.returncode for p in procs] == [143, 143], errs
    runs = runs_of(db_url)
    assert all(r.finished_at is not None for r in runs)
    for before, after in itertools.pairwise(runs):
        assert before.finished_at <= after.started_at, (before, after)
    assert {r.pid for r in runs} <= {p.pid for p in procs}
    assert any("skipped: another sync holds the lock" in err for err in errs)


def _live_dialects() -> int:
    gc.collect()
    return sum(isinstance(o, Dialect) for o in gc.get_objects())


@pytest.mark.parametrize("empty_db_url", ["sqlite", "postgresql"], indirect=True)
def test_many_runs_leave_nothing_behind(simulator: Simulator, db_url: str) -> None:
    # every run has an engine of its own; a cache keyed by its dialect kept each one alive
    # (a scheduler on a 1 s interval grew from 68 to 228 MB in 733 runs)
    scheduler = SyncScheduler(make_settings(simulator, db_url, schedule="1d"))
    for _ in range(3):
        assert scheduler.run_once() == "succeeded"
    before = _live_dialects()
    for _ in range(20):
        assert scheduler.run_once() == "succeeded"
    assert _live_dialects() - before <= 2


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_a_database_cut_during_a_run_does_not_lock_the_scheduler_out(
    simulator: Simulator, db_url: str
) -> None:
    # the run fails and cannot release its lock; when the database is back, the same
    # process found "another sync is running (itself)" until lock_ttl_seconds had passed
    simulator.faults.set_latency(0.1)
    with proxy_to(db_url) as (proxy, proxied):
        scheduler = SyncScheduler(make_settings(simulator, proxied, page_size=10, schedule="1d"))
        cutter = threading.Thread(
            target=lambda: (wait_for(lambda: running_with_pages(db_url), "a page"), proxy.down())
        )
        cutter.start()
        try:
            assert scheduler.run_once() == "error"
        finally:
            cutter.join()
            proxy.up()
        simulator.faults.set_latency(0)
        engine = make_engine(db_url)
        with engine.connect() as conn:
            left = conn.execute(select(sync_lock.c.holder)).scalar()
        engine.dispose()
        assert left is not None  # the cut run's lock is still in its row
        assert scheduler.run_once() == "succeeded"
    statuses = [r.status for r in runs_of(db_url)]
    assert statuses == ["abandoned", "succeeded"]


@pytest.mark.parametrize("empty_db_url", ["postgresql", "mysql"], indirect=True)
def test_a_database_that_stops_answering_ends_the_process(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    # the server (or a proxy before it) stops answering with its connections left open: the
    # run's statements wait for ever, and SIGTERM cannot stop them. Once the lock has expired
    # the process exits 1, for systemd (Restart=on-failure) or the next cron run to start
    # afresh, instead of hanging with its metrics saying all is well.
    simulator.faults.set_latency(0.1)
    with proxy_to(db_url) as (proxy, proxied):
        env = sim_env(simulator, proxied, page_size=10, schedule="1d", lock_ttl_seconds=10)
        proc = etl_process(["schedule", "--run-now"], env, tmp_path)
        output = Output(proc)
        try:
            wait_for(lambda: running_with_pages(db_url), "a page")
            proxy.frozen.set()
            proc.wait(timeout=150)
            err = output.text()
        finally:
            stop(proc)
    assert proc.returncode == 1, err
    assert "the database has not answered for " in err
    assert "exiting (status 1) so that the process can be started afresh" in err
    (run,) = runs_of(db_url)
    assert run.status == "running"  # the next run marks it abandoned, at once (same host)


def _database_up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("numbers_etl_database_up")


@pytest.mark.parametrize("empty_db_url", ["postgresql", "mysql"], indirect=True)
def test_a_database_that_stops_answering_the_metrics_does_not_stop_the_schedule(
    simulator: Simulator,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # After each run the metrics read the database's figures, on the scheduler's thread. On
    # a pooled connection that had stopped answering, PostgreSQL's driver waited for ever,
    # and the schedule with it: no more runs, the metrics frozen at "all is well".
    monkeypatch.setattr(scheduler_module, "METRICS_READ_WAIT", 2)
    metrics = Metrics()
    with proxy_to(db_url) as (proxy, proxied):
        scheduler = SyncScheduler(make_settings(simulator, proxied, schedule="1d"), metrics=metrics)
        assert scheduler.run_once() == "succeeded"
        assert _database_up(metrics) == 1
        proxy.frozen.set()
        with caplog.at_level(logging.WARNING, "etl.scheduler"):
            scheduler._record(None, "error")  # as after a run
            scheduler._record(None, "error")  # the first read still waits: not a second one
        assert "metrics: the database has not answered in 2 s" in caplog.text
        assert "has not answered the previous read yet" in caplog.text
        assert _database_up(metrics) == 0
        assert (
            metrics.registry.get_sample_value("numbers_etl_attempt_outcome", {"outcome": "error"})
            == 1
        )
        proxy.frozen.clear()
        reader = scheduler._reader
        assert reader is not None
        wait_for(lambda: not reader.is_alive(), "the metrics' read to end")
        scheduler._record(None, None)
        assert _database_up(metrics) == 1


def test_the_metrics_do_not_create_a_sqlite_file_that_is_not_there(
    simulator: Simulator, tmp_path: Path
) -> None:
    # a typo in database_url: the metrics' read made the file, empty, and the next run then
    # advised `db upgrade` of it instead of saying that there is no database there
    url = f"sqlite:///{tmp_path / 'tyop.sqlite'}"
    scheduler = SyncScheduler(make_settings(simulator, url, schedule="1d"), metrics=Metrics())
    scheduler._record(None, None)
    assert scheduler.run_once() == "error"
    assert not (tmp_path / "tyop.sqlite").exists()


def test_a_run_skipped_because_the_one_before_still_goes_says_when_the_next_is(
    simulator: Simulator, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # APScheduler's own warning named the time it skipped as the job's "next run at"
    simulator.faults.set_latency(0.3)  # a run of several seconds, on a 1 s schedule
    scheduler = SyncScheduler(make_settings(simulator, db_url, page_size=10, schedule="1s"))

    def skipped() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if "skipped the run due at" in r.getMessage()
        ]

    def close_after_a_skip() -> None:
        try:
            wait_for(skipped, "a skipped run", timeout=30)
        finally:
            scheduler.close("test")

    closer = threading.Thread(target=close_after_a_skip)
    with caplog.at_level(logging.WARNING, "etl.scheduler"):
        closer.start()
        scheduler.run_forever(run_now=True)
        closer.join()
    assert skipped(), caplog.text
    line = skipped()[0]
    match = re.fullmatch(
        r"skipped the run due at (\S+ \S+) UTC: the run before it was still going; "
        r"next run at (\S+ \S+) UTC",
        line,
    )
    assert match, line
    assert match.group(2) > match.group(1)


# --- catching up a missed run, and the metrics after an outage --------------------------------

NOW = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def run_forever_while(
    scheduler: SyncScheduler, steps: Callable[[], object], **options: bool
) -> None:
    """``scheduler.run_forever(**options)`` while ``steps`` runs in a thread; closed after
    them, and whatever they raised raised here."""
    raised: list[BaseException] = []

    def steps_then_close() -> None:
        try:
            steps()
        except BaseException as exc:
            raised.append(exc)
        finally:
            scheduler.close("test")

    closer = threading.Thread(target=steps_then_close)
    closer.start()
    scheduler.run_forever(**options)
    closer.join()
    if raised:
        raise raised[0]


def _scheduler(schedule: str) -> SyncScheduler:
    return SyncScheduler(Settings(schedule=schedule))


def test_a_slot_missed_since_the_last_run_is_run_at_once() -> None:
    """The process was down (a crash, a deploy, a host that was off) across a slot: the
    run waited for the next slot, up to 6 h on the default schedule."""
    hourly = _scheduler("1h")
    trigger, first, why = hourly.plan(NOW, NOW - timedelta(hours=2, minutes=10))
    assert (trigger, first) == (hourly.trigger, NOW)
    assert why == (
        "catching up: the run due at 2026-03-01 11:50:00 UTC did not happen (the last run "
        "started at 2026-03-01 10:50:00 UTC); running one now"
    )
    six_hourly = _scheduler("0 */6 * * *")
    _, first, why = six_hourly.plan(NOW, datetime(2026, 3, 1, 6, 0, 2, tzinfo=UTC))
    assert first == NOW
    assert "the run due at 2026-03-01 12:00:00 UTC did not happen" in why


def test_without_a_missed_slot_the_schedule_keeps_its_time() -> None:
    six_hourly = _scheduler("0 */6 * * *")
    assert six_hourly.plan(NOW, datetime(2026, 3, 1, 12, 0, 3, tzinfo=UTC)) == (
        six_hourly.trigger, None, ""
    )  # fmt: skip
    assert six_hourly.plan(NOW, None) == (six_hourly.trigger, None, "")  # no run yet
    # an interval counts from the last run, not from this start: a restart 50 minutes
    # after a run of an hourly schedule runs 10 minutes later, not an hour
    trigger, first, why = _scheduler("1h").plan(NOW, NOW - timedelta(minutes=50))
    assert (first, why) == (NOW + timedelta(minutes=10), "")  # explicit: a slow start runs it
    assert trigger.get_next_fire_time(None, NOW) == NOW + timedelta(minutes=10)
    # a last run "in the future" (another host's clock ahead): an interval from this start
    hourly = _scheduler("1h")
    assert hourly.plan(NOW, NOW + timedelta(minutes=2)) == (hourly.trigger, None, "")


def test_a_scheduler_started_after_a_missed_slot_runs_at_once(
    simulator: Simulator, db_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(simulator, db_url, schedule="1h")
    scheduler = SyncScheduler(settings)
    assert scheduler.last_started() == (True, None)  # no run yet: no catch-up
    assert scheduler.run_once() == "succeeded"
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(update(sync_runs).values(started_at=two_hours_ago))
    assert scheduler.last_started() == (True, two_hours_ago)

    scheduler = SyncScheduler(settings)
    with caplog.at_level(logging.WARNING, "etl.scheduler"):
        run_forever_while(scheduler, lambda: wait_for(lambda: scheduler.outcomes, "the run"))
    assert list(scheduler.outcomes) == ["succeeded"]
    assert "catching up: the run due at " in caplog.text
    assert [r.status for r in runs_of(db_url)] == ["succeeded", "succeeded"]


@pytest.mark.parametrize("empty_db_url", ["postgresql", "mysql"], indirect=True)
def test_metrics_read_while_the_database_was_down_come_back_without_a_run(
    simulator: Simulator, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database down when the scheduler started left database_up 0 and no last-run
    figures until the next run, up to 6 h later."""
    monkeypatch.setattr(scheduler_module, "METRICS_RETRY", 1)
    monkeypatch.setattr(scheduler_module, "METRICS_READ_WAIT", 5)
    SyncScheduler(make_settings(simulator, db_url)).run_once()
    (run,) = runs_of(db_url)
    metrics = Metrics()
    with proxy_to(db_url) as (proxy, proxied):
        proxy.down()
        settings = make_settings(simulator, proxied, schedule="1d")
        scheduler = SyncScheduler(settings, metrics=metrics)

        def up() -> None:
            wait_for(
                lambda: metrics.registry.get_sample_value("numbers_etl_last_run_id") is None,
                "the first read to fail (its figures left out)",
            )
            assert _database_up(metrics) == 0
            proxy.up()
            wait_for(lambda: _database_up(metrics) == 1, "a read once the database is up")

        run_forever_while(scheduler, up, catch_up=False)
    assert metrics.registry.get_sample_value("numbers_etl_last_run_id") == run.id
    assert list(scheduler.outcomes) == []  # no run: the figures came from the retry


@pytest.mark.parametrize("job", ["_catch_up_later", "_retry_metrics"])
@pytest.mark.parametrize("empty_db_url", ["postgresql", "mysql"], indirect=True)
def test_a_retry_waiting_on_a_database_that_does_not_answer_does_not_hold_up_a_stop(
    simulator: Simulator, db_url: str, monkeypatch: pytest.MonkeyPatch, job: str
) -> None:
    """The every-minute jobs (the catch-up check, the metrics' retry) wait on the database
    for up to METRICS_READ_WAIT seconds; a stop must not wait with them: APScheduler's
    executor keeps the process until its jobs return. The catch-up check waited it out."""
    monkeypatch.setattr(scheduler_module, "METRICS_READ_WAIT", 60)
    with proxy_to(db_url) as (proxy, proxied):
        proxy.frozen.set()  # connections accepted, nothing answered
        scheduler = SyncScheduler(make_settings(simulator, proxied), metrics=Metrics())
        retry = threading.Thread(target=getattr(scheduler, job), daemon=True)
        retry.start()
        reading = ("last-run-read", "metrics-read")
        wait_for(lambda: any(t.name in reading for t in threading.enumerate()), "the job's read")
        scheduler.close()
        retry.join(10)  # the driver's own connect timeout is 15 s, the wait 60 s
        stopped = not retry.is_alive()
        proxy.frozen.clear()
    assert stopped


@pytest.mark.parametrize("empty_db_url", ["postgresql", "mysql"], indirect=True)
def test_a_missed_slot_is_caught_up_once_a_database_down_at_start_answers(
    simulator: Simulator, db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reboot the scheduler may start before the database: the missed run waited
    for the next slot."""
    monkeypatch.setattr(scheduler_module, "METRICS_RETRY", 1)
    monkeypatch.setattr(scheduler_module, "METRICS_READ_WAIT", 5)
    SyncScheduler(make_settings(simulator, db_url)).run_once()
    with engine.begin() as conn:
        conn.execute(update(sync_runs).values(started_at=datetime.now(UTC) - timedelta(hours=2)))
    with proxy_to(db_url) as (proxy, proxied):
        proxy.down()
        scheduler = SyncScheduler(make_settings(simulator, proxied, schedule="1h"))

        def up() -> None:
            wait_for(lambda: scheduler.scheduler.get_job("catch-up"), "the catch-up check")
            proxy.up()
            wait_for(lambda: scheduler.outcomes, "the catch-up run")

        run_forever_while(scheduler, up)
    assert list(scheduler.outcomes) == ["succeeded"]
    assert [r.status for r in runs_of(db_url)] == ["succeeded", "succeeded"]

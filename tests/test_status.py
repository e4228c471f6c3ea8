"""`numbers-etl status`: the monitoring check's exit codes and what it says, on each database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, update

from etl.cli import cli
from etl.records import Scope
from etl.status import parse_duration
from etl.store import runs
from etl.store.lock import DatabaseLock
from etl.store.schema import LOCK_NAME, sync_lock, sync_scopes


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def add_run(engine: Engine, status: str, started: datetime, error: str | None = None) -> int:
    """A finished (or running) run with a US and an NL scope, through the store's own code."""
    with engine.begin() as conn:
        run_id, scope_ids = runs.start_run(conn, started, [Scope("US"), Scope("NL")])
        scope_status = {"succeeded": "complete", "running": "running"}.get(status, "failed")
        if status != "running":
            for row_id in scope_ids:
                runs.finish_scope(conn, row_id, scope_status, started + timedelta(seconds=5), error)
            runs.finish_run(conn, run_id, status, started + timedelta(seconds=5), error)
    return run_id


def status(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["status", "--database-url", db_url, *args])


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("2d", 172800)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "12", "h", "1.5h", "-1h", "12 hours", "0h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration such as 90s, 30m, 12h or 2d"):
        parse_duration(text)


def test_no_runs_is_a_problem(db_url: str) -> None:
    result = status(db_url)
    assert result.exit_code == 1
    assert "last run: none" in result.stdout
    assert "PROBLEM: no sync has succeeded yet" in result.stdout


def test_recent_success_is_healthy(db_url: str, engine: Engine) -> None:
    run_id = add_run(engine, "succeeded", ago(hours=1))
    result = status(db_url, "--max-age", "12h")
    assert result.exit_code == 0, result.output
    assert f"last run: {run_id} succeeded" in result.stdout
    assert f"last successful run: {run_id} succeeded" in result.stdout
    assert "  US: complete" in result.stdout
    assert "  NL: complete" in result.stdout
    assert result.stdout.rstrip().endswith("OK: the last successful sync is younger than 12h")


def test_old_success_is_a_problem(db_url: str, engine: Engine) -> None:
    add_run(engine, "succeeded", ago(days=3, minutes=-30))  # finished 2d 23h 30m ago
    result = status(db_url, "--max-age", "2d")
    assert result.exit_code == 1
    assert "PROBLEM: the last successful sync finished 2d 23h ago" in result.stdout
    assert "more than --max-age 2d" in result.stdout
    assert status(db_url, "--max-age", "4d").exit_code == 0


def test_failed_last_run_is_a_problem_even_after_a_recent_success(
    db_url: str, engine: Engine
) -> None:
    add_run(engine, "succeeded", ago(hours=2))
    failed = add_run(engine, "failed", ago(hours=1), "US: failed: 503")
    result = status(db_url)
    assert result.exit_code == 1
    assert f"PROBLEM: the last run ({failed}) is failed" in result.stdout
    assert "error: US: failed: 503" in result.stdout
    assert "  US: failed, 0 numbers on 0 pages (US: failed: 503)" in result.stdout


@pytest.mark.parametrize(("last", "code"), [("partial", 1), ("abandoned", 1), ("aborted", 0)])
def test_status_of_the_last_finished_run(db_url: str, engine: Engine, last: str, code: int) -> None:
    add_run(engine, "succeeded", ago(hours=2))
    add_run(engine, last, ago(hours=1))
    assert status(db_url).exit_code == code


def test_a_run_in_progress_is_judged_by_the_last_finished_one(db_url: str, engine: Engine) -> None:
    add_run(engine, "succeeded", ago(hours=2))
    lock = DatabaseLock(engine)
    lock.acquire()  # as the sync running it holds it
    try:
        running = add_run(engine, "running", ago(minutes=1))
        result = status(db_url)
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    assert f"last run: {running} running" in result.stdout
    assert "last finished run:" in result.stdout
    assert "  US: running" in result.stdout


def hold_lock(engine: Engine, holder: str, expires_at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(sync_lock)
            .where(sync_lock.c.name == LOCK_NAME)
            .values(holder=holder, acquired_at=ago(hours=3), expires_at=expires_at)
        )


@pytest.mark.parametrize(
    ("holder", "expires", "why"),
    [
        (None, None, "nothing holds the sync lock"),
        ("other-host:4242:abcd1234:", timedelta(minutes=-10), "the sync lock expired 10m ago"),
    ],
)
def test_a_running_run_whose_lock_has_no_live_holder_is_a_problem(
    db_url: str, engine: Engine, holder: str | None, expires: timedelta | None, why: str
) -> None:
    """Its process died (a crash, the OOM killer, a watchdog's SIGKILL): nothing will
    finish it, and status said OK on the strength of the run before until --max-age."""
    add_run(engine, "succeeded", ago(hours=2))
    running = add_run(engine, "running", ago(hours=1))
    hold_lock(engine, holder, None if expires is None else datetime.now(UTC) + expires)
    result = status(db_url)
    assert result.exit_code == 1, result.output
    assert (
        f"PROBLEM: run {running} is marked running, but {why}: the process running it died "
        "or lost the database. The next sync marks it abandoned" in result.stdout
    )


def test_a_running_run_whose_lock_holder_lives_on_another_host_is_not_a_problem(
    db_url: str, engine: Engine
) -> None:
    add_run(engine, "succeeded", ago(hours=2))
    add_run(engine, "running", ago(hours=1))
    hold_lock(engine, "other-host:4242:abcd1234:", datetime.now(UTC) + timedelta(minutes=4))
    result = status(db_url)
    assert result.exit_code == 0, result.output


def test_a_run_in_progress_shows_its_counts_so_far(db_url: str, engine: Engine) -> None:
    # the run's own counts are written when it ends: status and runs said 0 numbers for a
    # run that had committed pages of them
    running = add_run(engine, "running", ago(minutes=1))
    with engine.begin() as conn:  # a page of each country, as the writer counts it
        conn.execute(
            update(sync_scopes)
            .where(sync_scopes.c.run_id == running)
            .values(pages=1, items=99, listed=97, price_changes=2)
        )
    result = status(db_url)
    assert "; so far 198 numbers, listed 194, removed 0, price changes 4" in result.stdout
    listed = CliRunner().invoke(cli, ["runs", "--database-url", db_url])
    assert listed.exit_code == 0, listed.output
    (row,) = [
        line.split() for line in listed.stdout.splitlines() if line.split()[:1] == [str(running)]
    ]
    header = listed.stdout.splitlines()[0].split()
    assert dict(zip(header, row[:2] + row[3:], strict=False))["items"] == "198"


def test_missing_sqlite_file_is_a_problem_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.sqlite"
    result = status(f"sqlite:///{path}")
    assert result.exit_code == 1
    assert result.stdout == f"PROBLEM: no database at {path}: no sync has run yet\n"
    assert not path.exists()


def test_unreachable_database_exits_1() -> None:
    result = status("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot use the database ")


def test_bad_max_age_is_a_usage_error(db_url: str) -> None:
    result = status(db_url, "--max-age", "soon")
    assert result.exit_code == 2
    assert "'soon' is not a duration such as 90s, 30m, 12h or 2d" in result.stderr


def test_a_country_failing_while_runs_of_others_succeed_is_a_problem(
    db_url: str, engine: Engine
) -> None:
    """`sync --country US` succeeds after a run where NL failed: the last run is fine, but
    NL, configured, is not."""
    started = ago(minutes=30)
    with engine.begin() as conn:
        run_id, (us, nl) = runs.start_run(conn, started, [Scope("US"), Scope("NL")])
        runs.finish_scope(conn, us, "complete", started, None)
        runs.finish_scope(conn, nl, "failed", started, "503")
        runs.finish_run(conn, run_id, "partial", started, "NL: failed: 503")
        later = started + timedelta(minutes=10)
        run_id, (us,) = runs.start_run(conn, later, [Scope("US")])
        runs.finish_scope(conn, us, "complete", later, None)
        runs.finish_run(conn, run_id, "succeeded", later, None)
    configured = {"NUMBERS_ETL_COUNTRIES": "US,NL"}
    result = CliRunner().invoke(cli, ["status", "--database-url", db_url], env=configured)
    assert result.exit_code == 1, result.output
    assert "PROBLEM: NL has never been listed completely" in result.stdout
    assert "PROBLEM: NL is failed in its last run" in result.stdout
    assert "US" not in "".join(line for line in result.stdout.splitlines() if "PROBLEM" in line)
    # once NL is listed completely again, all is well
    with engine.begin() as conn:
        now = ago(minutes=1)
        run_id, (nl,) = runs.start_run(conn, now, [Scope("NL")])
        runs.finish_scope(conn, nl, "complete", now, None)
        runs.finish_run(conn, run_id, "succeeded", now, None)
    result = CliRunner().invoke(cli, ["status", "--database-url", db_url], env=configured)
    assert result.exit_code == 0, result.output


def test_an_empty_default_database_means_no_sync_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler's metrics open the default SQLite file before the first sync, which
    leaves it empty: that is "no sync has run yet" (1), not "run db upgrade" (2)."""
    from etl.store.engine import make_engine

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NUMBERS_ETL_DATABASE_URL", raising=False)
    monkeypatch.delenv("NUMBERS_ETL_CONFIG", raising=False)
    engine = make_engine("sqlite:///numbers_stock.sqlite")
    engine.connect().close()
    engine.dispose()
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 1, result.output
    assert "PROBLEM: no sync has run yet" in result.output

"""Edges of the operations code: connection options a driver needs or skips, relative
migration targets, SQLite URI filenames, and a sync that lost its lock (not a database that
hangs). Real databases, the real CLI; no mocks."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.engine import make_url

from etl.simulator import Simulator
from etl.store import migrate
from etl.store.engine import begin_write, make_engine
from etl.store.schema import sync_lock
from etl.sync import Sync
from tests.conftest import database_url, make_settings, sim_env
from tests.procs import (
    DEADLINE,
    etl_process,
    invoke,
    running_with_pages,
    runs_of,
    sqlite_url,
    stop,
    wait_for,
)

__all__ = ["sqlite_url"]  # a fixture


def _with_query(url: str, **query: str) -> str:
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def test_libpq_ssl_files_it_does_not_need_are_not_a_config_error(tmp_path: Path) -> None:
    # libpq opens sslrootcert only for sslmode=verify-ca/verify-full, and skips a missing
    # sslcert / sslcrl (and then sslkey): these URLs connect, as they did before ea3488d.
    base = database_url("postgresql", tmp_path)
    missing = tmp_path / "absent"
    for query in (
        {"sslmode": "disable", "sslrootcert": str(missing / "root.crt")},
        {
            "sslmode": "prefer",
            "sslrootcert": str(missing / "root.crt"),
            "sslcert": str(missing / "postgresql.crt"),
            "sslkey": str(missing / "postgresql.key"),
            "sslcrl": str(missing / "root.crl"),
        },
    ):
        url = _with_query(base, **query)
        result = invoke({"NUMBERS_ETL_DATABASE_URL": url}, "db", "current")
        assert result.exit_code == 0, (query, result.output)
        assert result.stdout.startswith("database: ")


def test_pymysql_missing_read_default_file_is_not_a_config_error(tmp_path: Path) -> None:
    # PyMySQL reads read_default_file with configparser, which skips a missing file: the
    # URL connects, as it did before ea3488d.
    url = _with_query(
        database_url("mysql", tmp_path), read_default_file=str(tmp_path / "absent" / "my.cnf")
    )
    result = invoke({"NUMBERS_ETL_DATABASE_URL": url}, "db", "current")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("database: ")


def test_a_tilde_ssl_ca_that_pymysql_cannot_open_is_a_config_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    # The check expands '~', PyMySQL does not (ssl.create_default_context(cafile='~/ca.pem')):
    # the check passes and the command dies with a FileNotFoundError traceback (exit 1).
    home = tmp_path / "home"
    home.mkdir()
    (home / "ca.pem").write_text("not used: the driver never finds it\n")
    url = _with_query(database_url("mysql", tmp_path), ssl_ca="~/ca.pem")
    result = invoke({"NUMBERS_ETL_DATABASE_URL": url, "HOME": str(home)}, "db", "current")
    assert not isinstance(result.exception, FileNotFoundError), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "ssl_ca" in result.stderr


def test_a_mysql_urls_own_init_command_runs_after_numbers_etls(tmp_path: Path) -> None:
    # The engine's init_command (sql_mode, UTC) replaced the URL's without a word
    url = _with_query(
        database_url("mysql", tmp_path), init_command="SET SESSION innodb_lock_wait_timeout=7"
    )
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            waits, zone, mode = conn.exec_driver_sql(
                "SELECT @@session.innodb_lock_wait_timeout, @@session.time_zone, @@session.sql_mode"
            ).one()
    finally:
        engine.dispose()
    assert int(waits) == 7
    assert zone == "+00:00"
    assert "STRICT_ALL_TABLES" in mode


def test_a_row_lock_held_elsewhere_fails_its_country_instead_of_hanging_the_sync(
    simulator: Simulator, tmp_path: Path
) -> None:
    # A page's write waited for ever on a row another session kept locked (a transaction
    # left open by hand): no log line, `status` OK, every scheduled run skipped after it
    url = database_url("postgresql", tmp_path)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "50s"
        migrate.upgrade(engine)
        settings = make_settings(simulator, url)
        assert Sync(settings, engine=engine).run().status == "succeeded"
        quick = _with_query(url, options="-c lock_timeout=1s")  # the URL's own wins
        with engine.connect() as holder:
            holder.exec_driver_sql(
                "SELECT id FROM numbers WHERE country_code = 'NL' ORDER BY id LIMIT 1 FOR UPDATE"
            )
            result = Sync(make_settings(simulator, quick)).run()
            holder.rollback()
    finally:
        engine.dispose()
    statuses = {s.scope.key: s.status for s in result.scopes}
    assert statuses == {"US": "complete", "NL": "failed"}
    assert "lock timeout" in (result.scopes[1].error or "")
    assert result.status == "partial"


def test_db_upgrade_to_a_relative_revision(tmp_path: Path) -> None:
    # alembic's relative revisions (+1) worked with `db upgrade --revision` before c2c211b
    url = f"sqlite:///{tmp_path / 'rel.sqlite'}"
    env = {"NUMBERS_ETL_DATABASE_URL": url}
    assert invoke(env, "db", "upgrade", "--revision", "0001").exit_code == 0
    result = invoke(env, "db", "upgrade", "--revision", "+1")
    assert result.exit_code == 0, result.output
    engine = make_engine(url)
    try:
        assert migrate.current_revision(engine) == "0002"
    finally:
        engine.dispose()


def test_runs_on_a_sqlite_uri_filename(tmp_path: Path) -> None:
    # A read-only URI filename (sqlite:///file:PATH?mode=ro&uri=true) is a database that
    # exists; `runs` named it missing (exit 2) after 8cd6156.
    path = tmp_path / "history.sqlite"
    env = {"NUMBERS_ETL_DATABASE_URL": f"sqlite:///{path}"}
    assert invoke(env, "db", "upgrade").exit_code == 0
    read_only = {"NUMBERS_ETL_DATABASE_URL": f"sqlite:///file:{path}?mode=ro&uri=true"}
    result = invoke(read_only, "runs")
    assert result.exit_code == 0, result.output
    assert result.stdout == "no runs yet: run `numbers-etl sync`\n"


def test_a_sync_that_lost_its_lock_is_not_killed_as_if_the_database_hung(
    simulator: Simulator, sqlite_url: str, tmp_path: Path
) -> None:
    # The database answers all along; another sync took the lock (as after a pause longer
    # than lock_ttl_seconds). The run stops after its page in flight and finishes `failed`
    # (lock lost). The stuck watchdog used to keep watching after the loss: no refresh
    # succeeds again, so ttl + grace later it said "the database has not answered" and the
    # CLI exited mid-page, leaving the run `running`.
    simulator.faults.set_latency(0.2)
    env = sim_env(
        simulator, sqlite_url, lock_ttl_seconds=10, page_size=1, countries="US", concurrency=1
    )
    proc = etl_process(["sync"], env, tmp_path)
    try:
        wait_for(lambda: running_with_pages(sqlite_url), "the run to commit a page")
        simulator.faults.set_latency(29)  # the next page is slow (under the 30 s read timeout)
        time.sleep(1.0)  # the fast page in flight has returned; a slow one is in flight
        engine = make_engine(sqlite_url)
        try:
            with begin_write(engine) as conn:  # another sync takes the lock
                conn.execute(
                    update(sync_lock).values(
                        holder="other-host:1:x",
                        expires_at=datetime.now(UTC) + timedelta(seconds=300),
                    )
                )
        finally:
            engine.dispose()
        _out, err = proc.communicate(timeout=DEADLINE)
    finally:
        simulator.faults.set_latency(0)
        stop(proc)
    (run,) = runs_of(sqlite_url)
    assert (run.status, "has not answered" in err) == ("failed", False), (run.status, err)
    assert proc.returncode == 1

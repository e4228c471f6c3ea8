"""Migrations: upgrade to head and downgrade to base on every database, and no drift between
the migrations and the table definitions in etl/store/schema.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import inspect, select, text

from etl.store import migrate
from etl.store.engine import make_engine
from etl.store.schema import NUMBERS_FILLFACTOR, metadata, numbers, sync_lock
from tests.conftest import database_url
from tests.procs import DEADLINE, etl_process, invoke, stop, wait_for

VIEWS = {"v_available_numbers", "v_price_history", "v_removed_numbers", "v_daily_availability"}


def test_upgrade_downgrade_round_trip_without_drift(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        with engine.connect() as conn:
            insp = inspect(conn)
            assert set(metadata.tables) <= set(insp.get_table_names())
            assert set(insp.get_view_names()) >= VIEWS
            assert conn.execute(select(sync_lock.c.name)).scalars().all() == ["sync"]
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []

        migrate.downgrade(engine)
        with engine.connect() as conn:
            insp = inspect(conn)
            assert set(insp.get_table_names()) & set(metadata.tables) == set()
            assert set(insp.get_view_names()) & VIEWS == set()
        assert migrate.current_revision(engine) is None

        migrate.upgrade(engine)  # and back up again
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


@pytest.fixture
def newer_db_url(db_url: str) -> str:
    """A database migrated by a newer numbers-etl (stamped with a revision this code has not):
    what an operator has after rolling the code back following a `db upgrade`."""
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        engine.dispose()
    return db_url


def test_db_current_does_not_call_a_newer_database_behind(newer_db_url: str) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": newer_db_url}, "db", "current")
    assert "behind" not in result.output, result.output  # `db upgrade` cannot help here
    assert result.stdout.startswith("database: 0099  code: ")
    assert "(ahead: migrated by a newer numbers-etl" in result.stdout


def test_db_upgrade_of_a_newer_database_is_one_line_error_not_a_traceback(
    newer_db_url: str,
) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": newer_db_url}, "db", "upgrade")
    assert not isinstance(result.exception, CommandError), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: "), result.output
    assert "0099" in result.stderr


def test_runs_on_a_newer_database_does_not_advise_db_upgrade(newer_db_url: str) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": newer_db_url}, "runs")
    assert result.exit_code == 2, result.output
    assert "run `numbers-etl db upgrade`" not in result.stderr, result.stderr  # it would fail
    assert "at migration 0099, which this version of numbers-etl" in result.stderr
    assert "a newer numbers-etl migrated it" in result.stderr


def test_db_upgrade_to_an_unknown_revision_is_a_usage_error(db_url: str) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": db_url}, "db", "upgrade", "--revision", "nope")
    assert not isinstance(result.exception, CommandError), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: there is no migration 'nope': "), result.output


# A `db upgrade` that stops just before creating its first table until a file appears.
PAUSED_UPGRADE = """
import sys, time
from pathlib import Path
from sqlalchemy import event
from etl.store import migrate
from etl.store.engine import make_engine
url, paused, proceed = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
engine = make_engine(url)

@event.listens_for(engine, "before_cursor_execute")
def pause(conn, cursor, statement, *args):
    if "CREATE TABLE numbers " in statement and not paused.exists():
        paused.touch()
        while not proceed.exists():
            time.sleep(0.05)

migrate.upgrade(engine)
"""


def test_two_db_upgrades_at_once_both_succeed(empty_db_url: str, tmp_path: Path) -> None:
    """Two `numbers-etl db upgrade` of one new database at once (two containers starting,
    an init job and an operator): the second should wait for the first and find the
    database at head, not fail. Observed: one of the two exits 1 with `Error: cannot use the
    database ...: duplicate key value violates unique constraint "pg_type_typname_nsp_index"`
    (PostgreSQL) or `(1050, "Table 'numbers' already exists")` (MariaDB)."""
    if empty_db_url.startswith("sqlite"):
        pytest.skip("SQLite serialises the two (BEGIN IMMEDIATE)")
    paused, proceed = tmp_path / "paused", tmp_path / "proceed"
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_UPGRADE, empty_db_url, str(paused), str(proceed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    second = None
    try:
        wait_for(paused.exists, "the first upgrade to reach CREATE TABLE numbers")
        second = etl_process(
            ["db", "upgrade"], {"NUMBERS_ETL_DATABASE_URL": empty_db_url}, tmp_path
        )
        time.sleep(3)  # the second upgrade runs into the first (or waits for it)
        proceed.touch()
        _out2, err2 = second.communicate(timeout=DEADLINE)
        _out1, err1 = first.communicate(timeout=DEADLINE)
        assert (first.returncode, err1[-300:]) == (0, "")
        assert (second.returncode, err2) == (0, "")
        engine = make_engine(empty_db_url)
        try:
            assert migrate.current_revision(engine) == migrate.head_revision()
        finally:
            engine.dispose()
    finally:
        proceed.touch()
        stop(first)
        if second is not None:
            stop(second)


def test_a_mysql_upgrade_waits_only_for_upgrades_of_its_own_database(tmp_path: Path) -> None:
    """MySQL's named locks cover the server: with one name for every database, a `db
    upgrade` waited up to 600 s for a migration of another database on the same server."""
    url = database_url("mysql", tmp_path)
    engine = make_engine(url)
    try:
        with engine.connect() as holder:
            ours = str(holder.execute(text("SELECT DATABASE()")).scalar())
            for database in ("another_database", "numbers_etl_other"):
                name = migrate.migration_lock_name(database)
                assert holder.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1
            assert migrate.migration_lock_name(ours) != migrate.migration_lock_name("x" + ours)
            assert len(migrate.migration_lock_name("d" * 64)) <= 64
            started = time.monotonic()
            result = invoke({"NUMBERS_ETL_DATABASE_URL": url}, "db", "upgrade")
            assert result.exit_code == 0, result.output
            assert time.monotonic() - started < 60
            # its own database's lock still makes it wait (as two upgrades of one take turns)
            own = migrate.migration_lock_name(ours)
            assert holder.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": own}).scalar() == 1
            waiting = etl_process(["db", "upgrade"], {"NUMBERS_ETL_DATABASE_URL": url}, tmp_path)
            try:
                with pytest.raises(subprocess.TimeoutExpired):
                    waiting.communicate(timeout=3)
            finally:
                stop(waiting)
    finally:
        engine.dispose()


def test_upgrade_keeps_the_grants_of_the_bi_views(empty_db_url: str) -> None:
    """PostgreSQL: a read-only BI role granted SELECT on the views of an older revision
    loses it on the two views migration 0003 drops and recreates; dashboards on
    v_daily_availability then fail with `permission denied` after `db upgrade`."""
    engine = make_engine(empty_db_url)
    if engine.dialect.name != "postgresql":
        engine.dispose()
        pytest.skip("grants on views are dropped with the view on PostgreSQL")
    role = "numbers_etl_review_bi"
    try:
        migrate.upgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
            conn.execute(text(f"CREATE ROLE {role}"))
            conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
        migrate.upgrade(engine)
        with engine.connect() as conn:
            granted = {
                view: conn.scalar(
                    text("SELECT has_table_privilege(:role, :view, 'SELECT')"),
                    {"role": role, "view": view},
                )
                for view in sorted(VIEWS)
            }
        assert granted == dict.fromkeys(VIEWS, True)
    finally:
        with engine.begin() as conn:
            for view in VIEWS:
                conn.execute(text(f"DROP VIEW IF EXISTS {view}"))
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        engine.dispose()


def test_db_upgrade_to_an_older_revision_says_it_stays(db_url: str) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": db_url}, "db", "upgrade", "--revision", "0001")
    assert result.exit_code == 0, result.output
    assert f"is at revision {migrate.head_revision()}\n" in result.stdout
    assert "(not 0001: the database was already past it;" in result.stdout


def test_numbers_leaves_room_on_its_pages_for_the_rows_every_sync_rewrites(
    empty_db_url: str,
) -> None:
    """PostgreSQL: `numbers` has the fillfactor that etl/store/schema.py declares (migration
    0004), so that a sync's update of a row can stay on its page (a HOT update, no new index
    entries); a downgrade to 0003 resets it. Elsewhere no storage option is set."""
    engine = make_engine(empty_db_url)
    try:
        migrate.upgrade(engine)
        options = inspect(engine).get_table_options("numbers")
        if engine.dialect.name != "postgresql":
            assert "postgresql_with" not in options
            return
        declared = numbers.dialect_options["postgresql"]["with"]
        assert declared == {"fillfactor": NUMBERS_FILLFACTOR}
        assert options["postgresql_with"] == {"fillfactor": str(NUMBERS_FILLFACTOR)}
        migrate.downgrade(engine, "0003")
        assert "postgresql_with" not in inspect(engine).get_table_options("numbers")
    finally:
        engine.dispose()


def test_a_first_upgrade_that_fails_halfway_leaves_nothing_and_runs_again(
    empty_db_url: str,
) -> None:
    """The first upgrade fails at its third view (here a table already has the view's name;
    in the field, a MariaDB user without the CREATE VIEW privilege). MySQL commits each
    CREATE at once, so the tables were left without a revision and every later upgrade
    failed on "Table 'numbers' already exists". It must leave what it created behind on no
    database, keep what was there, and succeed once the cause is gone."""
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE v_removed_numbers (mine INTEGER)"))
            conn.execute(text("INSERT INTO v_removed_numbers (mine) VALUES (7)"))
        with pytest.raises(Exception, match="v_removed_numbers") as caught:
            migrate.upgrade(engine)
        assert "already exists" in str(caught.value)
        assert migrate.current_revision(engine) is None
        insp = inspect(engine)
        left = {*insp.get_table_names(), *insp.get_view_names()} - {"alembic_version"}
        assert left == {"v_removed_numbers"}
        with engine.begin() as conn:
            assert conn.execute(text("SELECT mine FROM v_removed_numbers")).scalar() == 7
            conn.execute(text("DROP TABLE v_removed_numbers"))
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert set(inspect(engine).get_view_names()) >= VIEWS
    finally:
        if "v_removed_numbers" in inspect(engine).get_table_names():
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE v_removed_numbers"))
        engine.dispose()

"""PostgreSQL's statistics of `numbers` kept in step with a sync that grows the table
(etl.store.planner)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url

from etl.simulator import Simulator, SyntheticStock
from etl.store.engine import make_engine
from etl.store.planner import FIRST_ANALYZE, LARGE, TableGrowth
from etl.sync import Sync
from tests.conftest import ACCESS_KEY, ORGANIZATION_ID, make_settings


def test_an_analyze_is_due_when_a_small_table_has_doubled_and_never_for_a_large_one() -> None:
    never_counted = TableGrowth(-1)
    assert [never_counted.added(n) for n in (0, 600, 399, 1, 5000)] == [
        False,
        False,
        False,
        True,  # 1,000 numbers: the first ANALYZE
        False,  # none again until `analyze` has counted the table
    ]
    counted = TableGrowth(3000)
    assert [counted.added(n) for n in (2999, 1)] == [False, True]  # 6,000 numbers
    assert not TableGrowth(LARGE).added(10**9)
    assert not TableGrowth(None).added(10**9)  # not PostgreSQL


def test_a_role_that_may_not_analyze_plans_anew_while_the_table_is_small() -> None:
    small = TableGrowth(0, may_analyze=False)
    assert small.custom_plans
    assert not small.added(10**9)
    assert not TableGrowth(LARGE, may_analyze=False).custom_plans
    assert not TableGrowth(None, may_analyze=False).custom_plans


def test_threads_adding_at_once_get_one_analyze_between_them() -> None:
    growth = TableGrowth(-1)  # due at 1,000
    due: list[bool] = []
    start = threading.Barrier(8)

    def add() -> None:
        start.wait()
        for _ in range(250):
            due.append(growth.added(1))

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(due) == 2000
    assert due.count(True) == 1


def test_a_sqlite_run_never_analyzes(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    try:
        assert not TableGrowth.start(engine).added(10**9)
    finally:
        engine.dispose()


def _generic_plan_of_a_key_check(conn: Connection) -> str:
    """The plan PostgreSQL keeps for a foreign-key check on `numbers` (the query its
    checks run), made now from the table's statistics."""
    conn.execute(text("SET plan_cache_mode = force_generic_plan"))
    conn.execute(
        text(
            "PREPARE key_check(integer) AS "
            "SELECT 1 FROM ONLY numbers x WHERE id = $1 FOR KEY SHARE OF x"
        )
    )
    plan = "\n".join(conn.execute(text("EXPLAIN EXECUTE key_check(1)")).scalars())
    conn.execute(text("DEALLOCATE key_check"))
    conn.execute(text("RESET plan_cache_mode"))
    return plan


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_a_sync_that_grows_a_table_analyzed_while_empty_has_it_analyzed_again(
    db_url: str,
) -> None:
    """An ANALYZE (or VACUUM) of the empty table leaves statistics by which the plan of a
    key check reads `numbers` row by row; kept by every session for the rest of a first
    sync, it made one of 200,000 numbers 3 to 14 times as slow. The sync analyzes the table
    each time it has doubled it, while it is small."""
    admin = make_engine(db_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE numbers"))
        assert "Seq Scan" in _generic_plan_of_a_key_check(conn)
    analyzed: list[str] = []
    engine = make_engine(db_url)

    @event.listens_for(engine, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("ANALYZE"):
            analyzed.append(statement)

    stock = SyntheticStock(seed=11, countries=("US", "NL"), size=5000)
    try:
        with Simulator(stock, access_key=ACCESS_KEY, organization_id=ORGANIZATION_ID) as sim:
            settings = make_settings(sim, db_url, countries="US,NL", concurrency=1)
            first = Sync(settings, engine=engine).run()
            assert (first.status, first.total("listed")) == ("succeeded", 5000)
            # at 1,089 numbers (11 pages of 99), at 2,178 (doubled) and at about 4,400 (again)
            assert analyzed == ["ANALYZE numbers"] * 3
            with admin.connect() as conn:
                counted = conn.execute(
                    text("SELECT reltuples FROM pg_class WHERE oid = 'numbers'::regclass")
                ).scalar_one()
                assert counted >= 4 * FIRST_ANALYZE
                assert "Index" in _generic_plan_of_a_key_check(conn)
            again = Sync(settings, engine=engine).run()  # nothing added: statistics stand
            assert (again.status, again.total("listed")) == ("succeeded", 0)
            assert analyzed == ["ANALYZE numbers"] * 3
    finally:
        engine.dispose()
        admin.dispose()


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_an_analyze_that_fails_is_logged_and_the_connection_goes_on(
    empty_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(empty_db_url)  # no tables: the ANALYZE fails
    try:
        with engine.connect() as conn, caplog.at_level(logging.WARNING, "etl.sync"):
            TableGrowth(-1).analyze(conn)
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert "could not ANALYZE numbers (the sync goes on" in caplog.text
        assert 'relation "numbers" does not exist' in caplog.text
    finally:
        engine.dispose()


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_a_sync_by_a_role_that_may_not_analyze_has_its_pages_planned_anew(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A role that is not the owner: PostgreSQL would refuse its ANALYZE with a warning
    and keep the plans of an empty table; its scopes' sessions plan every statement."""
    role = f"numbers_etl_test_sync_{os.getpid()}"
    admin = make_engine(db_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(
            text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        )
        conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
        conn.execute(text("VACUUM ANALYZE numbers"))
    engine = make_engine(make_url(db_url).set(username=role).render_as_string(False))
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("ANALYZE") or "plan_cache_mode" in statement:
            seen.append(statement)

    stock = SyntheticStock(seed=11, countries=("US", "NL"), size=3000)
    try:
        with Simulator(stock, access_key=ACCESS_KEY, organization_id=ORGANIZATION_ID) as sim:
            settings = make_settings(sim, db_url, countries="US,NL", concurrency=1)
            with caplog.at_level(logging.WARNING, "etl.sync"):
                result = Sync(settings, engine=engine).run()
        assert (result.status, result.total("listed")) == ("succeeded", 3000)
        assert seen == ["SET plan_cache_mode TO force_custom_plan", "RESET plan_cache_mode"] * 2
        assert "this role may not ANALYZE numbers, which is small yet" in caplog.text
        with engine.connect() as conn:  # the pool's connections, as the scopes left them
            assert conn.execute(text("SHOW plan_cache_mode")).scalar_one() == "auto"
    finally:
        engine.dispose()
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()

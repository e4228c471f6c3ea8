"""Shared fixtures: the Bird simulator on 127.0.0.1 and the three databases.

PostgreSQL and MariaDB tests use NUMBERS_ETL_TEST_POSTGRESQL_URL and
NUMBERS_ETL_TEST_MYSQL_URL (defaults: the local servers on 127.0.0.1). Without a server they
skip with a message, except in CI (CI=true), where they are required and fail instead."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url

from etl.config import Settings, load_settings
from etl.simulator import Simulator, SyntheticStock
from etl.store import migrate
from etl.store.engine import make_engine
from etl.store.schema import metadata

ACCESS_KEY = "test-access-key-5f3a9c"
ORGANIZATION_ID = "org-test"

DATABASES = {
    "sqlite": None,
    "postgresql": os.environ.get(
        "NUMBERS_ETL_TEST_POSTGRESQL_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get(
        "NUMBERS_ETL_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}
_reachable: dict[str, str | None] = {}
_own_databases: dict[str, str] = {}


def _own_database(name: str, url: str) -> str:
    """A database of this test process's own on the server of ``url`` (created on first use,
    dropped at exit), so that parallel test runs on one server never see each other."""
    if name not in _own_databases:
        db_name = f"numbers_etl_test_{os.getpid()}"
        admin = make_engine(url)
        try:
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {db_name}"))
                conn.execute(text(f"CREATE DATABASE {db_name}"))
        finally:
            admin.dispose()
        _own_databases[name] = (
            make_url(url).set(database=db_name).render_as_string(hide_password=False)
        )
        atexit.register(_drop_database, url, db_name)
    return _own_databases[name]


def _drop_database(url: str, db_name: str) -> None:
    admin = make_engine(url)
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if admin.dialect.name == "postgresql":
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": db_name},
                )
            conn.execute(text(f"DROP DATABASE IF EXISTS {db_name}"))
    except Exception:  # noqa: S110 - best effort at exit; the next run drops it again
        pass
    finally:
        admin.dispose()


def _require_server(name: str, url: str) -> None:
    if name not in _reachable:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            _reachable[name] = None
        except Exception as exc:  # any failure to connect
            _reachable[name] = str(exc).splitlines()[0]
        finally:
            engine.dispose()
    problem = _reachable[name]
    if problem is None:
        return
    message = (
        f"{name} is not reachable ({problem}); start it on 127.0.0.1 or set "
        f"NUMBERS_ETL_TEST_{name.upper()}_URL to enable these tests"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"required in CI: {message}")
    pytest.skip(message)


def wipe(engine: Engine) -> None:
    """Drop every numbers-etl view and table (the shared test databases start empty)."""
    with engine.begin() as conn:
        insp = inspect(conn)
        for view in insp.get_view_names():
            if view.startswith("v_"):
                conn.execute(text(f"DROP VIEW {view}"))
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        conn.execute(text("DROP TABLE IF EXISTS numbers_etl_demo"))  # the demo's mark


def database_url(name: str, tmp_path: Path) -> str:
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'numbers_stock.sqlite'}"
    url = DATABASES[name]
    assert url is not None
    _require_server(name, url)
    return _own_database(name, url)


@pytest.fixture(params=list(DATABASES))
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of each database, with no numbers-etl tables."""
    url = database_url(request.param, tmp_path)
    engine = make_engine(url)
    try:
        wipe(engine)
        yield url
    finally:
        engine.dispose()


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A URL of each database, migrated to head."""
    engine = make_engine(empty_db_url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return empty_db_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def stock() -> SyntheticStock:
    return SyntheticStock(seed=7, countries=("US", "NL"), size=600)


@pytest.fixture
def simulator(stock: SyntheticStock) -> Iterator[Simulator]:
    with Simulator(stock, access_key=ACCESS_KEY, organization_id=ORGANIZATION_ID) as sim:
        yield sim


def sim_env(sim: Simulator, db_url: str, **overrides: Any) -> dict[str, str]:
    """The environment that points numbers-etl at the simulator and a test database."""
    env = {
        "NUMBERS_ETL_DATABASE_URL": db_url,
        "NUMBERS_ETL_API_URL": sim.url,
        "NUMBERS_ETL_ACCESS_KEY": ACCESS_KEY,
        "NUMBERS_ETL_ORGANIZATION_ID": ORGANIZATION_ID,
        "NUMBERS_ETL_COUNTRIES": "US,NL",
        "NUMBERS_ETL_MAX_REQUESTS_PER_SECOND": "1000",
    }
    env.update({f"NUMBERS_ETL_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def make_settings(sim: Simulator, db_url: str, **overrides: Any) -> Settings:
    return load_settings(env=sim_env(sim, db_url, **overrides))

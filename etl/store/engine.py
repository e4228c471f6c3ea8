"""Engines set up the same way for every database numbers-etl supports."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

PG_LOCK_WAIT_SECONDS = 50  # PostgreSQL's lock_timeout for every session (MySQL's default)
MYSQL_SQL_MODE = (
    "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION,ONLY_FULL_GROUP_BY"
)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    database = parsed.database
    if parsed.query.get("uri") == "true" and database.startswith("file:"):
        # a URI filename (sqlite:///file:/path?mode=ro&uri=true): its path, decoded
        if parsed.query.get("mode") == "memory":
            return None
        path = unquote(urlsplit(database).path)
        return None if path in ("", ":memory:") else Path(path)
    return Path(database)


def error_codes(exc: DBAPIError) -> tuple[str | None, int | None]:
    """A driver error's SQLSTATE (psycopg's; PyMySQL's is its class) and MySQL/MariaDB error
    number (the first of its args), each None where the driver has none."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    number = (getattr(orig, "args", None) or [None])[0]
    return sqlstate, number if isinstance(number, int) else None


# One lock per SQLite engine: the threads of a process that write to one SQLite file queue on
# it instead of on SQLite's busy handler, which sleeps up to 100 ms between tries; with four
# countries writing pages in parallel that sleeping cost more than the writing itself.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` for a transaction that writes; on a SQLite engine made here, the
    process's writers take turns (other processes still wait on ``busy_timeout``)."""
    with engine.connect() as conn, write_transaction(conn):
        yield conn


@contextmanager
def write_transaction(conn: Connection) -> Iterator[Connection]:
    """``conn.begin()`` for a transaction that writes, on a connection the caller keeps (a
    sync holds one per country rather than checking one out of the pool for every page)."""
    with _SQLITE_WRITERS.get(conn.engine) or nullcontext(), conn.begin():
        yield conn


@contextmanager
def async_commits(conn: Connection) -> Iterator[Connection]:
    """On PostgreSQL, the transactions of ``conn`` commit without waiting for the disk
    (``synchronous_commit`` off for its session, reset at the end); elsewhere nothing.

    For the pages of a scope: its close, once every scope is paged, commits with
    ``synchronous_commit`` on, and that commit flushes the write-ahead log up to itself,
    every page before it included; so a server crash can only lose the pages of a scope
    that then never closed, the same as a run killed mid-scope.
    Set once per scope rather than per page: a statement per page cost 5% of a sync."""
    if conn.dialect.name != "postgresql":
        yield conn
        return
    with session_setting(conn, "synchronous_commit", "OFF"):
        yield conn


@contextmanager
def session_setting(conn: Connection, name: str, value: str) -> Iterator[Connection]:
    """PostgreSQL: the setting ``name`` at ``value`` for the session of ``conn`` (set and
    committed at once), reset when done, unless the connection was lost meanwhile."""
    conn.exec_driver_sql(f"SET {name} TO {value}")
    conn.commit()
    try:
        yield conn
    finally:
        if not conn.invalidated:
            with suppress(SQLAlchemyError):
                conn.rollback()
                conn.exec_driver_sql(f"RESET {name}")
                conn.commit()


def db_message(exc: BaseException) -> str:
    """A database error's first line, from its driver: without the SQL, the parameters or
    the URL's password that SQLAlchemy's own message may carry."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url``: WAL and immediate transactions on SQLite (writers queue rather
    than fail), strict utf8mb4 sessions with READ COMMITTED on MySQL/MariaDB, UTC sessions on
    PostgreSQL, and a pool large enough for the parallel countries."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}
        engine = create_engine(url, **kwargs)
        _setup_sqlite(engine)
        _SQLITE_WRITERS[engine] = threading.Lock()
        return engine
    kwargs["pool_size"] = pool_size
    kwargs["max_overflow"] = 4
    given_init: str | Sequence[str] | None = None
    if backend in ("mysql", "mariadb"):  # mysql+pymysql:// or mariadb+pymysql://
        kwargs["isolation_level"] = "READ COMMITTED"
        connect_args: dict[str, Any] = {
            "charset": "utf8mb4",
            "init_command": f"SET SESSION sql_mode='{MYSQL_SQL_MODE}', time_zone='+00:00'",
        }
        waits = _PYMYSQL_WAITS
        # The URL's own init_command (?init_command=SET SESSION ...) would be replaced by
        # this one without a word: it runs after it instead, on every new connection.
        given_init = parsed.query.get("init_command")
    elif backend == "postgresql":
        # PostgreSQL keeps a plan once made: a prepared statement's (psycopg prepares one
        # after 5 runs) and a foreign-key check's. One made while `numbers` looked empty
        # reads the table row by row as a first sync grows it, so a sync that grows the table
        # analyzes it (etl.store.planner). A new plan for every statement and every key
        # check instead (plan_cache_mode=force_custom_plan, before) was a third of
        # PostgreSQL's work in a first sync (bench/RESULTS.md).
        # A row lock held by another session (a transaction left open by hand) made a
        # page's write wait for ever, unnoticed: like MySQL's innodb_lock_wait_timeout
        # (50 s), the wait ends in an error, retried, then failing the country.
        options = f"-c timezone=UTC -c lock_timeout={PG_LOCK_WAIT_SECONDS}s"
        given = parsed.query.get("options")  # the URL's own (?options=-c search_path=...)
        if given:
            options += " " + (given if isinstance(given, str) else " ".join(given))
        connect_args = {"options": options}
        waits = _LIBPQ_WAITS
    else:
        return create_engine(url, **kwargs)
    # How long to wait for the server, unless the URL says: both drivers wait for ever by
    # default, and a server that stopped answering hung even `status`.
    connect_args.update({k: v for k, v in waits.items() if k not in parsed.query})
    kwargs["connect_args"] = connect_args
    engine = create_engine(url, **kwargs)
    if backend in ("mysql", "mariadb") and given_init:
        _init_after_ours(engine, [given_init] if isinstance(given_init, str) else given_init)
    return engine


def _init_after_ours(engine: Engine, statements: Sequence[str]) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)


# PyMySQL's connect_timeout covers only the TCP connect; read_timeout bounds its handshake
# and every answer (no statement of numbers-etl takes minutes).
_PYMYSQL_WAITS = {"connect_timeout": 15, "read_timeout": 120, "write_timeout": 120}
# libpq: a connection that cannot be made, and (TCP keepalive, else after two idle hours) a
# server that vanished from the network.
_LIBPQ_WAITS = {
    "connect_timeout": 15,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


SQLITE_CHECKPOINT_PAGES = 10_000


def _setup_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling begins lazily and deferred, so two writers that
    # both read first deadlock with "database is locked". Take control: BEGIN IMMEDIATE.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        # A commit that leaves the write-ahead log over this many pages copies it into the
        # database (a checkpoint), syncing both files to disk. At SQLite's default of 1,000
        # pages (4 MB) a first sync of 200,000 numbers ran about 100 checkpoints, whose 205
        # fdatasyncs took 0.79 s of its 5-6 s; at 10,000 pages (40 MB), 11 checkpoints and
        # 22 fdatasyncs took 0.26 s. The log is deleted when the database's last connection
        # closes.
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

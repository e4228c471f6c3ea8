"""Alembic environment: runs the migrations against numbers-etl's configured database."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from etl.store.migrate import migration_lock_name
from etl.store.schema import metadata

config = context.config


# Two upgrades of one database at once (two containers starting together) take turns: the
# second waits for the first, then finds the database at head. Without it one of them failed
# on a table the other had just made. SQLite's BEGIN IMMEDIATE already serialises them.
MIGRATION_LOCK_KEY = 0x6E756D62  # a PostgreSQL advisory lock key: "numb"
MIGRATION_LOCK_WAIT = 600  # seconds


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    backend = connection.dialect.name
    with context.begin_transaction():
        if backend == "postgresql":  # held until the transaction ends
            # waits as long as the other upgrade takes, not the sessions' lock_timeout
            connection.execute(text(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_WAIT}s'"))
            connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
        if backend in ("mysql", "mariadb"):  # DDL commits: a lock of the session's
            database = str(connection.execute(text("SELECT DATABASE()")).scalar())
            name = migration_lock_name(database)  # the server's locks are shared
            got = connection.execute(
                text("SELECT GET_LOCK(:name, :wait)"),
                {"name": name, "wait": MIGRATION_LOCK_WAIT},
            ).scalar()
            if got != 1:
                raise SystemExit(
                    f"another numbers-etl migration of the database {database!r} held the "
                    f"lock {name!r} for {MIGRATION_LOCK_WAIT} s; try again when it has "
                    "finished"
                )
            try:
                context.run_migrations()
            finally:
                connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
            return
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # handed over by `numbers-etl db upgrade` and the tests
        _run(connection)
        return
    from etl.config import load_settings
    from etl.errors import ConfigError
    from etl.store.engine import make_engine

    url = context.get_x_argument(as_dictionary=True).get("database_url")
    if url is None:
        try:
            url = load_settings().database_url
        except ConfigError as exc:  # as numbers-etl says it: no traceback
            raise SystemExit(f"numbers-etl: {exc}") from None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("numbers-etl migrations run online only: drop --sql")
run_migrations_online()

"""Alembic environment: runs the migrations against numbers-etl's configured database."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from etl.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # handed over by `numbers-etl db upgrade` and the tests
        _run(connection)
        return
    from etl.config import load_settings
    from etl.store.engine import make_engine

    url = context.get_x_argument(as_dictionary=True).get("database_url")
    if url is None:
        url = load_settings().database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("numbers-etl migrations run online only: drop --sql")
run_migrations_online()

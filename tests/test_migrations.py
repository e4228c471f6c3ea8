"""Migrations: upgrade to head and downgrade to base on every database, and no drift between
the migrations and the table definitions in etl/store/schema.py."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from etl.store import migrate
from etl.store.engine import make_engine
from etl.store.schema import metadata, sync_lock

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

"""v_daily_availability: a country whose scopes all failed or were held that day keeps its row

Since 0003 a day's row of a country came from the country's last run that day with a
complete scope (taken from that day's availability snapshots), each of that run's scopes at
its latest complete listing up to then. A country whose only scope failed all day, or was
held by the mass-removal guard (an empty listing: the outage the guard is there for), had
no snapshot that day, so it had no row: a gap on a daily chart (or a 0, where a BI tool
fills gaps) while v_available_numbers still showed its numbers in stock. Now the day's last
run of the country is taken from sync_scopes, whatever its outcome, dated as its scope
finished (or started, while it runs); each of its scopes still counts at its latest complete
listing up to that run, as it last was. Days with a complete scope give the same rows as
before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 01:10:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "v_daily_availability"


def _revision_0003() -> Any:
    path = Path(__file__).with_name("0003_daily_availability_and_days_in_stock.py")
    spec = importlib.util.spec_from_file_location("numbers_etl_migration_0003", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _view_0003(dialect: str) -> str:
    sql: str = _revision_0003()._views(dialect)[NAME]
    return sql


def _view(dialect: str) -> str:
    """0003's view with its ``last_run`` taken from every scope a run had for the country
    (sync_scopes) instead of from the complete ones' snapshots."""
    sql = _view_0003(dialect)
    last_run = sql[: sql.index("), counted AS (")]
    assert last_run.count("l.taken_at") == 2, last_run
    assert last_run.count("FROM availability_snapshots l ") == 1, last_run
    new = last_run.replace("l.taken_at", "COALESCE(l.finished_at, l.started_at)").replace(
        "FROM availability_snapshots l ", "FROM sync_scopes l "
    )
    return new + sql[len(last_run) :]


def _replace(sql: str) -> None:
    if op.get_bind().dialect.name == "sqlite":  # no CREATE OR REPLACE VIEW
        op.execute(f"DROP VIEW IF EXISTS {NAME}")
        op.execute(f"CREATE VIEW {NAME} AS {sql}")
    else:  # in place: a dropped view loses its grants (see 0003)
        op.execute(f"CREATE OR REPLACE VIEW {NAME} AS {sql}")


def upgrade() -> None:
    _replace(_view(op.get_bind().dialect.name))


def downgrade() -> None:
    _replace(_view_0003(op.get_bind().dialect.name))

"""v_daily_availability: a complete scope counts at its own run's snapshot, with no lookup

For each day and scope of a country's last run that day, the view looked up the scope's
latest snapshot up to that run with a correlated subquery. MySQL/MariaDB ran it by reading
every snapshot row of the scope (an index lookup on scope_key alone) for every day, so
reading the whole view grew with the square of the history: 4.0 s for a year of 4 runs a
day over 18 countries, 15.8 s for two. A complete scope took its snapshot in its own run,
in the transaction that marked it complete (with a zero row for each type and currency
sold out since the one before), so its latest snapshot up to that run is that run's: the
view takes it as it is, and looks up only the scopes that failed, were held or were
stopped. The rows are the same; a year of history reads in 0.1 s on MariaDB.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 03:45:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "v_daily_availability"
LOOKUP = (
    "(SELECT MAX(p.run_id) FROM availability_snapshots p "
    "WHERE p.scope_key = c.scope_key AND p.run_id <= r.run_id)"
)


def _revision_0005() -> Any:
    path = Path(__file__).with_name("0005_daily_availability_on_failed_days.py")
    spec = importlib.util.spec_from_file_location("numbers_etl_migration_0005", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _view_0005(dialect: str) -> str:
    sql: str = _revision_0005()._view(dialect)
    return sql


def _view(dialect: str) -> str:
    sql = _view_0005(dialect)
    assert sql.count(LOOKUP) == 1, sql
    return sql.replace(LOOKUP, f"CASE WHEN c.status = 'complete' THEN r.run_id ELSE {LOOKUP} END")


def _replace(sql: str) -> None:
    if op.get_bind().dialect.name == "sqlite":  # no CREATE OR REPLACE VIEW
        op.execute(f"DROP VIEW IF EXISTS {NAME}")
        op.execute(f"CREATE VIEW {NAME} AS {sql}")
    else:  # in place: a dropped view loses its grants (see 0003)
        op.execute(f"CREATE OR REPLACE VIEW {NAME} AS {sql}")


def upgrade() -> None:
    _replace(_view(op.get_bind().dialect.name))


def downgrade() -> None:
    _replace(_view_0005(op.get_bind().dialect.name))

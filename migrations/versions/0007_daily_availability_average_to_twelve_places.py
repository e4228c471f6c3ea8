"""v_daily_availability: avg_price to 12 decimal places on every database

The day's average price is the snapshots' averages weighted by their counts. SQLite rounded
it to 12 places, the scale of every money column; PostgreSQL and MySQL/MariaDB returned the
division's own scale (16 places on both: 1.3333333333333333), so the same history read
differently by database and a BI tool showed digits no price has. It is now rounded to 12
places everywhere. The rows are otherwise the same.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 07:00:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "v_daily_availability"
AVERAGE = "SUM(s.avg_price * s.available_count) / NULLIF(SUM(s.available_count), 0)"


def _revision_0006() -> Any:
    path = Path(__file__).with_name("0006_daily_availability_without_a_scan_per_scope.py")
    spec = importlib.util.spec_from_file_location("numbers_etl_migration_0006", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _view_0006(dialect: str) -> str:
    sql: str = _revision_0006()._view(dialect)
    return sql


def _view(dialect: str) -> str:
    sql = _view_0006(dialect)
    if dialect == "sqlite":  # rounded to 12 places since 0003
        return sql
    assert sql.count(AVERAGE) == 1, sql
    return sql.replace(AVERAGE, f"ROUND({AVERAGE}, 12)")


def upgrade() -> None:
    _revision_0006()._replace(_view(op.get_bind().dialect.name))


def downgrade() -> None:
    _revision_0006()._replace(_view_0006(op.get_bind().dialect.name))

"""v_daily_availability counts each country's configured scopes once; days_in_stock is the
last stint

v_daily_availability summed every scope key that had a snapshot that day, so a country
switched to `prefixes` during a day was counted twice (its old scope and its new ones),
while an area that failed all day dropped out of its country's count as if sold out. Now
each country and day takes the scopes of the country's last run with a complete scope that
day, each at its latest complete listing up to that run (a failed or held area counts as it
last was). Its correlated subquery also rescanned a scope's snapshots for every snapshot
row, growing with the square of the history; the last runs are now grouped once. On SQLite
the price average no longer divides integers (3 and 4 averaged to 3) and is rounded to the
12 decimals of the price columns; on MySQL/MariaDB the counts are integers, not DECIMAL.

v_removed_numbers.days_in_stock counted from first_seen_at, so a number relisted after a
month out of stock showed the month as time in stock; it now counts from the listing or
relisting that began its last stay.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 12:00:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAMES = ("v_removed_numbers", "v_daily_availability")


def _views(dialect: str) -> dict[str, str]:
    if dialect == "postgresql":
        days = "EXTRACT(EPOCH FROM (n.removed_at - {start})) / 86400.0"
        day = "CAST((%s.taken_at AT TIME ZONE 'UTC') AS DATE)"
        total = "SUM(%s)"
        average = "SUM(s.avg_price * s.available_count) / NULLIF(SUM(s.available_count), 0)"
    elif dialect in ("mysql", "mariadb"):
        days = (
            "CAST(TIMESTAMPDIFF(MICROSECOND, {start}, n.removed_at) AS DECIMAL(30, 6))"
            " / 86400000000"
        )
        day = "DATE(%s.taken_at)"
        total = "CAST(SUM(%s) AS SIGNED)"
        average = "SUM(s.avg_price * s.available_count) / NULLIF(SUM(s.available_count), 0)"
    else:
        days = "julianday(n.removed_at) - julianday({start})"
        day = "date(%s.taken_at)"
        total = "SUM(%s)"
        average = (
            "ROUND(SUM(s.avg_price * s.available_count * 1.0) "
            "/ NULLIF(SUM(s.available_count), 0), 12)"
        )
    stay_began = (
        "COALESCE((SELECT MAX(e.occurred_at) FROM number_events e WHERE e.number_id = n.id "
        "AND e.event IN ('listed', 'relisted')), n.first_seen_at)"
    )
    return {
        "v_removed_numbers": (
            "SELECT n.id AS number_id, n.number, n.country_code, n.number_type, "
            "n.monthly_price, n.currency, n.first_seen_at, n.last_seen_at, n.removed_at, "
            f"{days.format(start=stay_began)} AS days_in_stock "
            "FROM numbers n WHERE n.removed_at IS NOT NULL"
        ),
        # For each country and day: the last run that day with a complete scope of the
        # country; the scopes that run had for it (sync_scopes: its configuration then);
        # each of those at its latest snapshot up to that run.
        "v_daily_availability": (
            "WITH last_run AS ("
            f"SELECT l.country_code, {day % 'l'} AS day, MAX(l.run_id) AS run_id "
            f"FROM availability_snapshots l GROUP BY l.country_code, {day % 'l'}), "
            # DISTINCT changes no row here ((day, scope_key) is unique already); it keeps
            # MariaDB from merging this into the outer join, which then ran the subquery
            # for every snapshot row of every scope (9 s for a year of history).
            "counted AS ("
            "SELECT DISTINCT r.day, c.scope_key, (SELECT MAX(p.run_id) "
            "FROM availability_snapshots p "
            "WHERE p.scope_key = c.scope_key AND p.run_id <= r.run_id) AS run_id "
            "FROM last_run r JOIN sync_scopes c "
            "ON c.run_id = r.run_id AND c.country_code = r.country_code) "
            "SELECT k.day, s.country_code, s.number_type, s.currency, "
            f"{total % 's.available_count'} AS available_count, "
            "MIN(s.min_price) AS min_price, "
            f"{average} AS avg_price, "
            "MAX(s.max_price) AS max_price, "
            f"{total % 's.voice_count'} AS voice_count, "
            f"{total % 's.sms_count'} AS sms_count, "
            f"{total % 's.mms_count'} AS mms_count "
            "FROM counted k JOIN availability_snapshots s "
            "ON s.scope_key = k.scope_key AND s.run_id = k.run_id "
            "GROUP BY k.day, s.country_code, s.number_type, s.currency"
        ),
    }


def _initial_views(dialect: str) -> dict[str, str]:
    """The definitions of migration 0001, for the downgrade."""
    path = Path(__file__).with_name("0001_initial_schema.py")
    spec = importlib.util.spec_from_file_location("numbers_etl_migration_0001", path)
    assert spec is not None
    assert spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    views: dict[str, str] = module._view_sql(dialect)
    return views


def _replace(views: dict[str, str]) -> None:
    if op.get_bind().dialect.name == "sqlite":  # no CREATE OR REPLACE VIEW
        for name in NAMES:
            op.execute(f"DROP VIEW IF EXISTS {name}")
            op.execute(f"CREATE VIEW {name} AS {views[name]}")
        return
    # Replaced in place (same columns), not dropped: on PostgreSQL a dropped view loses its
    # grants, and a BI role's dashboards would fail with "permission denied" after upgrading.
    for name in NAMES:
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {views[name]}")


def upgrade() -> None:
    _replace(_views(op.get_bind().dialect.name))


def downgrade() -> None:
    _replace(_initial_views(op.get_bind().dialect.name))

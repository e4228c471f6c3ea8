"""SQLite: v_price_history's price_delta rounded to the 12 decimals of the price columns

SQLite has no decimal type: a price is a REAL there, and 3.3 - 1.1 is 2.1999999999999997.
Rounded to the 12 decimals that NUMERIC(30, 12) keeps elsewhere, the delta reads as the
difference of the two prices shown. PostgreSQL and MySQL/MariaDB subtract exact decimals
and are left as they are.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 11:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _price_history(delta: str) -> str:
    return (
        "CREATE VIEW v_price_history AS "
        "SELECT pc.id AS price_change_id, pc.run_id, pc.changed_at, n.id AS number_id, "
        "n.number, n.country_code, n.number_type, pc.old_monthly_price, "
        "pc.new_monthly_price, pc.old_currency, pc.new_currency, "
        f"CASE WHEN pc.old_currency = pc.new_currency THEN {delta} END AS price_delta "
        "FROM price_changes pc JOIN numbers n ON n.id = pc.number_id"
    )


DELTA = "pc.new_monthly_price - pc.old_monthly_price"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP VIEW IF EXISTS v_price_history")
    op.execute(_price_history(f"ROUND({DELTA}, 12)"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP VIEW IF EXISTS v_price_history")
    op.execute(_price_history(DELTA))

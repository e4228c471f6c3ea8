"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 20:28:08.407761
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from etl.store.types import Money, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


CAPABILITIES = (
    "voice_inbound, voice_outbound, sms_inbound, sms_outbound, mms_inbound, mms_outbound, "
    "whatsapp_inbound, whatsapp_outbound, other_capabilities"
)


def _view_sql(dialect: str) -> dict[str, str]:
    """The four BI views, written once per dialect where date arithmetic differs."""
    if dialect == "postgresql":
        days = "EXTRACT(EPOCH FROM (n.removed_at - n.first_seen_at)) / 86400.0"
        day = "CAST((%s.taken_at AT TIME ZONE 'UTC') AS DATE)"
    elif dialect in ("mysql", "mariadb"):
        days = (
            "CAST(TIMESTAMPDIFF(MICROSECOND, n.first_seen_at, n.removed_at) AS DECIMAL(30, 6))"
            " / 86400000000"
        )
        day = "DATE(%s.taken_at)"
    else:
        days = "julianday(n.removed_at) - julianday(n.first_seen_at)"
        day = "date(%s.taken_at)"
    return {
        "v_available_numbers": (
            "SELECT id AS number_id, number, stock_item_id, country_code, number_type, "
            f"{CAPABILITIES}, monthly_price, currency, back_order_required, "
            "first_seen_at, last_seen_at FROM numbers WHERE removed_at IS NULL"
        ),
        "v_price_history": (
            "SELECT pc.id AS price_change_id, pc.run_id, pc.changed_at, n.id AS number_id, "
            "n.number, n.country_code, n.number_type, pc.old_monthly_price, "
            "pc.new_monthly_price, pc.old_currency, pc.new_currency, "
            "CASE WHEN pc.old_currency = pc.new_currency "
            "THEN pc.new_monthly_price - pc.old_monthly_price END AS price_delta "
            "FROM price_changes pc JOIN numbers n ON n.id = pc.number_id"
        ),
        "v_removed_numbers": (
            "SELECT n.id AS number_id, n.number, n.country_code, n.number_type, "
            "n.monthly_price, n.currency, n.first_seen_at, n.last_seen_at, n.removed_at, "
            f"{days} AS days_in_stock FROM numbers n WHERE n.removed_at IS NOT NULL"
        ),
        # One row per day, country, type and currency, from each scope's last snapshot of
        # that day (a country configured with several prefixes sums its scopes).
        "v_daily_availability": (
            f"SELECT {day % 's'} AS day, s.country_code, s.number_type, s.currency, "
            "SUM(s.available_count) AS available_count, MIN(s.min_price) AS min_price, "
            "SUM(s.avg_price * s.available_count) / NULLIF(SUM(s.available_count), 0) "
            "AS avg_price, "
            "MAX(s.max_price) AS max_price, SUM(s.voice_count) AS voice_count, "
            "SUM(s.sms_count) AS sms_count, SUM(s.mms_count) AS mms_count "
            "FROM availability_snapshots s WHERE s.run_id = ("
            "SELECT MAX(l.run_id) FROM availability_snapshots l "
            f"WHERE l.scope_key = s.scope_key AND {day % 'l'} = {day % 's'}) "
            f"GROUP BY {day % 's'}, s.country_code, s.number_type, s.currency"
        ),
    }


def create_views() -> None:
    for name, sql in _view_sql(op.get_bind().dialect.name).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def drop_views() -> None:
    for name in _view_sql(op.get_bind().dialect.name):
        op.execute(f"DROP VIEW IF EXISTS {name}")


# Every table, in an order that drops none before a table whose foreign keys point at it.
TABLES = (
    "sync_lock",
    "availability_snapshots",
    "rejected_items",
    "number_events",
    "price_changes",
    "numbers",
    "sync_scopes",
    "sync_runs",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        _create()  # transactional DDL: a failure rolls every CREATE back
        return
    # MySQL commits each CREATE at once: a failure halfway (a user without the CREATE VIEW
    # privilege, say) would leave tables and no revision, and every later `db upgrade` would
    # fail on "Table 'numbers' already exists". What this upgrade created is dropped again,
    # so that it can be run again once the cause is fixed; what was there before is kept.
    inspector = sa.inspect(bind)
    before = {*inspector.get_table_names(), *inspector.get_view_names()}
    try:
        _create()
    except Exception:
        _drop_created(before)
        raise


def _drop_created(before: set[str]) -> None:
    names = [*_view_sql(op.get_bind().dialect.name), *TABLES]
    for name in (n for n in names if n not in before):
        kind = "VIEW" if name.startswith("v_") else "TABLE"
        try:
            op.execute(f"DROP {kind} IF EXISTS {name}")
        except Exception:  # noqa: S112 - the upgrade's own error is the one to report
            continue


def _create() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table(
        "numbers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("stock_item_id", sa.String(length=64), nullable=False),
        sa.Column("country_code", sa.String(length=2), nullable=False),
        sa.Column("number_type", sa.String(length=32), nullable=False),
        sa.Column("voice_inbound", sa.Boolean(), nullable=False),
        sa.Column("voice_outbound", sa.Boolean(), nullable=False),
        sa.Column("sms_inbound", sa.Boolean(), nullable=False),
        sa.Column("sms_outbound", sa.Boolean(), nullable=False),
        sa.Column("mms_inbound", sa.Boolean(), nullable=False),
        sa.Column("mms_outbound", sa.Boolean(), nullable=False),
        sa.Column("whatsapp_inbound", sa.Boolean(), nullable=False),
        sa.Column("whatsapp_outbound", sa.Boolean(), nullable=False),
        sa.Column("other_capabilities", sa.String(length=512), nullable=True),
        sa.Column("monthly_price", Money(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("price_amount", sa.BigInteger(), nullable=False),
        sa.Column("price_exponent", sa.SmallInteger(), nullable=False),
        sa.Column("back_order_required", sa.Boolean(), nullable=False),
        sa.Column("back_order_stock_id", sa.String(length=64), nullable=True),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("removed_at", UTCDateTime(), nullable=True),
        sa.Column("last_seen_run_id", sa.Integer(), nullable=True),
        sa.Column("missed_runs", sa.Integer(), nullable=False),
        sa.Column("first_missed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_numbers")),
        sa.UniqueConstraint("number", name=op.f("uq_numbers_number")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("numbers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_numbers_country_code_removed_at"),
            ["country_code", "removed_at"],
            unique=False,
        )

    op.create_table(
        "sync_lock",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("acquired_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sync_lock")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("listed", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("relisted", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("price_changes", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("http_retries", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sync_runs_status_started_at"), ["status", "started_at"], unique=False
        )

    op.create_table(
        "availability_snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("taken_at", UTCDateTime(), nullable=False),
        sa.Column("scope_key", sa.String(length=64), nullable=False),
        sa.Column("country_code", sa.String(length=2), nullable=False),
        sa.Column("number_type", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("available_count", sa.Integer(), nullable=False),
        sa.Column("min_price", Money(), nullable=True),
        sa.Column("avg_price", Money(), nullable=True),
        sa.Column("max_price", Money(), nullable=True),
        sa.Column("voice_count", sa.Integer(), nullable=False),
        sa.Column("sms_count", sa.Integer(), nullable=False),
        sa.Column("mms_count", sa.Integer(), nullable=False),
        sa.Column("back_order_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_availability_snapshots_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_availability_snapshots")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("availability_snapshots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_availability_snapshots_country_code_taken_at"),
            ["country_code", "taken_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_availability_snapshots_taken_at"), ["taken_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_availability_snapshots_scope_key_run_id"),
            ["scope_key", "run_id"],
            unique=False,
        )

    op.create_table(
        "number_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("number_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["number_id"], ["numbers.id"], name=op.f("fk_number_events_number_id_numbers")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_number_events_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_number_events")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("number_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_number_events_event_occurred_at"), ["event", "occurred_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_number_events_number_id_occurred_at"),
            ["number_id", "occurred_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_number_events_run_id"), ["run_id"], unique=False)

    op.create_table(
        "price_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("number_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("old_monthly_price", Money(), nullable=False),
        sa.Column("new_monthly_price", Money(), nullable=False),
        sa.Column("old_currency", sa.String(length=3), nullable=False),
        sa.Column("new_currency", sa.String(length=3), nullable=False),
        sa.Column("old_price_amount", sa.BigInteger(), nullable=False),
        sa.Column("old_price_exponent", sa.SmallInteger(), nullable=False),
        sa.Column("new_price_amount", sa.BigInteger(), nullable=False),
        sa.Column("new_price_exponent", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["number_id"], ["numbers.id"], name=op.f("fk_price_changes_number_id_numbers")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_price_changes_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_changes")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("price_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_price_changes_changed_at"), ["changed_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_price_changes_number_id_changed_at"),
            ["number_id", "changed_at"],
            unique=False,
        )

    op.create_table(
        "rejected_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("country_code", sa.String(length=2), nullable=False),
        sa.Column("scope_key", sa.String(length=64), nullable=False),
        sa.Column("number", sa.String(length=64), nullable=True),
        sa.Column("rejected_at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_rejected_items_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_items")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("rejected_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rejected_items_run_id"), ["run_id"], unique=False)

    op.create_table(
        "sync_scopes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("scope_key", sa.String(length=64), nullable=False),
        sa.Column("country_code", sa.String(length=2), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=True),
        sa.Column("types", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("listed", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("relisted", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("price_changes", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("unreadable", sa.Integer(), nullable=False),
        sa.Column("available", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_sync_scopes_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_scopes")),
        sa.UniqueConstraint("run_id", "scope_key", name=op.f("uq_sync_scopes_run_id_scope_key")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("sync_scopes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sync_scopes_country_code_status"),
            ["country_code", "status"],
            unique=False,
        )

    # ### end Alembic commands ###
    op.bulk_insert(sa.table("sync_lock", sa.column("name", sa.String)), [{"name": "sync"}])
    create_views()


def downgrade() -> None:
    drop_views()
    # Dropping a table drops its indexes (MySQL refuses to drop an index a foreign key needs).
    for table in TABLES:
        op.drop_table(table)

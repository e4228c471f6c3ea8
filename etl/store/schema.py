"""The tables of the contract (``../shared/DESIGN.md``), as SQLAlchemy Core metadata.

The Alembic migrations create exactly these; ``tests/test_migrations.py`` fails on any drift."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from etl.records import CAPABILITY_COLUMNS, ID_CHARS, OTHER_CAPABILITIES_CHARS
from etl.store.types import Money, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)
NUMBERS_FILLFACTOR = 70  # PostgreSQL: percent of each page of `numbers` filled by inserts
MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("status", String(16), nullable=False),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("scopes", Text),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("pages", Integer, nullable=False, default=0),
    Column("items", Integer, nullable=False, default=0),
    Column("listed", Integer, nullable=False, default=0),
    Column("removed", Integer, nullable=False, default=0),
    Column("relisted", Integer, nullable=False, default=0),
    Column("changed", Integer, nullable=False, default=0),
    Column("price_changes", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("http_retries", Integer, nullable=False, default=0),
    Column("error", Text),
    Index(None, "status", "started_at"),
    **MYSQL,
)

sync_scopes = Table(
    "sync_scopes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("sync_runs.id"), nullable=False),
    Column("scope_key", String(64), nullable=False),
    Column("country_code", String(2), nullable=False),
    Column("prefix", String(16)),
    Column("types", String(64)),
    Column("status", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("pages", Integer, nullable=False, default=0),
    Column("items", Integer, nullable=False, default=0),
    Column("listed", Integer, nullable=False, default=0),
    Column("removed", Integer, nullable=False, default=0),
    Column("relisted", Integer, nullable=False, default=0),
    Column("changed", Integer, nullable=False, default=0),
    Column("price_changes", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("unreadable", Integer, nullable=False, default=0),
    Column("available", Integer),
    Column("error", Text),
    UniqueConstraint("run_id", "scope_key"),
    Index(None, "country_code", "status"),
    **MYSQL,
)

numbers = Table(
    "numbers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("number", String(20), nullable=False),
    Column("stock_item_id", String(ID_CHARS), nullable=False),
    Column("country_code", String(2), nullable=False),
    Column("number_type", String(32), nullable=False),
    *(Column(name, Boolean, nullable=False, default=False) for name in CAPABILITY_COLUMNS),
    Column("other_capabilities", String(OTHER_CAPABILITIES_CHARS)),
    Column("monthly_price", Money(), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("price_amount", BigInteger, nullable=False),
    Column("price_exponent", SmallInteger, nullable=False),
    Column("back_order_required", Boolean, nullable=False, default=False),
    Column("back_order_stock_id", String(ID_CHARS)),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("removed_at", UTCDateTime()),
    # Bookkeeping for removals: the last run that saw the number, how many complete runs in
    # a row have missed it since, and when the first of those runs completed its listing.
    Column("last_seen_run_id", Integer),
    Column("missed_runs", Integer, nullable=False, default=0),
    Column("first_missed_at", UTCDateTime()),
    UniqueConstraint("number"),
    Index(None, "country_code", "removed_at"),
    # Every sync rewrites every listed row: room on its page keeps the new version there,
    # with no new index entries (migration 0004; bench/RESULTS.md has the figures)
    postgresql_with={"fillfactor": NUMBERS_FILLFACTOR},
    **MYSQL,
)

price_changes = Table(
    "price_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("number_id", Integer, ForeignKey("numbers.id"), nullable=False),
    Column("run_id", Integer, ForeignKey("sync_runs.id"), nullable=False),
    Column("changed_at", UTCDateTime(), nullable=False),
    Column("old_monthly_price", Money(), nullable=False),
    Column("new_monthly_price", Money(), nullable=False),
    Column("old_currency", String(3), nullable=False),
    Column("new_currency", String(3), nullable=False),
    Column("old_price_amount", BigInteger, nullable=False),
    Column("old_price_exponent", SmallInteger, nullable=False),
    Column("new_price_amount", BigInteger, nullable=False),
    Column("new_price_exponent", SmallInteger, nullable=False),
    Index(None, "number_id", "changed_at"),
    Index(None, "changed_at"),
    **MYSQL,
)

number_events = Table(
    "number_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("number_id", Integer, ForeignKey("numbers.id"), nullable=False),
    Column("run_id", Integer, ForeignKey("sync_runs.id"), nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("event", String(16), nullable=False),
    Column("detail", Text),
    Index(None, "number_id", "occurred_at"),
    Index(None, "event", "occurred_at"),
    Index(None, "run_id"),
    **MYSQL,
)

rejected_items = Table(
    "rejected_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("sync_runs.id"), nullable=False),
    Column("country_code", String(2), nullable=False),
    Column("scope_key", String(64), nullable=False),
    Column("number", String(64)),
    Column("rejected_at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Index(None, "run_id"),
    **MYSQL,
)

availability_snapshots = Table(
    "availability_snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("sync_runs.id"), nullable=False),
    Column("taken_at", UTCDateTime(), nullable=False),
    Column("scope_key", String(64), nullable=False),
    Column("country_code", String(2), nullable=False),
    Column("number_type", String(32), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("available_count", Integer, nullable=False),
    Column("min_price", Money()),  # NULL when none is available
    Column("avg_price", Money()),  # NULL when none is available
    Column("max_price", Money()),  # NULL when none is available
    Column("voice_count", Integer, nullable=False),
    Column("sms_count", Integer, nullable=False),
    Column("mms_count", Integer, nullable=False),
    Column("back_order_count", Integer, nullable=False),
    Index(None, "taken_at"),
    Index(None, "country_code", "taken_at"),
    Index(None, "scope_key", "run_id"),
    **MYSQL,
)

sync_lock = Table(
    "sync_lock",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(255)),
    Column("run_id", Integer),
    Column("acquired_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),
    **MYSQL,
)

LOCK_NAME = "sync"

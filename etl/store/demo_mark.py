"""The mark of a database that ``numbers-etl demo`` wrote. The demo starts such a database
afresh each time, and a real sync refuses it, so that the demo's made-up history and a
real one never mix (the demo writes the default SQLite file, which a real sync uses too)."""

from __future__ import annotations

from sqlalchemy import Connection, text

# PRAGMA application_id of a SQLite file the demo wrote ("nEdm").
DEMO_APPLICATION_ID = 0x6E45646D
# The same mark in a server database (PostgreSQL, MySQL): a table of this name, which the
# demo creates next to the history it writes.
DEMO_MARK_TABLE = "numbers_etl_demo"


def is_demo(conn: Connection) -> bool:
    """Whether the demo wrote the database of ``conn``."""
    if conn.dialect.name == "sqlite":
        return bool(conn.execute(text("PRAGMA application_id")).scalar_one() == DEMO_APPLICATION_ID)
    return bool(conn.dialect.has_table(conn, DEMO_MARK_TABLE))


def mark(conn: Connection) -> None:
    """Mark the database of ``conn`` as the demo's."""
    if conn.dialect.name == "sqlite":
        conn.execute(text(f"PRAGMA application_id = {DEMO_APPLICATION_ID}"))
        return
    conn.execute(text(f"CREATE TABLE {DEMO_MARK_TABLE} (note VARCHAR(200))"))
    conn.execute(
        text(f"INSERT INTO {DEMO_MARK_TABLE} (note) VALUES (:note)"),
        {"note": "numbers-etl demo wrote this history; the next demo starts afresh"},
    )

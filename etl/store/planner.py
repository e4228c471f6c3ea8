"""PostgreSQL's statistics of ``numbers`` kept in step with a sync that grows the table.

PostgreSQL reuses a plan made once (a *generic* plan) for the foreign-key checks of every
event it inserts and, once psycopg has prepared them, for the sync's own statements. A plan
is made from the table's size as PostgreSQL then sees it. Made while ``numbers`` was
nearly empty, and its statistics said so (an ``ANALYZE`` or ``VACUUM`` of the empty table),
it reads the table row by row, and stays while a first sync grows the table to hundreds of
thousands of numbers: each check then reads the whole table (a first sync of 200,000 took
15 s instead of 5; before sessions made a plan for every statement, 8 minutes). An
``ANALYZE`` of ``numbers`` once the run has added as many numbers as the statistics
counted makes every session plan again, from figures that say the table is large.

Until that plan is made the table is small, so a plan that reads it row by row costs
little. A table whose statistics were never gathered is safe anyway: PostgreSQL then
takes it to be at least 10 pages, enough for plans that use its indexes."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from etl.store.engine import db_message
from etl.store.schema import numbers

log = logging.getLogger("etl.sync")

# A run that adds fewer numbers leaves the statistics alone: below this PostgreSQL's plans
# of lookups by a unique key use the index whatever the statistics say (bench/RESULTS.md).
ANALYZE_AFTER_ADDED = 1000


class TableGrowth:
    """Counts the numbers a run adds (``added``, from any thread); on PostgreSQL, once they
    reach the number of rows ``numbers`` had by its statistics when the run started (and at
    least ``ANALYZE_AFTER_ADDED``), ``added`` returns True once: the caller then runs
    ``analyze``. Elsewhere ``added`` never returns True."""

    def __init__(self, due_at: int | None) -> None:
        self._due_at = due_at
        self._added = 0
        self._lock = threading.Lock()

    @classmethod
    def start(cls, engine: Engine) -> TableGrowth:
        """For a run on ``engine``: reads the statistics' row count of ``numbers``
        (``pg_class.reltuples``; -1 when never gathered) on PostgreSQL."""
        if engine.dialect.name != "postgresql":
            return cls(None)
        with engine.connect() as conn:
            counted = conn.execute(
                text("SELECT reltuples FROM pg_class WHERE oid = CAST(:table AS regclass)"),
                {"table": numbers.name},
            ).scalar()
        return cls(max(ANALYZE_AFTER_ADDED, int(counted or 0)))

    def added(self, count: int) -> bool:
        """Count ``count`` more numbers added; True the one time an ANALYZE is due."""
        if self._due_at is None or count <= 0:
            return False
        with self._lock:
            if self._due_at is None:
                return False
            self._added += count
            if self._added < self._due_at:
                return False
            self._due_at = None  # once a run: plans made from then on use the indexes
            return True

    @staticmethod
    def analyze(conn: Connection) -> None:
        """``ANALYZE numbers`` in a transaction of its own on ``conn`` (none may be open). A
        failure is logged, not raised: the sync goes on, only slower. A role that does not
        own the table gets a warning from PostgreSQL and no statistics."""
        try:
            conn.exec_driver_sql(f"ANALYZE {numbers.name}")
            conn.commit()
        except SQLAlchemyError as exc:
            conn.rollback()
            log.warning(
                "could not ANALYZE %s (the sync goes on; PostgreSQL may plan its checks "
                "from the statistics of a smaller table): %s",
                numbers.name,
                db_message(exc),
            )

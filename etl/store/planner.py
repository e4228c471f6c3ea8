"""PostgreSQL's statistics of ``numbers`` kept in step with a sync that grows a small table.

PostgreSQL reuses a plan once made (a *generic* plan): for the foreign-key check of every
event it inserts, and for the sync's own statements once psycopg has prepared them. The
plan is made from the table's size as its statistics and its file then say. Made while
``numbers`` was small, it reads the table row by row (a key check up to about 100 rows, the
read of a page's numbers up to about 1,000, ``bench/RESULTS.md``), and a session keeps it
while a first sync grows the table to hundreds of thousands: every page then reads the
whole table. A first sync of 200,000 numbers, one country at a time, after a ``VACUUM
ANALYZE`` of the empty database took 111 s instead of 8.

So while ``numbers`` is small, a run analyzes it each time the numbers it added have
doubled the table since the statistics last counted it (the first time at 1,000): every
session then plans again, from figures that say how large the table has become. From
``LARGE`` numbers on, plans made from the statistics use the indexes, and stay right as
the table grows; a run that starts there never analyzes it.

A role that may not analyze the table (only its owner, the database's owner or a superuser
may) cannot do this. Its run, while the table is small, has PostgreSQL plan every
statement and every key check anew instead (``plan_cache_mode=force_custom_plan``), as
all runs did before: safe, and about a third slower in a first sync."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from etl.store.engine import db_message, session_setting
from etl.store.schema import numbers

log = logging.getLogger("etl.sync")

FIRST_ANALYZE = 1000  # numbers in the table, by the run's count, at the first ANALYZE
LARGE = 16000  # numbers from which PostgreSQL's plans of the sync's statements use indexes
_COUNTED = text("SELECT reltuples FROM pg_class WHERE oid = CAST(:table AS regclass)")
# The statistics' count, and whether this role may ANALYZE the table
_COUNTED_MAY = text(
    "SELECT c.reltuples, pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE') "
    "FROM pg_class AS c, pg_database AS d "
    "WHERE c.oid = CAST(:table AS regclass) AND d.datname = current_database()"
)


class TableGrowth:
    """The size of ``numbers`` as a run sees it: the statistics' count when the run starts
    or last analyzed it, plus the numbers it added since (``added``, from any thread). On
    PostgreSQL, while the table is smaller than ``LARGE``, ``added`` returns True when the
    table has doubled since it was last counted (reached ``FIRST_ANALYZE`` the first time):
    the caller then runs ``analyze``. Elsewhere ``added`` never returns True."""

    def __init__(self, counted: float | None, *, may_analyze: bool = True) -> None:
        """``counted``: the statistics' count of ``numbers`` (-1: never gathered); None:
        not PostgreSQL. ``may_analyze``: whether the run's role may ANALYZE it."""
        self._size = max(0, int(counted or 0))
        due = None if counted is None else self._next_due(self._size)
        # a small table that the role may not analyze: every statement planned anew
        self.custom_plans = due is not None and not may_analyze
        self._due_at = None if self.custom_plans else due
        self._lock = threading.Lock()

    @staticmethod
    def _next_due(size: int) -> int | None:
        return None if size >= LARGE else max(FIRST_ANALYZE, 2 * size)

    @classmethod
    def start(cls, engine: Engine) -> TableGrowth:
        """For a run on ``engine``: reads the statistics' count of ``numbers``
        (``pg_class.reltuples``) on PostgreSQL."""
        if engine.dialect.name != "postgresql":
            return cls(None)
        with engine.connect() as conn:
            counted, may = conn.execute(_COUNTED_MAY, {"table": numbers.name}).one()
        growth = cls(counted, may_analyze=may)
        if growth.custom_plans:
            log.warning(
                "this role may not ANALYZE %s, which is small yet: PostgreSQL plans every "
                "statement of this run anew, about a third slower; run the sync as the "
                "table's owner",
                numbers.name,
            )
        return growth

    @contextmanager
    def planning(self, conn: Connection) -> Iterator[Connection]:
        """The session of ``conn`` (a scope's, for its pages) with ``plan_cache_mode``
        ``force_custom_plan`` when ``custom_plans``, reset at the end."""
        if not self.custom_plans:
            yield conn
            return
        with session_setting(conn, "plan_cache_mode", "force_custom_plan"):
            yield conn

    def added(self, count: int) -> bool:
        """Count ``count`` more numbers added; True when an ANALYZE is due."""
        if self._due_at is None or count <= 0:
            return False
        with self._lock:
            self._size += count
            if self._due_at is None or self._size < self._due_at:
                return False
            self._due_at = None  # until `analyze` has counted the table again
            return True

    def analyze(self, conn: Connection) -> None:
        """``ANALYZE numbers`` in a transaction of its own on ``conn`` (none may be open),
        and the table counted again from its new statistics. A failure is logged, not
        raised, and ends the analyses of the run: the sync goes on, only slower."""
        try:
            conn.exec_driver_sql(f"ANALYZE {numbers.name}")
            counted = conn.execute(_COUNTED, {"table": numbers.name}).scalar_one()
            conn.commit()
        except SQLAlchemyError as exc:
            conn.rollback()
            log.warning(
                "could not ANALYZE %s (the sync goes on; PostgreSQL may go on planning "
                "from the statistics of a smaller table): %s",
                numbers.name,
                db_message(exc),
            )
            return
        with self._lock:
            self._size = max(self._size, int(counted))
            self._due_at = self._next_due(self._size)

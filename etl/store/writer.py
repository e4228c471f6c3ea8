"""Writes one page, and closes one scope, in a handful of set-based statements each.

Both functions run inside a transaction their caller opened; neither commits."""

from __future__ import annotations

import functools
import json
import operator
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import chain, repeat
from typing import Any

import msgspec
from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Dialect,
    Insert,
    Select,
    Table,
    Update,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.types import Integer, Numeric, String, TypeDecorator, TypeEngine

from etl.records import Page, Rejection, Scope, StockItem, price_value
from etl.store.diff import (
    TRACKED_FIELDS,
    Event,
    PageChanges,
    RemovalDecision,
    StoredNumber,
    attribute_tuple,
    attribute_values,
    capability_values,
    dedupe,
    diff_rows,
    price_values,
    removal_guard,
)
from etl.store.schema import (
    availability_snapshots,
    number_events,
    numbers,
    price_changes,
    rejected_items,
    sync_scopes,
)
from etl.store.types import Money, UTCDateTime

MAX_PAYLOAD_CHARS = 16000
_SQLITE = sqlite.dialect()  # SQLite's binding and quoting, for the SQL written here
# psycopg's binding, for the driver SQL run on PostgreSQL
_PSYCOPG: Dialect = postgresql_psycopg.dialect()  # type: ignore[no-untyped-call]


def _binding(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """How SQLAlchemy binds a value of ``type_`` on ``dialect`` (the type as adapted to the
    dialect: on SQLite a timestamp's text is its DATETIME's, microseconds always shown)."""
    return type_.dialect_impl(dialect).bind_processor(dialect)


_JSON = msgspec.json.Encoder()
_UPDATE_COLUMNS = (*TRACKED_FIELDS, "monthly_price", "currency", "price_amount", "price_exponent")


class _ListParam(TypeDecorator[list[Any]]):
    """A list bound as one JSON text: SQLite's ``json_each`` reads a page's numbers from it,
    PostgreSQL's ``jsonb_array_elements`` a page's new rows (lists of values). A Decimal
    goes as its text, which PostgreSQL's ``numeric`` reads exactly."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: list[Any] | None, dialect: Dialect) -> str | None:
        return None if value is None else _JSON.encode(value).decode()


def in_list(column: ColumnElement[Any], name: str, dialect: str) -> ColumnElement[bool]:
    """``column IN`` the list bound as ``name``. SQLite and PostgreSQL take the whole list as
    one parameter (``json_each``, ``= ANY``), so the statement is the same for every page;
    an expanding IN (MySQL/MariaDB) is re-rendered by SQLAlchemy with one parameter per
    value on every execution, which cost a page about 100 us on SQLite."""
    if dialect == "sqlite":
        values: Select[Any] = select(literal_column("value")).select_from(
            func.json_each(bindparam(name, type_=_ListParam()))
        )
        return column.in_(values)
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


class _DriverSQL:
    """A Core statement compiled once for a dialect (SQLite's, or PostgreSQL's with psycopg)
    and run as the driver's own SQL, for the statements every page runs: SQLAlchemy's work
    around each execution (its cache key and lookup, typing every value of every row
    returned) cost a page 100-170 us of the read that marks its numbers seen on SQLite,
    about a twentieth of a steady-state page; on PostgreSQL the two statements save about
    0.25 s of CPU in a sync of 200,000 numbers (both measured in bench/RESULTS.md).
    Parameters are bound as SQLAlchemy binds them; rows come back as the driver gives them
    (SQLite's booleans as 0 and 1, its timestamps as text; PostgreSQL's timestamps in the
    session's zone), and ``typed`` gives one the types SQLAlchemy would have."""

    def __init__(self, statement: Update | Insert, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.compiled = compiled
        # SQLite's parameters go by position (a name used twice comes twice), psycopg's by name
        self.positional = compiled.positiontup is not None
        self.names = (
            tuple(compiled.positiontup or ())
            if self.positional
            else tuple(dict.fromkeys(compiled.bind_names.values()))
        )
        self.processors = tuple(_binding(compiled.binds[n].type, dialect) for n in self.names)
        self.loaders = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.exported_columns
        )

    def execute(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The statement's result, as the driver returns it."""
        bound = self.compiled.construct_params(params)
        values = tuple(
            bound[name] if process is None else process(bound[name])
            for name, process in zip(self.names, self.processors, strict=True)
        )
        if self.positional:
            return conn.exec_driver_sql(self.sql, values)
        return conn.exec_driver_sql(self.sql, dict(zip(self.names, values, strict=True)))

    def typed(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """A row of the result with the types SQLAlchemy gives its columns."""
        return tuple(
            value if load is None else load(value)
            for load, value in zip(self.loaders, row, strict=True)
        )


@dataclass(frozen=True)
class _PageStatements:
    """The statements of a page for one dialect, built once: building a statement costs more
    than running it."""

    read: Select[Any]
    # The read of a page that writes, where the database cannot mark the rows seen as it
    # reads them (MySQL, MariaDB): it locks them (FOR UPDATE), so that two countries listing
    # one number at once take turns and the second sees what the first wrote. A plain read
    # let both record the same price change or relisting.
    read_to_write: Select[Any]
    ids: Select[Any]
    seen: Update
    # The read that marks the page's numbers seen as it reads them (UPDATE ... RETURNING,
    # where the database has it; MySQL and MariaDB do not): a statement fewer a page.
    seen_read: Update | None
    # SQLite, and PostgreSQL with psycopg: seen_read and the page's counters as the driver's
    # own SQL (see _DriverSQL)
    seen_read_driver: _DriverSQL | None
    count_page_driver: _DriverSQL | None
    # A page's new numbers (returning their ids) and its events, each in one INSERT of rows
    # bound at once (see _RowsInsert), where the database can: PostgreSQL and SQLite.
    new_numbers: _RowsInsert | None
    events: _RowsInsert | None
    # SQLite: the `listed` events of new numbers known by their rowids (_RowsInsert.numbered)
    listed: _DriverSQL | None


def _statements(dialect: Dialect) -> _PageStatements:
    """The page statements for ``dialect`` (the one of an engine: it knows the server's
    version, and with it whether UPDATE ... RETURNING exists: SQLite 3.35+, PostgreSQL)."""
    return _statements_for(dialect.name, dialect.driver, dialect.update_returning)


# Keyed by what the statements depend on, not by the dialect: every run's engine has a
# dialect of its own, and a cache keyed by them kept every one alive (a scheduler's memory
# grew by about 0.2 MB a run).
@functools.cache
def _statements_for(name: str, driver: str, update_returning: bool) -> _PageStatements:
    seen_run = bindparam("seen_run_id", type_=Integer())
    seen_values = {
        # last_seen_at never goes backwards, whatever the clock does
        "last_seen_at": _seen_at_least("seen_at"),
        # nor does the run that saw it last: a run that lost its lock to a newer one (see
        # DatabaseLock.fence) must not make the newer run's sightings look like misses
        "last_seen_run_id": case(
            (numbers.c.last_seen_run_id > seen_run, numbers.c.last_seen_run_id), else_=seen_run
        ),
        "missed_runs": 0,
        "first_missed_at": None,
    }
    stored = [numbers.c[name] for name in StoredNumber.COLUMNS]
    read = select(*stored).where(in_list(numbers.c.number, "page_numbers", name))
    seen_read = (
        update(numbers)
        .where(in_list(numbers.c.number, "page_numbers", name))
        .values(seen_values)
        .returning(*stored)
        if update_returning
        else None
    )
    own_sql = {"sqlite": _SQLITE, "postgresql": _PSYCOPG if driver == "psycopg" else None}
    driver_dialect = own_sql.get(name)
    return _PageStatements(
        read=read,
        read_to_write=read.with_for_update() if name in ("mysql", "mariadb") else read,
        ids=select(numbers.c.number, numbers.c.id).where(
            in_list(numbers.c.number, "new_numbers", name)
        ),
        seen=update(numbers).where(in_list(numbers.c.id, "seen_ids", name)).values(seen_values),
        seen_read=seen_read,
        seen_read_driver=_DriverSQL(seen_read, driver_dialect)
        if driver_dialect is not None and seen_read is not None
        else None,
        count_page_driver=_DriverSQL(_COUNT_PAGE, driver_dialect) if driver_dialect else None,
        new_numbers=_numbers_from_rows(name) if name in ("postgresql", "sqlite") else None,
        events=_events_from_rows(name) if name in ("postgresql", "sqlite") else None,
        listed=_DriverSQL(_LISTED, _SQLITE) if name == "sqlite" else None,
    )


# The columns of a new number that differ from number to number (the rest are the page's).
_NEW_VARYING = (
    "number",
    *TRACKED_FIELDS,
    "monthly_price",
    "currency",
    "price_amount",
    "price_exponent",
)


def _new_varying(
    item: StockItem,
    money: Callable[[int, int], Any],
    attributes: Callable[[StockItem], tuple[Any, ...]] = attribute_tuple,
) -> tuple[Any, ...]:
    """A new number's row of ``_NEW_VARYING``; ``money``: its monthly price as bound, from
    the price's amount and exponent; ``attributes``: its tracked values as bound (SQLite:
    ``_sqlite_attributes``)."""
    price = item.price
    return (
        item.number,
        *attributes(item),
        money(price.amount, price.exponent),
        price.currency,
        price.amount,
        price.exponent,
    )


def _sqlite_attributes(item: StockItem) -> tuple[Any, ...]:
    """``attribute_tuple`` in the form SQLite's driver binds fastest.

    The driver binds a value that is not exactly an int, float, str or bytearray (a bool,
    None) only after looking for an adapter for it: about 0.4 us a value. A new number has
    nine booleans and usually two Nones: a sixth of a first sync's time on SQLite. Here the
    booleans are 0 and 1, what SQLite stores for them anyway. A None in a column of
    ``_SQLITE_ZERO_IS_NULL`` is 0, which the insert's ``nullif(?, 0)`` turns back into
    NULL; SQLite never finds a text equal to the integer 0, so no text is changed."""
    return (
        item.stock_item_id,
        item.country_code,
        item.number_type,
        *_sqlite_capabilities(item.capabilities),
        1 if item.back_order_required else 0,
        0 if item.back_order_stock_id is None else item.back_order_stock_id,
    )


# The nullable text columns of _NEW_VARYING, whose None SQLite is given as 0
_SQLITE_ZERO_IS_NULL = ("other_capabilities", "back_order_stock_id")


def _sqlite_bound(value: Any) -> Any:
    """A tracked value as ``_sqlite_attributes`` gives it."""
    if value is None:
        return 0
    return int(value) if isinstance(value, bool) else value


@functools.lru_cache(maxsize=1024)
def _sqlite_capabilities(capabilities: tuple[tuple[str, bool], ...]) -> tuple[Any, ...]:
    return tuple(_sqlite_bound(value) for value in capability_values(capabilities))


class _RowsInsert:
    """An INSERT of a page's rows bound in one go, in the form each database takes fastest.

    - PostgreSQL: an INSERT ... SELECT from one JSON list of the rows
      (``jsonb_array_elements``), each value cast to its column's type. An executemany is a
      statement a row on the server; one array per column (``unnest``), as before, cost
      the sync's process a quarter of its time in psycopg dumping every value in Python.
    - SQLite: a multi-row ``VALUES`` of plain values, run as the driver's own SQL. Taking
      the values out of one JSON text (``json_each``), as before, cost SQLite more than a
      third of the insert; SQLAlchemy's own multi-row insert processes every value in
      Python (``bench/sqlite_inserts.py`` measures the forms). Nothing is returned: the
      caller learns which rowids the rows got (``numbered``), without ``RETURNING``, which
      SQLite runs as a trigger on every row (about a tenth of the numbers' insert). A
      column of ``zero_is_null`` is bound through ``nullif(?, 0)``: its rows give a None
      as 0 (see ``_sqlite_attributes``).

    For a first sync's 99 new numbers and 99 events a page, these are the two costliest
    statements of a page on either database. ``varying``: the columns whose values each
    row brings, in row order; ``constant``: the columns that every row of the page shares,
    with one value each; ``returning``: the columns returned for each row (PostgreSQL)."""

    def __init__(
        self,
        dialect: str,
        table: Table,
        varying: tuple[str, ...],
        constant: tuple[str, ...],
        returning: tuple[str, ...] = (),
        zero_is_null: tuple[str, ...] = (),
    ) -> None:
        assert dialect in ("postgresql", "sqlite"), dialect
        for name in zero_is_null:  # where the integer 0 can only stand for NULL
            assert table.c[name].nullable, name
            assert isinstance(table.c[name].type, String), name
        self.zero_is_null = zero_is_null if dialect == "sqlite" else ()
        self.table = table
        self.varying = varying
        self.constant = constant
        self.returning = returning
        self.statement: Insert | None = None
        if dialect == "postgresql":
            each = func.jsonb_array_elements(
                cast(bindparam("rows", type_=_ListParam()), JSONB)
            ).table_valued("value")
            values = (
                cast(each.c.value.op("->>")(literal_column(str(i))), _json_cast(table.c[c]))
                for i, c in enumerate(varying)
            )
            shared = (bindparam(f"c_{c}", type_=table.c[c].type) for c in constant)
            self.statement = insert(table).from_select(
                [*varying, *constant], select(*values, *shared).select_from(each)
            )
            if returning:
                self.statement = self.statement.returning(*(table.c[c] for c in returning))
        # SQLite: each constant's value as SQLAlchemy binds it there
        self.processors = tuple(_binding(table.c[c].type, _SQLITE) for c in constant)
        self.values_sql = functools.lru_cache(maxsize=4)(self._values_sql)
        self.max_id_sql = f"SELECT max(id) FROM {_SQLITE.identifier_preparer.format_table(table)}"
        # a listing has a few hundred distinct prices at most: each made once, not per row
        self.money = functools.lru_cache(maxsize=4096)(self._money)

    def _money(self, amount: int, exponent: int) -> Any:
        """The price ``amount`` x 10 ** ``exponent`` as the driver takes it: its Decimal, or on
        SQLite the Decimal's text (as ``Money`` binds it there; the column's numeric affinity
        converts it)."""
        value = price_value(amount, exponent)
        return value if self.statement is not None else str(value)

    def execute(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], constants: Sequence[Any]
    ) -> list[Any]:
        """Insert ``rows`` (tuples in ``varying`` order), each with the ``constants`` (in
        ``constant`` order); return the rows of ``returning`` (PostgreSQL; SQLite: [])."""
        if self.statement is not None:
            params: dict[str, Any] = {"rows": rows}
            params.update((f"c_{c}", v) for c, v in zip(self.constant, constants, strict=True))
            result = conn.execute(self.statement, params)
            return list(result.all()) if self.returning else []
        self._insert(conn, rows, constants)
        return []

    def numbered(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], constants: Sequence[Any]
    ) -> tuple[int, int] | None:
        """SQLite: insert ``rows`` as ``execute`` does, and return the rowids ``(first,
        last)`` when the rows inserted are exactly the rows numbered ``first`` to ``last``;
        None when that cannot be told (then find them by a unique column).

        SQLite numbers a new row the largest rowid in the table + 1 ("the usual algorithm"
        of its documentation), and the page's transaction holds the write lock, so nobody
        else inserts meanwhile: when the last row got the largest rowid before the insert +
        ``len(rows)``, the rows are that range. Once a row holds the largest rowid there is
        (2**63 - 1), SQLite picks free rowids at random instead: then this returns None."""
        before = conn.exec_driver_sql(self.max_id_sql).scalar() or 0
        last = self._insert(conn, rows, constants)
        return (before + 1, last) if last == before + len(rows) else None

    def _insert(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], constants: Sequence[Any]
    ) -> int:
        """SQLite: insert ``rows``; the rowid of the last one inserted."""
        shared = tuple(
            value if process is None else process(value)
            for process, value in zip(self.processors, constants, strict=True)
        )
        # rows a statement can carry: SQLite binds at most so many values (by default
        # 32,766; 999 before 3.32; builds differ)
        driver = conn.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        most = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        size = max(1, most // (len(self.varying) + len(self.constant)))
        last = 0
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            # each row + the shared values, flattened in C rather than by a generator
            values = tuple(chain.from_iterable(map(operator.add, chunk, repeat(shared))))
            last = conn.exec_driver_sql(self.values_sql(len(chunk)), values).lastrowid
        return last

    def _values_sql(self, count: int) -> str:
        quote = _SQLITE.identifier_preparer.quote
        names = ", ".join(quote(c) for c in (*self.varying, *self.constant))
        binds = ("nullif(?, 0)" if c in self.zero_is_null else "?" for c in self.varying)
        row = "(" + ", ".join([*binds, *"?" * len(self.constant)]) + ")"
        table = _SQLITE.identifier_preparer.format_table(self.table)
        return f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * count)}"


def _json_cast(column: Column[Any]) -> TypeEngine[Any]:
    """The type a column's value is cast to from its JSON text. Strings and decimals
    without a length or scale: a cast to ``varchar(n)`` would cut a longer value short
    without an error, where the insert into the column refuses it."""
    if isinstance(column.type, String):
        return String()
    if isinstance(column.type, Money):
        return Numeric()
    return column.type


def _numbers_from_rows(dialect: str) -> _RowsInsert:
    constant = ("first_seen_at", "last_seen_at", "last_seen_run_id", "missed_runs")
    # SQLite: the ids come as a range (_RowsInsert.numbered), not returned
    returning = ("number", "id") if dialect == "postgresql" else ()
    return _RowsInsert(dialect, numbers, _NEW_VARYING, constant, returning, _SQLITE_ZERO_IS_NULL)


def _events_from_rows(dialect: str) -> _RowsInsert:
    return _RowsInsert(
        dialect, number_events, ("number_id", "event", "detail"), ("run_id", "occurred_at")
    )


def _seen_at_least(name: str) -> ColumnElement[Any]:
    """last_seen_at raised to the parameter ``name`` if below it, never lowered."""
    floor = bindparam(name, type_=UTCDateTime())
    return case((numbers.c.last_seen_at < floor, floor), else_=numbers.c.last_seen_at)


# An existing number's new state. A relisted one is last seen no earlier than the removal it
# ends (``seen_floor``), so that when the clock went back since, its next removal is still
# dated after its relisting, and every number's events stay in time order.
_UPDATE = (
    update(numbers)
    .where(numbers.c.id == bindparam("b_id"))
    .values(
        {
            **{name: bindparam(f"b_{name}") for name in (*_UPDATE_COLUMNS, "removed_at")},
            "last_seen_at": _seen_at_least("b_seen_floor"),
        }
    )
)
_RELIST = (
    update(numbers)
    .where(numbers.c.id == bindparam("r_id"))
    .values(removed_at=None, last_seen_at=_seen_at_least("r_seen_floor"))
)


def _seen_floor(stored: StoredNumber, at: datetime) -> datetime:
    return at if stored.removed_at is None else max(at, stored.removed_at)


_COUNTERS = (
    "pages",
    "items",
    "listed",
    "relisted",
    "changed",
    "price_changes",
    "rejected",
    "unreadable",
)
_COUNT_PAGE = (
    update(sync_scopes)
    .where(sync_scopes.c.id == bindparam("scope_row_id"))
    .values({name: sync_scopes.c[name] + bindparam(f"add_{name}") for name in _COUNTERS})
)
_INSERT_NUMBERS = insert(numbers)
_INSERT_EVENTS = insert(number_events)
_INSERT_PRICE_CHANGES = insert(price_changes)
# A `listed` event for each number of a range of ids: new numbers, inserted just before
_LISTED = insert(number_events).from_select(
    ["number_id", "run_id", "occurred_at", "event"],
    select(
        numbers.c.id,
        bindparam("l_run_id", type_=Integer()),
        bindparam("l_at", type_=UTCDateTime()),
        literal("listed", String()),
    ).where(numbers.c.id.between(bindparam("l_first"), bindparam("l_last"))),
)


@dataclass(frozen=True, slots=True)
class PageCounts:
    items: int
    listed: int
    relisted: int
    changed: int
    price_changes: int
    rejected: int
    unreadable: int


def read_stored(
    conn: Connection,
    numbers_on_page: Sequence[str],
    mark_seen: tuple[datetime, int] | None = None,
    *,
    to_write: bool = False,
) -> tuple[dict[str, Sequence[Any]], Callable[[Sequence[Any]], Sequence[Any]] | None]:
    """The stored rows (``StoredNumber.COLUMNS``) of the given numbers, in one statement.
    ``mark_seen`` (when, run id): the same statement marks them seen (only where the database
    has UPDATE ... RETURNING: ``_statements(dialect).seen_read``). ``to_write``: the caller
    writes changes computed from them (``_PageStatements.read_to_write``).

    Returned with None, or, when the rows are the driver's own (SQLite, and PostgreSQL with
    psycopg, a read that marks them seen: ``_PageStatements.seen_read_driver``), what gives
    one SQLAlchemy's types."""
    statements = _statements(conn.dialect)
    params: dict[str, Any] = {"page_numbers": list(numbers_on_page)}
    if mark_seen is None:
        statement: Select[Any] | Update = statements.read_to_write if to_write else statements.read
    else:
        assert statements.seen_read is not None
        statement = statements.seen_read
        params.update(seen_at=mark_seen[0], seen_run_id=mark_seen[1])
        driver = statements.seen_read_driver
        if driver is not None:
            result = driver.execute(conn, params)
            return {row[1]: row for row in result.fetchall()}, driver.typed
    # .all(): one fetchall; iterating the result fetched row by row (a tenth of a page's time)
    return {row[1]: row for row in conn.execute(statement, params).all()}, None


def page_changes(
    conn: Connection,
    page: Page,
    mark_seen: tuple[datetime, int] | None = None,
    *,
    to_write: bool = False,
) -> PageChanges:
    """Read what the page needs and compute its changes; ``mark_seen`` (when, run id): mark
    the page's stored numbers seen in the same statement (see ``read_stored``)."""
    items = dedupe(page.items)
    rejected = [r.number for r in page.rejections if r.number]
    wanted = list({*(i.number for i in items), *rejected})
    if not wanted:
        return diff_rows({}, items, rejected)
    rows, typed = read_stored(conn, wanted, mark_seen, to_write=to_write)
    return diff_rows(rows, items, rejected, typed)


def apply_page(conn: Connection, *, run_id: int, scope_row_id: int, page: Page) -> PageCounts:
    """Write one page: new numbers, seen numbers, changes, events, price changes, rejects."""
    at = page.fetched_at
    statements = _statements(conn.dialect)
    marked = statements.seen_read is not None  # the stored numbers are marked seen as read
    changes = page_changes(conn, page, (at, run_id) if marked else None, to_write=True)
    ids, new_rows = _insert_new(conn, changes, run_id, at)
    if changes.seen_ids and not marked:
        conn.execute(
            statements.seen,
            {"seen_ids": changes.seen_ids, "seen_at": at, "seen_run_id": run_id},
        )
    if changes.updated:
        conn.execute(
            _UPDATE,
            [
                {
                    "b_id": stored.id,
                    "b_removed_at": None,
                    "b_seen_floor": _seen_floor(stored, at),
                    **{
                        f"b_{k}": v
                        for k, v in (attribute_values(item) | price_values(item.price)).items()
                    },
                }
                for stored, item in changes.updated
            ],
        )
    if changes.relisted:
        conn.execute(
            _RELIST,
            [{"r_id": s.id, "r_seen_floor": _seen_floor(s, at)} for s in changes.relisted],
        )
    for stored in (*(s for s, _ in changes.updated), *changes.relisted):
        ids[stored.number] = stored.id
    if changes.events:  # every event's number is new (ids, or new_rows) or updated
        _insert_events(conn, changes.events, ids, run_id, at, new_rows)
    if changes.price_changes:
        conn.execute(
            _INSERT_PRICE_CHANGES,
            [
                {
                    "number_id": stored.id,
                    "run_id": run_id,
                    "changed_at": at,
                    "old_monthly_price": stored.price.value,
                    "new_monthly_price": item.price.value,
                    "old_currency": stored.price.currency,
                    "new_currency": item.price.currency,
                    "old_price_amount": stored.price.amount,
                    "old_price_exponent": stored.price.exponent,
                    "new_price_amount": item.price.amount,
                    "new_price_exponent": item.price.exponent,
                }
                for stored, item in changes.price_changes
            ],
        )
    if page.rejections:
        _insert_rejections(conn, run_id, page, at)
    counts = PageCounts(
        items=len(page.items) + len(page.rejections),
        listed=len(changes.new),
        relisted=changes.count("relisted"),
        changed=changes.count("changed"),
        price_changes=len(changes.price_changes),
        rejected=len(page.rejections),
        unreadable=sum(1 for r in page.rejections if r.number is None),
    )
    added = {
        "scope_row_id": scope_row_id,
        "add_pages": 1,
        **{f"add_{name}": getattr(counts, name) for name in _COUNTERS[1:]},
    }
    if statements.count_page_driver is not None:
        statements.count_page_driver.execute(conn, added)
    else:
        conn.execute(_COUNT_PAGE, added)
    return counts


def _insert_new(
    conn: Connection, changes: PageChanges, run_id: int, at: datetime
) -> tuple[dict[str, int], tuple[int, int] | None]:
    """Insert the page's new numbers; return their ids by number, or, on SQLite, the range
    of ids that holds exactly them (``_RowsInsert.numbered``), without reading them."""
    if not changes.new:
        return {}, None
    dialect = conn.dialect
    statements = _statements(dialect)
    from_rows = statements.new_numbers
    if from_rows is not None:
        constants = (at, at, run_id, 0)
        if from_rows.statement is not None:  # PostgreSQL: RETURNING
            new = [_new_varying(item, from_rows.money) for item in changes.new]
            return dict(from_rows.execute(conn, new, constants)), None
        new = [_new_varying(item, from_rows.money, _sqlite_attributes) for item in changes.new]
        numbered = from_rows.numbered(conn, new, constants)
        if numbered is not None:
            return {}, numbered
    else:
        _insert_numbers(conn, changes, run_id, at)
    ids = conn.execute(statements.ids, {"new_numbers": [i.number for i in changes.new]})
    return dict(ids.all()), None


def _insert_numbers(conn: Connection, changes: PageChanges, run_id: int, at: datetime) -> None:
    """The page's new numbers by SQLAlchemy's own insert (MySQL, MariaDB)."""
    rows = [
        {
            "number": item.number,
            **attribute_values(item),
            **price_values(item.price),
            "first_seen_at": at,
            "last_seen_at": at,
            "removed_at": None,
            "last_seen_run_id": run_id,
            "missed_runs": 0,
            "first_missed_at": None,
        }
        for item in changes.new
    ]
    conn.execute(_INSERT_NUMBERS, rows)


def _insert_events(
    conn: Connection,
    events: Sequence[Event],
    ids: dict[str, int],
    run_id: int,
    at: datetime,
    new_rows: tuple[int, int] | None = None,
) -> None:
    """Insert the page's events. ``new_rows``: the ids of exactly the page's new numbers
    (SQLite), whose `listed` events are made from those rows; ``ids`` has the others."""
    if new_rows is not None:
        listed = _statements(conn.dialect).listed
        assert listed is not None
        first, last = new_rows
        listed.execute(conn, {"l_run_id": run_id, "l_at": at, "l_first": first, "l_last": last})
        # a page's `listed` events are those of its new numbers, one each (diff_page)
        events = [e for e in events if e.event != "listed"]
        if not events:
            return
    late = [e for e in events if e.not_before is not None and e.not_before > at]
    if late:  # the clock went back since the removal a relisting ends: dated at the removal
        conn.execute(
            _INSERT_EVENTS,
            [
                {
                    "number_id": ids[e.number],
                    "run_id": run_id,
                    "occurred_at": e.not_before,
                    "event": e.event,
                    "detail": e.detail,
                }
                for e in late
            ],
        )
        events = [e for e in events if e not in late]
        if not events:
            return
    from_rows = _statements(conn.dialect).events
    if from_rows is not None:
        from_rows.execute(conn, [(ids[e.number], e.event, e.detail) for e in events], (run_id, at))
        return
    conn.execute(
        _INSERT_EVENTS,
        [
            {
                "number_id": ids[e.number],
                "run_id": run_id,
                "occurred_at": at,
                "event": e.event,
                "detail": e.detail,
            }
            for e in events
        ],
    )


def _payload_text(rejection: Rejection) -> str:
    try:
        text = json.dumps(rejection.payload, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(rejection.payload)
    return text[:MAX_PAYLOAD_CHARS]


def _insert_rejections(conn: Connection, run_id: int, page: Page, at: datetime) -> None:
    country = page.scope_key.split(" ", 1)[0]
    conn.execute(
        insert(rejected_items),
        [
            {
                "run_id": run_id,
                "country_code": country,
                "scope_key": page.scope_key,
                "number": (r.number or None) and r.number[:64],
                "rejected_at": at,
                "reason": r.reason[:2000],
                "payload": _payload_text(r),
            }
            for r in page.rejections
        ],
    )


# --- closing a scope ------------------------------------------------------------------------


def scope_filter(scope: Scope, *, in_stock: bool = True) -> ColumnElement[bool]:
    """The numbers of a scope that are in stock (``in_stock`` False: in stock or not)."""
    clauses = [numbers.c.country_code == scope.country_code]
    if in_stock:
        clauses.append(numbers.c.removed_at.is_(None))
    if scope.prefix:
        clauses.append(numbers.c.number.startswith(scope.prefix, autoescape=True))
    if scope.types:
        clauses.append(numbers.c.number_type.in_(scope.types))
    return and_(*clauses)


def _missed(run_id: int) -> ColumnElement[bool]:
    """Not seen by this run (nor by a newer one)."""
    return or_(numbers.c.last_seen_run_id.is_(None), numbers.c.last_seen_run_id < run_id)


@dataclass(frozen=True, slots=True)
class ScopeClose:
    status: str  # complete | held
    available: int
    removed: int
    reason: str | None = None


def close_scope(
    conn: Connection,
    *,
    run_id: int,
    scope_row_id: int,
    scope: Scope,
    completed_at: datetime,
    confirmations: int,
    max_fraction: Decimal,
    accepted: bool,
    removals_allowed: bool = True,
) -> ScopeClose:
    """Close a completely paged scope: count misses, remove what was missed
    ``confirmations`` complete runs in a row (unless the guard holds), take the snapshot."""
    if conn.dialect.name == "postgresql":
        # The pages may have committed without waiting for the disk (engine.async_commits):
        # this commit waits, and with it every page before it.
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO ON")
    in_scope = scope_filter(scope)
    missed = _missed(run_id)
    due = and_(missed, numbers.c.missed_runs + 1 >= confirmations)
    available, missed_count, would_remove = conn.execute(
        select(func.count(), _count_if(missed), _count_if(due)).where(in_scope)
    ).one()
    decision = (
        removal_guard(
            country=scope.country_code,
            available=available,
            would_remove=would_remove,
            max_fraction=max_fraction,
            accepted=accepted,
            missed=missed_count,
            confirmations=confirmations,
        )
        if removals_allowed
        else RemovalDecision(False, None)
    )
    removed = 0
    if decision.proceed:
        # With no miss, every number of the scope was seen, and seeing a number sets its
        # misses to 0: there is nothing to count or remove, and three scans are saved.
        if missed_count:
            removed = _remove_missed(conn, run_id, in_scope, missed, completed_at, confirmations)
    elif decision.reason:
        # Held: the listing was complete, so its misses count (the first of them dates a
        # later removal), but nothing is removed until it recovers or is accepted.
        _count_misses(conn, in_scope, missed, completed_at)
    status = "held" if not decision.proceed and decision.reason else "complete"
    if status == "complete":
        _snapshot(conn, run_id, scope, completed_at)
    conn.execute(
        update(sync_scopes)
        .where(sync_scopes.c.id == scope_row_id)
        .values(
            status=status,
            finished_at=completed_at,
            removed=removed,
            available=available - removed,
            error=decision.reason,
        )
    )
    return ScopeClose(status, available - removed, removed, decision.reason)


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _count_misses(
    conn: Connection,
    in_scope: ColumnElement[bool],
    missed: ColumnElement[bool],
    completed_at: datetime,
) -> None:
    """One more complete run missed these numbers; the first such run's time is kept."""
    completed = literal(completed_at, UTCDateTime())
    conn.execute(
        update(numbers)
        .where(in_scope, missed)
        .values(
            missed_runs=numbers.c.missed_runs + 1,
            first_missed_at=func.coalesce(numbers.c.first_missed_at, completed),
        )
    )


def _remove_missed(
    conn: Connection,
    run_id: int,
    in_scope: ColumnElement[bool],
    missed: ColumnElement[bool],
    completed_at: datetime,
    confirmations: int,
) -> int:
    _count_misses(conn, in_scope, missed, completed_at)
    gone = and_(in_scope, numbers.c.missed_runs >= confirmations)
    # removed_at: when the first missing run completed its listing, never before last_seen_at
    removed_at = case(
        (numbers.c.first_missed_at > numbers.c.last_seen_at, numbers.c.first_missed_at),
        else_=numbers.c.last_seen_at,
    )
    conn.execute(
        insert(number_events).from_select(
            ["number_id", "run_id", "occurred_at", "event", "detail"],
            select(
                numbers.c.id,
                literal(run_id, Integer()),
                removed_at,
                literal("removed", String()),
                literal(f"missed by {confirmations} complete run(s) in a row", String()),
            ).where(gone),
        )
    )
    result = conn.execute(update(numbers).where(gone).values(removed_at=removed_at))
    return int(result.rowcount)


def _snapshot(conn: Connection, run_id: int, scope: Scope, taken_at: datetime) -> None:
    """One row per type and currency available in the scope; and a zero row for each type
    and currency the scope's previous snapshot had and this one has not (sold out), so that
    the last snapshot of a day is the whole truth."""
    n = numbers.c
    conn.execute(
        insert(availability_snapshots).from_select(
            [
                "run_id",
                "taken_at",
                "scope_key",
                "country_code",
                "number_type",
                "currency",
                "available_count",
                "min_price",
                "avg_price",
                "max_price",
                "voice_count",
                "sms_count",
                "mms_count",
                "back_order_count",
            ],
            select(
                literal(run_id, Integer()),
                literal(taken_at, UTCDateTime()),
                literal(scope.key, String()),
                n.country_code,
                n.number_type,
                n.currency,
                func.count(),
                func.min(n.monthly_price),
                func.avg(n.monthly_price),
                func.max(n.monthly_price),
                _count_if(or_(n.voice_inbound, n.voice_outbound)),
                _count_if(or_(n.sms_inbound, n.sms_outbound)),
                _count_if(or_(n.mms_inbound, n.mms_outbound)),
                _count_if(n.back_order_required),
            )
            .where(scope_filter(scope))
            .group_by(n.country_code, n.number_type, n.currency),
        )
    )
    s = availability_snapshots.c
    previous_run = (
        select(func.max(s.run_id))
        .where(s.scope_key == scope.key, s.run_id < run_id)
        .scalar_subquery()
    )
    rows = conn.execute(
        select(s.run_id, s.country_code, s.number_type, s.currency).where(
            s.scope_key == scope.key, or_(s.run_id == run_id, s.run_id == previous_run)
        )
    ).all()
    now = {(r.number_type, r.currency) for r in rows if r.run_id == run_id}
    gone = {(r.country_code, r.number_type, r.currency) for r in rows if r.run_id != run_id}
    missing = sorted(g for g in gone if g[1:] not in now)
    if missing:
        conn.execute(
            insert(availability_snapshots),
            [
                {
                    "run_id": run_id,
                    "taken_at": taken_at,
                    "scope_key": scope.key,
                    "country_code": country,
                    "number_type": number_type,
                    "currency": currency,
                    "available_count": 0,
                    **dict.fromkeys(("min_price", "avg_price", "max_price")),
                    **dict.fromkeys(("voice_count", "sms_count", "mms_count"), 0),
                    "back_order_count": 0,
                }
                for country, number_type, currency in missing
            ],
        )

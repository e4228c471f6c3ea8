"""What inserting a first sync's new numbers costs SQLite itself, in four forms.

Pages of 99 real-looking numbers (the simulator's synthetic stock, parsed as a sync parses
it) go into the project's own ``numbers`` table (its indexes, WAL, synchronous=NORMAL), one
transaction per page, on a fresh file for each form:

- bare ``sqlite3``: one multi-row ``INSERT ... VALUES ... RETURNING`` per page;
- bare ``sqlite3``: an ``executemany`` per page (no ids back);
- bare ``sqlite3``: one ``INSERT ... SELECT`` from a JSON list of rows (``json_each``),
  returning the ids;
- the sync's own insert for it (``_RowsInsert.numbered``: the multi-row ``VALUES`` form,
  through SQLAlchemy's connection as the driver's own SQL, without ``RETURNING``: the ids
  are known as the range of rowids after the largest before, read first; since 29 November
  its booleans bound as 0 and 1 and its Nones as 0 through ``nullif(?, 0)``, which the
  driver binds without looking for an adapter).

The bare forms bind the values as they come (booleans, None), as a plain program would.

The sync used the JSON form until 27 November; bench/RESULTS.md quotes these figures for
what handing the driver flat rows instead saved.

Run:  .venv/bin/python bench/sqlite_inserts.py [--pages 2000]"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine  # noqa: E402

from etl.records import StockItem, price_value  # noqa: E402
from etl.simulator import SyntheticStock  # noqa: E402
from etl.source.parser import parse_item  # noqa: E402
from etl.store.engine import make_engine  # noqa: E402
from etl.store.schema import numbers  # noqa: E402
from etl.store.types import UTCDateTime  # noqa: E402
from etl.store.writer import (  # noqa: E402
    _NEW_VARYING,
    _ListParam,
    _new_varying,
    _sqlite_attributes,
    _statements,
)

PAGE = 99
COLUMNS = (*_NEW_VARYING, "first_seen_at", "last_seen_at", "last_seen_run_id", "missed_runs")


def pages_of_items(pages: int) -> list[list[StockItem]]:
    stock = SyntheticStock(seed=42, countries=("US", "NL", "GB", "DE"), size=pages * PAGE)
    items = [parse_item(raw) for raw in stock.items()]
    parsed = [i for i in items if isinstance(i, StockItem)]
    return [parsed[i : i + PAGE] for i in range(0, len(parsed), PAGE)]


def fresh_database(directory: Path, name: str) -> Path:
    path = directory / f"{name}.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    numbers.create(engine)
    engine.dispose()
    return path


def bare(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def text_price(amount: int, exponent: int) -> str:
    """A price as SQLite is given it: its Decimal's text."""
    return str(price_value(amount, exponent))


def flat_row(item: StockItem, at: str) -> tuple[Any, ...]:
    """A row as SQLite takes it: the values the sync binds (a Decimal as its text)."""
    return (*_new_varying(item, text_price), at, at, 1, 0)


def run_values(path: Path, pages: list[list[StockItem]], at: str) -> None:
    conn = bare(path)
    row_sql = "(" + ",".join("?" * len(COLUMNS)) + ")"
    names = ",".join(COLUMNS)
    for page in pages:
        sql = f"INSERT INTO numbers ({names}) VALUES {','.join([row_sql] * len(page))}"
        params = [value for item in page for value in flat_row(item, at)]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql + " RETURNING number, id", params).fetchall()
        conn.execute("COMMIT")
    conn.close()


def run_executemany(path: Path, pages: list[list[StockItem]], at: str) -> None:
    conn = bare(path)
    sql = f"INSERT INTO numbers ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
    for page in pages:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, [flat_row(item, at) for item in page])
        conn.execute("COMMIT")
    conn.close()


def run_json(path: Path, pages: list[list[StockItem]], at: str) -> None:
    conn = bare(path)
    extract = ",".join(f"json_extract(value, '$[{i}]')" for i in range(len(_NEW_VARYING)))
    sql = (
        f"INSERT INTO numbers ({','.join(COLUMNS)}) SELECT {extract}, ?, ?, ?, 0 "
        "FROM json_each(?) RETURNING number, id"
    )
    encode = _ListParam().process_bind_param
    dialect = sqlite3_dialect()
    for page in pages:
        rows = encode([_new_varying(item, text_price) for item in page], dialect)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, (at, at, 1, rows)).fetchall()
        conn.execute("COMMIT")
    conn.close()


def run_sync_statement(path: Path, pages: list[list[StockItem]], at: str) -> None:
    engine = make_engine(f"sqlite:///{path}")
    insert = _statements(engine.dialect).new_numbers
    assert insert is not None
    moment = datetime.fromisoformat(at).replace(tzinfo=UTC)
    with engine.connect() as conn:
        for page in pages:
            with conn.begin():
                rows = [_new_varying(item, insert.money, _sqlite_attributes) for item in page]
                assert insert.numbered(conn, rows, (moment, moment, 1, 0)) is not None
    engine.dispose()


def sqlite3_dialect() -> Any:
    return create_engine("sqlite://").dialect


FORMS: Sequence[tuple[str, Callable[[Path, list[list[StockItem]], str], None]]] = (
    ("bare sqlite3: multi-row VALUES ... RETURNING", run_values),
    ("bare sqlite3: executemany (no ids back)", run_executemany),
    ("bare sqlite3: INSERT ... SELECT from json_each ... RETURNING", run_json),
    (
        "the sync's insert (multi-row VALUES through SQLAlchemy's connection, ids as a range)",
        run_sync_statement,
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000, help="pages of 99 (default 2000)")
    args = parser.parse_args(argv)
    pages = pages_of_items(args.pages)
    # the sync binds its fetch time: formatted here once, as SQLAlchemy formats it for SQLite
    dialect = sqlite3_dialect()
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    at = process(datetime(2026, 11, 27, tzinfo=UTC))
    assert isinstance(at, str)
    count = sum(len(p) for p in pages)
    print(f"{count:,} numbers in {len(pages):,} pages, SQLite {sqlite3.sqlite_version}")
    print("| form | seconds | us a page |\n|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="numbers-etl-inserts-") as workdir:
        for index, (name, run) in enumerate(FORMS):
            path = fresh_database(Path(workdir), f"form{index}")
            started = time.perf_counter()
            run(path, pages, at)
            seconds = time.perf_counter() - started
            with sqlite3.connect(path) as check:
                stored = check.execute("SELECT count(*) FROM numbers").fetchone()[0]
            if stored != count:
                raise SystemExit(f"{name}: {stored} rows stored, not {count}")
            print(f"| {name} | {seconds:.2f} | {1e6 * seconds / len(pages):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

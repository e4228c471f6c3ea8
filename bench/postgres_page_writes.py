"""What writing a first sync's pages costs PostgreSQL, by form and by what the schema asks.

Pages of 99 real-looking numbers (the simulator's synthetic stock, parsed as a sync parses
it) are written the way a first sync writes them: each page in its own transaction on one
connection, its new numbers (their ids returned) and then one `listed` event for each. Each
case starts from a fresh database migrated to the head revision:

- ``sync``: the sync's own statements (``_RowsInsert``: an ``INSERT ... SELECT`` from one
  JSON list of the page's rows, ``RETURNING`` the numbers' ids; the events the same way);
- ``sync, no key to runs`` / ``no key to numbers`` / ``no keys``: the same, after dropping
  the events' foreign key to ``sync_runs``, to ``numbers``, or both;
- ``sync, no (run_id) index`` / ``no (event, occurred_at) index``: the same, after
  dropping that index of ``number_events``;
- ``binary COPY``: both tables by ``COPY ... FROM STDIN (FORMAT BINARY)`` with psycopg's
  C row formatter, the numbers' ids taken from their sequence first (a statement more).

For each: wall seconds, this process's CPU seconds, and the CPU seconds of the server's
backend (read from /proc, where the server runs on this machine; "-" where it does not).
The cases take turns, round after round, so that a slow minute of a shared machine does
not fall on one of them only. bench/RESULTS.md quotes the figures: the events' two keys are
what a first sync's page costs the server most for.

Run:  .venv/bin/python bench/postgres_page_writes.py [--pages 600] [--rounds 3] [--url URL]"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Connection  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from etl.records import Scope, StockItem  # noqa: E402
from etl.store import runs  # noqa: E402
from etl.store.engine import make_engine  # noqa: E402
from etl.store.schema import number_events, numbers  # noqa: E402
from etl.store.writer import _NEW_VARYING, _new_varying, _statements  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from sqlite_inserts import pages_of_items  # noqa: E402
from sync_bench import (  # noqa: E402
    DEFAULT_PG,
    Databases,
    is_postgres,
    postgres_available,
    process_cpu,
)

COLUMNS = ("id", *_NEW_VARYING, "first_seen_at", "last_seen_at", "last_seen_run_id", "missed_runs")
EVENT_COLUMNS = ("number_id", "event", "detail", "run_id", "occurred_at")
# PostgreSQL's name for each column type of the two tables, for the binary COPY
PG_TYPES = {
    "Integer": "int4",
    "String": "text",
    "Text": "text",
    "Boolean": "bool",
    "Money": "numeric",
    "BigInteger": "int8",
    "SmallInteger": "int2",
    "UTCDateTime": "timestamptz",
}
SCOPE = Scope("US")


def backend_cpu(pid: int) -> float | None:
    """The CPU seconds of the server's backend ``pid``, when it is a process of this machine's
    PostgreSQL server (a server elsewhere: None, whatever process has that pid here)."""
    return process_cpu(pid) if is_postgres(pid) else None


Write = Callable[[Connection, list[list[StockItem]], int, datetime], None]


def write_sync(conn: Connection, pages: list[list[StockItem]], run_id: int, at: datetime) -> None:
    """The sync's own two inserts for a page of new numbers (as ``apply_page`` makes them)."""
    statements = _statements(conn.dialect)
    new, events = statements.new_numbers, statements.events
    assert new is not None
    assert events is not None
    for page in pages:
        with conn.begin():
            rows = [_new_varying(item, new.money) for item in page]
            ids = dict(new.execute(conn, rows, (at, at, run_id, 0)))
            events.execute(conn, [(ids[i.number], "listed", None) for i in page], (run_id, at))


def write_copy(conn: Connection, pages: list[list[StockItem]], run_id: int, at: datetime) -> None:
    """Both tables by binary COPY; the numbers' ids from their sequence, read first."""
    new = _statements(conn.dialect).new_numbers
    assert new is not None
    number_types = [PG_TYPES[type(numbers.c[c].type).__name__] for c in COLUMNS]
    event_types = [PG_TYPES[type(number_events.c[c].type).__name__] for c in EVENT_COLUMNS]
    driver = conn.connection.driver_connection
    assert driver is not None
    ids_sql = "SELECT nextval(pg_get_serial_sequence('numbers', 'id')) FROM generate_series(1, %s)"
    copy_numbers = f"COPY numbers ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    copy_events = f"COPY number_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    for page in pages:
        with conn.begin():
            cursor = driver.cursor()
            ids = [row[0] for row in cursor.execute(ids_sql, (len(page),))]
            with cursor.copy(copy_numbers) as copy:
                copy.set_types(number_types)
                for number_id, item in zip(ids, page, strict=True):
                    copy.write_row((number_id, *_new_varying(item, new.money), at, at, run_id, 0))
            with cursor.copy(copy_events) as copy:
                copy.set_types(event_types)
                for number_id in ids:
                    copy.write_row((number_id, "listed", None, run_id, at))


CASES: Sequence[tuple[str, Write, str]] = (
    ("sync", write_sync, ""),
    (
        "sync, no key to runs",
        write_sync,
        "ALTER TABLE number_events DROP CONSTRAINT fk_number_events_run_id_sync_runs",
    ),
    (
        "sync, no key to numbers",
        write_sync,
        "ALTER TABLE number_events DROP CONSTRAINT fk_number_events_number_id_numbers",
    ),
    (
        "sync, no keys",
        write_sync,
        "ALTER TABLE number_events DROP CONSTRAINT fk_number_events_run_id_sync_runs, "
        "DROP CONSTRAINT fk_number_events_number_id_numbers",
    ),
    ("sync, no (run_id) index", write_sync, "DROP INDEX ix_number_events_run_id"),
    (
        "sync, no (event, occurred_at) index",
        write_sync,
        "DROP INDEX ix_number_events_event_occurred_at",
    ),
    ("binary COPY", write_copy, ""),
)


def measure(
    url: str, change: str, write: Write, pages: list[list[StockItem]]
) -> tuple[float, float, float | None]:
    """Wall, client CPU and backend CPU seconds of writing ``pages`` into ``url``."""
    engine = make_engine(url)
    at = datetime.now(UTC)
    try:
        with engine.connect() as conn:
            if change:
                conn.exec_driver_sql(change)
            run_id, _ = runs.start_run(conn, at, [SCOPE])
            backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            conn.commit()
            started, cpu, server = time.perf_counter(), time.process_time(), backend_cpu(backend)
            write(conn, pages, run_id, at)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            server_after = backend_cpu(backend)
            stored = conn.exec_driver_sql("SELECT count(*) FROM number_events").scalar()
            conn.rollback()
    finally:
        engine.dispose()
    expected = sum(len(p) for p in pages)
    if stored != expected:
        raise SystemExit(f"{stored} events stored, not {expected}")
    used = None if server is None or server_after is None else server_after - server
    return wall, cpu, used


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=600, help="pages of 99 (default 600)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case")
    parser.add_argument("--url", default=DEFAULT_PG, help=f"PostgreSQL (default {DEFAULT_PG})")
    args = parser.parse_args(argv)
    problem = postgres_available(args.url)
    if problem is not None:
        shown = make_url(args.url).render_as_string(hide_password=True)
        raise SystemExit(f"PostgreSQL at {shown} is not usable: {problem}")
    pages = pages_of_items(args.pages)
    count = sum(len(p) for p in pages)
    print(f"{count:,} numbers in {len(pages):,} pages, rounds: {args.rounds}")
    results: dict[str, list[tuple[float, float, float | None]]] = {c[0]: [] for c in CASES}
    dbs = Databases(Path("."), args.url)
    try:
        for _ in range(args.rounds):
            for index, (name, write, change) in enumerate(CASES):
                url = dbs.fresh("postgresql", f"writes{index}")
                results[name].append(measure(url, change, write, pages))
    finally:
        dbs.drop_all()

    def seconds(values: Sequence[float | None]) -> str:
        return " / ".join("-" if v is None else f"{v:.2f}" for v in values)

    print("| case | wall s | client CPU s | server CPU s |\n|---|---|---|---|")
    for name, measured in results.items():
        walls, cpus, servers = zip(*measured, strict=True)
        print(f"| {name} | {seconds(walls)} | {seconds(cpus)} | {seconds(servers)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

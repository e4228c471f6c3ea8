"""``numbers-etl demo``: the simulator in this process, a few syncs with the stock changing
between them, what each run found (with examples read back from the database), and SQL to
try next. Talks to 127.0.0.1 only; needs no credentials."""

from __future__ import annotations

import secrets
import shlex
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import OperationalError

from etl.config import Secret, Settings, redact_url
from etl.errors import ConfigError, DatabaseError
from etl.report import summary_line
from etl.store import demo_mark
from etl.store.demo_mark import DEMO_APPLICATION_ID, DEMO_MARK_TABLE
from etl.store.engine import make_engine, sqlite_path
from etl.store.migrate import check_schema, current_revision, downgrade
from etl.store.schema import number_events, numbers, price_changes, sync_runs
from etl.sync import RunResult, Sync

COUNTRIES = ("US", "NL", "GB")
ORGANIZATION_ID = "demo-organization"
SEED = 20240601
SIZE = 900  # numbers at the start, spread over the countries
EXAMPLES = 3
# A database with the demo's mark (etl.store.demo_mark) is the demo's own: it is started
# afresh (a SQLite file deleted; a server database's numbers-etl tables and views dropped).
# Any other database with runs in it is left alone.

QUERIES = (
    (
        "what is in stock now, by country and type, and the cheapest price",
        "SELECT country_code, number_type, currency, COUNT(*) AS available, "
        "MIN(monthly_price) AS cheapest FROM v_available_numbers "
        "GROUP BY country_code, number_type, currency ORDER BY country_code, number_type",
    ),
    (
        "the latest price changes",
        "SELECT changed_at, number, country_code, old_monthly_price, new_monthly_price, "
        "new_currency FROM v_price_history ORDER BY changed_at DESC, number LIMIT 10",
    ),
    (
        "numbers that left the stock, and how long they were in it",
        "SELECT number, country_code, number_type, removed_at, ROUND(days_in_stock, 4) AS days "
        "FROM v_removed_numbers ORDER BY removed_at DESC, number LIMIT 10",
    ),
)

Echo = Callable[[str], Any]


def money(value: Decimal, currency: str) -> str:
    value = value.normalize()
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        value = value.quantize(Decimal("0.01"))
    return f"{value:f} {currency}"


def prepare(database_url: str) -> None:
    """Refuse a database that holds a history the demo did not write; start the demo's own
    SQLite file afresh."""
    path = sqlite_path(database_url)
    if path is not None and path.exists() and _application_id(database_url) == DEMO_APPLICATION_ID:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    if path is not None and not path.exists():
        return
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
            has_runs = "sync_runs" in tables and conn.scalar(
                select(func.count()).select_from(sync_runs)
            )
        if path is None and DEMO_MARK_TABLE in tables:  # the demo's own: afresh
            if current_revision(engine) is not None:
                downgrade(engine, "base")
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS alembic_version"))  # left empty
                conn.execute(text(f"DROP TABLE {DEMO_MARK_TABLE}"))
            return
    finally:
        engine.dispose()
    if has_runs:
        raise ConfigError(
            [
                f"{redact_url(database_url)} already holds {has_runs} sync run(s) that the demo "
                "did not write; the demo never writes into a real history. Give it another "
                "database, e.g. --database-url sqlite:///demo.sqlite"
            ]
        )


def _application_id(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA application_id").scalar_one())
    finally:
        engine.dispose()


def _examples(engine: Engine, run_id: int) -> dict[str, list[str]]:
    """A few concrete numbers per kind of change, read back from the database."""
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for event in ("listed", "removed", "relisted"):
            rows = conn.execute(
                select(
                    numbers.c.number,
                    numbers.c.number_type,
                    numbers.c.monthly_price,
                    numbers.c.currency,
                )
                .join(number_events, number_events.c.number_id == numbers.c.id)
                .where(number_events.c.run_id == run_id, number_events.c.event == event)
                .order_by(numbers.c.number)
                .limit(EXAMPLES)
            )
            out[event] = [
                f"{r.number} ({r.number_type}, {money(r.monthly_price, r.currency)})" for r in rows
            ]
        rows = conn.execute(
            select(
                numbers.c.number,
                price_changes.c.old_monthly_price,
                price_changes.c.old_currency,
                price_changes.c.new_monthly_price,
                price_changes.c.new_currency,
            )
            .join(numbers, numbers.c.id == price_changes.c.number_id)
            .where(price_changes.c.run_id == run_id)
            .order_by(numbers.c.number)
            .limit(EXAMPLES)
        )
        out["price changes"] = [
            f"{r.number}: {money(r.old_monthly_price, r.old_currency)} -> "
            f"{money(r.new_monthly_price, r.new_currency)}"
            for r in rows
        ]
    return {kind: shown for kind, shown in out.items() if shown}


def query_commands(database_url: str) -> list[tuple[str, str]]:
    """Each suggested query with a shell command that runs it on this database."""
    path = sqlite_path(database_url)
    out = []
    for title, sql in QUERIES:
        if path is None:
            command = sql + ";"
        elif shutil.which("sqlite3"):
            command = f"sqlite3 -header -column {shlex.quote(str(path))} {shlex.quote(sql)}"
        else:
            script = (
                "import sqlite3, sys; "
                "[print(*row, sep=' | ') for row in "
                "sqlite3.connect(sys.argv[1]).execute(sys.argv[2])]"
            )
            command = (
                f"python3 -c {shlex.quote(script)} {shlex.quote(str(path))} {shlex.quote(sql)}"
            )
        out.append((title, command))
    return out


def _tell_run(echo: Echo, result: RunResult, engine: Engine) -> None:
    echo(summary_line(result))
    for s in result.scopes:
        echo(
            f"  {s.scope.key}: {s.status}, {s.items} numbers; listed {s.listed}, "
            f"removed {s.removed}, relisted {s.relisted}, price changes {s.price_changes}"
        )
    assert result.run_id is not None
    for kind, shown in _examples(engine, result.run_id).items():
        echo(f"  {kind}: " + "; ".join(shown))


@contextmanager
def _database_errors(database_url: str) -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise DatabaseError(
            f"cannot use the database {redact_url(database_url)}: {reason}"
        ) from None


def run_demo(
    database_url: str, *, runs: int = 3, echo: Echo = print, size: int = SIZE
) -> list[RunResult]:
    """Run the demo; return the runs' results."""
    from etl.simulator import Simulator, SyntheticStock

    with _database_errors(database_url):
        prepare(database_url)
    engine = make_engine(database_url)
    stock = SyntheticStock(seed=SEED, countries=COUNTRIES, size=size)
    results = []
    try:
        with _database_errors(database_url):
            check_schema(engine, create_if_new=True)
        with engine.begin() as conn:
            demo_mark.mark(conn)
        access_key = secrets.token_urlsafe(24)
        with Simulator(stock, access_key=access_key, organization_id=ORGANIZATION_ID) as sim:
            settings = Settings(
                database_url=database_url,
                api_url=sim.url,
                access_key=Secret(access_key),
                organization_id=ORGANIZATION_ID,
                countries=COUNTRIES,
                max_requests_per_second=1000.0,
            )
            echo(
                f"numbers-etl demo: a simulated Bird stock of {len(stock.numbers())} numbers in "
                f"{', '.join(COUNTRIES)} served on {sim.url}; history in "
                f"{redact_url(database_url)}"
            )
            for index in range(1, runs + 1):
                if index > 1:
                    change = stock.evolve()
                    echo(
                        f"\n(the simulated stock changed: {change['price_changes']} prices, "
                        f"{change['removed']} numbers sold, {change['added']} new, "
                        f"{change['relisted']} back on offer)"
                    )
                result = Sync(settings, engine=engine, demo=True).run()
                results.append(result)
                _tell_run(echo, result, engine)
        echo("\nTry next:")
        for number, (title, command) in enumerate(query_commands(database_url), start=1):
            echo(f"  {number}. {title}:\n     {command}")
        echo(
            "  v_daily_availability has one row per day, country, type and currency for "
            "dashboards; see README.md, 'Data model'."
        )
    finally:
        engine.dispose()
    return results

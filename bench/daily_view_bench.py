"""How long reading ``v_daily_availability`` whole takes as the history grows, at the head
revision and at migration 0005 (before 0006 took a complete scope's own snapshot without a
lookup), with the rows of the two compared (prices to 12 places: 0007 rounds the day's
average to them on PostgreSQL and MySQL/MariaDB, where 0005 had the division's 16).

The history is synthetic: RUNS runs six hours apart over 18 countries, each country one
scope with four number types; one scope in twenty fails (no snapshot), as in a history
with outages. It goes into an empty database (a temporary SQLite file by default), which
is left empty again at the end.

Run:  .venv/bin/python bench/daily_view_bench.py [--runs 1460] [--url URL-of-an-empty-database]
e.g.  --url mysql+pymysql://root@127.0.0.1:3306/scratch (bench/RESULTS.md quotes its figures)"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, insert, inspect, text  # noqa: E402

from etl.store import migrate  # noqa: E402
from etl.store.engine import make_engine  # noqa: E402
from etl.store.schema import availability_snapshots, sync_runs, sync_scopes  # noqa: E402

COUNTRIES = ("AT", "AU", "BE", "CA", "CH", "DE", "DK", "ES", "FR", "GB", "IE", "IT")
COUNTRIES += ("NL", "NO", "PL", "PT", "SE", "US")  # 18
TYPES = ("local", "mobile", "national", "toll-free")
BEFORE = "0005"


def history(runs: int) -> tuple[list[dict[str, Any]], ...]:
    start = datetime(2024, 11, 1, tzinfo=UTC)
    run_rows, scope_rows, snapshot_rows = [], [], []
    for run in range(1, runs + 1):
        started = start + timedelta(hours=6 * run)
        finished = started + timedelta(minutes=1)
        run_rows.append(
            {"id": run, "started_at": started, "finished_at": finished, "status": "succeeded"}
        )
        for country in COUNTRIES:
            failed = (run * 7 + ord(country[0])) % 20 == 0
            scope_rows.append(
                {
                    "run_id": run,
                    "scope_key": country,
                    "country_code": country,
                    "status": "failed" if failed else "complete",
                    "started_at": started,
                    "finished_at": finished,
                }
            )
            if failed:
                continue
            snapshot_rows.extend(
                {
                    "run_id": run,
                    "taken_at": finished,
                    "scope_key": country,
                    "country_code": country,
                    "number_type": number_type,
                    "currency": "EUR",
                    "available_count": 100 + run % 7,
                    "min_price": Decimal("1.15"),
                    "avg_price": Decimal("2.5"),
                    "max_price": Decimal("9"),
                    "voice_count": 100,
                    "sms_count": 50,
                    "mms_count": 10,
                    "back_order_count": 1,
                }
                for number_type in TYPES
            )
    return run_rows, scope_rows, snapshot_rows


def read_whole(engine: Engine, rounds: int = 2) -> tuple[float, list[tuple[Any, ...]]]:
    """The fastest of ``rounds`` reads of the whole view (rows fetched), and its rows."""
    best, rows = float("inf"), []
    for _ in range(rounds):
        started = time.perf_counter()
        with engine.connect() as conn:
            rows = [
                tuple(r)
                for r in conn.execute(
                    text("SELECT * FROM v_daily_availability ORDER BY 1, 2, 3, 4")
                )
            ]
        best = min(best, time.perf_counter() - started)
    return best, rows


def _to_12_places(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(round(v, 12) if isinstance(v, Decimal | float) else v for v in row)


def bench(url: str, runs: int) -> str:
    engine = make_engine(url)
    try:
        if inspect(engine).get_table_names():
            raise SystemExit(f"{url} has tables: give this benchmark an empty database")
        migrate.upgrade(engine)
        try:
            run_rows, scope_rows, snapshot_rows = history(runs)
            with engine.begin() as conn:
                conn.execute(insert(sync_runs), run_rows)
                conn.execute(insert(sync_scopes), scope_rows)
                for start in range(0, len(snapshot_rows), 5000):
                    conn.execute(
                        insert(availability_snapshots), snapshot_rows[start : start + 5000]
                    )
                if engine.dialect.name in ("postgresql", "sqlite"):
                    conn.execute(text("ANALYZE"))
                else:
                    conn.execute(text("ANALYZE TABLE availability_snapshots, sync_scopes"))
            head, head_rows = read_whole(engine)
            migrate.downgrade(engine, BEFORE)
            before, before_rows = read_whole(engine)
            if [_to_12_places(r) for r in before_rows] != [_to_12_places(r) for r in head_rows]:
                raise SystemExit("the view's rows differ between the two revisions")
        finally:
            migrate.downgrade(engine)
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        return (
            f"| {engine.dialect.name} | {runs:,} | {len(snapshot_rows):,} | {len(head_rows):,} "
            f"| {before:.3f} | {head:.3f} |"
        )
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1460, help="runs (default 1460: a year)")
    parser.add_argument("--url", help="an empty database (default: a temporary SQLite file)")
    args = parser.parse_args(argv)
    print(
        f"| database | runs | snapshot rows | view rows | read whole at {BEFORE}, s "
        "| at head, s |\n|---|---|---|---|---|---|"
    )
    if args.url:
        print(bench(args.url, args.runs))
        return 0
    with tempfile.TemporaryDirectory(prefix="numbers-etl-view-") as workdir:
        print(bench(f"sqlite:///{Path(workdir) / 'view.sqlite'}", args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

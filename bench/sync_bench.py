"""Benchmark of the whole sync against its ceilings, on SQLite and PostgreSQL.

For each database, with a synthetic stock of N numbers over C countries served by the
simulator in its own process (no added latency), in one run:

  (a) the first sync (every number new),
  (b) a steady-state sync after 1% of prices changed, 1% of numbers were sold and 1% arrived,
  (c) a sync with nothing changed;

and, on the same data and the same database server, the two ceilings:

  (1) HTTP: every page fetched with the project's own client and thrown away,
  (2) DB: a plain driver-level executemany ``INSERT ... ON CONFLICT (number) DO UPDATE`` of the
      same rows into the same ``numbers`` table (fresh database, one transaction per page of
      99 like the sync), once into the empty table (all inserts) and once more (all updates).

Every measured step runs in its own child process, so its peak RSS is its own. Statements
are counted with SQLAlchemy's ``before_cursor_execute`` (an executemany counts once), over the
whole run (page writes, scope close, run and lock bookkeeping) divided by pages.

Also: scaling on SQLite at other sizes (peak RSS must not grow with the stock), a
latency-bound run (50 ms per request, 8 countries, concurrency 8, 50 requests/s) against its
floor pages / 50, and an optional comparison with dlt, run by the Python that --dlt-python
names (a venv of its own with dlt[sqlalchemy,postgres]), when dlt is installed there.

Run:   .venv/bin/python bench/sync_bench.py            (N=200000, C=10; 5-15 min by machine)
Quick: .venv/bin/python bench/sync_bench.py --size 20000 --scaling '' --output /tmp/r.md
Writes bench/RESULTS.md (or --output) and prints the same tables."""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import functools
import importlib.metadata
import itertools
import json
import os
import platform
import resource
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

ACCESS_KEY = "bench-access-key"
ORGANIZATION_ID = "org-bench"
ALL_COUNTRIES = ("US", "NL", "GB", "DE", "FR", "CA", "ES", "IT", "BE", "SE", "AT", "CH")
RESULTS = Path(__file__).with_name("RESULTS.md")
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/test"
NO_LIMIT = 10_000.0  # requests/s: the highest limit allowed, too high to matter here

# The simulator runs in its own process and is driven over its stdin, one JSON command a line.
SERVER = """
import json, sys
from etl.simulator import Simulator, SyntheticStock
spec = json.loads(sys.argv[1])
stock = SyntheticStock(seed=spec["seed"], countries=spec["countries"], size=spec["size"])
sim = Simulator(
    stock, access_key=spec["key"], organization_id=spec["org"], rate_limit=spec["rate_limit"]
)
sim.faults.set_latency(spec["latency"])
sim.start()
print(sim.url, flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command["do"] == "evolve":
        answer = stock.evolve(**command["rates"])
    elif command["do"] == "requests":
        answer = [[r.time, r.status] for r in sim.requests]
        sim.requests.clear()
    else:
        break
    print(json.dumps(answer), flush=True)
sim.stop()
"""


# --- the simulator process ------------------------------------------------------------------


class SimulatorProcess:
    def __init__(
        self,
        size: int,
        countries: Sequence[str],
        latency: float = 0.0,
        rate_limit: float | None = None,
    ) -> None:
        spec = {
            "seed": 42,
            "countries": list(countries),
            "size": size,
            "key": ACCESS_KEY,
            "org": ORGANIZATION_ID,
            "latency": latency,
            "rate_limit": rate_limit,  # Bird's, enforced with 429s
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.url = self._read()
        if not self.url.startswith("http://"):
            self.close()
            raise SystemExit(f"the simulator did not start (it printed {self.url!r})")

    def _read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def ask(self, command: dict[str, Any]) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return json.loads(self._read())

    def evolve(self, percent: float) -> dict[str, int]:
        rate = percent / 100
        rates = {
            "price_change_rate": rate,
            "removal_rate": rate,
            "arrival_rate": rate,
            "relist_rate": 0.0,
        }
        result: dict[str, int] = self.ask({"do": "evolve", "rates": rates})
        return result

    def requests(self) -> list[tuple[float, int]]:
        """The arrival time and status of each listing request since the last call."""
        return [(time, status) for time, status in self.ask({"do": "requests"})]

    def cpu(self) -> float | None:
        """The CPU seconds the simulator's process has used so far."""
        return process_cpu(self.process.pid)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the server stops at the end of its input
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --- the machine's other CPU: the simulator's and the database server's ------------------------


def process_cpu(pid: int, children: bool = False) -> float | None:
    """The CPU seconds process ``pid`` has used so far (with ``children``, also those of its
    ended and reaped children), or None where there is no /proc to read it from."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def is_postgres(pid: int) -> bool:
    """Whether process ``pid`` of this machine is a PostgreSQL server's (``postgres``)."""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip() == "postgres"
    except OSError:
        return False


def postgres_cpu() -> float | None:
    """The CPU seconds the PostgreSQL server's processes on this machine have used so far,
    those of ended backends included (the postmaster reaps them), or None when no
    ``postgres`` process runs here (a server elsewhere: its CPU is not ours to read)."""
    total, found = 0.0, False
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or not is_postgres(int(entry.name)):
                continue
            cpu = process_cpu(int(entry.name), children=True)
            if cpu is not None:
                total, found = total + cpu, True
    return total if found else None


def with_machine_cpu(
    sim: SimulatorProcess, server: bool, measure: Callable[[], dict[str, Any]]
) -> Callable[[], dict[str, Any]]:
    """``measure``, its result with the CPU seconds the simulator ("simulator_cpu") and,
    with ``server``, the PostgreSQL server ("server_cpu") used meanwhile: the sync's own
    CPU is only a part of what the machine's cores did for it."""

    def measured() -> dict[str, Any]:
        simulator, database = sim.cpu(), postgres_cpu() if server else None
        result = measure()
        simulator_after, database_after = sim.cpu(), postgres_cpu() if server else None
        result["simulator_cpu"] = (
            None if simulator is None or simulator_after is None else simulator_after - simulator
        )
        result["server_cpu"] = (
            None if database is None or database_after is None else database_after - database
        )
        return result

    return measured


def machine_cpu(result: dict[str, Any]) -> tuple[str, str]:
    """The simulator's and the server's CPU seconds of a step, and the cores busy in all
    (the step's own CPU with theirs, over its wall time)."""
    parts = [result.get("simulator_cpu"), result.get("server_cpu")]
    shown = " / ".join("-" if part is None else f"{part:.2f}" for part in parts)
    busy = (result["cpu"] + sum(part or 0.0 for part in parts)) / result["seconds"]
    return shown, f"{busy:.2f}"


# --- children: each measured step in its own process ------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def settings_for(spec: dict[str, Any]) -> Any:
    from etl.config import load_settings

    env = {
        "NUMBERS_ETL_DATABASE_URL": spec.get("db", "sqlite://"),
        "NUMBERS_ETL_API_URL": spec["url"],
        "NUMBERS_ETL_ACCESS_KEY": ACCESS_KEY,
        "NUMBERS_ETL_ORGANIZATION_ID": ORGANIZATION_ID,
        "NUMBERS_ETL_COUNTRIES": ",".join(spec["countries"]),
        "NUMBERS_ETL_CONCURRENCY": str(spec["concurrency"]),
        "NUMBERS_ETL_MAX_REQUESTS_PER_SECOND": str(spec["rate"]),
    }
    return load_settings(env=env)


def child_sync(spec: dict[str, Any]) -> dict[str, Any]:
    """One `numbers-etl sync`, as the CLI runs it, with its statements counted."""
    from sqlalchemy import event

    # imported before the timing starts, as the HTTP ceiling's client is made before its own
    for module in ("etl.source.client", "etl.source.paginator", "etl.source.ratelimit"):
        importlib.import_module(module)
    from etl.store.engine import make_engine
    from etl.sync import Sync

    if "switch" in spec:
        sys.setswitchinterval(spec["switch"])
    starts: list[float] = []
    if spec.get("record_starts"):
        record_starts(starts)
    settings = settings_for(spec)
    engine = make_engine(settings.database_url, pool_size=settings.concurrency)
    statements = itertools.count()

    @event.listens_for(engine, "before_cursor_execute")
    def _count(*_args: Any) -> None:
        next(statements)

    started, cpu = time.perf_counter(), cpu_seconds()
    result = Sync(settings, engine=engine).run()
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    engine.dispose()
    pages = result.total("pages")
    return {
        "seconds": seconds,
        "pages": pages,
        "items": result.total("items"),
        "listed": result.total("listed"),
        "removed": result.total("removed"),
        "price_changes": result.total("price_changes"),
        "statements": next(statements),
        "cpu": cpu,
        "status": result.status,
        "exit_code": result.exit_code,
        "rss_mb": peak_rss_mb(),
        "starts": starts,
    }


def record_starts(starts: list[float]) -> None:
    """Append to ``starts`` the moment (``time.monotonic()``, one clock for every process of
    the machine, as the simulator's) of every request start the rate limiter grants: what
    the sync itself sent, to set beside what the simulator saw arrive. Bench only."""
    from etl.source.ratelimit import RateLimiter

    take = RateLimiter._take

    def recorded(self: RateLimiter) -> float:
        delay = take(self)
        if delay <= 0:
            starts.append(time.monotonic())
        return delay

    RateLimiter._take = recorded  # type: ignore[method-assign]


def make_client(spec: dict[str, Any]) -> tuple[Any, Any]:
    """Settings and a BirdClient for ``spec`` (made before any timing starts)."""
    from etl.source.client import BirdClient
    from etl.source.ratelimit import RateLimiter

    settings = settings_for(spec)
    client = BirdClient(
        settings.api_url,
        settings.access_key,
        settings.organization_id,
        rate_limiter=RateLimiter(settings.max_requests_per_second),
    )
    return settings, client


def fetch_all(settings: Any, client: Any, on_page: Callable[[Any], None]) -> tuple[int, int]:
    """Every page of every country with the project's client, ``concurrency`` countries at a
    time; returns (pages, items)."""
    from etl.records import Scope
    from etl.source.paginator import iter_pages

    totals = [0, 0]
    lock = threading.Lock()

    def run(country: str) -> None:
        for page in iter_pages(client, Scope(country), page_size=99, max_pages=100_000):
            on_page(page)
            with lock:
                totals[0] += 1
                totals[1] += len(page.items)

    with ThreadPoolExecutor(settings.concurrency) as pool:
        list(pool.map(run, settings.countries))
    return totals[0], totals[1]


def child_http(spec: dict[str, Any]) -> dict[str, Any]:
    """The HTTP ceiling: page everything, parse it (as the sync must), keep nothing."""
    settings, client = make_client(spec)
    started, cpu = time.perf_counter(), cpu_seconds()
    pages, items = fetch_all(settings, client, lambda page: None)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    client.close()
    return {"seconds": seconds, "cpu": cpu, "pages": pages, "items": items, "rss_mb": peak_rss_mb()}


def child_db(spec: dict[str, Any]) -> dict[str, Any]:
    """The DB ceiling: the same rows upserted with the bare driver, twice."""
    from etl.store.diff import attribute_values, price_values

    pages: list[list[dict[str, Any]]] = []
    at = dt.datetime.now(dt.UTC)

    def keep(page: Any) -> None:
        pages.append(
            [
                {"number": i.number, **attribute_values(i), **price_values(i.price)}
                for i in page.items
            ]
        )

    settings, client = make_client(spec)
    fetch_all(settings, client, keep)  # not timed
    client.close()
    columns = [*pages[0][0], "first_seen_at", "last_seen_at", "missed_runs"]
    updated = [c for c in columns if c not in ("number", "first_seen_at", "missed_runs")]
    sqlite = spec["db"].startswith("sqlite")
    mark = "?" if sqlite else "%s"
    sql = (
        f"INSERT INTO numbers ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
        f" ON CONFLICT (number) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in updated)
    )

    def convert(value: Any) -> Any:
        if sqlite and isinstance(value, dt.datetime):
            return value.replace(tzinfo=None).isoformat(sep=" ")
        if sqlite and not isinstance(value, (int, str, type(None))):
            return str(value)  # Decimal, as the project binds it on SQLite
        return value

    rows = [[[convert(v) for v in (*r.values(), at, at, 0)] for r in page] for page in pages]
    if sqlite:
        path = spec["db"].removeprefix("sqlite:///")
        conn: Any = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    else:
        import psycopg

        conn = psycopg.connect(spec["db"].replace("postgresql+psycopg", "postgresql"))
        conn.execute("SET synchronous_commit TO OFF")  # for the session, as the sync's pages
        conn.commit()
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        for page in rows:
            if sqlite:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, page)
                conn.execute("COMMIT")
            else:
                with conn.cursor() as cursor:
                    cursor.executemany(sql, page)
                conn.commit()
        timings.append(time.perf_counter() - started)
    conn.close()
    return {
        "insert_seconds": timings[0],
        "upsert_seconds": timings[1],
        "pages": len(rows),
        "items": sum(len(p) for p in rows),
        "rss_mb": peak_rss_mb(),
    }


def child_dlt(spec: dict[str, Any]) -> dict[str, Any]:
    """dlt's rest_api source with merge/scd2 into the same database: two loads."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    def source() -> Any:
        return rest_api_source(
            {
                "client": {
                    "base_url": f"{spec['url']}/organizations/{ORGANIZATION_ID}/",
                    "headers": {"Authorization": f"AccessKey {ACCESS_KEY}"},
                    "paginator": {
                        "type": "cursor",
                        "cursor_path": "nextPageToken",
                        "cursor_param": "pageToken",
                    },
                },
                "resources": [
                    {
                        "name": "numbers_stock_items",
                        "endpoint": {
                            "path": "numbers-stock-items",
                            "params": {"limit": 99, "countryCodes": ",".join(spec["countries"])},
                            "data_selector": "results",
                        },
                        "primary_key": "numberString",
                        "write_disposition": {"disposition": "merge", "strategy": "scd2"},
                    }
                ],
            }
        )

    credentials = spec["db"].replace("+psycopg", "")
    if not credentials.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        url = make_url(credentials)
        if url.password is None:  # dlt insists on one; a server that trusts ignores it
            credentials = url.set(password="unused").render_as_string(False)
    pipeline = dlt.pipeline(
        pipeline_name="numbers_etl_bench",
        destination=dlt.destinations.sqlalchemy(credentials)
        if credentials.startswith("sqlite")
        else dlt.destinations.postgres(credentials),
        dataset_name="dlt_bench",
        pipelines_dir=spec["workdir"],
    )
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        pipeline.run(source())
        timings.append(time.perf_counter() - started)
    return {"first_seconds": timings[0], "second_seconds": timings[1], "rss_mb": peak_rss_mb()}


CHILDREN = {"sync": child_sync, "http": child_http, "db": child_db, "dlt": child_dlt}


def run_child(kind: str, spec: dict[str, Any], python: str = sys.executable) -> dict[str, Any]:
    process = subprocess.run(
        [python, __file__, "--child", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if process.returncode != 0:
        raise SystemExit(f"the {kind} step failed:\n{process.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(process.stdout.strip().splitlines()[-1])
    return result


# --- databases --------------------------------------------------------------------------------


class Databases:
    """Fresh databases for each step: SQLite files under ``workdir``, PostgreSQL databases
    created next to the one ``pg_admin`` names (and dropped at the end)."""

    def __init__(self, workdir: Path, pg_admin: str) -> None:
        self.workdir = workdir
        self.pg_admin = pg_admin
        self.created: list[str] = []

    def fresh(self, kind: str, name: str) -> str:
        from etl.store.engine import make_engine
        from etl.store.migrate import upgrade

        if kind == "sqlite":
            path = self.workdir / f"{name}.sqlite"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            url = f"sqlite:///{path}"
        else:
            database = f"numbers_etl_bench_{os.getpid()}_{name}"  # parallel runs never meet
            self._admin(f'DROP DATABASE IF EXISTS "{database}"', f'CREATE DATABASE "{database}"')
            self.created.append(database)
            url = self._url(database)
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url

    def _url(self, database: str) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.pg_admin).set(database=database).render_as_string(False)

    def _admin(self, *statements: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.pg_admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
        engine.dispose()

    def server_version(self) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.pg_admin)
        with engine.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar())
        engine.dispose()
        return version

    def drop_all(self) -> None:
        if self.created:
            self._admin(*(f'DROP DATABASE IF EXISTS "{d}"' for d in dict.fromkeys(self.created)))


def postgres_available(url: str) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except (SQLAlchemyError, ImportError) as exc:
        return str(exc).splitlines()[0]
    return None


@functools.cache
def dlt_version(python: str) -> str | None:
    """dlt's version in the interpreter ``python``, or None where it is not installed."""
    process = subprocess.run(
        [python, "-c", "import importlib.metadata as m, dlt; print(m.version('dlt'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return process.stdout.strip() if process.returncode == 0 else None


# --- the runs ---------------------------------------------------------------------------------


@dataclass
class Report:
    args: argparse.Namespace
    started: dt.datetime
    sections: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        text = "\n".join(lines) + "\n"
        print("\n" + text, flush=True)
        self.sections.append(text)

    def target(self, name: str, figure: str, met: bool | None) -> None:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[met]
        print(f"target: {name}: {figure} -> {verdict}", flush=True)
        self.targets.append((name, figure, met))


def best(repeat: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The fastest of ``repeat`` runs (the machine is shared: slower runs measure the noise),
    with every run's seconds in "runs" and the fastest one's position in "index"."""
    results = [measure() for _ in range(max(1, repeat))]
    index = min(range(len(results)), key=lambda i: results[i]["seconds"])
    return {**results[index], "runs": [r["seconds"] for r in results], "index": index}


def spread(result: dict[str, Any]) -> str:
    runs = result["runs"]
    if len(runs) == 1:
        return f"{runs[0]:.2f} s"
    return f"{min(runs):.2f} s (runs {min(runs):.2f}-{max(runs):.2f} s)"


def rate(items: int, seconds: float) -> str:
    return f"{items / seconds:,.0f}" if seconds > 0 else "-"


def bench_database(
    kind: str, args: argparse.Namespace, dbs: Databases, report: Report
) -> dict[str, Any]:
    countries = ALL_COUNTRIES[: args.countries]
    print(f"\n== {kind}: N={args.size:,} over {len(countries)} countries", flush=True)
    sim = SimulatorProcess(args.size, countries)
    try:
        spec = {
            "url": sim.url,
            "countries": countries,
            "concurrency": args.concurrency[kind],
            "rate": NO_LIMIT,
        }
        sync_db = dbs.fresh(kind, "sync")
        server = kind == "postgresql"
        http = best(args.repeat, with_machine_cpu(sim, False, lambda: run_child("http", spec)))
        print(f"   HTTP ceiling {spread(http)}", flush=True)
        db_runs = [
            run_child("db", {**spec, "db": dbs.fresh(kind, f"ceiling{i}")})
            for i in range(args.repeat)
        ]
        db = {
            name: min(r[name] for r in db_runs)
            for name in ("insert_seconds", "upsert_seconds", "items")
        }
        db["runs"] = {n: [r[n] for r in db_runs] for n in ("insert_seconds", "upsert_seconds")}
        print(
            f"   DB ceiling {db['insert_seconds']:.1f} s insert, {db['upsert_seconds']:.1f} s"
            " upsert",
            flush=True,
        )
        runs: dict[str, dict[str, Any]] = {}
        # each first sync into a database of its own; the last one goes on to the next steps
        first_dbs = iter([dbs.fresh(kind, f"first{i}") for i in range(1, args.repeat)])

        def first() -> dict[str, Any]:
            return run_child("sync", {**spec, "db": next(first_dbs, sync_db)})

        runs["first"] = best(args.repeat, with_machine_cpu(sim, server, first))
        print(f"   first sync {spread(runs['first'])}", flush=True)
        steps: list[dict[str, int]] = []

        def steady() -> dict[str, Any]:
            steps.append(sim.evolve(args.change_percent))
            return run_child("sync", {**spec, "db": sync_db})

        runs["steady"] = best(args.repeat, with_machine_cpu(sim, server, steady))
        evolved = steps[runs["steady"]["index"]]
        print(f"   steady-state sync {spread(runs['steady'])}", flush=True)
        runs["unchanged"] = best(
            args.repeat,
            with_machine_cpu(sim, server, lambda: run_child("sync", {**spec, "db": sync_db})),
        )
        print(f"   unchanged sync {spread(runs['unchanged'])}", flush=True)
        dlt_result = None
        if args.dlt and dlt_version(args.dlt_python):
            dlt_result = best_dlt(args, kind, spec, dbs)
            print(
                f"   dlt first load {spread(dlt_result['first'])}, second load "
                f"{spread(dlt_result['second'])}",
                flush=True,
            )
    finally:
        sim.close()

    ceilings = {
        "first": http["seconds"] + db["insert_seconds"],
        "steady": http["seconds"] + db["upsert_seconds"],
        "unchanged": http["seconds"] + db["upsert_seconds"],
    }
    labels = {
        "first": "(a) first sync, all new",
        "steady": f"(b) steady state: {evolved['price_changes']:,} prices changed, "
        f"{evolved['removed']:,} sold, {evolved['added']:,} new (each run after its own step)",
        "unchanged": "(c) nothing changed",
    }
    rows = []
    for name, r in runs.items():
        if r["exit_code"] != 0:
            raise SystemExit(f"the {name} sync on {kind} ended {r['status']}: {r}")
        rows.append(
            [
                labels[name],
                f"{r['items']:,}",
                spread(r),
                f"{r['cpu']:.2f}",
                *machine_cpu(r),
                rate(r["items"], r["seconds"]),
                f"{r['rss_mb']:.0f}",
                f"{r['statements'] / r['pages']:.2f}",
                f"{r['listed']:,} / {r['removed']:,} / {r['price_changes']:,}",
                f"{r['seconds'] / ceilings[name]:.2f}",
                f"{r['seconds'] / http['seconds']:.2f}",
            ]
        )
    rows.append(
        [
            "(1) HTTP ceiling: client only",
            f"{http['items']:,}",
            spread(http),
            f"{http['cpu']:.2f}",
            *machine_cpu(http),
            rate(http["items"], http["seconds"]),
            f"{http['rss_mb']:.0f}",
            "-",
            "-",
            "-",
            "1.00",
        ]
    )
    for label in ("insert", "upsert"):
        seconds = db[f"{label}_seconds"]
        rows.append(
            [
                f"(2) DB ceiling: executemany {label}",
                f"{db['items']:,}",
                spread({"runs": db["runs"][f"{label}_seconds"]}),
                "-",
                "-",
                "-",
                rate(db["items"], seconds),
                "-",
                "1 per page",
                "-",
                "-",
                "-",
            ]
        )
    if dlt_result is not None:
        for label in ("first", "second"):
            seconds = dlt_result[label]["seconds"]
            rows.append(
                [
                    f"dlt rest_api merge/scd2, {label} load",
                    f"{runs['unchanged']['items']:,}",
                    spread(dlt_result[label]),
                    "-",
                    "-",
                    "-",
                    rate(runs["unchanged"]["items"], seconds),
                    f"{dlt_result['rss_mb']:.0f}",
                    "-",
                    "-",
                    "-",
                    "-",
                ]
            )
    report.table(
        f"{kind}: N = {args.size:,} over {len(countries)} countries, concurrency "
        f"{args.concurrency[kind]}, no latency",
        [
            "step",
            "numbers",
            "wall s (fastest of the runs)",
            "CPU s",
            "simulator / PostgreSQL CPU s",
            f"cores busy (of {os.cpu_count()})",
            "numbers/s",
            "peak RSS MB",
            "statements/page",
            "listed / removed / price changes",
            "x (HTTP + DB ceiling)",
            "x HTTP ceiling",
        ],
        rows,
    )
    steady = runs["steady"]
    floor = 40_000 if kind == "sqlite" else 30_000
    per_second = steady["items"] / steady["seconds"]
    report.target(
        f"steady-state sync on {kind} >= {floor:,} numbers/s",
        f"{per_second:,.0f} numbers/s",
        per_second >= floor,
    )
    ratio = steady["seconds"] / ceilings["steady"]
    report.target(
        f"steady-state sync on {kind} <= 1.5 x (HTTP + DB ceiling)",
        f"{steady['seconds']:.2f} s / ({http['seconds']:.2f} + {db['upsert_seconds']:.2f}) s "
        f"= {ratio:.2f} x",
        ratio <= 1.5,
    )
    if dlt_result is not None:
        # dlt's first load against the first sync; its second load, of the same data,
        # against the sync with nothing changed
        for ours, theirs, what in (
            ("first", "first", "first sync against dlt's first load"),
            ("unchanged", "second", "unchanged sync against dlt's second load"),
        ):
            dlt_seconds = dlt_result[theirs]["seconds"]
            speedup = dlt_seconds / runs[ours]["seconds"]
            report.target(
                f"{what} on {kind}: >= 4 x dlt's throughput",
                f"{dlt_seconds:.2f} s / {runs[ours]['seconds']:.2f} s = {speedup:.1f} x",
                speedup >= 4,
            )
    return runs


def best_dlt(
    args: argparse.Namespace, kind: str, spec: dict[str, Any], dbs: Databases
) -> dict[str, Any]:
    """dlt's first and second loads, the fastest of ``--repeat`` of each: each pair of
    loads into a fresh database, with a pipeline directory of its own (dlt keeps its state
    there), as the sync's first syncs are measured."""
    pairs = []
    for i in range(max(1, args.repeat)):
        workdir = dbs.workdir / f"dlt-{kind}-{i}"
        workdir.mkdir()
        dlt_spec = {**spec, "db": dbs.fresh(kind, f"dlt{i}"), "workdir": str(workdir)}
        pairs.append(run_child("dlt", dlt_spec, args.dlt_python))
    result: dict[str, Any] = {"rss_mb": max(p["rss_mb"] for p in pairs)}
    for label in ("first", "second"):
        runs = [p[f"{label}_seconds"] for p in pairs]
        result[label] = {"seconds": min(runs), "runs": runs}
    return result


def bench_scaling(args: argparse.Namespace, dbs: Databases, report: Report) -> None:
    countries = ALL_COUNTRIES[: args.countries]
    rows = []
    peaks: dict[int, float] = {}
    for size in args.scaling:
        print(f"\n== scaling on sqlite: N={size:,}", flush=True)
        sim = SimulatorProcess(size, countries)
        try:
            spec = {
                "url": sim.url,
                "countries": countries,
                "concurrency": args.concurrency["sqlite"],
                "rate": NO_LIMIT,
                "db": dbs.fresh("sqlite", f"scale_{size}"),
            }
            first = run_child("sync", spec)
            sim.evolve(args.change_percent)
            steady = run_child("sync", spec)
        finally:
            sim.close()
        peaks[size] = max(first["rss_mb"], steady["rss_mb"])
        rows.append(
            [
                f"{size:,}",
                f"{first['seconds']:.2f}",
                rate(first["items"], first["seconds"]),
                f"{first['rss_mb']:.0f}",
                f"{steady['seconds']:.2f}",
                rate(steady["items"], steady["seconds"]),
                f"{steady['rss_mb']:.0f}",
                f"{steady['statements'] / steady['pages']:.2f}",
            ]
        )
        print(f"   first {first['seconds']:.1f} s, steady {steady['seconds']:.1f} s", flush=True)
    report.table(
        f"Scaling on SQLite ({len(countries)} countries, concurrency {args.concurrency['sqlite']})",
        [
            "N",
            "first wall s",
            "first numbers/s",
            "first peak RSS MB",
            "steady wall s",
            "steady numbers/s",
            "steady peak RSS MB",
            "statements/page",
        ],
        rows,
    )
    if peaks:
        biggest = max(peaks)
        report.target(
            f"peak RSS at N = {biggest:,} <= 150 MB",
            f"{peaks[biggest]:.0f} MB",
            peaks[biggest] <= 150,
        )
        base = 100_000 if 100_000 in peaks else min(peaks)
        if base != biggest:
            growth = peaks[biggest] / peaks[base]
            report.target(
                f"peak RSS at N = {biggest:,} <= 1.2 x the peak at N = {base:,}",
                f"{peaks[biggest]:.0f} / {peaks[base]:.0f} MB = {growth:.2f} x",
                growth <= 1.2,
            )


def bench_sweep(args: argparse.Namespace, dbs: Databases, report: Report) -> None:
    """Unchanged syncs at several concurrency values: with no latency to hide, threads only
    share one core's worth of Python (the GIL), so more of them cost CPU rather than save
    time."""
    countries = ALL_COUNTRIES[: args.countries]
    print(f"\n== concurrency sweep on sqlite: N={args.size:,}", flush=True)
    sim = SimulatorProcess(args.size, countries)
    rows = []
    try:
        spec = {
            "url": sim.url,
            "countries": countries,
            "rate": NO_LIMIT,
            "db": dbs.fresh("sqlite", "sweep"),
        }
        run_child("sync", {**spec, "concurrency": max(args.sweep)})
        for concurrency in args.sweep:
            http = run_child("http", {**spec, "concurrency": concurrency})
            sync = run_child("sync", {**spec, "concurrency": concurrency})
            rows.append(
                [
                    str(concurrency),
                    f"{http['seconds']:.2f}",
                    f"{http['cpu']:.2f}",
                    f"{sync['seconds']:.2f}",
                    f"{sync['cpu']:.2f}",
                    rate(sync["items"], sync["seconds"]),
                    f"{sync['seconds'] / http['seconds']:.2f}",
                ]
            )
            print(f"   concurrency {concurrency}: {sync['seconds']:.1f} s", flush=True)
    finally:
        sim.close()
    report.table(
        f"Concurrency sweep on SQLite: N = {args.size:,}, nothing changed, no latency",
        [
            "concurrency",
            "HTTP ceiling wall s",
            "HTTP ceiling CPU s",
            "sync wall s",
            "sync CPU s",
            "sync numbers/s",
            "sync / HTTP ceiling",
        ],
        rows,
    )


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


def bench_latency(args: argparse.Namespace, dbs: Databases, report: Report) -> None:
    countries = ALL_COUNTRIES[:8]
    limit = 50.0
    print(f"\n== latency-bound: N={args.latency_size:,}, 50 ms a request", flush=True)
    # the simulator refuses with a 429 what Bird would: more than 50 requests in a second
    sim = SimulatorProcess(args.latency_size, countries, latency=0.05, rate_limit=limit)
    try:
        sim.requests()
        spec = {
            "url": sim.url,
            "countries": countries,
            "concurrency": 8,
            "rate": limit,
            "db": dbs.fresh("sqlite", "latency"),
            "record_starts": True,
        }
        result = run_child("sync", spec)
        answered = sim.requests()
    finally:
        sim.close()
    times = [arrived for arrived, _ in answered]
    refused = sum(1 for _, status in answered if status == 429)
    floor = result["pages"] / limit
    ratio = result["seconds"] / floor
    busiest = max_in_window(times)
    started = max_in_window(result["starts"])
    lags = arrival_lags(result["starts"], times)
    report.table(
        "Latency-bound: 50 ms added per request, 8 countries, concurrency 8, limit 50 req/s",
        [
            "numbers",
            "pages",
            "wall s",
            "floor pages/50 s",
            "wall / floor",
            "achieved req/s",
            "max requests in any 1 s (arrived at the simulator)",
            "max starts in any 1 s (the sync's own)",
            "arrival after start, median / max ms",
            "refused by the simulator's limit of 50 (429)",
        ],
        [
            [
                f"{result['items']:,}",
                f"{result['pages']:,}",
                f"{result['seconds']:.2f}",
                f"{floor:.2f}",
                f"{ratio:.3f}",
                f"{len(times) / (max(times) - min(times)):.1f}" if len(times) > 1 else "-",
                str(busiest),
                str(started),
                f"{lags[0]:.1f} / {lags[1]:.1f}" if lags else "-",
                str(refused),
            ]
        ],
    )
    report.target(
        "latency-bound run within 10% of pages / 50",
        f"{result['seconds']:.2f} s against {floor:.2f} s = {ratio:.3f} x",
        ratio <= 1.10,
    )
    report.target(
        "latency-bound run never above 50 requests in any 1 s",
        f"at most {busiest} requests arrived in a 1 s window (the sync started at most "
        f"{started} in one"
        + (f"; each arrived up to {lags[1]:.1f} ms after its start)" if lags else ")")
        + f"; the simulator, enforcing Bird's limit, refused {refused}",
        busiest <= limit and refused == 0,
    )


def arrival_lags(starts: Sequence[float], arrivals: Sequence[float]) -> tuple[float, float] | None:
    """Median and longest time in ms from a request's start in the sync to its arrival at the
    simulator (the n-th start against the n-th arrival), or None when their counts differ."""
    if not starts or len(starts) != len(arrivals):
        return None
    lags = sorted(1000 * (a - s) for s, a in zip(sorted(starts), sorted(arrivals), strict=True))
    return lags[len(lags) // 2], lags[-1]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU model unknown"


def reference_ms() -> float:
    """A fixed single-threaded workload like a sync's (JSON, Python objects, SQLite), fastest
    of 9, in ms: machines differ by factors of 2-3 here, and the absolute figures scale with
    this one, while the ratios to the ceilings should not."""
    items = [
        {"number": f"+3197010{i:05d}", "price": {"amount": 100 + i, "currency": "EUR"}}
        for i in range(10_000)
    ]
    text = json.dumps(items)

    def work() -> None:
        rows = [(i["number"], i["price"]["amount"]) for i in json.loads(text)]
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (number TEXT PRIMARY KEY, amount INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
        conn.close()

    timings = []
    for _ in range(9):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return min(timings) * 1000


def versions(dbs: Databases, postgres: bool, dlt_python: str) -> list[str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    lines = [
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}, "
        f"{platform.platform()}; reference workload {reference_ms():.1f} ms (`reference_ms`: "
        "lower is a faster machine)",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        + ", ".join(
            f"{name} {version(name)}"
            for name in ("numbers-etl", "SQLAlchemy", "psycopg", "requests", "urllib3")
        )
        + f", dlt {dlt_version(dlt_python) or 'not installed'}"
        + ("" if dlt_python == sys.executable else f" (in {dlt_python})"),
    ]
    if postgres:
        lines.append(f"- PostgreSQL server {dbs.server_version()}")
    return lines


def write_report(report: Report, dbs: Databases, postgres: bool, seconds: float) -> None:
    args = report.args
    command = shlex.join(["python", "bench/sync_bench.py", *sys.argv[1:]])
    lines = [
        "# numbers-etl sync benchmark",
        "",
        f"Run on {report.started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min with:",
        "",
        f"    {command}",
        "",
        *versions(dbs, postgres, args.dlt_python),
        "",
        "Every figure below comes from this one run. The simulator runs in its own process on "
        "loopback, each measured step in a child process of its own (peak RSS is that "
        "child's); its timing starts after its imports, and covers the whole of a sync "
        "(lock, run and scope records, paging, closing). Statements/page counts every "
        "statement of the run (page writes, scope close, run and lock bookkeeping; an "
        "executemany counts once) divided by its pages. "
        "The DB ceiling upserts the same rows with the bare driver into the same `numbers` "
        "table of a fresh database, one transaction per page of 99, like the sync. "
        "The simulator's and PostgreSQL's CPU are read from /proc around each step's child "
        "(PostgreSQL's only when its server runs on this machine; SQLite works inside the "
        "sync's process, in its CPU), and cores busy is the three together over the step's "
        "wall time: the machine's cores are shared by all three.",
        "",
        "## Targets",
        "",
        "| target | figure | verdict |",
        "|---|---|---|",
        *(
            f"| {name} | {figure} | "
            f"{ {True: 'met', False: '**missed**', None: 'not measured'}[met] } |"
            for name, figure, met in report.targets
        ),
        "",
        "## Figures",
        "",
        *report.sections,
    ]
    if report.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    existing = args.output.read_text() if args.output.exists() else ""
    analysis = existing.split("<!-- analysis -->", 1)
    if len(analysis) == 2:  # keep the hand-written analysis below the marker
        lines += ["<!-- analysis -->" + analysis[1].rstrip("\n")]
    args.output.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {args.output}")


def per_database(text: str) -> dict[str, int]:
    """``sqlite=1,postgresql=4``, or one number for both."""
    if "=" not in text:
        return dict.fromkeys(("sqlite", "postgresql"), int(text))
    pairs = dict(item.split("=", 1) for item in text.split(",") if item.strip())
    out = {"sqlite": 1, "postgresql": 4}
    out.update({k.strip(): int(v) for k, v in pairs.items()})
    return out


def sizes(text: str) -> list[int]:
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=200_000, help="N (default 200000)")
    parser.add_argument("--countries", type=int, default=10, help="C (default 10, max 12)")
    parser.add_argument(
        "--concurrency",
        type=per_database,
        default=per_database("sqlite=1,postgresql=4"),
        help="countries in parallel in the runs without latency, per database (default "
        "sqlite=1,postgresql=4: SQLite runs inside the sync's process, where threads only "
        "share one core; PostgreSQL runs beside it, where threads hide its round trips)",
    )
    parser.add_argument(
        "--sweep",
        type=sizes,
        default=sizes("1,2,4,8"),
        help="concurrency values for an unchanged-sync sweep on SQLite ('' for none)",
    )
    parser.add_argument("--change-percent", type=float, default=1.0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each ceiling, first, steady and unchanged sync, and of dlt's two "
        "loads; the fastest is reported (default 3)",
    )
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql"
    )
    parser.add_argument(
        "--scaling",
        type=sizes,
        default=sizes("20000,100000,1000000"),
        help="sizes for the SQLite scaling table ('' for none)",
    )
    parser.add_argument("--latency-size", type=int, default=50_000, help="0 to skip")
    parser.add_argument("--no-dlt", dest="dlt", action="store_false")
    parser.add_argument(
        "--dlt-python",
        default=os.environ.get("NUMBERS_ETL_BENCH_DLT_PYTHON", sys.executable),
        help="the Python of a venv with dlt[sqlalchemy,postgres] (default: this one): dlt runs "
        "there, so that it cannot change the packages numbers-etl is measured with",
    )
    parser.add_argument(
        "--postgresql-url",
        default=os.environ.get("NUMBERS_ETL_BENCH_POSTGRESQL_URL", DEFAULT_PG),
        help="a PostgreSQL database to connect to for creating the bench databases",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.countries <= len(ALL_COUNTRIES):
        parser.error(f"--countries {args.countries}: between 1 and {len(ALL_COUNTRIES)}")
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = set(args.databases) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"--databases: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))))
        return 0
    report = Report(args, dt.datetime.now(dt.UTC))
    started = time.perf_counter()
    postgres = "postgresql" in args.databases
    if postgres:
        why = postgres_available(args.postgresql_url)
        if why is not None:
            report.notes.append(f"PostgreSQL skipped: {why} (set --postgresql-url)")
            print(f"PostgreSQL is not available, skipped: {why}", file=sys.stderr)
            postgres = False
    if args.dlt and not dlt_version(args.dlt_python):
        report.notes.append(
            f"dlt comparison skipped: dlt is not installed in {args.dlt_python} (it is never a "
            "dependency of numbers-etl; install `dlt[sqlalchemy,postgres]` in a venv of its own "
            "and pass its python as --dlt-python)"
        )
    with tempfile.TemporaryDirectory(prefix="numbers-etl-bench-") as workdir:
        dbs = Databases(Path(workdir), args.postgresql_url)
        try:
            for kind in args.databases:
                if kind == "sqlite" or postgres:
                    bench_database(kind, args, dbs, report)
                if kind == "postgresql" and postgres:
                    dbs.drop_all()  # leave no vacuum work behind for the next sections
                    dbs.created.clear()
            if args.sweep and "sqlite" in args.databases:
                bench_sweep(args, dbs, report)
            if args.scaling:
                bench_scaling(args, dbs, report)
            if args.latency_size:
                bench_latency(args, dbs, report)
            write_report(report, dbs, postgres, time.perf_counter() - started)
        finally:
            if postgres:
                dbs.drop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`numbers-etl demo`: on a fresh directory it exits 0, tells what each run found with
examples, and the SQL it suggests runs; it never writes into a history it did not create."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from etl.demo import DEMO_APPLICATION_ID, QUERIES, query_commands
from etl.simulator import Simulator
from etl.store.engine import make_engine
from etl.store.schema import price_changes, sync_runs
from etl.sync import Sync
from tests.conftest import make_settings, sim_env
from tests.procs import invoke, run_etl, sqlite_url

__all__ = ["sqlite_url"]  # a fixture


def suggested_commands(output: str) -> list[str]:
    lines = output.split("Try next:\n", 1)[1].splitlines()
    return [line.strip() for line in lines if line.startswith("     ")]


def test_demo_in_a_fresh_directory(tmp_path: Path) -> None:
    result = run_etl(["demo"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("numbers-etl demo: a simulated Bird stock of ")
    assert "served on http://127.0.0.1:" in out
    for run in (1, 2, 3):
        assert re.search(rf"^run {run} succeeded in [\d.]+s: \d+ numbers", out, re.MULTILINE)
    assert "run 4 " not in out
    assert re.search(r"^  listed: \+\d+ \((local|national|mobile|toll-free), ", out, re.MULTILINE)
    assert re.search(r"^  removed: \+\d+", out, re.MULTILINE)
    assert re.search(r"^  price changes: \+\d+: \d+\.\d+ \w{3} -> \d+\.\d+ \w{3}", out, re.M)
    # each announced change is what the next run finds (a number repriced and sold in one
    # step was announced as a price change no run could see)
    announced = re.findall(
        r"^\(the simulated stock changed: (\d+) prices, (\d+) numbers sold, (\d+) new, "
        r"(\d+) back on offer\)$",
        out,
        re.M,
    )
    found = re.findall(
        r"^run [23] .*; listed (\d+), removed (\d+), relisted (\d+), .*, price changes (\d+),",
        out,
        re.M,
    )
    assert len(announced) == len(found) == 2
    for (prices, sold, new, back), (listed, removed, relisted, changes) in zip(
        announced, found, strict=True
    ):
        assert (changes, removed, listed, relisted) == (prices, sold, new, back)
    assert (tmp_path / "numbers_stock.sqlite").exists()
    commands = suggested_commands(out)
    assert len(commands) == len(QUERIES) == 3
    for command in commands:  # each suggestion runs as printed
        ran = subprocess.run(
            shlex.split(command), cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert ran.returncode == 0, (command, ran.stderr)
        assert ran.stdout.strip(), command
    for view in ("v_available_numbers", "v_price_history", "v_removed_numbers"):
        assert view in out
    assert "v_daily_availability" in out


def test_demo_runs_again_afresh_and_with_more_runs(tmp_path: Path) -> None:
    assert run_etl(["demo"], {}, tmp_path).returncode == 0
    again = run_etl(["demo", "--runs", "4"], {}, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "run 4 succeeded" in again.stdout
    assert "run 5 " not in again.stdout  # started afresh, not continued
    with sqlite3.connect(tmp_path / "numbers_stock.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM sync_runs").fetchone() == (4,)
        assert conn.execute("PRAGMA application_id").fetchone() == (DEMO_APPLICATION_ID,)
    conn.close()


def test_demo_ignores_the_environment(tmp_path: Path) -> None:
    env = {
        "NUMBERS_ETL_DATABASE_URL": f"sqlite:///{tmp_path / 'production.sqlite'}",
        "NUMBERS_ETL_COUNTRIES": "FR",
        "NUMBERS_ETL_ACCESS_KEY": "real-key-not-for-the-demo",
    }
    result = run_etl(["demo"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "production.sqlite").exists()
    assert (tmp_path / "numbers_stock.sqlite").exists()


def test_demo_refuses_a_history_it_did_not_write(
    simulator: Simulator, sqlite_url_with_a_run: str
) -> None:
    result = invoke({}, "demo", "--database-url", sqlite_url_with_a_run)
    assert result.exit_code == 2
    assert "already holds 1 sync run(s) that the demo did not write" in result.stderr
    assert "--database-url sqlite:///demo.sqlite" in result.stderr


@pytest.fixture
def sqlite_url_with_a_run(simulator: Simulator, sqlite_url: str) -> str:
    Sync(make_settings(simulator, sqlite_url)).run()
    return sqlite_url


def test_demo_into_each_database(db_url: str, engine: Engine) -> None:
    for runs in (3, 2):  # the second demo starts its own database afresh
        result = invoke({}, "demo", "--database-url", db_url, "--runs", str(runs))
        assert result.exit_code == 0, result.output
        fresh = make_engine(db_url)  # a SQLite file is made anew: not the pool's old one
        try:
            with fresh.connect() as conn:
                statuses = list(conn.scalars(select(sync_runs.c.status).order_by(sync_runs.c.id)))
                changes = conn.scalar(select(func.count()).select_from(price_changes))
        finally:
            fresh.dispose()
        assert statuses == ["succeeded"] * runs
        assert changes
    assert result.stdout.splitlines()[1].startswith("run 1 succeeded")
    if engine.dialect.name != "sqlite":  # the queries are shown as plain SQL to paste
        assert "  1. what is in stock now" in result.stdout
        assert "SELECT country_code, number_type" in result.stdout


def test_a_real_sync_refuses_the_demos_database(
    simulator: Simulator, db_url: str, engine: Engine
) -> None:
    """Found by a review: the demo writes the default SQLite file, which a real sync then
    wrote into (every demo number recorded as removed), and the next demo deleted the file,
    real run and all. A real sync, and the scheduler's, now refuse the demo's database."""
    demo = invoke({}, "demo", "--database-url", db_url, "--runs", "2")
    assert demo.exit_code == 0, demo.output
    result = invoke(sim_env(simulator, db_url), "sync")
    assert result.exit_code == 2
    assert "holds the made-up history of `numbers-etl demo`" in result.stderr
    assert "to start the real history there, or set database_url" in result.stderr
    fresh = make_engine(db_url)  # a SQLite file is made anew: not the pool's old one
    try:
        with fresh.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(sync_runs)) == 2  # the demo's
    finally:
        fresh.dispose()


def test_demo_refuses_a_server_history_it_did_not_write(
    simulator: Simulator, db_url: str, engine: Engine
) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite: test_demo_refuses_a_history_it_did_not_write")
    Sync(make_settings(simulator, db_url)).run()
    result = invoke({}, "demo", "--database-url", db_url)
    assert result.exit_code == 2
    assert "already holds 1 sync run(s) that the demo did not write" in result.stderr
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(sync_runs)) == 1


def test_query_commands_without_the_sqlite3_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_etl(["demo"], {}, tmp_path).returncode == 0
    monkeypatch.setenv("PATH", "/nonexistent")
    commands = [command for _, command in query_commands("sqlite:///numbers_stock.sqlite")]
    monkeypatch.undo()
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "python3"
        ran = subprocess.run(
            [sys.executable, *words[1:]], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert ran.returncode == 0, (command, ran.stderr)
        assert " | " in ran.stdout

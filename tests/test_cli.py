"""The command line: exit codes 0/1/2/75/143, signals, a killed sync, dry runs, `config show`,
`db`, `runs` and the progress display. Real simulator, real databases, real processes."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from etl.simulator import Simulator, SyntheticStock
from etl.store.engine import make_engine
from etl.store.lock import DatabaseLock
from etl.store.migrate import head_revision
from etl.store.schema import number_events, numbers, sync_runs, sync_scopes
from etl.sync import Sync
from tests.conftest import ACCESS_KEY, database_url, make_settings, sim_env, wipe
from tests.procs import (
    etl_process,
    invoke,
    run_etl,
    runs_of,
    signal_after_first_page,
    sqlite_url,
    stop,
)

__all__ = ["sqlite_url"]  # a fixture


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


# --- exit codes ---------------------------------------------------------------------------


def test_sync_succeeds_with_exit_0_and_a_summary(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    result = invoke(sim_env(simulator, db_url), "sync")
    assert result.exit_code == 0, result.output
    total = len(stock.numbers())
    first, header, *rows = result.stdout.splitlines()
    assert first.startswith("run 1 succeeded in ")
    assert f"{total} numbers on " in first
    assert f"listed {total}, removed 0" in first
    assert header.split() == [
        "scope", "status", "pages", "numbers", "listed", "removed", "relisted", "changed",
        "prices", "rejected",
    ]  # fmt: skip
    assert sorted(r.split()[:2] for r in rows) == [["NL", "complete"], ["US", "complete"]]
    assert count(engine, numbers) == total


def test_a_failed_country_makes_the_run_partial_with_exit_1(
    simulator: Simulator, db_url: str
) -> None:
    simulator.faults.add("status", status=400, times=0, country="NL", page=0)
    result = invoke(sim_env(simulator, db_url), "sync")
    assert result.exit_code == 1
    assert " partial in " in result.stdout.splitlines()[0]
    (nl_error,) = [x for x in result.stdout.splitlines() if x.startswith("  NL: ")]
    assert "400" in nl_error


def test_unreachable_database_exits_1(simulator: Simulator) -> None:
    env = sim_env(simulator, "postgresql+psycopg://nobody@127.0.0.1:1/none")
    result = invoke(env, "sync")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: the database postgresql+psycopg://nobody@127.0.0.1:1/none failed: "
    )


def test_a_sqlite_file_that_cannot_be_opened_is_named(simulator: Simulator, tmp_path: Path) -> None:
    """It said only "the database failed: unable to open database file"."""
    path = tmp_path / "missing-directory" / "numbers.sqlite"
    for args in (["sync"], ["sync", "--dry-run"]):
        result = invoke(sim_env(simulator, f"sqlite:///{path}"), *args)
        assert result.exit_code == 2  # as for any database not created yet
        assert result.stderr.startswith(
            f"Error: there is no database at {path}, nor its directory {path.parent}; "
        )


def test_a_sqlite_error_of_another_kind_gets_no_hint_about_directories() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from etl.sync import database_failed

    exc = OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
    message = str(database_failed("sqlite:////tmp/x.sqlite", exc))
    assert message == "the SQLite database '/tmp/x.sqlite' failed: database is locked"
    # the default file, which the sync creates, in a directory it may not write
    exc = OperationalError("BEGIN", {}, sqlite3.OperationalError("unable to open database file"))
    message = str(database_failed("sqlite:////tmp/x.sqlite", exc))
    assert message.endswith("(check that its directory exists and that this user may write there)")


def test_bad_configuration_exits_2_naming_every_problem(simulator: Simulator, db_url: str) -> None:
    env = sim_env(simulator, db_url, page_size=500, countries="US,XX")
    result = invoke(env, "sync")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: invalid configuration:\n")
    assert "page_size = '500' (env NUMBERS_ETL_PAGE_SIZE): must be between 1 and 99" in (
        result.stderr
    )
    assert "XX is not an ISO 3166-1 alpha-2 country code" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("extra", [(), ("--dry-run",)])
@pytest.mark.parametrize(
    ("only", "accepted", "named"),
    [(("--country", "NL"), "US", "US"), ((), "DE,NL", "DE")],
)
def test_accepting_removals_of_a_country_outside_the_run_is_refused(
    simulator: Simulator,
    db_url: str,
    extra: tuple[str, ...],
    only: tuple[str, ...],
    accepted: str,
    named: str,
) -> None:
    """It was accepted in silence (exit 0), and accepted nothing: a mistyped held country
    looked let through."""
    args = [*only, "--accept-removals", accepted, *extra]
    result = invoke(sim_env(simulator, db_url), "sync", *args)
    assert result.exit_code == 2
    assert f"--accept-removals {named}: not among this run's countries" in result.stderr
    assert simulator.requests == []  # nothing fetched, nothing written


def test_missing_keys_and_bad_options_are_named_with_the_bad_values(
    simulator: Simulator, db_url: str
) -> None:
    env = sim_env(simulator, db_url, page_size=500)
    del env["NUMBERS_ETL_ACCESS_KEY"], env["NUMBERS_ETL_ORGANIZATION_ID"]
    result = invoke(env, "sync", "--country", "XX", "--accept-removals", "YY")
    assert result.exit_code == 2
    for problem in (
        "page_size = '500'",
        "access_key is required",
        "organization_id is required",
        "--country XX: XX is not an ISO 3166-1 alpha-2 country code",
        "--accept-removals YY: YY is not an ISO 3166-1 alpha-2 country code",
    ):
        assert problem in result.stderr
    assert "countries is required" not in result.stderr  # --country names them
    del env["NUMBERS_ETL_COUNTRIES"]
    assert "countries is required" in invoke(env, "sync").stderr
    scheduled = invoke(env, "schedule")
    assert scheduled.exit_code == 2
    assert "page_size = '500'" in scheduled.stderr
    assert "countries is required" in scheduled.stderr


def test_prefixes_have_a_flag(simulator: Simulator, db_url: str) -> None:
    env = sim_env(simulator, db_url, countries="US,NL")
    shown = invoke(env, "config", "show", "--prefixes", "US=+1212|+1646")
    assert shown.exit_code == 0, shown.output
    assert 'US = ["+1212", "+1646"]' in shown.stdout
    refused = invoke(env, "config", "show", "--prefixes", "NL=+1212")
    assert refused.exit_code == 2
    assert "prefixes NL: '+1212' cannot hold NL numbers" in refused.stderr


def test_a_flag_overrides_the_environment(simulator: Simulator, db_url: str) -> None:
    env = sim_env(simulator, db_url, page_size=20)
    shown = invoke(env, "config", "show", "--page-size", "50")
    assert "page_size               = 50  # flag --page-size\n" in shown.stdout
    result = invoke(env, "sync", "--page-size", "50", "--country", "NL")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[2:]] == ["NL"]


def test_missing_access_key_exits_2(simulator: Simulator, db_url: str) -> None:
    env = sim_env(simulator, db_url)
    del env["NUMBERS_ETL_ACCESS_KEY"]
    result = invoke(env, "sync")
    assert result.exit_code == 2
    assert "access_key is required" in result.stderr


@pytest.mark.parametrize("extra", [(), ("--dry-run",)])
def test_access_key_bird_refuses_exits_2(
    simulator: Simulator, db_url: str, extra: tuple[str, ...]
) -> None:
    # one country at a time: the first is refused, the others are stopped before they start
    env = sim_env(simulator, db_url, access_key="not-the-right-key-93f1", concurrency=1)
    result = invoke(env, "sync", *extra)
    assert result.exit_code == 2
    assert "Error: Bird refused the access key or organization id" in result.stderr
    assert "401" in result.stderr
    assert (
        "(NUMBERS_ETL_ACCESS_KEY, or the file NUMBERS_ETL_ACCESS_KEY_FILE names)" in result.stderr
    )
    assert "not-the-right-key-93f1" not in result.output
    assert "signal" not in result.output  # it was not one
    if extra:
        assert "stopped: Bird refused the access key or organization" in result.stdout


def test_unknown_option_is_a_usage_error() -> None:
    result = invoke({}, "sync", "--access-key", "x")
    assert result.exit_code == 2
    assert "Error: No such option '--access-key'." in result.stderr


def test_lock_held_exits_75_and_writes_nothing(
    simulator: Simulator, db_url: str, engine: Engine
) -> None:
    lock = DatabaseLock(engine, holder="other-host:4242:cafe")
    lock.acquire()
    try:
        result = invoke(sim_env(simulator, db_url), "sync")
    finally:
        lock.release()
    assert result.exit_code == 75
    assert result.stderr.startswith("Error: another sync is running (other-host:4242:cafe, ")
    assert count(engine, sync_runs) == 0
    lock.acquire()
    try:  # a warning in a JSON log, not an error that alerts fire on: the unit's exit 75 is fine
        result = invoke(sim_env(simulator, db_url), "--log-format", "json", "sync")
    finally:
        lock.release()
    assert result.exit_code == 75
    (line,) = [json.loads(text) for text in result.stderr.splitlines()]
    assert (line["level"], line["exit_code"]) == ("warning", 75), line
    assert line["message"].startswith("another sync is running (other-host:4242:cafe, ")
    assert invoke(sim_env(simulator, db_url), "sync").exit_code == 0


# --- signals and crashes (real processes) -------------------------------------------------


def slow(simulator: Simulator) -> None:
    """Make every request take a while, so a run is still going when the signal comes."""
    simulator.faults.set_latency(0.2)


# SIGHUP: a terminal or ssh session that closed
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_stops_sync_after_the_page_with_143_aborted_and_nothing_removed(
    simulator: Simulator,
    stock: SyntheticStock,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    Sync(make_settings(simulator, db_url)).run()
    gone = [stock.numbers("US")[0], stock.numbers("NL")[0]]
    for number in gone:
        stock.remove(number)
    slow(simulator)
    proc = etl_process(["sync"], sim_env(simulator, db_url, page_size=10), tmp_path)
    out, err = signal_after_first_page(proc, db_url, sig)
    assert proc.returncode == 143, err
    assert f"{sig.name}: stopping after the page in flight" in err
    assert " aborted in " in out
    last = runs_of(db_url)[-1]
    assert last.status == "aborted"
    assert last.finished_at is not None
    with engine.connect() as conn:
        scope_states = set(
            conn.scalars(select(sync_scopes.c.status).where(sync_scopes.c.run_id == last.id))
        )
    assert scope_states == {"aborted"}
    assert count(engine, number_events, number_events.c.event == "removed") == 0
    assert count(engine, numbers, numbers.c.removed_at.is_not(None)) == 0


def test_a_killed_sync_is_marked_abandoned_by_the_next_one_which_repairs(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    slow(simulator)
    proc = etl_process(["sync"], sim_env(simulator, db_url, page_size=10), tmp_path)
    signal_after_first_page(proc, db_url, signal.SIGKILL)  # reaped: its pid no longer exists
    (killed,) = runs_of(db_url)
    assert killed.status == "running"
    checked = invoke(sim_env(simulator, db_url), "status")
    assert checked.exit_code == 1, checked.output
    assert (
        f"PROBLEM: run {killed.id} is marked running, but the process holding the sync lock "
        "is gone" in checked.stdout
    )
    simulator.faults.set_latency(0)
    # The dead process's lock is taken over at once (same host), not after lock_ttl_seconds.
    result = invoke(sim_env(simulator, db_url), "sync")
    assert result.exit_code == 0, result.output
    killed, repaired = runs_of(db_url)
    assert killed.status == "abandoned"
    assert killed.finished_at is not None
    assert repaired.status == "succeeded"
    assert count(engine, numbers) == len(stock.numbers())
    assert count(engine, numbers, numbers.c.removed_at.is_(None)) == len(stock.numbers())


# --- dry run, config show, db, runs -------------------------------------------------------


def test_dry_run_reports_and_writes_nothing(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    Sync(make_settings(simulator, db_url)).run()
    number = stock.numbers("NL")[1]
    stock.set_price(number, 7770000, -6)
    result = invoke(sim_env(simulator, db_url), "sync", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("dry run: nothing was written\n")
    (line,) = [x for x in result.stdout.splitlines() if f"price changes: {number}: " in x]
    assert "-> 7.77" in line
    assert count(engine, sync_runs) == 1
    assert count(engine, numbers, numbers.c.monthly_price == Decimal("7.77")) == 0


def test_config_show_hides_secrets_and_names_sources(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(ACCESS_KEY + "\n")
    config = tmp_path / "numbers-etl.toml"
    config.write_text('countries = ["US", "NL"]\npage_size = 50\n')
    env = {"NUMBERS_ETL_ACCESS_KEY_FILE": str(key_file), "NUMBERS_ETL_CONCURRENCY": "2"}
    url = "postgresql+psycopg://etl:pw-8d7c6b5a@db.internal/numbers"
    result = invoke(env, "config", "show", "--config", str(config), "--database-url", url)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if "=" in line}
    assert lines["access_key"].endswith('= "***"  # env NUMBERS_ETL_ACCESS_KEY_FILE')
    assert lines["database_url"].endswith(
        '= "postgresql+psycopg://etl:***@db.internal/numbers"  # flag --database-url'
    )
    assert lines["countries"].endswith(f'= ["US", "NL"]  # file {config}')
    assert lines["page_size"].endswith(f"= 50  # file {config}")
    assert lines["concurrency"].endswith("= 2  # env NUMBERS_ETL_CONCURRENCY")
    assert lines["max_removal_fraction"].endswith("= 0.5  # default")
    assert "# organization_id is not set (default)" in result.stdout
    assert ACCESS_KEY not in result.output
    assert "pw-8d7c6b5a" not in result.output


def test_db_upgrade_current_and_runs(
    simulator: Simulator, empty_db_url: str, tmp_path: Path
) -> None:
    env = sim_env(simulator, empty_db_url)
    behind = invoke(env, "db", "current")
    assert behind.exit_code == 0
    assert behind.stdout.startswith("database: none  code: ")
    assert "(behind: run `numbers-etl db upgrade`)" in behind.stdout
    refused = invoke(env, "runs")
    assert refused.exit_code == 2
    assert "run `numbers-etl db upgrade` first" in refused.stderr
    upgraded = invoke(env, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert " is at revision " in upgraded.stdout
    assert "(up to date)" in invoke(env, "db", "current").stdout
    assert invoke(env, "runs").stdout == "no runs yet: run `numbers-etl sync`\n"
    assert invoke(env, "sync").exit_code == 0
    listing = invoke(env, "runs", "--limit", "5")
    assert listing.exit_code == 0
    header, row = listing.stdout.splitlines()
    assert header.split()[:3] == ["id", "started_at", "status"]
    assert row.split()[0] == "1"
    assert row.split()[3] == "succeeded"


def test_runs_before_the_first_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the default file is created by the first sync: until then there are no runs (exit 0),
    # and reading leaves no empty file behind
    monkeypatch.chdir(tmp_path)
    result = invoke({}, "runs")
    assert (result.exit_code, result.stdout) == (0, "no runs yet: run `numbers-etl sync`\n")
    assert not (tmp_path / "numbers_stock.sqlite").exists()
    (tmp_path / "numbers_stock.sqlite").touch()  # created empty, by the scheduler's metrics
    assert invoke({}, "runs").stdout == "no runs yet: run `numbers-etl sync`\n"
    # another file must exist: a typo in database_url is not "no runs"
    other = invoke({"NUMBERS_ETL_DATABASE_URL": f"sqlite:///{tmp_path / 'typo.sqlite'}"}, "runs")
    assert other.exit_code == 2
    assert "there is no database at " in other.stderr
    assert not (tmp_path / "typo.sqlite").exists()


def test_no_command_leaves_an_empty_file_for_a_database_that_is_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in a SQLite database_url: sync, its dry run and `db current` say so, and none
    of them creates the file by connecting (a later `db upgrade` of the right path is
    then not the only one)."""
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "typo.sqlite"
    env = {
        "NUMBERS_ETL_DATABASE_URL": f"sqlite:///{typo}",
        "NUMBERS_ETL_ACCESS_KEY": "abcdefgh-unused",
        "NUMBERS_ETL_ORGANIZATION_ID": "org",
        "NUMBERS_ETL_COUNTRIES": "NL",
        "NUMBERS_ETL_API_URL": "http://127.0.0.1:9",  # nothing listens: never reached
    }
    for args in (["sync"], ["sync", "--dry-run"]):
        result = invoke(env, *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert f"there is no database at {typo};" in result.stderr
        assert not typo.exists(), args
    current = invoke(env, "db", "current")
    assert current.exit_code == 0
    assert current.stdout.startswith("database: none  code: ")
    assert not typo.exists()
    assert invoke(env, "db", "upgrade").exit_code == 0
    assert "(up to date)" in invoke(env, "db", "current").stdout


def test_python_m_etl_is_the_same_command(tmp_path: Path) -> None:
    result = run_etl(["--version"], {}, tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("numbers-etl, version ")


# --- progress display ----------------------------------------------------------------------


def test_no_progress_display_when_stderr_is_not_a_terminal(
    simulator: Simulator, sqlite_url: str, tmp_path: Path
) -> None:
    result = run_etl(["sync"], sim_env(simulator, sqlite_url, page_size=20), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "pages," not in result.stderr


def on_terminal(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run ``python -m etl ARGS`` with stderr on a pseudo-terminal; return the exit code,
    stdout and what the terminal showed."""
    leader, follower = pty.openpty()
    shown: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not chunk:
                return
            shown.append(chunk)

    proc = etl_process(args, env, cwd, stderr=follower)
    os.close(follower)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        stop(proc)
        reader.join(timeout=30)
        os.close(leader)
    return proc.returncode, out, b"".join(shown).decode()


def test_progress_display_on_a_terminal(
    simulator: Simulator, sqlite_url: str, tmp_path: Path
) -> None:
    simulator.faults.set_latency(0.02)  # so the display has time to draw
    code, out, shown = on_terminal(["sync"], sim_env(simulator, sqlite_url, page_size=10), tmp_path)
    assert code == 0, shown
    assert "\r\x1b[K" in shown
    assert re.search(r"US: \d+ pages, \d+ numbers", shown)
    assert re.search(r"NL: \d+ pages, \d+ numbers", shown)
    assert " succeeded in " in out  # the summary still goes to stdout


@pytest.mark.parametrize("flags", [["-q"], ["--log-format", "json"]])
def test_no_progress_display_when_quiet_or_json(
    simulator: Simulator, sqlite_url: str, tmp_path: Path, flags: list[str]
) -> None:
    simulator.faults.set_latency(0.02)
    env = sim_env(simulator, sqlite_url, page_size=10)
    code, _, shown = on_terminal([*flags, "sync"], env, tmp_path)
    assert code == 0, shown
    assert " pages, " not in shown
    assert "\x1b[K" not in shown


def test_malformed_database_url_exits_2() -> None:
    result = invoke({}, "status", "--database-url", "nonsense://")
    assert result.exit_code == 2
    assert "database_url = 'nonsense://' (flag --database-url): " in result.stderr


# --- database URLs: secrets hidden, mistakes named ----------------------------------------

SECRET = "s3cretpw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://root@127.0.0.1/test?password={SECRET}",
        f"postgresql+psycopg://root@127.0.0.1/test?sslpassword={SECRET}",
        f"mysql+pymysql://root@127.0.0.1/test?password={SECRET}",
        f"mysql+pymysql://root@127.0.0.1/test?passwd={SECRET}",
    ],
)
def test_config_show_hides_a_password_in_the_query_string(url: str) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": url}, "config", "show")
    assert result.exit_code == 0, result.output
    assert "=***" in result.stdout
    assert SECRET not in result.output


@pytest.mark.parametrize("args", [("runs",), ("db", "current"), ("db", "upgrade"), ("status",)])
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://root@127.0.0.1:1/test?password={SECRET}",
        f"mysql+pymysql://root@127.0.0.1:1/test?password={SECRET}",
    ],
)
def test_database_errors_hide_a_password_in_the_query_string(
    url: str, args: tuple[str, ...]
) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": url}, *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: cannot use the database ")
    assert "=***" in result.stderr
    assert SECRET not in result.output


def test_db_upgrade_hides_a_password_in_the_query_string(tmp_path: Path) -> None:
    url = database_url("postgresql", tmp_path)  # trust authentication: the password is unused
    engine = make_engine(url)
    try:
        wipe(engine)
    finally:
        engine.dispose()
    result = invoke({"NUMBERS_ETL_DATABASE_URL": f"{url}?password={SECRET}"}, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(f"?password=*** is at revision {head_revision()}\n")
    assert SECRET not in result.output


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://u:{SECRET}@h:notaport/db",
        f"postgresql+psycopg://u:{SECRET}@h:5432:5432/db",
        f"postgresql+psycopg://u:{SECRET}@[::1/db",
        f"postgresql+psycopg//u:{SECRET}@h/db",
        f"postgresql+psycopg://u:{SECRET}@pw@h/db",
    ],
)
@pytest.mark.parametrize("args", [("config", "show"), ("sync",), ("db", "current")])
def test_malformed_database_url_exits_2_without_the_password(
    url: str, args: tuple[str, ...]
) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": url}, *args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.startswith("Error: invalid configuration:\n  - database_url = ")
    assert SECRET not in result.output
    assert "@pw" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://root@127.0.0.1:5432/test?foo=bar",
        "mysql+pymysql://root@127.0.0.1:3306/test?foo=bar",
    ],
)
def test_unknown_connection_option_exits_2_naming_it(url: str) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": url}, "db", "current")
    assert result.exit_code == 2, (result.output, result.exception)
    assert "has the connection option 'foo', which the " in result.stderr


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_runs_limit_below_1_is_a_usage_error(sqlite_url: str, limit: str) -> None:
    result = invoke({"NUMBERS_ETL_DATABASE_URL": sqlite_url}, "runs", "--limit", limit)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Invalid value for '--limit'" in result.stderr


# --- configuration files ------------------------------------------------------------------


def test_config_before_the_command_is_passed_down(tmp_path: Path) -> None:
    config = tmp_path / "numbers-etl.toml"
    config.write_text('countries = ["US"]\n')
    other = tmp_path / "other.toml"
    other.write_text('countries = ["NL"]\n')
    result = invoke({}, "--config", str(config), "config", "show")
    assert result.exit_code == 0, result.output
    assert f'countries               = ["US"]  # file {config}\n' in result.stdout
    mine = invoke({}, "--config", str(config), "config", "show", "--config", str(other))
    assert mine.exit_code == 0, mine.output
    assert f'countries               = ["NL"]  # file {other}\n' in mine.stdout
    missing = invoke({}, "--config", str(tmp_path / "nope.toml"), "sync")
    assert missing.exit_code == 2
    assert "nope.toml' does not exist" in missing.stderr


def test_files_that_are_not_utf8_exit_2(tmp_path: Path) -> None:
    key = tmp_path / "access_key"
    key.write_bytes(b"\xff\xfem\x00y\x00-\x00k\x00e\x00y\x00")  # UTF-16, as some editors save
    config = tmp_path / "numbers-etl.toml"
    config.write_bytes('countries = ["US"]\n'.encode("utf-16"))
    result = invoke({"NUMBERS_ETL_ACCESS_KEY_FILE": str(key)}, "config", "show")
    assert result.exit_code == 2, (result.output, result.exception)
    assert "is not UTF-8 text" in result.stderr
    result = invoke({}, "config", "show", "--config", str(config))
    assert result.exit_code == 2, (result.output, result.exception)
    assert "numbers-etl.toml' is not UTF-8 text" in result.stderr

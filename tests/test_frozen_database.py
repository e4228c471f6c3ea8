"""A database that stops answering, outside what the lock's watchdog covers: before the
lock (connecting, reading the schema, waiting for the lock's row), the dry run (no lock),
SIGTERM while a statement waits, and the metrics file of a process the watchdog ends. Every
command must end in bounded time with an honest exit code. Real processes, real databases,
a TcpProxy that freezes the connection; no mocks."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from etl.simulator import Simulator
from etl.store.engine import make_engine
from tests.conftest import sim_env
from tests.procs import (
    DEADLINE,
    Output,
    TcpProxy,
    etl_process,
    proxy_to,
    run_etl,
    running_with_pages,
    stop,
    wait_for,
)


def freeze_then_sigterm(proxy: TcpProxy, proc: subprocess.Popen[str]) -> int | None:
    """Freeze the database, SIGTERM the process 2 s later: its exit code (None: running)."""
    proxy.frozen.set()
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    return ended(proc, 150)


def ended(proc: subprocess.Popen[str], timeout: float = DEADLINE) -> int | None:
    """The exit code, or None when the process is still running after ``timeout``."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("empty_db_url", ["mysql"], indirect=True)
def test_a_frozen_mariadb_does_not_hang_monitoring_or_sync_for_ever(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    # PyMySQL's connect_timeout covers only the TCP connect; its handshake was read with
    # read_timeout None, so a server that accepts and then says nothing hung the command
    # for ever (`sync` in check_schema, before the lock and its watchdog). PostgreSQL ends
    # after connect_timeout 15 s ("connection timeout expired"). The three at once: each
    # waits out read_timeout (120 s).
    commands = (["status"], ["runs"], ["sync"])
    with proxy_to(db_url) as (proxy, proxied):
        proxy.frozen.set()
        env = sim_env(simulator, proxied, lock_ttl_seconds=10)
        procs = [etl_process(command, env, tmp_path) for command in commands]
        try:
            codes = [ended(proc, 180) for proc in procs]
        finally:
            for proc in procs:
                stop(proc)
    assert codes == [1, 1, 1], f"{commands}: {codes} (None: still running after 180 s)"


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_a_dry_run_on_a_database_that_freezes_stops_on_sigterm(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    # The dry run takes no lock, so there is no watchdog; its reads wait for ever on a
    # frozen connection. After SIGTERM the page in flight gets STOP_GRACE, then exit 143.
    assert run_etl(["sync"], sim_env(simulator, db_url), tmp_path).returncode == 0
    simulator.faults.set_latency(0.1)
    with proxy_to(db_url) as (proxy, proxied):
        env = sim_env(simulator, proxied, page_size=10, lock_ttl_seconds=10)
        proc = etl_process(["sync", "--dry-run"], env, tmp_path)
        try:
            time.sleep(3)  # reading the history page by page
            assert proc.poll() is None
            code = freeze_then_sigterm(proxy, proc)
        finally:
            simulator.faults.set_latency(0)
            stop(proc)
    assert code == 143, "the dry run ignored SIGTERM on a frozen database"


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_sigterm_while_the_database_is_frozen_ends_sync_before_systemd_kills_it(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    # The units stop with TimeoutStopSec=120. A SIGTERM'd sync whose database froze waited
    # for the watchdog (lock_ttl_seconds + 60 s: 6 minutes with the default 300), and
    # systemd SIGKILLed it long before; it now ends STOP_GRACE after the signal, with 143.
    simulator.faults.set_latency(0.1)
    with proxy_to(db_url) as (proxy, proxied):
        proc = etl_process(["sync"], sim_env(simulator, proxied, page_size=10), tmp_path)
        output = Output(proc)
        try:
            wait_for(lambda: running_with_pages(db_url), "a page")
            code = freeze_then_sigterm(proxy, proc)
        finally:
            simulator.faults.set_latency(0)
            stop(proc)
    assert code == 143, (code, output.text()[-2000:])
    assert "still not stopped 60 s after the signal" in output.text()


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_the_metrics_file_tells_of_a_sync_ended_by_the_watchdog(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    # os._exit skips the `finally` that writes --metrics-file: the file still said the
    # last attempt succeeded (from the run before), database_up 1.
    prom = tmp_path / "numbers_etl.prom"
    first = run_etl(["sync", "--metrics-file", str(prom)], sim_env(simulator, db_url), tmp_path)
    assert first.returncode == 0, first.stderr
    before = prom.read_text()
    simulator.faults.set_latency(0.1)
    with proxy_to(db_url) as (proxy, proxied):
        env = sim_env(simulator, proxied, page_size=10, lock_ttl_seconds=10)
        proc = etl_process(["sync", "--metrics-file", str(prom)], env, tmp_path)
        output = Output(proc)
        try:
            wait_for(lambda: running_with_pages(db_url), "a page")
            proxy.frozen.set()
            code = ended(proc, 150)
        finally:
            simulator.faults.set_latency(0)
            stop(proc)
    assert code == 1
    assert "exiting (status 1)" in output.text()
    after = prom.read_text()
    assert after != before, "the metrics file was not touched by the attempt that exited 1"
    assert 'numbers_etl_attempt_outcome{outcome="succeeded"} 1.0' not in after
    assert 'numbers_etl_attempt_outcome{outcome="error"} 1.0' in after
    assert "numbers_etl_database_up 0.0" in after


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_a_sync_blocked_on_the_lock_row_ends(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    # A session that holds the sync_lock row (a holder frozen in its close, whose server
    # session outlives it; an admin's open transaction): acquire's UPDATE waited for ever
    # on PostgreSQL (no lock_timeout), before the watchdog exists. It now gives up after
    # 30 s: the lock is busy (exit 75).
    engine = make_engine(db_url)
    holder = engine.connect()
    holder.begin()
    holder.execute(text("UPDATE sync_lock SET expires_at = NULL"))
    try:
        proc = etl_process(["sync"], sim_env(simulator, db_url, lock_ttl_seconds=10), tmp_path)
        try:
            time.sleep(5)
            proc.send_signal(signal.SIGTERM)
            code = ended(proc)
        finally:
            stop(proc)
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    assert code is not None, "sync still waiting on the lock row after SIGTERM"
    assert code in (75, 143), code  # the lock is busy; or the signal's grace ran out first

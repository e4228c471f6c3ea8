"""Helpers of the command-line tests: real `python -m etl` processes, a migrated SQLite file,
and waiting for the database to reach a state (polling with a generous deadline; no test
asserts on how long something took)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from etl.store import migrate
from etl.store.engine import make_engine
from etl.store.schema import sync_runs, sync_scopes

T = TypeVar("T")
DEADLINE = 90.0


def invoke(env: dict[str, str], *args: str) -> Result:
    """``numbers-etl ARGS`` in this process (click's CliRunner) with ``env`` and no other
    NUMBERS_ETL_* variable of the developer's shell."""
    from etl.cli import cli

    full: dict[str, str | None] = {k: None for k in os.environ if k.startswith("NUMBERS_ETL_")}
    full.update(env)
    return CliRunner().invoke(cli, list(args), env=full, prog_name="numbers-etl")


def wait_for(check: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` otherwise."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def etl_process(
    args: Sequence[str], env: dict[str, str], cwd: Path, **kwargs: Any
) -> subprocess.Popen[str]:
    """``python -m etl ARGS`` with ``env`` on top of this environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBERS_ETL_")}
    full_env.update(env)
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    options.update(kwargs)
    return subprocess.Popen(
        [sys.executable, "-m", "etl", *args], env=full_env, cwd=cwd, text=True, **options
    )


def run_etl(
    args: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    proc = etl_process(args, env, cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def runs_of(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(sync_runs).order_by(sync_runs.c.id)))
    finally:
        engine.dispose()


def running_with_pages(url: str) -> bool:
    """True once a run is `running` and has committed at least one page."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            pages = conn.scalar(
                select(sync_scopes.c.pages)
                .join(sync_runs, sync_runs.c.id == sync_scopes.c.run_id)
                .where(sync_runs.c.status == "running", sync_scopes.c.pages > 0)
                .limit(1)
            )
        return bool(pages)
    finally:
        engine.dispose()


def signal_after_first_page(
    proc: subprocess.Popen[str], url: str, sig: signal.Signals
) -> tuple[str, str]:
    """Wait until ``proc``'s run has committed a page, send it ``sig``, and return its
    stdout and stderr once it has ended (it is killed if the test fails first)."""
    try:
        wait_for(lambda: running_with_pages(url), "the run to commit a page")
        proc.send_signal(sig)
        return proc.communicate(timeout=DEADLINE)
    finally:
        stop(proc)


class Output:
    """Collects a process's stderr line by line in a thread, so a test can wait for a line
    while the process runs (and nothing read is lost, unlike mixing reads and communicate)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._stream = proc.stderr
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line)

    def search(self, pattern: str) -> re.Match[str] | None:
        for line in list(self.lines):
            match = re.search(pattern, line)
            if match:
                return match
        return None

    def text(self) -> str:
        self._thread.join(timeout=DEADLINE)
        return "".join(self.lines)


def stop(proc: subprocess.Popen[str]) -> None:
    """Make sure a process started by a test is gone and its pipes are closed."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=DEADLINE)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite file in the test's directory."""
    url = f"sqlite:///{tmp_path / 'numbers_stock.sqlite'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return url


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 to a database server, which a test can take down (every
    connection cut, the port closed) and bring back on the same port, or freeze (bytes held,
    connections left open: a server or network that stops answering)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.frozen = threading.Event()

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.1)
                b.sendall(data)
        except OSError:
            pass
        for one in (a, b):
            with contextlib.suppress(OSError):
                one.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def proxy_to(db_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A TcpProxy (up) to the server of ``db_url``, and the URL that goes through it."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    proxy = TcpProxy(url.port or (5432 if url.get_backend_name() == "postgresql" else 3306))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proxy.up()
    try:
        yield proxy, proxied
    finally:
        proxy.frozen.clear()
        proxy.down()

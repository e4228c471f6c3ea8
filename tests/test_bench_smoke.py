"""The sync benchmark runs end to end at a tiny size (its figures are not checked here: speed
is measured by the benchmark itself, written down in bench/RESULTS.md, never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATABASES, _require_server

BENCH = Path(__file__).resolve().parent.parent / "bench" / "sync_bench.py"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sync_bench_runs_end_to_end(database: str, tmp_path: Path) -> None:
    args = ["--size", "400", "--countries", "3", "--databases", database, "--no-dlt"]
    if database == "postgresql":
        url = DATABASES["postgresql"]
        assert url is not None
        _require_server("postgresql", url)
        args += ["--postgresql-url", url, "--scaling", "", "--latency-size", "0"]
    else:
        args += ["--scaling", "300,600", "--latency-size", "160"]
    output = tmp_path / "RESULTS.md"
    process = subprocess.run(
        [sys.executable, str(BENCH), *args, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = output.read_text()
    assert f"### {database}: N = 400 over 3 countries" in report
    # every sync step ran, listed what the simulator served, and has its figures
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| \((a|b|c)\) [^|]*\| ([\d,]+) \|", report, re.MULTILINE)
    }
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"] == "400"
    first = re.search(r"^\| \(a\) first sync, all new \| 400 \|(.*)$", report, re.MULTILINE)
    assert first is not None
    assert "| 400 / 0 / 0 |" in first.group(0)
    # the simulator's CPU was read, and PostgreSQL's where its server runs here
    cells = [cell.strip() for cell in first.group(1).split("|")]
    simulator, server = cells[2].split(" / ")
    assert re.fullmatch(r"\d+\.\d\d", simulator), cells
    assert server == "-" if database == "sqlite" else re.fullmatch(r"\d+\.\d\d|-", server)
    assert re.fullmatch(r"\d+\.\d\d", cells[3]), cells  # cores busy
    assert "(1) HTTP ceiling" in report
    assert "(2) DB ceiling: executemany upsert" in report
    assert "## Targets" in report
    if database == "sqlite":
        assert "Scaling on SQLite" in report
        assert "Latency-bound" in report
        assert "refused by the simulator's limit of 50 (429)" in report
        assert re.search(r"peak RSS at N = 600 <= 150 MB \| \d+ MB \| (met|\*\*missed\*\*)", report)


def test_readme_bench_command_lines_parse() -> None:
    """The benchmark command lines the README shows are accepted by the benchmark."""
    import importlib.util
    import shlex

    spec = importlib.util.spec_from_file_location("sync_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["sync_bench"] = bench  # dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules["sync_bench"]
    readme = (BENCH.parent.parent / "README.md").read_text()
    lines = [
        shlex.split(line, comments=True)
        for line in readme.splitlines()
        if line.startswith(".venv/bin/python bench/sync_bench.py")
    ]
    assert lines, "the README shows no benchmark command"
    for words in lines:
        args = bench.parse_args(words[2:])
        assert args.size > 0
        assert set(args.databases) <= {"sqlite", "postgresql"}


def run_script(name: str, *args: str) -> str:
    """Run bench/NAME with ARGS; its output, once it has exited 0."""
    process = subprocess.run(
        [sys.executable, str(BENCH.with_name(name)), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout


def test_sqlite_inserts_bench_runs_end_to_end() -> None:
    """bench/sqlite_inserts.py at three pages: every form stores every row (it checks)."""
    output = run_script("sqlite_inserts.py", "--pages", "3")
    assert "297 numbers in 3 pages" in output
    assert len(re.findall(r"^\| .* \| [\d.]+ \| \d+ \|$", output, re.MULTILINE)) == 4


def test_postgres_page_writes_bench_runs_end_to_end() -> None:
    """bench/postgres_page_writes.py at three pages: every case, each schema change made, stores
    every event (it checks)."""
    url = DATABASES["postgresql"]
    assert url is not None
    _require_server("postgresql", url)
    output = run_script("postgres_page_writes.py", "--pages", "3", "--rounds", "1", "--url", url)
    assert "297 numbers in 3 pages, rounds: 1" in output
    rows = re.findall(r"^\| ([^|]+) \| [\d.]+ \| [\d.]+ \| (?:[\d.]+|-) \|$", output, re.M)
    assert rows == [
        "sync",
        "sync, no key to runs",
        "sync, no key to numbers",
        "sync, no keys",
        "sync, no (run_id) index",
        "sync, no (event, occurred_at) index",
        "binary COPY",
    ]


def test_parse_bench_runs_end_to_end() -> None:
    """bench/parse_bench.py on a small stock: the two ways agree on every page (it checks)."""
    output = run_script("parse_bench.py", "--size", "500", "--rounds", "1")
    assert "6 pages of up to 99 items" in output
    assert len(re.findall(r"^\| .* \| \d+ \|$", output, re.MULTILINE)) == 3


def test_daily_view_bench_runs_end_to_end() -> None:
    """bench/daily_view_bench.py on a short history: the two revisions' rows agree (it checks)."""
    output = run_script("daily_view_bench.py", "--runs", "8")
    assert re.search(r"^\| sqlite \| 8 \| [\d,]+ \| [\d,]+ \| [\d.]+ \| [\d.]+ \|$", output, re.M)

"""Logging: JSON lines that parse one by one and never hold a secret; readable text otherwise."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from etl.logs import JsonFormatter, TextFormatter, register_secret, scrub
from etl.simulator import Simulator
from tests.conftest import ACCESS_KEY, sim_env
from tests.procs import invoke, run_etl, sqlite_url

__all__ = ["sqlite_url"]  # a fixture


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line parsed as one JSON object (fails on any line that is not)."""
    objects = []
    for line in text.splitlines():
        value = json.loads(line)
        assert isinstance(value, dict), line
        objects.append(value)
    return objects


def test_json_logs_of_a_sync_parse_line_by_line_and_hold_no_secret(
    simulator: Simulator, sqlite_url: str, tmp_path: Path
) -> None:
    # a retried 503 gives a warning line as well as the info ones
    simulator.faults.add("status", status=503, times=1, country="US", page=0)
    env = sim_env(simulator, sqlite_url, page_size=50)
    result = run_etl(["--log-format", "json", "-v", "sync"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the summary is a log line too
    logged = json_lines(result.stderr)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in logged)
    assert any(line["level"] == "warning" and "503" in str(line["message"]) for line in logged)
    (run,) = [line for line in logged if line["logger"] == "etl.cli"]
    assert run["status"] == "succeeded"
    assert run["run_id"] == 1
    assert run["scopes"] == {"US": "complete", "NL": "complete"}
    assert run["http"]["retries"] == 1  # type: ignore[index]
    # -v: a debug line a page (there was none: -v did nothing), and one a country's close
    pages = [line for line in logged if line["level"] == "debug" and "page" in line]
    assert len(pages) == run["pages"]
    assert {(line["scope"], line["page"]) for line in pages} >= {("US", 0), ("NL", 0)}
    assert str(pages[0]["message"]).startswith(f"scope {pages[0]['scope']} page 0: ")
    closes = [line for line in logged if "closed: complete" in str(line["message"])]
    assert sorted(str(line["scope"]) for line in closes) == ["NL", "US"]
    assert str(run["message"]).startswith("run 1 succeeded in ")
    assert ACCESS_KEY not in result.stdout + result.stderr


def test_json_database_errors_hide_the_password(simulator: Simulator, tmp_path: Path) -> None:
    url = "postgresql+psycopg://etl:db-pass-5e1f@127.0.0.1:1/numbers"
    result = run_etl(["--log-format", "json", "-v", "sync"], sim_env(simulator, url), tmp_path)
    assert result.returncode == 1
    (error,) = [line for line in json_lines(result.stderr) if line["level"] == "error"]
    assert str(error["message"]).startswith(
        "the database postgresql+psycopg://etl:***@127.0.0.1:1/numbers failed: "
    )
    assert "db-pass-5e1f" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://etl@127.0.0.1:1/numbers?password=db-pass-7a2d",
        "postgresql+psycopg://etl@127.0.0.1:1/numbers?sslmode=prefer&sslpassword=db-pass-7a2d",
        "mysql+pymysql://etl@127.0.0.1:1/numbers?password=db-pass-7a2d",
    ],
)
def test_json_database_errors_hide_a_password_in_the_query_string(url: str, tmp_path: Path) -> None:
    env = {"NUMBERS_ETL_DATABASE_URL": url}
    result = run_etl(["--log-format", "json", "-v", "db", "current"], env, tmp_path)
    assert result.returncode == 1
    (error,) = [line for line in json_lines(result.stderr) if line["level"] == "error"]
    assert str(error["message"]).startswith("cannot use the database ")
    assert "db-pass-7a2d" not in result.stdout + result.stderr


def test_passwords_in_the_database_url_are_registered_with_the_scrubber() -> None:
    url = "postgresql+psycopg://etl:pw-one-1b2c@h/db?sslpassword=pw%26two-3d4e"
    result = invoke({"NUMBERS_ETL_DATABASE_URL": url}, "config", "show")
    assert result.exit_code == 0, result.output
    assert scrub("a pw-one-1b2c b pw&two-3d4e c pw%26two-3d4e") == "a *** b *** c ***"


def test_json_error_lines_hold_no_secret(
    simulator: Simulator, sqlite_url: str, tmp_path: Path
) -> None:
    wrong = "wrong-access-key-0c9b8a"
    env = sim_env(simulator, sqlite_url, access_key=wrong)
    result = run_etl(["--log-format", "json", "-v", "sync"], env, tmp_path)
    assert result.returncode == 2
    lines = json_lines(result.stderr) + json_lines(result.stdout)
    errors = [line for line in lines if line["level"] == "error"]
    assert errors[-1]["exit_code"] == 2
    assert "Bird refused the access key" in str(errors[-1]["message"])
    assert wrong not in result.stdout + result.stderr


def test_text_logs_are_readable_lines(
    simulator: Simulator, sqlite_url: str, tmp_path: Path
) -> None:
    result = run_etl(["sync"], sim_env(simulator, sqlite_url), tmp_path)
    assert result.returncode == 0
    started = [line for line in result.stderr.splitlines() if "run 1 started" in line]
    assert started
    assert " INFO    etl.sync: run 1 started: " in started[0]
    assert ACCESS_KEY not in result.stderr


def test_without_v_there_are_no_debug_lines(
    simulator: Simulator, sqlite_url: str, tmp_path: Path
) -> None:
    result = run_etl(["--log-format", "json", "sync"], sim_env(simulator, sqlite_url), tmp_path)
    assert result.returncode == 0
    assert [line for line in json_lines(result.stderr) if line["level"] == "debug"] == []


def test_quiet_keeps_only_warnings(simulator: Simulator, sqlite_url: str, tmp_path: Path) -> None:
    result = run_etl(["-q", "sync"], sim_env(simulator, sqlite_url), tmp_path)
    assert result.returncode == 0
    assert result.stderr == ""
    assert " succeeded in " in result.stdout


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("etl.test", logging.WARNING, __file__, 1, message, args, None)


def test_registered_secrets_are_scrubbed_from_every_format() -> None:
    secret = 's3cr3t-"quoted"-value'
    register_secret(secret)
    assert scrub(f"key={secret}!") == "key=***!"
    line = JsonFormatter().format(record("sending %s", secret))
    assert json.loads(line)["message"] == "sending ***"
    assert "s3cr3t" not in line
    assert "s3cr3t" not in TextFormatter().format(record("sending %s", secret))


def test_short_values_are_not_treated_as_secrets() -> None:
    register_secret("ab")
    register_secret(None)
    assert scrub("about abc") == "about abc"


def test_json_lines_carry_extra_fields() -> None:
    rec = record("run %d finished", 7)
    rec.run_id = 7
    rec.scopes = {"US": "complete"}
    parsed = json.loads(JsonFormatter().format(rec))
    assert parsed["message"] == "run 7 finished"
    assert parsed["run_id"] == 7
    assert parsed["scopes"] == {"US": "complete"}
    assert parsed["level"] == "warning"
    assert parsed["ts"].endswith("+00:00")


def test_a_text_line_starts_with_the_utc_time_and_date() -> None:
    rec = record("hello %s", "world")
    rec.created = 1_795_000_000.75  # 2026-11-18T11:06:40Z, in any local time zone
    line = TextFormatter().format(rec)
    assert line.startswith("2026-11-18T11:06:40Z WARNING ")
    assert line.endswith(": hello world")


def test_a_usage_error_of_a_command_is_a_json_line_with_json_logs() -> None:
    # the README promises one JSON object a line; click printed "Usage: ... Error: ..."
    result = invoke({}, "--log-format", "json", "status", "--max-age", "5x")
    assert result.exit_code == 2
    (line,) = [json.loads(text) for text in result.stderr.splitlines()]
    assert (line["level"], line["exit_code"]) == ("error", 2)
    assert "--max-age" in line["message"]
    assert "5x" in line["message"]

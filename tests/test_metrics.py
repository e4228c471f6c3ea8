"""Prometheus metrics: the file `sync --metrics-file` writes and the scheduler's endpoint both
parse with prometheus_client's own parser and say what the database says."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from etl.metrics import Metrics
from etl.simulator import Simulator, SyntheticStock
from etl.store.engine import make_engine
from etl.store.lock import DatabaseLock
from etl.sync import Sync
from tests.conftest import make_settings, sim_env
from tests.procs import invoke

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample as (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[("numbers_etl_" + name, tuple(sorted(labels.items())))]


def test_sync_writes_a_metrics_file_that_parses(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    Sync(make_settings(simulator, db_url)).run()
    gone = stock.numbers("US")[:3]
    for number in gone:
        stock.remove(number)
    stock.set_price(stock.numbers("NL")[0], 9990000, -6)
    path = tmp_path / "numbers_etl.prom"
    before = datetime.now(UTC).timestamp()
    result = invoke(sim_env(simulator, db_url), "sync", "--metrics-file", str(path))
    assert result.exit_code == 0, result.output
    found = samples(path.read_text())
    assert value(found, "last_run_status", status="succeeded") == 1
    assert value(found, "last_run_status", status="failed") == 0
    assert value(found, "attempt_outcome", outcome="succeeded") == 1
    assert value(found, "attempt_outcome", outcome="skipped") == 0
    assert value(found, "last_run_id") == 2
    assert value(found, "last_success_timestamp_seconds") >= before
    assert value(found, "last_run_timestamp_seconds") == value(
        found, "last_success_timestamp_seconds"
    )
    assert value(found, "last_run_duration_seconds") > 0
    assert value(found, "database_up") == 1
    assert value(found, "last_run_events", scope="US", event="removed") == 3
    assert value(found, "last_run_events", scope="NL", event="listed") == 0
    assert value(found, "last_run_price_changes", scope="NL") == 1
    assert value(found, "last_run_rejected", scope="US") == 0
    assert value(found, "last_run_scope_status", scope="US", status="complete") == 1
    assert value(found, "last_run_pages", scope="US") >= 1
    assert value(found, "last_run_numbers", scope="US") == len(stock.numbers("US"))
    assert value(found, "numbers", country="US", state="available") == len(stock.numbers("US"))
    assert value(found, "numbers", country="US", state="removed") == 3
    assert value(found, "numbers", country="NL", state="available") == len(stock.numbers("NL"))
    assert value(found, "http_requests") >= 2
    assert value(found, "http_retries") == 0
    assert not list(tmp_path.glob("numbers_etl.prom.*"))  # the temporary file was renamed


def test_http_retries_and_errors_by_status(
    simulator: Simulator, db_url: str, tmp_path: Path
) -> None:
    simulator.faults.add("status", status=503, times=2, country="US", page=0)
    path = tmp_path / "numbers_etl.prom"
    result = invoke(sim_env(simulator, db_url), "sync", "--metrics-file", str(path))
    assert result.exit_code == 0, result.output
    found = samples(path.read_text())
    assert value(found, "http_retries") == 2
    assert value(found, "http_errors", status="503") == 2


def test_lock_held_is_recorded_as_skipped(
    simulator: Simulator, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "numbers_etl.prom"
    lock = DatabaseLock(engine, holder="elsewhere:1:x")
    lock.acquire()
    try:
        result = invoke(sim_env(simulator, db_url), "sync", "--metrics-file", str(path))
    finally:
        lock.release()
    assert result.exit_code == 75
    found = samples(path.read_text())
    assert value(found, "attempt_outcome", outcome="skipped") == 1
    assert value(found, "last_success_timestamp_seconds") == 0
    assert value(found, "database_up") == 1


def test_unreachable_database_is_recorded(simulator: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "numbers_etl.prom"
    env = sim_env(simulator, "postgresql+psycopg://nobody@127.0.0.1:1/none")
    result = invoke(env, "sync", "--metrics-file", str(path))
    assert result.exit_code == 1
    found = samples(path.read_text())
    assert value(found, "attempt_outcome", outcome="error") == 1
    assert value(found, "database_up") == 0


def test_metrics_file_in_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke({}, "sync", "--metrics-file", str(tmp_path / "nope" / "x.prom"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_metrics_endpoint_serves_the_registry(
    simulator: Simulator, db_url: str, engine: Engine
) -> None:
    result = Sync(make_settings(simulator, db_url)).run()
    metrics = Metrics()
    metrics.serve(0)  # any free port, on 127.0.0.1
    try:
        metrics.record(engine, result, result.status, datetime.now(UTC))
        with requests.Session() as session:
            response = session.get(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10)
            body = response.text
            response.close()
    finally:
        metrics.close()
    assert response.status_code == 200
    found = samples(body)
    assert value(found, "last_run_status", status="succeeded") == 1
    assert value(found, "http_requests") == result.http["requests"]


def test_a_new_database_has_no_runs_yet_but_is_up(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new.sqlite'}")
    metrics = Metrics()
    try:
        metrics.record(engine)
    finally:
        engine.dispose()
    path = tmp_path / "numbers_etl.prom"
    metrics.write(path)
    found = samples(path.read_text())
    assert value(found, "database_up") == 1
    assert value(found, "last_success_timestamp_seconds") == 0


def _unlabelled(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_a_metrics_file_with_the_database_down_does_not_claim_it_never_succeeded(
    tmp_path: Path,
) -> None:
    """A `sync --metrics-file` process that cannot read the database leaves out what it did
    not read, instead of 0 ("never succeeded", run 0 in 1970) that would fire alerts."""
    from etl.metrics import write_file

    path = tmp_path / "numbers_etl.prom"
    write_file(path, "postgresql+psycopg://nobody@127.0.0.1:1/none", None, "error")
    found = _unlabelled(path.read_text())
    assert found["numbers_etl_database_up"] == 0
    for name in ("last_success_timestamp_seconds", "last_run_id", "last_run_timestamp_seconds"):
        assert f"numbers_etl_{name}" not in found


def test_a_scrape_during_a_refresh_sees_every_series(
    simulator: Simulator, db_url: str, engine: Engine
) -> None:
    """The database is read before any gauge changes, and the registry is collected under
    the lock the gauges change under: no scrape sees a scope's series cleared."""
    import threading
    import time

    from prometheus_client import generate_latest
    from sqlalchemy import event

    Sync(make_settings(simulator, db_url)).run()
    metrics = Metrics()
    metrics.record(engine)
    series = 'numbers_etl_last_run_pages{scope="US"}'
    assert series in generate_latest(metrics.registry).decode()
    reading = threading.Event()

    @event.listens_for(engine, "before_cursor_execute")
    def slow(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM numbers" in statement:
            reading.set()
            time.sleep(0.5)

    refresh = threading.Thread(target=metrics.record, args=(engine,))
    refresh.start()
    assert reading.wait(10)
    during = generate_latest(metrics.registry).decode()
    refresh.join()
    event.remove(engine, "before_cursor_execute", slow)
    assert series in during
    assert "numbers_etl_numbers{" in during

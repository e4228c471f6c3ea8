"""The ``numbers-etl`` command: parses options, calls the library, maps errors to exit codes."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, overload

import click

from etl import __version__
from etl.config import (
    DEFAULT_DATABASE_URL,
    PARSERS,
    Settings,
    load_settings,
    redact_url,
    url_secrets,
)
from etl.errors import (
    AuthError,
    ConfigError,
    DatabaseError,
    EtlError,
    LockHeld,
    SchemaOutOfDate,
)
from etl.logs import register_secret, scrub, setup_logging
from etl.sync import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_SIGTERM,
    STOP_SIGNALS,
    RunResult,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from etl.metrics import Metrics

F = Callable[..., Any]
log = logging.getLogger("etl.cli")


def _exit_code(exc: EtlError) -> int:
    if isinstance(exc, ConfigError | SchemaOutOfDate | AuthError):
        return EXIT_CONFIG
    if isinstance(exc, LockHeld):
        return EXIT_LOCKED
    return EXIT_FAILED


def _json_logs(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.obj and root.obj.get("log_format") == "json")


class Group(click.Group):
    """Turns numbers-etl's errors into one `Error: ...` message (a JSON log line with
    ``--log-format json``) and the contract's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EtlError as exc:
            code = _exit_code(exc)
            if _json_logs(ctx):
                # a held lock is the ordinary end of an overlapping run, not an error
                level = logging.WARNING if isinstance(exc, LockHeld) else logging.ERROR
                log.log(level, "%s", exc, extra={"exit_code": code})
            else:
                click.echo(f"Error: {scrub(str(exc))}", err=True)
            ctx.exit(code)
        except click.UsageError as exc:  # a command's own options: "one JSON object a line"
            if not _json_logs(ctx):
                raise
            log.error("%s", scrub(exc.format_message()), extra={"exit_code": exc.exit_code})
            ctx.exit(exc.exit_code)


# Configuration keys that can be given as flags. The access key has no flag on purpose: a
# command line is visible to every user of the host (`ps`); use the environment or a file.
CONFIG_FLAGS: list[tuple[str, str]] = [
    ("database_url", "Database URL (SQLAlchemy form). [env NUMBERS_ETL_DATABASE_URL]"),
    ("api_url", "Bird API base URL. [env NUMBERS_ETL_API_URL]"),
    ("organization_id", "Bird organization id. [env NUMBERS_ETL_ORGANIZATION_ID]"),
    ("countries", "Countries, comma-separated ISO codes. [env NUMBERS_ETL_COUNTRIES]"),
    ("prefixes", "Area codes per country: US=+1212|+1646;NL=+3120. [env NUMBERS_ETL_PREFIXES]"),
    ("types", "Only these number types, comma-separated. [env NUMBERS_ETL_TYPES]"),
    ("page_size", "Items per page, 1..99. [env NUMBERS_ETL_PAGE_SIZE]"),
    ("max_requests_per_second", "Client-side rate limit. [env ..._MAX_REQUESTS_PER_SECOND]"),
    ("concurrency", "Countries fetched in parallel. [env NUMBERS_ETL_CONCURRENCY]"),
    ("schedule", "Cron expression (UTC) or interval like 30m. [env NUMBERS_ETL_SCHEDULE]"),
    ("removal_confirmations", "Complete runs that must miss a number before removal."),
    ("max_removal_fraction", "Share of a scope above which removals are held."),
    ("max_pages", "Pages per scope before it fails (runaway guard)."),
    ("lock_ttl_seconds", "Seconds after which a dead holder's sync lock expires."),
]


# What a command needs of the configuration, from its own arguments: the keys it requires,
# and the problems of its own options (reported with the configuration's, all at once).
Requires = Callable[[Mapping[str, Any]], Sequence[str]]
Checks = Callable[[Mapping[str, Any]], list[str]]


@overload
def config_options(func: F) -> F: ...
@overload
def config_options(
    *, requires: Requires | None = None, checks: Checks | None = None
) -> Callable[[F], F]: ...
def config_options(
    func: F | None = None, *, requires: Requires | None = None, checks: Checks | None = None
) -> F | Callable[[F], F]:
    """Add --config and the configuration flags; pass the validated Settings as `settings`.
    ``requires`` and ``checks`` see the command's other arguments."""
    if func is None:
        return functools.partial(config_options, requires=requires, checks=checks)

    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, **kwargs: Any) -> Any:
        flags = {key: kwargs.pop(key) for key, _ in CONFIG_FLAGS}
        if config is None:  # `numbers-etl --config PATH COMMAND`: the command's own wins
            root = click.get_current_context().find_root()
            config = (root.obj or {}).get("config")
        own = checks(kwargs) if checks is not None else []
        try:
            settings = load_settings(
                flags,
                config_path=config,
                required=requires(kwargs) if requires is not None else (),
            )
        except ConfigError as exc:
            raise ConfigError([*exc.problems, *own]) from None
        if own:
            raise ConfigError(own)
        if settings.access_key is not None:
            register_secret(settings.access_key.reveal())
        for secret in url_secrets(settings.database_url):
            register_secret(secret)
        return func(*args, settings=settings, **kwargs)

    for key, help_text in reversed(CONFIG_FLAGS):
        wrapper = click.option(f"--{key.replace('_', '-')}", key, default=None, help=help_text)(
            wrapper
        )
    wrapper = click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False),
        default=None,
        help="TOML configuration file. [env NUMBERS_ETL_CONFIG]",
    )(wrapper)
    return wrapper


def metrics_file_option(func: F) -> F:
    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        if not path.parent.is_dir():
            raise click.BadParameter(f"the directory {str(path.parent)!r} does not exist")
        return path

    return click.option(
        "--metrics-file",
        type=click.Path(dir_okay=False),
        callback=check,
        help="Write Prometheus metrics to this file after each run (for node_exporter's "
        "textfile collector; name it *.prom).",
    )(func)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="numbers-etl")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for terminals; json (one object a line) for journald and log shippers.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Debug lines: a page's counts, a country's close, the scheduler's own.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML configuration file for the command (whose own --config wins). "
    "[env NUMBERS_ETL_CONFIG]",
)
@click.pass_context
def cli(ctx: click.Context, log_format: str, verbose: int, quiet: bool, config: str | None) -> None:
    """numbers-etl keeps an exact SQL history of the phone numbers Bird offers for sale.

    Exit codes: 0 every country synced; 1 the run failed or was partial; 2 configuration
    or usage error; 75 another sync holds the lock; 143 stopped by SIGTERM, Ctrl-C or
    SIGHUP."""
    ctx.obj = {"log_format": log_format, "quiet": quiet, "verbose": verbose, "config": config}
    setup_logging(log_format, -1 if quiet else verbose)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM / SIGINT / SIGHUP set the returned event: the run stops after the page in
    flight."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    overdue: list[threading.Timer] = []

    def handler(signum: int, _frame: Any) -> None:
        log.warning("%s: stopping after the page in flight", signal.Signals(signum).name)
        stop.set()
        if not overdue:
            overdue.append(exit_when_overdue())

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for timer in overdue:
            timer.cancel()
        for sig, old in previous.items():
            signal.signal(sig, old)


# After SIGTERM or Ctrl-C the page in flight gets this long to end (a request's retries are
# cut short by the stop; one read waits at most 60 s), well within systemd's TimeoutStopSec
# of 120 s: past it, a statement is waiting on a database that does not answer.
STOP_GRACE = 60.0


def exit_when_overdue(grace: float = STOP_GRACE) -> threading.Timer:
    """A started daemon timer that ends the process with 143 after ``grace`` seconds."""

    def overdue() -> None:
        log.critical(
            "still not stopped %.0f s after the signal: the database does not answer", grace
        )
        _exit_now(EXIT_SIGTERM)

    timer = threading.Timer(grace, overdue)
    timer.daemon = True
    timer.start()
    return timer


def _exit_when_stuck(
    seconds: float, metrics: Metrics | None = None, metrics_file: Path | None = None
) -> None:
    """A run whose database stopped answering cannot stop (its statements wait for ever):
    end the process, so that systemd (Restart=on-failure) or the next cron run starts
    afresh; the next run marks this one abandoned. The metrics say so first."""
    if metrics is not None or metrics_file is not None:
        from etl.metrics import Metrics, record_unanswered

        record_unanswered(metrics or Metrics(), metrics_file)
    _exit_now(EXIT_FAILED)


def _exit_now(code: int) -> NoReturn:
    """End the process from any thread, its run left for the next one to mark abandoned (a
    statement waits on the database, so the run cannot end the ordinary way)."""
    log.critical(
        "exiting (status %d) so that the process can be started afresh; the next run marks "
        "this one abandoned",
        code,
    )
    logging.shutdown()
    os._exit(code)


def _country_list(values: tuple[str, ...]) -> list[str]:
    """The codes of --country (or --accept-removals), checked by ``_sync_checks`` first."""
    return list(PARSERS["countries"](",".join(values))) if values else []


def _sync_requires(options: Mapping[str, Any]) -> Sequence[str]:
    return ("access_key", "organization_id", *(() if options["only"] else ("countries",)))


def _sync_checks(options: Mapping[str, Any]) -> list[str]:
    problems = []
    for flag, name in (("--country", "only"), ("--accept-removals", "accept")):
        values = options[name]
        try:
            _country_list(values)
        except ValueError as exc:
            problems.append(f"{flag} {','.join(values)}: {exc}")
    return problems


def _report(result: RunResult) -> None:
    from etl.report import run_fields, scope_table, summary_line

    if _json_logs(click.get_current_context()):
        log.info("%s", summary_line(result), extra=run_fields(result))
    else:
        click.echo(summary_line(result))
        for line in scope_table(result):
            click.echo(line)
    if result.auth_failed:
        raise AuthError(result.error or "Bird refused the access key or organization id")


@cli.command()
@click.option(
    "--country",
    "only",
    multiple=True,
    metavar="CC",
    help="Sync only this country (repeatable); default: every configured country.",
)
@click.option("--dry-run", is_flag=True, help="Fetch and report what would change; write nothing.")
@click.option(
    "--accept-removals",
    "accept",
    multiple=True,
    metavar="CC",
    help="Let a held country's removals through, once (repeatable).",
)
@metrics_file_option
@config_options(requires=_sync_requires, checks=_sync_checks)
@click.pass_context
def sync(
    ctx: click.Context,
    settings: Settings,
    only: tuple[str, ...],
    dry_run: bool,
    accept: tuple[str, ...],
    metrics_file: Path | None,
) -> NoReturn:
    """Run one sync (for cron and systemd timers).

    Shows a progress line (pages and numbers per country) when stderr is a terminal."""
    from etl.progress import Progress
    from etl.sync import Sync

    chosen = _country_list(only)
    accepted = _country_list(accept)
    countries = chosen or list(settings.countries)
    outside = [cc for cc in accepted if cc not in countries]
    if outside:  # it would accept nothing, and say nothing
        raise ConfigError(
            [
                f"--accept-removals {','.join(outside)}: not among this run's countries "
                f"({','.join(countries)}); name a country of the run, or add it with --country"
            ]
        )
    if dry_run:
        from etl.dryrun import dry_run as run_dry

        with stop_on_signals() as stop:
            report = run_dry(settings, countries=chosen, stop=stop, accept_removals=accepted)
        click.echo(report.render())
        if report.auth_failed:  # as the sync says it, on stderr
            raise AuthError(report.error or "Bird refused the access key or organization id")
        sys.exit(report.exit_code)
    opts = ctx.find_root().obj
    progress = Progress() if Progress.wanted(opts["quiet"], opts["log_format"]) else None
    result: RunResult | None = None
    try:
        with stop_on_signals() as stop, progress or nullcontext():
            result = Sync(
                settings,
                countries=chosen,
                accept_removals=accepted,
                stop=stop,
                on_page=progress.on_page if progress else None,
                on_stuck=functools.partial(_exit_when_stuck, metrics_file=metrics_file),
            ).run()
    finally:
        if metrics_file is not None:
            from etl.metrics import outcome_of, write_file

            outcome = outcome_of(result, sys.exc_info()[1])
            write_file(metrics_file, settings.database_url, result, outcome)
    _report(result)
    sys.exit(result.exit_code)


@cli.command()
@click.option("--run-now", is_flag=True, help="Run a sync at start, then on the schedule.")
@click.option(
    "--catch-up/--no-catch-up",
    default=True,
    show_default=True,
    help="At start, run a sync at once if a slot of the schedule passed since the last run "
    "started (the process was down); an interval counts from the last run.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port at /metrics.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics port listens on (0.0.0.0: every interface).",
)
@metrics_file_option
@config_options(requires=lambda _options: ("access_key", "organization_id", "countries"))
def schedule(
    settings: Settings,
    run_now: bool,
    catch_up: bool,
    metrics_port: int | None,
    metrics_host: str,
    metrics_file: Path | None,
) -> None:
    """Run syncs on the `schedule` setting until SIGTERM (a long-running service).

    Never two syncs at once, in this process or across hosts (the database lock). SIGTERM,
    Ctrl-C or SIGHUP: no new runs; the run in flight stops after its page; exit 143."""
    from etl.metrics import Metrics
    from etl.scheduler import SyncScheduler

    metrics = Metrics() if metrics_port is not None or metrics_file is not None else None
    try:
        if metrics is not None and metrics_port is not None:
            try:
                metrics.serve(metrics_port, metrics_host)
            except OSError as exc:
                raise ConfigError(
                    [f"--metrics-port {metrics_port}: cannot listen on {metrics_host}: {exc}"]
                ) from None
        scheduler = SyncScheduler(
            settings,
            metrics=metrics,
            metrics_file=metrics_file,
            on_stuck=functools.partial(
                _exit_when_stuck, metrics=metrics, metrics_file=metrics_file
            ),
            on_signal=lambda: exit_when_overdue(),
        )
        scheduler.run_forever(run_now=run_now, catch_up=catch_up)
    finally:
        if metrics is not None:
            metrics.close()
    if scheduler.stopped_by is not None:
        sys.exit(EXIT_SIGTERM)  # as `sync`: 143 when stopped by SIGTERM (or Ctrl-C)


def _max_age(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    from etl.status import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.option(
    "--max-age",
    default="12h",
    show_default=True,
    callback=_max_age,
    help="Unhealthy when the last successful sync is older (90s, 30m, 12h, 2d).",
)
@config_options
def status(settings: Settings, max_age: timedelta) -> NoReturn:
    """Last run, last successful run, per-country state; exit 1 when unhealthy.

    Unhealthy: no successful sync yet, the last one older than --max-age, the last
    finished run failed, partial or abandoned, the last run still running with no live
    holder of the sync lock (its process died), or a configured country not listed
    completely within --max-age or failed or held in its last run. For monitoring checks."""
    from etl.status import read_status
    from etl.store.engine import sqlite_path
    from etl.store.migrate import check_schema, current_revision
    from etl.sync import scopes_for

    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        click.echo(f"PROBLEM: no database at {path}: no sync has run yet")
        sys.exit(EXIT_FAILED)
    with _engine(settings) as engine:
        if settings.uses_default_database and current_revision(engine) is None:
            # created empty (by the scheduler's metrics, say); the first sync migrates it
            click.echo(f"PROBLEM: no sync has run yet in {path}")
            sys.exit(EXIT_FAILED)
        check_schema(engine)
        report = read_status(
            engine,
            now=datetime.now(UTC),
            max_age=max_age,
            scope_keys=[scope.key for scope in scopes_for(settings)],
        )
    click.echo(report.render())
    sys.exit(report.exit_code)


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@config_options
def config_show(settings: Settings) -> None:
    """Print the effective configuration, secrets hidden, and where each value came from."""
    from etl.show_config import render_settings

    click.echo(render_settings(settings))


@cli.group()
def db() -> None:
    """Database migrations (the same as `alembic upgrade head`)."""


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    """An engine for the configured database, disposed at the end; a database that cannot
    be reached is a DatabaseError (exit 1)."""
    from sqlalchemy.exc import DBAPIError

    from etl.store.engine import db_message, make_engine

    engine = make_engine(settings.database_url)
    try:
        yield engine
    except DBAPIError as exc:  # unreachable, or refused the connection's options
        raise DatabaseError(
            f"cannot use the database {redact_url(settings.database_url)}: {db_message(exc)}"
        ) from None
    finally:
        engine.dispose()


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@config_options
def db_upgrade(settings: Settings, revision: str) -> None:
    """Create or migrate the tables and views to the latest revision."""
    from etl.store import migrate

    with _engine(settings) as engine:
        migrate.upgrade(engine, revision)
        current = migrate.current_revision(engine)
    click.echo(f"{redact_url(settings.database_url)} is at revision {current}")
    if migrate.is_plain_revision(revision) and current != revision:
        click.echo(
            f"(not {revision}: the database was already past it; `db upgrade` never goes "
            "back, `alembic downgrade` does)"
        )


@db.command("current")
@config_options
def db_current(settings: Settings) -> None:
    """Show the database's migration revision and the code's."""
    from etl.store import migrate

    current = None
    if not migrate.missing_database(settings.database_url, default=False):
        with _engine(settings) as engine:  # not for a file that is not there: it would be
            current = migrate.current_revision(engine)  # created, empty
    head = migrate.head_revision()
    if current == head:
        state = "up to date"
    elif current is not None and not migrate.known_revision(current):
        state = "ahead: migrated by a newer numbers-etl, which this version cannot use"
    else:
        state = "behind: run `numbers-etl db upgrade`"
    click.echo(f"database: {current or 'none'}  code: {head}  ({state})")


@cli.command()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many runs to show.",
)
@config_options
def runs(settings: Settings, limit: int) -> None:
    """List recent runs with their counts."""
    from etl.store import migrate
    from etl.store.engine import sqlite_path
    from etl.store.runs import recent_runs

    rows: list[dict[str, Any]] = []
    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():  # not created by a read
        missing = migrate.missing_database(
            settings.database_url, default=settings.uses_default_database
        )
        if missing is not None:
            raise missing
    else:
        with _engine(settings) as engine:
            # a default file created empty (by the scheduler's metrics, say): no sync yet
            if not settings.uses_default_database or migrate.current_revision(engine):
                migrate.check_schema(engine)
                rows = recent_runs(engine, limit)
    if not rows:
        click.echo("no runs yet: run `numbers-etl sync`")
        return
    from etl.report import runs_table

    for line in runs_table(rows):
        click.echo(line)


@cli.command()
@click.option(
    "--database-url",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="Where to write the demo's history (the environment and config file are ignored).",
)
@click.option(
    "--runs",
    "run_count",
    type=click.IntRange(2, 50),
    default=3,
    show_default=True,
    help="How many syncs to run, the stock changing between them.",
)
@click.pass_context
def demo(ctx: click.Context, database_url: str, run_count: int) -> None:
    """Sync a simulated Bird stock a few times and show what changed.

    No network beyond 127.0.0.1 and no credentials: the simulator runs in this process."""
    from etl.demo import run_demo

    if not ctx.find_root().obj["verbose"]:  # the demo tells the runs itself
        logging.getLogger("etl").setLevel(logging.WARNING)

    try:
        url = PARSERS["database_url"](database_url)
    except ValueError as exc:
        raise ConfigError([f"--database-url {redact_url(database_url)!r}: {exc}"]) from None
    run_demo(url, runs=run_count, echo=click.echo)


def _register_optional() -> None:
    from etl.simulator.cli import simulator_command

    cli.add_command(simulator_command, "simulator")


_register_optional()


def main() -> None:
    cli(prog_name="numbers-etl")

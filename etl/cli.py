"""The ``numbers-etl`` command: parses options, calls the library, maps errors to exit codes."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from etl import __version__
from etl.config import Settings, load_settings, redact_url
from etl.errors import (
    AuthError,
    ConfigError,
    DatabaseError,
    EtlError,
    LockHeld,
    SchemaOutOfDate,
)
from etl.logs import setup_logging
from etl.sync import EXIT_CONFIG, EXIT_FAILED, EXIT_LOCKED, RunResult

F = Callable[..., Any]


def _exit_code(exc: EtlError) -> int:
    if isinstance(exc, ConfigError | SchemaOutOfDate | AuthError):
        return EXIT_CONFIG
    if isinstance(exc, LockHeld):
        return EXIT_LOCKED
    return EXIT_FAILED


class Group(click.Group):
    """Turns numbers-etl's errors into one `Error: ...` message and the contract's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EtlError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(_exit_code(exc))


# Configuration keys that can be given as flags. The access key has no flag on purpose: a
# command line is visible to every user of the host (`ps`); use the environment or a file.
CONFIG_FLAGS: list[tuple[str, str]] = [
    ("database_url", "Database URL (SQLAlchemy form). [env NUMBERS_ETL_DATABASE_URL]"),
    ("api_url", "Bird API base URL. [env NUMBERS_ETL_API_URL]"),
    ("organization_id", "Bird organization id. [env NUMBERS_ETL_ORGANIZATION_ID]"),
    ("countries", "Countries, comma-separated ISO codes. [env NUMBERS_ETL_COUNTRIES]"),
    ("page_size", "Items per page, 1..99. [env NUMBERS_ETL_PAGE_SIZE]"),
    ("max_requests_per_second", "Client-side rate limit. [env ..._MAX_REQUESTS_PER_SECOND]"),
    ("concurrency", "Countries fetched in parallel. [env NUMBERS_ETL_CONCURRENCY]"),
    ("schedule", "Cron expression (UTC) or interval like 30m. [env NUMBERS_ETL_SCHEDULE]"),
    ("removal_confirmations", "Complete runs that must miss a number before removal."),
    ("max_removal_fraction", "Share of a scope above which removals are held."),
    ("max_pages", "Pages per scope before it fails (runaway guard)."),
]


def config_options(func: F) -> F:
    """Add --config and the configuration flags; pass the validated Settings as `settings`."""

    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, **kwargs: Any) -> Any:
        flags = {key: kwargs.pop(key) for key, _ in CONFIG_FLAGS}
        settings = load_settings(flags, config_path=config)
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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="numbers-etl")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for terminals; json (one object a line) for journald and log shippers.",
)
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(log_format: str, verbose: int, quiet: bool) -> None:
    """numbers-etl keeps an exact SQL history of the phone numbers Bird offers for sale.

    Exit codes: 0 every country synced; 1 the run failed or was partial; 2 configuration
    or usage error; 75 another sync holds the lock; 143 stopped by SIGTERM."""
    setup_logging(log_format, -1 if quiet else verbose)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM / SIGINT set the returned event: the run stops after the page in flight."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        click.echo(f"{signal.Signals(signum).name}: stopping after the page in flight...", err=True)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _country_list(values: tuple[str, ...]) -> list[str]:
    from etl.config import PARSERS

    if not values:
        return []
    try:
        return list(PARSERS["countries"](",".join(values)))
    except ValueError as exc:
        raise ConfigError([f"--country {','.join(values)}: {exc}"]) from None


def print_summary(result: RunResult) -> None:
    seconds = ((result.finished_at or result.started_at) - result.started_at).total_seconds()
    click.echo(
        f"run {result.run_id} {result.status} in {seconds:.1f}s: "
        f"{result.total('items')} numbers on {result.total('pages')} pages; "
        f"listed {result.total('listed')}, removed {result.total('removed')}, "
        f"relisted {result.total('relisted')}, changed {result.total('changed')}, "
        f"price changes {result.total('price_changes')}, rejected {result.total('rejected')}"
    )
    header: tuple[str, ...] = (
        "scope",
        "status",
        "pages",
        "numbers",
        "listed",
        "removed",
        "relisted",
    )
    header += ("changed", "prices", "rejected")
    rows = [header] + [
        (
            s.scope.key,
            s.status,
            *(
                str(getattr(s, n))
                for n in (
                    "pages",
                    "items",
                    "listed",
                    "removed",
                    "relisted",
                    "changed",
                    "price_changes",
                    "rejected",
                )
            ),
        )
        for s in result.scopes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        click.echo(
            "  "
            + "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    for s in result.scopes:
        if s.error:
            click.echo(f"  {s.scope.key}: {s.error}")


@cli.command()
@click.option(
    "--country",
    "countries",
    multiple=True,
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
@config_options
def sync(
    settings: Settings, countries: tuple[str, ...], dry_run: bool, accept: tuple[str, ...]
) -> NoReturn:
    """Run one sync (for cron and systemd timers)."""
    from etl.sync import Sync

    chosen = _country_list(countries)
    accepted = _country_list(accept)
    settings.require("access_key", "organization_id", *(() if chosen else ("countries",)))
    if dry_run:
        from etl.dryrun import dry_run as run_dry

        with stop_on_signals() as stop:
            report = run_dry(settings, countries=chosen, stop=stop)
        click.echo(report.render())
        sys.exit(report.exit_code)
    with stop_on_signals() as stop:
        result = Sync(settings, countries=chosen, accept_removals=accepted, stop=stop).run()
    print_summary(result)
    if result.auth_failed:
        click.echo(f"Error: {result.error}", err=True)
    sys.exit(result.exit_code)


@cli.group()
def db() -> None:
    """Database migrations (the same as `alembic upgrade head`)."""


def _engine(settings: Settings) -> Any:
    from etl.store.engine import make_engine

    return make_engine(settings.database_url)


@contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        from etl.sync import _db_message

        raise DatabaseError(
            f"cannot use the database {redact_url(settings.database_url)}: {_db_message(exc)}"
        ) from None


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@config_options
def db_upgrade(settings: Settings, revision: str) -> None:
    """Create or migrate the tables and views to the latest revision."""
    from etl.store import migrate

    with _database_errors(settings):
        engine = _engine(settings)
        migrate.upgrade(engine, revision)
        click.echo(
            f"{redact_url(settings.database_url)} is at revision {migrate.current_revision(engine)}"
        )


@db.command("current")
@config_options
def db_current(settings: Settings) -> None:
    """Show the database's migration revision and the code's."""
    from etl.store import migrate

    with _database_errors(settings):
        current = migrate.current_revision(_engine(settings))
    head = migrate.head_revision()
    state = "up to date" if current == head else "behind: run `numbers-etl db upgrade`"
    click.echo(f"database: {current or 'none'}  code: {head}  ({state})")


@cli.command()
@click.option("--limit", default=10, show_default=True, help="How many runs to show.")
@config_options
def runs(settings: Settings, limit: int) -> None:
    """List recent runs with their counts."""
    from etl.store import migrate
    from etl.store.runs import recent_runs

    with _database_errors(settings):
        engine = _engine(settings)
        migrate.check_schema(engine)
        rows = recent_runs(engine, limit)
    if not rows:
        click.echo("no runs yet: run `numbers-etl sync`")
        return
    cols: tuple[str, ...] = (
        "id",
        "started_at",
        "status",
        "pages",
        "items",
        "listed",
        "removed",
        "relisted",
    )
    cols += ("changed", "price_changes", "rejected")
    table = [cols] + [
        tuple(f"{r[c]:%Y-%m-%d %H:%M:%S}" if c == "started_at" else str(r[c]) for c in cols)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        click.echo("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    for r in rows:
        if r["error"]:
            click.echo(f"run {r['id']}: {r['error']}")


def _register_optional() -> None:
    from etl.simulator.cli import simulator_command

    cli.add_command(simulator_command, "simulator")


_register_optional()


def main() -> None:
    cli(prog_name="numbers-etl")

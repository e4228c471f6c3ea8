"""``numbers-etl simulator``: serve a Bird-compatible stock listing on this machine."""

from __future__ import annotations

import ipaddress
import signal
import threading
from types import FrameType
from typing import Any

import click

from etl.simulator.faults import Faults
from etl.simulator.server import Simulator
from etl.simulator.stock import SUPPORTED_COUNTRIES, SyntheticStock

DEFAULT_ACCESS_KEY = "sim-access-key"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _faults(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for spec in values:
        try:
            kind, params = Faults.parse_cli(spec)
            Faults().add(kind, **params)  # its values checked too (latency:seconds=-5 ...)
        except ValueError as exc:
            raise click.BadParameter(f"{spec!r}: {exc}") from None
        parsed.append((kind, params))
    return parsed


@click.command(
    "simulator",
    epilog="Example: numbers-etl simulator --size 50000 --fault 429:times=3,retry_after=2",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Only loopback addresses unless --allow-remote is given.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="TCP port to listen on; 0 picks a free port (the URL printed at start names it).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host that is not loopback (the simulator has no TLS; use with care).",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed of the synthetic stock and its evolution; the same seed gives the same numbers.",
)
@click.option(
    "--countries",
    default="US,NL,GB,DE",
    show_default=True,
    help=f"Comma-separated countries of the stock; supported: {','.join(SUPPORTED_COUNTRIES)}.",
)
@click.option(
    "--size",
    type=click.IntRange(0, 5_000_000),
    default=2000,
    show_default=True,
    help="How many numbers the stock starts with, spread evenly over the countries.",
)
@click.option(
    "--access-key",
    envvar="NUMBERS_ETL_SIMULATOR_ACCESS_KEY",
    default=DEFAULT_ACCESS_KEY,
    show_default=True,
    help="The access key clients must send (Authorization: AccessKey ...). "
    "Also NUMBERS_ETL_SIMULATOR_ACCESS_KEY.",
)
@click.option(
    "--organization-id",
    default="sim-org",
    show_default=True,
    help="The organization id served at /organizations/{id}/numbers-stock-items; "
    "any other id gets 404.",
)
@click.option(
    "--latency",
    type=click.FloatRange(0, 60),
    default=0.0,
    show_default=True,
    help="Seconds added before every listing response.",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=1),
    default=None,
    metavar="N",
    help="Answer 429 Too Many Requests (with Retry-After) to a listing request that would "
    "be more than N in one second, as Bird does above about 50 a second per workspace. "
    "Without it there is no limit.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    callback=_faults,
    metavar="SPEC",
    help="Arm a fault, repeatable: KIND[:name=value,...] with KIND a status code "
    "(429:times=3,retry_after=2) or status, html, repeat_token, invalid_items, disconnect, "
    "latency; common parameters times (0 = every request), country and page "
    "(e.g. disconnect:page=2, status:status=503,times=2, latency:seconds=0.05).",
)
@click.option(
    "--evolve-every",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Evolve the stock every SECONDS (prices change, numbers are sold, arrive and come "
    "back). Without it the stock changes only through POST /_simulator/evolve.",
)
def simulator_command(
    host: str,
    port: int,
    allow_remote: bool,
    seed: int,
    countries: str,
    size: int,
    access_key: str,
    organization_id: str,
    latency: float,
    rate_limit: float | None,
    faults: list[tuple[str, dict[str, Any]]],
    evolve_every: float | None,
) -> None:
    """Serve a local, Bird-compatible stock listing for demos and tests.

    GET /organizations/{organization-id}/numbers-stock-items answers like Bird's listing,
    from a synthetic stock that is the same for the same --seed. Control endpoints on
    loopback: POST /_simulator/evolve, POST and DELETE /_simulator/faults and
    GET /_simulator/stats. Serves until Ctrl-C or SIGTERM."""
    if not _is_loopback(host) and not allow_remote:
        raise click.BadParameter(
            f"{host!r} is not a loopback address; the simulator is for local use "
            "(add --allow-remote to listen there anyway)",
            param_hint="--host",
        )
    codes = [c.strip().upper() for c in countries.split(",") if c.strip()]
    try:
        stock = SyntheticStock(seed=seed, countries=codes, size=size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--countries") from None
    sim = Simulator(
        stock,
        host=host,
        port=port,
        access_key=access_key,
        organization_id=organization_id,
        rate_limit=rate_limit,
    )
    sim.faults.set_latency(latency)
    for kind, params in faults:
        sim.faults.add(kind, **params)
    done = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        done.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        sim.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    key_hint = access_key if access_key == DEFAULT_ACCESS_KEY else "<the --access-key>"
    click.echo(
        f"numbers-etl simulator: {len(stock)} numbers in {','.join(stock.countries)} on "
        f"{sim.url} for organization {organization_id}; point numbers-etl at it with "
        f"NUMBERS_ETL_API_URL={sim.url} NUMBERS_ETL_ORGANIZATION_ID={organization_id} "
        f"NUMBERS_ETL_ACCESS_KEY={key_hint} NUMBERS_ETL_COUNTRIES={','.join(stock.countries)}",
    )
    try:
        while not done.wait(evolve_every or 3600):
            if evolve_every:
                stock.evolve()
    finally:
        sim.stop()

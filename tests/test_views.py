"""What the BI views return, on every database, for histories built by scripted syncs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from unittest import mock

from sqlalchemy import Engine, text

from etl.config import Settings
from etl.records import Page, Price, Scope, StockItem
from etl.sync import RunResult, Sync

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def item(number: str, amount: int = 100, exponent: int = -2) -> StockItem:
    return StockItem(
        number, "id" + number, "US", "local", (("voice_inbound", True),),
        Price("USD", amount, exponent), False,
    )  # fmt: skip


def run(
    engine: Engine,
    settings: Settings,
    listing: dict[str, Any],
    at: datetime,
    accept: tuple[str, ...] = (),
) -> RunResult:
    """A sync at ``at`` (its clock too: a failed scope is dated by it); a scope missing from
    ``listing`` fails."""

    def source(scope: Scope) -> Iterator[Page]:
        if scope.key not in listing:
            raise RuntimeError("this scope fails (scripted)")
        yield Page(scope.key, 0, at, tuple(listing[scope.key]), (), None)

    with mock.patch("etl.sync.utcnow", return_value=at):
        return Sync(settings, engine=engine, page_source=source, accept_removals=accept).run()


def cfg(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"countries": ("US",), "max_removal_fraction": Decimal(1)}
    return Settings(**(values | overrides))


AREAS = cfg(prefixes={"US": ("+1212", "+1646")})
A = [item(f"+1212555000{i}") for i in range(3)]
B = [item(f"+1646555000{i}") for i in range(2)]


def daily(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT day, available_count, avg_price, voice_count "
                "FROM v_daily_availability ORDER BY day"
            )
        )
        return [tuple(r) for r in rows]


def test_daily_average_of_two_areas_is_not_cut_to_an_integer(engine: Engine) -> None:
    run(engine, AREAS, {"US +1212": [item("+12125550001", 3, 0)], "US +1646": [
        item("+16465550001", 4, 0)]}, DAY0)  # fmt: skip
    [(_, count, average, voice)] = daily(engine)
    assert Decimal(str(average)) == Decimal("3.5")
    assert (count, voice) == (2, 2)
    assert type(count) is int  # not DECIMAL (MySQL/MariaDB's SUM)


def test_daily_average_has_the_twelve_places_of_a_price_on_every_database(
    engine: Engine,
) -> None:
    """PostgreSQL and MySQL/MariaDB returned the division's own 16 places (1.3333333333333333)
    where SQLite rounds to the money columns' 12 (migration 0007)."""
    three = cfg(prefixes={"US": ("+1212", "+1646", "+1718")})
    run(engine, three, {"US +1212": [item("+12125550001", 1, 0)], "US +1646": [
        item("+16465550001", 1, 0)], "US +1718": [item("+17185550001", 2, 0)]}, DAY0)  # fmt: skip
    [(_, count, average, _)] = daily(engine)
    assert count == 3
    assert Decimal(str(average)) == Decimal("1.333333333333")


def test_daily_count_after_a_country_switched_to_areas_that_day(engine: Engine) -> None:
    run(engine, cfg(), {"US": A + B}, DAY0 + HOUR)
    run(engine, AREAS, {"US +1212": A, "US +1646": B}, DAY0 + 7 * HOUR)
    assert [count for _, count, _, _ in daily(engine)] == [5]  # not the old scope's 5 again


def test_daily_count_keeps_an_area_that_failed_all_day_as_it_last_was(engine: Engine) -> None:
    run(engine, AREAS, {"US +1212": A, "US +1646": B}, DAY0 + HOUR)
    run(engine, AREAS, {"US +1212": A}, DAY0 + DAY + HOUR)  # +1646 fails all of day 2
    run(engine, AREAS, {"US +1212": A[:2]}, DAY0 + 2 * DAY + HOUR)  # and day 3; one sold
    assert [count for _, count, _, _ in daily(engine)] == [5, 5, 4]


def test_daily_count_keeps_a_country_whose_only_scope_failed_or_was_held_all_day(
    engine: Engine,
) -> None:
    """With no complete scope that day the country had no row at all: a gap on the chart
    on the very day the mass-removal guard held an empty listing (migration 0005)."""
    settings = cfg(max_removal_fraction=Decimal("0.5"))
    numbers_ = [item(f"+1212555000{i}") for i in range(4)]
    days = [DAY0 + HOUR, DAY0 + DAY + HOUR, DAY0 + 2 * DAY + HOUR, DAY0 + 3 * DAY + HOUR]
    listings: list[dict[str, Any]] = [{"US": numbers_}, {}, {"US": []}, {"US": numbers_[:3]}]
    statuses = []
    for at, listing in zip(days, listings, strict=True):
        statuses.append(run(engine, settings, listing, at).scopes[0].status)
    assert statuses == ["complete", "failed", "held", "complete"]
    rows = daily(engine)
    assert [str(day)[:10] for day, *_ in rows] == [
        "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"
    ]  # fmt: skip
    assert [count for _, count, _, _ in rows] == [4, 4, 4, 3]


def test_daily_count_of_a_country_that_sold_out_is_zero_not_its_last_stock(
    engine: Engine,
) -> None:
    """A complete scope counts at its own run's snapshot (migration 0006 takes it without
    a lookup): one that sold out took zero rows there, and a failed day after it keeps
    the zero, not the stock of the last day with numbers."""
    numbers_ = [item(f"+1212555000{i}") for i in range(4)]
    statuses = [
        run(engine, cfg(), {"US": numbers_}, DAY0 + HOUR).scopes[0].status,
        run(engine, cfg(), {"US": []}, DAY0 + DAY + HOUR, accept=("US",)).scopes[0].status,
        run(engine, cfg(), {}, DAY0 + 2 * DAY + HOUR).scopes[0].status,
        run(engine, cfg(), {"US": numbers_[:1]}, DAY0 + 3 * DAY + HOUR).scopes[0].status,
    ]
    assert statuses == ["complete", "complete", "failed", "complete"]
    assert [(count, voice) for _, count, _, voice in daily(engine)] == [
        (4, 4), (0, 0), (0, 0), (1, 1)
    ]  # fmt: skip


def test_days_in_stock_of_a_relisted_number_count_its_last_stay(engine: Engine) -> None:
    x, keep = item("+12125550000"), item("+12125550001")
    run(engine, cfg(), {"US": [x, keep]}, DAY0)
    run(engine, cfg(), {"US": [keep]}, DAY0 + DAY)
    run(engine, cfg(), {"US": [x, keep]}, DAY0 + 30 * DAY)
    run(engine, cfg(), {"US": [keep]}, DAY0 + 32 * DAY)
    with engine.connect() as conn:
        days = conn.execute(text("SELECT days_in_stock FROM v_removed_numbers")).scalar_one()
    assert abs(float(days) - 2) < 0.001  # relisted on day 30, removed on day 32

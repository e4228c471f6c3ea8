"""Two countries listing the same number in one run (a +1 number in the US and the Canadian
listing), their pages written at the same moment: each change is recorded once, on every
database. On MySQL/MariaDB both scopes read the old row and both wrote the change, until
the read of a page that writes locked its rows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, func, select

from etl.config import Settings
from etl.records import Page, Price, Scope, StockItem
from etl.store.schema import number_events, numbers, price_changes
from etl.sync import RunResult, Sync

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
SHARED = [f"+1212555{n:04d}" for n in range(99)]


def _item(number: str, country: str, cents: int) -> StockItem:
    return StockItem(
        number, "a", country, "local", (("voice_inbound", True),), Price("EUR", cents, -2), False
    )


def _run_both(engine: Engine, at: datetime, cents: int, listed: list[str]) -> RunResult:
    """US and CA both list ``listed`` (NANP numbers), their pages written at the same time."""
    both = threading.Barrier(2)

    def source(scope: Scope) -> Iterator[Page]:
        both.wait(timeout=30)
        items = tuple(_item(n, scope.country_code, cents) for n in listed)
        yield Page(scope.key, 0, at, items, (), None)

    settings = Settings(countries=("US", "CA"), concurrency=2, max_removal_fraction=Decimal(1))
    return Sync(settings, engine=engine, page_source=source).run()


def test_price_change_seen_by_two_scopes_at_once_is_recorded_once(engine: Engine) -> None:
    """A number both the US and the CA listing carry (the case sync._is_transient retries
    for new numbers) changes price once: one price_changes row, not one per scope."""
    assert _run_both(engine, T0, 350, SHARED).status == "succeeded"
    result = _run_both(engine, T0 + HOUR, 400, SHARED)
    assert result.status == "succeeded"
    with engine.connect() as conn:
        rows = conn.execute(
            select(price_changes.c.number_id, func.count())
            .group_by(price_changes.c.number_id)
            .having(func.count() > 1)
        ).all()
        total = conn.scalar(select(func.count()).select_from(price_changes))
    assert rows == [], f"{len(rows)} numbers have duplicate price changes (3.50 -> 4.00 twice)"
    assert total == len(SHARED)
    assert result.total("price_changes") == len(SHARED)


def test_relisting_seen_by_two_scopes_at_once_is_recorded_once(engine: Engine) -> None:
    """A removed number that comes back in both listings at once gets one `relisted` event."""
    assert _run_both(engine, T0, 350, SHARED).status == "succeeded"
    assert _run_both(engine, T0 + HOUR, 350, SHARED[:60]).status == "succeeded"  # 39 removed
    result = _run_both(engine, T0 + 2 * HOUR, 350, SHARED)
    assert result.status == "succeeded"
    with engine.connect() as conn:
        relisted = conn.scalar(
            select(func.count())
            .select_from(number_events)
            .where(number_events.c.event == "relisted")
        )
        removed = conn.scalar(
            select(func.count()).select_from(numbers).where(numbers.c.removed_at.is_not(None))
        )
    assert removed == 0
    assert relisted == 39

"""Edge cases of the history on every database: pages come from a scripted page source
(no HTTP), so each case sets up exactly the listings it needs."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.exc import OperationalError

from etl.config import Settings
from etl.errors import AuthError, LockHeld, SourceError
from etl.records import Page, Price, Rejection, Scope, StockItem
from etl.store.diff import attribute_values, price_values
from etl.store.engine import make_engine
from etl.store.lock import DatabaseLock
from etl.store.schema import number_events, numbers, sync_scopes
from etl.sync import RunResult, Sync
from tests.procs import proxy_to, wait_for

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)


def item(number: str, country: str = "NL") -> StockItem:
    return StockItem(
        number, "a", country, "local", (("voice_inbound", True),), Price("EUR", 350, -2), False
    )


def page(key: str, at: datetime, items: Iterable[StockItem] = (), rejections: Any = ()) -> Page:
    return Page(key, 0, at, tuple(items), tuple(rejections), None)


def cfg(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"countries": ("NL",), "max_removal_fraction": Decimal(1)}
    return Settings(**(values | overrides))


def run(engine: Engine, settings: Settings, listing: dict[str, Page], **kw: Any) -> RunResult:
    def source(scope: Scope) -> Iterator[Page]:
        if scope.key in listing:
            yield listing[scope.key]

    return Sync(settings, engine=engine, page_source=source, **kw).run()


def stored(engine: Engine, number: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(numbers).where(numbers.c.number == number)).one()


def events_of(engine: Engine, number: str) -> list[tuple[str, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(number_events.c.event, number_events.c.occurred_at)
            .join(numbers, numbers.c.id == number_events.c.number_id)
            .where(numbers.c.number == number)
            .order_by(number_events.c.id)
        )
        return [(r.event, r.occurred_at) for r in rows]


def numbers_and_events(engine: Engine) -> list[tuple[str, str]]:
    """Each event with its number's number, by number."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(numbers.c.number, number_events.c.event)
            .join(number_events, number_events.c.number_id == numbers.c.id)
            .order_by(numbers.c.number)
        )
        return [(r.number, r.event) for r in rows]


def test_removed_number_back_as_a_rejected_item_is_relisted(engine: Engine) -> None:
    """A rejected item's number counts as seen; a removed number seen again is relisted,
    keeping the price and attributes it had (the item carried none that could be used)."""
    x, keep = "+31205550000", item("+31205550001")
    run(engine, cfg(), {"NL": page("NL", T0, [item(x), keep])})
    run(engine, cfg(), {"NL": page("NL", T0 + HOUR, [keep])})
    assert stored(engine, x).removed_at == T0 + HOUR
    bad = Rejection("monthlyPrice is missing", {"numberString": x}, x)
    result = run(engine, cfg(), {"NL": page("NL", T0 + 2 * HOUR, [keep], [bad])})
    row = stored(engine, x)
    assert row.removed_at is None
    assert row.last_seen_at == T0 + 2 * HOUR
    assert row.monthly_price == Decimal("3.5")
    assert [e for e, _ in events_of(engine, x)] == ["listed", "removed", "relisted"]
    assert result.total("relisted") == 1
    assert result.status == "succeeded"


def _moved_number_events(engine: Engine, countries: tuple[str, ...], concurrency: int) -> Any:
    settings = cfg(countries=countries, concurrency=concurrency)
    x = "+12125550000"
    us, ca = item("+12125550001", "US"), item("+14165550001", "CA")
    run(engine, settings, {"US": page("US", T0, [item(x, "US"), us]), "CA": page("CA", T0, [ca])})
    run(
        engine,
        settings,
        {"US": page("US", T0 + HOUR, [us]), "CA": page("CA", T0 + HOUR, [ca, item(x, "CA")])},
    )
    return [e for e, _ in events_of(engine, x)], stored(engine, x)


def test_number_that_moves_to_another_scope_is_never_removed(engine: Engine) -> None:
    """Whichever scope closes first, the number the other one lists now was seen in the run."""
    for countries, concurrency in ((("US", "CA"), 1), (("CA", "US"), 1), (("US", "CA"), 2)):
        events, row = _moved_number_events(engine, countries, concurrency)
        assert events == ["listed", "changed"], countries
        assert (row.country_code, row.removed_at) == ("CA", None)
        with engine.begin() as conn:
            conn.execute(number_events.delete())
            conn.execute(numbers.delete())


def test_same_new_number_in_two_listings_at_once(engine: Engine) -> None:
    """Two countries insert the same new numbers in the same instant: the second page's
    transaction is retried and updates what the first inserted, instead of failing."""
    both = threading.Barrier(2)
    shared = [f"+1212555{n:04d}" for n in range(99)]

    def source(scope: Scope) -> Iterator[Page]:
        both.wait(timeout=30)
        yield page(scope.key, T0, [item(n, scope.country_code) for n in shared])

    settings = cfg(countries=("US", "CA"), concurrency=2)
    result = Sync(settings, engine=engine, page_source=source).run()
    assert result.status == "succeeded", [s.error for s in result.scopes]
    assert result.total("listed") == 99
    with engine.connect() as conn:
        assert conn.execute(select(numbers.c.number)).scalars().all().__len__() == 99


def test_held_run_dates_the_removal_it_holds(engine: Engine) -> None:
    """removal_confirmations 1: the held run was the first complete listing without the
    number, so once removals are accepted, removed_at is that run's time."""
    settings = cfg(max_removal_fraction=Decimal("0.5"))
    x, keep = "+31205550000", item("+31205550001")
    run(engine, settings, {"NL": page("NL", T0, [item(x), keep])})
    held = run(engine, settings, {"NL": page("NL", T0 + HOUR, [])})
    assert [s.status for s in held.scopes] == ["held"]
    assert stored(engine, x).removed_at is None
    run(engine, settings, {"NL": page("NL", T0 + 2 * HOUR, [keep])}, accept_removals=["NL"])
    assert stored(engine, x).removed_at == T0 + HOUR
    assert stored(engine, keep.number).removed_at is None


def test_empty_listing_is_held_even_before_removals_are_due(engine: Engine) -> None:
    """removal_confirmations 2: the first empty listing would remove nothing yet; it is held
    all the same (an outage, not a sell-out), and accepting it later removes the numbers at
    the first missing listing's time."""
    settings = cfg(max_removal_fraction=Decimal("0.5"), removal_confirmations=2)
    numbers_ = [item("+31205550000"), item("+31205550001")]
    run(engine, settings, {"NL": page("NL", T0, numbers_)})
    first = run(engine, settings, {"NL": page("NL", T0 + HOUR, [])})
    assert [s.status for s in first.scopes] == ["held"]
    assert first.exit_code == 1
    assert "none of the 2 available numbers" in (first.scopes[0].error or "")
    # recovered: both seen again, their misses forgotten
    recovered = run(engine, settings, {"NL": page("NL", T0 + 2 * HOUR, numbers_)})
    assert recovered.status == "succeeded"
    assert stored(engine, numbers_[0].number).missed_runs == 0
    run(engine, settings, {"NL": page("NL", T0 + 3 * HOUR, [])})
    accepted = run(engine, settings, {"NL": page("NL", T0 + 4 * HOUR, [])}, accept_removals=["NL"])
    assert accepted.status == "succeeded"
    assert accepted.total("removed") == 2
    assert stored(engine, numbers_[0].number).removed_at == T0 + 3 * HOUR


def test_accepting_removals_takes_a_run_each_until_the_confirmations_are_met(
    engine: Engine,
) -> None:
    """removal_confirmations 3: acceptance is for one run, and each number needs three
    missing runs, so an empty listing needs accepting on each run until they are removed;
    the held reason says so (with 1 it says once)."""
    settings = cfg(max_removal_fraction=Decimal("0.5"), removal_confirmations=3)
    numbers_ = [item("+31205550000"), item("+31205550001")]
    run(engine, settings, {"NL": page("NL", T0, numbers_)})
    held = run(engine, settings, {"NL": page("NL", T0 + HOUR, [])})
    reason = held.scopes[0].error or ""
    assert "--accept-removals NL` on each run until they are removed" in reason
    assert "removal_confirmations = 3" in reason
    accepted = run(engine, settings, {"NL": page("NL", T0 + 2 * HOUR, [])}, accept_removals=["NL"])
    assert (accepted.status, accepted.total("removed")) == ("succeeded", 0)
    again = run(engine, settings, {"NL": page("NL", T0 + 3 * HOUR, [])})
    assert [s.status for s in again.scopes] == ["held"]
    last = run(engine, settings, {"NL": page("NL", T0 + 4 * HOUR, [])}, accept_removals=["NL"])
    assert last.total("removed") == 2
    assert stored(engine, numbers_[0].number).removed_at == T0 + HOUR


def test_run_that_lost_its_lock_closes_nothing(engine: Engine) -> None:
    """A run paused past its lock's expiry, whose lock another sync took: its pages were
    written, but its close would count what the newer run saw as missed. It removes nothing."""
    x, keep = "+31205550000", item("+31205550001")
    run(engine, cfg(), {"NL": page("NL", T0, [item(x), keep])})

    def source(scope: Scope) -> Iterator[Page]:
        yield page("NL", T0 + HOUR, [keep])
        # while this run "sleeps", its lock expires and another process takes it
        with engine.begin() as conn:
            from etl.store.schema import sync_lock

            conn.execute(sync_lock.update().values(holder="other-host:1:x"))

    result = Sync(cfg(), engine=engine, page_source=source).run()
    assert result.status == "failed"
    assert "another sync took it" in (result.scopes[0].error or "")
    assert stored(engine, x).removed_at is None
    with engine.connect() as conn:
        assert (
            conn.execute(select(sync_scopes.c.status).order_by(sync_scopes.c.id.desc())).first()[0]
            == "failed"
        )
    DatabaseLock(engine, holder="other-host:1:x").release()


def assert_a_host_clock_ahead_cannot_take_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With host-a:1:x holding the lock: another host whose clock runs an hour ahead is
    refused (LockHeld), not handed a lock it thinks expired."""
    from etl.store import lock as lock_module

    class HostClockAhead(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> HostClockAhead:
            return super().now(tz) + HOUR  # type: ignore[return-value]

    monkeypatch.setattr(lock_module, "datetime", HostClockAhead)
    try:
        with pytest.raises(LockHeld, match="host-a:1:x"):
            DatabaseLock(engine, ttl=300, holder="host-b:1:y").acquire()
    finally:
        monkeypatch.undo()


def test_lock_expiry_follows_the_database_clock(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose clock runs an hour ahead does not take a live lock (PostgreSQL and
    MariaDB: the server's clock decides; SQLite's database lives on this host)."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite's clock is this host's")
    from etl.store import lock as lock_module

    holder = DatabaseLock(engine, ttl=300, holder="host-a:1:x")
    holder.acquire()
    try:
        assert_a_host_clock_ahead_cannot_take_it(engine, monkeypatch)
        with engine.connect() as conn:
            assert abs(lock_module.database_now(conn) - datetime.now(UTC)) < timedelta(minutes=1)
    finally:
        holder.release()


def test_stopping_for_a_refused_key_or_a_lost_lock_is_not_called_a_signal(
    engine: Engine,
) -> None:
    settings = cfg(countries=("NL", "US"), concurrency=1)

    def refused(scope: Scope) -> Iterator[Page]:
        raise AuthError("Bird refused the access key or organization id: 401")
        yield  # a generator, like the real source

    result = Sync(settings, engine=engine, page_source=refused).run()
    assert result.exit_code == 2
    errors = [s.error or "" for s in result.scopes]
    assert "signal" not in " ".join(errors)
    assert "Bird refused" in errors[1]

    def lose_lock(scope: Scope) -> Iterator[Page]:
        yield (
            page(scope.key, T0, [item("+31205550000")])
            if scope.key == "NL"
            else page(scope.key, T0, [item("+12125550000", "US")])
        )
        sync._on_lock_lost()  # what the lock's keep-alive thread does when it finds it taken

    sync = Sync(settings, engine=engine, page_source=lose_lock)
    lost = sync.run()
    assert lost.status == "failed"
    assert lost.exit_code == 1  # not 143: nobody sent a signal
    assert "lock was lost" in " ".join(s.error or "" for s in lost.scopes)


def test_dead_pid_of_another_pid_space_keeps_its_lock(engine: Engine) -> None:
    """Same hostname, other PID namespace (a container sharing the host's name): its PID
    cannot be checked from here, so its lock is left to expire rather than taken."""
    import socket

    other = f"{socket.gethostname()[:160]}:999999:cafe:0000.1"
    DatabaseLock(engine, holder=other).acquire()
    try:
        with pytest.raises(LockHeld):
            DatabaseLock(engine, holder="me:1:x").acquire()
    finally:
        DatabaseLock(engine, holder=other).release()


def test_an_unexpected_error_fails_its_scope_and_the_run_is_recorded(engine: Engine) -> None:
    """A bug in one scope (here a ValueError from its source) fails that scope with a
    message; the other scopes sync, and the run is finished, not left `running`."""
    settings = cfg(countries=("NL", "US"), concurrency=1)

    def source(scope: Scope) -> Iterator[Page]:
        if scope.key == "NL":
            raise ValueError("year 10000 is out of range")
        yield page(scope.key, T0, [item("+12125550000", "US")])

    result = Sync(settings, engine=engine, page_source=source).run()
    assert result.status == "partial"
    assert [s.status for s in result.scopes] == ["failed", "complete"]
    assert "unexpected error ValueError" in (result.scopes[0].error or "")
    with engine.connect() as conn:
        from etl.store.schema import sync_runs

        assert conn.execute(select(sync_runs.c.status)).scalar_one() == "partial"


def test_relisting_after_the_clock_went_back_is_dated_after_the_removal(
    engine: Engine,
) -> None:
    """Removed at 14:00 by a run whose clock was right; the next run's clock says 13:00.
    Read in time order, the events must still end in `relisted`, not `removed`."""
    x, keep = "+31205550000", item("+31205550001")
    run(engine, cfg(), {"NL": page("NL", T0, [item(x), keep])})
    run(engine, cfg(), {"NL": page("NL", T0 + 2 * HOUR, [keep])})
    run(engine, cfg(), {"NL": page("NL", T0 + HOUR, [item(x), keep])})
    with engine.connect() as conn:
        in_time_order = conn.execute(
            select(number_events.c.event, number_events.c.occurred_at)
            .join(numbers, numbers.c.id == number_events.c.number_id)
            .where(numbers.c.number == x)
            .order_by(number_events.c.occurred_at, number_events.c.id)
        ).all()
    assert [e for e, _ in in_time_order] == ["listed", "removed", "relisted"]
    assert in_time_order[2][1] == T0 + 2 * HOUR  # not before the removal it ends
    assert stored(engine, x).removed_at is None


def test_price_delta_reads_as_the_difference_of_the_prices_shown(engine: Engine) -> None:
    """3.30 -> 1.10 is a delta of -2.2 on every database; on SQLite, whose prices are REALs,
    the view rounds to the 12 decimals the price columns keep elsewhere."""
    x = "+31205550000"

    def priced(amount: int) -> StockItem:
        return StockItem(
            x, "a", "NL", "local", (("voice_inbound", True),), Price("EUR", amount, -1), False
        )

    for hour, amount in enumerate((33, 11, 33)):
        run(engine, cfg(), {"NL": page("NL", T0 + hour * HOUR, [priced(amount)])})
    with engine.connect() as conn:
        deltas = conn.execute(
            text("SELECT price_delta FROM v_price_history ORDER BY price_change_id")
        ).scalars()
        assert [Decimal(str(d)) for d in deltas] == [Decimal("-2.2"), Decimal("2.2")]


def test_an_unexpected_error_in_a_close_fails_that_scope_and_the_run_finishes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import etl.sync as sync_module

    real = sync_module.close_scope

    def close_scope(conn: Any, **kw: Any) -> Any:
        if kw["scope"].country_code == "NL":
            raise KeyError("a bug in the close")
        return real(conn, **kw)

    monkeypatch.setattr(sync_module, "close_scope", close_scope)

    def source(scope: Scope) -> Iterator[Page]:
        country = scope.country_code
        number = "+31205550000" if country == "NL" else "+12125550000"
        yield page(scope.key, T0, [item(number, country)])

    result = Sync(
        cfg(countries=("NL", "US"), concurrency=2), engine=engine, page_source=source
    ).run()
    assert [s.status for s in result.scopes] == ["failed", "complete"]
    with engine.connect() as conn:
        from etl.store.schema import sync_runs

        assert conn.execute(select(sync_runs.c.status)).scalar_one() == "partial"
        assert set(conn.execute(select(sync_scopes.c.status)).scalars()) == {"failed", "complete"}


def test_a_fence_late_in_a_long_transaction_extends_the_lock_from_then(engine: Engine) -> None:
    """PostgreSQL's now() is the transaction's start: a close that took longer than the
    lock's lifetime must not commit a lock that has already expired."""
    import time

    from sqlalchemy import text as sql

    from etl.store.engine import begin_write
    from etl.store.schema import sync_lock

    lock = DatabaseLock(engine, ttl=1.5)
    lock.acquire()
    try:
        with begin_write(engine) as conn:
            conn.execute(sql("SELECT 1"))
            time.sleep(2)
            assert lock.fence(conn)
        with engine.connect() as conn:
            expires = conn.execute(select(sync_lock.c.expires_at)).scalar_one()
        assert expires > datetime.now(UTC)
    finally:
        lock.release()


def test_a_mariadb_url_gets_the_mysql_session_and_the_database_clock(
    engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mariadb+pymysql:// is a MySQL-family URL too: READ COMMITTED, UTC, strict modes, and
    lock times from the server."""
    if engine.dialect.name != "mysql":
        pytest.skip("MariaDB only")
    from sqlalchemy import text as sql

    url = engine.url.set(drivername="mariadb+pymysql")
    maria = make_engine(url.render_as_string(hide_password=False))
    try:
        with maria.connect() as conn:
            isolation, zone, mode = conn.execute(
                sql("SELECT @@tx_isolation, @@session.time_zone, @@session.sql_mode")
            ).one()
        assert (isolation, zone) == ("READ-COMMITTED", "+00:00")
        assert "STRICT_ALL_TABLES" in mode
        holder = DatabaseLock(maria, ttl=300, holder="host-a:1:x")
        holder.acquire()
        try:
            assert_a_host_clock_ahead_cannot_take_it(maria, monkeypatch)
        finally:
            holder.release()
    finally:
        maria.dispose()


def test_the_urls_own_postgresql_options_are_kept(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    from sqlalchemy import text as sql

    url = engine.url.update_query_dict({"options": "-c application_name=from-the-url"})
    pg = make_engine(url.render_as_string(hide_password=False))
    try:
        with pg.connect() as conn:
            name, zone = conn.execute(
                sql("SELECT current_setting('application_name'), current_setting('TimeZone')")
            ).one()
        assert (name, zone) == ("from-the-url", "UTC")
    finally:
        pg.dispose()


def test_a_pages_rows_are_stored_as_sqlalchemys_own_insert_stores_them(engine: Engine) -> None:
    """The page inserts bypass SQLAlchemy's per-row processing (PostgreSQL: one JSON list of
    rows; SQLite: plain values as the driver's own SQL). What they store, read back raw, is
    exactly what SQLAlchemy's own insert of the same values stores: the same text for a
    timestamp on a whole second (SQLite keeps its microseconds), the same price, the same
    booleans."""
    x, y = "+31205550000", "+31205550001"
    odd = StockItem(
        x,
        "a",
        "NL",
        "mobile",
        (("sms_inbound", True), ("voice_inbound", False)),
        Price("EUR", 1234567, -4),
        True,
        "bo-1",
    )
    result = run(engine, cfg(), {"NL": page("NL", T0, [odd])})
    with engine.begin() as conn:
        number_id = conn.execute(
            numbers.insert().returning(numbers.c.id),
            {
                "number": y,
                **attribute_values(odd),
                **price_values(odd.price),
                "first_seen_at": T0,
                "last_seen_at": T0,
                "last_seen_run_id": result.run_id,
                "missed_runs": 0,
            },
        ).scalar_one()
        conn.execute(
            number_events.insert(),
            {"number_id": number_id, "run_id": result.run_id, "occurred_at": T0, "event": "listed"},
        )
    columns = ", ".join(c.name for c in numbers.c if c.name not in ("id", "number"))
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT {columns} FROM numbers ORDER BY number")  # raw, as stored
        ).all()
        events = conn.execute(
            text("SELECT run_id, occurred_at, event, detail FROM number_events ORDER BY number_id")
        ).all()
    assert len(rows) == 2
    assert rows[0] == rows[1]
    assert len(events) == 2
    assert events[0] == events[1]


def test_a_page_longer_than_one_statement_can_carry_is_written_whole(engine: Engine) -> None:
    """Bird's pages hold 99 items, but nothing here relies on it: a page of 1,500 new
    numbers is stored whole, each number with its own id and its own `listed` event. On
    SQLite, whose connections here bind at most 999 values a statement (SQLite's old
    default; builds differ), that takes many statements."""
    if engine.dialect.name == "sqlite":
        event.listen(
            engine,
            "connect",
            lambda dbapi_conn, _record: dbapi_conn.setlimit(
                sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999
            ),
        )
        engine.dispose()  # connections from now on have the limit
    page_items = [item(f"+3120{n:07d}") for n in range(1500)]
    result = run(engine, cfg(), {"NL": page("NL", T0, page_items)})
    assert result.total("listed") == 1500
    assert numbers_and_events(engine) == [(i.number, "listed") for i in page_items]


def test_new_numbers_get_their_own_ids_once_sqlite_numbers_rows_at_random(
    engine: Engine,
) -> None:
    """SQLite numbers a new row the largest rowid + 1, and the sync makes a page's `listed`
    events from the range of rowids its new numbers got. Once a row holds the largest rowid
    there is (2**63 - 1), SQLite picks free rowids at random: each new number must still
    get its own id, and its `listed` event that id."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: the other databases' ids are not rowids")
    last = item("+4930555000", "DE")
    with engine.begin() as conn:
        conn.execute(
            numbers.insert(),
            {
                "id": 2**63 - 1,
                "number": last.number,
                **attribute_values(last),
                **price_values(last.price),
                "first_seen_at": T0,
                "last_seen_at": T0,
                "missed_runs": 0,
            },
        )
    page_items = [item(f"+3120{n:07d}") for n in range(150)]
    result = run(engine, cfg(), {"NL": page("NL", T0, page_items)})
    assert result.total("listed") == 150
    assert numbers_and_events(engine) == [(i.number, "listed") for i in page_items]
    with engine.connect() as conn:
        ids = conn.execute(select(numbers.c.id).where(numbers.c.country_code == "NL")).scalars()
        assert len(set(ids)) == 150


def test_a_changed_event_names_its_fields_alike_on_every_database(engine: Engine) -> None:
    """The `changed` event's detail shows booleans as true/false and text as it is, however
    the database returns them (SQLite's driver gives 0 and 1)."""
    x = "+31205550000"

    def listed(voice: bool, back_order: str | None) -> StockItem:
        return StockItem(
            x,
            "a",
            "NL",
            "local",
            (("sms_inbound", True), ("voice_inbound", voice)),
            Price("EUR", 350, -2),
            back_order is not None,
            back_order,
        )

    run(engine, cfg(), {"NL": page("NL", T0, [listed(True, None)])})
    run(engine, cfg(), {"NL": page("NL", T0 + HOUR, [listed(False, "bo-7")])})
    with engine.connect() as conn:
        details = conn.execute(
            select(number_events.c.detail).where(number_events.c.event == "changed")
        ).scalars()
        assert list(details) == [
            "voice_inbound: true -> false; back_order_required: false -> true; "
            "back_order_stock_id: null -> bo-7"
        ]


def test_a_database_that_goes_away_costs_a_line_a_scope_not_a_traceback(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The database fails as a failed scope is recorded (the server went away): the log
    says so in one line, without the ~70-line traceback it printed for each country."""

    def source(scope: Scope) -> Iterator[Page]:
        raise SourceError("Bird is down")
        yield  # a generator

    def refuse(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().startswith("UPDATE sync_scopes"):
            raise OperationalError(statement, None, Exception("server closed the connection"))

    event.listen(engine, "before_cursor_execute", refuse)
    caplog.set_level(logging.INFO)
    try:
        Sync(cfg(), engine=engine, page_source=source).run()
    finally:
        event.remove(engine, "before_cursor_execute", refuse)
    lines = [r for r in caplog.records if "could not record the end of scope" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [
        "could not record the end of scope NL: server closed the connection"
    ]
    assert [r for r in caplog.records if r.exc_info] == []


@pytest.mark.parametrize("empty_db_url", ["postgresql", "mysql"], indirect=True)
def test_a_lock_refresh_that_fails_is_one_line_and_the_next_one_refreshes(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # a database away for a moment: each failed refresh logged a whole traceback at WARNING
    # (every ttl/3 seconds, in the log an operator reads); now one line, the traceback at -v
    with proxy_to(db_url) as (proxy, proxied):
        engine = make_engine(proxied)
        lock = DatabaseLock(engine, ttl=3, holder="host-a:1:x")
        lock.acquire()
        try:
            with caplog.at_level(logging.WARNING, "etl.store.lock"):
                proxy.down()
                lock.keep_alive(on_lost=lambda: None)
                wait_for(lambda: _refresh_failures(caplog), "a refresh to fail")
                proxy.up()
                back = time.monotonic()
                wait_for(lambda: lock._refreshed > back, "a refresh to succeed")
        finally:
            lock.release()
            engine.dispose()
    failed = _refresh_failures(caplog)
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in failed)
    assert (
        failed[0].getMessage().startswith("could not refresh the sync lock (trying again in 1 s): ")
    )


def _refresh_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("could not refresh")]

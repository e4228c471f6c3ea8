"""The sync end to end: real HTTP to the simulator, real SQLite, PostgreSQL and MariaDB.

Every test runs on the three databases (the `db_url` fixture); in CI the PostgreSQL and
MariaDB runs are required."""

from __future__ import annotations

import contextlib
import copy
import sqlite3
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from etl.errors import LockHeld, SchemaOutOfDate
from etl.records import StockItem
from etl.simulator import Simulator, SyntheticStock
from etl.source.parser import parse_item
from etl.store import migrate
from etl.store.diff import attribute_tuple, attribute_values, price_values
from etl.store.engine import SQLITE_CHECKPOINT_PAGES, make_engine
from etl.store.lock import DatabaseLock
from etl.store.runs import ERROR_CHARS, clipped, joined_errors
from etl.store.schema import (
    availability_snapshots,
    number_events,
    numbers,
    price_changes,
    rejected_items,
    sync_lock,
    sync_runs,
    sync_scopes,
)
from etl.store.writer import _sqlite_attributes, _sqlite_bound
from etl.sync import RunResult, Sync
from tests.conftest import ACCESS_KEY, ORGANIZATION_ID, make_settings


def sync(sim: Simulator, db_url: str, **kw: Any) -> RunResult:
    run_kw = {k: kw.pop(k) for k in ("countries", "accept_removals") if k in kw}
    return Sync(make_settings(sim, db_url, **kw), **run_kw).run()


def row(engine: Engine, number: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(numbers).where(numbers.c.number == number)).one()


def events(engine: Engine, event: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            conn.scalars(
                select(numbers.c.number)
                .join(number_events, number_events.c.number_id == numbers.c.id)
                .where(number_events.c.event == event)
            )
        )


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_first_sync_lists_everything_with_first_and_last_seen(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    result = sync(simulator, db_url)
    assert result.status == "succeeded"
    assert result.exit_code == 0
    total = len(stock.numbers())
    assert result.total("listed") == total
    assert count(engine, numbers) == total
    assert len(events(engine, "listed")) == total
    assert {s.scope.key: s.status for s in result.scopes} == {"US": "complete", "NL": "complete"}
    with engine.connect() as conn:
        first, last, removed = conn.execute(
            select(numbers.c.first_seen_at, numbers.c.last_seen_at, numbers.c.removed_at)
        ).first()  # type: ignore[misc]
        run = conn.execute(select(sync_runs)).one()
        snapshot_total = conn.scalar(select(func.sum(availability_snapshots.c.available_count)))
    assert first == last
    assert removed is None
    assert first.tzinfo is not None
    assert first.utcoffset().total_seconds() == 0
    assert run.started_at <= first <= run.finished_at
    assert run.listed == total
    assert snapshot_total == total
    with engine.connect() as conn:
        stored = conn.execute(select(numbers)).all()
    for number in stored:  # the columns every new number starts with, however it was inserted
        assert number.monthly_price == Decimal(number.price_amount).scaleb(number.price_exponent)
        assert (number.last_seen_run_id, number.missed_runs) == (run.id, 0)
        assert (number.first_missed_at, number.removed_at) == (None, None)
        assert number.first_seen_at == number.last_seen_at


def test_second_sync_advances_last_seen_only(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    number = stock.numbers("US")[0]
    before = row(engine, number)
    result = sync(simulator, db_url)
    after = row(engine, number)
    assert result.status == "succeeded"
    assert after.first_seen_at == before.first_seen_at
    assert after.last_seen_at > before.last_seen_at
    assert count(engine, number_events) == len(stock.numbers())  # only the listed events
    assert count(engine, price_changes) == 0


def test_price_changes_recorded_once_and_equal_prices_ignored(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    changed, respelled = stock.numbers("US")[:2]
    stock.set_price(changed, 4990000, -6)
    old = row(engine, respelled)
    # The same price written another way: amount x 10^exponent is equal.
    stock.set_price(respelled, old.price_amount // 10000, old.price_exponent + 4)
    result = sync(simulator, db_url)
    assert result.total("price_changes") == 1
    with engine.connect() as conn:
        (change,) = conn.execute(select(price_changes)).all()
    assert change.number_id == row(engine, changed).id
    assert str(change.new_monthly_price.normalize()) == "4.99"
    assert change.new_currency == "EUR"
    assert row(engine, changed).monthly_price == change.new_monthly_price
    assert row(engine, respelled).monthly_price == old.monthly_price
    sync(simulator, db_url)
    assert count(engine, price_changes) == 1


def test_failed_scope_removes_nothing_while_a_complete_one_does(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    us_gone, nl_gone = stock.numbers("US")[5], stock.numbers("NL")[5]
    stock.remove(us_gone)
    stock.remove(nl_gone)
    # NL fails on its second page on every try (the client gives up after its retries)
    simulator.faults.add("status", status=400, times=0, country="NL", page=1)
    result = sync(simulator, db_url, page_size=50)
    statuses = {s.scope.key: s.status for s in result.scopes}
    assert statuses == {"US": "complete", "NL": "failed"}
    assert result.status == "partial"
    assert result.exit_code == 1
    assert row(engine, us_gone).removed_at is not None
    assert row(engine, nl_gone).removed_at is None
    assert events(engine, "removed") == [us_gone]
    with engine.connect() as conn:
        nl_scope = conn.execute(
            select(sync_scopes)
            .where(sync_scopes.c.country_code == "NL")
            .order_by(sync_scopes.c.id.desc())
        ).first()
    assert nl_scope is not None
    assert nl_scope.status == "failed"
    assert "400" in (nl_scope.error or "")


def test_a_run_whose_many_scopes_fail_is_recorded_failed_with_its_error_cut_short(
    simulator: Simulator, db_url: str, engine: Engine
) -> None:
    # 240 areas, each answered with an HTML page: their errors together are longer than
    # MySQL's TEXT (65,535 bytes), which left such a run `running`, its failure lost, and
    # the next run called it abandoned
    areas = "|".join(f"+1{code}" for code in range(201, 441))
    simulator.faults.add("html", times=0)
    result = sync(simulator, db_url, countries=["US"], prefixes=f"US={areas}", concurrency=8)
    assert result.status == "failed"
    assert len(result.scopes) == 240
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs).where(sync_runs.c.id == result.run_id)).one()
        scope_errors = conn.scalars(
            select(sync_scopes.c.error).where(sync_scopes.c.run_id == result.run_id)
        ).all()
    assert run.status == "failed"
    assert run.finished_at is not None
    assert len(run.error) <= ERROR_CHARS
    named = run.error.count("US +1")
    assert 0 < named < 240
    assert run.error.endswith(f"; and {240 - named} more: each scope's error is in sync_scopes")
    assert len(scope_errors) == 240
    assert all(error and "HTML" in error.upper() for error in scope_errors), scope_errors[:2]


def test_a_run_error_keeps_whole_scope_errors_and_cuts_only_what_does_not_fit() -> None:
    assert joined_errors([]) is None
    assert joined_errors(["a: failed: x", "b: failed: y"]) == "a: failed: x; b: failed: y"
    many = [f"scope {i}: failed: " + "z" * 80 for i in range(100)]
    text = joined_errors(many, limit=1000)
    assert text is not None
    assert len(text) <= 1000
    kept = text.split("; and ")[0].split("; ")
    assert kept == many[: len(kept)]  # whole, in order
    assert text.endswith(f"; and {100 - len(kept)} more: each scope's error is in sync_scopes")
    alone = joined_errors(["x" * 5000, "y"], limit=1000)
    assert alone is not None
    assert len(alone) <= 1000
    assert alone.startswith("xxx")
    assert "more characters)" in alone
    assert alone.endswith("; and 1 more: each scope's error is in sync_scopes")
    assert clipped("short", 100) == "short"
    cut = clipped("e" * 300, 100)
    assert cut is not None
    assert len(cut) <= 100
    kept_chars = len(cut) - len(cut.lstrip("e"))
    assert cut == "e" * kept_chars + f"... ({300 - kept_chars} more characters)"


def test_a_deleted_lock_row_is_written_again_and_still_locks(
    simulator: Simulator, db_url: str, engine: Engine
) -> None:
    # Deleting the row by hand (to clear a lock that looked stuck) broke every later sync
    # with a NoResultFound traceback, and `db upgrade` did not put it back
    with engine.begin() as conn:
        conn.execute(sync_lock.delete())
    assert sync(simulator, db_url).status == "succeeded"
    first = DatabaseLock(engine, holder="host-a:1:x")
    first.acquire()
    try:
        with pytest.raises(LockHeld, match="host-a:1:x"):
            DatabaseLock(engine, holder="host-b:1:y").acquire()
    finally:
        first.release()
    with engine.begin() as conn:
        conn.execute(sync_lock.delete())
    lock = DatabaseLock(engine, holder="host-c:1:z")
    lock.acquire()
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(sync_lock.c.name, sync_lock.c.holder)).all()
        assert [tuple(r) for r in rows] == [("sync", "host-c:1:z")]
    finally:
        lock.release()


def test_removal_after_confirmations_at_first_missing_run(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url, removal_confirmations=2)
    gone = stock.numbers("NL")[3]
    stock.remove(gone)
    first_miss = sync(simulator, db_url, removal_confirmations=2)
    assert row(engine, gone).removed_at is None
    assert first_miss.total("removed") == 0
    second_miss = sync(simulator, db_url, removal_confirmations=2)
    assert second_miss.total("removed") == 1
    removed = row(engine, gone)
    with engine.connect() as conn:
        first_run_nl = conn.execute(
            select(sync_scopes.c.finished_at).where(
                sync_scopes.c.run_id == first_miss.run_id, sync_scopes.c.country_code == "NL"
            )
        ).scalar_one()
    # removed_at is when the first missing run completed the listing, not the second
    assert removed.removed_at <= first_run_nl
    assert removed.removed_at > removed.last_seen_at
    assert events(engine, "removed") == [gone]


def test_empty_listing_is_held_until_accepted(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    us = set(stock.numbers("US"))
    stock.clear("US")
    held = sync(simulator, db_url)
    statuses = {s.scope.key: s.status for s in held.scopes}
    assert statuses == {"US": "held", "NL": "complete"}
    assert held.status == "partial"
    assert held.exit_code == 1
    assert count(engine, number_events) == len(us) + len(stock.numbers("NL"))  # no removal
    us_scope = next(s for s in held.scopes if s.scope.key == "US")
    assert "--accept-removals US" in (us_scope.error or "")
    accepted = sync(simulator, db_url, accept_removals=["US"])
    assert accepted.status == "succeeded"
    assert set(events(engine, "removed")) == us


def test_relisting_keeps_first_seen(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    number = stock.numbers("US")[7]
    item = copy.deepcopy(next(i for i in stock.items("US") if i["numberString"] == number))
    first_seen = row(engine, number).first_seen_at
    stock.remove(number)
    sync(simulator, db_url)
    assert row(engine, number).removed_at is not None
    stock.put(item)
    result = sync(simulator, db_url)
    back = row(engine, number)
    assert result.total("relisted") == 1
    assert back.removed_at is None
    assert back.first_seen_at == first_seen
    assert events(engine, "relisted") == [number]


def test_new_stock_item_id_is_changed_not_removed(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    number = stock.numbers("NL")[0]
    item = copy.deepcopy(next(i for i in stock.items("NL") if i["numberString"] == number))
    old_id = item["id"]
    item["id"] = "5c1d2d10-0000-4000-8000-00000000beef"
    stock.put(item)
    result = sync(simulator, db_url)
    assert result.total("changed") == 1
    assert result.total("removed") == 0
    assert row(engine, number).stock_item_id == item["id"]
    with engine.connect() as conn:
        detail = conn.scalar(
            select(number_events.c.detail).where(number_events.c.event == "changed")
        )
    assert detail == f"stock_item_id: {old_id} -> {item['id']}"


def test_rejected_item_is_stored_never_removed_and_keeps_its_price(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    number = stock.numbers("US")[2]
    item = copy.deepcopy(next(i for i in stock.items("US") if i["numberString"] == number))
    price_before = row(engine, number).monthly_price
    item["monthlyPrice"] = {"currencyCode": "EUR", "amount": "3.50", "exponent": -6}
    stock.put(item)
    result = sync(simulator, db_url)
    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.total("rejected") == 1
    assert row(engine, number).removed_at is None
    assert row(engine, number).monthly_price == price_before
    assert count(engine, price_changes) == 0
    with engine.connect() as conn:
        rejected = conn.execute(select(rejected_items)).one()
    assert rejected.number == number
    assert "amount" in rejected.reason
    assert '"3.50"' in rejected.payload


def test_unreadable_rejected_item_blocks_removals_of_its_scope(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    gone = stock.numbers("US")[1]
    stock.remove(gone)
    stock.put({"id": "x", "countryCode": "US", "numberString": 12125550000})
    result = sync(simulator, db_url)
    assert row(engine, gone).removed_at is None
    assert result.total("removed") == 0
    us = next(s for s in result.scopes if s.scope.key == "US")
    assert "no readable number" in (us.error or "")


def test_lock_held_by_another_sync(simulator: Simulator, db_url: str, engine: Engine) -> None:
    other = DatabaseLock(engine, ttl=300, holder="elsewhere:1:abc")
    other.acquire()
    try:
        with pytest.raises(LockHeld, match="another sync is running"):
            sync(simulator, db_url)
    finally:
        other.release()
    assert sync(simulator, db_url).status == "succeeded"


def test_expired_lock_is_taken_over(simulator: Simulator, db_url: str, engine: Engine) -> None:
    from datetime import UTC, timedelta

    past = DatabaseLock(
        engine,
        ttl=10,
        holder="crashed-host:1:abc",
        clock=lambda: datetime.now(UTC) - timedelta(hours=1),
    )
    past.acquire()  # expired an hour ago, never released
    assert sync(simulator, db_url).status == "succeeded"


def test_sync_on_database_behind_migrations_says_so(
    simulator: Simulator, empty_db_url: str
) -> None:
    with pytest.raises(SchemaOutOfDate, match="numbers-etl db upgrade"):
        sync(simulator, empty_db_url)


def test_timestamps_are_utc_aware_on_every_table(
    simulator: Simulator, db_url: str, engine: Engine
) -> None:
    sync(simulator, db_url)
    with engine.connect() as conn:
        values = [
            conn.scalar(select(sync_runs.c.started_at)),
            conn.scalar(select(sync_scopes.c.finished_at)),
            conn.scalar(select(number_events.c.occurred_at)),
            conn.scalar(select(availability_snapshots.c.taken_at)),
        ]
    for value in values:
        assert isinstance(value, datetime)
        assert value.utcoffset() is not None
        assert value.utcoffset().total_seconds() == 0


def test_timestamps_keep_microseconds(engine: Engine) -> None:
    from datetime import UTC, timedelta, timezone

    moment = datetime(2026, 5, 17, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        conn.execute(sync_runs.insert().values(started_at=moment, status="succeeded"))
        stored = conn.scalar(select(sync_runs.c.started_at))
    assert stored == moment
    assert stored.tzinfo == UTC
    assert stored.microsecond == 123456


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_pages_commit_without_waiting_for_the_disk_and_closes_do(
    simulator: Simulator, db_url: str
) -> None:
    """PostgreSQL: each scope's connection commits its pages with synchronous_commit off
    and goes back to the pool reset; the closes, after every scope's pages, commit with it
    on."""
    from sqlalchemy import event, text

    from etl.store.engine import make_engine

    engine = make_engine(db_url, pool_size=1)
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "synchronous_commit" in statement:
            seen.append(statement)

    settings = make_settings(simulator, db_url, countries="US,NL", concurrency=1)
    result = Sync(settings, engine=engine).run()
    assert result.status == "succeeded"
    assert (
        seen
        == ["SET synchronous_commit TO OFF", "RESET synchronous_commit"] * 2
        + ["SET LOCAL synchronous_commit TO ON"] * 2
    )
    with engine.connect() as conn:  # the pool's one connection, as the scopes left it
        assert conn.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
    engine.dispose()


def edge_items() -> list[dict[str, Any]]:
    """Valid items at the edges of what each column holds: the longest strings, text that
    JSON and SQL both escape, the largest and smallest prices, unknown channels."""
    base: dict[str, Any] = {
        "countryCode": "US",
        "type": "mobile",
        "capabilities": {"voice": {"inbound": True, "outbound": False}},
        "monthlyPrice": {"currencyCode": "USD", "amount": 1, "exponent": 0},
        "backOrderRequired": False,
        "backOrderStockId": None,
    }
    return [
        {
            **base,
            "numberString": "+12125550101",
            "id": "é\"'\\ ñ 😀 " + "x" * 55,  # 64 characters
            "backOrderRequired": True,
            "backOrderStockId": "b" * 63 + "€",
        },
        {
            **base,
            "numberString": "+12125550102",
            "id": "max-price",
            "monthlyPrice": {"currencyCode": "USD", "amount": 10**18 - 1, "exponent": -12},
        },
        {
            **base,
            "numberString": "+12125550103",
            "id": "tiny-price",
            "type": "toll-free",
            "monthlyPrice": {"currencyCode": "JPY", "amount": 1, "exponent": -12},
        },
        {
            **base,
            "numberString": "+12125550106",
            # SQLite is given a None of this column as the integer 0: the text "0" stays
            "id": "0",
            "backOrderRequired": True,
            "backOrderStockId": "0",
            "capabilities": {"0": {"inbound": True, "outbound": False}},
        },
        {
            **base,
            "numberString": "+12125550104",
            "id": "unknown-channels",
            "type": "x" * 32,
            "capabilities": {
                "whatsapp": {"inbound": False, "outbound": True},
                "rcs": {"inbound": True, "outbound": False},
                "fax_2": {"inbound": True, "outbound": True},
            },
            "monthlyPrice": {"currencyCode": "EUR", "amount": 0, "exponent": 2},
        },
        {
            **base,
            "numberString": "+12125550105",
            "id": "the-most-other-channels",
            # six channels of the longest names, all on: 497 of other_capabilities' 512
            "capabilities": {c * 32: {"inbound": True, "outbound": True} for c in "abcdef"},
            "monthlyPrice": {"currencyCode": "EUR", "amount": 0, "exponent": 2},
        },
    ]


def test_every_value_is_stored_exactly(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    """What the parser read is what the database holds, column by column, on every database
    and however the page's new numbers were inserted (arrays, JSON rows, executemany)."""
    items = edge_items()
    for item in items:
        stock.put(item)
    result = sync(simulator, db_url)
    assert result.status == "succeeded"
    assert result.total("rejected") == 0
    for raw in items:
        parsed = parse_item(raw)
        assert isinstance(parsed, StockItem)
        stored = row(engine, parsed.number)
        expected = attribute_values(parsed) | price_values(parsed.price)
        monthly = expected.pop("monthly_price")
        assert {k: getattr(stored, k) for k in expected} == expected
        if engine.dialect.name == "sqlite":  # a REAL there: the exact price is amount/exponent
            assert float(stored.monthly_price) == float(monthly)
        else:
            assert stored.monthly_price == monthly
    assert row(engine, "+12125550104").other_capabilities == (
        "fax_2_inbound,fax_2_outbound,rcs_inbound"
    )
    assert len(row(engine, "+12125550105").other_capabilities) == 497
    assert row(engine, "+12125550106").back_order_stock_id == "0"


def test_sqlite_is_given_a_new_numbers_values_as_they_are_with_bools_and_nones_as_ints() -> None:
    """SQLite's tracked values of a new number are the general ones, value for value, with
    each bool as 0 or 1 and each None as 0 (which its insert turns back into NULL)."""
    for raw in edge_items():
        item = parse_item(raw)
        assert isinstance(item, StockItem)
        general = attribute_tuple(item)
        sqlite = _sqlite_attributes(item)
        assert sqlite == tuple(map(_sqlite_bound, general))
        assert [type(v) for v in sqlite] == [
            int if v is None or isinstance(v, bool) else type(v) for v in general
        ]


def test_sqlite_checkpoints_its_log_at_10000_pages_and_deletes_it_when_the_sync_ends(
    tmp_path: Path,
) -> None:
    """A sync's commits leave SQLite's write-ahead log to grow past SQLite's default of
    1,000 pages (each checkpoint syncs two files to disk), never past the sync's own limit;
    the log is gone once the sync's connections close."""
    path = tmp_path / "history.sqlite"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    wal = Path(f"{path}-wal")
    sizes: list[int] = []
    stock = SyntheticStock(seed=7, countries=("US", "NL"), size=8000)
    with Simulator(stock, access_key=ACCESS_KEY, organization_id=ORGANIZATION_ID) as sim:
        result = Sync(
            make_settings(sim, url), on_page=lambda *_: sizes.append(wal.stat().st_size)
        ).run()
    assert result.status == "succeeded"
    assert not wal.exists()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    frame = 24 + page_size  # each page in the log has a header of its own
    assert 1100 * frame < max(sizes) <= 32 + (SQLITE_CHECKPOINT_PAGES + 100) * frame


def test_a_listing_that_loops_fails_its_scope_saying_so_once(
    simulator: Simulator, db_url: str
) -> None:
    simulator.faults.add("repeat_token")
    result = sync(simulator, db_url, page_size=50)
    failed = [s for s in result.scopes if s.status == "failed"]  # those of two pages or more
    assert failed
    for scope in failed:
        error = scope.error or ""
        assert "loop detected" in error
        assert error.endswith("the scope cannot be paged to its end; nothing removed")
        assert error.count("removed") == 1

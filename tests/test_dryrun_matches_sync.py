"""`sync --dry-run` predicts what the sync then does: each case builds a history, runs the
dry run (which must write nothing), then the real sync on the same listing, and compares
their counts and statuses per scope, on every database."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select

from etl.config import Settings
from etl.dryrun import dry_run
from etl.records import Page, Price, Rejection, Scope, StockItem
from etl.store.schema import metadata
from etl.sync import RunResult, Sync

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
KINDS = ("listed", "removed", "relisted", "changed", "price_changes")
Listing = dict[str, list[Page]]


def item(number: str, country: str = "NL", amount: int = 350) -> StockItem:
    return StockItem(
        number, "a", country, "local", (("voice_inbound", True),), Price("EUR", amount, -2), False
    )


def cfg(engine: Engine, **overrides: Any) -> Settings:
    url = engine.url.render_as_string(hide_password=False)
    values: dict[str, Any] = {"countries": ("NL",), "database_url": url}
    return Settings(**(values | overrides))


def pg(
    key: str,
    at: datetime,
    items: Iterable[StockItem] = (),
    rejections: Iterable[Rejection] = (),
    index: int = 0,
    token: str | None = None,
) -> Page:
    return Page(key, index, at, tuple(items), tuple(rejections), token)


def source_of(listing: Listing) -> Callable[[Scope], Iterator[Page]]:
    def source(scope: Scope) -> Iterator[Page]:
        yield from listing.get(scope.key, [])

    return source


def real(engine: Engine, settings: Settings, listing: Listing, **kw: Any) -> RunResult:
    return Sync(settings, engine=engine, page_source=source_of(listing), **kw).run()


def table_sizes(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }


def assert_dry_run_predicts(
    engine: Engine, settings: Settings, listing: Listing, accept: tuple[str, ...] = ()
) -> None:
    before = table_sizes(engine)
    dry = dry_run(settings, page_source=source_of(listing), accept_removals=accept)
    assert table_sizes(engine) == before, "the dry run wrote something"
    done = real(engine, settings, listing, accept_removals=accept)
    predicted = {s.scope.key: ({k: s.counts[k] for k in KINDS}, s.status) for s in dry.scopes}
    actual = {s.scope.key: ({k: getattr(s, k) for k in KINDS}, s.status) for s in done.scopes}
    assert predicted == actual


def test_a_number_that_moves_to_another_country(engine: Engine) -> None:
    settings = cfg(engine, countries=("NL", "BE"), max_removal_fraction=Decimal(1))
    x = "+31205550000"
    real(engine, settings, {
        "NL": [pg("NL", T0, [item(x), item("+31205550001")])],
        "BE": [pg("BE", T0, [item("+32205550001", "BE")])],
    })  # fmt: skip
    assert_dry_run_predicts(engine, settings, {
        "NL": [pg("NL", T0 + HOUR, [item("+31205550001")])],
        "BE": [pg("BE", T0 + HOUR, [item("+32205550001", "BE"), item(x, "BE")])],
    })  # fmt: skip


def test_a_new_number_in_two_countries_listings(engine: Engine) -> None:
    """A +1 number in the US and the Canadian listing: the sync writes it once (US) and the
    CA page moves it (changed); the dry run counted it new in both, and available in both
    for the guard: it let US remove 3 of "6" where the sync held US at 3 of 5."""
    settings = cfg(engine, countries=("US", "CA"), concurrency=1)
    us = [f"+121255500{i:02d}" for i in range(5)]
    ca, x = "+14165550001", "+12125559999"
    real(engine, settings, {
        "US": [pg("US", T0, [item(n, "US") for n in us])],
        "CA": [pg("CA", T0, [item(ca, "CA")])],
    })  # fmt: skip
    assert_dry_run_predicts(engine, settings, {
        "US": [pg("US", T0 + HOUR, [item(us[0], "US"), item(us[1], "US"), item(x, "US")])],
        "CA": [pg("CA", T0 + HOUR, [item(ca, "CA"), item(x, "CA")])],
    })  # fmt: skip
    # both listings raise its price: one price change (US), not two
    assert_dry_run_predicts(engine, settings, {
        "US": [pg("US", T0 + 2 * HOUR, [item(n, "US") for n in us] + [item(x, "US", 400)])],
        "CA": [pg("CA", T0 + 2 * HOUR, [item(ca, "CA"), item(x, "CA", 400)])],
    }, accept=("US",))  # fmt: skip


def test_a_number_twice_in_one_listing_at_two_prices(engine: Engine) -> None:
    """The dry run counted one price change where the sync records two (the README called
    it the one difference); it now reads the later page against the earlier one's."""
    settings = cfg(engine)
    x = "+31205550000"
    real(engine, settings, {"NL": [pg("NL", T0, [item(x, amount=350)])]})
    assert_dry_run_predicts(engine, settings, {
        "NL": [
            pg("NL", T0 + HOUR, [item(x, amount=400)], token="t"),
            pg("NL", T0 + HOUR, [item(x, amount=450)], index=1),
        ]
    })  # fmt: skip


def test_the_guard_counts_the_numbers_this_run_lists(engine: Engine) -> None:
    """New and relisted numbers are available when the scope closes: 3 gone of 4 old is
    more than half, but not of the 14 the scope then has."""
    settings = cfg(engine)
    old = [f"+3120555000{i}" for i in range(4)]
    real(engine, settings, {"NL": [pg("NL", T0, [item(n) for n in old])]})
    new = [item(f"+3120666000{i}") for i in range(10)]
    assert_dry_run_predicts(engine, settings, {"NL": [pg("NL", T0 + HOUR, [item(old[0]), *new])]})


def test_the_guard_with_relisted_numbers(engine: Engine) -> None:
    settings = cfg(engine)
    numbers_ = [f"+3120555000{i}" for i in range(5)]
    real(engine, settings, {"NL": [pg("NL", T0, [item(n) for n in numbers_])]})
    real(engine, settings, {"NL": [pg("NL", T0 + HOUR, [item(n) for n in numbers_[:3]])]})
    back = [item(n) for n in numbers_[1:]]  # 2 relisted, 1 missed
    assert_dry_run_predicts(engine, settings, {"NL": [pg("NL", T0 + 2 * HOUR, back)]})


def test_items_of_another_country_are_rejected_as_the_sync_rejects_them(
    engine: Engine,
) -> None:
    settings = cfg(engine, max_removal_fraction=Decimal(1))
    x = "+31205550000"
    real(engine, settings, {"NL": [pg("NL", T0, [item(x)])]})
    assert_dry_run_predicts(engine, settings, {
        "NL": [pg("NL", T0 + HOUR, [item(x, "BE"), item("+32205550009", "BE")])],
    })  # fmt: skip


def test_accepted_removals(engine: Engine) -> None:
    settings = cfg(engine)
    numbers_ = [f"+3120555000{i}" for i in range(4)]
    real(engine, settings, {"NL": [pg("NL", T0, [item(n) for n in numbers_])]})
    listing = {"NL": [pg("NL", T0 + HOUR, [item(numbers_[0])])]}
    assert_dry_run_predicts(engine, settings, listing, accept=("NL",))


def test_a_number_rejected_on_one_page_and_valid_on_a_later_one(engine: Engine) -> None:
    settings = cfg(engine, max_removal_fraction=Decimal(1))
    x = "+31205550000"
    real(engine, settings, {"NL": [pg("NL", T0, [item(x)])]})
    bad = Rejection("monthlyPrice is missing", {"numberString": x}, x)
    assert_dry_run_predicts(engine, settings, {
        "NL": [
            pg("NL", T0 + HOUR, [], [bad], 0, "t1"),
            pg("NL", T0 + HOUR, [item(x, amount=999)], [], 1, None),
        ],
    })  # fmt: skip


def test_a_removed_number_back_as_an_invalid_item_and_an_empty_listing(
    engine: Engine,
) -> None:
    settings = cfg(engine, max_removal_fraction=Decimal(1))
    x, keep = "+31205550000", item("+31205550001")
    real(engine, settings, {"NL": [pg("NL", T0, [item(x), keep])]})
    real(engine, settings, {"NL": [pg("NL", T0 + HOUR, [keep])]})
    bad = Rejection("monthlyPrice is missing", {"numberString": x}, x)
    assert_dry_run_predicts(engine, settings, {"NL": [pg("NL", T0 + 2 * HOUR, [keep], [bad])]})
    three = cfg(engine, removal_confirmations=3)
    assert_dry_run_predicts(engine, three, {"NL": [pg("NL", T0 + 3 * HOUR, [])]})


def test_the_dry_run_reads_while_a_sync_writes(engine: Engine) -> None:
    """SQLite: a sync's page holds the write lock (BEGIN IMMEDIATE); the dry run only
    reads, and must not queue behind it."""
    import time

    import pytest

    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    settings = cfg(engine, max_removal_fraction=Decimal(1))
    real(engine, settings, {"NL": [pg("NL", T0, [item("+31205550000")])]})
    with engine.begin():  # BEGIN IMMEDIATE, as a sync's page transaction
        started = time.monotonic()
        report = dry_run(settings, page_source=source_of({"NL": [pg("NL", T0, [])]}))
        assert time.monotonic() - started < 5
    assert report.scopes[0].status == "complete"


def test_a_database_behind_its_migrations_is_refused_as_the_sync_refuses_it(
    empty_db_url: str,
) -> None:
    import pytest

    from etl.errors import SchemaOutOfDate

    settings = Settings(countries=("NL",), database_url=empty_db_url)
    with pytest.raises(SchemaOutOfDate, match="numbers-etl db upgrade"):
        dry_run(settings, page_source=source_of({"NL": [pg("NL", T0, [item("+31205550000")])]}))


def bad(number: str) -> Rejection:
    return Rejection("monthlyPrice is missing", {"numberString": number}, number)


def test_removed_number_rejected_then_valid_same_scope(engine: Engine) -> None:
    """A removed number comes back as an invalid item on page 1, valid on page 2."""
    settings = cfg(engine, max_removal_fraction=Decimal(1))
    x, keep = "+31205550000", item("+31205550001")
    real(engine, settings, {"NL": [pg("NL", T0, [item(x), keep])]})
    real(engine, settings, {"NL": [pg("NL", T0 + HOUR, [keep])]})  # x removed
    assert_dry_run_predicts(engine, settings, {
        "NL": [
            pg("NL", T0 + 2 * HOUR, [keep], [bad(x)], 0, "t1"),
            pg("NL", T0 + 2 * HOUR, [item(x)], [], 1, None),
        ],
    })  # fmt: skip


def test_guard_rejected_relisting_counted_in_the_wrong_scope(engine: Engine) -> None:
    """A removed +3120 number comes back as a rejected item in the +3110 scope's listing
    (outside its prefix). The sync relists it into +3120 (where its number belongs);
    the dry run counts it as available in +3110. In +3120 that flips the guard."""
    settings = cfg(engine, prefixes={"NL": ("+3120", "+3110")})
    x = "+31205550000"
    a, b, c = "+31205550001", "+31205550002", "+31205550003"
    y = "+31105550000"
    real(engine, settings, {
        "NL +3120": [pg("NL +3120", T0, [item(n) for n in (x, a, b, c)])],
        "NL +3110": [pg("NL +3110", T0, [item(y)])],
    })  # fmt: skip
    real(
        engine,
        settings,
        {
            "NL +3120": [pg("NL +3120", T0 + HOUR, [item(n) for n in (a, b, c)])],
            "NL +3110": [pg("NL +3110", T0 + HOUR, [item(y)])],
        },
    )  # x removed (1 of 4 = 25%)
    # now +3120 lists only a: b, c missed -> 2 of 3 (held) in the dry run's count,
    # 2 of 4 (a, b, c, x relisted by +3110's rejection) = 50% (proceeds) in the sync
    assert_dry_run_predicts(engine, settings, {
        "NL +3120": [pg("NL +3120", T0 + 2 * HOUR, [item(a)])],
        "NL +3110": [pg("NL +3110", T0 + 2 * HOUR, [item(y), item(x)])],
    })  # fmt: skip


def test_guard_types_rejected_relisting_of_another_type(engine: Engine) -> None:
    """types = mobile. A removed number stored as 'local' ... only reachable when types
    changed; instead: country scopes NL/BE, a removed BE number rejected in NL."""
    settings = cfg(engine, countries=("NL", "BE"))
    x = "+32205550000"
    a, b, c = "+32205550001", "+32205550002", "+32205550003"
    n1 = "+31205550001"
    real(engine, settings, {
        "BE": [pg("BE", T0, [item(n, "BE") for n in (x, a, b, c)])],
        "NL": [pg("NL", T0, [item(n1)])],
    })  # fmt: skip
    real(
        engine,
        settings,
        {
            "BE": [pg("BE", T0 + HOUR, [item(n, "BE") for n in (a, b, c)])],
            "NL": [pg("NL", T0 + HOUR, [item(n1)])],
        },
    )  # x removed
    assert_dry_run_predicts(engine, settings, {
        "BE": [pg("BE", T0 + 2 * HOUR, [item(a, "BE")])],
        "NL": [pg("NL", T0 + 2 * HOUR, [item(n1)], [bad(x)])],
    })  # fmt: skip


def test_guard_flip_rejected_then_valid_same_scope(engine: Engine) -> None:
    """Stored a,b,c,d (+ removed x). Listing: page 1 x rejected, page 2 x and a valid.
    Sync: 3 of 5 available (60%) -> held. Dry run counts x twice: 3 of 6 (50%) -> removes."""
    settings = cfg(engine)
    x = "+31205550000"
    abcd = [f"+3120555000{i}" for i in range(1, 5)]
    real(engine, settings, {"NL": [pg("NL", T0, [item(n) for n in (x, *abcd)])]})
    real(engine, settings, {"NL": [pg("NL", T0 + HOUR, [item(n) for n in abcd])]})  # x removed
    assert_dry_run_predicts(engine, settings, {
        "NL": [
            pg("NL", T0 + 2 * HOUR, [], [bad(x)], 0, "t1"),
            pg("NL", T0 + 2 * HOUR, [item(x), item(abcd[0])], [], 1, None),
        ],
    })  # fmt: skip


def test_a_missing_database_file_is_refused_as_the_sync_refuses_it(tmp_path: Any) -> None:
    """Only the default SQLite file is created by the sync; another missing one is not an
    empty history but a database that `db upgrade` must create first."""
    import pytest

    from etl.errors import SchemaOutOfDate

    settings = Settings(countries=("NL",), database_url=f"sqlite:///{tmp_path}/mine.sqlite")
    with pytest.raises(SchemaOutOfDate, match="db upgrade"):
        dry_run(settings, page_source=source_of({"NL": [pg("NL", T0, [item("+31205550000")])]}))
    assert not (tmp_path / "mine.sqlite").exists()


def test_the_dry_run_shows_prices_in_plain_digits(engine: Engine) -> None:
    settings = cfg(engine)
    tiny = StockItem(
        "+31205550100", "a", "NL", "local", (), Price("EUR", 1, -12), False
    )  # fmt: skip
    real(engine, settings, {"NL": [pg("NL", T0, [item("+31205550101")])]})
    raised = item("+31205550101", amount=35000)
    dry = dry_run(settings, page_source=source_of({"NL": [pg("NL", T0 + HOUR, [tiny, raised])]}))
    examples = dry.scopes[0].examples
    assert examples["listed"] == ["+31205550100 0.000000000001 EUR"]
    assert examples["price_changes"] == ["+31205550101: 3.50 EUR -> 350.00 EUR"]

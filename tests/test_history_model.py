"""Property tests of the history against a plain-Python reference model.

Random sequences of stock listings, page splits and orders, duplicated items, failed and
killed runs, and a clock that can step back drive the real Sync (pages go through the
real writer into a real SQLite file); after each step the database must equal the model."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sqlalchemy import Engine, func, select

from etl.config import Settings
from etl.errors import SourceError
from etl.records import Page, Price, Rejection, Scope, StockItem
from etl.store import migrate
from etl.store.engine import make_engine
from etl.store.schema import number_events, numbers, price_changes
from etl.sync import Sync

NUMBERS = [f"+3120555{n:04d}" for n in range(10)]
# Prices as exact values; each has several equal (amount, exponent) spellings.
VALUES = [Decimal("1.5"), Decimal("2"), Decimal("3.25")]
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def spellings(value: Decimal) -> list[tuple[int, int]]:
    out = []
    for exponent in (-6, -4, -2):
        amount = value.scaleb(-exponent)
        if amount == amount.to_integral_value():
            out.append((int(amount), exponent))
    return out


class SimulatedKill(BaseException):
    """Raised from the page source: the process dies mid-run, nothing is cleaned up."""


@dataclass
class Listing:
    items: dict[str, StockItem]


def make_item(number: str, value: Decimal, spelling: int, stock_id: str) -> StockItem:
    forms = spellings(value)
    amount, exponent = forms[spelling % len(forms)]
    return StockItem(
        number=number,
        stock_item_id=stock_id,
        country_code="NL",
        number_type="local",
        capabilities=(("voice_inbound", True),),
        price=Price("EUR", amount, exponent),
        back_order_required=False,
    )


listing_strategy = st.dictionaries(
    st.sampled_from(NUMBERS),
    st.tuples(st.sampled_from(VALUES), st.integers(0, 2), st.sampled_from(["a", "b"])),
    max_size=len(NUMBERS),
).map(lambda d: Listing({n: make_item(n, *v) for n, v in d.items()}))


@dataclass
class ModelNumber:
    first_seen: datetime
    last_seen: datetime
    price: Price
    stock_item_id: str
    removed_at: datetime | None = None
    missed: int = 0
    first_missed: datetime | None = None


class Model:
    """The contract's semantics, written as plainly as possible."""

    def __init__(self, confirmations: int, max_fraction: Decimal = Decimal(1)) -> None:
        self.confirmations = confirmations
        self.max_fraction = max_fraction
        self.numbers: dict[str, ModelNumber] = {}
        self.price_changes = 0
        self.events: dict[str, int] = {"listed": 0, "removed": 0, "relisted": 0, "changed": 0}

    def see(self, item: StockItem, at: datetime) -> None:
        known = self.numbers.get(item.number)
        if known is None:
            self.numbers[item.number] = ModelNumber(at, at, item.price, item.stock_item_id)
            self.events["listed"] += 1
            return
        self._sighted(known, at)
        if known.price.value != item.price.value or known.price.currency != item.price.currency:
            known.price = item.price
            self.price_changes += 1
        if known.stock_item_id != item.stock_item_id:
            known.stock_item_id = item.stock_item_id
            self.events["changed"] += 1

    def see_rejected(self, number: str, at: datetime) -> None:
        """An invalid item: its number counts as seen; nothing else of it changes."""
        known = self.numbers.get(number)
        if known is not None:
            self._sighted(known, at)

    def _sighted(self, known: ModelNumber, at: datetime) -> None:
        """A stored number seen again, valid or not."""
        known.last_seen = max(known.last_seen, at)
        if known.removed_at is not None:
            # relisted no earlier than the removal it ends, and last seen then
            known.last_seen = max(known.last_seen, known.removed_at)
            known.removed_at = None
            self.events["relisted"] += 1
        known.missed, known.first_missed = 0, None

    def complete(self, seen: set[str], at: datetime, accepted: bool = False) -> bool:
        """A complete listing; False when the mass-removal guard held it."""
        available = [s for s in self.numbers.values() if s.removed_at is None]
        missed = [s for n, s in self.numbers.items() if n not in seen and s.removed_at is None]
        due = [s for s in missed if s.missed + 1 >= self.confirmations]
        held = (
            not accepted
            and self.max_fraction < 1
            and bool(available)
            and (len(missed) == len(available) or len(due) > self.max_fraction * len(available))
        )
        for state in missed:
            state.missed += 1
            state.first_missed = state.first_missed or at
            if not held and state.missed >= self.confirmations:
                state.removed_at = max(state.first_missed, state.last_seen)
                self.events["removed"] += 1
        return not held


def split_pages(items: list[StockItem | str], page_size: int, at: datetime) -> list[Page]:
    """Pages of ``items``; a str is the number of an item that failed validation."""
    chunks = [items[i : i + page_size] for i in range(0, len(items), page_size)] or [[]]
    return [
        Page(
            "NL",
            i,
            at,
            tuple(x for x in chunk if not isinstance(x, str)),
            tuple(
                Rejection("monthlyPrice is missing", {"numberString": x}, x)
                for x in chunk
                if isinstance(x, str)
            ),
            None if i == len(chunks) - 1 else f"t{i}",
        )
        for i, chunk in enumerate(chunks)
    ]


def listing_pages(
    listing: Listing,
    page_size: int,
    seed: int,
    at: datetime,
    rejected: frozenset[str] = frozenset(),
) -> list[Page]:
    """The listing in a random order, with a few items listed twice, split into pages; the
    items of ``rejected`` numbers come as invalid items."""
    rng = random.Random(seed)
    items: list[StockItem | str] = [
        i.number if i.number in rejected else i for i in listing.items.values()
    ]
    rng.shuffle(items)
    for item in rng.sample(items, k=min(len(items), rng.randint(0, 2))):
        items.insert(rng.randint(0, len(items)), item)
    return split_pages(items, page_size, at)


def run(
    engine: Engine,
    cfg: Settings,
    pages: list[Page],
    *,
    fail_at: int | None = None,
    kill_at: int | None = None,
    accept: bool = False,
) -> None:
    def source(scope: Scope) -> Iterator[Page]:
        for page in pages:
            if page.index == fail_at:
                raise SourceError("listing failed (simulated 503s)")
            if page.index == kill_at:
                raise SimulatedKill
            yield page

    Sync(cfg, engine=engine, page_source=source, accept_removals=["NL"] if accept else ()).run()


def state_of(engine: Engine) -> dict[str, tuple[object, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                numbers.c.number,
                numbers.c.first_seen_at,
                numbers.c.last_seen_at,
                numbers.c.removed_at,
                numbers.c.currency,
                numbers.c.monthly_price,
                numbers.c.stock_item_id,
            )
        )
        return {r[0]: tuple(r[1:]) for r in rows}


def history_counts(engine: Engine) -> tuple[dict[str, int], int]:
    with engine.connect() as conn:
        events = dict(
            conn.execute(
                select(number_events.c.event, func.count()).group_by(number_events.c.event)
            ).all()
        )
        changes = conn.execute(select(func.count()).select_from(price_changes)).scalar_one()
    return {k: int(v) for k, v in events.items()}, int(changes)


@pytest.fixture(scope="module")
def template_db() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp())
    path = folder / "template.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    yield path
    shutil.rmtree(folder)


def fresh_engine(template: Path) -> tuple[Engine, Path]:
    folder = Path(tempfile.mkdtemp())
    shutil.copy(template, folder / "db.sqlite")
    return make_engine(f"sqlite:///{folder / 'db.sqlite'}"), folder


class HistoryMachine(RuleBasedStateMachine):
    template: Path

    def __init__(self) -> None:
        super().__init__()
        self.engine, self.folder = fresh_engine(self.template)
        self.clock = T0
        self.listing = Listing({})
        self.previous: dict[str, tuple[object, ...]] = {}
        self.model = Model(1)
        self.cfg = Settings(countries=("NL",), max_removal_fraction=Decimal(1))

    def teardown(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.folder, ignore_errors=True)

    @initialize(
        confirmations=st.integers(1, 3), max_fraction=st.sampled_from([Decimal("0.5"), Decimal(1)])
    )
    def configure(self, confirmations: int, max_fraction: Decimal) -> None:
        self.model = Model(confirmations, max_fraction)
        self.cfg = replace(
            self.cfg, removal_confirmations=confirmations, max_removal_fraction=max_fraction
        )

    @rule(listing=listing_strategy)
    def stock_changes(self, listing: Listing) -> None:
        self.listing = listing

    def _tick(self, step: int) -> datetime:
        self.clock += timedelta(minutes=step)
        return self.clock

    @rule(
        page_size=st.integers(1, 4),
        seed=st.integers(0, 99),
        step=st.integers(-120, 120),
        rejected=st.frozensets(st.sampled_from(NUMBERS), max_size=2),
        accept=st.booleans(),
    )
    def complete_sync(
        self,
        page_size: int,
        seed: int,
        step: int,
        rejected: frozenset[str] = frozenset(),
        accept: bool = False,
    ) -> None:
        at = self._tick(step)
        pages = listing_pages(self.listing, page_size, seed, at, rejected)
        run(self.engine, self.cfg, pages, accept=accept)
        for item in self.listing.items.values():
            if item.number in rejected:
                self.model.see_rejected(item.number, at)
            else:
                self.model.see(item, at)
        self.model.complete(set(self.listing.items), at, accept)

    @precondition(lambda self: any(n.removed_at is None for n in self.model.numbers.values()))
    @rule(step=st.integers(1, 120), accept=st.booleans())
    def outage_lists_nothing(self, step: int, accept: bool) -> None:
        """An empty listing: held by the guard (unless it is off or accepted), misses counted."""
        listing, self.listing = self.listing, Listing({})
        self.complete_sync(1, 0, step, accept=accept)
        self.listing = listing

    @precondition(lambda self: any(n.removed_at for n in self.model.numbers.values()))
    @rule(data=st.data(), step=st.integers(1, 120))
    def removed_number_back_as_invalid_item(self, data: st.DataObject, step: int) -> None:
        removed = sorted(n for n, s in self.model.numbers.items() if s.removed_at)
        number = data.draw(st.sampled_from(removed))
        self.listing = Listing({**self.listing.items, number: make_item(number, VALUES[0], 0, "a")})
        self.complete_sync(2, 0, step, rejected=frozenset({number}))

    @precondition(lambda self: self.model.confirmations == 1)
    @rule(page_size=st.integers(1, 4), seed=st.integers(0, 99), step=st.integers(1, 60))
    def same_listing_twice_adds_no_history(self, page_size: int, seed: int, step: int) -> None:
        self.complete_sync(page_size, seed, step)
        before = history_counts(self.engine)
        self.complete_sync(page_size, seed + 1, step)
        assert history_counts(self.engine) == before

    @rule(
        page_size=st.integers(1, 3),
        seed=st.integers(0, 99),
        step=st.integers(-120, 120),
        stop_after=st.integers(0, 3),
        killed=st.booleans(),
    )
    def interrupted_sync(
        self, page_size: int, seed: int, step: int, stop_after: int, killed: bool
    ) -> None:
        at = self._tick(step)
        pages = listing_pages(self.listing, page_size, seed, at)
        if stop_after >= len(pages):
            return
        if killed:
            with pytest.raises(SimulatedKill):
                run(self.engine, self.cfg, pages, kill_at=stop_after)
        else:
            run(self.engine, self.cfg, pages, fail_at=stop_after)
        for page in pages[:stop_after]:  # what was applied stays; nothing is removed
            for item in {i.number: i for i in page.items}.values():
                self.model.see(item, at)
            for rejection in page.rejections:
                assert rejection.number is not None
                self.model.see_rejected(rejection.number, at)

    @invariant()
    def database_equals_model(self) -> None:
        state = state_of(self.engine)
        assert set(state) == set(self.model.numbers)
        for number, expected in self.model.numbers.items():
            first, last, removed, currency, price, stock_id = state[number]
            assert (first, last, removed) == (
                expected.first_seen,
                expected.last_seen,
                expected.removed_at,
            ), number
            assert (currency, price) == (expected.price.currency, expected.price.value)
            assert stock_id == expected.stock_item_id
        events, changes = history_counts(self.engine)
        assert changes == self.model.price_changes
        assert {k: v for k, v in events.items() if v} == {
            k: v for k, v in self.model.events.items() if v
        }

    @invariant()
    def events_in_time_order_end_in_the_current_state(self) -> None:
        """Read by time, as an analyst would, each number's listed / removed / relisted
        events end in `removed` exactly when it is removed now, whatever the clock did."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(numbers.c.number, number_events.c.event, numbers.c.removed_at)
                .join(number_events, number_events.c.number_id == numbers.c.id)
                .where(number_events.c.event != "changed")
                .order_by(numbers.c.number, number_events.c.occurred_at, number_events.c.id)
            ).all()
        last = {number: (event, removed_at) for number, event, removed_at in rows}
        for number, (event, removed_at) in last.items():
            assert (event == "removed") == (removed_at is not None), number

    @invariant()
    def timestamps_are_ordered_and_monotonic(self) -> None:
        state = state_of(self.engine)
        for number, (first, last, removed, *_) in state.items():
            assert isinstance(first, datetime)
            assert isinstance(last, datetime)
            assert first <= last
            if removed is not None:
                assert isinstance(removed, datetime)
                assert removed >= last
            if number in self.previous:
                previous_last = self.previous[number][1]
                assert isinstance(previous_last, datetime)
                assert last >= previous_last
        self.previous = state


HistoryMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture
def history_machine(template_db: Path) -> type[HistoryMachine]:
    HistoryMachine.template = template_db
    return HistoryMachine


def test_history_matches_the_model(history_machine: type[HistoryMachine]) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(history_machine, settings=HistoryMachine.TestCase.settings)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    listings=st.lists(listing_strategy, min_size=1, max_size=5),
    sizes=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    seeds=st.tuples(st.integers(0, 99), st.integers(0, 99)),
)
def test_final_state_does_not_depend_on_page_size_or_order(
    template_db: Path,
    listings: list[Listing],
    sizes: tuple[int, int],
    seeds: tuple[int, int],
) -> None:
    results = []
    for size, seed in zip(sizes, seeds, strict=True):
        engine, folder = fresh_engine(template_db)
        try:
            cfg = Settings(countries=("NL",), max_removal_fraction=Decimal(1))
            for i, listing in enumerate(listings):
                at = T0 + timedelta(hours=i)
                run(engine, cfg, listing_pages(listing, size, seed + i, at))
            results.append((state_of(engine), history_counts(engine)))
        finally:
            engine.dispose()
            shutil.rmtree(folder, ignore_errors=True)
    assert results[0] == results[1]

"""A deterministic, evolving synthetic copy of Bird's stock listing.

Generated numbers are kept as small tuples (country, type, capability profile, price amount,
id generation, back order) and turned into Bird JSON only when served; each item's serialized
bytes are cached until it changes. Items added with :meth:`SyntheticStock.put` are kept as
given (they may be invalid on purpose). Numbers are kept in one sorted list per country, so a
page is a bisect and a slice (keyset pagination on ``numberString``)."""

from __future__ import annotations

import bisect
import copy
import hashlib
import heapq
import json
import random
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

# (prefix, digits after it). The first generated digit is 2-9.
Plan = tuple[tuple[str, float, tuple[tuple[str, int], ...]], ...]

_PLANS: dict[str, Plan] = {
    "US": (
        (
            "local",
            0.55,
            tuple((f"+1{a}", 7) for a in (212, 646, 415, 312, 305, 206, 617, 512, 702, 303, 404)),
        ),
        ("mobile", 0.1, (("+1332", 7), ("+1929", 7), ("+1680", 7))),
        ("toll-free", 0.3, tuple((f"+1{a}", 7) for a in (800, 888, 877, 866, 855, 844, 833))),
        ("national", 0.05, (("+1500", 7), ("+1533", 7))),
    ),
    "CA": (
        ("local", 0.7, tuple((f"+1{a}", 7) for a in (416, 647, 604, 514, 403, 613))),
        ("toll-free", 0.3, tuple((f"+1{a}", 7) for a in (800, 888, 877))),
    ),
    "NL": (
        ("local", 0.45, tuple((f"+31{a}", 7) for a in (20, 10, 30, 70, 40, 50))),
        ("mobile", 0.35, (("+316", 8),)),
        ("national", 0.1, (("+3185", 7), ("+3188", 7))),
        ("toll-free", 0.1, (("+31800", 7),)),
    ),
    "GB": (
        (
            "local",
            0.45,
            (("+4420", 8), ("+44161", 7), ("+44121", 7), ("+44131", 7), ("+44113", 7)),
        ),
        ("mobile", 0.3, (("+447", 9),)),
        ("national", 0.1, (("+44330", 7), ("+44345", 7))),
        ("toll-free", 0.15, (("+44800", 7), ("+44808", 7))),
    ),
    "DE": (
        ("local", 0.5, (("+4930", 8), ("+4989", 8), ("+4940", 8), ("+4969", 8), ("+49221", 7))),
        ("mobile", 0.3, (("+49151", 8), ("+49160", 7), ("+49170", 7), ("+49176", 8))),
        ("national", 0.1, (("+4932", 8),)),
        ("toll-free", 0.1, (("+49800", 7),)),
    ),
}

# country: (dial code, local area codes, mobile prefix, national significant number length)
_GENERIC: dict[str, tuple[str, tuple[str, ...], str, int]] = {
    "FR": ("33", ("1", "4", "5"), "6", 9),
    "BE": ("32", ("2", "3", "9"), "47", 9),
    "ES": ("34", ("91", "93", "96"), "6", 9),
    "IT": ("39", ("02", "06", "011"), "3", 10),
    "IE": ("353", ("1", "21", "61"), "8", 9),
    "AT": ("43", ("1", "316", "512"), "66", 10),
    "CH": ("41", ("44", "22", "31"), "7", 9),
    "SE": ("46", ("8", "31", "40"), "7", 9),
    "DK": ("45", ("3", "8", "9"), "2", 8),
    "NO": ("47", ("2", "5", "7"), "4", 8),
    "PL": ("48", ("22", "12", "61"), "5", 9),
    "PT": ("351", ("21", "22", "23"), "9", 9),
    "AU": ("61", ("2", "3", "7"), "4", 9),
}
for _cc, (_dial, _areas, _mobile, _length) in _GENERIC.items():
    _PLANS[_cc] = (
        ("local", 0.5, tuple((f"+{_dial}{a}", _length - len(a)) for a in _areas)),
        ("mobile", 0.3, ((f"+{_dial}{_mobile}", _length - len(_mobile)),)),
        ("toll-free", 0.2, ((f"+{_dial}800", max(_length - 3, 4)),)),
    )

SUPPORTED_COUNTRIES = tuple(sorted(_PLANS))

# Monthly prices in micro-euros (exponent -6), 1.00 - 25.00 EUR.
_PRICES: dict[str, tuple[int, ...]] = {
    "local": (1000000, 1150000, 1250000, 1500000, 2000000, 2500000, 3500000),
    "mobile": (3500000, 5000000, 6000000, 7500000, 9990000, 12000000),
    "national": (1500000, 2500000, 4000000, 6000000),
    "toll-free": (2500000, 5000000, 7500000, 10000000, 15000000, 25000000),
}


def _caps(
    voice: tuple[bool, bool], sms: tuple[bool, bool], mms: tuple[bool, bool], **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "voice": {"inbound": voice[0], "outbound": voice[1]},
        "sms": {"inbound": sms[0], "outbound": sms[1]},
        "mms": {"inbound": mms[0], "outbound": mms[1]},
    }
    for channel, (inbound, outbound) in extra.items():
        out[channel] = {"inbound": inbound, "outbound": outbound}
    return out


_T, _F = (True, True), (False, False)
_PROFILES: tuple[dict[str, Any], ...] = (
    _caps(_T, _T, _F),  # 0 local: voice + sms
    _caps(_T, _F, _F),  # 1 voice only
    _caps(_T, _T, _T),  # 2 everything
    _caps(_T, _T, _T, whatsapp=(True, True)),  # 3 mobile with whatsapp
    _caps((True, False), _F, _F),  # 4 toll-free: inbound voice
    _caps((True, False), (True, True), _F),  # 5 toll-free with sms
    _caps(_T, _T, _F, whatsapp=(True, True)),  # 6 local with whatsapp
)
_PROFILE_JSON = tuple(json.dumps(p, separators=(",", ":")) for p in _PROFILES)
_TYPE_PROFILES: dict[str, tuple[int, ...]] = {
    "local": (0, 0, 0, 1, 2, 6),
    "mobile": (2, 2, 3, 3, 0),
    "national": (1, 0, 1),
    "toll-free": (4, 4, 5),
}

# A generated row: (country, type, profile index, amount, id generation, back order required)
Row = tuple[str, str, int, int, int, bool]


def _derived_uuid(*parts: object) -> str:
    raw = bytearray(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest())
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def _key_of(item: dict[str, Any]) -> str:
    number = item.get("numberString")
    if number is None:
        return "~no-number-" + _derived_uuid(json.dumps(item, sort_keys=True, default=str))
    return number if isinstance(number, str) else str(number)


class SyntheticStock:
    """``size`` plausible numbers spread over ``countries``, deterministic from ``seed``.

    Thread-safe: the server reads while tests and the control endpoint change it."""

    def __init__(
        self,
        seed: int = 1,
        countries: Sequence[str] = ("US", "NL", "GB", "DE"),
        size: int = 2000,
    ) -> None:
        if isinstance(countries, str):
            countries = [c for c in countries.split(",") if c.strip()]
        codes = [c.strip().upper() for c in countries]
        unknown = [c for c in codes if c not in _PLANS]
        if unknown:
            raise ValueError(
                f"the simulator has no numbering plan for {', '.join(unknown)}; "
                f"supported: {', '.join(SUPPORTED_COUNTRIES)}"
            )
        if not codes:
            raise ValueError("at least one country is needed")
        if size < 0:
            raise ValueError("size must be 0 or more")
        self.seed = seed
        self.countries: tuple[str, ...] = tuple(dict.fromkeys(codes))
        self.steps = 0
        self._lock = threading.RLock()
        self._rows: dict[str, Row | dict[str, Any]] = {}
        self._lists: dict[str, list[str]] = {c: [] for c in self.countries}
        self._dirty: set[str] = set()
        self._bytes: dict[str, bytes] = {}
        self._removed: dict[str, Row | dict[str, Any]] = {}
        rng = random.Random(seed)
        per_country, extra = divmod(size, len(self.countries))
        for index, country in enumerate(self.countries):
            count = per_country + (1 if index < extra else 0)
            self._generate(rng, country, count)
        self._dirty.update(self.countries)

    # --- generation --------------------------------------------------------------------------

    def _generate(self, rng: random.Random, country: str, count: int) -> list[str]:
        """Add ``count`` new unique numbers of ``country`` (the caller re-sorts its list)."""
        plan = _PLANS[country]
        types = [t for t, _, _ in plan]
        weights = [w for _, w, _ in plan]
        cumulative = list(_accumulate(weights))
        rows = self._rows
        numbers = self._lists.setdefault(country, [])
        added: list[str] = []
        rand = rng.random
        randrange = rng.randrange
        while len(added) < count:
            slot = bisect.bisect_left(cumulative, rand() * cumulative[-1])
            kind = types[min(slot, len(types) - 1)]
            prefixes = plan[min(slot, len(plan) - 1)][2]
            prefix, digits = prefixes[randrange(len(prefixes))]
            low = 2 * 10 ** (digits - 1)
            number = prefix + str(randrange(low, 10**digits))
            if number in rows or number in self._removed:
                continue
            profiles = _TYPE_PROFILES[kind]
            prices = _PRICES[kind]
            row: Row = (
                country,
                kind,
                profiles[randrange(len(profiles))],
                prices[randrange(len(prices))],
                0,
                rand() < 0.03,
            )
            rows[number] = row
            numbers.append(number)
            added.append(number)
        self._dirty.add(country)
        return added

    # --- serialization -----------------------------------------------------------------------

    def _row_json(self, number: str, row: Row) -> bytes:
        country, kind, profile, amount, gen, back_order = row
        back_order_id = (
            '"' + _derived_uuid(self.seed, "back-order", number) + '"' if back_order else "null"
        )
        item_id = _derived_uuid(self.seed, number, gen)
        flag = "true" if back_order else "false"
        return (
            f'{{"id":"{item_id}","countryCode":"{country}","type":"{kind}",'
            f'"numberString":"{number}","capabilities":{_PROFILE_JSON[profile]},'
            f'"monthlyPrice":{{"currencyCode":"EUR","amount":{amount},"exponent":-6}},'
            f'"backOrderRequired":{flag},"backOrderStockId":{back_order_id}}}'
        ).encode()

    def _serialize(self, number: str) -> bytes:
        cached = self._bytes.get(number)
        if cached is None:
            row = self._rows[number]
            if isinstance(row, dict):
                cached = json.dumps(row, separators=(",", ":"), default=str).encode()
            else:
                cached = self._row_json(number, row)
            self._bytes[number] = cached
        return cached

    def _item(self, number: str) -> dict[str, Any]:
        row = self._rows[number]
        if isinstance(row, dict):
            return copy.deepcopy(row)
        item: dict[str, Any] = json.loads(self._serialize(number))
        return item

    # --- reading -----------------------------------------------------------------------------

    def _sorted(self, country: str) -> list[str]:
        if country in self._dirty:
            self._lists[country].sort()
            self._dirty.discard(country)
        return self._lists.get(country, [])

    def _keys(self, country: str | None) -> list[str]:
        if country is not None:
            return list(self._sorted(country)) if country in self._lists else []
        return list(heapq.merge(*(self._sorted(c) for c in list(self._lists))))

    def items(self, country: str | None = None) -> list[dict[str, Any]]:
        """The current items (copies of Bird JSON objects), sorted by numberString."""
        with self._lock:
            return [self._item(n) for n in self._keys(country)]

    def numbers(self, country: str | None = None) -> list[str]:
        """The current numbers, sorted."""
        with self._lock:
            return self._keys(country)

    def __len__(self) -> int:
        return len(self._rows)

    def query(
        self,
        *,
        country_codes: Sequence[str],
        prefix: str | None,
        types: Sequence[str],
        after: str | None,
        limit: int,
    ) -> tuple[list[bytes], str | None]:
        """Serialized items in numberString order strictly after ``after``, at most
        ``limit``, and the last number served when more remain (else None)."""
        wanted = set(types)
        with self._lock:
            countries = list(country_codes) if country_codes else list(self._lists)
            candidates: list[str] = []
            for country in dict.fromkeys(countries):
                if country not in self._lists:
                    continue
                keys = self._sorted(country)
                start = bisect.bisect_right(keys, after) if after is not None else 0
                end = len(keys)
                if prefix:
                    start = max(start, bisect.bisect_left(keys, prefix))
                    end = bisect.bisect_left(keys, prefix + "\U0010ffff")
                if not wanted:
                    candidates.extend(keys[start : min(end, start + limit + 1)])
                    continue
                found = 0
                rows = self._rows
                for index in range(start, end):
                    number = keys[index]
                    row = rows[number]
                    kind = row[1] if row.__class__ is tuple else self._type(row)
                    if kind in wanted:
                        candidates.append(number)
                        found += 1
                        if found > limit:
                            break
            if len(countries) > 1:
                candidates.sort()
            page = candidates[:limit]
            body = [self._serialize(n) for n in page]
            more = len(candidates) > limit
            return body, (page[-1] if more and page else None)

    @staticmethod
    def _type(row: Row | dict[str, Any]) -> Any:
        return row.get("type") if isinstance(row, dict) else row[1]

    # --- changing ----------------------------------------------------------------------------

    def _insert(self, number: str, country: str, row: Row | dict[str, Any]) -> None:
        old = self._rows.get(number)
        if old is not None:
            self._drop(number)
        self._rows[number] = row
        self._bytes.pop(number, None)
        keys = self._lists.setdefault(country, [])
        if country in self._dirty:
            keys.append(number)
        else:
            bisect.insort(keys, number)

    def _drop(self, number: str) -> Row | dict[str, Any]:
        row = self._rows.pop(number)
        self._bytes.pop(number, None)
        keys = self._lists[self._country(row)]
        if self._country(row) in self._dirty:
            keys.remove(number)
        else:
            index = bisect.bisect_left(keys, number)
            del keys[index]
        return row

    @staticmethod
    def _country(row: Row | dict[str, Any]) -> str:
        if isinstance(row, dict):
            value = row.get("countryCode")
            return value if isinstance(value, str) else str(value)
        return row[0]

    def put(self, item: dict[str, Any]) -> None:
        """Add or replace an item, keyed by its numberString. Kept as given (a copy), so it
        may be invalid on purpose."""
        item = copy.deepcopy(item)
        with self._lock:
            self._insert(_key_of(item), self._country(item), item)

    def remove(self, number: str) -> None:
        with self._lock:
            if number not in self._rows:
                raise KeyError(f"{number} is not in the stock")
            self._drop(number)

    def clear(self, country: str | None = None) -> None:
        """Empty the listing (of one country, or all)."""
        with self._lock:
            for code in [country] if country is not None else list(self._lists):
                for number in self._lists.get(code, []):
                    self._rows.pop(number, None)
                    self._bytes.pop(number, None)
                if code in self._lists:
                    self._lists[code] = []
                    self._dirty.discard(code)

    def set_price(self, number: str, amount: int, exponent: int, currency: str = "EUR") -> None:
        with self._lock:
            row = self._rows[number]
            if not isinstance(row, dict) and exponent == -6 and currency == "EUR":
                self._rows[number] = (*row[:3], amount, *row[4:])
            else:
                item = self._item(number)
                item["monthlyPrice"] = {
                    "currencyCode": currency,
                    "amount": amount,
                    "exponent": exponent,
                }
                self._rows[number] = item
            self._bytes.pop(number, None)

    def evolve(
        self,
        *,
        price_change_rate: float = 0.02,
        removal_rate: float = 0.02,
        arrival_rate: float = 0.02,
        relist_rate: float = 0.3,
    ) -> dict[str, int]:
        """One step between syncs, deterministic from the seed and the step count: some
        prices change, some numbers are sold (and remembered), new numbers arrive and a share
        of the sold numbers come back (half of them under a new stock item id)."""
        for name, rate in (
            ("price_change_rate", price_change_rate),
            ("removal_rate", removal_rate),
            ("arrival_rate", arrival_rate),
            ("relist_rate", relist_rate),
        ):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} = {rate!r} is not between 0 and 1")
        with self._lock:
            self.steps += 1
            rng = random.Random(self.seed * 1_000_003 + self.steps)
            population = self._keys(None)
            total = len(population)

            def share(rate: float, of: int) -> int:
                return 0 if rate == 0 or of == 0 else max(1, round(rate * of))

            # relist first, so that numbers sold in this step do not come straight back
            pool = sorted(self._removed)
            relisted = rng.sample(pool, share(relist_rate, len(pool)))
            for number in relisted:
                row = self._removed.pop(number)
                if not isinstance(row, dict) and rng.random() < 0.5:
                    row = (*row[:4], row[4] + 1, row[5])
                country = self._country(row)
                self._rows[number] = row
                self._lists.setdefault(country, []).append(number)
                self._dirty.add(country)

            changed = rng.sample(population, share(price_change_rate, total))
            for number in changed:
                row = self._rows[number]
                if isinstance(row, dict):
                    price = row.get("monthlyPrice")
                    if isinstance(price, dict) and isinstance(price.get("amount"), int):
                        price["amount"] = max(1, price["amount"] + rng.choice((-1, 1)) * 250000)
                else:
                    prices = [p for p in _PRICES.get(row[1], _PRICES["local"]) if p != row[3]]
                    row = (*row[:3], rng.choice(prices), *row[4:])
                    self._rows[number] = row
                self._bytes.pop(number, None)

            # a number whose price just changed stays in stock this step, so that every
            # change this step reports is one a sync can see
            repriced = set(changed)
            for_sale = [n for n in population if n not in repriced] if repriced else population
            sold = rng.sample(for_sale, min(len(for_sale), share(removal_rate, total)))
            stale: set[str] = set()
            for number in sold:
                row = self._rows.pop(number)
                self._bytes.pop(number, None)
                self._removed[number] = row
                stale.add(self._country(row))
            for country in stale:  # one pass per country instead of a list delete per number
                rows = self._rows
                self._lists[country] = [n for n in self._lists[country] if n in rows]
                self._dirty.add(country)

            arrivals = share(arrival_rate, total)
            added = 0
            for index, country in enumerate(self.countries):
                count = arrivals // len(self.countries) + (
                    1 if index < arrivals % len(self.countries) else 0
                )
                added += len(self._generate(rng, country, count))
            return {
                "price_changes": len(changed),
                "removed": len(sold),
                "added": added,
                "relisted": len(relisted),
            }


def _accumulate(values: Iterable[float]) -> Iterable[float]:
    total = 0.0
    for value in values:
        total += value
        yield total

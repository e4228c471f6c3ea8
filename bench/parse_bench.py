"""What decoding and validating one listing page costs, the two ways the client has.

Pages of 99 items of the simulator's synthetic stock, as JSON bytes (no network), each
decoded and validated:

- to dicts (``decode_json``), then item by item (``parse_results``): the way of any page
  with an invalid item, and of every page before 28 November;
- in one pass (``decode_page``): msgspec decodes into typed objects, only the values' own
  checks run in Python; the way of the usual page.

Both must give the same items (checked first). The fastest of ``--rounds`` rounds is
reported. bench/RESULTS.md quotes these figures.

Run:  .venv/bin/python bench/parse_bench.py [--size 20000] [--rounds 7]"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from etl.simulator import SyntheticStock  # noqa: E402
from etl.source.client import decode_json  # noqa: E402
from etl.source.parser import decode_page, parse_results  # noqa: E402


def pages_of(size: int) -> list[bytes]:
    stock = SyntheticStock(seed=42, countries=["US", "NL", "GB", "DE", "FR"], size=size)
    items = stock.items()
    return [
        json.dumps({"results": items[i : i + 99], "nextPageToken": "t"}).encode()
        for i in range(0, len(items), 99)
    ]


def fastest(pages: Sequence[bytes], way: Callable[[bytes], Any], rounds: int) -> float:
    """The fastest round's time a page, in microseconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for page in pages:
            way(page)
        best = min(best, time.perf_counter() - started)
    return best / len(pages) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    pages = pages_of(args.size)
    for content in pages:
        by_item = parse_results(decode_json(content)["results"])
        page = decode_page(content)
        if page is None or (list(page["results"]), []) != by_item:
            raise SystemExit("decode_page and parse_results differ on a page")

    def by_item(content: bytes) -> Any:
        return parse_results(decode_json(content)["results"])

    ways = {
        "decode_json, then parse_results": by_item,
        "decode_page (one pass)": decode_page,
        "decode_json alone (no validation)": decode_json,
    }
    print(f"{len(pages)} pages of up to 99 items; fastest of {args.rounds} rounds")
    print("| way | us a page |\n|---|---|")
    for name, way in ways.items():
        print(f"| {name} | {fastest(pages, way, args.rounds):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

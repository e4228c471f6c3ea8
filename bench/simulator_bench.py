"""Benchmark of the Bird simulator: pages/s and items/s it serves at limit=99 on loopback.

The simulator runs as its own process (``numbers-etl simulator``, through
``python -m etl.simulator.cli``-equivalent code), so that the clients do not share its GIL.
Each client is a separate process with one keep-alive ``http.client`` connection that pages
through the listing over and over (following nextPageToken; restarting at the end) without
parsing the JSON, for ``--seconds``. Measured with 1, 2 and 4 client processes.

Run:  .venv/bin/python bench/simulator_bench.py [--size 100000] [--seconds 5]"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time
from multiprocessing.queues import Queue
from typing import TypeAlias
from urllib.parse import quote, urlsplit

ACCESS_KEY = "bench-sim-key"
ORGANIZATION_ID = "org-bench"
TARGET_PAGES_PER_SECOND = 1000
SERVER = "from etl.simulator.cli import simulator_command; simulator_command()"
Results: TypeAlias = (
    "Queue[tuple[int, int, int, float]]"  # of (pages, items, bytes, seconds) per client
)
TOKEN_RE = re.compile(rb'"nextPageToken":"([^"]+)"')


def client(url: str, query: str, seconds: float, start_at: float, out: Results) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    headers = {"Authorization": f"AccessKey {ACCESS_KEY}"}
    path = f"/organizations/{ORGANIZATION_ID}/numbers-stock-items?{query}"
    while time.time() < start_at:
        time.sleep(0.001)
    pages = items = nbytes = 0
    token: bytes | None = None
    end = time.perf_counter() + seconds
    begin = time.perf_counter()
    while time.perf_counter() < end:
        target = path if token is None else path + "&pageToken=" + quote(token.decode())
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"status {response.status}: {body[:200]!r}")
        pages += 1
        nbytes += len(body)
        items += body.count(b'"numberString"')
        found = TOKEN_RE.search(body, len(body) - 400)
        token = found.group(1) if found else None
    elapsed = time.perf_counter() - begin
    conn.close()
    out.put((pages, items, nbytes, elapsed))


def measure(url: str, query: str, processes: int, seconds: float) -> tuple[float, float, float]:
    queue: Results = multiprocessing.Queue()
    start_at = time.time() + 0.3
    workers = [
        multiprocessing.Process(target=client, args=(url, query, seconds, start_at, queue))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
    elapsed = max(r[3] for r in results)
    pages = sum(r[0] for r in results)
    items = sum(r[1] for r in results)
    nbytes = sum(r[2] for r in results)
    return pages / elapsed, items / elapsed, nbytes / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--countries", default="US,NL")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,2,4", help="client process counts to try")
    args = parser.parse_args()

    env = {**os.environ, "NUMBERS_ETL_SIMULATOR_ACCESS_KEY": ACCESS_KEY}
    started = time.perf_counter()
    server = subprocess.Popen(
        [
            *(sys.executable, "-c", SERVER, "--port", "0", "--size", str(args.size)),
            *("--countries", args.countries, "--organization-id", ORGANIZATION_ID),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"NUMBERS_ETL_API_URL=(\S+)", line)
        if not match:
            raise SystemExit(f"the simulator did not start (it printed {line!r})")
        url = match[1]
        print(
            f"simulator: {args.size} numbers in {args.countries} ready in "
            f"{time.perf_counter() - started:.1f} s on {url}"
        )
        print(
            f"python {platform.python_version()} on {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs; limit=99, keep-alive http.client clients, "
            f"{args.seconds:g} s each\n"
        )
        first = args.countries.split(",")[0]
        scenarios = [
            (f"countryCodes={first}", "one country"),
            ("countryCodes=" + "&countryCodes=".join(args.countries.split(",")), "all countries"),
            (f"countryCodes={first}&types=mobile", "one country, types=mobile"),
        ]
        measure(url, f"limit=99&{scenarios[0][0]}", 1, 1.0)  # warm the serialized-item cache
        header = f"| {'query':<28} | clients | pages/s | items/s | MB/s |"
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        worst = None
        for query, label in scenarios:
            for processes in (int(n) for n in args.clients.split(",")):
                pages, items, mbytes = measure(url, f"limit=99&{query}", processes, args.seconds)
                if processes == 1 and label == "one country":
                    worst = pages
                print(
                    f"| {label:<28} | {processes:>7} | {pages:>7.0f} | {items:>7.0f} "
                    f"| {mbytes:>4.1f} |"
                )
        if worst is not None:
            verdict = "OK" if worst >= TARGET_PAGES_PER_SECOND else "BELOW TARGET"
            print(
                f"\none client, one country: {worst:.0f} pages/s ({verdict}; "
                f"target {TARGET_PAGES_PER_SECOND})"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

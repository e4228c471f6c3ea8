"""The rate limiter: with a fake clock, and against the simulator's own request log."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Sequence

import pytest

from etl.config import Secret
from etl.errors import Interrupted
from etl.records import Scope
from etl.simulator import Simulator
from etl.source.client import BirdClient
from etl.source.paginator import iter_pages
from etl.source.ratelimit import RateLimiter
from tests.conftest import ACCESS_KEY, ORGANIZATION_ID


class FakeClock:
    """Time passes only when a thread sleeps. ``granted()`` is the last time this thread
    read, which for a limiter that has just returned is the time it granted the start."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()
        self._local = threading.local()

    def __call__(self) -> float:
        with self._lock:
            self._local.last = self.now
            return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        with self._lock:
            self.now += seconds

    def granted(self) -> float:
        last: float = self._local.last
        return last


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most of ``times`` that fall in any half-open window [t, t + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


def test_max_in_window() -> None:
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.2]) == 4  # [0.5, 1.5)
    assert max_in_window([0.0, 1.0, 2.0]) == 1
    assert max_in_window([]) == 0


def test_starts_are_evenly_spaced_with_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(35):
        limiter.acquire()
        starts.append(clock.granted())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1
    assert max_in_window(starts) <= 10


@pytest.mark.parametrize("rate", [1, 2.5, 7, 20, 50])
def test_never_more_than_rate_starts_in_a_window_across_threads(rate: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            limiter.acquire()
            granted = clock.granted()
            with lock:
                starts.append(granted)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(starts) == 200
    assert max_in_window(starts) <= rate
    # and it keeps close to the rate: no more than a rounding down to whole requests per
    # second and the jitter margin below it
    assert limiter.interval <= 1 / int(max(rate, 1)) * 1.03
    assert max(starts) - min(starts) <= 199 * limiter.interval * 1.25


def test_a_fractional_rate_of_less_than_one() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.5, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(4):
        limiter.acquire()
        starts.append(clock.granted())
    assert [b - a for a, b in itertools.pairwise(starts)] == [2.0, 2.0, 2.0]


def test_stop_interrupts_a_wait() -> None:
    limiter = RateLimiter(0.01)  # one start per 100 s
    stop = threading.Event()
    limiter.acquire(stop)
    threading.Timer(0.05, stop.set).start()
    with pytest.raises(Interrupted):
        limiter.acquire(stop)


def test_a_set_stop_interrupts_before_waiting() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted):
        RateLimiter(100).acquire(stop)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate must be greater than 0"):
        RateLimiter(0)


def test_the_server_never_sees_more_than_the_rate(simulator: Simulator) -> None:
    """Four threads page four scopes through one client and limiter for about a second."""
    rate = 20
    client = BirdClient(
        simulator.url,
        Secret(ACCESS_KEY),
        ORGANIZATION_ID,
        rate_limiter=RateLimiter(rate),
    )
    scopes = [Scope("US"), Scope("NL"), Scope("US", types=("mobile",)), Scope("NL", prefix="+31")]
    stop = threading.Event()
    threading.Timer(1.2, stop.set).start()

    def page(scope: Scope) -> None:
        try:
            for _ in iter_pages(client, scope, page_size=1, max_pages=1000, stop=stop):
                pass
        except Interrupted:
            pass

    threads = [threading.Thread(target=page, args=(scope,)) for scope in scopes]
    with client:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    times = [r.time for r in simulator.requests]
    assert len(times) > rate  # it ran for more than one window
    assert max_in_window(times) <= rate

"""The rate limiter: with a fake clock, and against the simulator's own request log."""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
from collections.abc import Sequence

import pytest

from etl.config import Secret
from etl.errors import Interrupted
from etl.records import Scope
from etl.simulator import Simulator
from etl.source.client import BirdClient
from etl.source.paginator import iter_pages
from etl.source.ratelimit import STALE_SECONDS, RateLimiter
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
        limiter.written()
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
            limiter.written()
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
        limiter.written()
    assert [b - a for a, b in itertools.pairwise(starts)] == [2.0, 2.0, 2.0]


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_late_write_holds_back_the_start_that_would_bunch_with_it() -> None:
    """Five a second: the first request is written 0.5 s after its start, the next four at
    theirs. A sixth start at 1.02 s, on the even schedule, would put six writes in
    [0.204, 1.204): it waits until the fifth most recent write is a second old."""
    clock = ManualClock()
    limiter = RateLimiter(5, clock=clock)
    interval = limiter.interval
    assert limiter.try_acquire()  # the late one
    for i in range(1, 5):
        clock.now = i * interval
        assert limiter.try_acquire()
        limiter.written()
        if i == 2:
            clock.now = 0.5
            limiter.written()
    clock.now = 5 * interval  # 1.02: the even schedule would grant it
    assert not limiter.try_acquire()
    clock.now = interval + 1.0 - 1e-9
    assert not limiter.try_acquire()
    clock.now = interval + 1.0
    assert limiter.try_acquire()


def test_starts_not_yet_written_count_as_written_now() -> None:
    """One a second: a start granted and not yet written holds back the next one until it
    has been written a second before."""
    clock = ManualClock()
    limiter = RateLimiter(1, clock=clock, margin=0.0)
    assert limiter.try_acquire()
    clock.now = 3.0
    assert not limiter.try_acquire()  # still being written
    limiter.written()
    clock.now = 3.5
    assert not limiter.try_acquire()
    clock.now = 4.0
    assert limiter.try_acquire()


def test_a_start_never_reported_written_expires() -> None:
    """A caller that lost a start (a bug) slows the limit for a while, never for ever."""
    clock = ManualClock()
    limiter = RateLimiter(1, clock=clock)
    assert limiter.try_acquire()
    clock.now = STALE_SECONDS - 1
    assert not limiter.try_acquire()
    clock.now = STALE_SECONDS + 1.0
    assert not limiter.try_acquire()  # it counts as written now
    clock.now = STALE_SECONDS + 2.0
    assert limiter.try_acquire()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_written_requests_never_exceed_the_rate_whatever_their_delays(seed: int) -> None:
    """Eight workers, 50 a second, 10 simulated seconds in steps of 1 ms. Each request is
    written some time after its start (usually at once, one in ten up to 60 ms later, as a
    thread waiting for the GIL on a busy machine), then waits 50 ms for its answer. No
    window of one second holds more than 50 writes, and the limit is still used."""
    rng = random.Random(seed)
    clock = ManualClock()
    limiter = RateLimiter(50, clock=clock)
    free_at = [0.0] * 8
    pending: list[tuple[float, int]] = []  # (write time, worker)
    writes: list[float] = []
    delays: list[float] = []
    for step in range(10_000):
        clock.now = step / 1000
        for due, worker in sorted(pending):
            if due <= clock.now:
                pending.remove((due, worker))
                limiter.written()
                writes.append(clock.now)
                free_at[worker] = clock.now + 0.05
        for worker in range(8):
            if free_at[worker] <= clock.now and limiter.try_acquire():
                delay = rng.uniform(0.0, 0.06) if rng.random() < 0.1 else 0.0005
                delays.append(delay)
                pending.append((clock.now + delay, worker))
                free_at[worker] = math.inf
    assert max(delays) > limiter.interval  # some writes were later than the margin allows
    assert max_in_window(writes) <= 50
    assert len(writes) >= 9 * 45  # and it keeps close to the limit


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
    """Four threads page four scopes through one client and limiter for about a second; the
    simulator enforces the same limit, as Bird does, and refuses none of them."""
    rate = 20
    simulator.rate_limit = rate
    limiter = RateLimiter(rate)
    client = BirdClient(simulator.url, Secret(ACCESS_KEY), ORGANIZATION_ID, rate_limiter=limiter)
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
    assert {r.status for r in simulator.requests} == {200}  # no 429
    assert not limiter._unwritten  # every start was reported written, on both paths


def test_a_client_over_birds_limit_waits_as_told_and_gets_every_page(
    simulator: Simulator,
) -> None:
    """A limit set above Bird's: the 429s Bird answers are retried after their Retry-After,
    and the listing still comes whole."""
    simulator.rate_limit = 3
    client = BirdClient(
        simulator.url, Secret(ACCESS_KEY), ORGANIZATION_ID, rate_limiter=RateLimiter(1000)
    )
    with client:
        pages = list(iter_pages(client, Scope("US"), page_size=50, max_pages=100))
    numbers = [item.number for page in pages for item in page.items]
    assert len(numbers) == len(set(numbers)) == len(simulator.stock.numbers("US"))
    refused = [r for r in simulator.requests if r.status == 429]
    assert refused, "the simulator refused nothing: the test did not reach the limit"
    assert client.stats.snapshot()["errors"] == {"429": len(refused)}
    admitted = [r.time for r in simulator.requests if r.status == 200]
    assert len(admitted) == len(pages)
    assert max_in_window(admitted) <= 3

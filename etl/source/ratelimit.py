"""A client-side rate limit shared by every thread of a process.

Request starts are spaced evenly: a start is granted only when at least ``interval`` seconds
have passed since the previous grant. With ``n = max(1, floor(rate))`` and
``interval = max(1 / rate, (1 + margin) / n)``, ``n + 1`` grants span at least
``1 + margin`` seconds, so no window of one second ever holds more than ``rate`` starts, even
after up to ``margin`` seconds of network jitter between us and Bird's own counter.

A start is not yet a request on the wire: the thread that was granted it may wait for the
GIL before it writes the request, for longer than the margin when the machine is short of
CPU, while the next starts keep to the schedule (bench/RESULTS.md saw 51 requests written in
one second at a limit of 50). So each request reports when it has been written
(``written``), and a start is granted only when the ``n``-th most recent write is at least
one second old, counting a start granted and not yet written as written now: no window of
one second then holds more than ``n`` written requests. Written within a millisecond or two
of their start, as almost all are, the ``n``-th most recent write was granted a whole
``n * interval`` before, and nothing waits for this rule; a late write holds back only the
starts that would bunch with it."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from etl.errors import Interrupted

STALE_SECONDS = 120.0  # longer than any request takes to be written (connect timeouts included)


class RateLimiter:
    """Never lets more than ``rate`` requests start, nor be written, in any one-second
    window (``written`` is how a request says it has been)."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = 0.02,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be greater than 0, not {rate!r}")
        self.rate = rate
        self.interval = max(1.0 / rate, (1.0 + margin) / max(1, math.floor(rate)))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_start = -math.inf
        self._most = max(1, math.floor(rate))
        self._written: deque[float] = deque(maxlen=self._most)  # the latest writes' times
        # the grant times of starts not yet reported written, oldest first
        self._unwritten: deque[float] = deque()

    def acquire(self, stop: threading.Event | None = None) -> None:
        """Block until this thread may start a request.

        Raises Interrupted when ``stop`` is set before or while waiting."""
        while True:
            if stop is not None and stop.is_set():
                raise Interrupted("stopped while waiting for the rate limit")
            delay = self._take()
            if delay <= 0:
                return
            self._wait(delay, stop)

    def try_acquire(self) -> bool:
        """Start a request now if the limit allows it; never waits."""
        return self._take() <= 0

    def written(self) -> None:
        """A granted start's request has been written to the connection, or has failed
        before it could be: every grant is reported once, on every path."""
        with self._lock:
            if self._unwritten:
                self._unwritten.popleft()
            self._written.append(self._clock())

    def _take(self) -> float:
        """Grant a start now (0), or the seconds until one can be granted."""
        with self._lock:
            now = self._clock()
            # A start never reported in STALE_SECONDS was lost by its caller (a bug): it
            # counts as written now, rather than hold the limit back for ever.
            while self._unwritten and self._unwritten[0] <= now - STALE_SECONDS:
                self._unwritten.popleft()
                self._written.append(now)
            earliest = self._next_start
            back = self._most - len(self._unwritten)  # the write that must be a second old
            if back <= 0:  # as many starts as the limit allows are being written: wait
                earliest = max(earliest, now + min(self.interval, 0.01))
            elif len(self._written) >= back:
                earliest = max(earliest, self._written[-back] + 1.0)
            if now >= earliest:
                self._next_start = now + self.interval
                self._unwritten.append(now)
                return 0.0
            return earliest - now

    def _wait(self, delay: float, stop: threading.Event | None) -> None:
        if stop is not None and self._sleep is time.sleep:
            stop.wait(delay)  # wakes early when stop is set; the loop then raises
        else:
            self._sleep(delay)

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, interval={self.interval:.4f}s)"

"""A client-side rate limit shared by every thread of a process.

Request starts are spaced evenly: a start is granted only when at least ``interval`` seconds
have passed since the previous grant. With ``n = max(1, floor(rate))`` and
``interval = max(1 / rate, (1 + margin) / n)``, ``n + 1`` grants span at least
``1 + margin`` seconds, so no window of one second ever holds more than ``rate`` starts, even
after up to ``margin`` seconds of network jitter between us and Bird's own counter."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from etl.errors import Interrupted


class RateLimiter:
    """Never lets more than ``rate`` requests start in any one-second window."""

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

    def _take(self) -> float:
        """Grant a start now (0), or the seconds until one can be granted."""
        with self._lock:
            now = self._clock()
            if now >= self._next_start:
                self._next_start = now + self.interval
                return 0.0
            return self._next_start - now

    def _wait(self, delay: float, stop: threading.Event | None) -> None:
        if stop is not None and self._sleep is time.sleep:
            stop.wait(delay)  # wakes early when stop is set; the loop then raises
        else:
            self._sleep(delay)

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, interval={self.interval:.4f}s)"

"""A one-line progress display on a terminal (pages and numbers per country), fed by the
sync's ``on_page`` hook. Nothing at all when stderr is not a terminal (cron, systemd, pipes)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from etl.logs import etl_handler
from etl.records import Page, Scope
from etl.store.writer import PageCounts

CLEAR = "\r\x1b[K"
INTERVAL = 0.1  # seconds between redraws


class Progress:
    """Use as a context manager; pass ``on_page`` to Sync. Thread-safe (scopes run in
    parallel); log lines clear the progress line first so they never mix."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.pages: dict[str, int] = {}
        self.numbers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._drawn = False
        self._last = 0.0

    @staticmethod
    def wanted(quiet: bool = False, log_format: str = "text") -> bool:
        return not quiet and log_format == "text" and sys.stderr.isatty()

    def on_page(self, scope: Scope, _page: Page, counts: PageCounts) -> None:
        with self._lock:
            self.pages[scope.key] = self.pages.get(scope.key, 0) + 1
            self.numbers[scope.key] = self.numbers.get(scope.key, 0) + counts.items
            now = time.monotonic()
            if now - self._last >= INTERVAL:
                self._last = now
                self._draw()

    def line(self) -> str:
        return "  ".join(
            f"{key}: {self.pages[key]} pages, {self.numbers[key]} numbers" for key in self.pages
        )

    def _draw(self) -> None:
        self.stream.write(CLEAR + self.line())
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(CLEAR)
            self.stream.flush()
            self._drawn = False

    def filter(self, _record: logging.LogRecord) -> bool:
        """A logging filter: wipe the progress line before a log line is written."""
        with self._lock:
            self._clear()
        return True

    def __enter__(self) -> Progress:
        handler = etl_handler()
        if handler is not None:
            handler.addFilter(self.filter)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        handler = etl_handler()
        if handler is not None:
            handler.removeFilter(self.filter)
        with self._lock:
            self._clear()

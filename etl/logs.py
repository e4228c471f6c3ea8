"""Logging: readable lines on a terminal, or one JSON object a line for log shippers.

Every line passes through a scrubber that replaces the configured secrets (the access key,
the database password) with ``***``, whatever code logged them."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
MIN_SECRET = 4  # shorter values would blank out ordinary words


def register_secret(value: str | None) -> None:
    """Never let ``value`` appear in a log line from now on (in this process)."""
    if value and len(value) >= MIN_SECRET:
        with _secrets_lock:
            _secrets.add(value)
            _secrets.add(json.dumps(value)[1:-1])  # as it looks inside a JSON string


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, message, and any
    ``extra=`` fields the call passed."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    """``2026-11-28T12:34:56Z INFO    etl.sync: message``: the time in UTC with its date and
    zone, like every timestamp numbers-etl writes (a scheduler's log spans days)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners and
    click's CliRunner swap it), never to a stream that has since been closed."""

    owned_by_etl = True

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_logging(fmt: str = "text", verbosity: int = 0) -> StderrHandler:
    """``verbosity``: -1 quiet (warnings and errors), 0 info, 1+ debug."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "owned_by_etl", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("etl").setLevel(level)
    # APScheduler's own lines are useful only with -v: the scheduler says in its own words
    # when a run was skipped, and the next run's time, which APScheduler's warning gets wrong
    logging.getLogger("apscheduler").setLevel(logging.INFO if verbosity > 0 else logging.ERROR)
    return handler


def etl_handler() -> StderrHandler | None:
    """The handler ``setup_logging`` installed, if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, StderrHandler):
            return handler
    return None

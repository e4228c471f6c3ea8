"""The exceptions numbers-etl raises; each message says what was wrong and what to do."""

from __future__ import annotations


class EtlError(Exception):
    """Base class of every error numbers-etl raises on purpose."""


class ConfigError(EtlError):
    """Invalid configuration; carries every problem found, reported together (exit 2)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class SourceError(EtlError):
    """Bird's stock listing could not be read."""


class RetriableSourceError(SourceError):
    """A transient failure (408, 429, 5xx, connection or read error); worth another try."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalSourceError(SourceError):
    """A failure that another try will not mend (4xx other than 408 and 429)."""


class AuthError(FatalSourceError):
    """Bird refused the access key or organization (401/403/404): a configuration error."""


class PaginationError(SourceError):
    """The listing cannot be paged to its end: a loop, an over-long token, too many pages,
    or a body that is not a stock page."""


class RetriesExhausted(SourceError):
    """A page failed on every try, or the retry time budget ran out."""


class DatabaseError(EtlError):
    """The database is unreachable or failed."""


class SchemaOutOfDate(EtlError):
    """The database schema is behind the code's migrations (exit 2)."""


class LockHeld(EtlError):
    """Another sync holds the database lock (exit 75)."""


class LockLost(EtlError):
    """This run's lock expired and another process took it: the run must not close."""


class Interrupted(EtlError):
    """SIGTERM or Ctrl-C asked the run to stop."""

"""A lock row in the database, so that two syncs never overlap, whether they start from cron,
the scheduler or another host on the same database. The holder refreshes it while it runs;
a crashed holder's lock expires after ``ttl`` seconds.

Times come from the database's clock (SQLite's is this host's), so that hosts whose clocks
disagree still agree on when a lock expires."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from etl.errors import LockHeld
from etl.store.engine import begin_write, db_message, error_codes
from etl.store.schema import LOCK_NAME, sync_lock

log = logging.getLogger("etl.store")


def utcnow() -> datetime:
    return datetime.now(UTC)


# PostgreSQL's now() is when the transaction began; a lock refreshed at the end of a long
# transaction must count from the moment it is written.
_NOW = {
    "postgresql": "SELECT clock_timestamp()",
    "mysql": "SELECT UTC_TIMESTAMP(6)",
    "mariadb": "SELECT UTC_TIMESTAMP(6)",
}


def database_now(conn: Connection) -> datetime:
    """The current UTC time by the database's clock (this host's for SQLite)."""
    query = _NOW.get(conn.dialect.name)
    if query is None:
        return utcnow()
    now: datetime = conn.execute(text(query)).scalar_one()
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _pid_space() -> str:
    """Where this process's PID means something: this boot's id and its PID namespace. Two
    processes under one hostname can live in different ones (a container sharing the
    host's network and name), and a PID from another one says nothing here."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}.{namespace}"


def holder_name() -> str:
    """``host:pid:random:pid-space``, shown to whoever finds the lock held."""
    host = socket.gethostname()[:160]
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}:{_pid_space()}"


# How long acquire waits for the lock's row, locked by another session, on PostgreSQL (whose
# default is for ever); a holder closing a country keeps it only for its commit.
ACQUIRE_WAIT = 30


def _lock_wait_timed_out(exc: OperationalError) -> bool:
    """PostgreSQL's lock_timeout (55P03) or MySQL's lock wait timeout (1205)."""
    sqlstate, number = error_codes(exc)
    return sqlstate == "55P03" or number == 1205


# A lock whose refreshes have all failed (or hung) for its ttl and this grace after it: the
# database stopped answering, and the lock has expired.
STUCK_GRACE = 60.0
WATCH_EVERY = 5.0

# The holders of this process's locks between acquire and release. A holder of this process
# that is not among them is a lock that a run of this process could not release (the
# database went away at the end of the run): no run of this process holds it any more.
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def _left_here(holder: str) -> bool:
    """True when ``holder`` names this very process and none of its locks holds it."""
    host, pid_text, _, space = [*holder.split(":"), "", "", ""][:4]
    here = _pid_space()
    if host != socket.gethostname()[:160] or pid_text != str(os.getpid()) or space != here:
        return False
    with _ACTIVE_LOCK:
        return holder not in _ACTIVE


def died_here(holder: str) -> bool:
    """True when ``holder`` names a process of this host and PID space that no longer
    exists. Anything less certain (another host, another container, an older holder name)
    waits for the lock to expire."""
    host, pid_text, _, space = [*holder.split(":"), "", "", ""][:4]
    here = _pid_space()
    if host != socket.gethostname()[:160] or not pid_text.isdigit() or not here or space != here:
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def vacancy(conn: Connection) -> tuple[str, datetime | None] | None:
    """None while the sync lock may have a live holder; otherwise why it has none:
    ``("free", None)`` (released, or its row is missing), ``("gone", None)`` (its holder, a
    process of this host, no longer exists) or ``("expired", expires_at)``."""
    row = conn.execute(select(sync_lock).where(sync_lock.c.name == LOCK_NAME)).one_or_none()
    if row is None or row.holder is None:
        return "free", None
    if died_here(row.holder):
        return "gone", None
    if row.expires_at is None or row.expires_at < database_now(conn):
        return "expired", row.expires_at
    return None


class DatabaseLock:
    def __init__(
        self,
        engine: Engine,
        *,
        ttl: float = 300,
        holder: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        self.holder = holder or holder_name()
        self.clock = clock  # None: the database's clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshed = time.monotonic()  # when the lock was last taken or extended
        self._lost = False  # another sync took it

    def acquire(self) -> None:
        """Take the lock or raise LockHeld naming the holder and when its lock expires."""
        try:
            try:
                self._acquire()
            except IntegrityError:  # another sync wrote the missing row first
                self._acquire()
        except OperationalError as exc:
            if not _lock_wait_timed_out(exc):
                raise
            raise LockHeld(
                "the sync lock's row stayed locked by another database session (a sync "
                "closing a country, or a transaction left open) for longer than the database "
                f"waits for a row ({ACQUIRE_WAIT} s on PostgreSQL, innodb_lock_wait_timeout "
                "on MySQL)"
            ) from None

    def _acquire(self) -> None:
        c = sync_lock.c
        with begin_write(self.engine) as conn:
            if conn.dialect.name == "postgresql":  # (MySQL: innodb_lock_wait_timeout)
                conn.execute(text(f"SET LOCAL lock_timeout = '{ACQUIRE_WAIT}s'"))
            now = self._now(conn)
            holding: dict[str, Any] = {
                "holder": self.holder,
                "run_id": None,
                "acquired_at": now,
                "expires_at": now + timedelta(seconds=self.ttl),
            }
            take = update(sync_lock).values(holding)
            free = or_(c.holder.is_(None), c.expires_at < now)
            if conn.execute(take.where(c.name == LOCK_NAME, free)).rowcount == 1:
                self._active()
                return
            row = conn.execute(select(sync_lock).where(c.name == LOCK_NAME)).one_or_none()
            if row is None:
                # Its row, which migration 0001 writes, was deleted (by hand, to clear a
                # lock that looked stuck): write it again, taken. A sync doing the same
                # at once fails on the key, and finds it held when it tries again.
                log.warning("the sync lock's row was missing from sync_lock: wrote it again")
                conn.execute(insert(sync_lock).values(name=LOCK_NAME, **holding))
                self._active()
                return
            left = bool(row.holder) and _left_here(row.holder)
            if left or (row.holder and died_here(row.holder)):
                # Killed on this very host, or left by an earlier run of this process that
                # could not release it: no need to wait for the lock to expire.
                taken = conn.execute(take.where(c.name == LOCK_NAME, c.holder == row.holder))
                if taken.rowcount == 1:
                    log.warning(
                        "took over the sync lock of %s, %s",
                        row.holder,
                        "an earlier run of this process that could not release it"
                        if left
                        else "which died",
                    )
                    self._active()
                    return
        raise LockHeld(
            f"another sync is running ({row.holder}, since {row.acquired_at:%Y-%m-%d %H:%M:%S} "
            f"UTC); its lock expires at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC if it has died"
        )

    def _active(self) -> None:
        self._refreshed = time.monotonic()
        with _ACTIVE_LOCK:
            _ACTIVE.add(self.holder)

    def set_run(self, run_id: int) -> None:
        with begin_write(self.engine) as conn:
            conn.execute(
                update(sync_lock)
                .where(sync_lock.c.name == LOCK_NAME, sync_lock.c.holder == self.holder)
                .values(run_id=run_id)
            )

    def _now(self, conn: Connection) -> datetime:
        return database_now(conn) if self.clock is None else self.clock()

    def refresh(self) -> bool:
        """Extend the lock; False when it was lost (expired and taken by another)."""
        with begin_write(self.engine) as conn:
            return self.fence(conn)

    def fence(self, conn: Connection) -> bool:
        """In the caller's transaction: extend the lock, False when it was lost. A run
        closes a scope in the same transaction as this: the row stays locked until that
        commits, so no other sync can take the lock in between (a run that was frozen past
        its lock's expiry must not count the numbers a newer run saw as missed)."""
        held = (
            conn.execute(
                update(sync_lock)
                .where(sync_lock.c.name == LOCK_NAME, sync_lock.c.holder == self.holder)
                .values(expires_at=self._now(conn) + timedelta(seconds=self.ttl))
            ).rowcount
            == 1
        )
        if held:
            self._refreshed = time.monotonic()
        return held

    def release(self) -> None:
        """Give the lock up. When the database cannot be told, the lock stays in its row
        until it expires, or until the next run of this process takes it back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            with begin_write(self.engine) as conn:
                conn.execute(
                    update(sync_lock)
                    .where(sync_lock.c.name == LOCK_NAME, sync_lock.c.holder == self.holder)
                    .values(holder=None, run_id=None, expires_at=None)
                )
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self.holder)

    def keep_alive(
        self, on_lost: Callable[[], None], on_stuck: Callable[[float], None] | None = None
    ) -> None:
        """Refresh the lock every ttl/3 seconds in a daemon thread until released.

        With ``on_stuck``, a second thread watches the refreshes: when none has succeeded
        for the lock's ttl and a grace after it (the database stopped answering, and a
        refresh, like the run's own statements, waits on it for ever), it calls
        ``on_stuck(seconds since the last one)``, once."""

        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    if not self.refresh():
                        log.error("the sync lock was lost (taken by another process); stopping")
                        self._lost = True  # refreshes end here: not a database that hangs
                        on_lost()
                        return
                except Exception as exc:  # a database hiccup: try again at the next beat
                    log.warning(
                        "could not refresh the sync lock (trying again in %.0f s): %s",
                        self.ttl / 3,
                        db_message(exc),
                    )
                    log.debug("could not refresh the sync lock", exc_info=True)

        self._thread = threading.Thread(target=beat, name="sync-lock", daemon=True)
        self._thread.start()
        if on_stuck is not None:
            threading.Thread(
                target=self._watch, args=(on_stuck,), name="sync-lock-watch", daemon=True
            ).start()

    def _watch(self, on_stuck: Callable[[float], None]) -> None:
        limit = self.ttl + min(STUCK_GRACE, self.ttl)
        late_before = False
        while not self._stop.wait(min(WATCH_EVERY, self.ttl / 3)):
            if self._lost:
                return
            since = time.monotonic() - self._refreshed
            late = since > limit
            # twice in a row: a process that was paused (a suspended VM) gets one more
            # look, in which its refresh can catch up
            if late and late_before:
                on_stuck(since)
                return
            late_before = late

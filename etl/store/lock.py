"""A lock row in the database, so that two syncs never overlap, whether they start from cron,
the scheduler or another host on the same database. The holder refreshes it while it runs;
a crashed holder's lock expires after ``ttl`` seconds."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, or_, select, update

from etl.errors import LockHeld
from etl.store.engine import begin_write
from etl.store.schema import LOCK_NAME, sync_lock

log = logging.getLogger("etl.store")


def utcnow() -> datetime:
    return datetime.now(UTC)


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _died_here(holder: str) -> bool:
    """True when ``holder`` names a process of this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class DatabaseLock:
    def __init__(
        self,
        engine: Engine,
        *,
        ttl: float = 300,
        holder: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        self.holder = holder or holder_name()
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockHeld naming the holder and when its lock expires."""
        now = self.clock()
        c = sync_lock.c
        take = update(sync_lock).values(
            holder=self.holder,
            run_id=None,
            acquired_at=now,
            expires_at=now + timedelta(seconds=self.ttl),
        )
        with begin_write(self.engine) as conn:
            free = or_(c.holder.is_(None), c.expires_at < now)
            if conn.execute(take.where(c.name == LOCK_NAME, free)).rowcount == 1:
                return
            row = conn.execute(select(sync_lock).where(c.name == LOCK_NAME)).one()
            if row.holder and _died_here(row.holder):
                # Killed on this very host: no need to wait for its lock to expire.
                taken = conn.execute(take.where(c.name == LOCK_NAME, c.holder == row.holder))
                if taken.rowcount == 1:
                    log.warning("took over the sync lock of %s, which died", row.holder)
                    return
        raise LockHeld(
            f"another sync is running ({row.holder}, since {row.acquired_at:%Y-%m-%d %H:%M:%S} "
            f"UTC); its lock expires at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC if it has died"
        )

    def set_run(self, run_id: int) -> None:
        with begin_write(self.engine) as conn:
            conn.execute(
                update(sync_lock)
                .where(sync_lock.c.name == LOCK_NAME, sync_lock.c.holder == self.holder)
                .values(run_id=run_id)
            )

    def refresh(self) -> bool:
        """Extend the lock; False when it was lost (expired and taken by another)."""
        with begin_write(self.engine) as conn:
            return (
                conn.execute(
                    update(sync_lock)
                    .where(sync_lock.c.name == LOCK_NAME, sync_lock.c.holder == self.holder)
                    .values(expires_at=self.clock() + timedelta(seconds=self.ttl))
                ).rowcount
                == 1
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with begin_write(self.engine) as conn:
            conn.execute(
                update(sync_lock)
                .where(sync_lock.c.name == LOCK_NAME, sync_lock.c.holder == self.holder)
                .values(holder=None, run_id=None, expires_at=None)
            )

    def keep_alive(self, on_lost: Callable[[], None]) -> None:
        """Refresh the lock every ttl/3 seconds in a daemon thread until released."""

        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    if not self.refresh():
                        log.error("the sync lock was lost (taken by another process); stopping")
                        on_lost()
                        return
                except Exception:  # a database hiccup: try again at the next beat
                    log.warning("could not refresh the sync lock", exc_info=True)

        self._thread = threading.Thread(target=beat, name="sync-lock", daemon=True)
        self._thread.start()

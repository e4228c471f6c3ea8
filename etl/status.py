"""``numbers-etl status``: is the history fresh? For monitoring checks (Nagios, Icinga,
Kubernetes probes, a cron mail): exit 0 when healthy, 1 with the reason when not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select

from etl.config import parse_interval
from etl.store.lock import vacancy
from etl.store.runs import with_counts_so_far
from etl.store.schema import sync_runs, sync_scopes

# A finished run with one of these statuses needs an operator's attention.
UNHEALTHY = ("failed", "partial", "abandoned")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``2d`` as a timedelta; ValueError otherwise."""
    seconds = parse_interval(text)
    if seconds is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 12h or 2d")
    return timedelta(seconds=seconds)


def _age(moment: datetime, now: datetime) -> str:
    return _span(now - moment)


def _span(delta: timedelta) -> str:
    """A duration for people: 45s, 12m, 5h 3m, 12h, 2d 4h."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        big, small = f"{seconds // 3600}h", f" {seconds % 3600 // 60}m"
    else:
        big, small = f"{seconds // 86400}d", f" {seconds % 86400 // 3600}h"
    return big if small[1] == "0" else big + small


@dataclass
class Status:
    now: datetime
    max_age: timedelta
    last_run: dict[str, Any] | None = None
    last_finished: dict[str, Any] | None = None
    last_success: dict[str, Any] | None = None
    scopes: list[dict[str, Any]] = field(default_factory=list)
    # Each configured scope: its last complete listing (None: never) and its latest status
    # in a finished run, so that a country failing in every run shows even when runs of
    # other countries (`sync --country`) succeed.
    configured: dict[str, tuple[datetime | None, str | None]] = field(default_factory=dict)
    # The last run is `running` but the sync lock has no live holder (``lock.vacancy``).
    orphaned: tuple[str, datetime | None] | None = None

    @property
    def problems(self) -> list[str]:
        out = self._orphan_problems() + self._scope_problems()
        if self.last_success is None:
            out.append("no sync has succeeded yet")
        else:
            at = self.last_success["finished_at"]
            if self.now - at > self.max_age:
                out.append(
                    f"the last successful sync finished {_age(at, self.now)} ago, "
                    f"more than --max-age {_span(self.max_age)}"
                )
        finished = self.last_finished
        if finished is not None and finished["status"] in UNHEALTHY:
            out.append(f"the last run ({finished['id']}) is {finished['status']}")
        return out

    def _orphan_problems(self) -> list[str]:
        if self.orphaned is None or self.last_run is None:
            return []
        why, expired = self.orphaned
        lock = {
            "free": "nothing holds the sync lock",
            "gone": "the process holding the sync lock is gone",
            "expired": "the sync lock "
            + (f"expired {_age(expired, self.now)} ago" if expired else "has no expiry"),
        }[why]
        return [
            f"run {self.last_run['id']} is marked running, but {lock}: the process running it "
            "died or lost the database. The next sync marks it abandoned; run `numbers-etl "
            "sync` now rather than wait for the schedule"
        ]

    def _scope_problems(self) -> list[str]:
        out = []
        for key, (complete, latest) in self.configured.items():
            if complete is None:
                out.append(f"{key} has never been listed completely")
            elif self.now - complete > self.max_age:
                out.append(
                    f"{key} was last listed completely {_age(complete, self.now)} ago, "
                    f"more than --max-age {_span(self.max_age)}"
                )
            if latest in ("failed", "held"):
                out.append(f"{key} is {latest} in its last run")
        return out

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def render(self) -> str:
        lines = [self._run_line("last run", self.last_run)]
        if self.last_finished is not None and self.last_finished != self.last_run:
            lines.append(self._run_line("last finished run", self.last_finished))
        lines.append(self._run_line("last successful run", self.last_success))
        for s in self.scopes:
            text = f"  {s['scope_key']}: {s['status']}, {s['items']} numbers on {s['pages']} pages"
            if s.get("available") is not None:
                text += f", {s['available']} available"
            if s.get("error"):
                text += f" ({s['error']})"
            lines.append(text)
        problems = self.problems
        if problems:
            lines.extend(f"PROBLEM: {p}" for p in problems)
        else:
            lines.append(f"OK: the last successful sync is younger than {_span(self.max_age)}")
        return "\n".join(lines)

    def _run_line(self, label: str, run: dict[str, Any] | None) -> str:
        if run is None:
            return f"{label}: none"
        started: datetime = run["started_at"]
        text = (
            f"{label}: {run['id']} {run['status']}, started {started:%Y-%m-%d %H:%M:%S} UTC "
            f"({_age(started, self.now)} ago)"
        )
        if run["finished_at"] is not None:
            text += f", took {_age(started, run['finished_at'])}"
        text += (
            f"; {'so far ' if run['status'] == 'running' else ''}"
            f"{run['items']} numbers, listed {run['listed']}, removed {run['removed']}, "
            f"price changes {run['price_changes']}"
        )
        if run["error"] and run["status"] != "succeeded":
            text += f"\n  error: {run['error']}"
        return text


def read_status(
    engine: Engine, *, now: datetime, max_age: timedelta, scope_keys: Sequence[str] = ()
) -> Status:
    """The last run, the last finished run, the last successful run, the per-country
    state of the last run, and for each of ``scope_keys`` (the configured scopes) its last
    complete listing and latest status."""
    status = Status(now=now, max_age=max_age)
    with engine.connect() as conn:
        if scope_keys:
            status.configured = _configured(conn, scope_keys)

        def latest(*where: Any) -> dict[str, Any] | None:
            row = conn.execute(
                select(sync_runs).where(*where).order_by(sync_runs.c.id.desc()).limit(1)
            ).first()
            return None if row is None else with_counts_so_far(conn, dict(row._mapping))

        status.last_run = latest()
        if status.last_run is not None and status.last_run["status"] == "running":
            status.orphaned = vacancy(conn)
            # A sync finishes its run, then releases the lock: one that ended between the
            # two reads above is finished, not orphaned.
            if (
                status.orphaned is not None
                and conn.scalar(
                    select(sync_runs.c.status).where(sync_runs.c.id == status.last_run["id"])
                )
                != "running"
            ):
                status.orphaned = None
        status.last_finished = latest(sync_runs.c.status != "running")
        status.last_success = latest(sync_runs.c.status == "succeeded")
        if status.last_run is not None:
            status.scopes = [
                dict(r._mapping)
                for r in conn.execute(
                    select(sync_scopes)
                    .where(sync_scopes.c.run_id == status.last_run["id"])
                    .order_by(sync_scopes.c.scope_key)
                )
            ]
    return status


def _configured(
    conn: Connection, scope_keys: Sequence[str]
) -> dict[str, tuple[datetime | None, str | None]]:
    """For each scope key: its last complete listing and its status in the last finished
    run that had it; two statements, whatever the number of keys."""
    s = sync_scopes.c
    keys = list(scope_keys)
    complete = dict(
        conn.execute(
            select(s.scope_key, func.max(s.finished_at))
            .where(s.scope_key.in_(keys), s.status == "complete")
            .group_by(s.scope_key)
        ).all()
    )
    finished = select(sync_runs.c.id).where(sync_runs.c.status != "running")
    last = (
        select(s.scope_key, func.max(s.run_id).label("run_id"))
        .where(s.scope_key.in_(keys), s.run_id.in_(finished.scalar_subquery()))
        .group_by(s.scope_key)
        .subquery()
    )
    latest = dict(
        conn.execute(
            select(s.scope_key, s.status).join(
                last, and_(s.scope_key == last.c.scope_key, s.run_id == last.c.run_id)
            )
        ).all()
    )
    return {key: (complete.get(key), latest.get(key)) for key in keys}

"""The ``sync_runs`` and ``sync_scopes`` records: start, finish, abandon, list."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from etl.records import Scope
from etl.store.schema import sync_runs, sync_scopes

COUNT_COLUMNS = (
    "pages",
    "items",
    "listed",
    "removed",
    "relisted",
    "changed",
    "price_changes",
    "rejected",
)

# The most characters an error keeps in `sync_runs` or `sync_scopes`: MySQL's TEXT holds
# 65,535 bytes (4 a character at most in utf8mb4), and a run whose error did not fit could
# not be recorded at all. A run's error lists its scopes' errors; each is whole in its scope.
ERROR_CHARS = 4000


def clipped(error: str | None, limit: int = ERROR_CHARS) -> str | None:
    """``error`` cut to ``limit`` characters, saying so at its end."""
    if error is None or len(error) <= limit:
        return error
    keep = max(0, limit - len(f"... ({len(error)} more characters)"))
    return error[:keep] + f"... ({len(error) - keep} more characters)"


def joined_errors(errors: Sequence[str], limit: int = ERROR_CHARS) -> str | None:
    """The scopes' errors as one text of at most ``limit`` characters for the run's row:
    as many whole as fit, then how many more failed (each one's error is in its scope's
    row of sync_scopes)."""
    text = "; ".join(errors)
    if len(text) <= limit:
        return text or None
    room = limit - len(f"; and {len(errors)} more: each scope's error is in sync_scopes")
    kept: list[str] = []
    size = 0
    for error in errors:
        size += len(error) + (2 if kept else 0)  # "; " between two
        if size > room:
            break
        kept.append(error)
    if not kept:  # the first alone is too long: cut short
        kept = [clipped(errors[0], room) or ""]
    rest = len(errors) - len(kept)
    tail = f"; and {rest} more: each scope's error is in sync_scopes" if rest else ""
    return "; ".join(kept) + tail


def mark_abandoned(conn: Connection, now: datetime) -> list[int]:
    """Runs left `running` by a killed process (the caller holds the lock, so no running
    run is alive): mark them `abandoned` and their unfinished scopes `aborted`."""
    ids = list(conn.scalars(select(sync_runs.c.id).where(sync_runs.c.status == "running")))
    if ids:
        conn.execute(
            update(sync_scopes)
            .where(sync_scopes.c.run_id.in_(ids), sync_scopes.c.status == "running")
            .values(
                status="aborted",
                finished_at=now,
                error="never finished: the process running it died or lost the database",
            )
        )
        _total_counts(conn, ids)
        conn.execute(
            update(sync_runs)
            .where(sync_runs.c.id.in_(ids))
            .values(
                status="abandoned",
                finished_at=now,
                error="the process running this sync stopped without finishing it",
            )
        )
    return ids


def start_run(conn: Connection, now: datetime, scopes: Sequence[Scope]) -> tuple[int, list[int]]:
    """Insert the run and one `running` scope row per scope; return their ids."""
    run_key = conn.execute(
        insert(sync_runs).values(
            started_at=now,
            status="running",
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            scopes=", ".join(s.key for s in scopes),
            dry_run=False,
            **dict.fromkeys(COUNT_COLUMNS, 0),
            http_retries=0,
        )
    ).inserted_primary_key
    assert run_key is not None
    run_id = run_key[0]
    scope_ids = []
    for scope in scopes:
        scope_key = conn.execute(
            insert(sync_scopes).values(
                run_id=run_id,
                scope_key=scope.key,
                country_code=scope.country_code,
                prefix=scope.prefix,
                types=",".join(scope.types) or None,
                status="running",
                started_at=now,
                **dict.fromkeys(COUNT_COLUMNS, 0),
                unreadable=0,
            )
        ).inserted_primary_key
        assert scope_key is not None
        scope_ids.append(scope_key[0])
    return int(run_id), [int(i) for i in scope_ids]


def finish_scope(
    conn: Connection, scope_row_id: int, status: str, now: datetime, error: str | None
) -> None:
    conn.execute(
        update(sync_scopes)
        .where(sync_scopes.c.id == scope_row_id)
        .values(status=status, finished_at=now, error=clipped(error))
    )


def _scope_totals(conn: Connection, run_id: int) -> dict[str, int]:
    """The run's counts summed over its scopes, which each page adds to as it commits."""
    totals = conn.execute(
        select(*(func.coalesce(func.sum(sync_scopes.c[c]), 0) for c in COUNT_COLUMNS)).where(
            sync_scopes.c.run_id == run_id
        )
    ).one()
    return dict(zip(COUNT_COLUMNS, (int(v) for v in totals), strict=True))


def _total_counts(conn: Connection, run_ids: Sequence[int]) -> None:
    for run_id in run_ids:
        conn.execute(
            update(sync_runs).where(sync_runs.c.id == run_id).values(_scope_totals(conn, run_id))
        )


def with_counts_so_far(conn: Connection, run: dict[str, Any]) -> dict[str, Any]:
    """``run`` (a ``sync_runs`` row), its counts those of its pages committed so far when it
    is still running: the run's own are written when it ends."""
    if run["status"] != "running":
        return run
    return {**run, **_scope_totals(conn, run["id"])}


def finish_run(
    conn: Connection,
    run_id: int,
    status: str,
    now: datetime,
    error: str | None,
    http_retries: int = 0,
) -> None:
    _total_counts(conn, [run_id])
    conn.execute(
        update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(status=status, finished_at=now, error=clipped(error), http_retries=http_retries)
    )


def recent_runs(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit))
        return [with_counts_so_far(conn, dict(r._mapping)) for r in rows.all()]


def run_scopes(engine: Engine, run_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(sync_scopes).where(sync_scopes.c.run_id == run_id).order_by(sync_scopes.c.id)
        )
        return [dict(r._mapping) for r in rows]

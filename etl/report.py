"""How a finished run is told: one summary line, a per-scope table, JSON log fields."""

from __future__ import annotations

from typing import Any

from etl.sync import RunResult

COUNTS = ("pages", "items", "listed", "removed", "relisted", "changed", "price_changes")
SCOPE_COLUMNS = ("pages", "numbers", "listed", "removed", "relisted", "changed", "prices")


def summary_line(result: RunResult) -> str:
    finished = result.finished_at or result.started_at
    seconds = (finished - result.started_at).total_seconds()
    return (
        f"run {result.run_id} {result.status} in {seconds:.1f}s: "
        f"{result.total('items')} numbers on {result.total('pages')} pages; "
        f"listed {result.total('listed')}, removed {result.total('removed')}, "
        f"relisted {result.total('relisted')}, changed {result.total('changed')}, "
        f"price changes {result.total('price_changes')}, rejected {result.total('rejected')}"
    )


def scope_table(result: RunResult) -> list[str]:
    """One aligned row per scope, then each scope's error."""
    header = ("scope", "status", *SCOPE_COLUMNS, "rejected")
    rows = [header] + [
        (s.scope.key, s.status, *(str(getattr(s, n)) for n in (*COUNTS, "rejected")))
        for s in result.scopes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  "
        + "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.extend(f"  {s.scope.key}: {s.error}" for s in result.scopes if s.error)
    return lines


def run_fields(result: RunResult) -> dict[str, Any]:
    """The run's figures as ``extra=`` fields of a JSON log line."""
    fields: dict[str, Any] = {"run_id": result.run_id, "status": result.status}
    fields.update({name: result.total(name) for name in (*COUNTS, "rejected")})
    fields["scopes"] = {s.scope.key: s.status for s in result.scopes}
    if result.http:
        fields["http"] = result.http
    if result.error:
        fields["error"] = result.error
    return fields


RUN_COLUMNS = ("id", "started_at", "status", *COUNTS, "rejected")


def runs_table(rows: list[dict[str, Any]]) -> list[str]:
    """Recent runs (``sync_runs`` rows) as an aligned table, then each run's error."""
    table = [RUN_COLUMNS] + [
        tuple(f"{r[c]:%Y-%m-%d %H:%M:%S}" if c == "started_at" else str(r[c]) for c in RUN_COLUMNS)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(RUN_COLUMNS))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.extend(f"run {r['id']}: {r['error']}" for r in rows if r["error"])
    return lines

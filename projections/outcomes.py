"""What became of one event, as the history recorded it (the ``outcome`` op)."""

from __future__ import annotations

from typing import Any

import duckdb
import msgspec

from memstream.schemas.queries import OutcomeResult

__all__ = ["outcome"]

_COLUMNS = "seq, type, memory_id, outcome, revision, current_revision, message"


def outcome(
    con: duckdb.DuckDBPyConnection, tenant: str, *, event_id: str | None, seq: int | None
) -> OutcomeResult | None:
    """The decision on the tenant's event by id or by seq; an event the history applied
    that decides nothing (not a memory event) is ``applied``; None when the history has
    no such event of the tenant (not yet applied, another tenant's, dead-lettered)."""
    where, value = ("id", event_id) if event_id is not None else ("seq", seq)
    row: Any = con.execute(
        f"SELECT {_COLUMNS} FROM outcomes WHERE tenant = ? AND {where} = ?", [tenant, value]
    ).fetchone()
    if row is not None:
        return OutcomeResult(
            seq=row[0], type=row[1], memory_id=row[2], outcome=row[3], revision=row[4],
            current_revision=row[5], message=msgspec.UNSET if row[6] is None else row[6],
        )  # fmt: skip
    row = con.execute(
        f"SELECT seq, type, memory_id FROM events WHERE tenant = ? AND {where} = ?",
        [tenant, value],
    ).fetchone()
    if row is not None:
        return OutcomeResult(seq=row[0], type=row[1], memory_id=row[2], outcome="applied")
    row = con.execute(
        f"SELECT seq FROM erased_ids WHERE tenant = ? AND {where} = ?", [tenant, value]
    ).fetchone()
    if row is not None:  # applied, and erased since with its memory
        return OutcomeResult(seq=row[0], type="", outcome="applied")
    return None

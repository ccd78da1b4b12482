"""The history's side of the memory fold: memories as DuckDB rows, the stored rows a batch
builds on, and the outcome rows of its memory events."""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Mapping
from typing import Any, Final

import duckdb
import msgspec
import pyarrow as pa

from memstream.projections._idindex import IdIndex
from memstream.projections._tables import KEYS, TABLES
from memstream.projections.memory import MEMORY_KINDS, MEMORY_TYPES, Key, MemoryFold, revision
from memstream.projections.quotas import Quotas
from memstream.schemas import events as ev
from memstream.schemas.events import UnknownEvent

__all__ = ["Item", "Row", "RowFold", "outcome_rows"]

Row = dict[str, Any]
Item = tuple[int, "ev.AnyEvent | UnknownEvent", bytes]
"""(seq, event, JSON body as published) of one event a batch applies."""

_UTC = dt.UTC
_json = msgspec.json.Encoder()
# A row dict to the table's column order, in C.
_ROW_GETTERS: Final = {t: operator.itemgetter(*(c for c, _, _ in TABLES[t])) for t in MEMORY_KINDS}


def _dumps(value: Any) -> str | None:
    return None if value is None else _json.encode(value).decode()


def outcome_rows(items: list[Item], fold: MemoryFold[Any]) -> list[tuple[Any, ...]]:
    """The outcome rows of the batch's memory events, in stream order."""
    rows = []
    for seq, e, _ in items:
        decided = fold.decisions.get(seq)
        if decided is not None:
            memory_id = e.from_id if isinstance(e, ev.MemoryLinked) else e.memory_id  # type: ignore[union-attr]
            rows.append((seq, e.tenant, e.id, e.type, memory_id, decided.outcome,
                         decided.revision, decided.current, decided.message))  # fmt: skip
    return rows


class RowFold(MemoryFold[Row]):
    """The memory fold over history rows: the batch's final knowledge and solutions
    rows, and the stored rows they replace."""

    def __init__(
        self,
        items: list[Item],
        key_indexes: dict[str, IdIndex],
        con: duckdb.DuckDBPyConnection,
        quotas: Quotas | None = None,
        reapplied: Mapping[int, Any] | None = None,
    ) -> None:
        reapplied = reapplied or {}
        super().__init__(
            _stored(items, key_indexes, con, reapplied), quotas, lambda t: _usage(con, t)
        )
        self.new_keys: dict[str, list[int]] = {}
        # The tenants whose quota the batch set -> the sequence of the last quota.set.
        self.quota_set: dict[str, int] = {}
        for seq, e, _ in items:
            if e.type in MEMORY_TYPES:
                self.apply(seq, e)  # type: ignore[arg-type]
            elif isinstance(e, ev.MemoryLinked):
                self.link(seq, e)
            elif isinstance(e, ev.QuotaSet):
                self.set_quota(e)
                self.quota_set[e.tenant] = seq
            elif isinstance(e, ev.QuotaReapplied):
                self.reapply(e, reapplied)

    def created(self, seq: int, e: ev.KnowledgeStored | ev.SolutionStored) -> Row:
        row: Row = {
            "tenant": e.tenant, "memory_id": e.memory_id, "agent": e.agent,
            "tags": list(e.tags), "metadata": _dumps(e.metadata),
            "created_seq": seq, "updated_seq": seq, "created_at": e.ts, "updated_at": e.ts,
            "task_id": e.task_id, "user_id": e.user_id, "run_id": e.run_id,
            "project": e.project, "expires_at": e.expiry(), "revision": 1,
        }  # fmt: skip
        if isinstance(e, ev.KnowledgeStored):
            row.update(domain=e.domain, content=e.content)
        else:
            row.update(problem=e.problem, solution=e.solution)
        return row

    def stored_again(self, record: Row, seq: int, e: ev.KnowledgeStored | ev.SolutionStored) -> Row:
        return {
            **self.created(seq, e),
            "created_seq": record["created_seq"],
            "created_at": record["created_at"],
            "revision": (record["revision"] or 1) + 1,
        }

    def revision_of(self, record: Row) -> int | None:
        return int(record["revision"] or 1)

    def expired(self, record: Row, at: dt.datetime) -> bool:
        expires = record.get("expires_at")
        return expires is not None and expires <= at

    def expiry_of(self, record: Row) -> float | None:
        expires = record.get("expires_at")
        return None if expires is None else float(expires.timestamp())

    def seq_of(self, record: Row) -> int:
        return int(record["updated_seq"])

    def revised(self, record: Row, kind: str, seq: int, e: ev.MemoryRevised) -> Row:
        changes = revision(e, kind)
        if "metadata" in changes:
            changes["metadata"] = _dumps(changes["metadata"])
        expiry = e.expiry()
        if expiry is not None:
            changes["expires_at"] = expiry
        return {
            **record, **changes, "updated_seq": seq, "updated_at": e.ts,
            "revision": (record["revision"] or 1) + 1,
        }  # fmt: skip

    def replacements(self) -> dict[str, tuple[list[Key], list[tuple[Any, ...]]]]:
        """Per table: the stored keys to delete, and the rows to insert after."""
        out: dict[str, tuple[list[Key], list[tuple[Any, ...]]]] = {}
        for table, rows in self.state.items():
            if not rows:
                continue
            stored = self.stored[table]
            row_tuple = _ROW_GETTERS[table]
            final = [row_tuple(r) for r in rows.values() if r is not None]
            out[table] = ([k for k in rows if k in stored], final)
            self.new_keys[table] = [
                hash(k) for k, r in rows.items() if r is not None and k not in stored
            ]
        return out


def _usage(con: duckdb.DuckDBPyConnection, tenant: str) -> list[tuple[str, int, float | None]]:
    """The tenant's stored memories as quotas count them: (memory_id, bytes, expiry)."""
    rows: list[tuple[str, int, float | None]] = con.execute(
        "SELECT memory_id, coalesce(strlen(content), 0), epoch(expires_at) "
        "FROM knowledge WHERE tenant = $1 UNION ALL "
        "SELECT memory_id, coalesce(strlen(problem), 0) + coalesce(strlen(solution), 0), "
        "epoch(expires_at) FROM solutions WHERE tenant = $1",
        [tenant],
    ).fetchall()
    return rows


def _stored(
    items: list[Item],
    key_indexes: dict[str, IdIndex],
    con: duckdb.DuckDBPyConnection,
    reapplied: Mapping[int, Any],
) -> dict[str, dict[Key, Row]]:
    """The stored rows of the memories the batch touches (or brings back), where they
    may exist."""
    stored: dict[str, dict[Key, Row]] = {t: {} for t in MEMORY_KINDS}
    touched = {(e.tenant, e.memory_id) for _, e, _ in items if e.type in MEMORY_TYPES}  # type: ignore[union-attr]
    touched |= {(e.tenant, e.from_id) for _, e, _ in items if isinstance(e, ev.MemoryLinked)}
    touched |= {(e.tenant, e.memory_id) for e in reapplied.values() if e.type in MEMORY_TYPES}
    if not touched:
        return stored
    ordered = list(touched)
    hashes = [hash(k) for k in ordered]
    for table in MEMORY_KINDS:
        maybe = key_indexes[table].contains(hashes)
        candidates = {k for k, m in zip(ordered, maybe, strict=True) if m}
        if candidates:
            stored[table] = _load(con, table, candidates)
    return stored


def _load(con: duckdb.DuckDBPyConnection, table: str, keys: set[Key]) -> dict[Key, Row]:
    a, b = KEYS[table]
    key_table = pa.table({a: [k[0] for k in keys], b: [k[1] for k in keys]})
    con.register("_want", key_table)
    try:
        cur = con.execute(
            f"SELECT {table}.* FROM {table} SEMI JOIN _want "
            f"ON {table}.{a} = _want.{a} AND {table}.{b} = _want.{b}"
        )
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.unregister("_want")
    loaded: dict[Key, Row] = {}
    for values in rows:
        row = dict(zip(names, values, strict=True))
        for name, value in row.items():
            # Stored naive UTC; the fold compares with the events' aware timestamps.
            if isinstance(value, dt.datetime):
                row[name] = value.replace(tzinfo=_UTC)
        loaded[(row[a], row[b])] = row
    return loaded

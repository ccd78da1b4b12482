"""The history projection: every event into DuckDB, exactly once, in stream order.

``apply(batch)`` writes a batch's rows and the projection's checkpoint in one transaction,
so a batch is either wholly applied or not at all; a redelivered event at or below the
checkpoint is skipped, and so is an event id already applied (JetStream drops duplicate
ids only within its window). Rows go in as Arrow tables, never row by row.

Tables that hold current state (knowledge, solutions, collaborations, tasks, context) are
folded in Python over the batch in stream order, starting from their stored rows, then
written back by key; log tables (events, links, messages, task_events, flow_runs,
conversations, tool_usage) are appended.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec
import pyarrow as pa

from projections._idindex import IdIndex, id_hash
from projections._tables import ARROW_SCHEMAS, DDL, KEYS, TABLES
from projections.base import Batch
from schemas import events as ev
from schemas.events import UnknownEvent

__all__ = ["TASK_STATUS", "HistoryProjection"]

# A task's status only moves up this ranking; between equal ranks the later event wins,
# so the same events give the same state whatever order they arrive in.
TASK_STATUS: Final = {
    "task.created": ("created", 0),
    "task.started": ("running", 1),
    "task.completed": ("completed", 2),
    "task.failed": ("failed", 2),
}
_RANK: Final = {status: rank for status, rank in TASK_STATUS.values()}

_json = msgspec.json.Encoder()
_UTC = dt.UTC
Row = dict[str, Any]
Key = tuple[str, str]


def _dumps(value: Any) -> str | None:
    return None if value is None else _json.encode(value).decode()


def _naive(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(_UTC).replace(tzinfo=None)


class HistoryProjection:
    """The DuckDB history of every event. Not thread-safe: one writer at a time."""

    name = "history"

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        # No file access from SQL: `memstream sql` must not become a way to read the disk.
        self.con = duckdb.connect(
            str(self.path), read_only=read_only, config={"enable_external_access": False}
        )
        if not read_only:
            self.con.execute(DDL)
        row = self.con.execute(
            "SELECT last_seq FROM projection_state WHERE name = ?", [self.name]
        ).fetchone()
        self._checkpoint = int(row[0]) if row else 0
        self._ids: IdIndex | None = None
        self.duplicates_skipped = 0

    @property
    def checkpoint(self) -> int:
        return self._checkpoint

    def close(self) -> None:
        """Close the database; safe to call twice. A WAL is folded into the file first."""
        with contextlib.suppress(duckdb.ConnectionException):
            if not self.read_only:
                self.con.execute("CHECKPOINT")
            self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for another thread (queries) on the same database."""
        return self.con.cursor()

    # --- apply ------------------------------------------------------------------

    def _id_index(self) -> IdIndex:
        # Built on first use, so opening a database to read it costs nothing.
        if self._ids is None:
            hashes = self.con.execute("SELECT id_hash FROM events").fetchnumpy()["id_hash"]
            self._ids = IdIndex(hashes)
        return self._ids

    def apply(self, batch: Batch, upto: int = 0) -> None:
        """Apply a batch in stream order; effect and checkpoint commit together."""
        fresh = [(seq, e) for seq, e in batch if seq > self._checkpoint]
        last_seq = max(fresh[-1][0] if fresh else 0, upto)
        if last_seq <= self._checkpoint:
            return
        fresh = self._drop_known_ids(fresh) if fresh else fresh
        fold = _Fold(fresh)
        with self._transaction():
            fold.load(self.con)
            fold.run()
            for table, rows in fold.appends.items():
                self._insert(table, rows)
            for table, (keys, rows) in fold.replacements.items():
                self._replace(table, keys, rows)
            self.con.execute(
                "INSERT OR REPLACE INTO projection_state VALUES (?, ?, ?)",
                [self.name, last_seq, _naive(dt.datetime.now(_UTC))],
            )
        self._checkpoint = last_seq
        self._id_index().add(fold.hashes)

    def _drop_known_ids(
        self, fresh: list[tuple[int, ev.AnyEvent | UnknownEvent]]
    ) -> list[tuple[int, ev.AnyEvent | UnknownEvent]]:
        hashes = [id_hash(e.id) for _, e in fresh]
        maybe = self._id_index().contains(hashes)
        known: set[str] = set()
        if any(maybe):
            candidates = [e.id for (_, e), m in zip(fresh, maybe, strict=True) if m]
            known = {
                r[0]
                for r in self.con.execute(
                    "SELECT id FROM events WHERE list_contains(?, id)", [candidates]
                ).fetchall()
            }
        kept: list[tuple[int, ev.AnyEvent | UnknownEvent]] = []
        seen: set[str] = set()
        for item in fresh:
            event_id = item[1].id
            if event_id in known or event_id in seen:
                self.duplicates_skipped += 1
                continue
            seen.add(event_id)
            kept.append(item)
        return kept

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _arrow(self, table: str, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
        schema = ARROW_SCHEMAS[table]
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema)
        arrays = []
        for values, field in zip(columns, schema, strict=True):
            if pa.types.is_timestamp(field.type):
                # Aware datetimes in, UTC instants out, tz dropped: one vectorised cast.
                arr = pa.array(values, pa.timestamp("us", tz="UTC")).cast(field.type)
            else:
                arr = pa.array(values, field.type)
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=schema)

    def _insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        self.con.register("_batch", self._arrow(table, rows))
        try:
            self.con.execute(f"INSERT INTO {table} SELECT * FROM _batch")
        finally:
            self.con.unregister("_batch")

    def _replace(self, table: str, keys: list[Key], rows: list[tuple[Any, ...]]) -> None:
        a, b = KEYS[table]
        self.con.register("_keys", pa.table({a: [k[0] for k in keys], b: [k[1] for k in keys]}))
        try:
            self.con.execute(
                f"DELETE FROM {table} USING _keys "
                f"WHERE {table}.{a} = _keys.{a} AND {table}.{b} = _keys.{b}"
            )
        finally:
            self.con.unregister("_keys")
        self._insert(table, rows)


class _Fold:
    """Turns one batch into appended rows and replaced current-state rows."""

    def __init__(self, batch: list[tuple[int, ev.AnyEvent | UnknownEvent]]) -> None:
        self.batch = batch
        self.hashes: list[int] = []
        self.appends: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES if t not in KEYS}
        # Current state by key; None marks a row to delete.
        self.state: dict[str, dict[Key, Row | None]] = {t: {} for t in KEYS}
        self.replacements: dict[str, tuple[list[Key], list[tuple[Any, ...]]]] = {}

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read the stored rows that this batch changes rather than replaces."""
        memories: set[Key] = set()
        tasks: set[Key] = set()
        for _, e in self.batch:
            if isinstance(e, ev.MemoryRevised | ev.MemoryForgotten):
                memories.add((e.tenant, e.memory_id))
            elif isinstance(e, ev.TaskCreated | ev.TaskStarted | ev.TaskCompleted | ev.TaskFailed):
                tasks.add((e.tenant, e.task_id))
        for table, keys in (("knowledge", memories), ("solutions", memories), ("tasks", tasks)):
            if keys:
                self.state[table].update(_load(con, table, keys))

    def run(self) -> None:
        for seq, e in self.batch:
            self.hashes.append(id_hash(e.id))
            self._event_row(seq, e)
            if not isinstance(e, UnknownEvent):
                self._apply(seq, e)
        for table, rows in self.state.items():
            if rows:
                names = [c for c, _, _ in TABLES[table]]
                keys = list(rows)
                final = [tuple(r[n] for n in names) for r in rows.values() if r is not None]
                self.replacements[table] = (keys, final)

    def _event_row(self, seq: int, e: ev.AnyEvent | UnknownEvent) -> None:
        body = e.raw.decode() if isinstance(e, UnknownEvent) else _json.encode(e).decode()
        self.appends["events"].append((
            seq, e.id, self.hashes[-1], e.type, e.tenant, e.agent, e.ts, e.task_id,
            e.correlation_id, e.causation_id, e.v, body,
        ))  # fmt: skip

    def _memory(self, e: ev.MemoryRevised | ev.MemoryForgotten) -> tuple[str, Row] | None:
        key = (e.tenant, e.memory_id)
        for table in ("knowledge", "solutions"):
            row = self.state[table].get(key)
            if row is not None:
                return table, row
        return None

    def _apply(self, seq: int, e: ev.AnyEvent) -> None:
        match e:
            case ev.KnowledgeStored() | ev.SolutionStored():
                table = "knowledge" if isinstance(e, ev.KnowledgeStored) else "solutions"
                row: Row = {
                    "tenant": e.tenant, "memory_id": e.memory_id, "agent": e.agent,
                    "tags": list(e.tags), "metadata": _dumps(e.metadata),
                    "created_seq": seq, "updated_seq": seq,
                    "created_at": e.ts, "updated_at": e.ts,
                }  # fmt: skip
                if isinstance(e, ev.KnowledgeStored):
                    row.update(domain=e.domain, content=e.content)
                else:
                    row.update(problem=e.problem, solution=e.solution)
                self.state[table][(e.tenant, e.memory_id)] = row
            case ev.MemoryRevised():
                found = self._memory(e)
                if found is None:
                    return  # Nothing to revise (kept in `events` all the same).
                table, row = found
                fields = ("content",) if table == "knowledge" else ("problem", "solution")
                for name in fields:
                    if getattr(e, name) is not None:
                        row[name] = getattr(e, name)
                if e.tags is not None:
                    row["tags"] = list(e.tags)
                if e.metadata is not None:
                    row["metadata"] = _dumps(e.metadata)
                row["updated_seq"], row["updated_at"] = seq, e.ts
            case ev.MemoryForgotten():
                key = (e.tenant, e.memory_id)
                self.state["knowledge"][key] = None
                self.state["solutions"][key] = None
            case ev.MemoryLinked():
                self.appends["memory_links"].append(
                    (seq, e.tenant, e.agent, e.from_id, e.to_id, e.relation, e.ts)
                )
            case ev.CollabRecorded():
                self.state["collaborations"][(e.tenant, e.interaction_id)] = {
                    "tenant": e.tenant, "interaction_id": e.interaction_id, "seq": seq,
                    "agent": e.agent, "initiator": e.initiator,
                    "participants": list(e.participants),
                    "task_description": e.task_description, "outcome": e.outcome,
                    "metadata": _dumps(e.metadata), "ts": e.ts,
                }  # fmt: skip
            case ev.CollabMessage():
                self.appends["collab_messages"].append((
                    seq, e.tenant, e.interaction_id, e.agent, e.sender, list(e.recipients),
                    e.content, e.ts,
                ))  # fmt: skip
            case ev.TaskCreated() | ev.TaskStarted() | ev.TaskCompleted() | ev.TaskFailed():
                self._task(seq, e)
            case ev.FlowRunRecorded():
                self.appends["flow_runs"].append((
                    seq, e.tenant, e.flow_id, e.run_id, e.agent, e.status, e.duration_ms,
                    _dumps(e.data), e.ts,
                ))  # fmt: skip
            case ev.ContextSet():
                expires = e.ts + dt.timedelta(seconds=e.ttl_s) if e.ttl_s else None
                self.state["context"][(e.tenant, e.key)] = {
                    "tenant": e.tenant, "key": e.key, "data": _dumps(e.data),
                    "agent": e.agent, "set_at": e.ts, "expires_at": expires, "seq": seq,
                }  # fmt: skip
            case ev.ContextCleared():
                self.state["context"][(e.tenant, e.key)] = None
            case ev.ConversationTurn():
                self.appends["conversations"].append(
                    (seq, e.tenant, e.session_id, e.agent, e.role, e.content, e.ts)
                )
            case ev.ToolUsed():
                self.appends["tool_usage"].append((
                    seq, e.tenant, e.agent, e.tool, _dumps(e.args), _dumps(e.result),
                    e.duration_ms, e.ok, e.task_id, e.ts,
                ))  # fmt: skip

    def _task(
        self, seq: int, e: ev.TaskCreated | ev.TaskStarted | ev.TaskCompleted | ev.TaskFailed
    ) -> None:
        key = (e.tenant, e.task_id)
        row = self.state["tasks"].get(key)
        if row is None:
            row = {name: None for name, _, _ in TABLES["tasks"]}
            row.update(tenant=e.tenant, task_id=e.task_id, created_seq=seq, status=None)
            self.state["tasks"][key] = row
        status, rank = TASK_STATUS[e.type]
        if row["status"] is None or rank >= _RANK[row["status"]]:
            row["status"] = status
        match e:
            case ev.TaskCreated():
                row.update(
                    title=e.title, assignee=e.assignee, parent_id=e.parent_id,
                    flow_id=e.flow_id, metadata=_dumps(e.metadata), agent=e.agent,
                    created_at=e.ts,
                )  # fmt: skip
            case ev.TaskStarted():
                if row["started_at"] is None or e.ts < row["started_at"]:
                    row["started_at"] = e.ts
            case ev.TaskCompleted():
                row.update(output=_dumps(e.output), finished_at=e.ts)
                if e.metadata and row["metadata"] is None:
                    row["metadata"] = _dumps(e.metadata)
            case ev.TaskFailed():
                row.update(error=e.error, finished_at=e.ts)
        row["last_seq"] = seq
        self.appends["task_events"].append(
            (seq, e.tenant, e.task_id, e.type, e.agent, e.ts, row["status"])
        )


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

"""The history projection: every event into DuckDB, exactly once, in stream order.

``apply(batch)`` writes a batch's rows and the projection's checkpoint in one transaction,
so a batch is either wholly applied or not at all; a redelivered event at or below the
checkpoint is skipped, and so is an event id already applied (JetStream drops duplicate
ids only within its window). Rows go in as Arrow tables, never row by row.

The batch goes to DuckDB once, as a staging table of (seq, id hash, type, ts, JSON
body). ``events`` and the log tables (links, messages, flow runs, conversation turns,
tool calls) are filled from it by SQL, so their columns are pulled out of the JSON in
DuckDB's own threads rather than in Python under the GIL; ``events.body`` keeps the
bytes exactly as published. Tables that hold current state (knowledge, solutions,
collaborations, tasks, context) are folded in Python over the batch in stream order,
starting from their stored rows, and written back by key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from projections._idindex import Hashes, IdIndex
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
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_US = dt.timedelta(microseconds=1)

_STAGING = pa.schema([
    ("seq", pa.int64()), ("id", pa.string()), ("type", pa.string()), ("ts_us", pa.int64()),
    ("raw", pa.binary()),
])  # fmt: skip
# The batch as the log statements read it: the body as text, checked as UTF-8 by DuckDB.
_STAGED = "(SELECT seq, type, ts_us, decode(raw) AS body FROM _staging)"

# A JSON value at a path, or SQL NULL where it is JSON null or missing.
_MACROS = (
    "CREATE OR REPLACE MACRO ms_json(j, p) AS "
    "CASE WHEN coalesce(json_type(j, p), 'NULL') = 'NULL' THEN NULL ELSE json_extract(j, p) END"
)

_EVENTS_SQL = """
    INSERT INTO events SELECT
        seq, body->>'$.id', type, body->>'$.tenant', body->>'$.agent',
        make_timestamp(ts_us), body->>'$.task_id', body->>'$.correlation_id',
        body->>'$.causation_id', coalesce((body->>'$.v')::BIGINT, 1), body
    FROM _STAGED"""

# Log tables, filled from the staging table by type.
_LOG_SQL = {
    "memory.linked": """
        INSERT INTO memory_links SELECT
            seq, body->>'$.tenant', body->>'$.agent', body->>'$.from_id', body->>'$.to_id',
            body->>'$.relation', make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'memory.linked'""",
    "collab.message": """
        INSERT INTO collab_messages SELECT
            seq, body->>'$.tenant', body->>'$.interaction_id', body->>'$.agent',
            body->>'$.sender', CAST(body->'$.recipients' AS VARCHAR[]), body->>'$.content',
            make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'collab.message'""",
    "flow.run_recorded": """
        INSERT INTO flow_runs SELECT
            seq, body->>'$.tenant', body->>'$.flow_id', body->>'$.run_id', body->>'$.agent',
            body->>'$.status', (body->>'$.duration_ms')::BIGINT, ms_json(body, '$.data'),
            make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'flow.run_recorded'""",
    "conversation.turn": """
        INSERT INTO conversations SELECT
            seq, body->>'$.tenant', body->>'$.session_id', body->>'$.agent', body->>'$.role',
            body->>'$.content', make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'conversation.turn'""",
    "tool.used": """
        INSERT INTO tool_usage SELECT
            seq, body->>'$.tenant', body->>'$.agent', body->>'$.tool', ms_json(body, '$.args'),
            ms_json(body, '$.result'), (body->>'$.duration_ms')::BIGINT,
            (body->>'$.ok')::BOOLEAN, body->>'$.task_id', make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'tool.used'""",
}
Row = dict[str, Any]
Key = tuple[str, str]


_EVENTS_SQL = _EVENTS_SQL.replace("_STAGED", _STAGED)
_LOG_SQL = {t: sql.replace("_STAGED", _STAGED) for t, sql in _LOG_SQL.items()}

_Item = tuple[int, "ev.AnyEvent | UnknownEvent", bytes]
"""(seq, event, JSON body as published) of one event a batch applies."""

# Event types folded in Python into current-state tables (and task_events): the tables
# whose rows they may change, and the field that names the row.
_MEMORY = (("knowledge", "solutions"), "memory_id")
_TASK = (("tasks",), "task_id")
_CONTEXT = (("context",), "key")
_TOUCHES: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "knowledge.stored": _MEMORY, "solution.stored": _MEMORY, "memory.revised": _MEMORY,
    "memory.forgotten": _MEMORY, "collab.recorded": (("collaborations",), "interaction_id"),
    "task.created": _TASK, "task.started": _TASK, "task.completed": _TASK,
    "task.failed": _TASK, "context.set": _CONTEXT, "context.cleared": _CONTEXT,
}  # fmt: skip
# A row dict to the table's column order, in C.
_ROW_GETTERS: Final = {t: operator.itemgetter(*(c for c, _, _ in TABLES[t])) for t in KEYS}


def _body(event: ev.AnyEvent | UnknownEvent) -> bytes:
    return event.raw if isinstance(event, UnknownEvent) else _json.encode(event)


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
            self.con.execute(_MACROS)
            # Checkpoint the WAL into the file less often than the 16 MB default: each
            # checkpoint costs more as the database grows, and ingest stalls meanwhile.
            self.con.execute("SET wal_autocheckpoint = '256MB'")
        row = self.con.execute(
            "SELECT last_seq FROM projection_state WHERE name = ?", [self.name]
        ).fetchone()
        self._checkpoint = int(row[0]) if row else 0
        self._ids: IdIndex | None = None
        # Per current-state table, the keys it may hold: a key not in here is new, so a
        # batch needs neither to read nor to delete its row (the common case).
        self._keys: dict[str, IdIndex] | None = None
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
            # DuckDB's hash(), not one of ours: the index is rebuilt from the table by the
            # same DuckDB that hashes new batches, so the two always agree.
            hashes = self.con.execute(
                "SELECT (hash(id) & 9223372036854775807)::BIGINT AS h FROM events"
            ).fetchnumpy()
            self._ids = IdIndex(hashes["h"])
        return self._ids

    def _key_indexes(self) -> dict[str, IdIndex]:
        if self._keys is None:
            self._keys = {}
            for table, (a, b) in KEYS.items():
                pairs = self.con.execute(f"SELECT {a}, {b} FROM {table}").fetchall()
                # hash(), not a stable hash: this index lives and dies with the process.
                self._keys[table] = IdIndex(hash(p) for p in pairs)
        return self._keys

    def apply(self, batch: Batch, upto: int = 0, bodies: Sequence[bytes] | None = None) -> None:
        """Apply a batch in stream order; effect and checkpoint commit together.

        ``bodies`` are the events as published, aligned with ``batch``; without them
        each event is encoded again (same fields, unknown ones lost).
        """
        if bodies is None:
            bodies = [_body(e) for _, e in batch]
        if batch and batch[0][0] > self._checkpoint:
            fresh: list[_Item] = [(s, e, b) for (s, e), b in zip(batch, bodies, strict=True)]
        else:
            fresh = [
                (s, e, b) for (s, e), b in zip(batch, bodies, strict=True) if s > self._checkpoint
            ]
        last_seq = max(fresh[-1][0] if fresh else 0, upto)
        if last_seq <= self._checkpoint:
            return
        with self._transaction():
            items, hashes = self._stage(fresh) if fresh else ([], None)
            fold = _Fold(items, self._key_indexes())
            if items:
                self._insert_logs(items)
            fold.load(self.con)
            fold.run()
            for table, rows in fold.appends.items():
                self._insert(table, rows)
            for table, (stale, rows) in fold.replacements.items():
                self._replace(table, stale, rows)
            self.con.execute(
                "INSERT OR REPLACE INTO projection_state VALUES (?, ?, ?)",
                [self.name, last_seq, _naive(dt.datetime.now(_UTC))],
            )
        self._checkpoint = last_seq
        if hashes is not None:
            self._id_index().add(hashes)
        for table, keys in fold.new_keys.items():
            self._key_indexes()[table].add(keys)

    def _stage(self, fresh: list[_Item]) -> tuple[list[_Item], Hashes]:
        """Register the batch as ``_staging``, without ids applied before; their hashes."""
        events = [i[1] for i in fresh]
        staging = pa.Table.from_arrays(
            [
                pa.array([i[0] for i in fresh], pa.int64()),
                pa.array([e.id for e in events], pa.string()),
                pa.array([e.type for e in events], pa.string()),
                pa.array([(e.ts - _EPOCH) // _US for e in events], pa.int64()),
                pa.array([i[2] for i in fresh], pa.binary()),
            ],
            schema=_STAGING,
        )
        self.con.register("_staging", staging)
        hashes = self.con.execute(
            "SELECT (hash(id) & 9223372036854775807)::BIGINT AS h FROM _staging"
        ).fetchnumpy()["h"]
        maybe = self._id_index().contains(hashes)
        repeated = len(np.unique(hashes)) != len(hashes)
        if not maybe.any() and not repeated:
            return fresh, hashes
        # Rare: an id seen before (past JetStream's window) or twice in this batch.
        candidates = [e.id for e, m in zip(events, maybe, strict=True) if m]
        known = (
            {
                r[0]
                for r in self.con.execute(
                    "SELECT id FROM events WHERE list_contains(?, id)", [candidates]
                ).fetchall()
            }
            if candidates
            else set()
        )
        keep: list[bool] = []
        seen: set[str] = set()
        for e in events:
            ok = e.id not in known and e.id not in seen
            seen.add(e.id)
            keep.append(ok)
        self.duplicates_skipped += keep.count(False)
        mask = np.array(keep, dtype=bool)
        self.con.unregister("_staging")
        self.con.register("_staging", staging.filter(pa.array(mask)))
        return [i for i, k in zip(fresh, keep, strict=True) if k], hashes[mask]

    def _insert_logs(self, items: list[_Item]) -> None:
        types = {i[1].type for i in items}
        try:
            self.con.execute(_EVENTS_SQL)
            for type_, sql in _LOG_SQL.items():
                if type_ in types:
                    self.con.execute(sql)
        finally:
            self.con.unregister("_staging")

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
        if rows:
            # A relation insert costs less per statement than register + INSERT ... SELECT.
            self.con.from_arrow(self._arrow(table, rows)).insert_into(table)

    def _replace(self, table: str, stale: list[Key], rows: list[tuple[Any, ...]]) -> None:
        """Delete the rows of ``stale`` keys, then insert the batch's final rows."""
        if stale:
            a, b = KEYS[table]
            keys = pa.table({a: [k[0] for k in stale], b: [k[1] for k in stale]})
            self.con.register("_keys", keys)
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

    def __init__(self, items: list[_Item], key_indexes: dict[str, IdIndex]) -> None:
        self.items = items
        self.key_indexes = key_indexes
        self.new_keys: dict[str, list[int]] = {}
        # Keys whose stored row this batch may change: loaded first, deleted at write.
        self.stored: dict[str, set[Key]] = {t: set() for t in KEYS}
        self.appends: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES if t not in KEYS}
        # Current state by key; None marks a row to delete.
        self.state: dict[str, dict[Key, Row | None]] = {t: {} for t in KEYS}
        self.replacements: dict[str, tuple[list[Key], list[tuple[Any, ...]]]] = {}

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read the stored rows of the keys this batch touches that may exist already."""
        touched: dict[str, set[Key]] = {t: set() for t in KEYS}
        for _, e, _ in self.items:
            where = _TOUCHES.get(e.type)
            if where is not None:
                key = (e.tenant, getattr(e, where[1]))
                for table in where[0]:
                    touched[table].add(key)
        for table, keys in touched.items():
            if not keys:
                continue
            ordered = list(keys)
            maybe = self.key_indexes[table].contains([hash(k) for k in ordered])
            candidates = {k for k, m in zip(ordered, maybe, strict=True) if m}
            if candidates:
                loaded = _load(con, table, candidates)
                self.stored[table] = set(loaded)
                self.state[table].update(loaded)

    def run(self) -> None:
        for seq, e, _ in self.items:
            if e.type in _TOUCHES:
                self._apply(seq, e)  # type: ignore[arg-type]
        for table, rows in self.state.items():
            if rows:
                row_tuple = _ROW_GETTERS[table]
                final = [row_tuple(r) for r in rows.values() if r is not None]
                stale = [k for k in rows if k in self.stored[table]]
                self.replacements[table] = (stale, final)
                self.new_keys[table] = [
                    hash(k)
                    for k, r in rows.items()
                    if r is not None and k not in self.stored[table]
                ]

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
            case ev.CollabRecorded():
                self.state["collaborations"][(e.tenant, e.interaction_id)] = {
                    "tenant": e.tenant, "interaction_id": e.interaction_id, "seq": seq,
                    "agent": e.agent, "initiator": e.initiator,
                    "participants": list(e.participants),
                    "task_description": e.task_description, "outcome": e.outcome,
                    "metadata": _dumps(e.metadata), "ts": e.ts,
                }  # fmt: skip
            case ev.TaskCreated() | ev.TaskStarted() | ev.TaskCompleted() | ev.TaskFailed():
                self._task(seq, e)
            case ev.ContextSet():
                expires = e.ts + dt.timedelta(seconds=e.ttl_s) if e.ttl_s else None
                self.state["context"][(e.tenant, e.key)] = {
                    "tenant": e.tenant, "key": e.key, "data": _dumps(e.data),
                    "agent": e.agent, "set_at": e.ts, "expires_at": expires, "seq": seq,
                }  # fmt: skip
            case ev.ContextCleared():
                self.state["context"][(e.tenant, e.key)] = None

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

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
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from projections._idindex import Hashes, IdIndex
from projections._memory import revision
from projections._tables import ARROW_SCHEMAS, DDL, KEYS, TABLES
from projections.base import Batch
from schemas import events as ev
from schemas.events import UnknownEvent

__all__ = ["HistoryProjection"]

_json = msgspec.json.Encoder()
# The events that carry a memory's text: an erase deletes them.
_ERASED_TYPES: Final = ("knowledge.stored", "solution.stored", "memory.revised")
_UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_US = dt.timedelta(microseconds=1)

_STAGING = pa.schema([
    ("seq", pa.int64()), ("id", pa.string()), ("type", pa.string()), ("ts_us", pa.int64()),
    ("raw", pa.binary()), ("tenant", pa.string()),
])  # fmt: skip
# The statements read the batch from _batch: each body parsed once, into the struct `j`
# of every field they use (see _parse_sql), rather than once per field and statement.
_STAGED = "_batch"

# A JSON value at a path, or SQL NULL where it is JSON null or missing.
_MACROS = (
    "CREATE OR REPLACE MACRO ms_json(j, p) AS "
    "CASE WHEN coalesce(json_type(j, p), 'NULL') = 'NULL' THEN NULL ELSE json_extract(j, p) END"
)

_EVENTS_SQL = """
    INSERT INTO events SELECT
        seq, j.id, type, j.tenant, j.agent,
        make_timestamp(ts_us), j.task_id, j.correlation_id,
        j.causation_id, coalesce(j.v, 1), body
    FROM _STAGED"""

# Log tables, filled from the staging table by type.
_LOG_SQL = {
    "memory.linked": """
        INSERT INTO memory_links SELECT
            seq, j.tenant, j.agent, j.from_id, j.to_id,
            j.relation, make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'memory.linked'""",
    "collab.message": """
        INSERT INTO collab_messages SELECT
            seq, j.tenant, j.interaction_id, j.agent,
            j.sender, j.recipients, j.content,
            make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'collab.message'""",
    "flow.run_recorded": """
        INSERT INTO flow_runs SELECT
            seq, j.tenant, j.flow_id, j.run_id, j.agent,
            j.status, j.duration_ms, j.data,
            make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'flow.run_recorded'""",
    "conversation.turn": """
        INSERT INTO conversations SELECT
            seq, j.tenant, j.session_id, j.agent, j.role,
            j.content, make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'conversation.turn'""",
    "tool.used": """
        INSERT INTO tool_usage SELECT
            seq, j.tenant, j.agent, j.tool, j.args,
            j.result, j.duration_ms,
            j.ok, j.task_id, make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'tool.used'""",
}
Row = dict[str, Any]
Key = tuple[str, str]


# --- current-state tables folded in SQL -------------------------------------------------
# Each takes the batch's events of its types in stream order, starting from the stored
# rows, and writes the final row per key: delete the old, insert the new.

_TASKS_STAGED = """
    SELECT j.tenant AS tenant, j.task_id AS task_id, seq, type, j,
           make_timestamp(ts_us) AS ts, j.agent AS agent,
           CASE type WHEN 'task.created' THEN 0 WHEN 'task.started' THEN 1 ELSE 2 END AS rank,
           CASE type WHEN 'task.created' THEN 'created' WHEN 'task.started' THEN 'running'
                     WHEN 'task.completed' THEN 'completed' ELSE 'failed' END AS status
    FROM _STAGED WHERE type IN ('task.created', 'task.started', 'task.completed', 'task.failed')
"""
# A status only moves up the ranking; at equal rank the later event wins. The stored
# status counts as the earliest event of its rank. (2^50 orders rank above any seq.)
_RANK_SQL = "CASE {s} WHEN 'created' THEN 0 WHEN 'running' THEN 1 ELSE 2 END"

_TASK_SQL = [
    f"""
    INSERT INTO task_events
    SELECT t.seq, t.tenant, t.task_id, t.type, t.agent, t.ts,
           CASE WHEN e.status IS NULL OR t.top_rank >= {_RANK_SQL.format(s="e.status")}
                THEN t.top_status ELSE e.status END
    FROM (
        SELECT *,
               max(rank) OVER w AS top_rank,
               arg_max(status, rank * 1125899906842624 + seq) OVER w AS top_status
        FROM ({_TASKS_STAGED})
        WINDOW w AS (PARTITION BY tenant, task_id ORDER BY seq
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    ) t
    LEFT JOIN tasks e ON e.tenant = t.tenant AND e.task_id = t.task_id
    """,
    f"""
    CREATE OR REPLACE TEMP TABLE _tasks_next AS
    WITH agg AS (
        SELECT tenant, task_id,
               max(rank) AS top_rank,
               arg_max(status, rank * 1125899906842624 + seq) AS top_status,
               count(*) FILTER (WHERE type = 'task.created') AS created,
               count(*) FILTER (WHERE type = 'task.completed') AS completed,
               count(*) FILTER (WHERE type = 'task.failed') AS failed,
               arg_max({{'title': j.title, 'assignee': j.assignee,
                        'parent_id': j.parent_id, 'flow_id': j.flow_id,
                        'metadata': coalesce(j.metadata, '{{}}'),
                        'agent': agent, 'ts': ts}}, seq)
                   FILTER (WHERE type = 'task.created') AS c,
               arg_min(j.metadata, seq) FILTER (
                   WHERE type = 'task.completed'
                   AND coalesce(j.metadata::VARCHAR, '{{}}') <> '{{}}'
               ) AS completed_metadata,
               min(ts) FILTER (WHERE type = 'task.started') AS started_at,
               arg_max(ts, seq) FILTER (WHERE rank = 2) AS finished_at,
               arg_max({{'v': j.output}}, seq)
                   FILTER (WHERE type = 'task.completed') AS output,
               arg_max(j.error, seq) FILTER (WHERE type = 'task.failed') AS error,
               min(seq) AS first_seq, max(seq) AS last_seq
        FROM ({_TASKS_STAGED}) GROUP BY tenant, task_id
    )
    SELECT a.tenant, a.task_id,
           CASE WHEN a.created > 0 THEN a.c.title ELSE e.title END,
           CASE WHEN a.created > 0 THEN a.c.assignee ELSE e.assignee END,
           CASE WHEN a.created > 0 THEN a.c.parent_id ELSE e.parent_id END,
           CASE WHEN a.created > 0 THEN a.c.flow_id ELSE e.flow_id END,
           CASE WHEN a.created > 0 THEN a.c.metadata
                ELSE coalesce(e.metadata, a.completed_metadata) END,
           CASE WHEN e.status IS NULL OR a.top_rank >= {_RANK_SQL.format(s="e.status")}
                THEN a.top_status ELSE e.status END,
           CASE WHEN a.created > 0 THEN a.c.agent ELSE e.agent END,
           CASE WHEN a.created > 0 THEN a.c.ts ELSE e.created_at END,
           least(e.started_at, a.started_at),
           coalesce(a.finished_at, e.finished_at),
           CASE WHEN a.completed > 0 THEN a.output.v ELSE e.output END,
           CASE WHEN a.failed > 0 THEN a.error ELSE e.error END,
           coalesce(e.created_seq, a.first_seq),
           a.last_seq
    FROM agg a LEFT JOIN tasks e ON e.tenant = a.tenant AND e.task_id = a.task_id
    """,
    """
    DELETE FROM tasks USING _tasks_next n
    WHERE tasks.tenant = n.tenant AND tasks.task_id = n.task_id
    """,
    "INSERT INTO tasks SELECT * FROM _tasks_next",
    "DROP TABLE _tasks_next",
]


def _latest_sql(table: str, key: str, types: str, columns: str, keep: str) -> list[str]:
    """Replace-by-key tables: the batch's last event per key decides the row."""
    latest = f"""
        SELECT *, j.tenant AS tenant, j.{key} AS {key},
               make_timestamp(ts_us) AS ts, j.agent AS agent,
               row_number() OVER (PARTITION BY j.tenant, j.{key}
                                  ORDER BY seq DESC) AS nth
        FROM _STAGED WHERE type IN ({types})
    """
    return [
        f"""
        DELETE FROM {table} USING (SELECT DISTINCT tenant, {key} FROM ({latest})) k
        WHERE {table}.tenant = k.tenant AND {table}.{key} = k.{key}
        """,
        f"INSERT INTO {table} SELECT {columns} FROM ({latest}) WHERE nth = 1 AND {keep}",
    ]


_CONTEXT_SQL = _latest_sql(
    "context",
    "key",
    "'context.set', 'context.cleared'",
    """tenant, key, j.data, agent, ts,
       ts + to_microseconds(round(j.ttl_s * 1000000)::BIGINT), seq""",
    "type = 'context.set'",
)
_COLLAB_SQL = _latest_sql(
    "collaborations",
    "interaction_id",
    "'collab.recorded'",
    """tenant, interaction_id, seq, agent, j.initiator,
       j.participants, j.task_description,
       j.outcome, coalesce(j.metadata, '{}'), ts""",
    "TRUE",
)

# Event types -> the statements that fold them, run when a batch holds any of the types.
_STATE_SQL_RAW = [
    (frozenset({"task.created", "task.started", "task.completed", "task.failed"}), _TASK_SQL),
    (frozenset({"context.set", "context.cleared"}), _CONTEXT_SQL),
    (frozenset({"collab.recorded"}), _COLLAB_SQL),
]
_STATE_SQL: Final = [
    (types, [sql.replace("_STAGED", _STAGED) for sql in statements])
    for types, statements in _STATE_SQL_RAW
]

# How each field is read from the JSON; anything else is VARCHAR.
_FIELD_TYPES: Final = {
    "v": "BIGINT", "duration_ms": "BIGINT", "ok": "BOOLEAN", "ttl_s": "DOUBLE",
    "data": "JSON", "args": "JSON", "result": "JSON", "metadata": "JSON", "output": "JSON",
    "recipients": ["VARCHAR"], "participants": ["VARCHAR"],
}  # fmt: skip


def _parse_sql(*statements: str) -> str:
    fields = sorted({f for sql in statements for f in re.findall(r"\bj\.(\w+)", sql)})
    spec = msgspec.json.encode({f: _FIELD_TYPES.get(f, "VARCHAR") for f in fields}).decode()
    return f"""
        CREATE OR REPLACE TEMP TABLE _batch AS
        SELECT seq, type, ts_us, body, json_transform(body, '{spec}') AS j
        FROM (SELECT seq, type, ts_us, decode(raw) AS body FROM _staging)
    """


_PARSE_SQL: Final = _parse_sql(
    _EVENTS_SQL,
    *_LOG_SQL.values(),
    *(sql for _, statements in _STATE_SQL_RAW for sql in statements),
)
_EVENTS_SQL = _EVENTS_SQL.replace("_STAGED", _STAGED)
_LOG_SQL = {t: sql.replace("_STAGED", _STAGED) for t, sql in _LOG_SQL.items()}

_Item = tuple[int, "ev.AnyEvent | UnknownEvent", bytes]
"""(seq, event, JSON body as published) of one event a batch applies."""

# Event types folded in Python into current-state tables (and task_events): the tables
# whose rows they may change, and the field that names the row.
_MEMORY = (("knowledge", "solutions"), "memory_id")
_TOUCHES: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "knowledge.stored": _MEMORY, "solution.stored": _MEMORY, "memory.revised": _MEMORY,
    "memory.forgotten": _MEMORY,
}  # fmt: skip
_PY_FOLDED: Final = ("knowledge", "solutions")
# A row dict to the table's column order, in C.
_ROW_GETTERS: Final = {t: operator.itemgetter(*(c for c, _, _ in TABLES[t])) for t in _PY_FOLDED}


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
        # Stream sequences of events an erase removed from the history, for the runner to
        # delete from the stream too once the batch has committed (see ``take_erased``).
        self.erased: list[int] = []

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
                "SELECT (hash(tenant, id) & 9223372036854775807)::BIGINT AS h FROM events"
            ).fetchnumpy()
            self._ids = IdIndex(hashes["h"])
        return self._ids

    def _key_indexes(self) -> dict[str, IdIndex]:
        if self._keys is None:
            self._keys = {}
            for table in _PY_FOLDED:
                a, b = KEYS[table]
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
            for table, (stale, rows) in fold.replacements.items():
                self._replace(table, stale, rows)
            erased = self._erase(items)
            self.con.execute(
                "INSERT OR REPLACE INTO projection_state VALUES (?, ?, ?)",
                [self.name, last_seq, _naive(dt.datetime.now(_UTC))],
            )
        self._checkpoint = last_seq
        self.erased.extend(erased)
        if hashes is not None:
            self._id_index().add(hashes)
        for table, keys in fold.new_keys.items():
            self._key_indexes()[table].add(keys)

    def _erase(self, items: list[_Item]) -> list[int]:
        """Remove the earlier events of each memory forgotten with ``erase: true``: the
        bodies in ``events`` hold its text. Returns their stream sequences."""
        erased: list[int] = []
        for seq, e, _ in items:
            if isinstance(e, ev.MemoryForgotten) and e.erase:
                rows = self.con.execute(
                    """DELETE FROM events
                       WHERE tenant = ? AND seq < ? AND type IN (?, ?, ?)
                         AND json_extract_string(body, '$.memory_id') = ?
                       RETURNING seq""",
                    [e.tenant, seq, *_ERASED_TYPES, e.memory_id],
                ).fetchall()
                erased += sorted(r[0] for r in rows)
        return erased

    def take_erased(self) -> list[int]:
        """The stream sequences erased since the last call (committed already)."""
        taken, self.erased = self.erased, []
        return taken

    def purge_tenant(self, tenant: str) -> dict[str, int]:
        """Delete every row of ``tenant`` from every table, in one transaction; returns
        the rows removed per table."""
        removed: dict[str, int] = {}
        with self._transaction():
            for table in TABLES:
                (n,) = self.con.execute(
                    f"SELECT count(*) FROM {table} WHERE tenant = ?", [tenant]
                ).fetchone()  # type: ignore[misc]
                if n:
                    self.con.execute(f"DELETE FROM {table} WHERE tenant = ?", [tenant])
                    removed[table] = int(n)
        # The id and key indexes may hold the tenant's hashes: rebuild them when needed.
        self._ids = None
        self._keys = None
        return removed

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
                pa.array([e.tenant for e in events], pa.string()),
            ],
            schema=_STAGING,
        )
        self.con.register("_staging", staging)
        hashes = self.con.execute(
            "SELECT (hash(tenant, id) & 9223372036854775807)::BIGINT AS h FROM _staging"
        ).fetchnumpy()["h"]
        maybe = self._id_index().contains(hashes)
        repeated = len(np.unique(hashes)) != len(hashes)
        if not maybe.any() and not repeated:
            return fresh, hashes
        # Rare: an id seen before (past JetStream's window) or twice in this batch. Ids
        # are a tenant's own: another tenant using the same id is another event.
        candidates = [e.id for e, m in zip(events, maybe, strict=True) if m]
        known = (
            {
                (r[0], r[1])
                for r in self.con.execute(
                    "SELECT tenant, id FROM events WHERE list_contains(?, id)", [candidates]
                ).fetchall()
            }
            if candidates
            else set()
        )
        keep: list[bool] = []
        seen: set[tuple[str, str]] = set()
        for e in events:
            key = (e.tenant, e.id)
            ok = key not in known and key not in seen
            seen.add(key)
            keep.append(ok)
        self.duplicates_skipped += keep.count(False)
        mask = np.array(keep, dtype=bool)
        self.con.unregister("_staging")
        self.con.register("_staging", staging.filter(pa.array(mask)))
        return [i for i, k in zip(fresh, keep, strict=True) if k], hashes[mask]

    def _insert_logs(self, items: list[_Item]) -> None:
        types = {i[1].type for i in items}
        try:
            self.con.execute(_PARSE_SQL)
            self.con.execute(_EVENTS_SQL)
            for type_, sql in _LOG_SQL.items():
                if type_ in types:
                    self.con.execute(sql)
            for folded, statements in _STATE_SQL:
                if types & folded:
                    for sql in statements:
                        self.con.execute(sql)
        finally:
            self.con.unregister("_staging")
            self.con.execute("DROP TABLE IF EXISTS _batch")

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
    """Folds a batch's memory events into the final knowledge and solutions rows.

    Revisions merge field by field and depend on which table holds the memory, which
    reads more plainly here than in SQL; the other current-state tables fold in SQL.
    """

    def __init__(self, items: list[_Item], key_indexes: dict[str, IdIndex]) -> None:
        self.items = items
        self.key_indexes = key_indexes
        self.new_keys: dict[str, list[int]] = {}
        # Keys whose stored row this batch may change: loaded first, deleted at write.
        self.stored: dict[str, set[Key]] = {t: set() for t in _PY_FOLDED}
        # Current state by key; None marks a row to delete.
        self.state: dict[str, dict[Key, Row | None]] = {t: {} for t in _PY_FOLDED}
        self.replacements: dict[str, tuple[list[Key], list[tuple[Any, ...]]]] = {}

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read the stored rows of the memories this batch touches that may exist."""
        touched = {(e.tenant, e.memory_id) for _, e, _ in self.items if e.type in _TOUCHES}  # type: ignore[union-attr]
        if not touched:
            return
        ordered = list(touched)
        hashes = [hash(k) for k in ordered]
        for table in _PY_FOLDED:
            maybe = self.key_indexes[table].contains(hashes)
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

    def _memory(self, e: ev.MemoryRevised) -> tuple[str, Row] | None:
        key = (e.tenant, e.memory_id)
        for table in _PY_FOLDED:
            row = self.state[table].get(key)
            if row is not None:
                return table, row
        return None

    def _apply(
        self,
        seq: int,
        e: ev.KnowledgeStored | ev.SolutionStored | ev.MemoryRevised | ev.MemoryForgotten,
    ) -> None:
        key = (e.tenant, e.memory_id)
        match e:
            case ev.KnowledgeStored() | ev.SolutionStored():
                row: Row = {
                    "tenant": e.tenant, "memory_id": e.memory_id, "agent": e.agent,
                    "tags": list(e.tags), "metadata": _dumps(e.metadata),
                    "created_seq": seq, "updated_seq": seq,
                    "created_at": e.ts, "updated_at": e.ts,
                }  # fmt: skip
                # A memory id lives in one table: storing it as the other kind moves it.
                if isinstance(e, ev.KnowledgeStored):
                    row.update(domain=e.domain, content=e.content)
                    self.state["knowledge"][key] = row
                    self.state["solutions"][key] = None
                else:
                    row.update(problem=e.problem, solution=e.solution)
                    self.state["solutions"][key] = row
                    self.state["knowledge"][key] = None
            case ev.MemoryRevised():
                found = self._memory(e)
                if found is None:
                    return  # Nothing to revise (kept in `events` all the same).
                table, row = found
                changes = revision(e, table)
                if "metadata" in changes:
                    changes["metadata"] = _dumps(changes["metadata"])
                row.update(changes, updated_seq=seq, updated_at=e.ts)
            case ev.MemoryForgotten():
                self.state["knowledge"][key] = None
                self.state["solutions"][key] = None


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

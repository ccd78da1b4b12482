"""The DuckDB schema of the history projection, with the Arrow schema of each table.

One list per table drives both the DDL and the Arrow schema rows are loaded through, so
the two cannot drift. Timestamps are naive UTC ``TIMESTAMP`` columns: the wire format is
UTC by convention, and naive columns need no time-zone support at query time.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

__all__ = ["ARROW_SCHEMAS", "DDL", "KEYS", "TABLES"]

_S, _I, _J, _T, _B = pa.string(), pa.int64(), pa.string(), pa.timestamp("us"), pa.bool_()
_L = pa.list_(pa.string())


def _duck_type(typ: pa.DataType) -> str:
    if pa.types.is_list(typ):
        return f"{_duck_type(typ.value_type)}[]"
    for check, name in (
        (pa.types.is_string, "VARCHAR"),
        (pa.types.is_int64, "BIGINT"),
        (pa.types.is_timestamp, "TIMESTAMP"),
        (pa.types.is_boolean, "BOOLEAN"),
    ):
        if check(typ):
            return name
    raise TypeError(f"no DuckDB type for {typ}")


# Columns the memory tables gained after their first release: added to a database made
# before (ALTER TABLE, in this order, at the end, so positional inserts line up), where
# ``revision`` is counted from the events it holds.
_MEMORY_ADDED: Final = (
    ("task_id", _S, None), ("user_id", _S, None), ("run_id", _S, None),
    ("project", _S, None), ("expires_at", _T, None), ("revision", _I, None),
)  # fmt: skip
# (column, arrow type, DuckDB type override). JSON columns travel as strings.
TABLES: Final[dict[str, list[tuple[str, pa.DataType, str | None]]]] = {
    "events": [
        ("seq", _I, None), ("id", _S, None), ("type", _S, None),
        ("tenant", _S, None), ("agent", _S, None), ("ts", _T, None), ("task_id", _S, None),
        ("correlation_id", _S, None), ("causation_id", _S, None), ("v", _I, None),
        ("body", _J, "JSON"), ("memory_id", _S, None),
    ],
    "knowledge": [
        ("tenant", _S, None), ("memory_id", _S, None), ("agent", _S, None),
        ("domain", _S, None), ("content", _S, None), ("tags", _L, None),
        ("metadata", _J, "JSON"), ("created_seq", _I, None), ("updated_seq", _I, None),
        ("created_at", _T, None), ("updated_at", _T, None), *_MEMORY_ADDED,
    ],
    "solutions": [
        ("tenant", _S, None), ("memory_id", _S, None), ("agent", _S, None),
        ("problem", _S, None), ("solution", _S, None), ("tags", _L, None),
        ("metadata", _J, "JSON"), ("created_seq", _I, None), ("updated_seq", _I, None),
        ("created_at", _T, None), ("updated_at", _T, None), *_MEMORY_ADDED,
    ],
    "memory_links": [
        ("seq", _I, None), ("tenant", _S, None), ("agent", _S, None), ("from_id", _S, None),
        ("to_id", _S, None), ("relation", _S, None), ("ts", _T, None),
    ],
    "collaborations": [
        ("tenant", _S, None), ("interaction_id", _S, None), ("seq", _I, None),
        ("agent", _S, None), ("initiator", _S, None), ("participants", _L, None),
        ("task_description", _S, None), ("outcome", _S, None), ("metadata", _J, "JSON"),
        ("ts", _T, None),
    ],
    "collab_messages": [
        ("seq", _I, None), ("tenant", _S, None), ("interaction_id", _S, None),
        ("agent", _S, None), ("sender", _S, None), ("recipients", _L, None),
        ("content", _S, None), ("ts", _T, None),
    ],
    "tasks": [
        ("tenant", _S, None), ("task_id", _S, None), ("title", _S, None),
        ("assignee", _S, None), ("parent_id", _S, None), ("flow_id", _S, None),
        ("metadata", _J, "JSON"), ("status", _S, None), ("agent", _S, None),
        ("created_at", _T, None), ("started_at", _T, None), ("finished_at", _T, None),
        ("output", _J, "JSON"), ("error", _S, None), ("created_seq", _I, None),
        ("last_seq", _I, None),
    ],
    "task_events": [
        ("seq", _I, None), ("tenant", _S, None), ("task_id", _S, None), ("type", _S, None),
        ("agent", _S, None), ("ts", _T, None), ("status", _S, None),
    ],
    "flow_runs": [
        ("seq", _I, None), ("tenant", _S, None), ("flow_id", _S, None), ("run_id", _S, None),
        ("agent", _S, None), ("status", _S, None), ("duration_ms", _I, None),
        ("data", _J, "JSON"), ("ts", _T, None),
    ],
    "context": [
        ("tenant", _S, None), ("key", _S, None), ("data", _J, "JSON"), ("agent", _S, None),
        ("set_at", _T, None), ("expires_at", _T, None), ("seq", _I, None),
    ],
    "conversations": [
        ("seq", _I, None), ("tenant", _S, None), ("session_id", _S, None),
        ("agent", _S, None), ("role", _S, None), ("content", _S, None), ("ts", _T, None),
    ],
    # What was decided for each memory event (compare-and-set): the outcome op reads it.
    "outcomes": [
        ("seq", _I, None), ("tenant", _S, None), ("id", _S, None), ("type", _S, None),
        ("memory_id", _S, None), ("outcome", _S, None), ("revision", _I, None),
        ("current_revision", _I, None), ("message", _S, None),
    ],
    # Each tenant's own hard limits, from its last quota.set (0: none).
    "quotas": [
        ("tenant", _S, None), ("memories", _I, None), ("storage_bytes", _I, None),
        ("seq", _I, None),
    ],
    "tool_usage": [
        ("seq", _I, None), ("tenant", _S, None), ("agent", _S, None), ("tool", _S, None),
        ("args", _J, "JSON"), ("result", _J, "JSON"), ("duration_ms", _I, None),
        ("ok", _B, None), ("task_id", _S, None), ("ts", _T, None),
    ],
}  # fmt: skip

# The identity of a row in the tables that hold current state rather than a log.
KEYS: Final[dict[str, tuple[str, str]]] = {
    "knowledge": ("tenant", "memory_id"),
    "solutions": ("tenant", "memory_id"),
    "collaborations": ("tenant", "interaction_id"),
    "tasks": ("tenant", "task_id"),
    "context": ("tenant", "key"),
}

ARROW_SCHEMAS: Final[dict[str, pa.Schema]] = {
    name: pa.schema([(col, typ) for col, typ, _ in cols]) for name, cols in TABLES.items()
}


def _ddl() -> str:
    statements = [
        "CREATE TABLE IF NOT EXISTS projection_state "
        "(name VARCHAR PRIMARY KEY, last_seq BIGINT NOT NULL, updated_at TIMESTAMP)",
        # The ids of events an erase deleted from ``events``: still applied, so the same
        # id republished later is still a repeat and brings no erased text back.
        "CREATE TABLE IF NOT EXISTS erased_ids "
        "(tenant VARCHAR NOT NULL, id VARCHAR NOT NULL, seq BIGINT NOT NULL)",
        # The audit trail, following the MEMORY_AUDIT stream (consumers.audit_table):
        # not a tenant's data, so a purge leaves it, as it leaves the stream's.
        "CREATE TABLE IF NOT EXISTS audit (seq BIGINT, ts TIMESTAMP, tenant VARCHAR, "
        "user VARCHAR, agent VARCHAR, kind VARCHAR, op VARCHAR, digest VARCHAR, "
        "results BIGINT, ms DOUBLE, outcome VARCHAR)",
        "CREATE TABLE IF NOT EXISTS audit_state (last_seq BIGINT NOT NULL)",
    ]
    for name, cols in TABLES.items():
        keys = KEYS.get(name, ())
        body = ", ".join(
            f"{col} {override or _duck_type(typ)}{' NOT NULL' if col in keys else ''}"
            for col, typ, override in cols
        )
        statements.append(f"CREATE TABLE IF NOT EXISTS {name} ({body})")
    # A memory's events by its id (revisions), without parsing every body: added to a
    # database made before, and filled from the bodies once.
    statements += [
        "ALTER TABLE events ADD COLUMN IF NOT EXISTS memory_id VARCHAR",
        "UPDATE events SET memory_id = json_extract_string(body, '$.memory_id') "
        "WHERE memory_id IS NULL AND type IN ('knowledge.stored', 'solution.stored', "
        "'memory.revised', 'memory.forgotten')",
    ]
    # Why a store was refused its quota, or the soft limit it passed.
    statements.append("ALTER TABLE outcomes ADD COLUMN IF NOT EXISTS message VARCHAR")
    for table in ("knowledge", "solutions"):
        statements += [
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {col} {_duck_type(typ)}"
            for col, typ, _ in _MEMORY_ADDED
        ]
        # get reads one memory by key: an index, not a scan of the tenant's rows.
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_memory_id ON {table} (memory_id)")
        # A row from before revisions were counted: 1 + the revisions the log holds.
        statements.append(
            f"UPDATE {table} SET revision = 1 + (SELECT count(*) FROM events e "
            f"WHERE e.tenant = {table}.tenant AND e.type = 'memory.revised' "
            f"AND e.seq > {table}.created_seq AND e.memory_id = {table}.memory_id) "
            "WHERE revision IS NULL"
        )
    return ";\n".join(statements)


DDL: Final = _ddl()

"""The SQL of the history projection: how a staged batch becomes rows.

The batch goes to DuckDB once, as a staging table of (seq, id hash, type, ts, JSON
body), parsed once into the struct ``j`` of every field the statements use. ``events``
and the log tables (links, messages, flow runs, conversation turns, tool calls) are
filled from it by SQL, so their columns are pulled out of the JSON in DuckDB's own
threads rather than in Python under the GIL. Tables that hold current state (tasks,
context, collaborations) are folded here in SQL too; memories fold in Python
(:mod:`projections.memory`).
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
import pyarrow as pa

__all__ = ["EVENTS_SQL", "LOG_SQL", "PARSE_SQL", "STAGING", "STATE_SQL"]

STAGING = pa.schema([
    ("seq", pa.int64()), ("id", pa.string()), ("type", pa.string()), ("ts_us", pa.int64()),
    ("raw", pa.binary()), ("tenant", pa.string()),
])  # fmt: skip
# The statements read the batch from _batch: each body parsed once, into the struct `j`
# of every field they use (see _parse_sql), rather than once per field and statement.
_STAGED = "_batch"

EVENTS_SQL = """
    INSERT INTO events SELECT
        seq, j.id, type, j.tenant, j.agent,
        make_timestamp(ts_us), j.task_id, j.correlation_id,
        j.causation_id, coalesce(j.v, 1), body, j.memory_id
    FROM _STAGED"""

# Log tables, filled from the staging table by type.
LOG_SQL = {
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
    # After the turns: a batch may hold a turn and its removal. The log keeps both.
    "conversation.turns_removed": """
        DELETE FROM conversations c USING _STAGED s
        WHERE s.type = 'conversation.turns_removed'
          AND c.tenant = s.j.tenant AND c.session_id = s.j.session_id
          AND (list_contains(s.j.seqs, c.seq) OR (coalesce(s.j.clear, false) AND c.seq < s.seq))""",
    "tool.used": """
        INSERT INTO tool_usage SELECT
            seq, j.tenant, j.agent, j.tool, j.args,
            j.result, j.duration_ms,
            j.ok, j.task_id, make_timestamp(ts_us)
        FROM _STAGED WHERE type = 'tool.used'""",
}


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
               arg_max(j.metadata, seq) FILTER (
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
           -- task.completed's metadata merges into the task's (it wins on a key).
           CASE WHEN a.completed_metadata IS NULL
                THEN CASE WHEN a.created > 0 THEN a.c.metadata ELSE e.metadata END
                ELSE json_merge_patch(
                    coalesce(CASE WHEN a.created > 0 THEN a.c.metadata ELSE e.metadata END,
                             '{{}}'),
                    a.completed_metadata) END,
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
STATE_SQL: Final = [
    (types, [sql.replace("_STAGED", _STAGED) for sql in statements])
    for types, statements in _STATE_SQL_RAW
]

# How each field is read from the JSON; anything else is VARCHAR.
_FIELD_TYPES: Final = {
    "v": "BIGINT", "duration_ms": "BIGINT", "ok": "BOOLEAN", "ttl_s": "DOUBLE",
    "data": "JSON", "args": "JSON", "result": "JSON", "metadata": "JSON", "output": "JSON",
    "recipients": ["VARCHAR"], "participants": ["VARCHAR"], "seqs": ["BIGINT"],
    "clear": "BOOLEAN",
}  # fmt: skip


def _parse_sql(*statements: str) -> str:
    fields = sorted({f for sql in statements for f in re.findall(r"\bj\.(\w+)", sql)})
    spec = msgspec.json.encode({f: _FIELD_TYPES.get(f, "VARCHAR") for f in fields}).decode()
    return f"""
        CREATE OR REPLACE TEMP TABLE _batch AS
        SELECT seq, type, ts_us, body, json_transform(body, '{spec}') AS j
        FROM (SELECT seq, type, ts_us, decode(raw) AS body FROM _staging)
    """


PARSE_SQL: Final = _parse_sql(
    EVENTS_SQL,
    *LOG_SQL.values(),
    *(sql for _, statements in _STATE_SQL_RAW for sql in statements),
)
EVENTS_SQL = EVENTS_SQL.replace("_STAGED", _STAGED)
LOG_SQL = {t: sql.replace("_STAGED", _STAGED) for t, sql in LOG_SQL.items()}

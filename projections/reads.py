"""What the query ops read from the history, for one tenant at a time.

Each function takes a DuckDB cursor and the tenant from the query's subject; the tenant
is always a bound parameter of the SQL, never a filter a request can drop. Filters are
added to the SQL only when a request asks for them, and their values are bound too.

Events come back as they were published, with their stream ``seq`` added, as
``msgspec.Raw`` so a reply carries the producer's bytes without decoding them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

import duckdb
import msgspec

from memstream.projections.analytics import QueryResult, run_analytics
from memstream.schemas.queries import ContextResult, TaskResult, Turn

__all__ = [
    "BUNDLE_LIMIT",
    "HistoryPage",
    "analytics",
    "context",
    "conversation",
    "counts",
    "history",
    "task",
    "utc",
    "with_seq",
]

# The most events a task bundle carries (the newest, when a task has more).
BUNDLE_LIMIT: Final = 5000
# How many sequence numbers a history page looks at first.
_FIRST_WINDOW: Final = 10_000

_json = msgspec.json.Decoder()


def utc(ts: dt.datetime | None) -> dt.datetime | None:
    """Stored timestamps are naive UTC; replies carry them with their zone."""
    return ts.replace(tzinfo=dt.UTC) if ts is not None and ts.tzinfo is None else ts


def _naive(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.UTC).replace(tzinfo=None) if ts.tzinfo else ts


def with_seq(seq: int, body: str | bytes) -> msgspec.Raw:
    """The event as published, with ``"seq"`` as its last member (so it wins over any
    field of that name a producer may have sent)."""
    raw = body.encode() if isinstance(body, str) else body
    raw = raw.rstrip()
    return msgspec.Raw(raw[:-1] + b',"seq":' + str(seq).encode() + b"}")


@dataclass(frozen=True)
class HistoryPage:
    events: list[msgspec.Raw]
    next_after_seq: int | None


def history(
    con: duckdb.DuckDBPyConnection,
    tenant: str,
    *,
    types: tuple[str, ...] = (),
    agent: str | None = None,
    task_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    after_seq: int = 0,
    limit: int = 100,
) -> HistoryPage:
    """A page of the tenant's events in stream order, after ``after_seq``."""
    where = ["tenant = $tenant", "seq > $after"]
    params: dict[str, Any] = {"tenant": tenant, "after": after_seq}
    if types:
        where.append("list_contains($types, type)")
        params["types"] = list(types)
    for column, value in (("agent", agent), ("task_id", task_id)):
        if value is not None:
            where.append(f"{column} = ${column}")
            params[column] = value
    if since is not None:
        where.append("ts >= $since")
        params["since"] = _naive(since)
    if until is not None:
        where.append("ts < $until")
        params["until"] = _naive(until)
    # Seek by windows of sequence numbers rather than sort the tenant's whole history:
    # events are stored in seq order, so DuckDB skips every row group outside a window.
    # A window that finds too few rows is followed by one four times as wide.
    last = con.execute("SELECT max(last_seq) FROM projection_state").fetchone()
    last_seq = int(last[0]) if last and last[0] is not None else 0
    sql = (
        f"SELECT seq, body FROM events WHERE {' AND '.join(where)} "
        "AND seq <= $upto ORDER BY seq LIMIT $limit"
    )
    rows: list[tuple[int, str]] = []
    span = max(_FIRST_WINDOW, limit * 20)
    while True:
        upto = params["after"] + span
        params["limit"] = limit + 1 - len(rows)
        rows += con.execute(sql, {**params, "upto": upto}).fetchall()
        if len(rows) > limit or upto >= last_seq:
            break
        params["after"] = upto
        span *= 4
    more = len(rows) > limit
    rows = rows[:limit]
    return HistoryPage([with_seq(seq, body) for seq, body in rows], rows[-1][0] if more else None)


_TASK_COLUMNS: Final = (
    "task_id, title, status, assignee, parent_id, flow_id, metadata, agent, created_at, "
    "started_at, finished_at, output, error, created_seq, last_seq"
)


def task(con: duckdb.DuckDBPyConnection, tenant: str, task_id: str) -> TaskResult | None:
    """The task's state, timeline, output and bundle; None when nothing names the task."""
    cur = con.execute(
        f"SELECT {_TASK_COLUMNS} FROM tasks WHERE tenant = ? AND task_id = ?", [tenant, task_id]
    )
    row = cur.fetchone()
    bundle = con.execute(
        """SELECT seq, body FROM (
               SELECT seq, body FROM events WHERE tenant = ? AND task_id = ?
               ORDER BY seq DESC LIMIT ?
           ) ORDER BY seq""",
        [tenant, task_id, BUNDLE_LIMIT + 1],
    ).fetchall()
    if row is None and not bundle:
        return None
    state: dict[str, Any]
    output: Any = None
    if row is None:
        # Events carry the task id, but no task.* event has arrived (yet).
        state = {"task_id": task_id, "status": None}
    else:
        state = dict(zip(_TASK_COLUMNS.split(", "), row, strict=True))
        state["metadata"] = _json.decode(state["metadata"]) if state["metadata"] else {}
        output = _json.decode(state.pop("output")) if state["output"] is not None else None
        for key in ("created_at", "started_at", "finished_at"):
            state[key] = utc(state[key])
    timeline = [
        {"seq": seq, "type": type_, "status": status, "agent": agent, "ts": utc(ts)}
        for seq, type_, status, agent, ts in con.execute(
            """SELECT seq, type, status, agent, ts FROM task_events
               WHERE tenant = ? AND task_id = ? ORDER BY seq""",
            [tenant, task_id],
        ).fetchall()
    ]
    events: list[Any] = [with_seq(seq, body) for seq, body in bundle[-BUNDLE_LIMIT:]]
    return TaskResult(
        task=state,
        timeline=timeline,
        output=output,
        # msgspec.Raw: the producer's bytes, encoded into the reply as they are.
        bundle=events,
        bundle_truncated=len(bundle) > BUNDLE_LIMIT,
    )


def context(
    con: duckdb.DuckDBPyConnection, tenant: str, key: str, now: dt.datetime
) -> ContextResult | None:
    """The value under ``key``; None once it expired or was cleared (or never set)."""
    row = con.execute(
        """SELECT data, set_at, expires_at, agent, seq FROM context
           WHERE tenant = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)""",
        [tenant, key, _naive(now)],
    ).fetchone()
    if row is None:
        return None
    data, set_at, expires_at, agent, seq = row
    return ContextResult(
        key=key,
        data=_json.decode(data),
        set_at=utc(set_at),  # type: ignore[arg-type]  # never null in the table
        expires_at=utc(expires_at),
        agent=agent,
        seq=seq,
    )


def conversation(
    con: duckdb.DuckDBPyConnection, tenant: str, session_id: str, last_n: int
) -> list[Turn]:
    """The session's last ``last_n`` turns, oldest first."""
    rows = con.execute(
        """SELECT seq, role, content, agent, ts FROM conversations
           WHERE tenant = ? AND session_id = ? ORDER BY seq DESC LIMIT ?""",
        [tenant, session_id, last_n],
    ).fetchall()
    return [
        Turn(seq=seq, role=role, content=content, agent=agent, ts=ts.replace(tzinfo=dt.UTC))
        for seq, role, content, agent, ts in reversed(rows)
    ]


def counts(con: duckdb.DuckDBPyConnection, tenant: str) -> tuple[dict[str, int], dict[str, int]]:
    """The tenant's events counted by type and by agent."""
    by: dict[str, dict[str, int]] = {"type": {}, "agent": {}}
    rows = con.execute(
        """SELECT type, agent, count(*) FROM events WHERE tenant = ?
           GROUP BY GROUPING SETS ((type), (agent))""",
        [tenant],
    ).fetchall()
    for type_, agent, n in rows:
        if type_ is not None:
            by["type"][type_] = n
        else:
            by["agent"][agent] = n
    return dict(sorted(by["type"].items())), dict(sorted(by["agent"].items()))


def analytics(
    con: duckdb.DuckDBPyConnection, tenant: str, name: str, params: dict[str, Any]
) -> QueryResult:
    """A named analytics query, its timestamps given their zone."""
    result = run_analytics(con, name, tenant, params)
    rows = [tuple(utc(c) if isinstance(c, dt.datetime) else c for c in row) for row in result.rows]
    return QueryResult(result.columns, rows, result.truncated)

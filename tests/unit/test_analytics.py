"""Named analytics and read-only SQL over a real DuckDB history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memstream.projections.analytics import ANALYTICS, SqlRejected, run_analytics, run_readonly
from memstream.projections.history import HistoryProjection
from memstream.schemas import events as ev
from tests.unit.test_history import at, make


@pytest.fixture(scope="module")
def history() -> HistoryProjection:
    p = HistoryProjection(":memory:")
    events: list[ev.Event] = [
        make(ev.KnowledgeStored, at(0), memory_id="k1", domain="d", content="a"),
        make(ev.KnowledgeStored, at(86_400), memory_id="k2", domain="d", content="b"),
        make(ev.SolutionStored, at(86_400), memory_id="s1", problem="p", solution="s"),
        make(ev.MemoryForgotten, at(86_401), memory_id="k1"),
        make(ev.TaskCreated, at(0), task_id="t1", title="x"),
        make(ev.TaskStarted, at(10), task_id="t1"),
        make(ev.TaskCompleted, at(70), task_id="t1"),
        make(ev.TaskStarted, at(0), task_id="t2"),
        make(ev.TaskFailed, at(30), task_id="t2", error="e"),
        make(ev.ToolUsed, at(1), tool="grep", duration_ms=10, ok=True),
        make(ev.ToolUsed, at(2), tool="grep", duration_ms=30, ok=False),
        make(ev.ToolUsed, at(3), tool="pytest", duration_ms=5000, ok=True),
        make(ev.CollabRecorded, at(4), interaction_id="i", initiator="a1",
             participants=("a1", "b2", "c3"), task_description="pair"),
        make(ev.CollabMessage, at(5), interaction_id="i", sender="a1", recipients=("b2",),
             content="hi"),
        make(ev.ToolUsed, at(1), tool="secret", tenant="beta", duration_ms=1, ok=True),
    ]  # fmt: skip
    p.apply(list(enumerate(events, 1)))
    return p


def _dicts(result: Any) -> list[dict[str, Any]]:
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def test_agent_activity(history: HistoryProjection) -> None:
    """Counts of what each agent did, for the asking tenant only."""
    (row,) = _dicts(run_analytics(history.con, "agent_activity", "acme", {}))
    assert (14, 2, 1, 1, 1, 3) == (
        row["events"], row["knowledge"], row["solutions"], row["tasks_completed"],
        row["tasks_failed"], row["tool_calls"],
    )  # fmt: skip


def test_task_outcomes(history: HistoryProjection) -> None:
    """Status counts with the time from start to finish."""
    got = {r["status"]: r for r in _dicts(run_analytics(history.con, "task_outcomes", "acme", {}))}
    assert (1, 60_000) == (got["completed"]["tasks"], got["completed"]["max_duration_ms"])
    assert (1, 30_000) == (got["failed"]["tasks"], got["failed"]["max_duration_ms"])


def test_tool_usage_is_per_tenant(history: HistoryProjection) -> None:
    """Calls, failures and latency per tool; another tenant's tools never show."""
    got = _dicts(run_analytics(history.con, "tool_usage", "acme", {}))
    assert [("grep", 2, 1, 1, 20.0), ("pytest", 1, 1, 0, 5000.0)] == [
        (r["tool"], r["calls"], r["ok"], r["failed"], r["avg_ms"]) for r in got
    ]
    assert ["secret"] == [r["tool"] for r in _dicts(
        run_analytics(history.con, "tool_usage", "beta", {})
    )]  # fmt: skip


def test_collaboration_graph(history: HistoryProjection) -> None:
    """Initiator-to-participant and sender-to-recipient edges, weighted."""
    got = _dicts(run_analytics(history.con, "collaboration_graph", "acme", {}))
    assert [("a1", "b2", 1, 1, 2), ("a1", "c3", 1, 0, 1)] == [
        (r["source"], r["target"], r["collaborations"], r["messages"], r["weight"]) for r in got
    ]


def test_memory_growth_by_day(history: HistoryProjection) -> None:
    """Added and forgotten per day, with the running total."""
    got = _dicts(run_analytics(history.con, "memory_growth", "acme", {"bucket": "day"}))
    assert [(1, 0, 1), (2, 1, 2)] == [(r["added"], r["forgotten"], r["total"]) for r in got]


def test_memory_growth_never_goes_negative() -> None:
    """A forget of an id never stored, or a second forget, counts nothing; a window
    that starts later starts from the live count before it, not from zero."""
    p = HistoryProjection(":memory:")
    events: list[ev.Event] = [
        make(ev.KnowledgeStored, at(0), memory_id="k1", domain="d", content="a"),
        make(ev.KnowledgeStored, at(10), memory_id="k2", domain="d", content="b"),
        make(ev.MemoryForgotten, at(86_400), memory_id="nope"),
        make(ev.MemoryForgotten, at(86_401), memory_id="k1"),
        make(ev.MemoryForgotten, at(86_402), memory_id="k1"),
        make(ev.MemoryForgotten, at(2 * 86_400), memory_id="k2"),
    ]
    p.apply(list(enumerate(events, 1)))
    got = _dicts(run_analytics(p.con, "memory_growth", "acme", {"bucket": "day"}))
    assert [(2, 0, 2), (0, 1, 1), (0, 1, 0)] == [
        (r["added"], r["forgotten"], r["total"]) for r in got
    ]
    later = {"bucket": "day", "since": at(2 * 86_400).isoformat()}
    (row,) = _dicts(run_analytics(p.con, "memory_growth", "acme", later))
    assert (0, 1, 0) == (row["added"], row["forgotten"], row["total"])


def test_time_window_params(history: HistoryProjection) -> None:
    """since/until are bound timestamps that narrow every query."""
    since = (at(86_000)).isoformat()
    (row,) = _dicts(run_analytics(history.con, "agent_activity", "acme", {"since": since}))
    assert 3 == row["events"]


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("drop_table", {}, "unknown analytics 'drop_table'"),
        ("tool_usage", {"tenant": "beta"}, "not tenant"),
        ("tool_usage", {"since": "yesterday"}, "since='yesterday' is not an ISO 8601"),
        ("tool_usage", {"limit": "10; DROP TABLE events"}, "limit must be a whole number"),
        ("memory_growth", {"bucket": "day'); DROP TABLE events; --"}, "bucket must be one of"),
    ],
)
def test_bad_params_are_refused(
    history: HistoryProjection, name: str, params: dict[str, Any], expected: str
) -> None:
    """Parameters are checked and bound; nothing in them reaches the SQL text."""
    with pytest.raises(SqlRejected, match=expected):
        run_analytics(history.con, name, "acme", params)
    assert 15 == history.con.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]


def test_sql_looking_tenant_is_just_a_value(history: HistoryProjection) -> None:
    """A tenant value that looks like SQL matches nothing and changes nothing."""
    result = run_analytics(history.con, "agent_activity", "acme' OR '1'='1", {})
    assert [] == result.rows


def test_every_named_query_runs_on_an_empty_history() -> None:
    """Each named query is valid SQL against the schema, even with no rows."""
    empty = HistoryProjection(":memory:")
    for name in ANALYTICS:
        assert [] == run_analytics(empty.con, name, "acme", {}).rows


def test_readonly_sql(history: HistoryProjection, tmp_path: Path) -> None:
    """SELECT runs; writes, several statements and file access are refused."""
    result = run_readonly(history.con, "SELECT count(*) AS n FROM events WHERE tenant = 'acme'")
    assert (["n"], [(14,)]) == (result.columns, result.rows)
    for sql, expected in [
        ("DELETE FROM events", "read-only: it runs SELECT and EXPLAIN, not DELETE"),
        ("DROP TABLE events", "not DROP"),
        ("SELECT 1; SELECT 2", "one statement at a time"),
        ("ATTACH 'x.db'", "not ATTACH"),
        (f"SELECT * FROM read_csv('{tmp_path}/x.csv')", "file system operations are disabled"),
        ("SELEC 1", "does not parse"),
    ]:
        with pytest.raises(SqlRejected, match=expected):
            run_readonly(history.con, sql)
    truncated = run_readonly(history.con, "SELECT * FROM range(50)", max_rows=10)
    assert (10, True) == (len(truncated.rows), truncated.truncated)
    assert 15 == history.con.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]

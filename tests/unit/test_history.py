"""The history projection on a real DuckDB database (in memory: no network here)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import msgspec
import pytest

from memstream.projections.history import HistoryProjection
from memstream.schemas import events as ev
from memstream.schemas.events import UnknownEvent, decode_event
from tests.samples import sample_events

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
_ids = itertools.count()


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def make(cls: type[ev.Event], ts: dt.datetime = T0, tenant: str = "acme", **fields: Any) -> Any:
    return cls(id=f"e{next(_ids)}", tenant=tenant, agent="a1", ts=ts, **fields)


def rows(p: HistoryProjection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return p.con.execute(sql, list(params)).fetchall()


@pytest.fixture
def history() -> HistoryProjection:
    return HistoryProjection(":memory:")


def test_every_event_lands_in_events(history: HistoryProjection) -> None:
    """Each event is one row of `events` with its seq, envelope fields and full JSON."""
    events = sample_events()
    history.apply(list(enumerate(events, 1)))
    stored = rows(history, "SELECT seq, id, type, tenant, agent, body FROM events ORDER BY seq")
    assert [(i, e.id, e.type, "acme", "a1") for i, e in enumerate(events, 1)] == [
        r[:5] for r in stored
    ]
    assert events == [decode_event(r[5].encode()) for r in stored]
    assert len(events) == history.checkpoint


def test_typed_tables_from_samples(history: HistoryProjection) -> None:
    """Each typed table holds what the catalog says it projects."""
    history.apply(list(enumerate(sample_events(), 1)))
    assert [("m1", "gather runs them concurrently", ["asyncio", "concurrency"])] == rows(
        history, "SELECT memory_id, content, tags FROM knowledge"
    )
    assert [] == rows(history, "SELECT * FROM solutions")  # s1 was forgotten
    assert [("m1", "s1", "supports")] == rows(
        history, "SELECT from_id, to_id, relation FROM memory_links"
    )
    assert [("i1", ["a1", "reviewer"], "approved")] == rows(
        history, "SELECT interaction_id, participants, outcome FROM collaborations"
    )
    assert [("i1", "a1", ["reviewer"])] == rows(
        history, "SELECT interaction_id, sender, recipients FROM collab_messages"
    )
    assert [("f1", "r1", "ok", 1200, '{"steps":3}')] == rows(
        history, "SELECT flow_id, run_id, status, duration_ms, data FROM flow_runs"
    )
    assert [] == rows(history, "SELECT * FROM context")  # set, then cleared
    assert [("sess1", "user", "hello")] == rows(
        history, "SELECT session_id, role, content FROM conversations"
    )
    assert [("grep", '{"pattern":"TODO"}', '["a.py:1"]', 12, True)] == rows(
        history, "SELECT tool, args, result, duration_ms, ok FROM tool_usage"
    )
    assert [("t1", "completed", '{"patch":"diff","lines":[1,2]}'), ("t2", "failed", None)] == rows(
        history, "SELECT task_id, status, output FROM tasks ORDER BY task_id"
    )


def test_unknown_type_only_in_events(history: HistoryProjection) -> None:
    """A valid envelope of an unknown type is kept in events and nowhere else."""
    body = (
        b'{"type":"plan.drafted","id":"u1","tenant":"acme","agent":"a",'
        b'"ts":"2026-11-21T12:00:00Z","steps":[1]}'
    )
    unknown = decode_event(body)
    assert isinstance(unknown, UnknownEvent)
    history.apply([(1, unknown)])
    assert [("plan.drafted", body.decode())] == rows(history, "SELECT type, body FROM events")
    assert 1 == history.checkpoint


def test_redelivery_at_or_below_checkpoint_is_skipped(history: HistoryProjection) -> None:
    """A batch delivered again changes nothing; a mixed batch applies only the new part."""
    events = sample_events()
    history.apply(list(enumerate(events[:10], 1)))
    history.apply(list(enumerate(events[:10], 1)))
    history.apply(list(enumerate(events, 1)))
    assert [(len(sample_events()),) * 2] == rows(
        history, "SELECT count(*), count(DISTINCT seq) FROM events"
    )


def test_same_id_past_the_duplicate_window_is_applied_once(history: HistoryProjection) -> None:
    """An id seen before, arriving again under a new seq, is skipped (and apply says so)."""
    turn = make(ev.ConversationTurn, session_id="s", role="user", content="hi")
    first = history.apply([(1, turn)])
    second = history.apply([(2, turn), (3, make(ev.TaskStarted, task_id="t"))])
    third = history.apply([(4, turn), (5, turn)])
    assert [(2,)] == rows(history, "SELECT count(*) FROM events")
    assert [(1,)] == rows(history, "SELECT count(*) FROM conversations")
    assert [(1, 0), (1, 1), (0, 2)] == [(a.events, a.duplicates) for a in (first, second, third)]
    assert 5 == history.checkpoint


def test_id_index_is_rebuilt_when_reopened(tmp_path: Any) -> None:
    """After a restart the projection still knows every id it applied."""
    path = tmp_path / "h.duckdb"
    first = HistoryProjection(path)
    turn = make(ev.ConversationTurn, session_id="s", role="user", content="hi")
    first.apply([(1, turn)])
    first.close()
    again = HistoryProjection(path)
    again.apply([(7, turn)])
    assert [(1,)] == rows(again, "SELECT count(*) FROM events")
    assert 7 == again.checkpoint


def test_failed_apply_commits_nothing(history: HistoryProjection) -> None:
    """If a batch fails half-way, neither its rows nor the checkpoint are kept."""
    history.apply([(1, make(ev.TaskStarted, task_id="t0"))])
    original = history._replace

    def broken(*args: Any) -> None:
        original(*args)
        raise RuntimeError("disk full")

    history._replace = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="disk full"):
        history.apply(list(enumerate(sample_events(), 2)))
    history._replace = original  # type: ignore[method-assign]
    assert 1 == history.checkpoint
    assert [(1,)] == rows(history, "SELECT count(*) FROM events")
    history.apply(list(enumerate(sample_events(), 2)))
    assert [(1 + len(sample_events()),)] == rows(history, "SELECT count(*) FROM events")


# --- the task state machine -----------------------------------------------------------


def _task_events() -> list[ev.Event]:
    return [
        make(ev.TaskCreated, at(0), task_id="t", title="write it", assignee="coder"),
        make(ev.TaskStarted, at(5), task_id="t"),
        make(ev.TaskCompleted, at(65), task_id="t", output={"ok": True}),
    ]


TASK_COLUMNS = "title, assignee, status, created_at, started_at, finished_at, output"


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_task_orderings_converge(order: tuple[int, ...]) -> None:
    """Whatever order created/started/completed arrive in, the task ends the same."""
    events = _task_events()
    p = HistoryProjection(":memory:")
    p.apply([(seq, events[i]) for seq, i in enumerate(order, 1)])
    naive = [t.replace(tzinfo=None) for t in (at(0), at(5), at(65))]
    assert [("write it", "coder", "completed", *naive, '{"ok":true}')] == rows(
        p, f"SELECT {TASK_COLUMNS} FROM tasks"
    )
    assert 3 == len(rows(p, "SELECT * FROM task_events WHERE task_id = 't'"))


def test_task_batch_boundaries_do_not_matter() -> None:
    """One event per batch gives the same rows as one batch of all."""
    events = _task_events()[::-1]
    whole, split = HistoryProjection(":memory:"), HistoryProjection(":memory:")
    whole.apply(list(enumerate(events, 1)))
    for seq, e in enumerate(events, 1):
        split.apply([(seq, e)])
    assert rows(whole, "SELECT * FROM tasks") == rows(split, "SELECT * FROM tasks")
    assert rows(whole, "SELECT * FROM task_events ORDER BY seq") == rows(
        split, "SELECT * FROM task_events ORDER BY seq"
    )


def test_task_terminal_states(history: HistoryProjection) -> None:
    """Between completed and failed the later wins; started never undoes an end."""
    history.apply([
        (1, make(ev.TaskFailed, task_id="a", error="boom")),
        (2, make(ev.TaskCompleted, task_id="a")),
        (3, make(ev.TaskCompleted, task_id="b")),
        (4, make(ev.TaskFailed, task_id="b", error="late failure")),
        (5, make(ev.TaskCompleted, task_id="c")),
        (6, make(ev.TaskStarted, task_id="c")),
    ])  # fmt: skip
    assert [("a", "completed"), ("b", "failed"), ("c", "completed")] == rows(
        history, "SELECT task_id, status FROM tasks ORDER BY task_id"
    )
    assert [("completed",), ("completed",)] == rows(
        history, "SELECT status FROM task_events WHERE task_id = 'c' ORDER BY seq"
    )


def test_tasks_are_kept_per_tenant(history: HistoryProjection) -> None:
    """The same task id in two tenants is two tasks."""
    history.apply([
        (1, make(ev.TaskCreated, task_id="t", title="acme's")),
        (2, make(ev.TaskCreated, task_id="t", title="beta's", tenant="beta")),
        (3, make(ev.TaskFailed, task_id="t", error="x", tenant="beta")),
    ])  # fmt: skip
    assert [("acme", "acme's", "created"), ("beta", "beta's", "failed")] == rows(
        history, "SELECT tenant, title, status FROM tasks ORDER BY tenant"
    )


# --- context and memories ---------------------------------------------------------------


def test_context_expiry_and_clearing(history: HistoryProjection) -> None:
    """Latest value per key; expires_at is ts + ttl_s; cleared removes; set again returns."""
    history.apply([
        (1, make(ev.ContextSet, at(0), key="k", data={"v": 1}, ttl_s=30)),
        (2, make(ev.ContextSet, at(10), key="k", data={"v": 2}, ttl_s=60)),
        (3, make(ev.ContextSet, at(0), key="forever", data={"v": 0})),
    ])  # fmt: skip
    assert [
        ("forever", '{"v":0}', None),
        ("k", '{"v":2}', at(70).replace(tzinfo=None)),
    ] == rows(history, "SELECT key, data, expires_at FROM context ORDER BY key")
    history.apply([(4, make(ev.ContextCleared, key="k"))])
    assert [("forever",)] == rows(history, "SELECT key FROM context")
    history.apply([(5, make(ev.ContextSet, at(99), key="k", data={"v": 3}))])
    assert [("k", '{"v":3}')] == rows(history, "SELECT key, data FROM context WHERE key = 'k'")


def test_forget_after_revise(history: HistoryProjection) -> None:
    """stored -> revised -> forgotten leaves no row, in one batch or across batches."""
    history.apply([(1, make(ev.KnowledgeStored, memory_id="m", domain="d", content="v1"))])
    history.apply([(2, make(ev.MemoryRevised, memory_id="m", content="v2", tags=("x",)))])
    assert [("v2", ["x"], 1, 2)] == rows(
        history, "SELECT content, tags, created_seq, updated_seq FROM knowledge"
    )
    history.apply([
        (3, make(ev.MemoryForgotten, memory_id="m", reason="wrong")),
        (4, make(ev.MemoryRevised, memory_id="m", content="v3")),
    ])  # fmt: skip
    assert [] == rows(history, "SELECT * FROM knowledge")
    assert [(4,)] == rows(history, "SELECT count(*) FROM events")


def test_revise_solution_fields(history: HistoryProjection) -> None:
    """A revision changes only the fields it carries."""
    history.apply([
        (1, make(ev.SolutionStored, memory_id="s", problem="p", solution="old",
                 metadata={"a": 1})),
        (2, make(ev.MemoryRevised, memory_id="s", solution="new")),
        (3, make(ev.MemoryRevised, memory_id="missing", content="ignored")),
    ])  # fmt: skip
    assert [("p", "new", '{"a":1}')] == rows(
        history, "SELECT problem, solution, metadata FROM solutions"
    )


def test_timestamps_are_stored_as_utc(history: HistoryProjection) -> None:
    """An event stamped with another offset is stored as its UTC instant."""
    plus2 = dt.datetime(2026, 11, 21, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    history.apply([(1, make(ev.TaskStarted, plus2, task_id="t"))])
    assert [(dt.datetime(2026, 11, 21, 12, 0),)] == rows(history, "SELECT ts FROM events")


def test_an_id_is_a_tenants_own(history: HistoryProjection) -> None:
    """Another tenant reusing an event id (say, guessing one) takes nothing away: both
    events land; a repeat within one tenant is the same event, applied once."""
    acme = make(ev.ToolUsed, tool="a")
    beta = ev.ToolUsed(id=acme.id, tenant="beta", agent="a1", ts=T0, tool="b")
    again = ev.ToolUsed(id=acme.id, tenant="acme", agent="a1", ts=T0, tool="c")
    history.apply([(1, acme), (2, beta)])
    history.apply([(3, again)])
    assert [("acme", "a"), ("beta", "b")] == rows(
        history, "SELECT tenant, tool FROM tool_usage ORDER BY seq"
    )


def test_erase_removes_the_memorys_earlier_events_and_reports_them(
    history: HistoryProjection,
) -> None:
    """forget(erase) deletes the events that carried the memory's text and says which
    seqs it deleted, for the runner; a plain forget keeps the history."""
    plain = history.apply([
        (1, make(ev.KnowledgeStored, memory_id="m", domain="d", content="secret 1")),
        (2, make(ev.MemoryRevised, memory_id="m", content="secret 2")),
        (3, make(ev.KnowledgeStored, memory_id="other", domain="d", content="keep")),
        (4, make(ev.MemoryForgotten, memory_id="other")),
    ])  # fmt: skip
    assert () == plain.erased
    erase = history.apply([(5, make(ev.MemoryForgotten, memory_id="m", erase=True))])
    assert (1, 2) == erase.erased
    assert () == history.apply([(5, make(ev.MemoryForgotten, memory_id="m", erase=True))]).erased
    assert [(3,), (4,), (5,)] == rows(history, "SELECT seq FROM events ORDER BY seq")
    assert "secret" not in repr(rows(history, "SELECT * FROM events"))


def test_completed_metadata_merges_into_the_task(history: HistoryProjection) -> None:
    """task.completed's metadata joins the task's own, winning on a shared key, whether
    it comes in the batch of the task.created or a later one."""
    history.apply([
        (1, make(ev.TaskCreated, task_id="t", title="x", metadata={"a": 1, "c": 1})),
        (2, make(ev.TaskCompleted, task_id="t", metadata={"b": 2, "c": 3})),
        (3, make(ev.TaskCreated, task_id="u", title="y", metadata={"a": 1})),
    ])  # fmt: skip
    history.apply([(4, make(ev.TaskCompleted, task_id="u", metadata={"b": 2}))])
    found = rows(history, "SELECT task_id, metadata FROM tasks ORDER BY task_id")
    assert [("t", {"a": 1, "b": 2, "c": 3}), ("u", {"a": 1, "b": 2})] == [
        (t, msgspec.json.decode(m)) for t, m in found
    ]

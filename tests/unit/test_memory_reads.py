"""get and list over a real DuckDB history: pages in exact order however the memories'
times disagree with their stream order, in both orders and directions."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstream.projections import memories
from memstream.projections.history import HistoryProjection
from memstream.projections.memories import get_memory, list_memories, revisions
from memstream.schemas import events as ev
from memstream.schemas.filters import parse_filter

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
N = 1500


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HistoryProjection]:
    rng = random.Random(11)
    p = HistoryProjection(Path(tmp_path_factory.mktemp("h")) / "history.duckdb")
    batch = []
    for i in range(N):
        # Producers' clocks disagree: times run mostly with the stream, some far off,
        # and some memories share a time.
        skew = rng.choice([0, 0, 0, -3600, 7200, rng.randint(-(10**6), 10**6)])
        ts = T0 + dt.timedelta(seconds=(i // 3) + skew)
        cls = ev.KnowledgeStored if i % 2 else ev.SolutionStored
        own = {"domain": "d", "content": f"c{i}"} if i % 2 else {"problem": "p", "solution": "s"}
        batch.append((i + 1, cls(id=f"e{i}", tenant="acme", agent="a", ts=ts,
                                 memory_id=f"m{i}", metadata={"n": i % 4}, **own)))  # type: ignore[arg-type]  # fmt: skip
    # Some memories revised later: their updated_at and updated_seq move.
    for j, i in enumerate(rng.sample(range(N), 200)):
        ts = T0 + dt.timedelta(seconds=rng.randint(0, 10**6))
        revised = ev.MemoryRevised(
            id=f"r{j}", tenant="acme", agent="a", ts=ts, memory_id=f"m{i}", metadata={"n": 9}
        )
        batch.append((N + j + 1, revised))
    for start in range(0, len(batch), 100):
        p.apply(batch[start : start + 100])
    yield p
    p.close()


def walk(history: HistoryProjection, **kw: object) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = list_memories(history.cursor(), "acme", NOW, limit=37, cursor=cursor, **kw)  # type: ignore[arg-type]
        seen += [m.memory_id for m in page]
        if cursor is None:
            return seen


@pytest.mark.parametrize("order_by", ["created_at", "updated_at"])
@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("span", [50, 10**9])
def test_pages_come_in_exact_order(
    history: HistoryProjection, monkeypatch: pytest.MonkeyPatch, order_by: str,
    descending: bool, span: int,
) -> None:  # fmt: skip
    """Walking every page gives the memories in (time, seq) order, each once, whether
    a page is bounded from a small window of recent sequences (span 50) or read whole."""
    monkeypatch.setattr(memories, "_FIRST_SPAN", span)
    rows = history.con.execute(
        f"SELECT memory_id, {order_by}, {order_by.replace('_at', '_seq')} FROM knowledge "
        f"UNION ALL SELECT memory_id, {order_by}, {order_by.replace('_at', '_seq')} FROM solutions"
    ).fetchall()
    expected = [r[0] for r in sorted(rows, key=lambda r: (r[1], r[2]), reverse=descending)]
    assert expected == walk(history, order_by=order_by, descending=descending)
    only = parse_filter({"metadata.n": {"$in": [1, 9]}})
    both = (
        "SELECT memory_id, metadata FROM knowledge "
        "UNION ALL SELECT memory_id, metadata FROM solutions"
    )
    wanted = {
        m
        for m, meta in history.con.execute(both).fetchall()
        if meta and ('"n":1' in meta or '"n":9' in meta)
    }
    filtered = walk(history, order_by=order_by, descending=descending, filter=only)
    assert [m for m in expected if m in wanted] == filtered


def test_get_finds_either_kind_and_not_another_tenant(history: HistoryProjection) -> None:
    """get reads knowledge and solutions alike, within the tenant asked."""
    con = history.cursor()
    assert "knowledge" == get_memory(con, "acme", "m1", NOW).kind  # type: ignore[union-attr]
    assert "solutions" == get_memory(con, "acme", "m2", NOW).kind  # type: ignore[union-attr]
    assert get_memory(con, "beta", "m1", NOW) is None


def test_a_database_from_before_gains_the_columns_and_counts_revisions(tmp_path: Path) -> None:
    """A history written before scopes and revisions opens with the new columns, its
    memories' revisions counted from the events it holds."""
    path = tmp_path / "history.duckdb"
    p = HistoryProjection(path)
    stored = ev.KnowledgeStored(id="e1", tenant="acme", agent="a", ts=T0, memory_id="m",
                                domain="d", content="v1")  # fmt: skip
    p.apply([(1, stored)])
    for seq in (2, 3):
        p.apply([(seq, ev.MemoryRevised(id=f"e{seq}", tenant="acme", agent="a", ts=T0,
                                        memory_id="m", content=f"v{seq}"))])  # fmt: skip
    # As the previous release left it: no index, none of the added columns.
    p.con.execute("ALTER TABLE events DROP COLUMN memory_id")
    for table in ("knowledge", "solutions"):
        p.con.execute(f"DROP INDEX {table}_memory_id")
        for column in ("task_id", "user_id", "run_id", "project", "expires_at", "revision"):
            p.con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    p.close()
    p = HistoryProjection(path)
    try:
        found = get_memory(p.cursor(), "acme", "m", NOW)
        assert found is not None
        assert ("v3", 3, None) == (found.content, found.revision, found.user_id)
        assert [1, 2, 3] == [r.seq for r in revisions(p.cursor(), "acme", "m")]
    finally:
        p.close()


def test_an_expired_memory_is_not_revised_and_a_new_store_makes_it_anew(tmp_path: Path) -> None:
    """Past its expiry a memory is gone for the events that follow, swept or not: a
    revision changes nothing, and storing the id again creates it afresh."""
    p = HistoryProjection(tmp_path / "history.duckdb")
    at = [T0 + dt.timedelta(seconds=s) for s in (0, 20, 30)]
    common = {"tenant": "acme", "agent": "a", "memory_id": "m"}
    p.apply([
        (1, ev.KnowledgeStored(id="e1", ts=at[0], domain="d", content="v1", ttl_s=10, **common)),
        (2, ev.MemoryRevised(id="e2", ts=at[1], content="too late", **common)),
    ])  # fmt: skip
    row = p.con.execute("SELECT content, revision FROM knowledge").fetchone()
    assert ("v1", 1) == row
    p.apply([(3, ev.KnowledgeStored(id="e3", ts=at[2], domain="d", content="v2", **common))])
    found = get_memory(p.cursor(), "acme", "m", NOW)
    assert found is not None
    assert ("v2", 1, at[2]) == (found.content, found.revision, found.created_at)
    p.close()

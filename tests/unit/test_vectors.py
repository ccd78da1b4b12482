"""The vector projection on Qdrant Edge (on disk, in a temporary directory)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memstream.projections.embedders import HashEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.point_store import EdgeStores, from_payload, point_id
from memstream.projections.vector_search import VectorReader
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
_ids = itertools.count()


def make(
    cls: type[ev.Event],
    tenant: str = "acme",
    agent: str = "a1",
    ts: dt.datetime = T0,
    **fields: Any,
) -> Any:
    return cls(id=f"v{next(_ids)}", tenant=tenant, agent=agent, ts=ts, **fields)


Parts = tuple[EdgeStores, CachedEmbedder]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    stores = EdgeStores(tmp_path / "vectors")
    cached = CachedEmbedder(HashEmbedder(64), EmbeddingCache(tmp_path / "cache.sqlite3"))
    yield stores, cached
    stores.close()


@pytest.fixture
def vectors(parts: Parts) -> VectorProjection:
    return VectorProjection(*parts)


def test_memories_are_searchable_with_their_payload(vectors: VectorProjection) -> None:
    """Stored knowledge, solutions and collaborations come back with kind, ref and payload."""
    vectors.apply([
        (1, make(ev.KnowledgeStored, memory_id="k1", domain="python",
                 content="asyncio gather runs awaitables concurrently", tags=("asyncio",),
                 metadata={"source": "docs"})),
        (2, make(ev.SolutionStored, memory_id="s1", problem="flaky test",
                 solution="wait for the condition instead of sleeping")),
        (3, make(ev.CollabRecorded, interaction_id="i1", initiator="a1",
                 participants=("a1", "b2"), task_description="review the retry patch",
                 outcome="approved")),
        (4, make(ev.ConversationTurn, session_id="s", role="user", content="not a memory")),
    ])  # fmt: skip
    (hit,) = vectors.search(
        "acme", "asyncio gather awaitables", kinds=["knowledge"], top_k=1, mode="dense"
    )
    assert ("knowledge", "k1") == (hit.kind, hit.ref)
    assert hit.score > 0.5  # cosine similarity, in dense mode
    p = hit.payload
    assert ("acme", "a1", "python", ["asyncio"], 1, {"source": "docs"}) == (
        p["tenant"],
        p["agent"],
        p["domain"],
        p["tags"],
        p["seq"],
        p["metadata"],
    )
    assert T0.isoformat() == p["ts"]
    assert "solutions" == vectors.search("acme", "flaky test sleeping", top_k=1)[0].kind
    collab = vectors.search("acme", "review retry patch", kinds=["collaborations"])[0]
    assert ("i1", "review the retry patch\napproved") == (collab.ref, collab.text)
    assert 4 == vectors.checkpoint


def test_tenants_never_see_each_others_points(vectors: VectorProjection) -> None:
    """The same text stored by two tenants: each tenant's search returns its own point."""
    text = "the deploy key lives in the vault"
    vectors.apply([
        (1, make(ev.KnowledgeStored, tenant="acme", memory_id="m", domain="ops", content=text)),
        (2, make(ev.KnowledgeStored, tenant="beta", memory_id="m", domain="ops", content=text)),
    ])  # fmt: skip
    for tenant in ("acme", "beta"):
        hits = vectors.search(tenant, text, top_k=10)
        assert [tenant] == [h.payload["tenant"] for h in hits]
    assert (1, 1) == (vectors.store.count("acme"), vectors.store.count("beta"))
    assert point_id("acme", "knowledge", "m") != point_id("beta", "knowledge", "m")
    assert [] == vectors.search("gamma", text)


def test_forget_removes_from_search(vectors: VectorProjection) -> None:
    """A forgotten memory is gone from search; others stay."""
    vectors.apply([
        (1, make(ev.KnowledgeStored, memory_id="keep", domain="d", content="keep this fact")),
        (2, make(ev.KnowledgeStored, memory_id="drop", domain="d", content="drop this fact")),
    ])  # fmt: skip
    vectors.apply([(3, make(ev.MemoryForgotten, memory_id="drop"))])
    assert ["keep"] == [h.ref for h in vectors.search("acme", "this fact", top_k=10)]


def test_revise_re_embeds_in_later_and_same_batch(vectors: VectorProjection) -> None:
    """A revision changes the text that is searched, whether stored earlier or just now."""
    vectors.apply(
        [
            (
                1,
                make(
                    ev.KnowledgeStored,
                    memory_id="m",
                    domain="d",
                    content="postgres vacuum settings",
                ),
            )
        ]
    )
    vectors.apply(
        [
            (
                2,
                make(
                    ev.MemoryRevised,
                    memory_id="m",
                    content="duckdb checkpoint size",
                    tags=("storage",),
                ),
            )
        ]
    )
    (hit,) = vectors.search("acme", "duckdb checkpoint size", top_k=1)
    assert ("m", "duckdb checkpoint size", ["storage"], 2, "d") == (
        hit.ref,
        hit.text,
        hit.payload["tags"],
        hit.payload["seq"],
        hit.payload["domain"],
    )
    vectors.apply([
        (3, make(ev.SolutionStored, memory_id="s", problem="slow", solution="add an index")),
        (4, make(ev.MemoryRevised, memory_id="s", solution="batch the inserts")),
        (5, make(ev.MemoryRevised, memory_id="ghost", content="ignored")),
    ])  # fmt: skip
    assert "slow\nbatch the inserts" == vectors.search("acme", "batch inserts", top_k=1)[0].text
    assert [] == [h for h in vectors.search("acme", "ignored", top_k=10) if h.ref == "ghost"]


def test_filters(vectors: VectorProjection) -> None:
    """agent, domain, tags and the time window narrow the search."""
    later = T0 + dt.timedelta(days=1)
    vectors.apply([
        (1, make(ev.KnowledgeStored, memory_id="a", domain="py", content="retry with backoff",
                 tags=("net",))),
        (2, make(ev.KnowledgeStored, memory_id="b", domain="go", content="retry with backoff",
                 agent="other", ts=later)),
    ])  # fmt: skip
    q = "retry with backoff"
    assert ["b"] == [h.ref for h in vectors.search("acme", q, agent="other")]
    assert ["a"] == [h.ref for h in vectors.search("acme", q, domain="py")]
    assert ["a"] == [h.ref for h in vectors.search("acme", q, tags=["net"])]
    assert ["b"] == [h.ref for h in vectors.search("acme", q, since=T0 + dt.timedelta(hours=1))]
    assert ["a"] == [h.ref for h in vectors.search("acme", q, until=T0 + dt.timedelta(hours=1))]
    for mode in ("hybrid", "dense"):
        assert [] == vectors.search("acme", q, threshold=1.01, mode=mode)


def test_checkpoint_skips_redelivery_and_survives_reopen(parts: Parts, tmp_path: Path) -> None:
    """Events at or below the checkpoint change nothing; the checkpoint is stored."""
    stores, cached = parts
    projection = VectorProjection(stores, cached)
    projection.apply([(5, make(ev.KnowledgeStored, memory_id="m", domain="d", content="v1"))])
    projection.apply([(5, make(ev.MemoryForgotten, memory_id="m"))])  # a redelivery of seq 5
    assert ["m"] == [h.ref for h in projection.search("acme", "v1")]
    stores.close()
    reopened = EdgeStores(tmp_path / "vectors")
    again = VectorProjection(reopened, cached)
    assert (5, projection.generation) == (again.checkpoint, again.generation)
    assert ["m"] == [h.ref for h in again.search("acme", "v1")]
    reopened.close()


def test_rebuilt_generation_matches_and_costs_no_embedding_call(parts: Parts) -> None:
    """A new generation from the same events has the same ids and payloads, makes no
    embedding call with a warm cache, and is put in use in one switch."""
    stores, cached = parts
    events = [
        (1, make(ev.KnowledgeStored, memory_id="k", domain="d", content="first fact")),
        (2, make(ev.SolutionStored, memory_id="s", problem="p", solution="fix")),
        (3, make(ev.KnowledgeStored, memory_id="k2", tenant="beta", domain="d",
                 content="beta fact")),
        (4, make(ev.MemoryRevised, memory_id="k", content="first fact, revised")),
    ]  # fmt: skip
    live = VectorProjection(stores, cached)
    live.apply(events)
    calls = cached.stats.embedding_calls
    rebuilt = VectorProjection(stores, cached, generation="rebuild1")
    rebuilt.apply(events)
    assert calls == cached.stats.embedding_calls
    ids = [
        point_id(tenant, kind, ref)
        for kind, tenant, ref in (("knowledge", "acme", "k"), ("solutions", "acme", "s"),
                                  ("knowledge", "beta", "k2"))
    ]  # fmt: skip
    old, new = live.store.retrieve(ids), rebuilt.store.retrieve(ids)
    assert 3 == len(old) and old == new
    assert live.generation == rebuilt.make_current()
    assert "rebuild1" == stores.current()
    for tenant, query in (("acme", "first fact revised"), ("beta", "beta fact")):
        assert live.search(tenant, query) == rebuilt.search(tenant, query)


def test_a_reader_follows_the_generation_in_use(parts: Parts) -> None:
    """A reader (the query role) searches the generation in use and reads the writer's
    checkpoint; after a rebuild is made current, it sees the new generation."""
    stores, cached = parts
    reader = VectorReader(stores, cached)
    assert 0 == reader.checkpoint
    assert [[]] == reader.search_many("acme", ["anything"])
    live = VectorProjection(stores, cached)
    live.apply([(1, make(ev.KnowledgeStored, memory_id="k1", domain="d", content="old fact"))])
    assert (1, ["k1"]) == (
        reader.checkpoint,
        [h.ref for h in reader.search_many("acme", ["old"])[0]],
    )
    rebuilt = VectorProjection(stores, cached, generation="g2")
    rebuilt.apply([(7, make(ev.KnowledgeStored, memory_id="k2", domain="d", content="new fact"))])
    assert ["k1"] == [h.ref for h in reader.search_many("acme", ["fact"])[0]]
    rebuilt.make_current()
    assert (7, ["k2"]) == (
        reader.checkpoint,
        [h.ref for h in reader.search_many("acme", ["fact"])[0]],
    )
    assert [] == reader.search_many("beta", ["fact"])[0]


def test_turns_and_tasks_are_searchable_kinds(vectors: VectorProjection) -> None:
    """Conversation turns (kind turns) and tasks (title and outcome, kind tasks) are
    searched when asked for, filtered by session and task; plain searches leave them out."""
    vectors.apply([
        (1, make(ev.ConversationTurn, session_id="s1", role="user",
                 content="the invoice export times out after thirty seconds")),
        (2, make(ev.ConversationTurn, session_id="s2", role="user",
                 content="the invoice export is slow again")),
        (3, make(ev.TaskCreated, task_id="t1", title="speed up the invoice export")),
        (4, make(ev.TaskCompleted, task_id="t1", output={"fix": "batched the queries"})),
        (5, make(ev.TaskFailed, task_id="t2", error="the invoice archive is read-only")),
        (6, make(ev.KnowledgeStored, memory_id="k1", domain="d", content="invoices are monthly")),
    ])  # fmt: skip
    q = "invoice export"
    assert {"k1"} == {h.ref for h in vectors.search("acme", q, top_k=10)}
    turns = vectors.search("acme", q, kinds=["turns"], top_k=10)
    assert {"s1", "s2"} == {h.payload["session_id"] for h in turns}
    (one,) = vectors.search("acme", q, kinds=["turns"], session_id="s1")
    assert "user: the invoice export times out after thirty seconds" == one.text
    tasks = {h.ref: h for h in vectors.search("acme", q, kinds=["tasks"], top_k=10)}
    assert 'speed up the invoice export\n{"fix":"batched the queries"}' == tasks["t1"].text
    assert "completed" == tasks["t1"].payload["status"]
    assert "t2\nerror: the invoice archive is read-only" == tasks["t2"].text
    (only,) = vectors.search("acme", q, kinds=["tasks"], task_id="t2")
    assert "failed" == only.payload["status"]
    # A task finished in a later batch keeps the title its creation gave it.
    vectors.apply([(7, make(ev.TaskCreated, task_id="t3", title="rotate the deploy keys"))])
    vectors.apply([(8, make(ev.TaskFailed, task_id="t3", error="vault sealed"))])
    (t3,) = vectors.search("acme", "deploy keys vault", kinds=["tasks"], task_id="t3")
    assert "rotate the deploy keys\nerror: vault sealed" == t3.text


def test_a_point_is_the_same_however_its_events_were_batched(parts: Parts) -> None:
    """Live, a memory's and a task's events may land in different batches; a rebuild
    may read them in one. The points, their record of every text they had (what an
    erase clears from the cache) included, come out the same."""
    stores, cached = parts
    events = [
        (1, make(ev.KnowledgeStored, memory_id="k", domain="d", content="first fact")),
        (2, make(ev.TaskCreated, task_id="t1", title="fix the flaky test")),
        (3, make(ev.MemoryRevised, memory_id="k", content="first fact, revised")),
        (4, make(ev.TaskCompleted, task_id="t1", output={"fixed": True})),
        (5, make(ev.MemoryRevised, memory_id="k", content="first fact, revised twice")),
    ]  # fmt: skip
    one_by_one = VectorProjection(stores, cached, generation="one-by-one")
    for event in events:
        one_by_one.apply([event])
    at_once = VectorProjection(stores, cached, generation="at-once")
    at_once.apply(events)
    ids = [point_id("acme", "knowledge", "k"), point_id("acme", "tasks", "t1")]
    apart, together = one_by_one.store.retrieve(ids), at_once.store.retrieve(ids)
    assert 2 == len(apart) and apart == together
    memory = from_payload(next(p for p in together if p["kind"] == "knowledge"))
    assert 3 == len(memory["text_keys"])  # each text it had, the unsearched ones too


def test_expired_points_are_hidden_at_once_and_swept_later(vectors: VectorProjection) -> None:
    """A memory past its expiry is never found; one not yet expired is; the sweep
    deletes the points whose time ran out and leaves the others."""
    now = dt.datetime.now(dt.UTC)
    vectors.apply([
        (1, make(ev.KnowledgeStored, ts=now, memory_id="gone", domain="d",
                 content="rotating keys", expires_at=now - dt.timedelta(minutes=1))),
        (2, make(ev.KnowledgeStored, ts=now, memory_id="brief", domain="d",
                 content="rotating keys", ttl_s=60)),
        (3, make(ev.KnowledgeStored, ts=now, memory_id="kept", domain="d",
                 content="rotating keys")),
    ])  # fmt: skip
    found = [h.ref for h in vectors.search("acme", "rotating keys", mode="keyword")]
    assert ["brief", "kept"] == sorted(found)
    assert 1 == vectors.sweep(now)
    assert 1 == vectors.sweep(now + dt.timedelta(seconds=61))
    assert 1 == vectors.store.count("acme")


def test_storing_a_memory_again_keeps_when_it_was_created(vectors: VectorProjection) -> None:
    """A memory stored again (dedupe, or the same id) is revised, not created anew: a
    filter on created_at still finds it by its first storing."""
    later = T0 + dt.timedelta(days=3)
    vectors.apply([
        (1, make(ev.KnowledgeStored, memory_id="m", domain="d", content="first words")),
        (2, make(ev.KnowledgeStored, ts=later, memory_id="m", domain="d", content="new words")),
    ])  # fmt: skip
    early = {"created_at": {"$lt": (T0 + dt.timedelta(days=1)).isoformat()}}
    hits = vectors.search("acme", "new words", mode="keyword", filter=early)
    assert [("m", "new words")] == [(h.ref, h.text) for h in hits]

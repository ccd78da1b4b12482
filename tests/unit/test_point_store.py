"""The vector engine's contract, run against Qdrant Edge always and against a Qdrant
server where a Docker engine runs (skipped with the reason otherwise)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as edge

from memstream.consumers.engine_process import EngineProcesses
from memstream.projections.embedders import HashEmbedder
from memstream.projections.point_store import (
    INDEXING_KB,
    SEARCH_THREADS,
    SEGMENTS,
    SHARED_TERMS,
    SPARSE_FULL_SCAN,
    STATE_ID,
    STATE_TENANT,
    TENANT_GRAPH_M,
    TENANT_TERMS,
    Condition,
    EdgeStores,
    PointStore,
    PointStores,
    Search,
    ServerStores,
    StorePoint,
    bm25_document,
    bm25_query,
    new_generation,
    point_id,
)
from memstream.projections.point_store import edge as edge_store
from memstream.projections.point_store.edge import EdgeStore
from memstream.projections.point_store.remote import RemoteStore, RemoteStores, engine_socket
from tests.docker import docker_unavailable
from tests.waiting import wait_for_sync

DIMS = 64
EMBED = HashEmbedder(DIMS)
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def qdrant_url() -> Iterator[str]:
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from testcontainers.community.qdrant import QdrantContainer

    with QdrantContainer() as container:
        host = container.get_container_host_ip()
        yield f"http://{host}:{container.get_exposed_port(6333)}"


@pytest.fixture(params=["edge", "engine", "server"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PointStores]:
    made: PointStores
    engine: EngineProcesses | None = None
    if request.param == "edge":
        made = EdgeStores(tmp_path / "vectors")
    elif request.param == "engine":
        # Edge in processes of its own (one a generation), reached over their sockets.
        engine = EngineProcesses(tmp_path / "vectors")
        made = RemoteStores(tmp_path / "vectors", engine)
    else:
        from qdrant_client import QdrantClient

        made = ServerStores(QdrantClient(url=request.getfixturevalue("qdrant_url")))
        for generation in made.generations():
            made.drop(generation)
    yield made
    made.close()
    if engine is not None:
        assert engine.stop() in (0, None)


@pytest.fixture
def store(stores: PointStores) -> PointStore:
    generation = new_generation()
    opened = stores.open(generation, DIMS)
    stores.make_current(generation)
    return opened


def point(
    tenant: str, ref: str, text: str, kind: str = "knowledge", embed: HashEmbedder = EMBED,
    **payload: Any,
) -> StorePoint:  # fmt: skip
    return StorePoint(
        id=point_id(tenant, kind, ref),
        dense=embed.embed([text])[0].tolist(),
        sparse=bm25_document(text),
        payload={"tenant": tenant, "kind": kind, "ref": ref, "text": text,
                 "ts_epoch": NOW.timestamp(), **payload},
    )  # fmt: skip


def search(tenant: str, text: str, **kw: Any) -> Search:
    return Search(
        tenant=tenant,
        dense=EMBED.embed([text])[0].tolist(),
        sparse=bm25_query(text),
        limit=kw.pop("limit", 5),
        now=NOW,
        **kw,
    )


def refs(store: PointStore, s: Search) -> list[str]:
    return [f.payload["ref"] for f in store.search(s)]


DOCS = [
    ("k1", "the deploy key rotates every month"),
    ("k2", "asyncio gather runs awaitables concurrently"),
    ("k3", "retry the payments client with jittered backoff"),
    ("k4", "the staging database is reset every night"),
]


def test_points_are_written_read_and_deleted(store: PointStore) -> None:
    store.upsert([point("acme", ref, text) for ref, text in DOCS])
    ids = [point_id("acme", "knowledge", r) for r in ("k1", "k2", "nope")]
    assert {"k1", "k2"} == {p["ref"] for p in store.retrieve(ids)}
    store.upsert([point("acme", "k1", "the deploy key rotates every week")])
    (again,) = store.retrieve(ids[:1])
    assert "the deploy key rotates every week" == again["text"]
    store.delete(ids[:1])
    assert ["k2"] == [p["ref"] for p in store.retrieve(ids)]
    assert 3 == store.count("acme")
    assert 3 + 1 == store.points()  # and the state's


def test_tenants_never_see_each_other(store: PointStore) -> None:
    store.upsert([point("acme", "a", "the vault key is in the safe")])
    store.upsert([point("beta", "b", "the vault key is in the safe")])
    for mode in ("hybrid", "dense", "keyword"):
        assert ["a"] == refs(store, search("acme", "vault key", mode=mode)), mode
    assert 1 == store.delete_tenant("beta")
    assert (1, 0) == (store.count("acme"), store.count("beta"))
    assert [] == refs(store, search("beta", "vault key"))


def test_a_word_another_tenant_uses_everywhere_keeps_its_weight(store: PointStore) -> None:
    """A word's weight (IDF) is counted over the tenant's own memories: beta's hundred
    memories about kafka do not make kafka a common word for acme, whose two memories
    each hold one of the two words asked."""
    store.upsert(
        [point("acme", "k", "kafka consumer lag"), point("acme", "r", "redis eviction policy")]
    )
    store.upsert([point("beta", f"b{i}", f"kafka topic number {i}") for i in range(100)])
    found = store.search(search("acme", "kafka redis", mode="keyword"))
    scores = {f.payload["ref"]: f.score for f in found}
    assert {"k", "r"} == set(scores)
    assert scores["k"] == pytest.approx(scores["r"], rel=1e-3), scores


def test_each_mode_finds_by_its_own_means(store: PointStore) -> None:
    store.upsert([point("acme", ref, text) for ref, text in DOCS])
    # Keyword: BM25 with stemming ("rotating" matches "rotates"), only docs sharing a term.
    assert ["k1"] == refs(store, search("acme", "rotating keys", mode="keyword"))
    assert [] == refs(store, search("acme", "zebra", mode="keyword"))
    # Dense: every memory has a similarity; the best first.
    dense = refs(store, search("acme", "the deploy key rotates", mode="dense"))
    assert "k1" == dense[0] and 4 == len(dense)
    # Hybrid: both sides fused; the memory both rank first stays first.
    assert "k1" == refs(store, search("acme", "deploy key rotation", mode="hybrid"))[0]
    # min_score holds back what the dense side finds unrelated.
    assert [] == refs(store, search("acme", "zebra", mode="dense", min_score=0.9))


def test_conditions_filter_inside_the_engine(store: PointStore) -> None:
    store.upsert([
        point("acme", "k1", "deploy notes", agent="a1", tags=["ops", "keys"]),
        point("acme", "s1", "deploy notes", kind="solutions", agent="a2", tags=["ops"]),
        point("acme", "old", "deploy notes", ts_epoch=NOW.timestamp() - 86_400),
    ])  # fmt: skip
    by = {
        "kind": ({"k1", "old"}, (Condition("kind", any_of=("knowledge",)),)),
        "agent": ({"s1"}, (Condition("agent", any_of=("a2",)),)),
        "tag": ({"k1"}, (Condition("tags", any_of=("keys",)),)),
        "range": ({"k1", "s1"}, (Condition("ts_epoch", gte=NOW.timestamp() - 60),)),
    }
    for name, (expected, must) in by.items():
        assert expected == set(refs(store, search("acme", "deploy notes", must=must))), name


def test_recency_weighs_newer_memories_more(store: PointStore) -> None:
    week, text = 7 * 86_400.0, "the build cache lives in the bucket"
    store.upsert([
        point("acme", "old", text, ts_epoch=NOW.timestamp() - week),
        point("acme", "new", text),
    ])  # fmt: skip
    for mode in ("hybrid", "dense", "keyword"):
        found = store.search(search("acme", "build cache", mode=mode, recency_half_life_s=week))
        assert ["new", "old"] == [f.payload["ref"] for f in found], mode
    # The same text scores the same: one half-life old weighs half.
    dense = store.search(search("acme", "build cache", mode="dense", recency_half_life_s=week))
    assert dense[1].score == pytest.approx(dense[0].score / 2, rel=0.01)
    # Without a half-life, age does not count.
    plain = store.search(search("acme", "build cache", mode="dense"))
    assert plain[0].score == pytest.approx(plain[1].score)


def test_state_is_kept_apart_from_every_tenant(stores: PointStores, store: PointStore) -> None:
    store.write_state({"checkpoint": 42, "model": "m", "dimensions": DIMS})
    store.upsert([point("acme", "k1", "a memory")])
    assert 42 == store.read_state()["checkpoint"]
    assert 1 == store.count("acme")
    assert ["k1"] == refs(store, search("acme", "memory", mode="dense"))


def test_generations_switch_atomically_and_persist(stores: PointStores, tmp_path: Path) -> None:
    first, second = new_generation(), new_generation()
    stores.open(first, DIMS).upsert([point("acme", "k1", "first")])
    assert stores.make_current(first) is None
    stores.open(second, DIMS).upsert([point("acme", "k1", "second")])
    assert first == stores.make_current(second)
    assert second == stores.current()
    stores.drop(first)
    assert [second] == stores.generations()
    if isinstance(stores, EdgeStores):
        stores.close()
        reopened = EdgeStores(tmp_path / "vectors")
        assert second == reopened.current()
        (payload,) = reopened.open(second, DIMS).retrieve([point_id("acme", "knowledge", "k1")])
        assert "second" == payload["text"]
        reopened.close()


def test_min_score_holds_in_hybrid_too(store: PointStore) -> None:
    """A memory that shares a word with the query but not its meaning stays out of a
    hybrid search with a min_score; in keyword mode words alone decide."""
    store.upsert([
        point("acme", "near", "rotate the deploy key monthly"),
        point("acme", "far", "the key of the song is D minor"),
    ])  # fmt: skip
    query = "deploy key rotation"
    strict = search("acme", query, mode="hybrid", min_score=0.45)
    assert ["near"] == refs(store, strict)
    assert {"near", "far"} == set(refs(store, search("acme", query, mode="hybrid")))
    assert {"near", "far"} == set(
        refs(store, search("acme", query, mode="keyword", min_score=0.45))
    )


def test_payloads_lists_every_point_but_the_state(store: PointStore) -> None:
    store.write_state({"checkpoint": 1})
    store.upsert([point("acme", f"k{i}", f"memory {i}") for i in range(1500)])
    store.upsert([point("beta", "b", "theirs")])
    assert 1501 == len(list(store.payloads()))
    assert ["b"] == [p["ref"] for p in store.payloads("beta")]


def _shard_made_before(path: Path) -> Any:
    """A shard as an earlier memstream made it: the engine's defaults, no state."""
    config = edge.EdgeConfig(
        vectors={"dense": edge.EdgeVectorParams(size=DIMS, distance=edge.Distance.Cosine)},
        sparse_vectors={"bm25": edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
    )
    return edge.EdgeShard.create(str(path), config)


def test_a_shard_made_before_gets_todays_settings(tmp_path: Path) -> None:
    stores = EdgeStores(tmp_path / "vectors")
    made_before = stores.path("old")
    shard = _shard_made_before(made_before)
    shard.close()
    assert "max_search_threads" not in json.loads((made_before / "edge_config.json").read_text())
    for generation in ("old", "new"):
        stores.open(generation, DIMS).upsert([point("acme", "k1", "kept")])
    stores.close()
    for generation, sparse_full_scan in (("old", None), ("new", SPARSE_FULL_SCAN)):
        made = json.loads((stores.path(generation) / "edge_config.json").read_text())
        assert SEARCH_THREADS == made["max_search_threads"] == 1
        # The keyword side's full scan is the one the generation was made with.
        assert sparse_full_scan == made["sparse_vectors"]["bm25"].get("full_scan_threshold")
        graph = made["hnsw_config"]
        assert (0, TENANT_GRAPH_M, edge_store.SCAN_KB) == (
            graph["m"],
            graph["payload_m"],
            graph["full_scan_threshold"],
        )
        optimizers = made["optimizers"]
        assert (SEGMENTS, INDEXING_KB) == (
            optimizers["default_segment_number"],
            optimizers["indexing_threshold"],
        )
        # Its next index build keeps the dense vectors as int8 too.
        assert {"type": "int8", "quantile": edge_store.QUANTILE, "always_ram": True} == (
            made["vectors"]["dense"]["quantization_config"]["scalar"]
        )
        reopened = EdgeStores(tmp_path / "vectors")
        store = reopened.open(generation, DIMS)
        assert ["k1"] == refs(store, search("acme", "kept"))
        reopened.close()


def test_an_indexed_tenant_finds_what_an_exact_search_finds(tmp_path: Path) -> None:
    """Once a build has indexed a tenant's points, the search reads their int8 copies
    (the tenant is below SCAN_KB) and scores the best again by the stored vectors: the
    same hits as an exact search, in the same order, each at its exact cosine (an int8
    score is off by up to several percent; through a graph, hits go missing)."""
    embed = HashEmbedder(384)
    rng = random.Random(5)
    words = [f"w{n}" for n in range(2_000)]
    texts = [" ".join(rng.choices(words, k=12)) for _ in range(5_000)]
    vectors = embed.embed(texts)
    stores = EdgeStores(tmp_path / "vectors")
    store = stores.open("g", 384)
    store.upsert([point("acme", f"k{i}", text, embed=embed) for i, text in enumerate(texts)])
    assert store.shard.optimize()
    exact = edge.SearchParams(exact=True)
    tenant = edge.Filter(must=[edge.FieldCondition(key="tenant", match=edge.MatchValue("acme"))])
    for i in range(0, 5_000, 250):
        query = vectors[i].tolist()
        found = store.search(Search(tenant="acme", dense=query, sparse=None, limit=10, now=NOW,
                                    mode="dense"))  # fmt: skip
        expected = store.shard.query(
            edge.QueryRequest(limit=10, query=edge.Query.Nearest(query, using="dense"),
                              filter=tenant, params=exact, with_payload=False)
        )  # fmt: skip
        assert [f.id for f in found] == [str(e.id) for e in expected]
        assert [f.score for f in found] == pytest.approx([e.score for e in expected], abs=1e-5)
    stores.close()


def test_the_keyword_side_finds_the_same_through_the_index_as_by_a_full_scan(
    tmp_path: Path,
) -> None:
    """A generation made today reads a tenant's keyword postings through the index (its
    segment holds more than SPARSE_FULL_SCAN of the tenant's points); one made before
    scores each of the tenant's points. Same hits, same scores, no other tenant's (every
    hit asked for, so that equal scores in another order compare equal)."""
    words = ["deploy", "key", "rotates", "staging", "database", "payments", "retry",
             "backoff", "cache", "replay"]  # fmt: skip
    points = [
        point(tenant, f"{tenant}{i}", " ".join(words[(i * k) % len(words)] for k in (1, 3, 7)))
        for tenant in ("acme", "beta")
        for i in range(2 * SPARSE_FULL_SCAN)
    ]
    stores = EdgeStores(tmp_path / "vectors")
    _shard_made_before(stores.path("old")).close()
    found = {}
    for generation in ("old", "new"):
        store = stores.open(generation, DIMS)
        store.upsert(points)
        found[generation] = [
            sorted((f.payload["ref"], round(f.score, 3)) for f in store.search(s))
            for query in ("deploy key", "payments retry backoff", "cache", "staging replay")
            for s in (search("acme", query, mode="keyword", limit=len(points)),)
        ]
    stores.close()
    assert found["old"] == found["new"]
    assert all(hits and all(ref.startswith("acme") for ref, _ in hits) for hits in found["new"])


def test_a_shard_made_with_shared_term_ids_keeps_them_until_rebuilt(tmp_path: Path) -> None:
    """A shard made before term ids were the tenant's holds BM25's own ids, and its
    state does not name them: it is searched and written with those, so its keyword
    search goes on finding, old points and new alike; a new generation takes the
    tenant's."""
    stores = EdgeStores(tmp_path / "vectors")
    made_before = stores.path("old")
    shard = _shard_made_before(made_before)
    old = point("acme", "k1", "the deploy key rotates every month")
    vectors = {"dense": list(old.dense), "bm25": edge.SparseVector(*old.sparse.pair())}
    state = {"dimensions": DIMS, "checkpoint": 7, "tenant": STATE_TENANT}
    shard.update(
        edge.UpdateOperation.upsert_points(
            [edge.Point(old.id, vectors, old.payload), edge.Point(STATE_ID, {}, state)]
        )
    )
    shard.close()
    store = stores.open("old", DIMS)
    assert SHARED_TERMS == store.terms
    store.upsert([point("acme", "k2", "rotating the signing keys")])
    assert ["k1", "k2"] == sorted(refs(store, search("acme", "rotates keys", mode="keyword")))
    store.write_state({"dimensions": DIMS, "checkpoint": 8})
    assert SHARED_TERMS == store.read_state()["terms"]
    new = stores.open("new", DIMS)
    assert TENANT_TERMS == new.terms == new.read_state()["terms"]
    _shard_made_before(stores.path("stopped")).close()  # no state: nothing written yet
    assert TENANT_TERMS == stores.open("stopped", DIMS).terms
    stores.close()


def test_a_shard_lent_to_another_process_is_not_opened_and_owes_its_purges(
    tmp_path: Path,
) -> None:
    stores = EdgeStores(tmp_path / "vectors")
    stores.open("copy", DIMS).upsert([point("acme", "k1", "kept")])
    stores.close()  # as the copy is handed over: closed here
    assert not stores.owe_purge("copy", "acme")  # not lent: purged here, as usual
    stores.lend("copy")
    with pytest.raises(RuntimeError, match="another process"):
        stores.open("copy", DIMS)
    assert stores.owe_purge("copy", "acme") and stores.owe_purge("copy", "beta")
    assert ["acme", "beta"] == stores.take_back("copy")
    assert [] == stores.take_back("copy")
    assert ["k1"] == refs(stores.open("copy", DIMS), search("acme", "kept"))
    stores.close()


def test_a_copy_taken_unflushed_opens_with_every_point(
    stores: PointStores, store: PointStore, tmp_path: Path
) -> None:
    """The copy an index build starts from is taken without a flush (a flush would hold
    the engine, and every search, for up to a third of a second): opening it replays
    the log's tail, as after a kill, and it holds every point written before it."""
    if not isinstance(stores, EdgeStores | RemoteStores):
        pytest.skip("a server's collections are not copied by file")
    assert isinstance(store, EdgeStore | RemoteStore)
    for batch in range(3):
        store.upsert([point("acme", f"b{batch}-{i}", f"note {batch} {i}") for i in range(200)])
    store.delete([point_id("acme", "knowledge", "b0-0")])
    store.write_state({"dimensions": DIMS, "checkpoint": 42})
    copy = new_generation()
    store.copy_to(stores.path(copy))
    store.upsert([point("acme", "after", "written after the copy")])
    opened = EdgeStores(tmp_path / "vectors")  # as the index build opens it: elsewhere
    try:
        copied = opened.open(copy, DIMS)
        assert 599 == copied.count("acme")
        assert 42 == copied.read_state()["checkpoint"]
        assert ["b2-199"] == refs(copied, search("acme", "note 2 199", limit=1))
        assert [] == copied.retrieve([point_id("acme", "knowledge", "after")])
    finally:
        opened.close()


def test_a_flush_waits_for_a_quiet_engine_or_a_long_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush holds the engine and every search for tens to hundreds of ms: it is
    taken when no search is coming, or once so much waits in the log that a restart
    would replay long; never for nothing."""
    monkeypatch.setattr(edge_store, "_FLUSH_EVERY_S", 0.0)
    monkeypatch.setattr(edge_store, "FLUSH_BOUND", 100)
    store = EdgeStores(tmp_path / "vectors").open("g", DIMS)
    store.upsert([point("acme", "k0", "first")])
    assert store.flush_if_due(quiet=True)
    assert not store.flush_if_due(quiet=True)  # nothing written since
    store.upsert([point("acme", f"k{i}", "busy") for i in range(60)])
    assert not store.flush_if_due(quiet=False)  # searches are coming: it waits
    store.upsert([point("acme", f"k{i}", "busy") for i in range(60, 120)])
    assert store.flush_if_due(quiet=False)  # the log's tail is past the bound
    store.close()


@pytest.mark.parametrize("awaited", [False, True], ids=["in-a-thread", "awaited"])
def test_a_reader_follows_the_generation_in_use_from_engine_to_engine(
    tmp_path: Path, awaited: bool
) -> None:
    """Each generation in an engine process of its own: a reader in another process (the
    searcher) searches the one in use through its engine, and goes on answering while
    the owner swaps generations in and out and their engines start and end. Awaited (as
    the searcher asks), several searches are on one connection at once, each answered
    with its own hits."""
    shards = tmp_path / "vectors"
    engines = EngineProcesses(shards)
    owner, reader = RemoteStores(shards, engines), RemoteStores(shards)
    following = reader.current_store()
    first = new_generation()
    owner.open(first, DIMS).upsert([point("acme", "k0", "the gateway times out")])
    owner.make_current(first)
    answered: list[list[str]] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def searching() -> None:
        while not done.is_set():
            try:
                answered.append(refs(following, search("acme", "gateway")))
            except Exception as err:
                failures.append(err)

    async def awaiting() -> None:
        asked = [search("acme", "gateway"), search("acme", "nothing like it", mode="keyword")]
        while not done.is_set():
            try:
                in_use = reader.current()  # as the searcher asks, once a request
                assert in_use is not None
                found = await asyncio.gather(
                    *(reader.search(asked[i % 2], in_use) for i in range(6))
                )
            except Exception as err:
                failures.append(err)
                continue
            if any(found[1::2]):  # a reply went to another's call
                failures.append(AssertionError(f"keyword searches found {found[1::2]}"))
            answered.extend([f.payload["ref"] for f in hits] for hits in found[::2])

    thread = threading.Thread(target=(lambda: asyncio.run(awaiting())) if awaited else searching)
    thread.start()
    try:
        old = first
        for swap in range(1, 4):
            new = new_generation()
            store = owner.open(new, DIMS)  # a process of its own, started now
            store.upsert([point("acme", f"k{swap}", "the gateway times out")])
            owner.make_current(new)
            owner.drop(old)  # its process killed, its files removed
            assert [new] == owner.generations() and 1 == len(engines.pids())
            # nothing left of the old one's process: its socket, its lock
            assert [f"engine-{new}.lock"] == [p.name for p in shards.glob("engine-*.lock")]
            assert engine_socket(shards, new).exists()
            assert not engine_socket(shards, old).exists()
            seen = len(answered)
            wait_for_sync(lambda n=seen: len(answered) > n + 5, what="searches answered")
            assert [f"k{swap}"] == answered[-1]
            old = new
    finally:
        done.set()
        thread.join()
        reader.close()
        owner.close()
        assert engines.stop() in (0, None)
    assert [] == failures
    assert len(answered) > 20
    # A generation left by a run before this one is dropped with what its engine left.
    restarted = EngineProcesses(shards)
    RemoteStores(shards, restarted).drop(old)
    assert [] == list(shards.glob("engine-*")) and [] == restarted.pids()
    assert not engine_socket(shards, old).exists()


def test_partitions_keep_their_own_collections_on_one_server(qdrant_url: str) -> None:
    """Two partitions on one Qdrant server: each its own alias, generations and state."""
    from qdrant_client import QdrantClient

    client = QdrantClient(url=qdrant_url)
    zero, one = ServerStores(client, "_p0of2"), ServerStores(client, "_p1of2")
    for stores in (zero, one):
        for generation in stores.generations():
            stores.drop(generation)
    a, b = new_generation(), new_generation()
    zero.open(a, DIMS).write_state({"checkpoint": 7})
    zero.make_current(a)
    one.open(b, DIMS).write_state({"checkpoint": 9})
    one.make_current(b)
    assert ([a], a) == (zero.generations(), zero.current())
    assert ([b], b) == (one.generations(), one.current())
    assert 7 == zero.open(a, DIMS).read_state()["checkpoint"]
    assert 9 == one.open(b, DIMS).read_state()["checkpoint"]

"""The vector projection fed by JetStream: live ingest, dead letters, rebuild."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from nats.aio.client import Client as NatsClient

from memstream.consumers.runner import LiveRunner
from memstream.consumers.service import rebuild_offline
from memstream.consumers.settings import load_settings
from memstream.consumers.storage import VectorStorage, vector_storage_from_settings
from memstream.producers import MemoryClient
from memstream.projections.embedders import HashEmbedder, OpenAIEmbedder
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev
from tests.embedding_server import API_KEY, EmbeddingServer
from tests.integration.test_history_runner import publish_mixed, run_live
from tests.samples import sample_events
from tests.waiting import wait_for


def storage(tmp_path: Path) -> VectorStorage:
    settings = load_settings({}, data_dir=str(tmp_path))
    return vector_storage_from_settings(settings, HashEmbedder(64))


async def test_live_vectors_skip_bad_events_and_rebuild_without_embedding(
    nc: NatsClient, tmp_path: Path
) -> None:
    """Bad messages are dead-lettered; a rebuild reproduces every point from the cache."""
    client = MemoryClient(nc, tenant="acme", agent="a1")
    await client.publish_many(sample_events())
    await nc.jetstream().publish("mem.acme.knowledge.stored", b"{broken")
    await publish_mixed(nc, 400)
    live_storage = storage(tmp_path)
    projection = live_storage.open_current()
    runner = await run_live(nc, projection)
    assert 1 == runner.stats.dead_letters
    hits = projection.search("acme", "asyncio gather", kinds=["knowledge"], top_k=50)
    refs = {h.ref for h in hits}
    assert "m1" in refs  # from the samples, revised to "gather runs them concurrently"

    def points(projection: VectorProjection) -> list[bytes]:
        return sorted(msgspec.json.encode(p, order="sorted") for p in projection.store.payloads())

    queries = ["asyncio gather", "retry with backoff", "flaky test"]
    before = points(projection)

    def found(projection: VectorProjection) -> list[list[tuple[float, str]]]:
        # Dense: the vectors alone decide (BM25's IDF counts the revisions a live shard
        # saw); equal scores in either order.
        return [
            sorted(
                (-round(h.score, 5), h.ref)
                for h in projection.search("acme", q, mode="dense", top_k=1000)
            )
            for q in queries
        ]

    found_before = found(projection)
    calls = live_storage.embedder.stats.embedding_calls
    generation = projection.generation
    live_storage.close()

    rebuilt_storage = storage(tmp_path)
    result = await rebuild_offline(nc, rebuilt_storage)
    assert result.last_seq == projection.checkpoint
    reopened = storage(tmp_path)
    current = reopened.open_current()
    assert current.generation != generation
    # The same points with the same payloads and vectors: the same answers.
    assert before == points(current)
    assert found_before == found(current)
    assert 0 == rebuilt_storage.embedder.stats.embedding_calls
    assert calls > 0
    reopened.close()


def _refusing_storage(tmp_path: Path, server: EmbeddingServer) -> VectorStorage:
    settings = load_settings({**server.env}, data_dir=str(tmp_path))
    embedder = OpenAIEmbedder(api_key=API_KEY, model="test-embedding", dimensions=64,
                              base_url=server.url, max_attempts=2, base_delay=0.01)  # fmt: skip
    return vector_storage_from_settings(settings, embedder)


async def test_a_text_the_embedder_refuses_is_a_dead_letter_but_a_refusing_embedder_is_not(
    nc: NatsClient, tmp_path: Path
) -> None:
    """An embeddings server that answers 400 for one text, and embeds others, has
    refused that event: it alone is dead-lettered. One that answers 400 for every text
    (its settings wrong) is an outage: nothing is dead-lettered, the projection says it
    is not advancing, and it applies everything once the server embeds again."""
    server = EmbeddingServer(dimensions=64)
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    try:
        server.refuse = "POISON"
        good = [mem.new_event(ev.KnowledgeStored, memory_id=f"g{i}", domain="d",
                              content=f"fact {i}") for i in range(5)]  # fmt: skip
        bad = mem.new_event(ev.KnowledgeStored, memory_id="bad", domain="d", content="POISON")
        await mem.publish_many([*good[:2], bad, *good[2:]])
        projection = _refusing_storage(tmp_path / "one", server).open_current()
        runner = await run_live(nc, projection)
        assert 1 == runner.stats.dead_letters
        assert 5 == projection.store.count("acme")

        server.refuse = ""  # every text contains "": the server refuses them all
        last = (await mem.store_knowledge("one more fact", domain="d", memory_id="g9")).seq
        refused = _refusing_storage(tmp_path / "all", server).open_current()
        live = LiveRunner(nc, refused, max_wait=0.05, consumer="refusing")
        task = asyncio.create_task(live.run())
        try:
            await wait_for(lambda: live.unhealthy is not None, what="the runner to stall")
            assert "embedder" in live.unhealthy
            server.refuse = None
            await wait_for(lambda: refused.checkpoint >= last, timeout=60, what="catch up")
        finally:
            live.stop()
            await task
        assert (0, None) == (live.stats.dead_letters, live.unhealthy)
        # Its own consumer read the whole stream: the text refused before is embedded now.
        assert 7 == refused.store.count("acme")
    finally:
        server.close()

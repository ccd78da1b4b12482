"""The vector projection fed by JetStream: live ingest, dead letters, rebuild."""

from __future__ import annotations

from pathlib import Path

import msgspec
from nats.aio.client import Client as NatsClient

from memstream.consumers.service import rebuild_offline
from memstream.consumers.settings import load_settings
from memstream.consumers.storage import VectorStorage, vector_storage_from_settings
from memstream.producers import MemoryClient
from memstream.projections.embedders import HashEmbedder
from memstream.projections.vectors import VectorProjection
from tests.integration.test_history_runner import publish_mixed, run_live
from tests.samples import sample_events


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

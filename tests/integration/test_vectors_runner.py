"""The vector projection fed by JetStream: live ingest, dead letters, rebuild."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
from nats.aio.client import Client as NatsClient

from consumers.service import rebuild_offline
from consumers.settings import load_settings
from consumers.storage import VectorStorage, vector_storage_from_settings
from producers import MemoryClient
from projections.embedders import HashEmbedder
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
    before = {
        name: sorted(
            (str(p.id), msgspec.json.encode(p.payload, order="sorted"), tuple(p.vector))  # type: ignore[arg-type]
            for p in projection.client.scroll(
                name, with_vectors=True, with_payload=True, limit=10_000
            )[0]
        )
        for name in projection.collections()
        if not name.startswith("ms_state")
    }
    calls = live_storage.embedder.stats.embedding_calls
    generation = projection.generation
    live_storage.client.close()
    live_storage.cache.close()

    rebuilt_storage = storage(tmp_path)
    result = await rebuild_offline(nc, rebuilt_storage)
    assert result.last_seq == projection.checkpoint
    reopened = storage(tmp_path)
    current = reopened.open_current()
    assert current.generation != generation
    after = {
        name.replace(current.generation, generation): sorted(
            (str(p.id), msgspec.json.encode(p.payload, order="sorted"), tuple(p.vector))  # type: ignore[arg-type]
            for p in reopened.client.scroll(
                name, with_vectors=True, with_payload=True, limit=10_000
            )[0]
        )
        for name in current.collections()
        if not name.startswith("ms_state")
    }
    assert sorted(before) == sorted(after)
    for name in before:
        assert [b[:2] for b in before[name]] == [a[:2] for a in after[name]]
        # Qdrant normalises cosine vectors as it stores them: equal up to float32 rounding.
        assert np.allclose([b[2] for b in before[name]], [a[2] for a in after[name]], atol=1e-6)
    assert 0 == rebuilt_storage.embedder.stats.embedding_calls
    assert calls > 0
    reopened.close()

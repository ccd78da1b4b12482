"""Building the vector engine's indexes in another process, while the vectors service goes
on ingesting and answering: nothing lost, nothing doubled, the copy swapped in."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.engine_process import EngineProcesses
from memstream.consumers.index_aside import CachedOnly, catch_up
from memstream.consumers.indexer import IndexBuilder
from memstream.consumers.service import ProjectionService
from memstream.consumers.settings import load_settings
from memstream.consumers.storage import vector_storage_from_settings
from memstream.consumers.tenants import purge_projection, purge_stream
from memstream.producers import MemoryClient
from memstream.projections.applied_ids import AppliedIds
from memstream.projections.embedders import HashEmbedder
from memstream.projections.embedding_cache import CachedEmbedder
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev
from memstream.schemas.admin import PurgeReport
from tests.waiting import wait_for


async def _store(mem: MemoryClient, start: int, n: int) -> int:
    events = [
        mem.new_event(ev.KnowledgeStored, memory_id=f"m{i}", domain="d",
                      content=f"fact {i}: the build cache lives in bucket {i}")
        for i in range(start, start + n)
    ]  # fmt: skip
    return (await mem.publish_many(events))[-1].seq


@pytest.mark.parametrize("engine", ["inline", "process"])
async def test_the_index_is_built_aside_and_swapped_in_without_loss(
    nc: NatsClient, tmp_path: Path, engine: str
) -> None:
    """In-process, and with an engine process for each generation (as ``memstream up``
    runs it): the indexed copy is loaded by a process of its own while the one in use
    answers, and the one swapped out ends with its generation."""
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    last = await _store(mem, 0, 400)
    await mem.publish(mem.new_event(ev.MemoryRevised, memory_id="m7", content="revised seven"))
    engines = EngineProcesses(tmp_path / "vectors") if engine == "process" else None
    storage = vector_storage_from_settings(
        load_settings({}, data_dir=str(tmp_path)), HashEmbedder(64), engine=engines
    )
    service: ProjectionService[VectorProjection] = ProjectionService(nc, storage, max_wait=0.05)
    await service.start()
    searches = failures = 0
    stop = asyncio.Event()

    async def search_all_along() -> None:
        nonlocal searches, failures
        while not stop.is_set():
            async with service.reading() as vectors:
                try:
                    vectors.search("acme", "build cache bucket")
                    searches += 1
                except Exception as err:
                    failures += 1
                    print("search failed:", repr(err))
            await asyncio.sleep(0.005)

    try:
        await wait_for(lambda: service.checkpoint >= last + 1, what="caught up")
        before = service.projection.generation
        assert service.projection.unindexed >= 400  # points written (a revision rewrites one)
        builder = IndexBuilder(service, storage, after=100, every_s=3600)
        searching = asyncio.create_task(search_all_along())
        # Memories keep arriving while the copy is indexed and caught up.
        writing = asyncio.create_task(_store(mem, 400, 300))
        assert await builder.build_if_due()
        last = await writing
        await wait_for(lambda: service.checkpoint >= last, what="caught up after the swap")
        stop.set()
        await searching
        projection = service.projection
        assert projection.generation != before
        assert [projection.generation] == storage.stores.generations()
        if engines is not None:  # one engine process: the new generation's
            assert 1 == len(engines.pids())
        assert 700 == projection.store.count("acme")  # each memory once
        assert projection.unindexed < 100 + 300  # only what came after the copy
        (hit,) = projection.search("acme", "revised seven", top_k=1, mode="keyword")
        assert "m7" == hit.ref
        assert "m699" in {h.ref for h in projection.search("acme", "bucket 699", top_k=3)}
        assert (0, True) == (failures, searches > 0)
        # Not due until enough was written since; then a copy with nothing to catch up.
        assert not await IndexBuilder(service, storage, after=10_000).build_if_due()
        assert await builder.build_if_due()
        assert 700 == service.projection.store.count("acme")
        assert 0 == service.projection.unindexed
    finally:
        stop.set()
        await service.stop()
        if engines is not None:
            assert engines.stop() in (0, None)


async def test_a_tenant_purged_while_the_index_is_built_stays_purged(
    nc: NatsClient, tmp_path: Path
) -> None:
    """The copy being indexed was made before the purge: the swap must not bring the
    tenant's memories back."""
    await _store(MemoryClient(nc, tenant="acme", agent="a1"), 0, 150)
    last = await _store(MemoryClient(nc, tenant="beta", agent="b1"), 0, 150)
    storage = vector_storage_from_settings(
        load_settings({}, data_dir=str(tmp_path)), HashEmbedder(64)
    )
    service: ProjectionService[VectorProjection] = ProjectionService(nc, storage, max_wait=0.05)
    await service.start()

    class PurgedMeanwhile(IndexBuilder):
        async def _index(self, path: str) -> None:
            indexing = asyncio.create_task(super()._index(path))  # its process started
            report = PurgeReport(tenant="beta")
            await purge_projection(service, "beta", await purge_stream(nc, "beta", report), report)
            assert 150 == report.vector_points  # the copy is purged on its return
            await indexing

    try:
        await wait_for(lambda: service.checkpoint >= last, what="caught up")
        before = service.projection.generation
        assert await PurgedMeanwhile(service, storage, after=100, every_s=3600).build_if_due()
        projection = service.projection
        assert projection.generation != before
        assert (150, 0) == (projection.store.count("acme"), projection.store.count("beta"))
        assert not projection.search("beta", "build cache bucket")
    finally:
        await service.stop()
        storage.close()


async def test_the_indexing_process_catches_the_copy_up_itself(
    nc: NatsClient, tmp_path: Path
) -> None:
    """What the service applies while the copy is indexed, the indexing process applies
    to the copy too (from the cached vectors), so the service need not apply it again."""
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    await _store(mem, 0, 200)
    storage = vector_storage_from_settings(
        load_settings({}, data_dir=str(tmp_path)), HashEmbedder(64)
    )
    service: ProjectionService[VectorProjection] = ProjectionService(nc, storage, max_wait=0.05)
    await service.start()
    marks: dict[str, int] = {}

    class ArrivingMeanwhile(IndexBuilder):
        async def _index(self, path: str) -> None:
            marks["copied"] = service.checkpoint
            last = await _store(mem, 200, 120)  # after the copy, before the indexing
            consumer = service.running.runner.consumer

            async def acked() -> bool:
                info = await nc.jetstream().consumer_info("MEMORY", consumer)
                return bool(info.ack_floor and info.ack_floor.stream_seq >= last)

            await wait_for(acked, what="the service applied and acked them")
            marks["last"] = last
            await super()._index(path)

    try:
        await wait_for(lambda: service.checkpoint >= 200, what="caught up")
        builder = ArrivingMeanwhile(service, storage, after=100, every_s=3600)
        assert await builder.build_if_due()
        assert marks["copied"] < marks["last"] <= builder.caught_up["checkpoint"]
        assert 120 == builder.caught_up["unindexed"]  # written after the indexes
        projection = service.projection
        assert 120 == projection.unindexed
        assert 320 == projection.store.count("acme")
        assert "m319" in {h.ref for h in projection.search("acme", "bucket 319", top_k=3)}
    finally:
        await service.stop()
        storage.close()


async def test_the_copy_is_caught_up_in_rounds_while_the_service_moves_on(
    nc: NatsClient, tmp_path: Path
) -> None:
    """The indexing process aims each round of its catch-up at where the service is
    then: what the service applied during the first round, a second round applies."""
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    first = await _store(mem, 0, 200)
    storage = vector_storage_from_settings(
        load_settings({}, data_dir=str(tmp_path)), HashEmbedder(64)
    )
    service: ProjectionService[VectorProjection] = ProjectionService(nc, storage, max_wait=0.05)
    await service.start()
    consumer = service.running.runner.consumer

    def acked(seq: int) -> Any:
        async def check() -> bool:
            info = await nc.jetstream().consumer_info("MEMORY", consumer)
            return bool(info.ack_floor and info.ack_floor.stream_seq >= seq)

        return check

    first_round_done, go_on = threading.Event(), threading.Event()

    class Copy(VectorProjection):
        def apply(self, *args: Any, **kwargs: Any) -> Any:  # in the replay's thread
            applied = super().apply(*args, **kwargs)
            if self.checkpoint >= first and not go_on.is_set():
                first_round_done.set()
                go_on.wait(30)
            return applied

    try:
        await wait_for(acked(first), what="the service applied the first 200")
        embedder = storage.embedder
        copy = Copy(
            storage.stores,
            CachedEmbedder(CachedOnly(embedder.model, embedder.dimensions), storage.cache),
            generation="copy",
            applied=AppliedIds(),
        )
        catching_up = asyncio.create_task(catch_up(nc, consumer, copy, close_enough=0))
        await wait_for(first_round_done.is_set, what="the first round")
        second = await _store(mem, 200, 150)
        await wait_for(acked(second), what="the service applied 150 more")
        go_on.set()
        await catching_up
        assert second == copy.checkpoint
        assert 350 == copy.store.count("acme")
    finally:
        go_on.set()
        await service.stop()
        storage.close()

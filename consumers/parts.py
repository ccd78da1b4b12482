"""The parts a memstream process runs for its roles: the projection services, the index
builder, the query worker that reads them, and what a metrics scrape reads of them."""

from __future__ import annotations

import asyncio
from typing import Any

from memstream.consumers.deployment import Hold
from memstream.consumers.indexer import IndexBuilder
from memstream.consumers.log import get_logger
from memstream.consumers.metrics import Health
from memstream.consumers.query_worker import QUEUE, QueryWorker
from memstream.consumers.roles import ALL_ROLES
from memstream.consumers.service import ProjectionService
from memstream.consumers.settings import Settings
from memstream.consumers.sources import ReaderSource, RemoteHistory
from memstream.consumers.storage import HistoryStorage, VectorStorage, vector_storage_from_settings
from memstream.projections.embedding_cache import CachedEmbedder
from memstream.projections.vector_search import VectorReader
from memstream.schemas.events import EventDecoder
from memstream.schemas.queries import PROJECTIONS
from memstream.schemas.subjects import durable_name

__all__ = ["RoleParts", "caught_up", "live_counters"]

log = get_logger("memstream.up")


class RoleParts:
    """The projection services of some roles, and the query worker that reads them."""

    def __init__(self, nc: Any, settings: Settings, held: Hold, roles: frozenset[str]):
        self.nc, self.settings, self.roles = nc, settings, roles
        data_dir = held.data_dir
        tuning: dict[str, Any] = {
            "batch_size": settings.batch_size,
            "max_wait": settings.batch_wait_ms / 1000,
            # One event size limit everywhere: the SDK, the broker, the stream, the workers.
            "decoder": EventDecoder(max_bytes=settings.max_event_bytes),
        }
        self.services: dict[str, ProjectionService[Any]] = {}
        # Each instance consumes a durable of its own: a second one is a full replica.
        own = {p: durable_name(p, held.deployment) for p in PROJECTIONS}
        tuning["partition"] = self.partition = held.partition
        if "history" in roles:
            self.services["history"] = ProjectionService(
                nc, HistoryStorage(data_dir), consumer=own["history"], **tuning
            )
        self.indexer: IndexBuilder | None = None
        if "vectors" in roles:
            vectors = vector_storage_from_settings(settings, partition=held.partition)
            service = ProjectionService(nc, vectors, consumer=own["vectors"], **tuning)
            self.services["vectors"] = service
            if vectors.shards is not None:  # Edge: its indexes are built in the background
                self.indexer = IndexBuilder(service, vectors, nats_auth=dict(settings.nats_auth))
        # The query role searches the vectors a Qdrant server holds.
        self._reader = (
            vector_storage_from_settings(settings, partition=held.partition)
            if roles == {"query"}
            else None
        )

    @property
    def embedder(self) -> CachedEmbedder | None:
        """The embedder this process uses, if it embeds at all."""
        if "vectors" in self.services:
            storage: VectorStorage = self.services["vectors"].storage  # type: ignore[assignment]
            return storage.embedder
        return self._reader.embedder if self._reader is not None else None

    def query_worker(self, nc: Any) -> QueryWorker | None:
        """Built once the services have started, since it reads their projections;
        answering on ``nc``."""
        roles = self.roles
        history, vectors = self.services.get("history"), self.services.get("vectors")
        local = not self.settings.qdrant_url
        subjects = self.partition.query_subjects()
        if roles == ALL_ROLES:
            return QueryWorker(
                nc, history=history, vectors=vectors, search_inline=local, subjects=subjects
            )
        if roles == {"history"}:
            return QueryWorker(nc, history=history, queue=f"{QUEUE}-history", subjects=subjects)
        if roles == {"vectors"} and local:
            # Embedded engine: only this process can open the vectors, so it answers for them.
            return QueryWorker(
                nc,
                vectors=vectors,
                remote_history=RemoteHistory(nc),
                answers_unknown=False,
                queue=f"{QUEUE}-vectors",
                search_inline=True,
                subjects=subjects,
            )
        if self._reader is not None:
            reader = VectorReader(self._reader.stores, self._reader.embedder)
            return QueryWorker(
                nc,
                vectors=ReaderSource(reader),
                remote_history=RemoteHistory(nc),
                answers_unknown=False,
                queue=f"{QUEUE}-vectors",
                subjects=subjects,
            )
        return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def live_counters(parts: RoleParts, health: Health) -> dict[str, Any]:
    """What a scrape reads of this process: its runners' and its embedder's counters,
    and the lag the event loop last asked of NATS."""
    found: dict[str, Any] = {
        "applied": {},
        "dead_letters": {},
        "lag": {name: p for name, (_, p, _) in health.projections.items()},
        "healthy": {},
    }
    for name, service in parts.services.items():
        stats = service.stats
        if stats is not None:
            found["applied"][name] = stats.applied
            found["dead_letters"][name] = stats.dead_letters
            found["healthy"][name] = 0 if service.unhealthy else 1
    embedder = parts.embedder
    if embedder is not None:
        found["embedding_requests"] = embedder.stats.embedding_calls
        found["cache_hits"] = embedder.stats.hits
        found["cache_misses"] = embedder.stats.misses
    return found


async def caught_up(services: list[ProjectionService[Any]], stop: asyncio.Event) -> bool:
    """Until every service has applied its share of the stream as it is now; False when
    stopped, or a service failed, first."""
    if not services:
        return True
    log.info("catching_up", projections=[s.name for s in services])
    catching: asyncio.Future[list[bool]] = asyncio.ensure_future(
        asyncio.gather(*(s.caught_up(stop) for s in services))
    )
    others: list[asyncio.Future[Any]] = [s.wait_failed() for s in services]
    others.append(asyncio.ensure_future(stop.wait()))
    waiting: list[asyncio.Future[Any]] = [catching, *others]
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    for task in waiting:
        if task not in done:
            task.cancel()
    if catching in done and all(catching.result()):
        log.info("caught_up", projections=[s.name for s in services])
        return True
    return False

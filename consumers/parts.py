"""The parts a memstream process runs for its roles: the projection services, the index
builder, the query worker that reads them, and what a metrics scrape reads of them."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from memstream.consumers.audit_table import AuditTable
from memstream.consumers.deployment import Hold
from memstream.consumers.engine_process import EngineProcesses, SearcherProcess
from memstream.consumers.indexer import IndexBuilder
from memstream.consumers.log import get_logger
from memstream.consumers.metrics import Health
from memstream.consumers.query_worker import QUEUE, QueryWorker
from memstream.consumers.roles import ALL_ROLES
from memstream.consumers.searcher import SEARCHER_OPS
from memstream.consumers.service import ProjectionService
from memstream.consumers.settings import ENV_VARS, Settings
from memstream.consumers.sources import ReaderSource, RemoteHistory
from memstream.consumers.storage import HistoryStorage, VectorStorage, vector_storage_from_settings
from memstream.projections.embedding_cache import CachedEmbedder
from memstream.projections.point_store.remote import EngineUnavailable, RemoteStores
from memstream.projections.vector_search import VectorReader
from memstream.schemas.admin import EngineInfo
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
            "spacing": settings.batch_spacing_ms / 1000,
            # One event size limit everywhere: the SDK, the broker, the stream, the workers.
            "decoder": EventDecoder(max_bytes=settings.max_event_bytes),
        }
        self.services: dict[str, ProjectionService[Any]] = {}
        # Each instance consumes a durable of its own: a second one is a full replica.
        own = {p: durable_name(p, held.deployment) for p in PROJECTIONS}
        tuning["partition"] = self.partition = held.partition
        if "history" in roles:
            self.services["history"] = ProjectionService(
                nc,
                HistoryStorage(data_dir, settings.quota_defaults),
                consumer=own["history"],
                **tuning,
            )
        # The history's audit table follows the audit stream, in the process with it.
        self.audit_table = (
            AuditTable(nc, self.services["history"], held.partition)
            if "history" in self.services
            else None
        )
        self.indexer: IndexBuilder | None = None
        # Qdrant Edge in processes of its own (one for each generation open), and the
        # searcher beside them, which this process starts and watches.
        self.engine: EngineProcesses | None = None
        self.searcher: SearcherProcess | None = None
        self.data_dir = data_dir
        if "vectors" in roles:
            if not settings.qdrant_url and settings.vector_engine == "process":
                self.engine = EngineProcesses(data_dir / "vectors", log_level=settings.log_level)
                self.engine.start_current()
            try:
                vectors = vector_storage_from_settings(
                    settings, partition=held.partition, engine=self.engine
                )
            except BaseException:
                if self.engine is not None:
                    self.engine.stop()
                raise
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

    def start_searcher(self, nc: Any) -> None:
        """With the engine in its own process, the searcher beside it answers search and
        recall (:mod:`consumers.searcher`), with this process's settings and the server
        ``nc`` reached; returns once it is started (it answers once told to serve)."""
        if self.engine is None:
            return
        env = {**os.environ}
        for field, var in ENV_VARS.items():
            value = getattr(self.settings, field)
            if value is not None:
                env[var] = str(value)
        env[ENV_VARS["data_dir"]] = str(self.data_dir)
        if nc.connected_url is not None:  # the server this process reached (of a cluster)
            env[ENV_VARS["nats_url"]] = nc.connected_url.geturl()
        self.searcher = SearcherProcess(self.engine.shards, self.partition.query_subjects(), env)
        self.searcher.start()

    def query_worker(self, nc: Any) -> QueryWorker | None:
        """Built once the services have started, since it reads their projections;
        answering on ``nc``. Where the searcher runs, it leaves search and recall to it."""
        roles = self.roles
        history, vectors = self.services.get("history"), self.services.get("vectors")
        local = not self.settings.qdrant_url
        subjects = self.partition.query_subjects()
        leave = SEARCHER_OPS if self.searcher is not None else frozenset()
        limits = self.settings.tenant_limits
        if roles == ALL_ROLES:
            return QueryWorker(
                nc, history=history, vectors=vectors, search_inline=local, subjects=subjects,
                leave=leave, limits=limits, quota_defaults=self.settings.quota_defaults,
            )  # fmt: skip
        if roles == {"history"}:
            return QueryWorker(
                nc, history=history, queue=f"{QUEUE}-history", subjects=subjects, limits=limits,
                quota_defaults=self.settings.quota_defaults,
            )  # fmt: skip
        if roles == {"vectors"} and local:
            # Embedded engine: only this process can open the vectors, so it answers for them.
            if self.searcher is not None:
                return None  # search and recall, its only ops, are the searcher's
            return QueryWorker(
                nc,
                vectors=vectors,
                remote_history=RemoteHistory(nc),
                answers_unknown=False,
                queue=f"{QUEUE}-vectors",
                search_inline=True,
                subjects=subjects,
                limits=limits,
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
                limits=limits,
            )
        return None

    def engine_info(self) -> EngineInfo | None:
        """The engine process as it reports itself (asked on a thread: it waits up to 2 s
        for an answer), or None when this process runs none."""
        if self.engine is None or "vectors" not in self.services:
            return None
        storage = self.services["vectors"].storage
        assert isinstance(storage, VectorStorage) and isinstance(storage.stores, RemoteStores)
        stores = storage.stores
        try:
            found = stores.status()
        except EngineUnavailable as err:
            return EngineInfo(
                up=False, pid=self.engine.pid, restarts=self.engine.restarts, error=str(err)
            )
        return EngineInfo(
            up=True,
            pid=found["pid"],
            restarts=self.engine.restarts,
            rss_bytes=found["rss_bytes"],
            searches=found["searches"],
            write_calls=found["write_calls"],
            reads_waiting=found["reads_waiting"],
            writes_waiting=found["writes_waiting"],
            search_wait_max_ms=round(found["search_wait_max_s"] * 1000, 3),
        )

    def close(self) -> None:
        """After the services have stopped: the engine process last (it flushes)."""
        if self._reader is not None:
            self._reader.close()
        if self.searcher is not None:
            self.searcher.stop()
        if self.engine is not None:
            self.engine.stop()


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
    history = parts.services.get("history")
    if history is not None:
        found["quota_refused"] = dict(history.projection.quota_refused)
        found["quota_warned"] = dict(history.projection.quota_warned)
    engine = parts.engine_info()  # asked now: a scrape is seconds apart
    if engine is not None:
        found["engine"] = engine
    embedder = parts.embedder
    if embedder is not None:
        found["embedding_requests"] = embedder.stats.embedding_calls
        found["cache_hits"] = embedder.stats.hits
        found["cache_misses"] = embedder.stats.misses
    if parts.searcher is not None:  # the queries' embeddings, in the searcher
        calls, hits, misses = parts.searcher.embedding_counts()
        found["embedding_requests"] = found.get("embedding_requests", 0) + calls
        found["cache_hits"] = found.get("cache_hits", 0) + hits
        found["cache_misses"] = found.get("cache_misses", 0) + misses
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

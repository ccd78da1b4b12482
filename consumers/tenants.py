"""Tenant administration: purging a tenant from the stream and every projection.

The stream goes first (the tenant's messages in ``MEMORY`` and ``MEMORY_DLQ``, purged by
subject), so no replay can bring the tenant back; then each projection, between two of
its batches, with the tenant's already-fetched events dropped rather than applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient

from consumers.log import get_logger
from consumers.service import HistoryStorage, ProjectionService
from consumers.settings import Settings
from consumers.vector_storage import VectorStorage
from projections.history import HistoryProjection
from schemas.errors import MemstreamError
from schemas.ids import validate_tenant
from schemas.subjects import DLQ_PREFIX, DLQ_STREAM, EVENT_PREFIX, EVENT_STREAM

__all__ = ["PurgeRefused", "PurgeReport", "purge_offline", "purge_projection", "purge_stream"]

log = get_logger("memstream.tenants")


class PurgeRefused(MemstreamError):
    code = "bad_request"


@dataclass
class PurgeReport:
    tenant: str
    stream_messages: int = 0
    dlq_messages: int = 0
    history_rows: dict[str, int] = field(default_factory=dict)
    vector_points: int = 0
    cached_embeddings: int = 0

    def record(self, projection: str, removed: dict[str, int]) -> None:
        """What a projection's ``purge_tenant`` says it removed."""
        if projection == "history":
            self.history_rows = removed
        else:
            self.vector_points = removed["points"]
            self.cached_embeddings = removed["cached_embeddings"]

    def merge(self, other: PurgeReport) -> None:
        self.stream_messages = max(self.stream_messages, other.stream_messages)
        self.dlq_messages = max(self.dlq_messages, other.dlq_messages)
        for table, n in other.history_rows.items():
            self.history_rows[table] = self.history_rows.get(table, 0) + n
        self.vector_points += other.vector_points
        self.cached_embeddings += other.cached_embeddings


async def _count(js: Any, stream: str, subjects: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


async def purge_stream(nc: NatsClient, tenant: str, report: PurgeReport) -> int:
    """Purge the tenant's messages from both streams; returns the last stream sequence
    at the time (every event of the tenant up to it is gone)."""
    validate_tenant(tenant)
    js = nc.jetstream()
    events, dead = f"{EVENT_PREFIX}.{tenant}.>", f"{DLQ_PREFIX}.*.{tenant}"
    report.stream_messages = await _count(js, EVENT_STREAM, events)
    report.dlq_messages = await _count(js, DLQ_STREAM, dead)
    upto = int((await js.stream_info(EVENT_STREAM)).state.last_seq)
    await js.purge_stream(EVENT_STREAM, subject=events)
    await js.purge_stream(DLQ_STREAM, subject=dead)
    log.info(
        "tenant_stream_purged",
        tenant=tenant,
        messages=report.stream_messages,
        dead_letters=report.dlq_messages,
    )
    return upto


async def purge_projection(
    service: ProjectionService[Any], tenant: str, upto: int, report: PurgeReport
) -> None:
    """Remove the tenant from a running projection, recording what it removed."""
    if service.rebuilding:
        raise PurgeRefused(
            f"a rebuild of {service.name} is running: purge {tenant} once it has finished"
        )
    removed = await service.purge_tenant(tenant, upto)
    report.record(service.name, removed)
    log.info("tenant_purged", tenant=tenant, projection=service.name, removed=removed)


def purge_offline(settings: Settings, tenant: str, report: PurgeReport) -> None:
    """Remove the tenant from the projections' files when no memstream process runs."""
    path = HistoryStorage(settings.data_path).files.current()
    if path is not None and path.exists():
        history = HistoryProjection(path)
        try:
            report.record(history.name, history.purge_tenant(tenant))
        finally:
            history.close()
    if settings.qdrant_url or (settings.data_path / "qdrant").exists():
        storage = VectorStorage(settings)
        try:
            vectors = storage.open_current()
            report.record(vectors.name, vectors.purge_tenant(tenant))
        finally:
            storage.close()

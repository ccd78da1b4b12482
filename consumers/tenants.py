"""Tenant administration: purging a tenant from the stream and every projection.

The stream goes first (the tenant's messages in ``MEMORY`` and ``MEMORY_DLQ``, purged by
subject), so no replay can bring the tenant back; then each projection, between two of
its batches, with the tenant's already-fetched events dropped rather than applied.
"""

from __future__ import annotations

import contextlib
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient

from memstream.consumers.deployment import partition_of
from memstream.consumers.log import get_logger
from memstream.consumers.service import ProjectionService
from memstream.consumers.settings import Settings
from memstream.consumers.storage import open_history, vector_storage_from_settings
from memstream.schemas.admin import PurgeReport
from memstream.schemas.ids import validate_tenant
from memstream.schemas.subjects import (
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENT_STREAM,
    LOCK_BUCKET,
    tenant_event_filter,
)

__all__ = ["purge_offline", "purge_projection", "purge_stream"]

log = get_logger("memstream.tenants")


async def _count(js: Any, stream: str, subjects: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


async def purge_stream(nc: NatsClient, tenant: str, report: PurgeReport) -> int:
    """Purge the tenant's messages from both streams; returns the last stream sequence
    at the time (every event of the tenant up to it is gone)."""
    js = nc.jetstream()
    events, dead = tenant_event_filter(tenant), f"{DLQ_PREFIX}.*.{validate_tenant(tenant)}"
    report.stream_messages = await _count(js, EVENT_STREAM, events)
    report.dlq_messages = await _count(js, DLQ_STREAM, dead)
    upto = int((await js.stream_info(EVENT_STREAM)).state.last_seq)
    await js.purge_stream(EVENT_STREAM, subject=events)
    await js.purge_stream(DLQ_STREAM, subject=dead)
    # Its locks too (a bucket made by an older memstream may not exist yet).
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.purge_stream(f"KV_{LOCK_BUCKET}", subject=f"$KV.{LOCK_BUCKET}.{tenant}.>")
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
    removed = await service.purge_tenant(tenant, upto)
    report.record(service.name, removed)
    log.info("tenant_purged", tenant=tenant, projection=service.name, removed=removed)


def purge_offline(settings: Settings, tenant: str, report: PurgeReport) -> None:
    """Remove the tenant from the projections' files when no memstream process runs."""
    history = open_history(settings.data_path)
    if history is not None:
        try:
            report.record(history.name, history.purge_tenant(tenant))
        finally:
            history.close()
    if settings.qdrant_url or (settings.data_path / "vectors").exists():
        partition = partition_of(settings.data_path)
        storage = vector_storage_from_settings(settings, partition=partition)
        try:
            vectors = storage.open_current()
            report.record(vectors.name, vectors.purge_tenant(tenant))
        finally:
            storage.close()

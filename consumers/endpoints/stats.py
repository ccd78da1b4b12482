"""stats and analytics: counts, progress and health, and the named analytics queries."""

from __future__ import annotations

import contextlib
import datetime as dt

import nats.errors

from memstream.consumers.endpoints._serving import Worker
from memstream.projections import memories, reads
from memstream.schemas.queries import (
    PROJECTIONS,
    AnalyticsRequest,
    AnalyticsResult,
    StatsRequest,
    StatsResult,
)
from memstream.schemas.subjects import DLQ_PREFIX, DLQ_STREAM, EVENT_STREAM

__all__ = ["analytics", "stats"]


async def stats(w: Worker, tenant: str, req: StatsRequest) -> StatsResult:
    by_type, by_agent = await w.read(reads.counts, tenant)
    now = dt.datetime.now(dt.UTC)
    live = await w.read(memories.live_counts, tenant, now)
    quota = await w.read(memories.quota_usage, tenant, now, w.quota_defaults)
    js = w.nc.jetstream()
    last_seq = (await js.stream_info(EVENT_STREAM)).state.last_seq
    applied: dict[str, int] = {name: source.checkpoint for name, source in w.sources.items()}
    remote = [name for name in PROJECTIONS if name not in w.sources]
    if remote:
        # Served by other processes: their durable consumers' ack floors say, the
        # furthest behind of a projection's instances counting.
        for info in await js.consumers_info(EVENT_STREAM):
            for name in remote:
                if info.name.startswith(f"{name}-"):
                    floor = info.ack_floor.stream_seq if info.ack_floor else 0
                    applied[name] = min(applied.get(name, floor), floor)
    dlq = await js.stream_info(DLQ_STREAM, subjects_filter=f"{DLQ_PREFIX}.*.{tenant}")
    lag = {name: max(0, last_seq - seq) for name, seq in applied.items()}
    for held, source in w.sources.items():
        partition = getattr(source, "partition", None)
        if partition is not None and not partition.whole:
            # A partition's checkpoint stops at its own last event: what it has not
            # applied of its share is what its consumer still holds.
            with contextlib.suppress(nats.errors.Error):
                lag[held] = await source.pending()  # type: ignore[attr-defined]
    return StatsResult(
        events_by_type=by_type,
        events_by_agent=by_agent,
        last_applied_seq=applied,
        lag=lag,
        dlq_count=sum((dlq.state.subjects or {}).values()),
        memories_by_kind=live,
        quota=quota,
        health={
            name: getattr(source, "unhealthy", None) or "ok" for name, source in w.sources.items()
        },
    )


async def analytics(w: Worker, tenant: str, req: AnalyticsRequest) -> AnalyticsResult:
    result = await w.read(reads.analytics, tenant, req.name, req.params)
    rows = [list(row) for row in result.rows]
    return AnalyticsResult(name=req.name, columns=result.columns, rows=rows)

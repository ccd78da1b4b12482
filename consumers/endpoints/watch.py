"""watch: the tenant's events pushed to its inbox as they are stored."""

from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from memstream.consumers.endpoints._serving import Worker, known_types
from memstream.schemas.errors import QueryError
from memstream.schemas.ids import new_id
from memstream.schemas.queries import WatchRequest, WatchResult
from memstream.schemas.subjects import (
    EVENT_STREAM,
    event_subject,
    reply_inbox_prefix,
    tenant_event_filter,
)

__all__ = ["watch"]


async def watch(w: Worker, tenant: str, req: WatchRequest) -> WatchResult:
    """A push consumer of the tenant's events to the asker's inbox, made with the
    service's rights: a tenant cannot be let create consumers itself, since the
    consumer-create API would let it rewrite memstream's own durable consumers."""
    inbox = reply_inbox_prefix(tenant) + "."
    rest = req.deliver_to[len(inbox) :]
    if not req.deliver_to.startswith(inbox) or not rest or any(c in rest for c in "*> \t"):
        raise QueryError(
            "bad_request",
            f"watch: deliver_to must be a subject under {inbox} (an inbox of this "
            f"tenant's connection), not {req.deliver_to!r}",
        )
    known_types(req.types)
    name = f"watch-{tenant}-{new_id()[-12:]}"
    heartbeat = req.heartbeat_ms / 1000
    js = w.nc.jetstream()
    # "From now" as a sequence, so a feed that starts again misses nothing.
    start = req.from_seq or (await js.stream_info(EVENT_STREAM)).state.last_seq + 1
    config = ConsumerConfig(
        name=name,
        deliver_subject=req.deliver_to,
        # As published (stored before slots were stamped) and as stored since.
        filter_subjects=[
            s
            for t in req.types
            for s in (event_subject(tenant, t), f"{event_subject(tenant, t)}.*")
        ]
        or None,
        filter_subject=None if req.types else tenant_event_filter(tenant),
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        idle_heartbeat=heartbeat,
        # Gone once nobody has listened on deliver_to for this long.
        inactive_threshold=max(30.0, 3 * heartbeat),
        mem_storage=True,
        num_replicas=1,
    )
    await js.add_consumer(EVENT_STREAM, config)
    return WatchResult(consumer=name, from_seq=start)

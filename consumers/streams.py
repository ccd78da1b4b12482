"""Provisioning of the streams and durable consumers, idempotent and self-correcting.

Running it twice changes nothing; a setting that drifted (say the duplicate window) is
updated in place, never duplicated. Each call reports what it did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from memstream.consumers.log import get_logger
from memstream.schemas.events import DEFAULT_MAX_EVENT_BYTES
from memstream.schemas.partitions import EVENT_SLOT_TRANSFORM, WHOLE, Partition
from memstream.schemas.queries import PROJECTIONS
from memstream.schemas.subjects import (
    AUDIT_PREFIX,
    AUDIT_STREAM,
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENT_PREFIX,
    EVENT_STREAM,
    LOCK_BUCKET,
)

__all__ = [
    "AUDIT_RETENTION_S",
    "DUPLICATE_WINDOW_S",
    "HEADER_ROOM",
    "JETSTREAM_SETTLING",
    "ProvisionReport",
    "consumer_config",
    "ensure_streams",
    "stream_configs",
    "until_jetstream_answers",
]

DUPLICATE_WINDOW_S: Final = 120.0
# How long the audit stream keeps its records.
AUDIT_RETENTION_S: Final = 90 * 24 * 3600.0
# Room for headers (Nats-Msg-Id, DLQ reasons) on top of the largest event body.
HEADER_ROOM: Final = 64 * 1024

log = get_logger("memstream.streams")

Action = Literal["created", "updated", "unchanged"]

# What JetStream answers while a cluster elects its leaders (after a restart, a node
# lost): nothing in time, nobody, or "unavailable". Worth waiting out, not an error.
JETSTREAM_SETTLING: Final = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)

T = TypeVar("T")


# "No suitable peers for placement": a cluster still forming does not know all its peers,
# so a stream of 3 replicas cannot be placed yet (seen right after a cluster's start).
_NO_PEERS_YET: Final = 10005


def _settling(err: Exception) -> bool:
    if isinstance(err, JETSTREAM_SETTLING):
        return True
    return getattr(err, "err_code", None) == _NO_PEERS_YET


async def until_jetstream_answers(
    call: Callable[[], Awaitable[T]], what: str, within: float = 60.0
) -> T:
    """``call()``, again with backoff while JetStream is settling, for up to ``within``
    seconds; then its error stands."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.1
    while True:
        try:
            return await call()
        except (*JETSTREAM_SETTLING, nats.js.errors.BadRequestError) as err:
            if not _settling(err) or loop.time() + delay > deadline:
                raise
            log.warning("jetstream_settling", waiting_for=what, error=repr(err), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass
class ProvisionReport:
    streams: dict[str, Action] = field(default_factory=dict)
    consumers: dict[str, Action] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(a != "unchanged" for a in (*self.streams.values(), *self.consumers.values()))


def stream_configs(
    *, replicas: int = 1, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> list[StreamConfig]:
    common: dict[str, Any] = dict(
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=max_event_bytes + HEADER_ROOM,
        max_age=0,
        max_msgs=-1,
        max_bytes=-1,
        allow_direct=True,
    )
    return [
        StreamConfig(
            name=EVENT_STREAM,
            description="memstream events: the source of truth for every projection",
            subjects=[f"{EVENT_PREFIX}.>"],
            # Each event is stored with its tenant's slot, by the server's partition()
            # (schemas.partitions): the partitions' consumers filter on it.
            subject_transform=SubjectTransform(*EVENT_SLOT_TRANSFORM),
            **common,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            description="memstream dead letters: events a projection could not apply",
            subjects=[f"{DLQ_PREFIX}.>"],
            **common,
        ),
        StreamConfig(
            name=AUDIT_STREAM,
            description="memstream audit: every query and admin operation",
            subjects=[f"{AUDIT_PREFIX}.>"],
            **{**common, "max_age": AUDIT_RETENTION_S},
        ),
    ]


def consumer_config(name: str, partition: Partition = WHOLE) -> ConsumerConfig:
    """The durable consumer of one projection instance, of one partition's events."""
    filters = partition.event_filters()
    return ConsumerConfig(
        durable_name=name,
        name=name,
        description=f"memstream {name} projection",
        deliver_policy=DeliverPolicy.ALL,
        # Batches are applied in order, so acking a batch's last message acks it all.
        ack_policy=AckPolicy.ALL,
        # A batch is acked after its commit; a slow commit must not cause redelivery.
        ack_wait=120.0,
        # Poison messages go to the DLQ by hand; a failing commit must retry forever.
        max_deliver=-1,
        max_ack_pending=50_000,
        max_waiting=64,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
    )


# Fields we own; anything else on a stream (set by an operator) is left alone.
_STREAM_FIELDS = (
    "subjects",
    "retention",
    "storage",
    "discard",
    "num_replicas",
    "duplicate_window",
    "max_msg_size",
    "max_age",
    "allow_direct",
    "description",
    "subject_transform",
)
_CONSUMER_FIELDS = (
    "deliver_policy",
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "max_ack_pending",
    "max_waiting",
    "filter_subject",
    "filter_subjects",
    "description",
)


def _differs(want: Any, have: Any, fields: tuple[str, ...]) -> bool:
    return any(getattr(want, f) != getattr(have, f) for f in fields)


async def _ensure_lock_bucket(js: JetStreamContext, replicas: int, report: ProvisionReport) -> None:
    """The key-value bucket of the tenants' locks (``MemoryClient.lock``): one value per
    key, each with its own time to live; direct gets, so a tenant's permission to read
    a key can name the key."""
    stream = f"KV_{LOCK_BUCKET}"
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=LOCK_BUCKET,
                description="memstream locks: <tenant>.<name>, held for a ttl",
                history=1,
                storage=StorageType.FILE,
                replicas=replicas,
                direct=True,
            )
        )
        report.streams[stream] = "created"
        return
    report.streams[stream] = "unchanged"


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    consumers: tuple[str, ...] = PROJECTIONS,
    partition: Partition = WHOLE,
) -> ProvisionReport:
    """Create or update the streams and durable consumers; returns what changed."""
    report = ProvisionReport()
    for want in stream_configs(replicas=replicas, max_event_bytes=max_event_bytes):
        name = str(want.name)  # always set by stream_configs
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(want)
            report.streams[name] = "created"
            continue
        if _differs(want, info.config, _STREAM_FIELDS):
            # Update on top of the current config so fields we do not own survive.
            merged = info.config.evolve(**{f: getattr(want, f) for f in _STREAM_FIELDS})
            await js.update_stream(merged)
            report.streams[name] = "updated"
        else:
            report.streams[name] = "unchanged"
    await _ensure_lock_bucket(js, replicas, report)
    for name in consumers:
        want_c = consumer_config(name, partition)
        try:
            have = await js.consumer_info(EVENT_STREAM, name)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(EVENT_STREAM, want_c)
            report.consumers[name] = "created"
            continue
        if have.config.ack_policy != want_c.ack_policy:
            # Not updatable in place. Recreated from the start: the projection skips what
            # it has already applied.
            await js.delete_consumer(EVENT_STREAM, name)
            await js.add_consumer(EVENT_STREAM, want_c)
            report.consumers[name] = "updated"
        elif _differs(want_c, have.config, _CONSUMER_FIELDS):
            # Creating a durable that exists with another config updates it in place;
            # its start position stays as it is.
            await js.add_consumer(
                EVENT_STREAM,
                want_c.evolve(
                    deliver_policy=have.config.deliver_policy,
                    opt_start_seq=have.config.opt_start_seq,
                ),
            )
            report.consumers[name] = "updated"
        else:
            report.consumers[name] = "unchanged"
    return report

"""Feeding projections from JetStream: the live runner and the replay runner.

Both share one path: decode each message, send what cannot be applied to the dead-letter
stream, apply the rest as one batch, and only then acknowledge. They differ only in the
consumer that feeds them: the durable pull consumer named after the projection (live), or
an ordered consumer from sequence 1 (replay).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from consumers.log import get_logger
from consumers.streams import consumer_config
from projections.base import Projection
from schemas.errors import InvalidEvent, InvalidSubject, InvalidTenant
from schemas.events import AnyEvent, EventDecoder, UnknownEvent, check_subject
from schemas.subjects import (
    DLQ_STREAM,
    EVENT_PREFIX,
    EVENT_STREAM,
    dlq_subject,
    parse_event_subject,
)

__all__ = ["DeadLetter", "LiveRunner", "ReplayProgress", "RunnerStats", "replay", "stream_seq"]

log = get_logger("memstream.runner")

DLQ_ERROR = "Memstream-Error"
DLQ_SOURCE_SUBJECT = "Memstream-Source-Subject"
DLQ_SOURCE_SEQ = "Memstream-Source-Seq"


def stream_seq(reply: str) -> tuple[int, int]:
    """(stream sequence, messages pending) from a JetStream delivery's reply subject.

    nats-py's ``msg.metadata`` builds datetimes and objects for every message; the hot
    path needs two integers.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>...
    return int(tokens[7]), int(tokens[10])


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    tenant: str
    reason: str
    data: bytes


@dataclass
class RunnerStats:
    applied: int = 0
    batches: int = 0
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)


class _Decoder:
    """Messages to a batch of (seq, event) plus the dead letters among them."""

    def __init__(self, decoder: EventDecoder | None = None) -> None:
        self.decoder = decoder or EventDecoder()

    def decode(
        self, msgs: Sequence[Msg]
    ) -> tuple[list[tuple[int, AnyEvent | UnknownEvent]], list[DeadLetter]]:
        batch: list[tuple[int, AnyEvent | UnknownEvent]] = []
        dead: list[DeadLetter] = []
        decode = self.decoder.decode
        for msg in msgs:
            seq, _ = stream_seq(msg.reply)
            try:
                event = decode(msg.data)
                check_subject(event, msg.subject)
            except (InvalidEvent, InvalidSubject, InvalidTenant) as err:
                reason = str(err)
                try:
                    # A bad subject explains more than what its body lacks.
                    parse_event_subject(msg.subject)
                except (InvalidSubject, InvalidTenant) as subject_err:
                    reason = str(subject_err)
                parts = msg.subject.split(".")
                tenant = parts[1] if len(parts) > 1 else ""
                dead.append(DeadLetter(seq, msg.subject, tenant, reason, msg.data))
                continue
            batch.append((seq, event))
        return batch, dead


class LiveRunner:
    """Runs one projection from its durable pull consumer until stopped.

    Applies happen on a worker thread so the event loop keeps fetching (and answering
    queries) while DuckDB or Qdrant commits; batch N+1 is fetched and decoded while
    batch N is applied, and each batch is acked after its commit.
    """

    def __init__(
        self,
        nc: NatsClient,
        projection: Projection,
        *,
        batch_size: int = 2000,
        max_wait: float = 0.2,
        decoder: EventDecoder | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.projection = projection
        self.name = projection.name
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.stats = RunnerStats()
        # Held around each apply; whoever swaps the projection (a replay) takes it too.
        self.lock = asyncio.Lock()
        self._decoder = _Decoder(decoder)
        self._stopping = asyncio.Event()
        self.idle = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in flight, ack it, and return from :meth:`run`."""
        self._stopping.set()

    async def sync_position(self) -> None:
        """Make the durable consumer deliver in order from the projection's checkpoint + 1.

        The projection's checkpoint is the truth. A consumer that delivered past it (a
        process killed with batches fetched but not committed, or a database restored
        from an older point) would hand out newer messages first and the unacked ones
        only after ack_wait, by which time the checkpoint has moved past them and they
        would be skipped. Such a consumer is recreated to start at checkpoint + 1.
        """
        try:
            info = await self.js.consumer_info(EVENT_STREAM, self.name)
        except nats.js.errors.NotFoundError:
            info = None
        delivered = info.delivered.stream_seq if info and info.delivered else 0
        checkpoint = self.projection.checkpoint
        if info is not None and delivered <= checkpoint:
            return
        if info is not None:
            await self.js.delete_consumer(EVENT_STREAM, self.name)
        config = consumer_config(self.name)
        if checkpoint:
            config = config.evolve(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=checkpoint + 1
            )
        await self.js.add_consumer(EVENT_STREAM, config)
        log.info(
            "consumer_repositioned",
            projection=self.name,
            delivered=delivered,
            start=checkpoint + 1,
        )

    async def run(self) -> RunnerStats:
        await self.sync_position()
        sub = await self.js.pull_subscribe_bind(durable=self.name, stream=EVENT_STREAM)
        in_flight: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(self.batch_size, timeout=self.max_wait)
                except (nats.errors.TimeoutError, TimeoutError):
                    self.idle.set()
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                if not msgs:
                    self.idle.set()
                    continue
                self.idle.clear()
                batch, dead = self._decoder.decode(msgs)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.create_task(self._apply_and_ack(msgs, batch, dead))
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
            await sub.unsubscribe()
        return self.stats

    async def _apply_and_ack(
        self,
        msgs: list[Msg],
        batch: list[tuple[int, AnyEvent | UnknownEvent]],
        dead: list[DeadLetter],
    ) -> None:
        last_seq = stream_seq(msgs[-1].reply)[0]
        delay = 0.5
        while True:
            # A failure here (the disk full, the DLQ unreachable) must not drop the batch
            # or stop the projection: retry the same batch, in order, until it commits.
            try:
                if dead:
                    await publish_dead_letters(self.js, self.name, dead)
                async with self.lock:
                    await asyncio.to_thread(self.projection.apply, batch, last_seq)
                break
            except Exception as err:
                if self._stopping.is_set():
                    raise
                log.error(
                    "batch_failed",
                    projection=self.name,
                    last_seq=last_seq,
                    error=repr(err),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.stats.dead_letters += len(dead)
        # The consumer acks all up to the last message (AckPolicy.ALL): one ack a batch.
        await msgs[-1].ack()
        self.stats.applied += len(batch)
        self.stats.batches += 1
        log.debug(
            "batch_applied",
            projection=self.name,
            events=len(batch),
            dead=len(dead),
            last_seq=self.projection.checkpoint,
        )


async def publish_dead_letters(js: Any, projection: str, dead: Sequence[DeadLetter]) -> None:
    """Store each dead letter in MEMORY_DLQ with its reason; redeliveries dedupe by seq."""
    futures = []
    for d in dead:
        log.warning(
            "dead_letter", projection=projection, seq=d.seq, subject=d.subject, reason=d.reason
        )
        headers = {
            DLQ_ERROR: d.reason[:4000],
            DLQ_SOURCE_SUBJECT: d.subject,
            DLQ_SOURCE_SEQ: str(d.seq),
            "Nats-Msg-Id": f"{projection}:{d.seq}",
        }
        futures.append(
            await js.publish_async(
                dlq_subject(projection, d.tenant), d.data, headers=headers, stream=DLQ_STREAM
            )
        )
    await asyncio.gather(*futures)


@dataclass(frozen=True)
class ReplayProgress:
    done: int
    total: int
    last_seq: int
    rate: float

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


async def replay(
    nc: NatsClient,
    projection: Projection,
    *,
    batch_size: int = 5000,
    until: Callable[[int], Awaitable[bool]] | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    decoder: EventDecoder | None = None,
) -> RunnerStats:
    """Apply the whole stream to ``projection`` from an ordered consumer.

    Stops at the first batch boundary where nothing is pending and ``until(checkpoint)``
    holds (by default, as soon as it has caught up); ``until`` may pause whatever it waits
    for, so the target stops moving. Dead letters are counted, not
    published again: the live runner already filed them.
    """
    js = nc.jetstream()
    info = await js.stream_info(EVENT_STREAM)
    total = info.state.messages
    stats = RunnerStats()
    decoder_ = _Decoder(decoder)
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        queue.put_nowait(msg)

    if total == 0 and (until is None or await until(projection.checkpoint)):
        return stats
    sub = await js.subscribe(
        f"{EVENT_PREFIX}.>",
        stream=EVENT_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=on_msg,
        pending_msgs_limit=4 * batch_size,
        idle_heartbeat=2.0,
        # The server drops the ephemeral consumer soon after we stop reading it.
        inactive_threshold=5.0,
    )
    in_flight: asyncio.Task[None] | None = None
    done = 0
    try:
        while True:
            msgs = [await queue.get()]
            pending = stream_seq(msgs[-1].reply)[1]
            while pending and len(msgs) < batch_size:
                if queue.empty():
                    msgs.append(await queue.get())
                else:
                    msgs.append(queue.get_nowait())
                pending = stream_seq(msgs[-1].reply)[1]
            batch, dead = decoder_.decode(msgs)
            stats.dead_letters += len(dead)
            if in_flight is not None:
                await in_flight
            last_seq = stream_seq(msgs[-1].reply)[0]
            in_flight = asyncio.create_task(asyncio.to_thread(projection.apply, batch, last_seq))
            done += len(msgs)
            stats.applied += len(batch)
            stats.batches += 1
            if on_progress:
                elapsed = time.monotonic() - stats.started
                on_progress(
                    ReplayProgress(
                        done=done,
                        total=max(total, done + pending),
                        last_seq=last_seq,
                        rate=done / elapsed if elapsed else 0.0,
                    )
                )
            if pending == 0:
                await in_flight
                in_flight = None
                if until is None or await until(last_seq):
                    break
    finally:
        await sub.unsubscribe()
    return stats

"""Feeding projections from JetStream: the live runner and the replay runner.

Both share one path: decode each message, send what cannot be applied to the dead-letter
stream, apply the rest as one batch, and only then acknowledge. They differ only in the
consumer that feeds them: the durable pull consumer named after the projection (live), or
an ordered consumer from sequence 1 (replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from consumers._pull import BatchPuller
from consumers.log import get_logger
from consumers.streams import consumer_config
from projections.base import Erasing, Projection
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

# Failed attempts at a whole batch before it is applied event by event.
_ISOLATE_AFTER = 3

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


@dataclass(frozen=True)
class _Decoded:
    batch: list[tuple[int, AnyEvent | UnknownEvent]]
    bodies: list[bytes]  # as published, aligned with batch
    dead: list[DeadLetter]


class _Decoder:
    """Messages to a batch of (seq, event) plus the dead letters among them."""

    def __init__(self, decoder: EventDecoder | None = None) -> None:
        self.decoder = decoder or EventDecoder()
        # subject -> (tenant, type): parsing validates the tenant token, which is not free
        # per message, and a stream has few distinct subjects.
        self._subjects: dict[str, tuple[str, str]] = {}

    def _check(self, event: AnyEvent | UnknownEvent, subject: str) -> None:
        parsed = self._subjects.get(subject)
        if parsed is None:
            if len(self._subjects) > 65_536:
                self._subjects.clear()
            tenant, type_ = parse_event_subject(subject)
            parsed = self._subjects[subject] = (tenant, type_)
        if event.tenant != parsed[0] or event.type != parsed[1]:
            check_subject(event, subject)  # raises, with the message that says why

    def decode(self, msgs: Sequence[Msg], seqs: Sequence[int] | None = None) -> _Decoded:
        """``seqs``: the messages' stream sequences, when the caller parsed them already."""
        batch: list[tuple[int, AnyEvent | UnknownEvent]] = []
        bodies: list[bytes] = []
        dead: list[DeadLetter] = []
        decode = self.decoder.decode
        check = self._check
        if seqs is None:
            seqs = [stream_seq(msg.reply)[0] for msg in msgs]
        for msg, seq in zip(msgs, seqs, strict=True):
            data = msg.data
            try:
                event = decode(data)
                check(event, msg.subject)
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
            bodies.append(data)
        return _Decoded(batch, bodies, dead)


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
        on_applied: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        # Told after each commit, so readers waiting for a sequence (min_seq) wake up.
        self.on_applied = on_applied
        self.projection = projection
        self.name = projection.name
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.stats = RunnerStats()
        # Held around each apply; whoever swaps the projection (a replay) takes it too.
        self.lock = asyncio.Lock()
        self._decoder = _Decoder(decoder)
        self._stopping = asyncio.Event()
        # tenant -> stream sequence: a purged tenant's events up to there, fetched before
        # the purge, are dropped rather than applied again.
        self._dropped: dict[str, int] = {}

    def stop(self) -> None:
        """Finish the batch in flight, ack it, and return from :meth:`run`."""
        self._stopping.set()

    def drop_tenant(self, tenant: str, upto: int) -> None:
        """Apply none of ``tenant``'s events up to stream sequence ``upto`` (it was purged;
        some may have been fetched already)."""
        self._dropped[tenant] = upto

    def _without_dropped(self, decoded: _Decoded) -> _Decoded:
        keep = [
            i for i, (seq, e) in enumerate(decoded.batch) if seq > self._dropped.get(e.tenant, 0)
        ]
        if len(keep) == len(decoded.batch):
            return decoded
        return _Decoded(
            [decoded.batch[i] for i in keep], [decoded.bodies[i] for i in keep], decoded.dead
        )

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

    async def _recover(self, puller: BatchPuller) -> None:
        """The server cancelled our pull (the consumer deleted, a leader change): wait a
        moment rather than spin, then make sure the consumer exists where it should."""
        log.warning("pull_cancelled", projection=self.name, status=puller.last_status)
        puller.last_status = None
        await asyncio.sleep(1.0)
        if self.lock.locked():
            return  # a rebuild holds the projection; the next pull tells us more
        with contextlib.suppress(nats.errors.Error):
            await self.sync_position()

    async def run(self) -> RunnerStats:
        await self.sync_position()
        puller = BatchPuller(self.nc, EVENT_STREAM, self.name)
        await puller.start()
        in_flight: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await puller.fetch(self.batch_size, timeout=self.max_wait)
                except nats.errors.ConnectionClosedError:
                    break
                if not msgs:
                    if puller.last_status is not None:
                        await self._recover(puller)
                    continue
                decoded = self._decoder.decode(msgs)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.create_task(self._apply_and_ack(msgs, decoded))
                # Let it reach its worker thread before this loop decodes the next batch,
                # which may already be buffered and would not yield.
                await asyncio.sleep(0)
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
            await puller.stop()
        return self.stats

    async def _apply_and_ack(self, msgs: list[Msg], decoded: _Decoded) -> None:
        last_seq = stream_seq(msgs[-1].reply)[0]
        dead = decoded.dead
        delay = 0.5
        failures = 0
        while True:
            # A failure here (the disk full, the DLQ unreachable) must not drop the batch
            # or stop the projection: retry the same batch, in order, until it commits.
            try:
                if dead:
                    await publish_dead_letters(self.js, self.name, dead)
                async with self.lock:
                    if self._dropped:
                        decoded = self._without_dropped(decoded)
                    if failures < _ISOLATE_AFTER:
                        await asyncio.to_thread(
                            self.projection.apply, decoded.batch, last_seq, decoded.bodies
                        )
                    else:
                        dead = [*dead, *await self._apply_one_by_one(decoded, last_seq)]
                    await erase_from_stream(self.js, self.projection)
                break
            except Exception as err:
                if self._stopping.is_set():
                    raise
                failures += 1
                log.error(
                    "batch_failed",
                    projection=self.name,
                    last_seq=last_seq,
                    error=repr(err),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if self.on_applied is not None:
            await self.on_applied()
        self.stats.dead_letters += len(dead)
        # The consumer acks all up to the last message (AckPolicy.ALL): one ack a batch.
        await msgs[-1].ack()
        self.stats.applied += len(decoded.batch)
        self.stats.batches += 1
        log.debug(
            "batch_applied",
            projection=self.name,
            events=len(decoded.batch),
            dead=len(dead),
            last_seq=self.projection.checkpoint,
        )

    async def _apply_one_by_one(self, decoded: _Decoded, last_seq: int) -> list[DeadLetter]:
        """The batch keeps failing: apply it event by event, and dead-letter each event
        that fails on its own (before any later event commits past it), so one poison
        event cannot stall the projection. An outage fails the first event's dead letter
        too, and the batch is retried whole."""
        dead: list[DeadLetter] = []
        for (seq, event), body in zip(decoded.batch, decoded.bodies, strict=True):
            if seq <= self.projection.checkpoint:
                continue
            try:
                await asyncio.to_thread(self.projection.apply, [(seq, event)], seq, [body])
            except Exception as err:
                letter = DeadLetter(
                    seq,
                    f"{EVENT_PREFIX}.{event.tenant}.{event.type}",
                    event.tenant,
                    f"the {self.name} projection could not apply it: {err!r}",
                    body,
                )
                await publish_dead_letters(self.js, self.name, [letter])
                dead.append(letter)
        await asyncio.to_thread(self.projection.apply, [], last_seq, [])
        return dead


async def erase_from_stream(js: Any, projection: Projection) -> int:
    """Delete from the stream the events an applied erase removed from the projection
    (``memory.forgotten`` with ``erase: true``), so no replay brings them back."""
    if not isinstance(projection, Erasing):
        return 0
    seqs = projection.take_erased()
    for seq in seqs:
        try:
            await js.delete_msg(EVENT_STREAM, seq)
        except nats.js.errors.NotFoundError:
            pass  # deleted already (a replay of an erase applied before)
        except nats.errors.Error as err:
            # The rows are gone; the stream keeps the event until a replay erases it again.
            log.error("erase_failed", projection=projection.name, seq=seq, error=repr(err))
    if seqs:
        log.info("events_erased", projection=projection.name, seqs=seqs)
    return len(seqs)


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


async def replay(
    nc: NatsClient,
    projection: Projection,
    *,
    batch_size: int = 20_000,
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
    if total == 0 and (until is None or await until(projection.checkpoint)):
        return stats
    # An ephemeral pull consumer with no acks: in order, nothing redelivered, and gone
    # by itself if this process dies (inactive_threshold).
    name = f"replay-{secrets.token_hex(6)}"
    await js.add_consumer(
        EVENT_STREAM,
        ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            filter_subject=f"{EVENT_PREFIX}.>",
            inactive_threshold=30.0,
            mem_storage=True,
            max_waiting=4,
        ),
    )
    puller = BatchPuller(nc, EVENT_STREAM, name, linger=0.02)
    await puller.start()
    loop = asyncio.get_running_loop()
    in_flight: asyncio.Future[None] | None = None
    done = 0
    try:
        while True:
            msgs = await puller.fetch(batch_size, timeout=1.0)
            if not msgs:
                continue
            seqs = []
            pending = 0
            for msg in msgs:
                seq, pending = stream_seq(msg.reply)
                seqs.append(seq)
            decoded = decoder_.decode(msgs, seqs)
            stats.dead_letters += len(decoded.dead)
            if in_flight is not None:
                await in_flight
            last_seq = seqs[-1]
            # Submitted to the thread now, not when this coroutine next yields: the next
            # batch may already be buffered, and decoding it does not yield.
            in_flight = loop.run_in_executor(
                None, projection.apply, decoded.batch, last_seq, decoded.bodies
            )
            done += len(msgs)
            stats.applied += len(decoded.batch)
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
        if in_flight is not None:
            with contextlib.suppress(Exception):
                await in_flight
        await puller.stop()
        with contextlib.suppress(nats.errors.Error):
            await js.delete_consumer(EVENT_STREAM, name)
    await erase_from_stream(js, projection)
    return stats

"""The live runner: one projection fed from its durable JetStream consumer.

Decode each message, send what cannot be applied to the dead-letter stream, apply the
rest as one batch, act on what the apply did (delete erased events from the stream),
and only then acknowledge. The replay runner (:mod:`consumers.replay`) feeds the same
``apply`` from an ordered consumer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from memstream.consumers._pull import BatchPuller
from memstream.consumers.dead_letters import publish_dead_letters
from memstream.consumers.decoding import (
    DeadLetter,
    Decoded,
    MessageDecoder,
    delivery_seq,
    stream_seq,
)
from memstream.consumers.log import get_logger
from memstream.consumers.streams import consumer_config, until_jetstream_answers
from memstream.projections.base import Projection, StorageFailure
from memstream.projections.priority import lower_priority
from memstream.schemas.events import EventDecoder
from memstream.schemas.partitions import WHOLE, Partition
from memstream.schemas.subjects import EVENT_PREFIX, EVENT_STREAM

__all__ = ["LiveRunner", "RunnerStats", "erase_from_stream"]

# Failed attempts at a whole batch before it is applied event by event.
_ISOLATE_AFTER = 3
# The projections apply (and decode) in threads of ingest's lower CPU priority
# (projections.priority): on a machine the events keep busy, a search (the searcher's and
# the engine's processes, at the usual priority) is scheduled as soon as it comes, and the
# events take the CPU that is left: reads first, and the projection reports its lag.
_APPLYING = concurrent.futures.ThreadPoolExecutor(
    max_workers=8, thread_name_prefix="memstream-apply", initializer=lower_priority
)


async def applying(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a projection's apply thread (of a lower priority)."""
    return await asyncio.get_running_loop().run_in_executor(_APPLYING, functools.partial(fn, *args))


# The longest wait between two tries of a batch whose storage failed.
_STORAGE_RETRY_MAX_S = 5.0

log = get_logger("memstream.runner")


@dataclass
class RunnerStats:
    applied: int = 0
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)


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
        spacing: float = 0.0,
        decoder: EventDecoder | None = None,
        on_applied: Callable[[], Awaitable[None]] | None = None,
        consumer: str | None = None,
        partition: Partition = WHOLE,
    ) -> None:
        """``consumer``: the durable consumer this instance owns (see
        ``schemas.subjects.durable_name``); the projection's name when not given.
        ``partition``: the tenants whose events it reads."""
        self.nc = nc
        self.js = nc.jetstream()
        # Told after each commit, so readers waiting for a sequence (min_seq) wake up.
        self.on_applied = on_applied
        self.on_publish_error: Callable[[], None] | None = None
        self.projection = projection
        self.name = projection.name
        self.consumer = consumer or projection.name
        self.batch_size = batch_size
        self.max_wait = max_wait
        # The least seconds between two batches of a steady flow (see BatchPuller).
        self.spacing = spacing
        self.stats = RunnerStats()
        # Why the projection is not advancing (its storage failing), or None.
        self.unhealthy: str | None = None
        # Held around each apply; pause() takes it, so nothing else ever needs to.
        self._lock = asyncio.Lock()
        self.partition = partition
        self._decoder = MessageDecoder(projection.name, decoder, partition)
        self._stopping = asyncio.Event()
        # Set once run() has put its consumer where the checkpoint says: before that the
        # consumer's state (pending, ack floor) is the one ensure_streams made, which
        # says nothing of what this projection applied.
        self.positioned = asyncio.Event()
        # tenant -> stream sequence: a purged tenant's events up to there, fetched before
        # the purge, are dropped rather than applied again.
        self._dropped: dict[str, int] = {}
        # The delivery sequence the consumer's next delivery must have (None: not known).
        self._next_delivery: int | None = None

    def stop(self) -> None:
        """Finish the batch in flight, ack it, and return from :meth:`run`."""
        self._stopping.set()

    @property
    def checkpoint(self) -> int:
        """The checkpoint of the projection it applies to."""
        return self.projection.checkpoint

    async def pause(self) -> None:
        """Return once the batch in flight has committed; no batch is applied until
        :meth:`resume`. Events keep arriving, and wait."""
        await self._lock.acquire()

    def resume(self) -> None:
        self._lock.release()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Between two batches for the block (a purge, a sweep, a copy of the shard)."""
        await self.pause()
        try:
            yield
        finally:
            self.resume()

    def swap(self, projection: Projection) -> Projection:
        """Apply to ``projection`` from the next batch on (a rebuild's target, caught up);
        only while paused. Returns the one it applied to before."""
        if not self._lock.locked():
            raise RuntimeError("swap() needs the runner paused: a batch may be in flight")
        old, self.projection = self.projection, projection
        return old

    def drop_tenant(self, tenant: str, upto: int) -> None:
        """Apply none of ``tenant``'s events up to stream sequence ``upto`` (it was purged;
        some may have been fetched already)."""
        self._dropped[tenant] = upto

    def _without_dropped(self, decoded: Decoded) -> Decoded:
        keep = [
            i for i, (seq, e) in enumerate(decoded.batch) if seq > self._dropped.get(e.tenant, 0)
        ]
        if len(keep) == len(decoded.batch):
            return decoded
        return Decoded(
            [decoded.batch[i] for i in keep], [decoded.bodies[i] for i in keep], decoded.dead
        )

    async def sync_position(self, force: bool = False) -> None:
        """Make the durable consumer deliver in order from the projection's checkpoint + 1.

        The projection's checkpoint is the truth. A consumer that delivered past it (a
        process killed with batches fetched but not committed, or a database restored
        from an older point) would hand out newer messages first and the unacked ones
        only after ack_wait, by which time the checkpoint has moved past them and they
        would be skipped. Such a consumer is recreated to start at checkpoint + 1.
        """
        try:
            info = await self.js.consumer_info(EVENT_STREAM, self.consumer)
        except nats.js.errors.NotFoundError:
            info = None
        delivered = info.delivered.stream_seq if info and info.delivered else 0
        checkpoint = self.projection.checkpoint
        if info is not None and delivered <= checkpoint and not force:
            self._next_delivery = (info.delivered.consumer_seq or 0) + 1 if info.delivered else 1
            return
        if info is not None:
            await self.js.delete_consumer(EVENT_STREAM, self.consumer)
        config = consumer_config(self.consumer, self.partition)
        if checkpoint:
            config = config.evolve(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=checkpoint + 1
            )
        await self.js.add_consumer(EVENT_STREAM, config)
        self._next_delivery = 1
        log.info(
            "consumer_repositioned",
            projection=self.name,
            consumer=self.consumer,
            delivered=delivered,
            start=checkpoint + 1,
        )

    def _before_gap(self, msgs: list[Msg]) -> int | None:
        """Where in ``msgs`` the consumer's delivery sequence skips (deliveries lost in
        flight when a node, a route or a consumer leader went away), or None. A
        sequence that goes back (a new consumer leader delivering again) is no loss:
        what was applied is skipped by the projection."""
        expected = self._next_delivery
        for i, msg in enumerate(msgs):
            got = delivery_seq(msg.reply)
            if expected is not None and got > expected:
                log.warning(
                    "deliveries_lost",
                    projection=self.name,
                    expected=expected,
                    got=got,
                    checkpoint=self.projection.checkpoint,
                )
                return i
            expected = got + 1
        self._next_delivery = expected
        return None

    async def _recover(self, puller: BatchPuller) -> None:
        """The server cancelled our pull (the consumer deleted, a leader change): wait a
        moment rather than spin, then make sure the consumer exists where it should."""
        log.warning("pull_cancelled", projection=self.name, status=puller.last_status)
        puller.last_status = None
        await asyncio.sleep(1.0)
        if self._lock.locked():
            return  # a rebuild holds the projection; the next pull tells us more
        with contextlib.suppress(nats.errors.Error):
            await self.sync_position()

    async def _puller(self) -> BatchPuller:
        """A started puller of this projection's consumer, its batches spaced."""
        puller = BatchPuller(self.nc, EVENT_STREAM, self.consumer, spacing=self.spacing)
        await puller.start()
        return puller

    async def run(self) -> RunnerStats:
        await until_jetstream_answers(self.sync_position, f"the {self.name} consumer")
        self.positioned.set()
        puller = await self._puller()
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
                gap = self._before_gap(msgs)
                if gap is not None:
                    # Acking past a lost delivery would ack it too (AckPolicy.ALL): apply
                    # what came before the gap, then read again from the checkpoint.
                    if in_flight is not None:
                        await in_flight
                        in_flight = None
                    if gap:
                        decoded = await applying(self._decoder.decode, msgs[:gap])
                        await self._apply_and_ack(msgs[:gap], decoded)
                    # A puller of its own for the new consumer: deliveries of the old one
                    # still on their way go to an inbox nobody reads.
                    await puller.stop()
                    await self.sync_position(force=True)
                    puller = await self._puller()
                    continue
                # Decoded at ingest's priority too, while the batch before is applied.
                decoded = await applying(self._decoder.decode, msgs)
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

    async def _apply_and_ack(self, msgs: list[Msg], decoded: Decoded) -> None:
        last_seq = stream_seq(msgs[-1].reply)[0]
        dead = decoded.dead
        delay = 0.5
        failures = 0
        while True:
            # A failure here (the disk full, the DLQ unreachable) must not drop the batch
            # or stop the projection: retry the same batch, in order, until it commits.
            # Only what fails on its own after repeated tries is isolated, and only an
            # event that fails without the storage failing becomes a dead letter.
            try:
                if dead:
                    try:
                        await publish_dead_letters(self.js, self.name, dead)
                    except Exception:
                        if self.on_publish_error is not None:
                            self.on_publish_error()
                        raise
                async with self._lock:
                    if self._dropped:
                        decoded = self._without_dropped(decoded)
                    reapplied = await self._decoder.reapplied(self.js, decoded.batch)
                    if failures < _ISOLATE_AFTER:
                        applied = await applying(
                            self.projection.apply,
                            decoded.batch,
                            last_seq,
                            decoded.bodies,
                            reapplied,
                        )
                        erased = list(applied.erased)
                    else:
                        isolated, erased = await self._apply_one_by_one(
                            decoded, last_seq, reapplied
                        )
                        dead = [*dead, *isolated]
                    await erase_from_stream(self.js, self.name, erased)
                break
            except StorageFailure as err:
                if self._stopping.is_set():
                    raise
                # Not the events' fault: the projection stops advancing until it is back.
                if self.unhealthy is None:
                    log.error("projection_unhealthy", projection=self.name, reason=str(err))
                self.unhealthy = str(err)
                # Asking a storage again costs little: the batch commits within seconds
                # of its coming back, not after a long backoff.
                wait = min(delay, _STORAGE_RETRY_MAX_S)
                log.warning(
                    "storage_failed", projection=self.name, last_seq=last_seq, retry_in_s=wait
                )
            except Exception as err:
                if self._stopping.is_set():
                    raise
                failures += 1
                wait = delay
                log.error(
                    "batch_failed",
                    projection=self.name,
                    last_seq=last_seq,
                    error=repr(err),
                    retry_in_s=wait,
                )
            # A stop ends the wait: the batch is not acked, and is delivered again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            if self._stopping.is_set():
                log.warning("stopped_while_retrying", projection=self.name, last_seq=last_seq)
                return
            delay = min(delay * 2, 30.0)
        if self.unhealthy is not None:
            log.info("projection_healthy", projection=self.name, last_seq=last_seq)
            self.unhealthy = None
        if self.on_applied is not None:
            await self.on_applied()
        self.stats.dead_letters += len(dead)
        # The consumer acks all up to the last message (AckPolicy.ALL): one ack a batch.
        await msgs[-1].ack()
        self.stats.applied += len(decoded.batch)
        log.debug(
            "batch_applied",
            projection=self.name,
            events=len(decoded.batch),
            dead=len(dead),
            last_seq=self.projection.checkpoint,
        )

    async def _apply_one_by_one(
        self, decoded: Decoded, last_seq: int, reapplied: dict[int, Any]
    ) -> tuple[list[DeadLetter], list[int]]:
        """The batch keeps failing: apply it event by event, and dead-letter each event
        that fails on its own (before any later event commits past it), so one poison
        event cannot stall the projection. An outage fails the first event's dead letter
        too, and the batch is retried whole. Returns the dead letters and the erased
        sequences."""
        dead: list[DeadLetter] = []
        erased: list[int] = []
        for (seq, event), body in zip(decoded.batch, decoded.bodies, strict=True):
            if seq <= self.projection.checkpoint:
                continue
            try:
                applied = await applying(
                    self.projection.apply, [(seq, event)], seq, [body], reapplied
                )
                erased += applied.erased
            except StorageFailure:
                raise  # the storage, not this event: the batch is retried whole
            except Exception as err:
                # Only an event that fails while its storage is fine is a dead letter: a
                # failing storage raises StorageFailure here, and the batch is retried.
                await asyncio.to_thread(self.projection.check_storage)
                letter = DeadLetter(
                    seq,
                    f"{EVENT_PREFIX}.{event.tenant}.{event.type}",
                    event.tenant,
                    f"the {self.name} projection could not apply it: {err!r}",
                    body,
                )
                await publish_dead_letters(self.js, self.name, [letter])
                dead.append(letter)
        await applying(self.projection.apply, [], last_seq, [])
        return dead, erased


async def erase_from_stream(js: Any, projection: str, seqs: Sequence[int]) -> int:
    """Delete from the stream the events an applied erase removed from the projection
    (``memory.forgotten`` with ``erase: true``), so no replay brings them back."""
    for seq in seqs:
        try:
            await js.delete_msg(EVENT_STREAM, seq)
        except nats.js.errors.NotFoundError:
            pass  # deleted already (a replay of an erase applied before)
        except nats.errors.Error as err:
            # The rows are gone; the stream keeps the event until a replay erases it again.
            log.error("erase_failed", projection=projection, seq=seq, error=repr(err))
    if seqs:
        log.info("events_erased", projection=projection, seqs=list(seqs))
    return len(seqs)

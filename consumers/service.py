"""A projection as a running service: live ingest, reads, and rebuild with an atomic swap.

A rebuild fills a new target from an ordered consumer while the live projection keeps
ingesting and answering. Once the rebuild has caught up, live ingest pauses after its
batch in flight, the rebuild applies whatever is left up to the live checkpoint, the new
target becomes current, and live ingest resumes on it, so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient

from memstream.consumers.log import get_logger
from memstream.consumers.replay import replay
from memstream.consumers.runner import LiveRunner, RunnerStats
from memstream.consumers.storage import Storage
from memstream.consumers.streams import until_jetstream_answers
from memstream.projections.base import Projection
from memstream.schemas.admin import RebuildResult, ReplayProgress
from memstream.schemas.errors import RebuildBusy
from memstream.schemas.events import EventDecoder, utc_now
from memstream.schemas.partitions import WHOLE, Partition
from memstream.schemas.subjects import EVENT_STREAM

__all__ = ["ProjectionService", "rebuild_offline"]

log = get_logger("memstream.service")

P = TypeVar("P", bound=Projection)


class _Running(Generic[P]):
    """What a started service holds: the projection in use, its runner and its task."""

    def __init__(self, projection: P, runner: LiveRunner, task: asyncio.Task[RunnerStats]):
        self.projection = projection
        self.runner = runner
        self.task = task


class ProjectionService(Generic[P]):
    def __init__(
        self,
        nc: NatsClient,
        storage: Storage[P],
        *,
        batch_size: int = 2000,
        max_wait: float = 0.2,
        spacing: float = 0.0,
        decoder: EventDecoder | None = None,
        consumer: str | None = None,
        sweep_every: float = 60.0,
        partition: Partition = WHOLE,
    ) -> None:
        """``decoder``: how events are decoded, with the deployment's event size limit
        (MEMSTREAM_MAX_EVENT_BYTES), live and in a rebuild alike. ``consumer``: the
        durable consumer this instance owns. ``sweep_every``: seconds between sweeps of
        what has expired."""
        self.consumer = consumer
        self.partition = partition
        # Told when a publish to JetStream fails (a dead letter's), for the metrics.
        self.on_publish_error: Callable[[], None] | None = None
        self.sweep_every = sweep_every
        self._sweeper: asyncio.Task[None] | None = None
        self.nc = nc
        self.storage = storage
        self.name = storage.name
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.spacing = spacing
        self.decoder = decoder or EventDecoder()
        self._running: _Running[P] | None = None
        self._rebuilding = asyncio.Lock()
        self._readers = 0
        self._no_readers = asyncio.Event()
        self._no_readers.set()
        self._applied = asyncio.Condition()

    @property
    def running(self) -> _Running[P]:
        if self._running is None:
            raise RuntimeError(f"the {self.name} projection service has not started")
        return self._running

    @property
    def projection(self) -> P:
        return self.running.projection

    async def start(self) -> None:
        projection = await asyncio.to_thread(self.storage.open_current)
        runner = LiveRunner(
            self.nc,
            projection,
            batch_size=self.batch_size,
            max_wait=self.max_wait,
            spacing=self.spacing,
            decoder=self.decoder,
            on_applied=self._notify_applied,
            consumer=self.consumer,
            partition=self.partition,
        )
        runner.on_publish_error = self.on_publish_error
        task = asyncio.create_task(runner.run(), name=f"live-{self.name}")
        self._running = _Running(projection, runner, task)
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name=f"sweep-{self.name}")
        log.info("projection_started", projection=self.name, checkpoint=projection.checkpoint)

    async def stop(self) -> None:
        """Finish the batch in flight, ack it, and close the projection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        running = self._running
        if running is not None:
            running.runner.stop()
            self.storage.interrupt()
            with contextlib.suppress(Exception):
                await running.task
            await self._no_readers.wait()
            running.projection.close()
            log.info(
                "projection_stopped",
                projection=self.name,
                checkpoint=running.projection.checkpoint,
            )
        self.storage.close()

    async def sweep(self) -> int:
        """Delete what has expired from the projection, between two batches."""
        running = self.running
        async with running.runner.paused():
            swept = await asyncio.to_thread(running.projection.sweep, utc_now())
        if swept:
            log.info("expired_swept", projection=self.name, removed=swept)
        return swept

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            try:
                await self.sweep()
            except Exception as err:  # the storage failing: the next sweep tries again
                log.warning("sweep_failed", projection=self.name, error=repr(err))

    def wait_failed(self) -> asyncio.Task[Any]:
        """A task that ends when the live runner ends (on its own, it only ends by error)."""
        return asyncio.ensure_future(asyncio.wait([self.running.task]))

    async def _notify_applied(self) -> None:
        async with self._applied:
            self._applied.notify_all()

    @property
    def checkpoint(self) -> int:
        return self.projection.checkpoint

    @property
    def stats(self) -> RunnerStats | None:
        """What the live runner has applied and dead-lettered since start (None before)."""
        return self._running.runner.stats if self._running is not None else None

    async def caught_up(self, stop: asyncio.Event) -> bool:
        """Wait until this instance has applied its share of the stream as it is now
        (a new partition or replica, before it answers queries); False if stopped first."""
        js = self.nc.jetstream()
        last = (
            await until_jetstream_answers(lambda: js.stream_info(EVENT_STREAM), "the stream")
        ).state.last_seq
        while not stop.is_set():
            if await self.wait_applied(last, 1.0):
                return True
        return False

    async def wait_applied(self, seq: int, within: float) -> bool:
        """Whether the projection has applied stream sequence ``seq``, waiting at most
        ``within`` seconds for it (read-your-writes). A partition's checkpoint is the
        last of *its* events applied, so it has also applied ``seq`` once its consumer
        has nothing pending and nothing unacknowledged, with ``seq`` in the stream."""
        if self.checkpoint >= seq:
            return True
        if self.partition.whole:
            async with self._applied:
                try:
                    await asyncio.wait_for(
                        self._applied.wait_for(lambda: self.checkpoint >= seq), within
                    )
                except TimeoutError:
                    return False
            return True
        deadline = time.monotonic() + within
        while True:
            if self.checkpoint >= seq or await self._drained_past(seq):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            async with self._applied:
                with contextlib.suppress(TimeoutError):
                    # Woken by a commit, else looked at again: the consumer drains
                    # without a commit of ours when the rest went to other partitions.
                    await asyncio.wait_for(self._applied.wait(), min(left, 0.05))

    async def pending(self) -> int:
        """The events of this instance's share of the stream not yet applied (what its
        consumer has not delivered, and what it delivered but has not had acked)."""
        info = await self.nc.jetstream().consumer_info(EVENT_STREAM, self.running.runner.consumer)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def _drained_past(self, seq: int) -> bool:
        """Whether this partition has applied all of its events up to ``seq`` (asked of
        the server): its consumer's ack floor is past it, or the stream holds ``seq``
        and the consumer has nothing pending and nothing unacknowledged. Acks follow
        commits, so what is acked is applied. Not before the runner has positioned its
        consumer: a consumer made at the stream's end has nothing pending either."""
        if not self.running.runner.positioned.is_set():
            return False
        js = self.nc.jetstream()
        try:
            info = await js.consumer_info(EVENT_STREAM, self.running.runner.consumer)
            if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq:
                return True
            if info.num_pending or info.num_ack_pending:
                return False
            last = (await js.stream_info(EVENT_STREAM)).state.last_seq
        except nats.errors.Error:
            return False  # the broker is away: not known to be applied
        return last >= seq

    async def purge_tenant(self, tenant: str, upto: int) -> dict[str, int]:
        """Remove ``tenant`` from the projection, between two batches; its events up to
        stream sequence ``upto`` that were fetched already are not applied after."""
        if self.rebuilding:
            raise RebuildBusy(
                f"a rebuild of {self.name} is running: purge {tenant} once it has finished"
            )
        running = self.running
        async with running.runner.paused():
            running.runner.drop_tenant(tenant, upto)
            return await asyncio.to_thread(running.projection.purge_tenant, tenant)

    @property
    def unhealthy(self) -> str | None:
        """Why the projection is not advancing (its storage failing), or None."""
        if self._running is None:
            return None
        return self._running.runner.unhealthy or self.storage.failing

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding.locked()

    @property
    def failed(self) -> BaseException | None:
        """The error that ended the live runner, if it ended by one."""
        task = self._running.task if self._running is not None else None
        if task is not None and task.done() and not task.cancelled():
            return task.exception()
        return None

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[P]:
        """The current projection, held open for a read even across a swap."""
        projection = self.projection
        self._readers += 1
        self._no_readers.clear()
        try:
            yield projection
        finally:
            self._readers -= 1
            if not self._readers:
                self._no_readers.set()

    async def rebuild(
        self,
        on_progress: Callable[[ReplayProgress], None] | None = None,
        target: Callable[[], P] | None = None,
        *,
        eager: bool = False,
    ) -> RebuildResult:
        """Replay the stream into a new target and swap it in; raises RebuildBusy.
        ``target``: makes the new target (by default, an empty one); one that holds part
        of the stream already is caught up from its checkpoint. ``eager``: live ingest
        pauses at once, and the target is caught up to where it stopped (for a target
        that lacks only the last events: they are applied once, not by both); otherwise
        live ingest goes on until the replay has read what was published."""
        if self.rebuilding:
            raise RebuildBusy(f"a rebuild of {self.name} is already running")
        running = self.running
        runner = running.runner
        async with self._rebuilding:
            new = await asyncio.to_thread(target or self.storage.open_new)
            paused = False

            async def caught_up(last_seq: int) -> bool:
                nonlocal paused
                if not paused:
                    # Pause live ingest after its batch in flight; the target stops moving.
                    await runner.pause()
                    paused = True
                return last_seq >= runner.checkpoint

            try:
                stats = await replay(
                    self.nc,
                    new,
                    batch_size=max(self.batch_size, 5000),
                    until=caught_up,
                    on_progress=on_progress,
                    decoder=self.decoder,
                    eager=eager,
                    partition=self.partition,
                )
                # Readers finish on the old target; from the same turn of the loop on,
                # every reader and the runner take the new one. Only then is the old one
                # closed and the switch made on disk (where the old one is dropped): a
                # reader never meets a closed target.
                await self._no_readers.wait()
                old = runner.swap(new)
                running.projection = new
            except BaseException:
                await asyncio.to_thread(self.storage.discard, new)
                if paused:
                    runner.resume()
                raise
            try:
                old.close()
                await asyncio.to_thread(self.storage.make_current, new)
                await self._notify_applied()
            finally:
                if paused:
                    runner.resume()
        return _result(self.name, stats, new)


async def rebuild_offline(
    nc: NatsClient,
    storage: Storage[P],
    on_progress: Callable[[ReplayProgress], None] | None = None,
    batch_size: int = 5000,
    decoder: EventDecoder | None = None,
    partition: Partition = WHOLE,
) -> RebuildResult:
    """Rebuild when no service runs: replay into a new target, then make it current;
    of ``partition``'s events only, for a partition's data dir."""
    new = await asyncio.to_thread(storage.open_new)
    try:
        stats = await replay(
            nc,
            new,
            batch_size=batch_size,
            on_progress=on_progress,
            decoder=decoder,
            partition=partition,
        )
        new.close()
        await asyncio.to_thread(storage.make_current, new)
    except BaseException:
        await asyncio.to_thread(storage.discard, new)
        raise
    finally:
        storage.close()
    return _result(new.name, stats, new)


def _result(name: str, stats: RunnerStats, new: Projection) -> RebuildResult:
    result = RebuildResult(
        events=stats.applied,
        dead_letters=stats.dead_letters,
        last_seq=new.checkpoint,
        seconds=time.monotonic() - stats.started,
    )
    log.info(
        "projection_rebuilt",
        projection=name,
        events=result.events,
        last_seq=result.last_seq,
        seconds=round(result.seconds, 2),
    )
    return result

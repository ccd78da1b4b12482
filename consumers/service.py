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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from nats.aio.client import Client as NatsClient

from consumers.log import get_logger
from consumers.runner import LiveRunner, ReplayProgress, RunnerStats, replay
from projections.base import Projection
from projections.files import ProjectionFiles
from projections.history import HistoryProjection

__all__ = [
    "HistoryStorage",
    "ProjectionService",
    "RebuildBusy",
    "RebuildResult",
    "Storage",
    "rebuild_offline",
]

log = get_logger("memstream.service")

P = TypeVar("P", bound=Projection)


class Storage(Protocol[P]):
    """Where a projection lives and how a rebuilt one replaces it."""

    def open_current(self) -> P: ...

    def open_new(self) -> P: ...

    def make_current(self, new: P) -> None:
        """Make ``new`` the projection in use (atomically) and drop the one before it.

        The caller has closed the one before it.
        """
        ...

    def discard(self, projection: P) -> None: ...

    def close(self) -> None:
        """Release what the storage holds, after its projections are closed."""
        ...


class HistoryStorage:
    """DuckDB files under ``<data dir>/history``, switched by the CURRENT pointer."""

    def __init__(self, data_dir: str | Path) -> None:
        self.files = ProjectionFiles(Path(data_dir) / "history", "history", ".duckdb")

    def open_current(self) -> HistoryProjection:
        for stale in self.files.leftovers():
            # A rebuild that did not finish (the process died): nobody will use it.
            log.info("removing_unfinished_rebuild", path=str(stale))
            self.files.remove(stale)
        return HistoryProjection(self.files.current_or_new())

    def open_new(self) -> HistoryProjection:
        return HistoryProjection(self.files.new_path())

    def make_current(self, new: HistoryProjection) -> None:
        old = self.files.make_current(new.path)
        if old is not None and old != new.path:
            self.files.remove(old)

    def discard(self, projection: HistoryProjection) -> None:
        projection.close()
        self.files.remove(projection.path)

    def close(self) -> None:
        pass


class RebuildBusy(Exception):
    pass


@dataclass(frozen=True)
class RebuildResult:
    events: int
    dead_letters: int
    last_seq: int
    seconds: float


class ProjectionService(Generic[P]):
    def __init__(
        self,
        nc: NatsClient,
        storage: Storage[P],
        *,
        batch_size: int = 2000,
        max_wait: float = 0.2,
    ) -> None:
        self.nc = nc
        self.storage = storage
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.projection: P | None = None
        self.runner: LiveRunner | None = None
        self._task: asyncio.Task[RunnerStats] | None = None
        self._rebuilding = asyncio.Lock()
        self._readers = 0
        self._no_readers = asyncio.Event()
        self._no_readers.set()
        self._applied = asyncio.Condition()

    @property
    def name(self) -> str:
        assert self.projection is not None
        return self.projection.name

    async def start(self) -> None:
        self.projection = await asyncio.to_thread(self.storage.open_current)
        self.runner = LiveRunner(
            self.nc,
            self.projection,
            batch_size=self.batch_size,
            max_wait=self.max_wait,
            on_applied=self._notify_applied,
        )
        self._task = asyncio.create_task(self.runner.run(), name=f"live-{self.name}")
        log.info("projection_started", projection=self.name, checkpoint=self.projection.checkpoint)

    async def stop(self) -> None:
        """Finish the batch in flight, ack it, and close the projection."""
        if self.runner is not None and self._task is not None:
            self.runner.stop()
            with contextlib.suppress(Exception):
                await self._task
        if self.projection is not None:
            await self._no_readers.wait()
            self.projection.close()
            log.info(
                "projection_stopped", projection=self.name, checkpoint=self.projection.checkpoint
            )
        self.storage.close()

    def wait_failed(self) -> asyncio.Task[Any]:
        """A task that ends when the live runner ends (on its own, it only ends by error)."""
        assert self._task is not None
        return asyncio.ensure_future(asyncio.wait([self._task]))

    async def _notify_applied(self) -> None:
        async with self._applied:
            self._applied.notify_all()

    @property
    def checkpoint(self) -> int:
        assert self.projection is not None
        return self.projection.checkpoint

    async def wait_applied(self, seq: int, within: float) -> bool:
        """Whether the projection has applied stream sequence ``seq``, waiting at most
        ``within`` seconds for it (read-your-writes)."""
        if self.checkpoint >= seq:
            return True
        async with self._applied:
            try:
                await asyncio.wait_for(
                    self._applied.wait_for(lambda: self.checkpoint >= seq), within
                )
            except TimeoutError:
                return False
        return True

    async def purge_tenant(self, tenant: str, upto: int) -> dict[str, int]:
        """Remove ``tenant`` from the projection, between two batches; its events up to
        stream sequence ``upto`` that were fetched already are not applied after."""
        assert self.runner is not None and self.projection is not None
        async with self.runner.lock:
            self.runner.drop_tenant(tenant, upto)
            return await asyncio.to_thread(self.projection.purge_tenant, tenant)

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding.locked()

    @property
    def failed(self) -> BaseException | None:
        """The error that ended the live runner, if it ended by one."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            return self._task.exception()
        return None

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[P]:
        """The current projection, held open for a read even across a swap."""
        assert self.projection is not None
        self._readers += 1
        self._no_readers.clear()
        try:
            yield self.projection
        finally:
            self._readers -= 1
            if not self._readers:
                self._no_readers.set()

    async def rebuild(
        self, on_progress: Callable[[ReplayProgress], None] | None = None
    ) -> RebuildResult:
        """Replay the stream into a new target and swap it in; raises RebuildBusy."""
        if self.rebuilding:
            raise RebuildBusy(f"a rebuild of {self.name} is already running")
        assert self.runner is not None
        runner = self.runner
        async with self._rebuilding:
            new = await asyncio.to_thread(self.storage.open_new)
            paused = False

            async def caught_up(last_seq: int) -> bool:
                nonlocal paused
                if not paused:
                    # Pause live ingest after its batch in flight; the target stops moving.
                    await runner.lock.acquire()
                    paused = True
                return last_seq >= runner.projection.checkpoint

            try:
                stats = await replay(
                    self.nc,
                    new,
                    batch_size=max(self.batch_size, 5000),
                    until=caught_up,
                    on_progress=on_progress,
                )
                # Readers finish on the old target before it is closed.
                await self._no_readers.wait()
                old = self.projection
                assert old is not None
                old.close()
                await asyncio.to_thread(self.storage.make_current, new)
                self.projection = new
                runner.projection = new
                await self._notify_applied()
            except BaseException:
                await asyncio.to_thread(self.storage.discard, new)
                raise
            finally:
                if paused:
                    runner.lock.release()
        return _result(self.name, stats, new)


async def rebuild_offline(
    nc: NatsClient,
    storage: Storage[P],
    on_progress: Callable[[ReplayProgress], None] | None = None,
    batch_size: int = 5000,
) -> RebuildResult:
    """Rebuild when no service runs: replay into a new target, then make it current."""
    new = await asyncio.to_thread(storage.open_new)
    try:
        stats = await replay(nc, new, batch_size=batch_size, on_progress=on_progress)
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

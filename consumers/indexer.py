"""Building the vector engine's indexes without stalling the process that serves.

Qdrant Edge builds its HNSW and sparse indexes only when asked (``optimize()``), and that
call holds the interpreter for its whole run: tens of seconds at 100,000 points, during
which no search, ingest or reply could run. Without the indexes, search is exact and
slows as the shard grows. So the vectors service, once enough points were written since
the last build, does what a rebuild does, starting from a copy instead of from nothing:

1. between two batches (ingest held back for the copy only), copy the shard in use to a
   new generation;
2. index the copy in a process of its own (``consumers.index_aside``, at a lower
   priority), while this process goes on ingesting into the shard in use and answering;
   that process then applies to the copy what this one applied meanwhile (embedding
   nothing: the vectors are in the shared cache), so that this one does not apply it a
   second time;
3. pause ingest, catch the copy up on the last few events from its checkpoint with an
   ordered consumer, then switch to it as a rebuild does (``ProjectionService.rebuild``):
   nothing lost, nothing applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any, Final

from memstream.consumers.log import get_logger
from memstream.consumers.service import ProjectionService
from memstream.consumers.storage import VectorStorage
from memstream.producers.connection import CREDS_VAR, PASSWORD_VAR, URL_VAR, USER_VAR
from memstream.projections.vectors import VectorProjection

__all__ = ["IndexBuilder", "due"]

log = get_logger("memstream.indexer")

# Points written since the last build that make a new one worth it: measured here, a
# search over 10,000 points without an index takes ~3 ms, with one under 1 ms.
INDEX_AFTER: Final = 5_000
# ... and, in a larger shard, a quarter of the points already indexed. A build copies
# and indexes the whole shard, and catches the copy up on what arrived meanwhile: with a
# fixed count, steady ingest into a growing shard would cost more for every new point
# (at 5,000 events/s into 100,000 points, a build after every 5,000 points never ends).
# With a share, each point is copied and indexed a bounded number of times in all.
INDEX_GROWTH: Final = 0.25
CHECK_EVERY_S: Final = 30.0


def due(unindexed: int, points: int, after: int = INDEX_AFTER) -> bool:
    """Whether a shard of ``points`` points, ``unindexed`` of them written since its
    last build, is due a new one."""
    return unindexed >= max(after, INDEX_GROWTH * (points - unindexed))


class IndexBuilder:
    def __init__(
        self,
        service: ProjectionService[VectorProjection],
        storage: VectorStorage,
        *,
        after: int = INDEX_AFTER,
        every_s: float = CHECK_EVERY_S,
        nats_auth: dict[str, Any] | None = None,
    ) -> None:
        """``nats_auth``: the credentials this process connects with (``user``,
        ``password``, ``creds``), for the indexing process to connect with too."""
        self.service = service
        self.storage = storage
        self.after = after
        self.every_s = every_s
        names = {"user": USER_VAR, "password": PASSWORD_VAR, "creds": CREDS_VAR}
        self.nats_env = {names[k]: str(v) for k, v in (nats_auth or {}).items() if v}
        # What the last indexing process reported: the copy's checkpoint, and the points
        # it wrote after the indexes were built.
        self.caught_up: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="build-vector-index")

    async def stop(self) -> None:
        """Stop checking; a build under way is abandoned (its copy dropped at the next
        start) and its process stopped by its pid."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.build_if_due()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the next check tries again
                log.warning("index_build_failed", error=repr(err))

    async def build_if_due(self) -> bool:
        """Build the indexes when enough points were written since the last build;
        whether it did."""
        service = self.service
        if service.rebuilding:
            return False
        projection = service.projection
        points = await asyncio.to_thread(projection.store.points)
        if not due(projection.unindexed, points, self.after):
            return False
        log.info("index_build_started", unindexed=service.projection.unindexed)
        runner = service.running.runner
        async with runner.paused():  # between two batches: the shard holds still for the copy
            path = await asyncio.to_thread(self.storage.copy_for_index, service.projection)
        try:
            await self._index(str(path))
        except BaseException:
            self.storage.discard_copy(path)
            raise
        result = await service.rebuild(target=lambda: self.storage.open_indexed(path), eager=True)
        log.info(
            "index_build_finished",
            last_seq=result.last_seq,
            seconds=result.seconds,
            caught_up_aside=self.caught_up.get("checkpoint"),
        )
        return True

    async def _index(self, path: str) -> None:
        """Index the copy at ``path``, then catch it up on what this process applied
        meanwhile, in a process of its own (:mod:`consumers.index_aside`)."""
        storage, runner = self.storage, self.service.running.runner
        embedder = storage.embedder
        url = self.service.nc.connected_url
        env = {**os.environ, **self.nats_env}
        if url is not None:  # the server this process reached (of a cluster's seeds)
            env[URL_VAR] = url.geturl()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "memstream.consumers.index_aside", path,
            "--consumer", runner.consumer, "--model", embedder.model,
            "--dims", str(embedder.dimensions), "--cache", storage.cache.path,
            "--applied", storage.applied.path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        try:
            out, err = await child.communicate()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        if child.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"exit {child.returncode}")
        self.caught_up = json.loads(out.decode().strip().splitlines()[-1])

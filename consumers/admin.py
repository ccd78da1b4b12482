"""Operator requests to a running memstream over ``memadm.<op>``.

``memadm.sql``: one read-only statement against the live history; the running process
owns the DuckDB file, so this is how SQL reaches it while memstream is up.

``memadm.replay``: rebuild a projection while it keeps serving. The reply only accepts
the job; progress and the outcome go to the ``progress`` inbox the caller names, so a
rebuild can take as long as it needs without holding a request open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Annotated, Any, Literal

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from consumers.log import get_logger
from consumers.runner import ReplayProgress
from consumers.service import ProjectionService, RebuildBusy
from consumers.tenants import PurgeReport, purge_projection, purge_stream
from projections.analytics import SqlRejected, run_readonly
from schemas.errors import MemstreamError
from schemas.ids import validate_tenant
from schemas.queries import ErrorBody, Reply
from schemas.subjects import admin_subject

__all__ = ["ADMIN_QUEUE", "AdminResponder", "PurgeRequest", "ReplayRequest", "SqlRequest"]

log = get_logger("memstream.admin")
ADMIN_QUEUE = "memstream-admin"


class SqlRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
    max_rows: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000


class ReplayRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    projection: Literal["history", "vectors"]
    progress: str | None = None


class PurgeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tenant: str


_encoder = msgspec.json.Encoder()


def _error(code: str, message: str) -> bytes:
    return _encoder.encode(Reply(ok=False, error=ErrorBody(code=code, message=message)))  # type: ignore[arg-type]


class AdminResponder:
    def __init__(
        self,
        nc: NatsClient,
        services: dict[str, ProjectionService[Any]],
        *,
        exclusive: bool = True,
    ) -> None:
        """``exclusive``: this process runs every projection there is, so it answers
        for one it does not have. Otherwise (one role of several) it stays silent on
        those, and the process that has the projection answers; each role listens in a
        queue group of its own."""
        self.nc = nc
        self.services = services
        self.exclusive = exclusive
        self.queue = ADMIN_QUEUE if exclusive else f"{ADMIN_QUEUE}-{'+'.join(sorted(services))}"
        self._subs: list[Subscription] = []
        self._jobs: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        handlers = (
            ("sql", self._sql),
            ("replay", self._replay),
            ("ping", self._ping),
            ("purge", self._purge),
        )
        for op, handler in handlers:
            self._subs.append(
                await self.nc.subscribe(admin_subject(op), queue=self.queue, cb=handler)
            )
        await self.nc.flush()

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    async def _ping(self, msg: Msg) -> None:
        checkpoints = {
            name: s.projection.checkpoint
            for name, s in self.services.items()
            if s.projection is not None
        }
        await msg.respond(_encoder.encode(Reply(ok=True, result={"projections": checkpoints})))

    async def _sql(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=SqlRequest)
        except msgspec.DecodeError as err:
            await msg.respond(_error("bad_request", f"sql request: {err}"))
            return
        service = self.services.get("history")
        if service is None or service.projection is None:
            if not self.exclusive:
                return
            await msg.respond(_error("unavailable", "the history projection is not running here"))
            return
        try:
            async with service.reading() as history:
                result = await asyncio.to_thread(
                    run_readonly,
                    history.cursor(),
                    req.sql,
                    req.max_rows,
                )
        except SqlRejected as err:
            await msg.respond(_error("bad_request", str(err)))
            return
        body = {"columns": result.columns, "rows": result.rows, "truncated": result.truncated}
        await msg.respond(_encoder.encode(Reply(ok=True, result=body)))

    async def _replay(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=ReplayRequest)
        except msgspec.DecodeError as err:
            await msg.respond(_error("bad_request", f"replay request: {err}"))
            return
        service = self.services.get(req.projection)
        if service is None:
            if not self.exclusive:
                return
            await msg.respond(_error("unavailable", f"{req.projection} is not running here"))
            return
        if service.rebuilding:
            await msg.respond(_error("bad_request", f"a rebuild of {req.projection} is running"))
            return
        await msg.respond(_encoder.encode(Reply(ok=True, result={"accepted": req.projection})))
        job = asyncio.create_task(self._rebuild(service, req.progress))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _purge(self, msg: Msg) -> None:
        """Purge a tenant from the stream and from the projections this process runs."""
        try:
            req = msgspec.json.decode(msg.data, type=PurgeRequest)
            validate_tenant(req.tenant)
        except (msgspec.DecodeError, MemstreamError) as err:
            await msg.respond(_error("bad_request", f"purge request: {err}"))
            return
        report = PurgeReport(req.tenant)
        try:
            upto = await purge_stream(self.nc, req.tenant, report)
            for service in self.services.values():
                await purge_projection(service, req.tenant, upto, report)
        except MemstreamError as err:
            await msg.respond(_error(err.code, str(err)))
            return
        except Exception as err:
            log.exception("purge_failed", tenant=req.tenant)
            await msg.respond(_error("internal", f"purge of {req.tenant} failed: {err!r}"))
            return
        body = {"report": dataclasses.asdict(report), "projections": sorted(self.services)}
        await msg.respond(_encoder.encode(Reply(ok=True, result=body)))

    async def _rebuild(self, service: ProjectionService[Any], inbox: str | None) -> None:
        last_sent = 0.0

        def progress(p: ReplayProgress) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if inbox and now - last_sent >= 0.25:
                last_sent = now
                body = _encoder.encode({"progress": dataclasses.asdict(p)})
                # Hold the task: the loop keeps only weak references to tasks.
                send = asyncio.get_running_loop().create_task(self.nc.publish(inbox, body))
                self._jobs.add(send)
                send.add_done_callback(self._jobs.discard)

        try:
            result = await service.rebuild(progress)
        except (RebuildBusy, MemstreamError) as err:
            final: dict[str, Any] = {"error": {"code": "bad_request", "message": str(err)}}
        except Exception as err:
            log.exception("rebuild_failed", projection=service.name)
            final = {"error": {"code": "internal", "message": f"rebuild failed: {err!r}"}}
        else:
            final = {"done": dataclasses.asdict(result)}
        if inbox:
            await self.nc.publish(inbox, _encoder.encode(final))
            await self.nc.flush()

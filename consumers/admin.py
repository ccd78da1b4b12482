"""Operator requests to a running memstream over ``memadm.<op>`` (typed in
:mod:`schemas.admin`).

``memadm.sql``: one read-only statement against the live history; the running process
owns the DuckDB file, so this is how SQL reaches it while memstream is up.

``memadm.replay``: rebuild a projection while it keeps serving. The reply only accepts
the job; progress and the outcome go to the ``progress`` inbox the caller names, so a
rebuild can take as long as it needs without holding a request open.

``memadm.purge``: a tenant out of the stream and the projections this process runs.

``memadm.<op>.<tenant>`` (purge, audit): the same about one tenant, which that tenant's
admin users may ask (``consumers.auth``); the request's tenant must be the subject's.

Every op but ``ping`` (the health probe every command starts with) leaves an audit record
(``consumers.audit``), under its tenant or, for one about none, ``_admin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from memstream.consumers.audit import Auditor, read_audit
from memstream.consumers.log import get_logger
from memstream.consumers.metrics import Health
from memstream.consumers.service import ProjectionService
from memstream.consumers.tenants import purge_projection, purge_stream
from memstream.producers.connection import subscriptions_held
from memstream.projections.analytics import SqlRejected, run_readonly
from memstream.schemas.admin import (
    ADMIN_OPS,
    TENANT_ADMIN_OPS,
    AdminRequest,
    AuditRequest,
    PingResult,
    PurgeReport,
    PurgeRequest,
    PurgeResult,
    ReplayAccepted,
    ReplayProgress,
    ReplayRequest,
    ReplayUpdate,
    SqlRequest,
    SqlResult,
    decode_admin_request,
)
from memstream.schemas.errors import MemstreamError, QueryError
from memstream.schemas.partitions import WHOLE, Partition
from memstream.schemas.replies import ErrorBody, error_reply, ok_reply
from memstream.schemas.subjects import admin_subject, asker
from memstream.schemas.tenancy import AUDIT_ADMIN

__all__ = ["ADMIN_QUEUE", "AdminResponder"]


def _tenant_of(subject: str, req: AdminRequest) -> str:
    """The tenant an admin request is about (``_admin`` for none); on
    ``memadm.<op>.<tenant>``, a request about another tenant is forbidden."""
    parts = subject.split(".")
    named = getattr(req, "tenant", None)
    if len(parts) == 3:
        if named is not None and named != parts[2]:
            raise QueryError(
                "forbidden", f"a request on {subject} may be about tenant {parts[2]} only"
            )
        return parts[2]
    return named if isinstance(named, str) else AUDIT_ADMIN


log = get_logger("memstream.admin")
ADMIN_QUEUE = "memstream-admin"
_encoder = msgspec.json.Encoder()


class AdminResponder:
    def __init__(
        self,
        nc: NatsClient,
        services: dict[str, ProjectionService[Any]],
        *,
        exclusive: bool = True,
        deployment: str = "",
        data_dir: Path | None = None,
        partition: Partition = WHOLE,
        health: Health | None = None,
    ) -> None:
        """``exclusive``: this process runs every projection there is, so it answers
        for one it does not have. Otherwise (one role of several) it stays silent on
        those, and the process that has the projection answers; each role listens in a
        queue group of its own. ``deployment``: this data dir's id; a request naming
        another deployment is left to that one (``ping`` answers every caller, saying
        which deployment and data dir it is, so the caller can tell)."""
        self.nc = nc
        self.services = services
        self.partition = partition
        self.health = health
        self.deployment = deployment
        self.data_dir = str(data_dir or "")
        self.exclusive = exclusive
        # One queue group per deployment: each deployment on the NATS hears each request.
        self.queue = f"{ADMIN_QUEUE}-{deployment}" if deployment else ADMIN_QUEUE
        self._subs: list[Subscription] = []
        self._jobs: set[asyncio.Task[Any]] = set()
        self.auditor = Auditor(nc)

    async def start(self) -> None:
        handlers: dict[str, Callable[[Msg, Any], Awaitable[bytes | None]]] = {
            "ping": self._ping,
            "sql": self._sql,
            "replay": self._replay,
            "purge": self._purge,
            "audit": self._audit,
        }
        subjects = [(admin_subject(op), op) for op in ADMIN_OPS if op != "audit"]
        subjects += [(f"{admin_subject(op)}.*", op) for op in TENANT_ADMIN_OPS]
        for subject, op in subjects:
            self._subs.append(
                await self.nc.subscribe(
                    subject, queue=self.queue, cb=self._handler(op, handlers[op])
                )
            )
        await subscriptions_held(self.nc)

    async def stop(self) -> None:
        for sub in self._subs:
            # With the broker gone there is nothing to unsubscribe from.
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    def _handler(
        self, op: str, handle: Callable[[Msg, Any], Awaitable[bytes | None]]
    ) -> Callable[[Msg], Awaitable[None]]:
        """Decode the request, answer with what ``handle`` returns (None: stay silent,
        another process answers), and turn errors into error replies."""

        async def on_msg(msg: Msg) -> None:
            started = time.perf_counter()
            outcome = "ok"
            tenant = AUDIT_ADMIN
            try:
                req: AdminRequest = decode_admin_request(op, msg.data)
                if op != "ping" and req.deployment and req.deployment != self.deployment:
                    return  # meant for another deployment on this NATS: its process answers
                tenant = _tenant_of(msg.subject, req)
                body = await handle(msg, req)
            except QueryError as err:
                outcome = err.code
                body = error_reply(err.code, err.message)
            except MemstreamError as err:
                outcome = err.code
                body = error_reply(err.code, str(err))
            except Exception as err:
                outcome = "internal"
                log.exception("admin_failed", op=op)
                body = error_reply("internal", f"{op} failed: {err!r}")
            if body is not None and msg.reply:
                await msg.respond(body)
            if body is not None and op != "ping":
                await self.auditor.record(
                    tenant=tenant,
                    user=asker(tenant, msg.reply or ""),
                    agent="",
                    kind="admin",
                    op=op,
                    body=msg.data,
                    results=None,
                    seconds=time.perf_counter() - started,
                    outcome=outcome,
                )

        return on_msg

    def _service(self, name: str) -> ProjectionService[Any] | None:
        """The service of projection ``name``; None where another process has it."""
        service = self.services.get(name)
        if service is None and self.exclusive:
            raise QueryError("unavailable", f"the {name} projection is not running here")
        return service

    async def _ping(self, msg: Msg, req: AdminRequest) -> bytes:
        checkpoints = {name: s.checkpoint for name, s in self.services.items()}
        pending = {}
        for name, service in self.services.items():
            with contextlib.suppress(nats.errors.Error, RuntimeError):
                pending[name] = await service.pending()
        return ok_reply(
            PingResult(
                projections=checkpoints,
                deployment=self.deployment,
                data_dir=self.data_dir,
                partition=self.partition.index,
                partitions=self.partition.count,
                roles=sorted(self.services),
                pending=pending,
                not_ready=self.health.reasons() if self.health is not None else [],
                engine=self.health.engine if self.health is not None else None,
            )
        )

    async def _sql(self, msg: Msg, req: SqlRequest) -> bytes | None:
        service = self._service("history")
        if service is None:
            return None
        try:
            async with service.reading() as history:
                result = await asyncio.to_thread(
                    run_readonly, history.cursor(), req.sql, req.max_rows
                )
        except SqlRejected as err:
            return error_reply("bad_request", str(err))
        rows = [list(row) for row in result.rows]
        return ok_reply(SqlResult(columns=result.columns, rows=rows, truncated=result.truncated))

    async def _replay(self, msg: Msg, req: ReplayRequest) -> bytes | None:
        service = self._service(req.projection)
        if service is None:
            return None
        if service.rebuilding:
            return error_reply("bad_request", f"a rebuild of {req.projection} is running")
        job = asyncio.create_task(self._rebuild(service, req.progress))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return ok_reply(ReplayAccepted(accepted=req.projection))

    async def _audit(self, msg: Msg, req: AuditRequest) -> bytes:
        """The audit records of the subject's tenant."""
        return ok_reply(await read_audit(self.nc, msg.subject.rsplit(".", 1)[1], req))

    async def _purge(self, msg: Msg, req: PurgeRequest) -> bytes:
        """Purge a tenant from the stream and from the projections this process runs."""
        # The stream, whoever answers (purging it twice removes nothing more); the
        # projections, where this process's partition holds the tenant.
        owns = self.partition.owns(req.tenant)
        report = PurgeReport(tenant=req.tenant, data_dirs=[self.data_dir] if owns else [])
        upto = await purge_stream(self.nc, req.tenant, report)
        if owns:
            for service in self.services.values():
                await purge_projection(service, req.tenant, upto, report)
        projections = sorted(self.services) if owns else []
        return ok_reply(PurgeResult(report=report, projections=projections))

    async def _rebuild(self, service: ProjectionService[Any], inbox: str | None) -> None:
        last_sent = 0.0

        def progress(p: ReplayProgress) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if inbox and now - last_sent >= 0.25:
                last_sent = now
                body = _encoder.encode(ReplayUpdate(progress=p))
                # Hold the task: the loop keeps only weak references to tasks.
                send = asyncio.get_running_loop().create_task(self.nc.publish(inbox, body))
                self._jobs.add(send)
                send.add_done_callback(self._jobs.discard)

        try:
            result = await service.rebuild(progress)
            final = ReplayUpdate(done=msgspec.structs.replace(result, data_dir=self.data_dir))
        except MemstreamError as err:
            final = ReplayUpdate(error=ErrorBody(code="bad_request", message=str(err)))
        except Exception as err:
            log.exception("rebuild_failed", projection=service.name)
            final = ReplayUpdate(
                error=ErrorBody(code="internal", message=f"rebuild failed: {err!r}")
            )
        if inbox:
            await self.nc.publish(inbox, _encoder.encode(final))
            await self.nc.flush()

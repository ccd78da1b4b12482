"""``memstream up``: everything on one machine, in one process.

It starts the embedded nats-server (unless told to use another NATS), provisions the
streams and consumers, runs the history projection and the admin responder, and runs
until SIGINT or SIGTERM. Stopping finishes and acks the batch in flight, then stops what
it started, last of all the broker.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.admin import AdminResponder
from consumers.log import get_logger
from consumers.nats_server import NatsServer
from consumers.service import HistoryStorage, ProjectionService
from consumers.settings import Settings
from consumers.streams import HEADER_ROOM, ProvisionReport, ensure_streams
from consumers.vector_storage import VectorStorage
from producers._connect import connect_nats
from schemas.errors import MemstreamError

__all__ = ["UpInfo", "run_up"]

log = get_logger("memstream.up")


@dataclass(frozen=True)
class UpInfo:
    nats_url: str
    data_dir: Path
    embedded: bool
    nats_pid: int | None
    provisioned: ProvisionReport
    projections: dict[str, int]


class ProjectionFailed(MemstreamError):
    code = "internal"


async def run_up(
    settings: Settings,
    *,
    nats_port: int = 4222,
    external_nats: bool = False,
    on_ready: Callable[[UpInfo], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set or SIGINT/SIGTERM arrives; cleans up what it started."""
    data_dir = settings.data_path.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server: NatsServer | None = None
    try:
        if external_nats:
            url = settings.nats_url
        else:
            embedded = NatsServer(
                data_dir,
                port=nats_port,
                max_payload=settings.max_event_bytes + HEADER_ROOM,
            )
            # Starting the child blocks briefly; keep the loop free for signals.
            server = await asyncio.to_thread(embedded.start)
            url = server.url
            log.info("nats_started", url=url, pid=server.pid, store=str(data_dir / "nats"))
        nc = await connect_nats(url, name="memstream:up", **settings.nats_auth)
        try:
            report = await ensure_streams(
                nc.jetstream(),
                replicas=settings.stream_replicas,
                max_event_bytes=settings.max_event_bytes,
            )
            log.info("streams_ready", streams=report.streams, consumers=report.consumers)
            await _serve(
                nc,
                settings,
                data_dir,
                stop,
                lambda services: (
                    on_ready
                    and on_ready(
                        UpInfo(
                            nats_url=url,
                            data_dir=data_dir,
                            embedded=server is not None,
                            nats_pid=server.pid if server else None,
                            provisioned=report,
                            projections={
                                n: s.projection.checkpoint
                                for n, s in services.items()
                                if s.projection is not None
                            },
                        )
                    )
                ),
            )
        finally:
            await nc.drain()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if server is not None:
            code = await asyncio.to_thread(server.stop)
            log.info("nats_stopped", exit_code=code)


async def _serve(
    nc: Any,
    settings: Settings,
    data_dir: Path,
    stop: asyncio.Event,
    ready: Callable[[dict[str, ProjectionService[Any]]], Any],
) -> None:
    size, wait = settings.batch_size, settings.batch_wait_ms / 1000
    services: dict[str, ProjectionService[Any]] = {
        "history": ProjectionService(nc, HistoryStorage(data_dir), batch_size=size, max_wait=wait),
        "vectors": ProjectionService(nc, VectorStorage(settings), batch_size=size, max_wait=wait),
    }
    admin = AdminResponder(nc, services)
    started: list[ProjectionService[Any]] = []
    try:
        for service in services.values():
            await service.start()
            started.append(service)
        await admin.start()
        ready(services)
        watchers = [asyncio.create_task(stop.wait())]
        watchers += [s.wait_failed() for s in started]
        _, pending = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        failed = [s for s in started if s.failed is not None]
        log.info("stopping")
    finally:
        await admin.stop()
        for service in reversed(started):
            await service.stop()
    if failed:
        err = failed[0].failed
        raise ProjectionFailed(f"the {failed[0].name} projection stopped: {err!r}") from err

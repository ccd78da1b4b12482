"""``memstream up``: everything on one machine, in one process.

It starts the embedded nats-server (unless told to use another NATS), provisions the
streams and consumers, and runs until SIGINT or SIGTERM, then stops what it started.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from consumers.log import get_logger
from consumers.nats_server import NatsServer
from consumers.settings import Settings
from consumers.streams import HEADER_ROOM, ProvisionReport, ensure_streams
from producers._connect import connect_nats

__all__ = ["UpInfo", "run_up"]

log = get_logger("memstream.up")


@dataclass(frozen=True)
class UpInfo:
    nats_url: str
    data_dir: Path
    embedded: bool
    nats_pid: int | None
    provisioned: ProvisionReport


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
            if on_ready:
                on_ready(
                    UpInfo(
                        nats_url=url,
                        data_dir=data_dir,
                        embedded=server is not None,
                        nats_pid=server.pid if server else None,
                        provisioned=report,
                    )
                )
            await stop.wait()
            log.info("stopping")
        finally:
            await nc.drain()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if server is not None:
            code = await asyncio.to_thread(server.stop)
            log.info("nats_stopped", exit_code=code)

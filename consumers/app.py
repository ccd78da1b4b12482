"""``memstream up`` and ``memstream serve``: the processes that run memstream.

``up`` is everything on one machine, in one process: it starts the embedded nats-server
(unless told to use another NATS), provisions the streams and consumers, runs both
projections, the query worker and the admin responder until SIGINT or SIGTERM. Stopping
finishes the queries and the batch in flight, commits and acks it, then stops what it
started, last of all the broker.

``serve --role`` runs one role per process against an external NATS, for scale-out:
``history`` (the DuckDB history, answering the ops that read it), ``vectors`` (the
vector projection; with the embedded engine it also answers ``search`` and ``recall``,
since no other process can open the collections), and ``query`` (``search`` and
``recall`` from a Qdrant server, asking the history role for turns and tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.errors

from memstream.consumers.admin import AdminResponder
from memstream.consumers.auth import TenantCredentials
from memstream.consumers.deployment import Hold, claim_partition, hold
from memstream.consumers.engine_process import EngineFailed, Supervised
from memstream.consumers.log import get_logger
from memstream.consumers.metrics import Health, MetricsServer, ProcessMetrics, refresh_health
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.parts import RoleParts, caught_up, live_counters
from memstream.consumers.query_worker import QueryWorker, check_query_mapping
from memstream.consumers.roles import ALL_ROLES
from memstream.consumers.service import ProjectionService
from memstream.consumers.settings import Settings
from memstream.consumers.streams import (
    HEADER_ROOM,
    ProvisionReport,
    ensure_streams,
    until_jetstream_answers,
)
from memstream.producers.connection import connect_nats
from memstream.projections.embedders import EmbedderError
from memstream.projections.embedding_cache import CachedEmbedder
from memstream.schemas.errors import ConfigError, MemstreamError, NatsServerError
from memstream.schemas.partitions import Partition
from memstream.schemas.queries import PROJECTIONS
from memstream.schemas.subjects import durable_name

__all__ = ["EmbedderStatus", "UpInfo", "run_up"]

log = get_logger("memstream.up")


@dataclass(frozen=True)
class EmbedderStatus:
    """The embedder, as checked at start: ``problem`` says why it did not answer."""

    kind: str
    model: str
    dimensions: int
    problem: str | None


@dataclass(frozen=True)
class UpInfo:
    nats_url: str
    data_dir: Path
    embedded: bool
    nats_pid: int | None
    provisioned: ProvisionReport
    auth: bool
    projections: dict[str, int]
    embedder: EmbedderStatus | None
    partition: int = 0
    partitions: int = 1
    metrics_url: str | None = None
    nats_monitor_url: str | None = None


class ProjectionFailed(MemstreamError):
    code = "internal"


async def run_up(
    settings: Settings,
    *,
    nats_port: int = 4222,
    external_nats: bool = False,
    on_ready: Callable[[UpInfo], None] | None = None,
    stop: asyncio.Event | None = None,
    roles: frozenset[str] = ALL_ROLES,
    auth: bool = False,
    stop_within: float | None = None,
    partition: int | None = None,
    nats_monitor_port: int | None = None,
) -> None:
    """Run until ``stop`` is set or SIGINT/SIGTERM arrives; cleans up what it started.

    ``auth``: the embedded server admits only the service user and the tenants'
    users (``consumers.auth``), and memstream connects as the service.
    ``stop_within``: for a process of its own (the CLI): seconds after a signal by which
    the process has ended, forced if need be; a second signal forces at once.
    ``partition``: which of ``settings.partitions`` this process serves.
    ``nats_monitor_port``: the embedded nats-server's monitoring port (off if None).
    """
    part = Partition.of(partition, settings.partitions)
    if not part.whole and not external_nats:
        raise ConfigError(
            "a partition serves its share of a deployment's tenants on a shared NATS: give "
            "--nats-url (the embedded NATS of 'memstream up' serves one whole deployment)"
        )
    if auth and external_nats:
        raise ConfigError(
            "--auth configures the embedded NATS; with --nats-url, the server's own "
            "authorization applies (give memstream a user with MEMSTREAM_NATS_USER/PASSWORD)"
        )
    if "query" in roles and roles != ALL_ROLES and not settings.qdrant_url:
        raise ConfigError(
            "the query role reads the vectors from a Qdrant server: set MEMSTREAM_QDRANT_URL "
            "(with the embedded engine, the vectors role answers search and recall itself)"
        )
    data_dir = settings.data_path.resolve()
    # Before anything under the data dir is touched: a second process on it is refused.
    with hold(data_dir, sorted(roles)) as held:
        claim_partition(data_dir, part)
        held.partition = part
        await _run_held(
            settings,
            held,
            nats_port,
            external_nats,
            on_ready,
            stop or asyncio.Event(),
            roles,
            auth,
            stop_within,
            nats_monitor_port,
        )


async def _run_held(
    settings: Settings,
    held: Hold,
    nats_port: int,
    external_nats: bool,
    on_ready: Callable[[UpInfo], None] | None,
    stop: asyncio.Event,
    roles: frozenset[str],
    auth: bool,
    stop_within: float | None,
    nats_monitor_port: int | None = None,
) -> None:
    data_dir = held.data_dir
    loop = asyncio.get_running_loop()
    server: NatsServer | None = None

    def on_signal() -> None:
        if stop.is_set():
            _force_stop(server)
        log.info("stop_requested", hint="a second Ctrl-C stops at once")
        stop.set()
        if stop_within is not None:
            # What cannot finish in time (a batch waiting on an embedder that does not
            # answer) is left as a crash would leave it. A thread, since what holds up
            # the exit may be the interpreter joining a worker thread after the loop.
            timer = threading.Timer(stop_within, lambda: _force_stop(server))
            timer.daemon = True
            timer.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    supervisor: asyncio.Task[str | None] | None = None
    failure: str | None = None
    try:
        if external_nats:
            url = settings.nats_url
        else:
            extra = ""
            if auth:
                service = TenantCredentials(data_dir).service()
                settings = msgspec.structs.replace(
                    settings, nats_user=service.user, nats_password=service.password
                )
                extra = 'include "../auth/auth.conf"'
            embedded = NatsServer(
                data_dir,
                port=nats_port,
                max_payload=settings.max_event_bytes + HEADER_ROOM,
                extra_config=extra,
                monitor_port=nats_monitor_port,
            )
            # Starting the child blocks briefly; keep the loop free for signals.
            server = await asyncio.to_thread(embedded.start)
            url = server.url
            log.info("nats_started", url=url, pid=server.pid, store=str(data_dir / "nats"))
        supervisor = (
            asyncio.create_task(_supervise(server, stop), name="supervise-nats")
            if server is not None
            else None
        )
        name = "memstream:up" if roles == ALL_ROLES else f"memstream:{'+'.join(sorted(roles))}"
        nc = await connect_nats(url, name=name, **settings.nats_auth)
        # The queries have a connection of their own: a request is read as it arrives,
        # not behind the batches of events the projections are fetching on theirs.
        queries_nc = await connect_nats(url, name=f"{name}:queries", **settings.nats_auth)
        held.announce(url)
        try:
            report = await until_jetstream_answers(
                lambda: ensure_streams(
                    nc.jetstream(),
                    replicas=settings.stream_replicas,
                    max_event_bytes=settings.max_event_bytes,
                    consumers=tuple(
                        durable_name(p, held.deployment) for p in PROJECTIONS if p in roles
                    ),
                    partition=held.partition,
                ),
                "the streams",
            )
            if not held.partition.whole:
                await check_query_mapping(queries_nc)
            log.info("streams_ready", streams=report.streams, consumers=report.consumers)
            await _serve(
                nc,
                queries_nc,
                settings,
                held,
                stop,
                lambda services, embedder: (
                    on_ready
                    and on_ready(
                        UpInfo(
                            nats_url=url,
                            data_dir=data_dir,
                            embedded=server is not None,
                            nats_pid=server.pid if server else None,
                            auth=auth,
                            provisioned=report,
                            projections={n: s.checkpoint for n, s in services.items()},
                            embedder=embedder,
                            partition=held.partition.index,
                            partitions=held.partition.count,
                            metrics_url=held.metrics_url,
                            nats_monitor_url=server.monitor_url if server else None,
                        )
                    )
                ),
                roles,
            )
        finally:
            for conn in (queries_nc, nc):
                try:
                    await conn.drain()
                except (nats.errors.Error, OSError):
                    # The broker went away first (it died, or someone stopped it):
                    # nothing to flush, and closing may find the socket gone.
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await conn.close()
    finally:
        if supervisor is not None:
            if supervisor.done() and not supervisor.cancelled():
                failure = supervisor.result()
            else:
                supervisor.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if server is not None:
            code = await asyncio.to_thread(server.stop)
            log.info("nats_stopped", exit_code=code)
    if failure is not None:
        raise NatsServerError(failure)


def _force_stop(server: NatsServer | None) -> None:
    """A second Ctrl-C, or a stop that overran: end now, as a crash would. Nothing is
    lost: what was not committed and acknowledged is delivered again at the next start."""
    log.warning("forced_stop", hint="what was not acknowledged is delivered again at start")
    if server is not None and server.process is not None:
        server.process.kill()
        server.process.wait()
    sys.stderr.flush()
    os._exit(130)


# How long the embedder may take to answer the check at start.
_EMBEDDER_CHECK_S = 5.0


async def _check_embedder(embedder: CachedEmbedder, kind: str) -> EmbedderStatus:
    """Ask the embedder for one vector, so that one that is down is said at start (the
    vectors then wait for it; the history and its queries are unaffected)."""
    inner = embedder.embedder
    problem = None
    try:
        await asyncio.to_thread(inner.embed, ["memstream start check"], _EMBEDDER_CHECK_S)
    except (EmbedderError, OSError) as err:
        problem = str(err)
        log.error("embedder_unavailable", embedder=kind, model=inner.model, reason=problem)
    return EmbedderStatus(kind, inner.model, inner.dimensions, problem)


# The embedded broker is restarted when it dies, at most this often within the window;
# past that something is wrong that a restart does not mend, and memstream stops.
_RESTARTS, _RESTART_WINDOW_S = 3, 60.0


async def _supervise(server: NatsServer, stop: asyncio.Event) -> str | None:
    """Restart the embedded nats-server when it dies (bounded); when it keeps dying,
    stop memstream and return the one line that says why."""
    deaths: list[float] = []
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        await asyncio.sleep(0.25)
        status = server.exited()
        if status is None or stop.is_set():
            continue
        while True:
            now = loop.time()
            deaths = [t for t in deaths if now - t < _RESTART_WINDOW_S] + [now]
            if len(deaths) > _RESTARTS:
                stop.set()
                return (
                    f"the embedded nats-server died {len(deaths)} times within "
                    f"{_RESTART_WINDOW_S:.0f} s; memstream stopped. Its log: {server.log_path}"
                )
            log.error("nats_died", status=status, deaths=len(deaths))
            try:
                await asyncio.to_thread(server.restart)
            except NatsServerError as err:
                # It died again while starting: another death, within the same bound.
                log.error("nats_restart_failed", error=str(err))
                continue
            log.info("nats_restarted", pid=server.pid, url=server.url)
            break
    return None


def _observer(metrics: ProcessMetrics) -> Callable[[bytes], None]:
    """The searcher's ``op seconds outcome`` lines, into this process's query metrics."""

    def observe(line: bytes) -> None:
        op, seconds, outcome, *_ = [*line.decode(errors="replace").split(), "", "", "ok"]
        with contextlib.suppress(ValueError):
            metrics.observe_query(op, float(seconds), outcome or "ok")

    return observe


async def _supervise_child(child: Supervised, stop: asyncio.Event) -> None:
    """Restart the engine's process or the searcher when it dies (bounded, as the
    broker); while the engine is down the projection's batch waits as for any storage
    failure, and a search is answered ``unavailable``. When it keeps dying, stop
    memstream with the reason."""
    deaths: list[float] = []
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        await asyncio.sleep(0.25)
        status = child.exited()
        if status is None or stop.is_set():
            continue
        now = loop.time()
        deaths = [t for t in deaths if now - t < _RESTART_WINDOW_S] + [now]
        if len(deaths) > _RESTARTS:
            raise EngineFailed(
                f"the {child.what} died {len(deaths)} times within {_RESTART_WINDOW_S:.0f} s "
                f"(last exit status {status}); memstream stopped: its log lines above say why"
            )
        log.error("child_died", process=child.what, status=status, deaths=len(deaths))
        try:
            await asyncio.to_thread(child.restart)
        except EngineFailed as err:
            log.error("child_restart_failed", process=child.what, error=str(err))
            continue
        log.info("child_restarted", process=child.what, pid=child.pid)


async def _serve(
    nc: Any,
    queries_nc: Any,
    settings: Settings,
    held: Hold,
    stop: asyncio.Event,
    ready: Callable[[dict[str, ProjectionService[Any]], EmbedderStatus | None], Any],
    roles: frozenset[str] = ALL_ROLES,
) -> None:
    parts = RoleParts(nc, settings, held, roles)
    services = parts.services
    metrics, health = (
        ProcessMetrics(),
        Health(nats_connected=lambda: bool(nc.is_connected and queries_nc.is_connected)),
    )
    metrics.add_source(lambda: live_counters(parts, health))
    for service in services.values():
        service.on_publish_error = metrics.publish_errors.inc
    admin = AdminResponder(
        nc,
        services,
        exclusive=roles == ALL_ROLES,
        deployment=held.deployment,
        data_dir=held.data_dir,
        partition=held.partition,
        health=health,
    )
    started: list[ProjectionService[Any]] = []
    worker: QueryWorker | None = None
    failed: list[ProjectionService[Any]] = []
    server: MetricsServer | None = None
    refresher: asyncio.Task[None] | None = None
    engine_failed: BaseException | None = None
    try:
        if settings.metrics_port is not None:
            server = MetricsServer(metrics, health, settings.metrics_port)
            try:
                server.start()
            except OSError as taken:
                raise ConfigError(
                    f"--metrics-port {settings.metrics_port}: {taken.strerror or taken}: choose "
                    "another port (0: any free one)"
                ) from None
            held.metrics_url = f"http://127.0.0.1:{server.port}"
        embedder = parts.embedder
        status = (
            await _check_embedder(embedder, settings.effective_embedder)
            if embedder is not None
            else None
        )
        # The searcher starts while the projections catch up, and answers after them.
        await asyncio.to_thread(parts.start_searcher, queries_nc)
        if parts.searcher is not None:
            parts.searcher.observe(_observer(metrics))
        for service in services.values():
            await service.start()
            started.append(service)
        if parts.indexer is not None:
            parts.indexer.start()
        if parts.audit_table is not None:
            parts.audit_table.start()
        if services:
            await admin.start()
        refresher = asyncio.create_task(
            refresh_health(health, services, stop, engine=parts.engine_info), name="health"
        )
        # A partition's new worker (a new replica, a new partition count) answers once
        # it holds its share of the stream as it was at start: until then the workers
        # already serving the partition answer alone.
        if held.partition.whole or await caught_up(started, stop):
            if parts.searcher is not None:
                await asyncio.to_thread(parts.searcher.serve)
            worker = parts.query_worker(queries_nc)
            if worker is not None:
                worker.observe = metrics.observe_query
                await worker.start()
            ready(services, status)
        watchers: list[asyncio.Future[Any]] = [asyncio.create_task(stop.wait())]
        watchers += [s.wait_failed() for s in started]
        for child in (parts.engine, parts.searcher):
            if child is not None:
                engine_watch = asyncio.create_task(_supervise_child(child, stop))
                watchers.append(engine_watch)
        _, pending = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        failed = [s for s in started if s.failed is not None]
        for task in watchers:
            if task.done() and not task.cancelled() and isinstance(task.exception(), EngineFailed):
                engine_failed = task.exception()
        log.info("stopping")
    finally:
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        if server is not None:
            server.stop()
        if parts.indexer is not None:
            await parts.indexer.stop()
        if parts.audit_table is not None:
            await parts.audit_table.stop()
        # Queries first (they read the projections), then the projections.
        if worker is not None:
            await worker.stop()
        await admin.stop()
        for service in reversed(started):
            await service.stop()
        parts.close()
    if engine_failed is not None:
        raise engine_failed
    if failed:
        err = failed[0].failed
        raise ProjectionFailed(f"the {failed[0].name} projection stopped: {err!r}") from err

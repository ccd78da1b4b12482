"""What the operator commands do (replay, sql, tenant purge), apart from how they print.

Each works through the running memstream when there is one (over ``memadm.*``), and on
the files under the data dir when there is none: :func:`reach` decides which, once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient

from consumers.nats_server import NatsServer
from consumers.service import rebuild_offline
from consumers.settings import Settings
from consumers.storage import (
    HistoryStorage,
    Storage,
    history_path,
    vector_storage_from_settings,
)
from consumers.streams import HEADER_ROOM
from consumers.tenants import purge_offline, purge_stream
from producers.connection import connect_nats
from projections.analytics import QueryResult, run_readonly
from projections.history import HistoryProjection
from schemas.admin import (
    PurgeReport,
    PurgeRequest,
    PurgeResult,
    RebuildResult,
    ReplayAccepted,
    ReplayProgress,
    ReplayRequest,
    ReplayUpdate,
    SqlRequest,
    SqlResult,
    decode_admin_reply,
)
from schemas.errors import AdminError, ConnectError
from schemas.ids import validate_tenant
from schemas.subjects import admin_subject

__all__ = ["Reach", "purge_tenant", "reach", "rebuild", "sql"]

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Reach:
    """A connection to memstream's NATS, and whether a memstream process answers admin
    requests on it (then only it may act on the projections)."""

    nc: NatsClient
    running: bool


@contextlib.asynccontextmanager
async def _nats(settings: Settings, may_start: bool) -> AsyncIterator[NatsClient]:
    """A connection to memstream's NATS; with nothing running and ``may_start``, a broker
    of our own over the stream under the data dir, for as long as the command needs it."""
    try:
        nc = await connect_nats(settings.nats_url, name="memstream:ops", **settings.nats_auth)
        server = None
    except ConnectError:
        if not may_start:
            raise
        store = settings.data_path / "nats" / "jetstream"
        if not store.exists():
            raise AdminError(
                f"nothing is running at {settings.nats_url} and there is no stream under "
                f"{settings.data_path}: start memstream with 'memstream up'"
            ) from None
        server = NatsServer(
            settings.data_path, port=0, max_payload=settings.max_event_bytes + HEADER_ROOM
        )
        await asyncio.to_thread(server.start)
        nc = await connect_nats(server.url, name="memstream:ops")
    try:
        yield nc
    finally:
        await nc.drain()
        if server is not None:
            await asyncio.to_thread(server.stop)


def _history_in_use(settings: Settings) -> bool:
    """Whether another process holds the history database (memstream up runs here)."""
    path = history_path(settings.data_path)
    if path is None or not path.exists():
        return False
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.IOException:
        return True
    return False


async def _answers_admin(nc: NatsClient) -> bool:
    try:
        await nc.request(admin_subject("ping"), b"{}", timeout=2)
    except nats.errors.NoRespondersError:
        return False
    return True


@contextlib.asynccontextmanager
async def reach(settings: Settings, url_given: bool) -> AsyncIterator[Reach]:
    """Where an operator command acts: the running memstream, or the files.

    A history database locked by another process means memstream runs on this data dir
    (it always runs the history projection): then only it may act. A broker of our own is
    started over the data dir only when no URL was configured, since only then is the
    stream the embedded one.
    """
    in_use = _history_in_use(settings)
    async with _nats(settings, may_start=not (url_given or in_use)) as nc:
        yield Reach(nc, in_use or await _answers_admin(nc))


async def rebuild(
    settings: Settings,
    projection: str,
    url_given: bool,
    on_progress: Callable[[ReplayProgress], None],
) -> RebuildResult:
    """Rebuild through the running memstream, or on the files when none runs."""
    async with reach(settings, url_given) as where:
        if where.running:
            return await _rebuild_remote(where.nc, projection, on_progress)
        storage: Storage[Any] = (
            HistoryStorage(settings.data_path)
            if projection == "history"
            else vector_storage_from_settings(settings)
        )
        return await rebuild_offline(where.nc, storage, on_progress)


async def _rebuild_remote(
    nc: NatsClient, projection: str, on_progress: Callable[[ReplayProgress], None]
) -> RebuildResult:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        body = _encoder.encode(ReplayRequest(projection=projection, progress=inbox))  # type: ignore[arg-type]
        try:
            msg = await nc.request(admin_subject("replay"), body, timeout=10)
        except nats.errors.NoRespondersError:
            raise AdminError(
                "the history database is in use, but no memstream answers on this NATS: "
                "pass the --nats-url that 'memstream up' printed"
            ) from None
        decode_admin_reply("replay", msg.data, ReplayAccepted)
        while True:
            msg = await sub.next_msg(timeout=None)
            update = _update(msg.data)
            if update.progress is not None:
                on_progress(update.progress)
            elif update.done is not None:
                return update.done
            elif update.error is not None:
                raise AdminError(update.error.message, update.error.code)
    finally:
        await sub.unsubscribe()


def _update(body: bytes) -> ReplayUpdate:
    try:
        return msgspec.json.decode(body, type=ReplayUpdate)
    except msgspec.DecodeError as err:
        raise AdminError(
            f"a progress message of the rebuild is not what this version expects ({err})",
            "internal",
        ) from None


async def sql(settings: Settings, query: str, url_given: bool, max_rows: int) -> QueryResult:
    """Read-only SQL on the history: on the file when free, else through memstream up."""
    path = history_path(settings.data_path)
    if path is not None and path.exists() and not _history_in_use(settings):
        history = HistoryProjection(path, read_only=True)
        try:
            return await asyncio.to_thread(run_readonly, history.con, query, max_rows)
        finally:
            history.close()
    try:
        nc = await connect_nats(settings.nats_url, name="memstream:sql", **settings.nats_auth)
    except ConnectError:
        if path is None:
            raise AdminError(
                f"no history under {settings.data_path} yet, and no memstream running at "
                f"{settings.nats_url}: start it with 'memstream up'"
            ) from None
        raise
    try:
        body = _encoder.encode(SqlRequest(sql=query, max_rows=max_rows))
        try:
            msg = await nc.request(admin_subject("sql"), body, timeout=60)
        except nats.errors.NoRespondersError:
            raise AdminError(
                f"no memstream answers at {settings.nats_url}, and no history database "
                f"under {settings.data_path}"
            ) from None
    finally:
        await nc.close()
    result = decode_admin_reply("sql", msg.data, SqlResult)
    return QueryResult(result.columns, [tuple(r) for r in result.rows], result.truncated)


async def purge_tenant(settings: Settings, tenant: str, url_given: bool) -> PurgeReport:
    """Purge through the running memstream process(es), or on the files when none runs."""
    validate_tenant(tenant)
    async with reach(settings, url_given) as where:
        if where.running:
            return await _purge_remote(where.nc, tenant)
        report = PurgeReport(tenant=tenant)
        await purge_stream(where.nc, tenant, report)
        await asyncio.to_thread(purge_offline, settings, tenant, report)
        return report


async def _purge_remote(nc: NatsClient, tenant: str) -> PurgeReport:
    """Ask every memstream process: each purges the projections it runs (with roles in
    separate processes, each answers), and the reports add up."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    report = PurgeReport(tenant=tenant)
    try:
        await nc.publish(
            admin_subject("purge"), _encoder.encode(PurgeRequest(tenant=tenant)), inbox
        )
        timeout, answers = 120.0, 0
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                break
            report.merge(decode_admin_reply("purge", msg.data, PurgeResult).report)
            answers += 1
            timeout = 1.0  # the other roles answer about as soon
        if not answers:
            raise AdminError("no memstream process answered the purge in 120 s", "unavailable")
        return report
    finally:
        await sub.unsubscribe()

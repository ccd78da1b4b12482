"""What the operator commands do (replay, sql, dead letters, tenant purge), apart from how
they print.

Each works through a running memstream when there is one (over ``memadm.*``), and on
the files under the data dir when there is none.
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
import nats.js.errors
from nats.aio.client import Client as NatsClient

from consumers.nats_server import NatsServer
from consumers.runner import DLQ_ERROR, DLQ_SOURCE_SEQ, DLQ_SOURCE_SUBJECT, ReplayProgress
from consumers.service import HistoryStorage, RebuildResult, Storage, rebuild_offline
from consumers.settings import Settings
from consumers.streams import HEADER_ROOM
from consumers.tenants import PurgeReport, purge_offline, purge_stream
from consumers.vector_storage import VectorStorage
from producers._connect import connect_nats
from projections.analytics import QueryResult, run_readonly
from projections.history import HistoryProjection
from schemas.errors import ConnectError, MemstreamError
from schemas.ids import validate_tenant
from schemas.subjects import DLQ_STREAM, admin_subject

__all__ = [
    "DeadLetterInfo",
    "OpsError",
    "list_dead_letters",
    "purge_tenant",
    "rebuild",
    "retry_dead_letters",
    "sql",
]


class OpsError(MemstreamError):
    code = "bad_request"


@contextlib.asynccontextmanager
async def nats_for(settings: Settings, url_given: bool) -> AsyncIterator[NatsClient]:
    """A connection to memstream's NATS; with nothing running, a broker over the data dir.

    Only when no URL was configured: then the stream is the embedded one, whose store is
    under the data dir, and it can be opened for as long as the command needs it.
    """
    try:
        nc = await connect_nats(settings.nats_url, name="memstream:ops", **settings.nats_auth)
        server = None
    except ConnectError:
        if url_given:
            raise
        store = settings.data_path / "nats" / "jetstream"
        if not store.exists():
            raise OpsError(
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
    path = HistoryStorage(settings.data_path).files.current()
    if path is None or not path.exists():
        return False
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.IOException:
        return True
    return False


async def rebuild(
    settings: Settings,
    projection: str,
    url_given: bool,
    on_progress: Callable[[ReplayProgress], None],
) -> RebuildResult:
    """Rebuild through the running memstream, or on the files when none runs.

    A history database locked by another process means memstream up runs on this data
    dir (it always runs the history projection): then only it may rebuild.
    """
    if not _history_in_use(settings):
        async with nats_for(settings, url_given) as nc:
            if not await _has_responders(nc):
                storage: Storage[Any] = (
                    HistoryStorage(settings.data_path)
                    if projection == "history"
                    else VectorStorage(settings)
                )
                return await rebuild_offline(nc, storage, on_progress)
    async with nats_for(settings, True) as nc:
        return await _rebuild_remote(nc, projection, on_progress)


async def _has_responders(nc: NatsClient) -> bool:
    """Whether a memstream process answers admin requests on this NATS."""
    try:
        await nc.request(admin_subject("ping"), b"{}", timeout=2)
    except nats.errors.NoRespondersError:
        return False
    return True


async def _rebuild_remote(
    nc: NatsClient, projection: str, on_progress: Callable[[ReplayProgress], None]
) -> RebuildResult:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        body = msgspec.json.encode({"projection": projection, "progress": inbox})
        try:
            reply = msgspec.json.decode(
                (await nc.request(admin_subject("replay"), body, timeout=10)).data
            )
        except nats.errors.NoRespondersError:
            raise OpsError(
                "the history database is in use, but no memstream answers on this NATS: "
                "pass the --nats-url that 'memstream up' printed"
            ) from None
        if not reply.get("ok"):
            raise OpsError(reply["error"]["message"])
        while True:
            msg = await sub.next_msg(timeout=None)
            data = msgspec.json.decode(msg.data)
            if "progress" in data:
                on_progress(ReplayProgress(**data["progress"]))
            elif "done" in data:
                return RebuildResult(**data["done"])
            else:
                raise OpsError(data["error"]["message"])
    finally:
        await sub.unsubscribe()


async def sql(settings: Settings, query: str, url_given: bool, max_rows: int) -> QueryResult:
    """Read-only SQL on the history: on the file when free, else through memstream up."""
    path = HistoryStorage(settings.data_path).files.current()
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
            raise OpsError(
                f"no history under {settings.data_path} yet, and no memstream running at "
                f"{settings.nats_url}: start it with 'memstream up'"
            ) from None
        raise
    try:
        body = msgspec.json.encode({"sql": query, "max_rows": max_rows})
        try:
            msg = await nc.request(admin_subject("sql"), body, timeout=60)
        except nats.errors.NoRespondersError:
            raise OpsError(
                f"no memstream answers at {settings.nats_url}, and no history database "
                f"under {settings.data_path}"
            ) from None
        reply = msgspec.json.decode(msg.data)
    finally:
        await nc.close()
    if not reply["ok"]:
        raise OpsError(reply["error"]["message"])
    result = reply["result"]
    return QueryResult(result["columns"], [tuple(r) for r in result["rows"]], result["truncated"])


@dataclass(frozen=True)
class DeadLetterInfo:
    seq: int
    subject: str
    source_subject: str
    source_seq: int
    error: str
    size: int


async def _dead_letters(nc: NatsClient, limit: int) -> AsyncIterator[tuple[DeadLetterInfo, Any]]:
    js = nc.jetstream()
    try:
        info = await js.stream_info(DLQ_STREAM)
    except nats.js.errors.NotFoundError:
        return
    seq, found = info.state.first_seq, 0
    while seq and seq <= info.state.last_seq and found < limit:
        try:
            msg = await js.get_msg(DLQ_STREAM, seq)
        except nats.js.errors.NotFoundError:
            seq += 1
            continue
        headers = msg.headers or {}
        yield (
            DeadLetterInfo(
                seq=seq,
                subject=msg.subject or "",
                source_subject=headers.get(DLQ_SOURCE_SUBJECT, ""),
                source_seq=int(headers.get(DLQ_SOURCE_SEQ, "0") or 0),
                error=headers.get(DLQ_ERROR, ""),
                size=len(msg.data or b""),
            ),
            msg,
        )
        found += 1
        seq += 1


async def list_dead_letters(nc: NatsClient, limit: int = 1000) -> list[DeadLetterInfo]:
    return [info async for info, _ in _dead_letters(nc, limit)]


async def retry_dead_letters(
    nc: NatsClient, seqs: set[int] | None = None, limit: int = 100_000
) -> list[tuple[DeadLetterInfo, int]]:
    """Publish dead letters again to their source subject, then drop them from the DLQ.

    The same source message dead-lettered by both projections is published once (the
    ``Nats-Msg-Id`` is derived from its source sequence). Returns (letter, new seq).
    """
    js = nc.jetstream()
    done: list[tuple[DeadLetterInfo, int]] = []
    async for info, msg in _dead_letters(nc, limit):
        if seqs is not None and info.seq not in seqs:
            continue
        if not info.source_subject:
            continue
        ack = await js.publish(
            info.source_subject,
            msg.data or b"",
            headers={"Nats-Msg-Id": f"dlq-retry:{info.source_seq}"},
        )
        await js.delete_msg(DLQ_STREAM, info.seq)
        done.append((info, ack.seq))
    return done


async def purge_tenant(settings: Settings, tenant: str, url_given: bool) -> PurgeReport:
    """Purge through the running memstream process(es), or on the files when none runs."""
    validate_tenant(tenant)
    if not _history_in_use(settings):
        async with nats_for(settings, url_given) as nc:
            if not await _has_responders(nc):
                report = PurgeReport(tenant)
                await purge_stream(nc, tenant, report)
                await asyncio.to_thread(purge_offline, settings, tenant, report)
                return report
    async with nats_for(settings, True) as nc:
        return await _purge_remote(nc, tenant)


async def _purge_remote(nc: NatsClient, tenant: str) -> PurgeReport:
    """Ask every memstream process: each purges the projections it runs (with roles in
    separate processes, each answers), and the reports add up."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    report = PurgeReport(tenant)
    try:
        await nc.publish(admin_subject("purge"), msgspec.json.encode({"tenant": tenant}), inbox)
        timeout, answers = 120.0, 0
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                break
            reply = msgspec.json.decode(msg.data)
            if not reply.get("ok"):
                raise OpsError(reply["error"]["message"])
            report.merge(PurgeReport(**reply["result"]["report"]))
            answers += 1
            timeout = 1.0  # the other roles answer about as soon
        if not answers:
            raise OpsError("no memstream process answered the purge in 120 s")
        return report
    finally:
        await sub.unsubscribe()

"""What the operator commands do (replay, sql, tenant purge), apart from how they print.

Each works through the running memstream when there is one (over ``memadm.*``), and on
the files under the data dir when there is none: :func:`reach` decides which, once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from memstream.consumers.deployment import deployment_id, hold, partition_of, running
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.service import rebuild_offline
from memstream.consumers.settings import Settings
from memstream.consumers.storage import (
    HistoryStorage,
    open_history,
    vector_storage_from_settings,
)
from memstream.consumers.streams import HEADER_ROOM
from memstream.consumers.tenants import purge_offline, purge_stream
from memstream.producers.connection import connect_nats, or_denied
from memstream.projections.analytics import QueryResult, run_readonly
from memstream.schemas.admin import (
    PingRequest,
    PingResult,
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
from memstream.schemas.errors import AdminError, Forbidden
from memstream.schemas.events import EventDecoder
from memstream.schemas.ids import validate_tenant
from memstream.schemas.subjects import (
    admin_subject,
    reply_inbox_prefix,
    split_nats_user,
    tenant_admin_subject,
)
from memstream.schemas.tenancy import AUDIT_ADMIN

__all__ = ["Reach", "purge_tenant", "reach", "rebuild", "sql"]

_encoder = msgspec.json.Encoder()

R = TypeVar("R")


@dataclass(frozen=True)
class Reach:
    """Where an operator command acts: through the memstream that runs for the
    deployment (``running``), or on the deployment's files with nothing running."""

    nc: NatsClient
    running: bool
    # The deployment admin requests name (None: whichever answers on this NATS).
    deployment: str | None
    data_dir: Path
    nats_url: str
    # The deployments that answered a ping at nats_url, when it was given.
    answering: tuple[PingResult, ...] = ()


async def ping_all(nc: NatsClient, wait: float = 2.0, linger: float = 0.3) -> list[PingResult]:
    """Every memstream deployment answering admin requests on this NATS: each answers a
    ping with its deployment id and data dir. Waits ``wait`` for the first answer and
    ``linger`` more for the others."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    found: list[PingResult] = []
    try:
        await nc.publish(admin_subject("ping"), _encoder.encode(PingRequest()), inbox)
        timeout = wait
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                return found
            if _no_responders(msg):
                return found
            found.append(decode_admin_reply("ping", msg.data, PingResult))
            timeout = linger
    finally:
        await sub.unsubscribe()


def _no_responders(msg: Msg) -> bool:
    """The server's own answer to a publish nobody subscribes to (status 503)."""
    return not msg.data and (msg.headers or {}).get("Status") == "503"


def _pick(answering: list[PingResult], named: str | None, url: str, data_dir: Path) -> str | None:
    """The deployment to act on among those answering at ``url``; AdminError when the one
    named (by --data-dir) is not among them."""
    if named is None:
        return answering[0].deployment if len(answering) == 1 else None
    if any(p.deployment == named for p in answering):
        return named
    others = ", ".join(f"{p.data_dir} (deployment {p.deployment})" for p in answering)
    raise AdminError(
        f"the memstream at {url} serves {others}, not the deployment under {data_dir}: "
        "the command was meant for another deployment; leave out --nats-url to act on "
        f"{data_dir}, or pass the --nats-url of the memstream running there"
    )


@contextlib.asynccontextmanager
async def reach(
    settings: Settings, url_given: bool, data_dir_given: bool = False
) -> AsyncIterator[Reach]:
    """Find the deployment an operator command means, once, for every command.

    - A memstream runs on the data dir (it says so in ``running.json``): act through it,
      at the URL it announced.
    - A NATS URL was given: act through the memstream answering there, refused by it
      when it serves another deployment than the data dir given; with none answering,
      on the files with that NATS's stream.
    - Otherwise nothing runs here: act on the files, with a broker of our own over the
      data dir's stream, holding the data dir so that no memstream starts meanwhile.

    The default URL is never tried: ``--data-dir`` means that deployment and no other.
    """
    data_dir = settings.data_path.resolve()
    local = deployment_id(data_dir)
    here = running(data_dir)
    if here is not None and not url_given:
        if not here.nats_url:
            raise AdminError(
                f"memstream on {data_dir} (pid {here.pid}) is still starting: try again",
                "unavailable",
            )
        async with _connected(settings, here.nats_url) as nc:
            yield Reach(nc, True, here.deployment or local, data_dir, here.nats_url)
        return
    if url_given:
        named = local if data_dir_given else None
        async with _connected(settings, settings.nats_url) as nc:
            answering = await ping_all(nc)
            if not answering and here is not None:
                raise AdminError(
                    f"memstream runs on {data_dir} with NATS {here.nats_url}, and nothing "
                    f"answers at {settings.nats_url}: pass --nats-url {here.nats_url}"
                )
            deployment = _pick(answering, named, settings.nats_url, data_dir) if answering else None
            yield Reach(
                nc, bool(answering), deployment, data_dir, settings.nats_url, tuple(answering)
            )
        return
    store = data_dir / "nats" / "jetstream"
    if not store.exists():
        raise AdminError(
            f"nothing runs on {data_dir} and there is no stream under it: start memstream "
            "there with 'memstream up', or point --data-dir at a deployment"
        )
    with hold(data_dir, ["operator"]):
        server = NatsServer(data_dir, port=0, max_payload=settings.max_event_bytes + HEADER_ROOM)
        await asyncio.to_thread(server.start)
        try:
            async with _connected(settings, server.url, own=True) as nc:
                yield Reach(nc, False, local, data_dir, server.url)
        finally:
            await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def _connected(settings: Settings, url: str, own: bool = False) -> AsyncIterator[NatsClient]:
    """``own``: our own broker over the data dir, which has no users configured."""
    auth: dict[str, Any] = {} if own else dict(settings.nats_auth)
    nc = await connect_nats(url, name="memstream:ops", **auth)
    try:
        yield nc
    finally:
        with contextlib.suppress(nats.errors.Error):
            await nc.drain()


async def rebuild(
    settings: Settings,
    projection: str,
    url_given: bool,
    on_progress: Callable[[ReplayProgress], None],
    data_dir_given: bool = False,
) -> RebuildResult:
    """Rebuild through the running memstream, or on the files when none runs."""
    async with reach(settings, url_given, data_dir_given) as where:
        if where.running and where.deployment is None:
            several = ", ".join(p.data_dir for p in where.answering)
            raise AdminError(
                f"several memstream deployments answer at {where.nats_url} ({several}): "
                "run the replay with the --data-dir of the one meant, on its machine"
            )
        if where.running:
            result = await _rebuild_remote(where, projection, on_progress)
        else:
            decoder = EventDecoder(max_bytes=settings.max_event_bytes)
            # A partition's data dir is rebuilt from its partition's events only.
            part = partition_of(where.data_dir)
            if projection == "history":
                history = HistoryStorage(where.data_dir, settings.quota_defaults)
                history.set_aside_if_damaged()  # the rebuild is the way out of damage
                result = await rebuild_offline(
                    where.nc, history, on_progress, decoder=decoder, partition=part
                )
            else:
                vectors = vector_storage_from_settings(
                    settings, set_aside_damaged=True, partition=part
                )
                result = await rebuild_offline(
                    where.nc, vectors, on_progress, decoder=decoder, partition=part
                )
            result = msgspec.structs.replace(result, data_dir=str(where.data_dir))
        return msgspec.structs.replace(result, nats_url=where.nats_url)


async def _rebuild_remote(
    where: Reach, projection: str, on_progress: Callable[[ReplayProgress], None]
) -> RebuildResult:
    nc = where.nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        request = ReplayRequest(
            projection=projection,  # type: ignore[arg-type]
            progress=inbox,
            deployment=where.deployment,
        )
        try:
            msg = await nc.request(admin_subject("replay"), _encoder.encode(request), timeout=10)
        except nats.errors.NoRespondersError:
            raise AdminError(
                f"no memstream answers at {where.nats_url} any more: is it still running?",
                "unavailable",
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


async def sql(
    settings: Settings,
    query: str,
    url_given: bool,
    max_rows: int,
    data_dir_given: bool = False,
) -> QueryResult:
    """Read-only SQL on the history: on the file when nothing runs on the data dir, else
    through the memstream that runs it."""
    data_dir = settings.data_path.resolve()
    if not url_given and running(data_dir) is None:
        history = open_history(data_dir, read_only=True)
        if history is None:
            raise AdminError(
                f"no history under {data_dir} yet: start memstream there with 'memstream up', "
                "or point --data-dir at a deployment"
            )
        try:
            return await asyncio.to_thread(run_readonly, history.con, query, max_rows)
        finally:
            history.close()
    async with reach(settings, url_given, data_dir_given) as where:
        request = SqlRequest(sql=query, max_rows=max_rows, deployment=where.deployment)
        try:
            msg = await where.nc.request(admin_subject("sql"), _encoder.encode(request), timeout=60)
        except nats.errors.NoRespondersError:
            raise AdminError(f"no memstream answers at {where.nats_url}", "unavailable") from None
    result = decode_admin_reply("sql", msg.data, SqlResult)
    return QueryResult(result.columns, [tuple(r) for r in result.rows], result.truncated)


async def sql_all(settings: Settings, query: str, max_rows: int) -> QueryResult:
    """Read-only SQL on every partition, through one worker of each, the rows merged
    (a first column says which partition each came from)."""
    async with _connected(settings, settings.nats_url) as nc:
        answering = [p for p in await ping_all(nc) if "history" in p.roles]
        if not answering:
            raise AdminError(f"no memstream history answers at {settings.nats_url}", "unavailable")
        # While the partition count changes, two generations answer: the larger one that
        # is complete.
        by_count: dict[int, dict[int, PingResult]] = {}
        for p in answering:
            by_count.setdefault(p.partitions, {}).setdefault(p.partition, p)
        complete = [n for n, parts in by_count.items() if len(parts) == n]
        if not complete:
            have = ", ".join(f"{sorted(parts)} of {n}" for n, parts in by_count.items())
            raise AdminError(
                f"not every partition answers at {settings.nats_url} (partitions {have})",
                "unavailable",
            )
        chosen = by_count[max(complete)]

        async def one(ping: PingResult) -> SqlResult:
            request = SqlRequest(sql=query, max_rows=max_rows, deployment=ping.deployment)
            msg = await nc.request(admin_subject("sql"), _encoder.encode(request), timeout=60)
            return decode_admin_reply("sql", msg.data, SqlResult)

        results = await asyncio.gather(*(one(chosen[k]) for k in sorted(chosen)))
    rows: list[tuple[Any, ...]] = []
    for k, result in zip(sorted(chosen), results, strict=True):
        rows += [(k, *row) for row in result.rows]
    columns = ["partition", *results[0].columns]
    truncated = any(r.truncated for r in results) or len(rows) > max_rows
    return QueryResult(columns, rows[:max_rows], truncated)


async def purge_tenant(
    settings: Settings, tenant: str, url_given: bool, data_dir_given: bool = False
) -> PurgeReport:
    """Purge through the running memstream process(es), or on the files when none runs."""
    validate_tenant(tenant)
    named = split_nats_user(settings.nats_user)
    if named is not None:
        return await _purge_as_tenant_admin(settings, tenant, named)
    async with reach(settings, url_given, data_dir_given) as where:
        if where.running:
            report = await _purge_remote(where.nc, where.deployment, tenant)
        else:
            report = PurgeReport(tenant=tenant, data_dirs=[str(where.data_dir)])
            await purge_stream(where.nc, tenant, report)
            await asyncio.to_thread(purge_offline, settings, tenant, report)
        report.nats_url = where.nats_url
        return report


async def _purge_as_tenant_admin(
    settings: Settings, tenant: str, named: tuple[str, str]
) -> PurgeReport:
    """A tenant's admin user purges its own tenant through whatever memstream runs."""
    if named[0] != tenant:
        raise AdminError(
            f"{settings.nats_user} is a user of tenant {named[0]}: it may purge {named[0]} "
            f"only, not {tenant}",
            "forbidden",
        )
    nc = await connect_tenant_user(settings, "memstream:purge")
    try:
        report = await _purge_remote(nc, None, tenant, tenant_admin_subject("purge", tenant))
    finally:
        with contextlib.suppress(nats.errors.Error):
            await nc.drain()
    report.nats_url = settings.nats_url
    return report


async def connect_tenant_user(settings: Settings, name: str) -> NatsClient:
    """A connection as the user within a tenant the settings name (``<user>@<tenant>``),
    receiving under that user's own inbox."""
    named = split_nats_user(settings.nats_user)
    assert named is not None
    return await connect_nats(
        settings.nats_url, name=name, **settings.nats_auth, inbox_prefix=reply_inbox_prefix(*named)
    )


async def ask_tenant_admin(
    nc: NatsClient, op: str, tenant: str, request: Any, result: type[R]
) -> R:
    """Ask ``memadm.<op>.<tenant>`` (what a tenant's admin user may ask) and decode;
    ``_admin`` (the audit of ops about no one tenant) only the service user may ask."""
    subject = (
        tenant_admin_subject(op, tenant)
        if tenant != AUDIT_ADMIN
        else f"{admin_subject(op)}.{tenant}"
    )
    try:
        msg = await or_denied(
            nc, subject, nc.request(subject, _encoder.encode(request), timeout=30)
        )
    except Forbidden:
        who = "" if tenant == AUDIT_ADMIN else f", or an admin user of tenant {tenant}"
        raise AdminError(
            f"these credentials may not ask {subject}: it takes the service user{who}",
            "forbidden",
        ) from None
    except nats.errors.NoRespondersError:
        raise AdminError(f"no memstream answers {subject}: is it running?", "unavailable") from None
    except nats.errors.TimeoutError:
        raise AdminError(f"no reply on {subject} within 30 s", "unavailable") from None
    return decode_admin_reply(op, msg.data, result)


async def _purge_remote(
    nc: NatsClient, deployment: str | None, tenant: str, subject: str | None = None
) -> PurgeReport:
    """Ask every memstream process of the deployment: each purges the projections it
    runs (with roles in separate processes, each answers), and the reports add up."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    report = PurgeReport(tenant=tenant)
    try:
        request = PurgeRequest(tenant=tenant, deployment=deployment)
        await nc.publish(subject or admin_subject("purge"), _encoder.encode(request), inbox)
        timeout, answers = 120.0, 0
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                break
            if _no_responders(msg):
                break
            report.merge(decode_admin_reply("purge", msg.data, PurgeResult).report)
            answers += 1
            timeout = 1.0  # the other roles answer about as soon
        if not answers:
            raise AdminError("no memstream process answered the purge in 120 s", "unavailable")
        return report
    finally:
        await sub.unsubscribe()

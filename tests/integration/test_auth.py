"""Tenant isolation enforced by NATS itself: a real nats-server with memstream's users."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.auth import TenantCredentials
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.query_worker import QueryWorker
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient
from memstream.producers.connection import NoCredentials, connect_nats, denied
from memstream.schemas.errors import ConnectError, PublishError, QueryError
from memstream.schemas.partitions import slot_of
from memstream.schemas.subjects import reply_inbox_prefix
from tests.conftest import pid_alive
from tests.waiting import wait_for


@contextlib.contextmanager
def auth_server(data: Path) -> Iterator[NatsServer]:
    """A nats-server admitting only the users memstream wrote under ``data`` (as
    ``up --auth`` runs it), stopped by its pid afterwards."""
    server = NatsServer(data, port=0, extra_config='include "../auth/auth.conf"')
    server.start()
    try:
        yield server
    finally:
        pid = server.pid
        server.stop()
        assert pid is not None and not pid_alive(pid)


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NatsServer, TenantCredentials]]:
    """A nats-server admitting only memstream's service user and tenants acme and beta."""
    data = tmp_path_factory.mktemp("secured")
    creds = TenantCredentials(data)
    creds.add("acme")
    creds.add("beta")
    with auth_server(data) as server:
        yield server, creds


async def _as(server: NatsServer, creds: TenantCredentials, tenant: str) -> NatsClient:
    c = creds.tenants()[tenant]
    return await connect_nats(
        server.url, user=c.user, password=c.password, inbox_prefix=reply_inbox_prefix(tenant)
    )


@pytest.fixture
async def service(secured: tuple[NatsServer, TenantCredentials]) -> AsyncIterator[NatsClient]:
    """memstream's side: the streams, and a query worker answering every tenant."""
    server, creds = secured
    svc = creds.service()
    nc = await connect_nats(server.url, user=svc.user, password=svc.password)
    await ensure_streams(nc.jetstream())
    await nc.jetstream().purge_stream("MEMORY")
    worker = QueryWorker(nc, history=None, vectors=None, answers_unknown=True, queue="auth")
    await worker.start()
    try:
        yield nc
    finally:
        await worker.stop()
        await nc.close()


async def test_a_tenant_publishes_and_queries_only_its_own(
    secured: tuple[NatsServer, TenantCredentials], service: NatsClient
) -> None:
    """acme stores its events; publishing to beta's subjects or asking beta's queries is
    refused by the server with a permissions error, and leaves nothing in the stream."""
    server, creds = secured
    nc = await _as(server, creds, "acme")
    try:
        acme = MemoryClient(nc, tenant="acme", agent="a1", ack_timeout=1)
        ack = await acme.store_knowledge("ours", domain="d")
        assert 1 == ack.seq - (await service.jetstream().stream_info("MEMORY")).state.first_seq + 1

        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream().publish("mem.beta.knowledge.stored", b"{}", timeout=1)
        await wait_for(lambda: denied(nc, "mem.beta.knowledge.stored") is not None)

        as_beta = MemoryClient(nc, tenant="beta", agent="a1", ack_timeout=1)
        with pytest.raises(PublishError, match="may not publish to mem.beta.knowledge.stored"):
            await as_beta.store_knowledge("theirs", domain="d")
        as_beta.query_timeout = 1
        with pytest.raises(QueryError) as info:
            await as_beta.query("stats", dict)
        assert "forbidden" == info.value.code

        state = (await service.jetstream().stream_info("MEMORY", subjects_filter=">")).state
        # stored with acme's slot after the subject it was published to
        assert {f"mem.acme.knowledge.stored.{slot_of('acme')}": 1} == state.subjects
    finally:
        await nc.close()


@pytest.mark.parametrize("subject", ["mem.>", "mem.beta.>", "_INBOX_beta.>", "_INBOX.>", ">"])
async def test_a_tenant_cannot_listen_elsewhere(
    secured: tuple[NatsServer, TenantCredentials], service: NatsClient, subject: str
) -> None:
    """A subscription outside acme's own inbox is refused, and receives nothing even
    while beta publishes and gets its replies."""
    server, creds = secured
    spy = await _as(server, creds, "acme")
    beta_nc = await _as(server, creds, "beta")
    try:
        received: list[str] = []

        async def listen(msg: object) -> None:
            received.append(getattr(msg, "subject", ""))

        await spy.subscribe(subject, cb=listen)
        await spy.flush()
        await wait_for(lambda: denied(spy, subject.lower()) is not None, what="the refusal")
        beta = MemoryClient(beta_nc, tenant="beta", agent="b1")
        await beta.store_knowledge("beta's secret", domain="d")
        with pytest.raises(QueryError):  # the worker here has no projections: bad_request
            await beta.query("nope", dict)
        await spy.flush()
        await asyncio.sleep(0)
        assert [] == received
    finally:
        await spy.close()
        await beta_nc.close()


async def test_users_change_without_a_restart(
    secured: tuple[NatsServer, TenantCredentials],
) -> None:
    """A tenant added while the server runs can connect at once; once removed, it is
    disconnected and refused. The server's pid never changes."""
    server, creds = secured
    pid = server.pid
    gamma = creds.add("gamma")
    assert server.pid == creds.reload_server()

    async def gamma_connects() -> bool:
        try:
            nc = await connect_nats(server.url, user="gamma", password=gamma.password)
        except ConnectError:
            return False
        await nc.close()
        return True

    await wait_for(gamma_connects, what="gamma admitted")
    connected = await connect_nats(server.url, user="gamma", password=gamma.password)
    try:
        assert creds.remove("gamma")
        creds.reload_server()
        await wait_for(lambda: not connected.is_connected, what="gamma disconnected")
        with pytest.raises(ConnectError, match="refused the credentials"):
            await connect_nats(server.url, user="gamma", password=gamma.password)
    finally:
        await connected.close()
    assert pid == server.pid


async def test_nobody_else_gets_in(secured: tuple[NatsServer, TenantCredentials]) -> None:
    """No credentials, or a wrong password, is refused with a message saying which."""
    server, _ = secured
    with pytest.raises(NoCredentials, match="admits only users with credentials, and none"):
        await connect_nats(server.url)
    with pytest.raises(ConnectError, match="refused the credentials"):
        await connect_nats(server.url, user="acme", password="guess")

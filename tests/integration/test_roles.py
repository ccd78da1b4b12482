"""Users and roles within a tenant, enforced by a real nats-server's permissions, with
memstream running behind it; and the audit trail naming who asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.auth import TenantCredentials, User
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.ops import ask_tenant_admin
from memstream.producers import MemoryClient
from memstream.producers.connection import connect_nats
from memstream.schemas.admin import AuditRequest, AuditResult, PurgeRequest, PurgeResult
from memstream.schemas.errors import AdminError, ConnectError, Forbidden, PublishError
from memstream.schemas.events import QuotaReapplied, QuotaSet
from tests.integration.test_auth import auth_server
from tests.integration.test_query_worker import running
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Path]]:
    """A nats-server admitting memstream's service user and tenants acme and beta, with
    acme's users research (reader), coder (writer), lead (admin), and beta's boss (admin)."""
    data = tmp_path_factory.mktemp("roles")
    creds = TenantCredentials(data)
    for tenant in ("acme", "beta"):
        creds.add(tenant)
    creds.add_user("acme", "research", "reader")
    creds.add_user("acme", "coder", "writer")
    creds.add_user("acme", "lead", "admin")
    creds.add_user("beta", "boss", "admin")
    with auth_server(data) as server:
        yield server, data


def _user(data: Path, tenant: str, name: str) -> User:
    return next(u for u in TenantCredentials(data).users(tenant) if u.name == name)


@pytest.fixture
async def stack(
    secured: tuple[NatsServer, Path], tmp_path: Path
) -> AsyncIterator[tuple[NatsServer, Path]]:
    server, data = secured
    svc = TenantCredentials(data).service()  # memstream connects as its service user
    env = {"MEMSTREAM_NATS_USER": svc.user, "MEMSTREAM_NATS_PASSWORD": svc.password}
    async with running(server, tmp_path / "memstream", **env):
        yield server, data


async def _client(server: NatsServer, data: Path, tenant: str, name: str) -> MemoryClient:
    user = _user(data, tenant, name)
    return await MemoryClient.connect(
        server.url,
        tenant=tenant,
        agent=f"{name}-agent",
        user=user.credentials.user,
        password=user.password,
    )


async def _as_user(server: NatsServer, data: Path, tenant: str, name: str) -> NatsClient:
    user = _user(data, tenant, name)
    return await connect_nats(
        server.url,
        user=user.credentials.user,
        password=user.password,
        inbox_prefix=user.inbox_prefix,
    )


async def test_a_reader_asks_and_a_writer_writes(stack: tuple[NatsServer, Path]) -> None:
    """The reader's publish and lock are refused by the server and leave nothing; its
    searches are answered, and find what the writer stored."""
    server, data = stack
    reader = await _client(server, data, "acme", "research")
    writer = await _client(server, data, "acme", "coder")
    try:
        reader.ack_timeout = 1
        with pytest.raises(PublishError, match="may not publish to mem.acme.knowledge.stored"):
            await reader.store_knowledge("a reader's note", domain="d")
        with pytest.raises(Forbidden, match="may not take lock 'deploy' of tenant acme"):
            await reader.lock("deploy", ttl_s=5).acquire()

        ack = await writer.store_knowledge("asyncio.gather keeps the order", domain="python")
        async with writer.lock("deploy", ttl_s=5) as held:
            # The reader may see who holds it, though it may not take it.
            seen = await reader.lock("deploy").holder()
            assert seen is not None
            assert ("coder-agent", 5.0, held.token) == (seen.agent, seen.ttl_s, seen.revision)
        assert await reader.lock("deploy").holder() is None
        hits = await reader.search("gather order", min_seq=ack.seq)
        assert ["asyncio.gather keeps the order"] == [h.text for h in hits]
        # The writer's one memory, and nothing the reader tried.
        stats = await reader.stats(min_seq=ack.seq)
        assert {"knowledge": 1} == {k: n for k, n in stats.memories_by_kind.items() if n}
        assert {"coder-agent": 1} == stats.events_by_agent
        # The reader follows the tenant's changes, delivered under its own inbox.
        feed = reader.watch(from_seq=ack.seq)
        first = await asyncio.wait_for(anext(feed), 10)
        later = await writer.store_knowledge("and returns the results in order", domain="python")
        second = await asyncio.wait_for(anext(feed), 10)
        await feed.aclose()
        assert [ack.seq, later.seq] == [first.seq, second.seq]
    finally:
        await reader.close()
        await writer.close()


async def test_no_user_of_a_tenant_sets_its_quota(secured: tuple[NatsServer, Path]) -> None:
    """A tenant's quota is the operator's: the server refuses a quota.set or a
    quota.reapplied from its writer and its admin alike, though both write memories."""
    server, data = secured
    for name in ("coder", "lead"):
        mem = await _client(server, data, "acme", name)
        try:
            mem.ack_timeout = 1
            with pytest.raises(PublishError, match="may not publish to mem.acme.quota.set"):
                await mem.publish(mem.new_event(QuotaSet, memories=1_000_000))
            with pytest.raises(PublishError, match="may not publish to mem.acme.quota.reapplied"):
                await mem.publish(mem.new_event(QuotaReapplied, seqs=(1,)))
            # The same user's memories are written.
            await mem.store_knowledge(f"{name} may write", domain="d")
        finally:
            await mem.close()


async def test_only_an_admin_purges_and_only_its_own_tenant(
    stack: tuple[NatsServer, Path],
) -> None:
    """A writer may not ask for a purge, nor may acme's admin for beta's (by subject or by
    request); acme's admin purges acme, and beta's memory stays."""
    server, data = stack
    acme_writer = await _client(server, data, "acme", "coder")
    beta = await MemoryClient.connect(
        server.url,
        tenant="beta",
        agent="b1",
        user="beta",
        password=TenantCredentials(data).tenants()["beta"].password,
    )
    coder = await _as_user(server, data, "acme", "coder")
    lead = await _as_user(server, data, "acme", "lead")
    try:
        await acme_writer.store_knowledge("acme's", domain="d")
        seq = (await beta.store_knowledge("beta's", domain="d")).seq

        with pytest.raises(AdminError, match="may not ask memadm.purge.acme") as info:
            await ask_tenant_admin(coder, "purge", "acme", PurgeRequest("acme"), PurgeResult)
        assert "forbidden" == info.value.code
        with pytest.raises(AdminError, match="may not ask memadm.purge.beta"):
            await ask_tenant_admin(lead, "purge", "beta", PurgeRequest("beta"), PurgeResult)
        # On its own subject, about another tenant: the responder refuses.
        with pytest.raises(AdminError, match="may be about tenant acme only") as info:
            await ask_tenant_admin(lead, "purge", "acme", PurgeRequest("beta"), PurgeResult)
        assert "forbidden" == info.value.code
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await lead.request("memadm.purge", b'{"tenant": "beta"}', timeout=1)

        done = await ask_tenant_admin(lead, "purge", "acme", PurgeRequest("acme"), PurgeResult)
        assert ("acme", ["history", "vectors"]) == (done.report.tenant, done.projections)
        assert 1 <= done.report.stream_messages
        await wait_for(
            lambda: _count(acme_writer, 0), what="acme's memories gone from the projections"
        )
        left = (await beta.stats(min_seq=seq)).memories_by_kind
        assert {"knowledge": 1} == {k: n for k, n in left.items() if n}
    finally:
        for c in (acme_writer, beta):
            await c.close()
        await coder.close()
        await lead.close()


async def _count(client: MemoryClient, expected: int) -> bool:
    return sum((await client.stats()).memories_by_kind.values()) == expected


async def test_rotating_a_password_stops_the_old_one(secured: tuple[NatsServer, Path]) -> None:
    """After rotate and the server's reload, the new password connects and the old one is
    refused; the connection made with the old one is closed. No restart."""
    server, data = secured
    pid = server.pid
    old = _user(data, "acme", "research")
    connected = await _as_user(server, data, "acme", "research")
    creds = TenantCredentials(data)
    new = creds.rotate_user("acme", "research")
    assert new.password != old.password
    creds.reload_server()
    try:

        async def refused() -> bool:
            try:
                nc = await connect_nats(
                    server.url, user=old.credentials.user, password=old.password
                )
            except ConnectError:
                return True
            await nc.close()
            return False

        await wait_for(refused, what="the old password refused")
        await wait_for(lambda: not connected.is_connected, what="the old connection closed")
        nc = await connect_nats(server.url, user=new.credentials.user, password=new.password)
        await nc.close()
        assert pid == server.pid
    finally:
        await connected.close()


async def test_the_audit_names_who_asked_and_each_admin_reads_its_own(
    stack: tuple[NatsServer, Path],
) -> None:
    """Every query of a short session is in acme's audit with its user, agent and op;
    acme's admin reads acme's trail and is refused beta's; beta's admin sees none of
    acme's."""
    server, data = stack
    reader = await _client(server, data, "acme", "research")
    writer = await _client(server, data, "acme", "coder")
    lead = await _as_user(server, data, "acme", "lead")
    boss = await _as_user(server, data, "beta", "boss")
    try:
        seq = (await writer.store_knowledge("retry with backoff", domain="ops")).seq
        await reader.search("backoff", min_seq=seq)
        await reader.stats()
        await writer.search("retry")
        asked = [("research", "research-agent", "search"), ("research", "research-agent", "stats"),
                 ("coder", "coder-agent", "search")]  # fmt: skip

        async def audited() -> list[tuple[str, str, str]]:
            found = await ask_tenant_admin(lead, "audit", "acme", AuditRequest(), AuditResult)
            return [(r.user, r.agent, r.op) for r in found.records if r.kind == "query"]

        await wait_for(lambda: _has(audited, asked), what="the session's queries in the audit")
        found = await ask_tenant_admin(
            lead, "audit", "acme", AuditRequest(user="coder"), AuditResult
        )
        (search,) = [r for r in found.records if r.op == "search"]
        assert ("acme", "query", "ok", 1) == (
            search.tenant,
            search.kind,
            search.outcome,
            search.results,
        )
        assert 32 == len(search.digest) and search.ms > 0

        with pytest.raises(AdminError, match="may not ask memadm.audit.acme"):
            await ask_tenant_admin(boss, "audit", "acme", AuditRequest(), AuditResult)
        with pytest.raises(AdminError, match="may not ask memadm.audit.beta"):
            await ask_tenant_admin(lead, "audit", "beta", AuditRequest(), AuditResult)
        own = await ask_tenant_admin(boss, "audit", "beta", AuditRequest(), AuditResult)
        assert all(r.tenant == "beta" for r in own.records)
        # Reading the audit is itself audited, as lead's.
        await wait_for(
            lambda: _has(_admin_ops(lead), [("lead", "audit")]), what="the audit read audited"
        )
    finally:
        await reader.close()
        await writer.close()
        await lead.close()
        await boss.close()


def _admin_ops(lead: NatsClient):  # type: ignore[no-untyped-def]
    async def ops() -> list[tuple[str, str]]:
        found = await ask_tenant_admin(lead, "audit", "acme", AuditRequest(), AuditResult)
        return [(r.user, r.op) for r in found.records if r.kind == "admin"]

    return ops


async def _has(read, wanted: list) -> bool:  # type: ignore[no-untyped-def]
    got = await read()
    return all(w in got for w in wanted)

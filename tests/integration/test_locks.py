"""Locks on the broker's key-value bucket: contention, release, expiry, fencing, renewal,
and a tenant that cannot touch another tenant's keys under --auth."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.auth import TenantCredentials
from memstream.consumers.nats_server import NatsServer
from memstream.producers import MemoryClient
from memstream.schemas.errors import LockHeld, LockLost
from tests.integration.test_auth import _as, secured, service  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def client(nc: NatsClient, agent: str, tenant: str = "acme") -> MemoryClient:
    return MemoryClient(nc, tenant=tenant, agent=agent)


async def test_one_holder_at_a_time_then_the_next_after_release(nc: NatsClient) -> None:
    """While a1 holds the lock, a2 is refused (naming the holder); after the release a2
    gets it with a larger fencing token."""
    a1, a2 = client(nc, "a1"), client(nc, "a2")
    async with a1.lock("deploy", ttl_s=30) as first:
        with pytest.raises(LockHeld, match="held by a1"):
            await a2.lock("deploy").acquire()
    async with a2.lock("deploy") as second:
        assert second.token > first.token


async def test_a_waiting_holder_gets_the_lock_when_it_is_released(nc: NatsClient) -> None:
    """With wait_s, a contender waits for the release rather than failing."""
    a1, a2 = client(nc, "a1"), client(nc, "a2")
    first = await a1.lock("queue", ttl_s=30).acquire()
    waiting = asyncio.create_task(a2.lock("queue", wait_s=10).acquire())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert await first.release()
    second = await waiting
    assert second.token > first.token
    await second.release()


async def test_an_expired_lock_goes_to_the_next_and_the_stale_holder_loses_it(
    nc: NatsClient,
) -> None:
    """A holder that neither renews nor releases loses the lock after ttl_s: another
    takes it; the stale holder's renewal raises LockLost and its release does nothing."""
    a1, a2 = client(nc, "a1"), client(nc, "a2")
    stale = await a1.lock("job", ttl_s=1).acquire()
    fresh = await a2.lock("job", ttl_s=30, wait_s=10).acquire()  # once the ttl ran out
    assert fresh.token > stale.token
    with pytest.raises(LockLost):
        await stale.renew()
    assert not await stale.release()
    with pytest.raises(LockHeld):
        await a1.lock("job").acquire()  # still fresh's
    assert await fresh.release()


async def test_renewal_keeps_the_lock_past_its_ttl(nc: NatsClient) -> None:
    """A holder renewing every quarter ttl keeps the lock well past one ttl (a quarter,
    so that a renewal slowed by a loaded machine still comes in time)."""
    a1, a2 = client(nc, "a1"), client(nc, "a2")
    async with a1.lock("long", ttl_s=2) as held:
        for _ in range(6):
            await asyncio.sleep(0.5)
            await held.renew()
        with pytest.raises(LockHeld):
            await a2.lock("long").acquire()


async def test_locks_are_per_tenant(nc: NatsClient) -> None:
    """The same name in two tenants is two locks."""
    async with client(nc, "a1", "acme").lock("shared"), client(nc, "b1", "beta").lock("shared"):
        pass


async def test_a_tenant_cannot_touch_another_tenants_lock(
    secured: tuple[NatsServer, TenantCredentials],  # noqa: F811
    service: NatsClient,  # noqa: F811
) -> None:
    """Under --auth acme takes its own locks; writing or reading beta's key is refused by
    the server, and beta's lock stays beta's."""
    server, creds = secured
    acme_nc = await _as(server, creds, "acme")
    beta_nc = await _as(server, creds, "beta")
    try:
        async with client(acme_nc, "a1", "acme").lock("deploy") as ours:
            assert ours.token > 0
        theirs = await client(beta_nc, "b1", "beta").lock("deploy", ttl_s=30).acquire()
        js = acme_nc.jetstream()
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await js.publish("$KV.MEMLOCK.beta.deploy", b"mine", timeout=1)
        kv = await js.key_value("MEMLOCK")
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await kv.get("beta.deploy")
        assert await theirs.release()
    finally:
        await acme_nc.close()
        await beta_nc.close()

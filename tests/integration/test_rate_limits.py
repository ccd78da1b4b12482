"""Query rate limits per tenant and per user, with memstream running on a real server:
what a burst gets, what the refused are told, limits changed live, workers agreeing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.app import UpInfo
from memstream.consumers.limits import QueryLimits, set_limits
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.ops import ask_tenant_admin
from memstream.producers import MemoryClient
from memstream.producers.connection import connect_nats
from memstream.schemas.admin import AuditRequest, AuditResult
from memstream.schemas.errors import QueryError
from memstream.schemas.subjects import reply_inbox_prefix
from memstream.schemas.tenancy import TenantLimits
from tests.integration.test_metrics import samples, value
from tests.integration.test_query_worker import running
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def stack(nc: NatsClient, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[UpInfo]:
    """memstream with the server's default of 10 queries a second per tenant."""
    env = {"MEMSTREAM_QUERIES_PER_SECOND": "10", "MEMSTREAM_METRICS_PORT": "0"}
    async with running(nats_server, tmp_path / "data", **env) as info:
        yield info


async def _burst(
    nc: NatsClient, tenant: str, n: int, op: str = "stats", body: bytes = b"{}"
) -> tuple[list[dict[str, Any]], float]:
    """``n`` queries ``op`` of ``tenant`` at once: their replies, and how long they took."""
    started = time.monotonic()
    msgs = await asyncio.gather(
        *(nc.request(f"memq.{tenant}.{op}", body, timeout=30) for _ in range(n))
    )
    return [msgspec.json.decode(m.data) for m in msgs], time.monotonic() - started


async def test_a_burst_gets_the_bucket_and_the_rest_are_told_when(
    nc: NatsClient, stack: UpInfo
) -> None:
    """50 at once against 10 a second: the bucket's 10, plus what refilled while they
    were answered, are answered; the rest are rate_limited with a retry_after_ms after
    which the same query is answered. Each one, answered or not, is in the audit."""
    await nc.request("memq.warm.stats", b"{}", timeout=30)  # the workers are answering
    replies, took = await _burst(nc, "acme", 50)
    answered = [r for r in replies if r["ok"]]
    limited = [r["error"] for r in replies if not r["ok"]]
    assert 10 <= len(answered) <= 10 + int(10 * took) + 1, took
    assert 50 == len(answered) + len(limited)
    assert {"rate_limited"} == {e["code"] for e in limited}
    waits = [e["retry_after_ms"] for e in limited]
    assert all(0 < w <= 100 for w in waits), waits  # one token at 10 a second
    assert "tenant acme is over its 10 queries a second: ask again in" in limited[0]["message"]

    await asyncio.sleep(max(waits) / 1000)  # the wait the worker asked for
    again = msgspec.json.decode((await nc.request("memq.acme.stats", b"{}", timeout=30)).data)
    assert again["ok"], again

    async def audited() -> bool:
        found = await ask_tenant_admin(nc, "audit", "acme", AuditRequest(op="stats"), AuditResult)
        outcomes = [r.outcome for r in found.records]
        return (outcomes.count("ok"), outcomes.count("rate_limited")) == (
            len(answered) + 1,
            len(limited),
        )

    await wait_for(audited, what="every query of the burst in the audit")

    # /metrics counts the refused by op and code, the searcher's searches among them
    # (reported to its parent once a second).
    searched, _ = await _burst(nc, "acme", 30, "search", b'{"query": "anything"}')
    refused = sum(not r["ok"] for r in searched)
    assert refused >= 10
    assert stack.metrics_url is not None
    errors = "memstream_query_errors_total"

    async def counted() -> bool:
        found = await samples(stack.metrics_url or "")
        return (
            value(found, errors, op="stats", code="rate_limited"),
            value(found, errors, op="search", code="rate_limited"),
        ) == (len(limited), refused)

    await wait_for(counted, 10, "the refused in the metrics")


async def test_a_tenants_limits_change_while_it_runs(nc: NatsClient, stack: UpInfo) -> None:
    """Raised to 1,000 a second in MEMTENANT, a burst of 30 is answered whole; back to the
    default, it is not. No restart."""
    await set_limits(nc, "gamma", TenantLimits(queries_per_second=1000))

    async def all_answered() -> bool:
        replies, _ = await _burst(nc, "gamma", 30)
        return all(r["ok"] for r in replies)

    await wait_for(all_answered, what="the raised limit taken")
    assert TenantLimits() == await set_limits(nc, "gamma", TenantLimits(), reset=True)

    async def some_refused() -> bool:
        replies, _ = await _burst(nc, "gamma", 30)
        return any(not r["ok"] for r in replies)

    await wait_for(some_refused, what="the default back")


async def test_each_user_has_its_own_rate(
    nc: NatsClient, nats_server: NatsServer, stack: UpInfo
) -> None:
    """With 2 a second per user, alice's burst gets 2 answered while bob is still answered:
    the worker tells them apart by their reply inboxes."""
    await set_limits(nc, "delta", TenantLimits(user_queries_per_second=2))
    alice = await connect_nats(nats_server.url, inbox_prefix=reply_inbox_prefix("delta", "alice"))
    bob = await connect_nats(nats_server.url, inbox_prefix=reply_inbox_prefix("delta", "bob"))
    try:

        async def alice_limited() -> bool:
            replies, _ = await _burst(alice, "delta", 6)
            return sum(r["ok"] for r in replies) <= 3  # 2, and one more if it refilled

        await wait_for(alice_limited, what="alice held to her rate")
        replies, _ = await _burst(bob, "delta", 2)
        assert [True, True] == [r["ok"] for r in replies]
    finally:
        await alice.close()
        await bob.close()


async def test_the_sdk_asks_again_once_when_the_wait_is_short(
    nc: NatsClient, stack: UpInfo
) -> None:
    """At 2 a second with room for 1, two queries one after the other are both answered:
    the SDK waited the retry_after_ms it was given and asked again. Over an hourly limit, whose
    wait is long, it raises QueryError at once, with the wait."""

    async def refusing(waits_over_ms: int) -> bool:
        replies, _ = await _burst(nc, "omega", 3)
        waits = [r["error"]["retry_after_ms"] for r in replies if not r["ok"]]
        return bool(waits) and min(waits) > waits_over_ms

    await set_limits(nc, "omega", TenantLimits(queries_per_second=2, burst=1))
    await wait_for(lambda: refusing(0), what="omega's limit taken")
    mem = MemoryClient(nc, tenant="omega", agent="a1")
    started = time.monotonic()
    await mem.stats()
    await mem.stats()
    assert time.monotonic() - started >= 0.4  # the second waited half a second at least

    await set_limits(nc, "omega", TenantLimits(queries_per_second=0, queries_per_hour=1))
    await wait_for(lambda: refusing(1000), what="the hourly limit taken")
    started = time.monotonic()
    with pytest.raises(QueryError) as info:
        await mem.stats()
    assert "rate_limited" == info.value.code
    assert "tenant omega is over its 1 query an hour: ask again in 60 min" in str(info.value)
    assert info.value.retry_after_ms is not None and info.value.retry_after_ms > 3_000_000
    assert time.monotonic() - started < 1


async def test_workers_take_what_the_others_admitted(nats_server: NatsServer) -> None:
    """Two workers' buckets for one tenant: what one admits, the other counts within a
    tenth of a second, so together they admit the tenant's rate, not twice it."""
    defaults = TenantLimits(queries_per_second=10)
    one, two = QueryLimits(defaults), QueryLimits(defaults)
    nc1 = await connect_nats(nats_server.url)
    nc2 = await connect_nats(nats_server.url)
    try:
        await one.start(nc1)
        await two.start(nc2)
        assert 0 == two.peek("acme", "a")
        assert [0] * 10 == [one.admit("acme", "a") for _ in range(10)]
        await wait_for(lambda: two.peek("acme", "a") > 0, timeout=5, what="two told")
        assert two.admit("acme", "a") > 0
    finally:
        await one.stop()
        await two.stop()
        await nc1.close()
        await nc2.close()

"""The change feed: a tenant's own events in order, from a sequence or from now, by
type; and under --auth, nothing of another tenant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.auth import TenantCredentials
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.query_worker import QueryWorker
from memstream.producers import MemoryClient
from memstream.producers._watch import Change
from memstream.schemas.errors import QueryError
from tests.integration.test_auth import _as, secured, service  # noqa: F401  (fixtures)
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def worker(nc: NatsClient) -> AsyncIterator[QueryWorker]:
    """The worker that answers watch (it needs no projection)."""
    w = QueryWorker(nc, history=None, vectors=None, answers_unknown=True)
    await w.start()
    yield w
    await w.stop()


async def take(feed: AsyncGenerator[Change, None], n: int) -> list[Change]:
    got = [await asyncio.wait_for(anext(feed), 10) for _ in range(n)]
    await feed.aclose()
    return got


async def test_a_feed_from_a_sequence_then_live(nc: NatsClient, worker: QueryWorker) -> None:
    """From a sequence, the events already there come first, then those published
    while following, in stream order, each once."""
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    first = await mem.store_knowledge("one", domain="d")
    await mem.store_knowledge("two", domain="d")
    feed = mem.watch(from_seq=first.seq)
    head = [await asyncio.wait_for(anext(feed), 10) for _ in range(2)]
    later = await mem.add_turn("s1", "user", "three")
    tail = await asyncio.wait_for(anext(feed), 10)
    await feed.aclose()
    assert [first.seq, first.seq + 1, later.seq] == [c.seq for c in [*head, tail]]
    assert ["one", "two", "three"] == [c.event.content for c in [*head, tail]]  # type: ignore[union-attr]


async def test_a_feed_from_now_by_type(nc: NatsClient, worker: QueryWorker) -> None:
    """Without from_seq only what is published from now on comes; types narrow it."""
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    await mem.store_knowledge("before", domain="d")
    before = set(await watching(nc))
    feed = mem.watch(types=["task.created"])
    waiting = asyncio.create_task(take(feed, 1))

    async def started() -> bool:
        return bool(set(await watching(nc)) - before)

    await wait_for(started, what="the feed's consumer")
    await mem.store_knowledge("not a task", domain="d")
    created = await mem.task_created("the task")
    [change] = await waiting
    assert (created.seq, "task.created") == (change.seq, change.event.type)


async def watching(nc: NatsClient) -> list[str]:
    infos = await nc.jetstream().consumers_info("MEMORY")
    return [i.name for i in infos if i.name.startswith("watch-acme-")]


async def test_a_feed_that_loses_its_consumer_goes_on_where_it_was(
    nc: NatsClient, worker: QueryWorker
) -> None:
    """The consumer deleted under it (as a broker restart loses it), the feed notices
    the silence and starts again after the last event it gave: nothing lost or doubled."""
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    first = await mem.store_knowledge("one", domain="d")
    feed = mem.watch(from_seq=first.seq, heartbeat_s=0.5)
    assert first.seq == (await asyncio.wait_for(anext(feed), 10)).seq
    for name in await watching(nc):  # this feed's, and any left by the tests before
        await nc.jetstream().delete_consumer("MEMORY", name)
    acks = [await mem.store_knowledge(f"after {i}", domain="d") for i in range(3)]
    rest = [await asyncio.wait_for(anext(feed), 10) for _ in range(3)]
    await feed.aclose()
    assert [a.seq for a in acks] == [c.seq for c in rest]


async def test_a_bad_watch_is_a_bad_request(nc: NatsClient, worker: QueryWorker) -> None:
    """An inbox outside the tenant's prefix or an unknown type is refused, named."""
    for body, says in (
        ({"deliver_to": "_INBOX_beta.x"}, "deliver_to must be a subject under _INBOX_acme."),
        ({"deliver_to": "_INBOX_acme.x", "types": ["nope.nope"]}, "unknown event type"),
    ):
        msg = await nc.request("memq.acme.watch", msgspec.json.encode(body), timeout=5)
        reply = msgspec.json.decode(msg.data)
        assert "bad_request" == reply["error"]["code"]
        assert says in reply["error"]["message"]


def test_the_blocking_feed(nats_server: NatsServer) -> None:
    """SyncMemoryClient.watch yields the same changes, blocking."""
    from memstream.producers import SyncMemoryClient

    async def serve(stop: asyncio.Event, ready: asyncio.Event) -> None:
        from memstream.producers.connection import connect_nats

        svc = await connect_nats(nats_server.url)
        w = QueryWorker(svc, history=None, vectors=None, answers_unknown=True)
        await w.start()
        ready.set()
        await stop.wait()
        await w.stop()
        await svc.close()

    import threading

    loop = asyncio.new_event_loop()
    stop, ready = asyncio.Event(), asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(stop, ready),))
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(ready.wait(), loop).result(10)
        with SyncMemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as mem:
            ack = mem.store_solution("p", "s")
            feed = mem.watch(from_seq=ack.seq)
            change = next(feed)
            feed.close()
            assert (ack.seq, "solution.stored") == (change.seq, change.event.type)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


async def test_under_auth_a_tenant_follows_its_own_and_not_anothers(
    secured: tuple[NatsServer, TenantCredentials],  # noqa: F811
    service: NatsClient,  # noqa: F811
) -> None:
    """acme follows its events from a sequence; beta's events never reach it; asking
    for beta's feed is refused by the server."""
    server, creds = secured
    acme_nc = await _as(server, creds, "acme")
    beta_nc = await _as(server, creds, "beta")
    try:
        acme = MemoryClient(acme_nc, tenant="acme", agent="a1")
        beta = MemoryClient(beta_nc, tenant="beta", agent="b1")
        mine = await acme.store_knowledge("ours", domain="d")
        await beta.store_knowledge("theirs", domain="d")
        last = await acme.store_knowledge("ours again", domain="d")
        got = await take(acme.watch(from_seq=mine.seq), 2)
        assert [mine.seq, last.seq] == [c.seq for c in got]
        assert {"acme"} == {c.event.tenant for c in got}
        as_beta = MemoryClient(acme_nc, tenant="beta", agent="a1")
        as_beta.query_timeout = 1
        with pytest.raises(QueryError) as refused:
            await take(as_beta.watch(), 1)
        assert "forbidden" == refused.value.code
    finally:
        await acme_nc.close()
        await beta_nc.close()

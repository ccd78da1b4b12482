"""The producer SDK against a real JetStream: what lands in the stream, and how."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import nats
import pytest
from nats.aio.client import Client as NatsClient

from memstream import OtherEventLoop
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient, SyncMemoryClient
from memstream.schemas import events as ev
from memstream.schemas.errors import ConnectError, EventTooLarge, InvalidEvent, PublishError
from memstream.schemas.events import decode_event
from memstream.schemas.partitions import slot_of


async def _stored(nc: NatsClient, seq: int) -> tuple[str, dict[str, str], bytes]:
    msg = await nc.jetstream().get_msg("MEMORY", seq)
    return msg.subject, dict(msg.headers or {}), msg.data or b""


async def _count(nc: NatsClient) -> int:
    return (await nc.jetstream().stream_info("MEMORY")).state.messages


async def test_every_typed_method_stores_a_contract_event(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """Each typed method publishes its event type on mem.<tenant>.<type>, id as Nats-Msg-Id."""
    async with await MemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as mem:
        acks = [
            await mem.store_knowledge("gather is concurrent", domain="python", tags=["asyncio"]),
            await mem.store_solution("flaky test", "wait for a condition"),
            await mem.revise("m1", content="revised"),
            await mem.forget("m1", reason="wrong", erase=True),
            await mem.link("m1", "m2", "supports"),
            await mem.record_collaboration("review", participants=["a1", "a2"], outcome="ok"),
            await mem.send_message("i1", "look here", recipients=["a2"]),
            await mem.task_created("write tests", task_id="t1", assignee="a2"),
            await mem.task_started("t1"),
            await mem.task_completed("t1", output={"files": 3}),
            await mem.task_failed("t2", "timeout"),
            await mem.record_flow_run("f1", "ok", duration_ms=5),
            await mem.set_context("k", {"branch": "main"}, ttl_s=30),
            await mem.clear_context("k"),
            await mem.add_turn("s1", "user", "hi", task_id="t1"),
            await mem.record_tool_use("grep", args=["x"], ok=True, correlation_id="c9"),
            await mem.remove_turns("s1", seqs=[1]),
        ]
    seen_types = []
    for ack in acks:
        subject, headers, body = await _stored(nc, ack.seq)
        event = decode_event(body)
        assert not isinstance(event, ev.UnknownEvent)
        ev.check_subject(event, subject)
        assert ack.id == event.id == headers["Nats-Msg-Id"]
        assert ("acme", "a1", False) == (event.tenant, event.agent, ack.duplicate)
        seen_types.append(event.type)
    # Every type an agent writes; a tenant's quota is the operator's (memstream tenant quota).
    assert sorted(set(ev.EVENT_TYPES) - ev.OPERATOR_TYPES) == sorted(seen_types)
    # The trace fields travel with the event.
    _, _, body = await _stored(nc, acks[14].seq)
    assert "t1" == decode_event(body).task_id
    _, _, body = await _stored(nc, acks[15].seq)
    assert "c9" == decode_event(body).correlation_id


async def test_republishing_an_id_is_reported_as_duplicate(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """The same event published twice is stored once; the second ack says duplicate."""
    async with await MemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as mem:
        event = mem.new_event(ev.TaskStarted, task_id="t1")
        first = await mem.publish(event)
        again = await mem.publish(event)
    assert (False, True) == (first.duplicate, again.duplicate)
    assert first.seq == again.seq
    assert 1 == await _count(nc)


async def test_publish_many_keeps_order_with_a_small_window(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """A batch larger than the window is stored whole, in order, acks in input order."""
    async with await MemoryClient.connect(
        nats_server.url, tenant="acme", agent="a1", window=8
    ) as mem:
        events = [
            mem.new_event(ev.ConversationTurn, session_id="s", role="user", content=f"turn {i}")
            for i in range(500)
        ]
        acks = await mem.publish_many(events)
    assert [e.id for e in events] == [a.id for a in acks]
    seqs = [a.seq for a in acks]
    assert list(range(seqs[0], seqs[0] + 500)) == seqs
    for i in (0, 250, 499):
        _, _, body = await _stored(nc, seqs[i])
        assert f"turn {i}" == decode_event(body).content  # type: ignore[union-attr]


async def test_invalid_event_in_a_batch_sends_nothing(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """Validation happens before the first send: one bad event, nothing stored."""
    async with await MemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as mem:
        good = [mem.new_event(ev.TaskStarted, task_id=f"t{i}") for i in range(5)]
        bad = mem.new_event(ev.TaskStarted, task_id="x" * 200)
        with pytest.raises(
            InvalidEvent,
            match="task.started event does not match the "
            "contract: Expected `str` of length <= 128 - at `\\$.task_id`",
        ):
            await mem.publish_many([*good[:2], bad, *good[2:]])
        big = mem.new_event(
            ev.KnowledgeStored, memory_id="m", domain="d", content="x" * (1024 * 1024)
        )
        with pytest.raises(EventTooLarge, match="over the limit of 1048576 bytes"):
            await mem.publish(big)
        with pytest.raises(InvalidEvent, match="at `\\$.tenant`"):
            await mem.publish(
                ev.TaskStarted(id="e", tenant="Bad Tenant", agent="a", ts=ev.utc_now(), task_id="t")
            )
    assert 0 == await _count(nc)


async def test_raw_nats_client_speaks_the_contract(nc: NatsClient) -> None:
    """A plain client publishing JSON with Nats-Msg-Id is stored, then seen as a duplicate."""
    raw = await nats.connect(nc.connected_url.geturl())  # type: ignore[union-attr]
    js = raw.jetstream()
    body = msgspec.json.encode(
        {
            "type": "knowledge.stored",
            "id": "ext-0001",
            "tenant": "acme",
            "agent": "go-agent",
            "ts": "2026-11-21T12:00:00Z",
            "memory_id": "ext-m1",
            "domain": "go",
            "content": "errgroup cancels siblings on the first error",
        }
    )
    first = await js.publish("mem.acme.knowledge.stored", body, headers={"Nats-Msg-Id": "ext-0001"})
    again = await js.publish("mem.acme.knowledge.stored", body, headers={"Nats-Msg-Id": "ext-0001"})
    await raw.close()
    assert (False, True, first.seq) == (bool(first.duplicate), again.duplicate, again.seq)
    subject, _, stored = await _stored(nc, first.seq)
    event = decode_event(stored)
    ev.check_subject(event, subject)
    assert isinstance(event, ev.KnowledgeStored)
    assert "ext-m1" == event.memory_id


async def test_no_stream_is_a_publish_error(nc: NatsClient, nats_server: NatsServer) -> None:
    """Publishing with no stream behind the subject names the fix."""
    js = nc.jetstream()
    await js.delete_stream("MEMORY")
    try:
        async with await MemoryClient.connect(
            nats_server.url, tenant="acme", agent="a1", ack_timeout=1
        ) as mem:
            with pytest.raises(PublishError, match="run 'memstream up'"):
                await mem.task_started("t1")
            with pytest.raises(PublishError) as info:
                await mem.publish_many([mem.new_event(ev.TaskStarted, task_id="t")] * 3)
            assert {0, 1, 2} == set(info.value.failures)
    finally:
        await ensure_streams(js)


async def test_connect_failure_is_clear() -> None:
    """An unreachable server is a ConnectError naming the URL and the way out."""
    with pytest.raises(
        ConnectError, match="cannot reach NATS at nats://127.0.0.1:1 .*memstream up"
    ):
        await MemoryClient.connect("nats://127.0.0.1:1", tenant="acme", agent="a1")


def test_sync_client_from_a_plain_thread(nats_server: NatsServer) -> None:
    """The blocking twin publishes from threads with no event loop of their own."""
    results: list[object] = []

    def agent() -> None:
        with SyncMemoryClient.connect(nats_server.url, tenant="beta", agent="sync") as mem:
            results.append(mem.store_knowledge("threads work", domain="python"))
            results.append(
                mem.publish_many(
                    [mem.new_event(ev.TaskStarted, task_id=f"t{i}") for i in range(20)]
                )
            )

    worker = threading.Thread(target=agent)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    single, batch = results
    assert 20 == len(batch)  # type: ignore[arg-type]
    assert [single.seq + 1 + i for i in range(20)] == [a.seq for a in batch]  # type: ignore


def test_sync_client_rejects_bad_tenant_without_connecting() -> None:
    """The tenant is checked before any connection is attempted."""
    with pytest.raises(Exception, match="tenant 'Acme Corp' is not a valid tenant id"):
        SyncMemoryClient.connect("nats://127.0.0.1:1", tenant="Acme Corp", agent="a")


async def test_concurrent_publishers_share_a_connection(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """Several coroutines publishing through one client all get distinct sequences."""
    async with await MemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as mem:
        acks = await asyncio.gather(*[mem.task_started(f"t{i}") for i in range(50)])
    assert 50 == len({a.seq for a in acks})
    assert 50 == await _count(nc)


async def test_any_live_seed_of_a_list_will_do(nats_server: NatsServer, nc: NatsClient) -> None:
    """With the first seed down, the client connects through the next one."""
    seeds = f"nats://127.0.0.1:1,{nats_server.url}"
    async with await MemoryClient.connect(seeds, tenant="acme", agent="a1") as mem:
        ack = await mem.store_knowledge("seeds are a list", domain="nats")
    subject, _, body = await _stored(nc, ack.seq)
    stored = f"mem.acme.knowledge.stored.{slot_of('acme')}"
    assert (stored, ack.id) == (subject, decode_event(body).id)


async def test_a_publish_rides_out_a_moment_without_a_stream(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """No stream answers for a moment (as in a stream-leader election): the publish is
    tried again with backoff, not failed at once, and the event is stored once."""
    js = nc.jetstream()
    await js.delete_stream("MEMORY")
    async with await MemoryClient.connect(
        nats_server.url, tenant="acme", agent="a1", ack_timeout=5
    ) as mem:
        publishing = asyncio.ensure_future(mem.task_started("t1"))
        await asyncio.sleep(0.3)  # the outage: nothing to wait for but time
        assert not publishing.done()
        await ensure_streams(js)
        ack = await publishing
    assert (1, False) == (ack.seq, ack.duplicate)
    assert 1 == await _count(nc)


async def test_publish_many_rides_out_a_moment_without_a_stream(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """The batch twin: the events no stream took are sent again with backoff, and each
    is stored once, in the batch's order of acks."""
    js = nc.jetstream()
    await js.delete_stream("MEMORY")
    async with await MemoryClient.connect(
        nats_server.url, tenant="acme", agent="a1", ack_timeout=5
    ) as mem:
        events = [mem.new_event(ev.TaskStarted, task_id=f"t{i}") for i in range(50)]
        publishing = asyncio.ensure_future(mem.publish_many(events))
        await asyncio.sleep(0.3)  # the outage: nothing to wait for but time
        assert not publishing.done()
        await ensure_streams(js)
        acks = await publishing
    assert [e.id for e in events] == [a.id for a in acks]
    assert not any(a.duplicate for a in acks)
    assert 50 == await _count(nc)


def test_a_client_reused_in_a_second_event_loop_says_so_at_once(
    nats_server: NatsServer,
) -> None:
    """Some frameworks call asyncio.run per step: a client made in the first loop is
    told at once, in words that name the cause, not after a timeout blaming the worker."""
    client = asyncio.run(MemoryClient.connect(nats_server.url, tenant="acme", agent="a1"))
    started = time.monotonic()
    with pytest.raises(OtherEventLoop, match="made in another event loop.*SyncMemoryClient"):
        asyncio.run(client.search("anything"))
    with pytest.raises(OtherEventLoop, match="made in another event loop"):
        asyncio.run(client.store_knowledge("a fact", domain="ops"))
    with pytest.raises(OtherEventLoop, match="made in another event loop"):
        asyncio.run(client.publish_many([client.new_event(ev.KnowledgeStored, memory_id="m",
                                                          domain="ops", content="x")]))  # fmt: skip
    assert time.monotonic() - started < 2.0

    async def fresh() -> int:
        async with await MemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as c:
            return (await c.store_knowledge("a fact", domain="ops")).seq

    assert asyncio.run(fresh()) >= 1  # made inside the loop that uses it: works

"""How a projection's pull hands its events over: a steady flow in batches at least the
spacing apart, and the first event after a quiet spell without waiting for it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from nats.aio.client import Client as NatsClient

from memstream.consumers._pull import BatchPuller
from memstream.consumers.streams import consumer_config
from memstream.producers import MemoryClient
from memstream.schemas import events as ev
from memstream.schemas.subjects import EVENT_STREAM

SPACING = 0.2


async def _puller(nc: NatsClient, name: str) -> BatchPuller:
    await nc.jetstream().add_consumer(EVENT_STREAM, consumer_config(name))
    puller = BatchPuller(nc, EVENT_STREAM, name, spacing=SPACING)
    await puller.start()
    return puller


def _fact(client: MemoryClient, i: int) -> ev.KnowledgeStored:
    return client.new_event(ev.KnowledgeStored, memory_id=f"m{i}", domain="d", content=f"{i}")


async def _steady(client: MemoryClient, n: int, every: float) -> None:
    for i in range(n):
        await client.publish(_fact(client, i))
        await asyncio.sleep(every)


async def test_a_steady_flow_is_handed_over_in_batches_the_spacing_apart(nc: NatsClient) -> None:
    puller = await _puller(nc, "spaced")
    client = MemoryClient(nc, tenant="acme", agent="writer")
    loop = asyncio.get_running_loop()
    publishing = asyncio.create_task(_steady(client, 120, 0.01))  # ~100 events a second
    handed: list[tuple[float, int]] = []
    try:
        while sum(n for _, n in handed) < 120:
            assert not publishing.done() or publishing.exception() is None
            msgs = await puller.fetch(2000, timeout=1.0)
            if msgs:
                handed.append((loop.time(), len(msgs)))
                for m in msgs:
                    await m.ack()
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        await puller.stop()
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(handed)]
    assert gaps and min(gaps) >= SPACING, gaps
    # Each batch holds the events of its spacing (~19 here), not one publish each.
    assert all(n >= 5 for _, n in handed[1:-1]), handed


async def test_the_first_event_after_a_quiet_spell_is_handed_over_at_once(
    nc: NatsClient,
) -> None:
    puller = await _puller(nc, "quiet")
    client = MemoryClient(nc, tenant="acme", agent="writer")
    loop = asyncio.get_running_loop()
    try:
        await client.publish(_fact(client, 1))
        assert len(await puller.fetch(2000, timeout=1.0)) == 1
        # Quiet for longer than the spacing: the next lone event does not wait for it.
        await asyncio.sleep(SPACING * 1.5)
        published = loop.time()
        await client.publish(_fact(client, 2))
        msgs = await puller.fetch(2000, timeout=1.0)
        assert [m.data for m in msgs] and len(msgs) == 1
        assert loop.time() - published < SPACING / 2
    finally:
        await puller.stop()

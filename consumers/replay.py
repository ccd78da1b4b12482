"""The replay runner: the whole stream, in order, into a projection (a rebuild).

It feeds the same ``apply`` as the live runner, from an ephemeral ordered consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from memstream.consumers._pull import BatchPuller
from memstream.consumers.decoding import MessageDecoder, delivery_seq, stream_seq
from memstream.consumers.log import get_logger
from memstream.consumers.runner import RunnerStats, erase_from_stream
from memstream.projections.base import Applied, Projection
from memstream.schemas.admin import ReplayProgress
from memstream.schemas.events import EventDecoder
from memstream.schemas.partitions import WHOLE, Partition
from memstream.schemas.subjects import EVENT_STREAM

log = get_logger("memstream.replay")

__all__ = ["replay"]


def _gap(msgs: list[Msg], expected: int) -> int | None:
    """Where the consumer's delivery sequence skips in ``msgs``, or None."""
    for i, msg in enumerate(msgs):
        if delivery_seq(msg.reply) != expected + i:
            return i
    return None


async def replay(
    nc: NatsClient,
    projection: Projection,
    *,
    batch_size: int = 20_000,
    until: Callable[[int], Awaitable[bool]] | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    decoder: EventDecoder | None = None,
    eager: bool = False,
    partition: Partition = WHOLE,
) -> RunnerStats:
    """Apply the whole stream to ``projection`` from an ordered consumer.

    Stops at the first batch boundary where nothing is pending and ``until(checkpoint)``
    holds (by default, as soon as it has caught up); ``until`` may pause whatever it waits
    for, so the target stops moving. Once asked, ``until`` is asked again at every batch
    boundary, pending or not. ``eager``: ``until`` is asked at every batch boundary from
    the first, for a target caught up to a mark short of the stream's end (a copy that
    needs what the live projection applied, not what was published since). Dead letters
    are counted, not published again: the live runner already filed them.
    """
    js = nc.jetstream()
    info = await js.stream_info(EVENT_STREAM)
    total = info.state.messages
    stats = RunnerStats()
    decoder_ = MessageDecoder(projection.name, decoder, partition)
    if total == 0 and (until is None or await until(projection.checkpoint)):
        return stats
    start = projection.checkpoint + 1
    if start > info.state.last_seq and (until is None or await until(projection.checkpoint)):
        return stats  # a copy that holds the whole stream already: nothing to catch up
    # An ephemeral pull consumer with no acks: in order, nothing redelivered, and gone
    # by itself if this process dies (inactive_threshold). A target that holds part of
    # the stream already (a copy of the projection) reads on from its checkpoint.
    filters = partition.event_filters()

    async def reader(start: int) -> tuple[str, int]:
        """A new ephemeral consumer from stream sequence ``start``: its name, and how
        many of the partition's events it has to deliver."""
        name = f"replay-{secrets.token_hex(6)}"
        created = await js.add_consumer(
            EVENT_STREAM,
            ConsumerConfig(
                name=name,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
                opt_start_seq=start if start > 1 else None,
                ack_policy=AckPolicy.NONE,
                filter_subject=filters[0] if len(filters) == 1 else None,
                filter_subjects=filters if len(filters) > 1 else None,
                inactive_threshold=30.0,
                mem_storage=True,
                max_waiting=4,
            ),
        )
        return name, int(created.num_pending or 0)

    name, to_deliver = await reader(start)
    if not to_deliver and (until is None or await until(projection.checkpoint)):
        # None of the partition's events are in the stream (yet): nothing to fetch.
        with contextlib.suppress(nats.errors.Error):
            await js.delete_consumer(EVENT_STREAM, name)
        return stats
    puller = BatchPuller(nc, EVENT_STREAM, name, linger=0.02)
    await puller.start()
    loop = asyncio.get_running_loop()
    in_flight: asyncio.Future[Applied] | None = None
    erased: list[int] = []
    done = 0
    asked = eager
    expected = 1  # the next delivery sequence of the consumer
    try:
        while True:
            msgs = await puller.fetch(batch_size, timeout=1.0)
            if not msgs:
                if not await _exists(js, name):
                    # The server removed it: idle past its inactive threshold while a
                    # batch or the pause of live ingest took long (seen under overload,
                    # which then waited for nothing, with live ingest paused). Read on
                    # from what was applied, with a new one.
                    if in_flight is not None:
                        erased += (await in_flight).erased
                        in_flight = None
                    log.warning("replay_consumer_gone", consumer=name,
                                checkpoint=projection.checkpoint)  # fmt: skip
                    await puller.stop()
                    name, _ = await reader(projection.checkpoint + 1)
                    puller = BatchPuller(nc, EVENT_STREAM, name, linger=0.02)
                    await puller.start()
                    expected = 1
                continue
            gap = _gap(msgs, expected)
            if gap is not None:
                # Deliveries were lost in flight (a node or a route died with them): with
                # no acks nothing brings them back, so what came before the gap is applied
                # and the replay reads again from there.
                msgs = msgs[:gap]
            else:
                expected = delivery_seq(msgs[-1].reply) + 1
            pending = 0
            if msgs:
                seqs = []
                for msg in msgs:
                    seq, pending = stream_seq(msg.reply)
                    seqs.append(seq)
                decoded = decoder_.decode(msgs, seqs)
                stats.dead_letters += len(decoded.dead)
                if in_flight is not None:
                    erased += (await in_flight).erased
                last_seq = seqs[-1]
                # Submitted to the thread now, not when this coroutine next yields: the
                # next batch may already be buffered, and decoding it does not yield.
                reapplied = await decoder_.reapplied(js, decoded.batch)
                in_flight = loop.run_in_executor(
                    None, projection.apply, decoded.batch, last_seq, decoded.bodies, reapplied
                )
                done += len(msgs)
                stats.applied += len(decoded.batch)
                if on_progress:
                    elapsed = time.monotonic() - stats.started
                    on_progress(
                        ReplayProgress(
                            done=done,
                            total=max(total, done + pending),
                            last_seq=last_seq,
                            rate=done / elapsed if elapsed else 0.0,
                        )
                    )
            if gap is not None:
                if in_flight is not None:
                    erased += (await in_flight).erased
                    in_flight = None
                await puller.stop()
                with contextlib.suppress(nats.errors.Error):
                    await js.delete_consumer(EVENT_STREAM, name)
                name, _ = await reader(projection.checkpoint + 1)
                puller = BatchPuller(nc, EVENT_STREAM, name, linger=0.02)
                await puller.start()
                expected = 1
                continue
            if pending == 0 or asked:
                if in_flight is not None:
                    erased += (await in_flight).erased
                in_flight = None
                if until is None or await until(last_seq):
                    break
                # What ``until`` waits for was set when nothing was pending (a rebuild
                # pauses live ingest then): from now on, any batch boundary may reach
                # it. Waiting for nothing to be pending again could take as long as the
                # publishers keep ahead of the replay, with live ingest paused.
                asked = True
    finally:
        if in_flight is not None:
            with contextlib.suppress(Exception):
                await in_flight
        await puller.stop()
        with contextlib.suppress(nats.errors.Error):
            await js.delete_consumer(EVENT_STREAM, name)
    await erase_from_stream(js, projection.name, erased)
    return stats


async def _exists(js: Any, name: str) -> bool:
    """Whether the stream still has the consumer ``name`` (not when NATS cannot say)."""
    try:
        await js.consumer_info(EVENT_STREAM, name)
    except nats.js.errors.NotFoundError:
        return False
    except nats.errors.Error:
        return True  # not known now: the next empty fetch asks again
    return True

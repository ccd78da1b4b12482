"""FastStream's batched pull subscriber vs the bare nats-py loop, both without a projection.

The history runner could consume through FastStream (``PullSub(batch=True)``) or
through nats-py directly; this measures what FastStream's path costs before any
projection work, beside the bare fetch + decode + ack loop, on the same stream.

    python -m benchmarks.faststream_pull [--events 60000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import nats
from faststream import Context
from faststream.nats import JStream, NatsBroker, PullSub

from benchmarks._common import arguments, broker
from benchmarks._workload import fill
from benchmarks.ingest_history import raw_loop
from memstream.consumers._runtime import tune_for_throughput
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient
from memstream.schemas.events import EventDecoder

MESSAGE = Context("message")  # FastStream injects the batch message here


async def faststream_loop(url: str, n: int, batch: int) -> float:
    fs = NatsBroker(url, logger=None)
    decode = EventDecoder().decode
    seen = 0
    done = asyncio.Event()

    @fs.subscriber(
        "mem.>",
        stream=JStream("MEMORY", declare=False),
        durable="faststream-bench",
        pull_sub=PullSub(batch_size=batch, timeout=0.5, batch=True),
    )
    async def handle(body: list[Any], message: Any = MESSAGE) -> None:
        nonlocal seen
        for raw in message.raw_message:
            decode(raw.data)
        seen += len(message.raw_message)
        if seen >= n:
            done.set()

    start = time.perf_counter()
    await fs.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await fs.stop()
    return n / elapsed


async def main(n: int, batch: int) -> None:
    tune_for_throughput()
    with broker() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        await fill(MemoryClient(nc, tenant="bench", agent="agent"), n)
        raw = await raw_loop(js, n, batch)
        fast = await faststream_loop(server.url, n, batch)
        await nc.close()
    print(
        f"faststream batched pull (decode, FastStream's per-message ack): {fast:,.0f} events/s "
        f"vs raw nats-py fetch+decode+ack {raw:,.0f} events/s = {fast / raw:.2f}x raw"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = arguments(parser, smoke=dict(events=2000, batch=500))
    asyncio.run(main(args.events, args.batch))

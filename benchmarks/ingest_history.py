"""Stream -> committed DuckDB rows while catching up on a filled stream, vs a bare loop.

Target (README, "Benchmarks"): the history projection's live runner >= 0.7 x a bare nats-py loop
of fetch(batch) + msgspec decode + one ack per batch, on the same stream in the same run.

    python -m benchmarks.ingest_history [--events 200000] [--batch 2000] [--rounds 5]

Each round drains the same filled stream once with each loop; the medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig

from benchmarks._common import arguments, compare_on_filled_stream, exit_code
from memstream.consumers.runner import LiveRunner
from memstream.projections.history import HistoryProjection
from memstream.schemas.events import EventDecoder


async def raw_loop(js: nats.js.JetStreamContext, n: int, batch: int) -> float:
    await js.add_consumer(
        "MEMORY",
        ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.ALL, max_ack_pending=50_000),
    )
    sub = await js.pull_subscribe_bind(durable="raw", stream="MEMORY")
    decode = EventDecoder().decode
    seen = 0
    start = time.perf_counter()
    while seen < n:
        msgs = await sub.fetch(batch, timeout=1)
        for msg in msgs:
            decode(msg.data)
        await msgs[-1].ack()
        seen += len(msgs)
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    await js.delete_consumer("MEMORY", "raw")
    return n / elapsed


async def projection_loop(nc: nats.NATS, n: int, batch: int, path: Path) -> float:
    projection = HistoryProjection(path)
    runner = LiveRunner(nc, projection, batch_size=batch, max_wait=0.5)
    last = (await nc.jetstream().stream_info("MEMORY")).state.last_seq
    start = time.perf_counter()
    task = asyncio.create_task(runner.run())
    while projection.checkpoint < last:  # noqa: ASYNC110 - polling the projection
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    runner.stop()
    await task
    await nc.jetstream().delete_consumer("MEMORY", "history")
    rows = projection.con.execute("SELECT count(*) FROM events").fetchone()
    assert rows == (n,), rows
    projection.close()
    return n / elapsed


async def main(n: int, batch: int, rounds: int) -> bool:
    return await compare_on_filled_stream(
        "ingest-history",
        n,
        rounds,
        0.7,
        raw=lambda nc, _: raw_loop(nc.jetstream(), n, batch),
        ours=lambda nc, tmp: projection_loop(nc, n, batch, tmp.with_suffix(".duckdb")),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = arguments(parser, smoke=dict(events=5000, rounds=1))
    sys.exit(exit_code(asyncio.run(main(args.events, args.batch, args.rounds)), args))

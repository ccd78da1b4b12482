"""Stream -> committed DuckDB rows while catching up on a filled stream, vs a bare loop.

Target (DESIGN.md): the history projection's live runner >= 0.7 x a bare nats-py loop
of fetch(batch) + msgspec decode + one ack per batch, on the same stream in the same run.

    python -m benchmarks.ingest_history [--events 200000] [--batch 2000] [--rounds 3]

Each round drains the same filled stream once with each loop; the medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig

from benchmarks._common import broker, median, report
from benchmarks._workload import fill
from consumers._runtime import tune_for_throughput
from consumers.log import configure_logging
from consumers.runner import LiveRunner
from consumers.streams import ensure_streams
from producers import MemoryClient
from projections.history import HistoryProjection
from schemas.events import EventDecoder


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
    configure_logging("console", "warning")
    tune_for_throughput()  # the same settings for the raw loop and memstream's
    raws: list[float] = []
    ours: list[float] = []
    with broker() as server, tempfile.TemporaryDirectory() as tmp:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        await fill(MemoryClient(nc, tenant="bench", agent="agent"), n)
        for r in range(rounds):
            raws.append(await raw_loop(js, n, batch))
            ours.append(await projection_loop(nc, n, batch, Path(tmp) / f"history-{r}.duckdb"))
            print(
                f"  round {r + 1}: raw {raws[-1]:,.0f}/s  history {ours[-1]:,.0f}/s",
                file=sys.stderr,
            )
        await nc.close()
    print(f"ingest-history: {n} events, batch {batch}, {rounds} rounds (medians)")
    return report("ingest-history", median(ours), median(raws), 0.7)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.events, args.batch, args.rounds)) else 1)

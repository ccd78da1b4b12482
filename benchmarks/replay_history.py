"""A full history rebuild vs a bare ordered-consumer decode loop over the same stream.

Target (README, "Benchmarks"): rebuilding the history projection from sequence 1 >= 0.5 x a bare
nats-py ordered push consumer that decodes every message, in the same run.

    python -m benchmarks.replay_history [--events 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from benchmarks._common import arguments, compare_on_filled_stream, exit_code
from memstream.consumers.replay import replay
from memstream.projections.history import HistoryProjection
from memstream.schemas.events import EventDecoder


async def raw_loop(nc: nats.NATS, n: int) -> float:
    decode = EventDecoder().decode
    done = asyncio.Event()
    seen = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal seen
        decode(msg.data)
        seen += 1
        if seen == n:
            done.set()

    start = time.perf_counter()
    sub = await nc.jetstream().subscribe(
        "mem.>", stream="MEMORY", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
        cb=on_msg,
    )  # fmt: skip
    await done.wait()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return n / elapsed


async def rebuild(nc: nats.NATS, n: int, path: Path) -> float:
    projection = HistoryProjection(path)
    start = time.perf_counter()
    stats = await replay(nc, projection)
    elapsed = time.perf_counter() - start
    assert stats.applied == n, stats
    projection.close()
    return n / elapsed


async def main(n: int, rounds: int) -> bool:
    return await compare_on_filled_stream(
        "replay-history",
        n,
        rounds,
        0.5,
        raw=lambda nc, _: raw_loop(nc, n),
        ours=lambda nc, tmp: rebuild(nc, n, tmp.with_suffix(".duckdb")),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = arguments(parser, smoke=dict(events=5000, rounds=1))
    sys.exit(exit_code(asyncio.run(main(args.events, args.rounds)), args))

"""``get`` and ``list`` over 1,000,000 memories, through request-reply, beside the same
reads run straight on the DuckDB file.

A fresh stream gets ``--memories`` knowledge events of one tenant (each with tags, a
user, and metadata), projected by ``memstream serve --role history`` in its own process.
Each read below is sent ``--repeat`` times through ``MemoryClient`` and timed. Raw
limit: with the worker stopped, the same reads (``projections.memories``) on the same
file in this process. Targets (README, "Benchmarks"): get p99 <= 5 ms, a list page of
100 p99 <= 20 ms.

    python -m benchmarks.memory_reads [--memories 1000000] [--repeat 100]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from benchmarks._common import (
    arguments,
    broker,
    exit_code,
    memstream_process,
    percentile,
    wait_acked,
)
from memstream.consumers.log import configure_logging
from memstream.consumers.storage import HistoryStorage
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient
from memstream.projections.history import HistoryProjection
from memstream.projections.memories import get_memory, list_memories
from memstream.schemas import events as ev
from memstream.schemas.filters import parse_filter

TENANT = "bench"
SELECTIVE = {"user_id": "u17", "metadata.priority": {"$gte": 5}}
TARGETS = {"get": 5.0, "list, first page of 100": 20.0, "list, a page further on": 20.0}


async def _fill(url: str, n: int) -> int:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream())
        mem = MemoryClient(nc, tenant=TENANT, agent="agent")
        for start in range(0, n, 10_000):
            await mem.publish_many(
                mem.new_event(
                    ev.KnowledgeStored, memory_id=f"m{i}", domain=f"d{i % 13}",
                    content=f"fact number {i}", tags=(f"t{i % 5}",), user_id=f"u{i % 1000}",
                    metadata={"priority": i % 10, "team": f"team{i % 50}"},
                )
                for i in range(start, min(n, start + 10_000))
            )  # fmt: skip
        return int((await nc.jetstream().stream_info("MEMORY")).state.last_seq)
    finally:
        await nc.close()


Reads = dict[str, Callable[[], Awaitable[Any]]]


def _shapes(call: Callable[..., Awaitable[Any]], n: int, cursor: str | None) -> Reads:
    rng = random.Random(5)
    return {
        "get": lambda: call("get", memory_id=f"m{rng.randrange(n)}"),
        "list, first page of 100": lambda: call("list", limit=100),
        "list, a page further on": lambda: call("list", limit=100, cursor=cursor),
        "list, filtered by user and metadata": lambda: call("list", limit=100, filter=SELECTIVE),
    }


async def _time(shapes: Reads, repeat: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    for name, read in shapes.items():
        for _ in range(3):
            await read()
        timings[name] = []
        for _ in range(repeat):
            start = time.perf_counter()
            await read()
            timings[name].append((time.perf_counter() - start) * 1000)
    return timings


async def _over_nats(
    url: str, last: int, n: int, repeat: int
) -> tuple[dict[str, list[float]], str]:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        took = await wait_acked(nc, "history", last, "projecting")
        print(f"  projected {last:,} memories in {took:.0f} s", file=sys.stderr)
        mem = MemoryClient(nc, tenant=TENANT, agent="bench")
        page = await mem.list_memories(limit=100)
        for _ in range(20):  # a cursor some way into the listing
            page = await mem.list_memories(limit=100, cursor=page.next_cursor)
        assert page.next_cursor is not None

        async def call(op: str, **fields: Any) -> Any:
            return await mem.query(op, dict, **fields)

        return await _time(_shapes(call, n, page.next_cursor), repeat), page.next_cursor
    finally:
        await nc.close()


def _in_process(data_dir: Path, n: int, cursor: str, repeat: int) -> dict[str, list[float]]:
    path = HistoryStorage(data_dir).files.current()
    assert path is not None
    history = HistoryProjection(path, read_only=True)
    con = history.cursor()
    selective = parse_filter(SELECTIVE)

    async def call(op: str, **fields: Any) -> Any:
        now = dt.datetime.now(dt.UTC)
        if op == "get":
            return get_memory(con, TENANT, fields["memory_id"], now)
        if "filter" in fields:
            fields["filter"] = selective
        return list_memories(con, TENANT, now, **fields)

    try:
        return asyncio.run(_time(_shapes(call, n, cursor), repeat))
    finally:
        con.close()
        history.close()


def main(memories: int, repeat: int) -> bool:
    configure_logging("console", "warning")
    with broker() as server, tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        last = asyncio.run(_fill(server.url, memories))
        args = ("serve", "--role", "history", "--nats-url", server.url, "--data-dir", tmp)
        with memstream_process(*args):
            ours, cursor = asyncio.run(_over_nats(server.url, last, memories, repeat))
        raw = _in_process(Path(tmp), memories, cursor, repeat)
    print(f"memory-reads: {memories:,} memories of one tenant, {repeat} requests per shape")
    ok = True
    for name in ours:
        p50, p99 = statistics.median(ours[name]), percentile(ours[name], 0.99)
        raw50, raw99 = statistics.median(raw[name]), percentile(raw[name], 0.99)
        target = TARGETS.get(name)
        ok = ok and (target is None or p99 <= target)
        print(
            f"  {name:<38} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
            + (f" (target <= {target:g})" if target else "")
            + f"   (in-process DuckDB p50 {raw50:6.2f} ms  p99 {raw99:6.2f} ms)"
        )
    print(f"memory-reads: {'OK' if ok else 'BELOW TARGET'}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=100)
    args = arguments(parser, smoke=dict(memories=5000, repeat=5))
    sys.exit(exit_code(main(args.memories, args.repeat), args))

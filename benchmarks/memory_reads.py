"""The read API over the history at scale: ``get`` and a ``list`` page of 100, read
in-process from a DuckDB history of ``--memories`` memories of one tenant (with
metadata), beside the raw limit: the same row fetched by a bare SQL lookup of its key.

Targets (issue: the memory an agent reads): get p99 <= 5 ms and a list page of 100
p99 <= 20 ms at 1,000,000 memories, through request-reply; a request-reply round trip
here adds ~0.7 ms (see benchmarks.search), so these are the worker's share.

    python -m benchmarks.memory_reads [--memories 1000000] [--requests 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from projections.history import HistoryProjection
from projections.memories import get_memory, list_memories
from schemas import events as ev
from schemas.filters import parse_filter

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
BATCH = 20_000


def fill(history: HistoryProjection, n: int) -> float:
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        batch = [
            (
                i + 1,
                ev.KnowledgeStored(
                    id=f"e{i}", tenant="bench", agent=f"a{i % 7}", ts=T0 + dt.timedelta(seconds=i),
                    memory_id=f"m{i}", domain=f"d{i % 13}", content=f"fact number {i}",
                    tags=(f"t{i % 5}",), metadata={"priority": i % 10, "team": f"team{i % 50}"},
                    user_id=f"u{i % 1000}",
                ),
            )
            for i in range(start, min(n, start + BATCH))
        ]  # fmt: skip
        history.apply(batch)
    return time.perf_counter() - started


def timed(call: object, rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main(memories: int, requests: int) -> None:
    rng = random.Random(7)
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        history = HistoryProjection(Path(tmp) / "history.duckdb")
        took = fill(history, memories)
        print(f"memory_reads: {memories:,} memories written in {took:.0f} s", file=sys.stderr)
        con = history.cursor()
        raw = timed(
            lambda: con.execute(
                "SELECT * FROM knowledge WHERE tenant = ? AND memory_id = ?",
                ["bench", f"m{rng.randrange(memories)}"],
            ).fetchall(),
            requests,
        )
        get = timed(lambda: get_memory(con, "bench", f"m{rng.randrange(memories)}", now), requests)
        first = timed(lambda: list_memories(con, "bench", now, limit=100), requests)
        selective = parse_filter({"user_id": "u17", "metadata.priority": {"$gte": 5}})
        filtered = timed(
            lambda: list_memories(con, "bench", now, filter=selective, limit=100), requests
        )
        history.close()
    print(f"memory_reads: {memories:,} memories of one tenant, in-process, {requests} reads each")
    print(f"  raw key lookup (SQL)        p50 {raw[0]:.2f} ms  p99 {raw[1]:.2f} ms")
    print(
        f"  get                         p50 {get[0]:.2f} ms  p99 {get[1]:.2f} ms (target p99 <= 5)"
    )
    print(f"  list, first page of 100     p50 {first[0]:.2f} ms  p99 {first[1]:.2f} ms"
          " (target p99 <= 20)")  # fmt: skip
    print(f"  list, filtered by user_id and metadata.priority  p50 {filtered[0]:.2f} ms"
          f"  p99 {filtered[1]:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    main(args.memories, args.requests)

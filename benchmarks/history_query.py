"""``history`` and ``analytics`` latency over 1,000,000 events, beside the same reads run
straight on the DuckDB file.

A fresh stream gets ``--events`` events of the benchmark mix for one tenant (its worst
case: every event is that tenant's), projected by ``memstream serve --role history`` in
its own process. Each request shape below is sent ``--repeat`` times through
``MemoryClient`` and every round trip is timed. Raw limit: with the worker stopped, the
same reads (``projections.reads``) on the same file in this process. Target (README, "Benchmarks"):
p99 <= 50 ms.

    python -m benchmarks.history_query [--events 1000000] [--repeat 100]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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
from benchmarks._workload import fill
from memstream.consumers.log import configure_logging
from memstream.consumers.storage import HistoryStorage
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient
from memstream.projections import reads
from memstream.projections.history import HistoryProjection

TENANT = "bench"


def shapes(last: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (op, request fields)."""
    return {
        "history, first page": ("history", {}),
        "history, page near the end": ("history", {"after_seq": last - 5000}),
        "history, one type": ("history", {"types": ["tool.used"], "after_seq": last // 2}),
        "history, one task": ("history", {"task_id": "t5000"}),
        "history, a time window": (
            "history",
            {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z", "limit": 500},
        ),
        **{
            f"analytics {name}": ("analytics", {"name": name, "params": {"limit": 100}})
            for name in (
                "agent_activity",
                "task_outcomes",
                "tool_usage",
                "collaboration_graph",
                "memory_growth",
            )
        },
    }


async def _fill(url: str, n: int) -> int:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream())
        await fill(MemoryClient(nc, tenant=TENANT, agent="agent"), n)
        return int((await nc.jetstream().stream_info("MEMORY")).state.last_seq)
    finally:
        await nc.close()


async def _over_nats(url: str, last: int, repeat: int) -> dict[str, list[float]]:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        took = await wait_acked(nc, "history", last, "projecting")
        print(f"  projected {last:,} events in {took:.0f} s", file=sys.stderr)
        mem = MemoryClient(nc, tenant=TENANT, agent="bench")
        timings: dict[str, list[float]] = {}
        for name, (op, fields) in shapes(last).items():
            result: Any = None
            for _ in range(3):
                await mem.query(op, dict, **fields)  # type: ignore[arg-type]
            timings[name] = []
            for _ in range(repeat):
                start = time.perf_counter()
                result = await mem.query(op, dict, **fields)  # type: ignore[arg-type]
                timings[name].append((time.perf_counter() - start) * 1000)
            assert result, f"{name} answered nothing"
        return timings
    finally:
        await nc.close()


def _in_process(data_dir: Path, last: int, repeat: int) -> dict[str, list[float]]:
    path = HistoryStorage(data_dir).files.current()
    assert path is not None
    history = HistoryProjection(path, read_only=True)
    con = history.cursor()
    timings: dict[str, list[float]] = {}
    try:
        for name, (op, fields) in shapes(last).items():
            call: Callable[[], Any]
            if op == "analytics":
                call = lambda f=fields: reads.analytics(con, TENANT, f["name"], f["params"])  # noqa: E731
            else:
                kwargs = _history_kwargs(fields)
                call = lambda k=kwargs: reads.history(con, TENANT, **k)  # noqa: E731
            for _ in range(3):
                call()
            timings[name] = []
            for _ in range(repeat):
                start = time.perf_counter()
                call()
                timings[name].append((time.perf_counter() - start) * 1000)
        return timings
    finally:
        con.close()
        history.close()


def _history_kwargs(fields: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(fields)
    for key in ("since", "until"):
        if key in kwargs:
            kwargs[key] = dt.datetime.fromisoformat(kwargs[key])
    if "types" in kwargs:
        kwargs["types"] = tuple(kwargs["types"])
    return kwargs


def main(events: int, repeat: int) -> bool:
    configure_logging("console", "warning")
    with broker() as server, tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        last = asyncio.run(_fill(server.url, events))
        args = ("serve", "--role", "history", "--nats-url", server.url, "--data-dir", tmp)
        with memstream_process(*args):
            ours = asyncio.run(_over_nats(server.url, last, repeat))
        raw = _in_process(Path(tmp), last, repeat)
    print(f"history-query: {events:,} events of one tenant, {repeat} requests per shape")
    worst = 0.0
    for name in ours:
        p50, p99 = statistics.median(ours[name]), percentile(ours[name], 0.99)
        raw50, raw99 = statistics.median(raw[name]), percentile(raw[name], 0.99)
        worst = max(worst, p99)
        print(
            f"  {name:<32} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   "
            f"(in-process DuckDB p50 {raw50:6.2f} ms  p99 {raw99:6.2f} ms)"
        )
    ok = worst <= 50
    verdict = "OK" if ok else "BELOW TARGET"
    print(f"history-query: worst p99 {worst:.2f} ms (target <= 50 ms) {verdict}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=100)
    args = arguments(parser, smoke=dict(events=5000, repeat=5))
    sys.exit(exit_code(main(args.events, args.repeat), args))

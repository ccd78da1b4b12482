"""Ingest and search with 1 and with 2 partitions, on this machine.

A stream is filled once with ``--events`` events of the benchmark mix, spread over
``--tenants`` tenants. Each round then runs, back to back:

* *raw read*: one ordered pull of the whole stream, decoded and dropped: what reading
  the stream costs before any projection work (the limit a worker is measured beside);
* *1 partition*: ``memstream up --nats-url`` (both projections and the query worker) in
  a process of its own, from an empty data dir, until its consumers hold nothing
  pending: the events applied per second; then ``--clients`` clients search in a closed
  loop for ``--seconds``: searches answered per second, p50 and p99;
* *2 partitions*: the same with ``MEMSTREAM_PARTITIONS=2`` and two processes
  (``--partition 0`` and ``--partition 1``), each with half the tenants.

The processes share this machine's cores, so two partitions here measure what
splitting costs and what it spares (each process's data is half as large), not what two
machines would give. ``--rounds`` rounds; medians reported, each round on stderr.

    python -m benchmarks.partitions [--events 40000] [--tenants 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from benchmarks._common import arguments, broker, percentile
from benchmarks._workload import mixed_events
from memstream.consumers.cluster import LocalCluster
from memstream.consumers.deployment import deployment_id
from memstream.consumers.streams import ensure_streams, stream_configs, until_jetstream_answers
from memstream.producers import MemoryClient
from memstream.schemas.queries import PROJECTIONS
from memstream.schemas.subjects import EVENT_STREAM, durable_name

TEXTS = ("what the agent learned", "the task", "a tool call", "the session")


async def fill(nc: nats.NATS, events: int, tenants: int) -> None:
    per = events // tenants
    for t in range(tenants):
        client = MemoryClient(nc, tenant=f"tenant{t}", agent="agent")
        for start in range(0, per, 10_000):
            await client.publish_many(mixed_events(client, min(10_000, per - start), start))


async def raw_read(nc: nats.NATS) -> float:
    """Events per second of an ordered pull of the whole stream, decoded, nothing kept."""
    js = nc.jetstream()
    total = (await js.stream_info(EVENT_STREAM)).state.messages
    name = f"raw-{os.getpid()}-{time.monotonic_ns()}"
    await js.add_consumer(
        EVENT_STREAM,
        ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    sub = await js.pull_subscribe_bind(durable=name, stream=EVENT_STREAM)
    decode = msgspec.json.Decoder().decode
    started, seen = time.perf_counter(), 0
    while seen < total:
        for msg in await sub.fetch(5000, timeout=5):
            decode(msg.data)
            seen += 1
    rate = seen / (time.perf_counter() - started)
    await sub.unsubscribe()
    with contextlib.suppress(Exception):
        await js.delete_consumer(EVENT_STREAM, name)
    return rate


async def caught_up(nc: nats.NATS, data_dirs: list[Path]) -> None:
    js = nc.jetstream()
    names = []
    while len(names) < len(data_dirs) * len(PROJECTIONS):
        names = [
            durable_name(p, d)
            for path in data_dirs
            if (d := deployment_id(path))
            for p in PROJECTIONS
        ]
        await asyncio.sleep(0.2)
    while True:
        left = 0
        for name in names:
            try:
                info = await js.consumer_info(EVENT_STREAM, name)
                left += (info.num_pending or 0) + (info.num_ack_pending or 0)
            except nats.errors.Error:
                left += 1
        if not left:
            return
        print(f"  {left:,} events left to apply", file=sys.stderr, end="\r")
        await asyncio.sleep(0.5)


async def search_load(url: str, tenants: int, clients: int, seconds: float) -> list[float]:
    times: list[float] = []
    deadline = time.monotonic() + seconds

    async def one(c: int) -> None:
        nc = await nats.connect(url)
        rng = random.Random(c)
        try:
            while time.monotonic() < deadline:
                mem = MemoryClient(nc, tenant=f"tenant{rng.randrange(tenants)}", agent="q")
                started = time.perf_counter()
                await mem.search(rng.choice(TEXTS), top_k=5)
                times.append(time.perf_counter() - started)
        finally:
            await nc.close()

    await asyncio.gather(*(one(c) for c in range(clients)))
    return times


def start_worker(url: str, data_dir: Path, count: int, index: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MEMSTREAM_EMBEDDER": "hash",
        "MEMSTREAM_LOG_LEVEL": "warning",
        "MEMSTREAM_PARTITIONS": str(count),
    }
    args = [sys.executable, "-m", "memstream", "up", "--nats-url", url, "--data-dir", str(data_dir)]
    if count > 1:
        args += ["--partition", str(index)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def one_config(
    nc: nats.NATS, url: str, tmp: Path, count: int, args: argparse.Namespace, events: int
) -> tuple[float, float, float, float]:
    dirs = [tmp / f"n{count}-p{k}-{time.monotonic_ns()}" for k in range(count)]
    started = time.perf_counter()
    procs = [start_worker(url, d, count, k) for k, d in enumerate(dirs)]
    try:
        await caught_up(nc, dirs)
        ingest = events / (time.perf_counter() - started)
        # the workers answer once caught up; a first search warms each process
        await search_load(url, args.tenants, 1, 0.5)
        times = await search_load(url, args.tenants, args.clients, args.seconds)
    finally:
        stop(procs)
    qps = len(times) / args.seconds
    return ingest, qps, statistics.median(times) * 1000, percentile(times, 0.99) * 1000


async def publish_rate(url: str, replicas: int, events: int, slots: bool = True) -> float:
    """Events per second one SDK publisher stores into a fresh stream of ``replicas``;
    ``slots``: with the stream's slot transform (without: as before partitions)."""
    nc = await nats.connect(url.split(","))
    try:
        if slots:
            # A cluster just started may not know all its peers yet: wait for it.
            js = nc.jetstream()
            await until_jetstream_answers(
                lambda: ensure_streams(js, replicas=replicas), "the stream's replicas"
            )
        else:
            config = stream_configs(replicas=replicas)[0]
            await nc.jetstream().add_stream(dataclasses.replace(config, subject_transform=None))
        client = MemoryClient(nc, tenant="pub", agent="agent")
        batch = mixed_events(client, events)
        started = time.perf_counter()
        await client.publish_many(batch)
        return events / (time.perf_counter() - started)
    finally:
        await nc.close()


async def replica_groups(events: int, rounds: int) -> tuple[float, float, float]:
    """Publishing into one node's stream (1 replica) with the slot transform and without
    it, alternately for ``rounds`` (the median of their ratios), then into a 3-node
    cluster's (3 replicas)."""
    ones, ratios = [], []
    for _ in range(rounds):
        with broker() as server:
            plain = await publish_rate(server.url, 1, events, slots=False)
        with broker() as server:
            ones.append(await publish_rate(server.url, 1, events))
        ratios.append(ones[-1] / plain)
        print(f"  1 replica: {ones[-1]:,.0f}/s with slots, {plain:,.0f}/s without", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="memstream-r3-") as tmp:
        cluster = LocalCluster(Path(tmp), nodes=3)
        await asyncio.to_thread(cluster.start, False)
        try:
            three = await publish_rate(cluster.seeds, 3, events)
        finally:
            await asyncio.to_thread(cluster.stop)
    return statistics.median(ones), statistics.median(ratios), three


async def main(args: argparse.Namespace) -> None:
    r1, slots, r3 = await replica_groups(args.publish, max(3, args.rounds))
    print(
        f"stream throughput, one SDK publisher, {args.publish:,} events: 1 replica "
        f"{r1:,.0f} events/s (with the slot transform {slots:.2f}x without it, median of "
        f"alternating rounds); 3 replicas on a 3-node cluster {r3:,.0f} events/s "
        f"({r3 / r1:.2f}x)"
    )
    with broker() as server, tempfile.TemporaryDirectory(prefix="memstream-parts-") as tmp:
        nc = await nats.connect(server.url)
        await ensure_streams(nc.jetstream())
        await fill(nc, args.events, args.tenants)
        events = (await nc.jetstream().stream_info(EVENT_STREAM)).state.messages
        results: dict[str, list[tuple[float, ...]]] = {"raw": [], "1": [], "2": []}
        for r in range(args.rounds):
            results["raw"].append((await raw_read(nc),))
            for count in (1, 2):
                figures = await one_config(nc, server.url, Path(tmp), count, args, events)
                results[str(count)].append(figures)
                print(
                    f"  round {r + 1}, {count} partition(s): ingest {figures[0]:,.0f} events/s, "
                    f"search {figures[1]:,.0f}/s p50 {figures[2]:.1f} ms p99 {figures[3]:.1f} ms",
                    file=sys.stderr,
                )
        await nc.close()

    def med(key: str, i: int) -> float:
        return statistics.median(row[i] for row in results[key])

    raw = med("raw", 0)
    print(
        f"partitions: {events:,} events over {args.tenants} tenants, {args.rounds} rounds "
        f"(medians), {os.cpu_count()} cores shared by every process"
    )
    print(f"  raw ordered read of the stream: {raw:,.0f} events/s")
    for count in ("1", "2"):
        print(
            f"  {count} partition(s): ingest {med(count, 0):,.0f} events/s "
            f"({med(count, 0) / raw:.2f}x raw); search with {args.clients} clients "
            f"{med(count, 1):,.0f}/s, p50 {med(count, 2):.1f} ms, p99 {med(count, 3):.1f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--publish", type=int, default=50_000, help="events for the replica figure")
    args = arguments(
        parser, smoke=dict(events=2000, tenants=4, clients=2, seconds=1.0, rounds=1, publish=2000)
    )
    asyncio.run(main(args))

"""Search under load: 20 concurrent clients searching while events arrive at 5,000/s.

``--tenants`` x ``--per-tenant`` memories are published and projected by ``memstream up``
(its own process, hash embedder, 384 dimensions, Qdrant Edge), and the benchmark waits
for the index built aside to be swapped in. Then each round has three phases of
``--seconds`` each:

1. *search, idle*: ``--clients`` clients (each its own connection and ``MemoryClient``)
   search in a closed loop, each asking the next question as soon as the last was
   answered; every round trip is timed;
2. *ingest, idle*: a publisher in a process of its own offers ``--rate`` events a second
   of the benchmark mix (turns, tool calls, memories, tasks, messages, context); the
   ingest rate of each projection is the events it applied over the time from the first
   publish to its ack of the last one;
3. *both at once*: the same clients and the same offered rate together.

Targets (README, "Benchmarks"): search p99 under load <= 25 ms, and each projection's
ingest rate under load >= 0.7 x its idle rate. ``--rounds`` rounds run; the medians of
the rounds' figures are reported, each round on stderr. A closed loop of 20 clients
measures what the worker sustains: each client waits for the others' searches too.

    python -m benchmarks.search_load [--tenants 10] [--per-tenant 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats

from benchmarks._common import broker, memstream_process, percentile, wait_acked
from benchmarks._workload import mixed_events
from benchmarks.ingest_vectors import memory_text
from benchmarks.search import _publish, searchable
from consumers.log import configure_logging
from producers import MemoryClient

PROJECTIONS = ("history", "vectors")


@dataclass
class Round:
    idle_p50: float
    idle_p99: float
    idle_qps: float
    load_p50: float
    load_p99: float
    load_qps: float
    ingest_idle: dict[str, float]
    ingest_load: dict[str, float]


# --- the publisher (a process of its own, so its work is not the clients') -------------


async def _pace(url: str, tenants: int, rate: int, n: int, offset: int) -> int:
    """Publish ``n`` mixed events at ``rate`` a second, 20 batches a second, across
    ``tenants`` tenants; the stream sequence of the last."""
    nc = await nats.connect(url)
    try:
        clients = [MemoryClient(nc, tenant=f"t{t}", agent="pacer") for t in range(tenants)]
        step = max(1, rate // 20)
        start = time.perf_counter()
        last = 0
        for k, at in enumerate(range(0, n, step)):
            client = clients[k % tenants]
            events = mixed_events(client, min(step, n - at), offset + at)
            last = max(last, (await client.publish_many(events))[-1].seq)
            ahead = start + (at + step) / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        return last
    finally:
        await nc.close()


class Publisher:
    """The paced publisher's process, started now; :meth:`last` waits for it to finish."""

    def __init__(self, url: str, tenants: int, rate: int, n: int, offset: int) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.search_load", "--pace",
             url, str(tenants), str(rate), str(n), str(offset)],
            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    async def last(self) -> int:
        out, _ = await asyncio.to_thread(self.process.communicate)
        if self.process.returncode != 0:
            raise RuntimeError(f"the publisher exited with {self.process.returncode}")
        return int(out.strip())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --- the phases -----------------------------------------------------------------------


async def _clients(
    url: str, tenants: int, texts: list[str], clients: int, seconds: float
) -> tuple[list[float], float]:
    """``clients`` closed-loop searchers for ``seconds``: every round trip in ms, and
    the searches answered per second."""
    conns = [await nats.connect(url) for _ in range(clients)]
    timings: list[float] = []
    try:
        deadline = time.perf_counter() + seconds

        async def client(c: int) -> None:
            mem = MemoryClient(conns[c], tenant=f"t{c % tenants}", agent="bench")
            i = c
            while time.perf_counter() < deadline:
                text = texts[i % len(texts)]
                i += clients
                start = time.perf_counter()
                hits = await mem.search(text)
                timings.append((time.perf_counter() - start) * 1000)
                assert hits, "a search found nothing"

        began = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        return timings, len(timings) / (time.perf_counter() - began)
    finally:
        for nc in conns:
            await nc.close()


async def _ingest(nc: nats.NATS, publisher: Publisher, n: int) -> dict[str, float]:
    """Each projection's events applied a second: ``n`` over first publish to last ack."""
    last = await publisher.last()
    rates: dict[str, float] = {}
    for projection in PROJECTIONS:
        await wait_acked(nc, projection, last, f"{projection} catching up")
        rates[projection] = n / (time.perf_counter() - publisher.started)
    return rates


async def _round(
    url: str, tenants: int, texts: list[str], clients: int, rate: int, seconds: float, r: int
) -> Round:
    n = int(rate * seconds)
    nc = await nats.connect(url)
    try:
        idle, idle_qps = await _clients(url, tenants, texts, clients, seconds)
        publisher = Publisher(url, tenants, rate, n, offset=2 * r * n)
        try:
            ingest_idle = await _ingest(nc, publisher, n)
        finally:
            publisher.stop()
        publisher = Publisher(url, tenants, rate, n, offset=(2 * r + 1) * n)
        try:
            loaded, load_qps = await _clients(url, tenants, texts, clients, seconds)
            ingest_load = await _ingest(nc, publisher, n)
        finally:
            publisher.stop()
    finally:
        await nc.close()
    return Round(
        idle_p50=statistics.median(idle), idle_p99=percentile(idle, 0.99), idle_qps=idle_qps,
        load_p50=statistics.median(loaded), load_p99=percentile(loaded, 0.99), load_qps=load_qps,
        ingest_idle=ingest_idle, ingest_load=ingest_load,
    )  # fmt: skip


async def _run(
    url: str, shards: Path, last: int, args: argparse.Namespace, texts: list[str]
) -> list[Round]:
    nc = await nats.connect(url)
    try:
        await searchable(nc, last, shards)
        for c in range(args.tenants):  # each question's embedding lands in the cache
            mem = MemoryClient(nc, tenant=f"t{c}", agent="bench")
            for text in texts[c :: args.clients]:
                await mem.search(text)
    finally:
        await nc.close()
    rounds: list[Round] = []
    for r in range(args.rounds):
        one = await _round(url, args.tenants, texts, args.clients, args.rate, args.seconds, r)
        rounds.append(one)
        print(
            f"  round {r + 1}: search idle p50 {one.idle_p50:.1f} ms p99 {one.idle_p99:.1f} ms "
            f"({one.idle_qps:,.0f}/s); under load p50 {one.load_p50:.1f} ms p99 "
            f"{one.load_p99:.1f} ms ({one.load_qps:,.0f}/s); ingest idle "
            + ", ".join(f"{p} {one.ingest_idle[p]:,.0f}/s" for p in PROJECTIONS)
            + "; under load "
            + ", ".join(f"{p} {one.ingest_load[p]:,.0f}/s" for p in PROJECTIONS),
            file=sys.stderr,
        )
    return rounds


def main(args: argparse.Namespace) -> bool:
    configure_logging("console", "warning")
    texts = [memory_text(i * 37 + 5) for i in range(500)]
    with broker() as server, tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        last = asyncio.run(_publish(server.url, args.tenants, args.per_tenant))
        env = {"MEMSTREAM_EMBEDDER": "hash", "MEMSTREAM_EMBEDDING_DIM": "384"}
        with contextlib.ExitStack() as processes:
            if args.processes == "one":
                processes.enter_context(
                    memstream_process("up", "--nats-url", server.url, "--data-dir", tmp, env=env)
                )
            else:  # a process per role, each with its own data dir
                for role in PROJECTIONS:
                    processes.enter_context(
                        memstream_process(
                            "serve", "--role", role, "--nats-url", server.url,
                            "--data-dir", f"{tmp}/{role}", env=env,
                        )
                    )  # fmt: skip
            shards = Path(tmp) / ("vectors" if args.processes == "one" else "vectors/vectors")
            rounds = asyncio.run(_run(server.url, shards, last, args, texts))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    p99 = med([r.load_p99 for r in rounds])
    ratios = {p: med([r.ingest_load[p] / r.ingest_idle[p] for r in rounds]) for p in PROJECTIONS}
    ok = p99 <= 25 and all(ratio >= 0.7 for ratio in ratios.values())
    print(
        f"search_load: {args.tenants} tenants x {args.per_tenant} memories, {args.clients} "
        f"closed-loop clients, {args.rate:,} events/s offered, {args.seconds:.0f} s phases, "
        f"{args.rounds} rounds (medians)"
    )
    print(
        f"search_load: search idle p50 {med([r.idle_p50 for r in rounds]):.1f} ms, p99 "
        f"{med([r.idle_p99 for r in rounds]):.1f} ms, {med([r.idle_qps for r in rounds]):,.0f}"
        f"/s; under load p50 {med([r.load_p50 for r in rounds]):.1f} ms, p99 {p99:.1f} ms, "
        f"{med([r.load_qps for r in rounds]):,.0f}/s (target p99 <= 25 ms)"
    )
    for p in PROJECTIONS:
        print(
            f"search_load: {p} ingest {med([r.ingest_load[p] for r in rounds]):,.0f} events/s "
            f"under load vs {med([r.ingest_idle[p] for r in rounds]):,.0f} idle; "
            f"{ratios[p]:.2f}x (target >= 0.70x)"
        )
    print(f"search_load: {'OK' if ok else 'BELOW TARGET'}")
    return ok


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--pace":
        url, tenants, rate, n, offset = sys.argv[2], *map(int, sys.argv[3:])
        print(asyncio.run(_pace(url, tenants, rate, n, offset)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--per-tenant", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--processes", choices=("one", "per-role"), default="one",
        help="memstream up (one process), or serve --role history and vectors",
    )  # fmt: skip
    sys.exit(0 if main(parser.parse_args()) else 1)

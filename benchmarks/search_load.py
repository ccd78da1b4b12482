"""Search under load: 20 clients searching while events arrive at 5,000/s.

``--tenants`` x ``--per-tenant`` memories are published and projected by ``memstream up``
(its own process, hash embedder, 384 dimensions, Qdrant Edge), and the benchmark waits
for the index built aside to be swapped in. Then each round has four phases of
``--seconds`` each:

1. *capacity*: ``--clients`` clients (each its own connection and ``MemoryClient``)
   search in a closed loop, each asking again as soon as answered: the searches the
   worker answers a second. (Each search's time in a closed loop is the clients over
   that rate, whatever the worker does: it measures throughput, not latency.)
2. *search, idle*: the same clients ask ``--search-rate`` searches a second between
   them, each at random times (a Poisson process, as independent agents ask); a
   search's time runs from when it was due, so one that starts late counts as late;
3. *ingest, idle*: a publisher in a process of its own offers ``--rate`` events a second
   of the benchmark mix (turns, tool calls, memories, tasks, messages, context); the
   ingest rate of each projection is the events it applied over the time from the first
   publish to its ack of the last one;
4. *both at once*: phases 2 and 3 together; the CPU each process used meanwhile is
   recorded (memstream, nats-server, the publisher, the clients), since they share the
   machine's cores.

The raw limit beside each search figure: the same clients, at the same rate, asking an
echo (a process of its own that answers every request with ``ECHO_BYTES``, about a
search reply of five hits) through the same broker, idle and while the publisher offers
the same load: what a request and its reply cost on this machine before any work is done
for them, the clients' own wake-ups included.

Under load, the time each projection takes to ack the last event after the publisher
offered it is its lag at the end of the load: how long it takes to catch up.

Targets (README, "Performance"): search p99 idle <= 5 ms; at ``--rate`` up to 1,000,
p99 under load <= 10 ms and each projection's ingest under load >= 0.95 x its idle rate;
beyond, p99 under load <= 25 ms, and the projections catch up within 2 x the load's
duration once it stops. ``--rounds`` rounds run; the medians of the rounds' figures are
reported, each round on stderr.

    python -m benchmarks.search_load [--tenants 10] [--per-tenant 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.msg import Msg

from benchmarks._common import (
    arguments,
    broker,
    cpu_seconds,
    exit_code,
    memstream_process,
    percentile,
    record,
    wait_acked,
)
from benchmarks._workload import mixed_events
from benchmarks.ingest_vectors import memory_text
from benchmarks.search import _publish, searchable
from memstream.consumers.log import configure_logging
from memstream.producers import MemoryClient

PROJECTIONS = ("history", "vectors")
# The echo's subject and reply (about a search reply of five hits' size).
ECHO_SUBJECT = "bench.echo"
ECHO_BYTES = 2_048
# Search p99 idle, and the targets under load by the events offered (README, "Performance").
IDLE_P99_MS = 5.0


@dataclass(frozen=True)
class Targets:
    p99_ms: float  # search p99 under load
    kept: float  # each projection's ingest under load, of its idle rate
    behind: float  # the time to catch up once the load stops, of the load's duration


def targets(rate: int) -> Targets:
    """Up to 1,000 events/s the machine has room for both: searches stay fast and ingest
    keeps its rate. Beyond, reads come first: ingest takes what is left, and catches up
    within twice the load's duration once it stops."""
    if rate <= 1_000:
        return Targets(p99_ms=10, kept=0.95, behind=2)
    return Targets(p99_ms=25, kept=0, behind=2)


@dataclass
class Round:
    capacity: float
    capacity_p50: float
    idle_p50: float
    idle_p99: float
    idle_qps: float
    load_p50: float
    load_p99: float
    load_qps: float
    echo_idle_p50: float  # the raw limit: the same clients asking an echo
    echo_idle_p99: float
    echo_load_p50: float
    echo_load_p99: float
    ingest_idle: dict[str, float]
    ingest_load: dict[str, float]
    # Seconds from the publisher's last event to each projection's ack of it, under load;
    # and how long the publisher took to offer the load.
    behind: dict[str, float]
    offered_s: float
    cpu: dict[str, float]  # while searching under load: CPU seconds a second, by process


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


# --- the echo (the raw limit: a request and its reply, no work done for them) ---------


async def _echo(url: str) -> None:
    nc = await nats.connect(url)
    reply = b"x" * ECHO_BYTES

    async def answer(msg: Msg) -> None:
        await msg.respond(reply)

    await nc.subscribe(ECHO_SUBJECT, queue="echo", cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until stopped


@contextlib.contextmanager
def echo_process(url: str) -> Iterator[int]:
    """The echo in a process of its own, ready when entered; stopped by its pid after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.search_load", "--echo", url],
        stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the echo exited with {process.wait()}")
        yield process.pid
    finally:
        process.kill()
        process.wait()


# --- the phases -----------------------------------------------------------------------


async def _clients(
    url: str,
    tenants: int,
    texts: list[str],
    clients: int,
    seconds: float,
    rate: float,
    echo: bool = False,
) -> tuple[list[float], float]:
    """``clients`` searchers for ``seconds``: every search's time in ms, and the searches
    answered per second. With ``rate`` 0, a closed loop (each client asks again as soon
    as answered: what the worker sustains); otherwise each client asks at random times,
    ``rate / clients`` a second on average (a Poisson process, as independent agents
    ask), and a search's time runs from when it was due, so a late start counts. With
    ``echo``, each asks the echo instead, with the text a search would send."""
    conns = [await nats.connect(url) for _ in range(clients)]
    timings: list[float] = []
    try:
        began = time.perf_counter()
        deadline = began + seconds

        async def client(c: int) -> None:
            mem = MemoryClient(conns[c], tenant=f"t{c % tenants}", agent="bench")
            pace = random.Random(c)
            i, due = c, time.perf_counter()
            while True:
                if rate:
                    due += pace.expovariate(rate / clients)
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                else:
                    due = time.perf_counter()
                if due >= deadline:
                    return
                text = texts[i % len(texts)]
                i += clients
                if echo:
                    await conns[c].request(ECHO_SUBJECT, text.encode(), timeout=10)
                else:
                    hits = await mem.search(text)
                    assert hits, "a search found nothing"
                timings.append((time.perf_counter() - due) * 1000)

        await asyncio.gather(*(client(c) for c in range(clients)))
        return timings, len(timings) / (time.perf_counter() - began)
    finally:
        for nc in conns:
            await nc.close()


@dataclass
class Ingest:
    rates: dict[str, float]  # events applied a second: n over first publish to last ack
    behind: dict[str, float]  # seconds from the last publish to its ack
    offered_s: float  # seconds from the first publish to the last


async def _ingest(nc: nats.NATS, publisher: Publisher, n: int) -> Ingest:
    """Each projection's ingest of the ``n`` events ``publisher`` offers."""
    last = await publisher.last()
    published = time.perf_counter()
    rates: dict[str, float] = {}
    behind: dict[str, float] = {}
    for projection in PROJECTIONS:
        await wait_acked(nc, projection, last, f"{projection} catching up")
        rates[projection] = n / (time.perf_counter() - publisher.started)
        behind[projection] = time.perf_counter() - published
    return Ingest(rates, behind, published - publisher.started)


async def _round(
    url: str, texts: list[str], args: argparse.Namespace, r: int, pids: dict[str, list[int]]
) -> Round:
    tenants, clients, rate, seconds = args.tenants, args.clients, args.rate, args.seconds
    n = int(rate * seconds)
    nc = await nats.connect(url)
    try:
        closed, capacity = await _clients(url, tenants, texts, clients, seconds, 0)
        idle, idle_qps = await _clients(url, tenants, texts, clients, seconds, args.search_rate)
        echo_idle, _ = await _clients(
            url, tenants, texts, clients, seconds, args.search_rate, echo=True
        )
        publisher = Publisher(url, tenants, rate, n, offset=3 * r * n)
        try:
            ingest_idle = (await _ingest(nc, publisher, n)).rates
        finally:
            publisher.stop()
        publisher = Publisher(url, tenants, rate, n, offset=(3 * r + 1) * n)
        try:
            groups = {**pids, "publisher": [publisher.process.pid]}

            def used() -> dict[str, float]:
                cpu = {g: sum(map(cpu_seconds, ps)) for g, ps in groups.items()}
                return {**cpu, "clients": cpu_seconds(os.getpid(), descendants=False)}

            before = used()
            began = time.perf_counter()
            loaded, load_qps = await _clients(
                url, tenants, texts, clients, seconds, args.search_rate
            )
            took = time.perf_counter() - began
            cpu = {g: (c - before[g]) / took for g, c in used().items()}
            ingest = await _ingest(nc, publisher, n)
        finally:
            publisher.stop()
        # The raw limit under the same load: the echo asked while the publisher offers it.
        publisher = Publisher(url, tenants, rate, n, offset=(3 * r + 2) * n)
        try:
            echo_load, _ = await _clients(
                url, tenants, texts, clients, seconds, args.search_rate, echo=True
            )
            await _ingest(nc, publisher, n)
        finally:
            publisher.stop()
    finally:
        await nc.close()
    return Round(
        capacity=capacity, capacity_p50=statistics.median(closed),
        idle_p50=statistics.median(idle), idle_p99=percentile(idle, 0.99), idle_qps=idle_qps,
        load_p50=statistics.median(loaded), load_p99=percentile(loaded, 0.99), load_qps=load_qps,
        echo_idle_p50=statistics.median(echo_idle), echo_idle_p99=percentile(echo_idle, 0.99),
        echo_load_p50=statistics.median(echo_load), echo_load_p99=percentile(echo_load, 0.99),
        ingest_idle=ingest_idle, ingest_load=ingest.rates, behind=ingest.behind,
        offered_s=ingest.offered_s, cpu=cpu,
    )  # fmt: skip


async def _run(
    url: str,
    shards: Path,
    last: int,
    args: argparse.Namespace,
    texts: list[str],
    pids: dict[str, list[int]],
) -> list[Round]:
    nc = await nats.connect(url)
    try:
        await searchable(nc, last, shards, indexed=not args.smoke)
        for c in range(args.tenants):  # each question's embedding lands in the cache
            mem = MemoryClient(nc, tenant=f"t{c}", agent="bench")
            for text in texts[c :: args.clients]:
                await mem.search(text)
    finally:
        await nc.close()
    rounds: list[Round] = []
    for r in range(args.rounds):
        one = await _round(url, texts, args, r, pids)
        rounds.append(one)
        print(
            f"  round {r + 1}: capacity {one.capacity:,.0f}/s (p50 {one.capacity_p50:.1f} ms); "
            f"search idle p50 {one.idle_p50:.1f} ms p99 {one.idle_p99:.1f} ms "
            f"({one.idle_qps:,.0f}/s); under load p50 {one.load_p50:.1f} ms p99 "
            f"{one.load_p99:.1f} ms ({one.load_qps:,.0f}/s); echo idle p50 "
            f"{one.echo_idle_p50:.1f} ms p99 {one.echo_idle_p99:.1f} ms, under load p50 "
            f"{one.echo_load_p50:.1f} ms p99 {one.echo_load_p99:.1f} ms; ingest idle "
            + ", ".join(f"{p} {one.ingest_idle[p]:,.0f}/s" for p in PROJECTIONS)
            + "; under load "
            + ", ".join(f"{p} {one.ingest_load[p]:,.0f}/s" for p in PROJECTIONS)
            + f"; caught up {one.behind['vectors']:.1f} s after {one.offered_s:.1f} s of load"
            + "; CPU under load: "
            + ", ".join(f"{g} {c:.2f}" for g, c in one.cpu.items()),
            file=sys.stderr,
        )
    return rounds


def main(args: argparse.Namespace) -> bool:
    configure_logging("console", "warning")
    texts = [memory_text(i * 37 + 5) for i in range(500)]
    with broker() as server, tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        last = asyncio.run(_publish(server.url, args.tenants, args.per_tenant, False))
        env = {"MEMSTREAM_EMBEDDER": "hash", "MEMSTREAM_EMBEDDING_DIM": "384"}
        pids: dict[str, list[int]] = {"memstream": [], "nats-server": [server.pid or 0]}
        with contextlib.ExitStack() as processes:
            if args.processes == "one":
                up = memstream_process("up", "--nats-url", server.url, "--data-dir", tmp, env=env)
                pids["memstream"].append(processes.enter_context(up)["pid"])
            else:  # a process per role, each with its own data dir
                for role in PROJECTIONS:
                    started = processes.enter_context(
                        memstream_process(
                            "serve", "--role", role, "--nats-url", server.url,
                            "--data-dir", f"{tmp}/{role}", env=env,
                        )
                    )  # fmt: skip
                    pids["memstream"].append(started["pid"])
            shards = Path(tmp) / ("vectors" if args.processes == "one" else "vectors/vectors")
            processes.enter_context(echo_process(server.url))
            rounds = asyncio.run(_run(server.url, shards, last, args, texts, pids))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    p99 = med([r.load_p99 for r in rounds])
    ratios = {p: med([r.ingest_load[p] / r.ingest_idle[p] for r in rounds]) for p in PROJECTIONS}
    # Catching up, as a share of how long the load lasted (target <= 2).
    behind = {p: med([r.behind[p] / r.offered_s for r in rounds]) for p in PROJECTIONS}
    target = targets(args.rate)
    idle99 = med([r.idle_p99 for r in rounds])
    ok = (
        p99 <= target.p99_ms
        and idle99 <= IDLE_P99_MS
        and all(ratio >= target.kept for ratio in ratios.values())
        and all(b <= target.behind for b in behind.values())
    )
    print(
        f"search_load: {args.tenants} tenants x {args.per_tenant} memories, {args.clients} "
        f"clients asking {args.search_rate:,.0f} searches/s, {args.rate:,} events/s offered, "
        f"{args.seconds:.0f} s phases, {args.rounds} rounds (medians)"
    )
    capacity = med([r.capacity for r in rounds])
    print(
        f"search_load: capacity (closed loop, idle) {capacity:,.0f} searches/s, p50 "
        f"{med([r.capacity_p50 for r in rounds]):.1f} ms = {args.clients} clients / capacity"
    )
    print(
        f"search_load: search idle p50 {med([r.idle_p50 for r in rounds]):.1f} ms, p99 "
        f"{med([r.idle_p99 for r in rounds]):.1f} ms, {med([r.idle_qps for r in rounds]):,.0f}"
        f"/s; under load p50 {med([r.load_p50 for r in rounds]):.1f} ms, p99 {p99:.1f} ms, "
        f"{med([r.load_qps for r in rounds]):,.0f}/s (targets: p99 <= {IDLE_P99_MS:.0f} ms "
        f"idle, <= {target.p99_ms:.0f} ms under load)"
    )
    echo = {
        f: med([getattr(r, f"echo_{f}") for r in rounds])
        for f in ("idle_p50", "idle_p99", "load_p50", "load_p99")
    }
    print(
        f"search_load: raw limit, the same clients asking an echo: idle p50 "
        f"{echo['idle_p50']:.1f} ms, p99 {echo['idle_p99']:.1f} ms; under load p50 "
        f"{echo['load_p50']:.1f} ms, p99 {echo['load_p99']:.1f} ms"
    )
    cpu = {g: med([r.cpu[g] for r in rounds]) for g in rounds[0].cpu}
    print(
        "search_load: CPU while searching under load (cores): "
        + ", ".join(f"{g} {c:.2f}" for g, c in cpu.items())
        + f" of {os.cpu_count()}"
    )
    for p in PROJECTIONS:
        print(
            f"search_load: {p} ingest {med([r.ingest_load[p] for r in rounds]):,.0f} events/s "
            f"under load vs {med([r.ingest_idle[p] for r in rounds]):,.0f} idle; "
            f"{ratios[p]:.2f}x (target >= {target.kept:.2f}x); caught up "
            f"{med([r.behind[p] for r in rounds]):.1f} s after the load stopped, "
            f"{behind[p]:.2f}x the load's {med([r.offered_s for r in rounds]):.1f} s "
            f"(target <= {target.behind:.0f}x)"
        )
    idle50 = med([r.idle_p50 for r in rounds])
    record("search_load", "idle p50", idle50, echo["idle_p50"], "ms")
    record("search_load", "idle p99", idle99, echo["idle_p99"], "ms")
    load50 = med([r.load_p50 for r in rounds])
    record("search_load", f"{args.rate} events/s p50", load50, echo["load_p50"], "ms")
    record("search_load", f"{args.rate} events/s p99", p99, echo["load_p99"], "ms")
    for p in PROJECTIONS:
        record(
            "search_load", f"{args.rate} events/s {p} ingest",
            med([r.ingest_load[p] for r in rounds]), med([r.ingest_idle[p] for r in rounds]),
            "events/s",
        )  # fmt: skip
    print(f"search_load: {'OK' if ok else 'BELOW TARGET'}")
    return ok


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo":
        asyncio.run(_echo(sys.argv[2]))
    if len(sys.argv) == 7 and sys.argv[1] == "--pace":
        url, tenants, rate, n, offset = sys.argv[2], *map(int, sys.argv[3:])
        print(asyncio.run(_pace(url, tenants, rate, n, offset)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--per-tenant", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=int, default=5_000, help="events offered a second")
    parser.add_argument(
        "--search-rate", type=float, default=200, help="searches asked a second, all clients"
    )
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--processes", choices=("one", "per-role"), default="one",
        help="memstream up (one process), or serve --role history and vectors",
    )  # fmt: skip
    args = arguments(
        parser,
        smoke=dict(
            tenants=2, per_tenant=300, clients=4, rate=200, search_rate=20.0, seconds=1.0, rounds=1
        ),
    )
    sys.exit(exit_code(main(args), args))

"""Rate limits across query worker replicas: what N replicas admit together, and what
deciding a query costs.

A tenant limited to ``--limit`` queries a second is offered ``--offered`` a second for
``--seconds``, spread over N replicas' limits in turn (as a queue group spreads them),
each replica with its own NATS connection, as separate processes have. Two ways:

- *shared*: each replica takes from its own buckets and tells the others what it
  admitted every 100 ms (memstream's way, ``consumers.limits``);
- *independent*: per-replica buckets that hear nothing of each other (the raw limit of
  doing nothing): N replicas admit N times the rate.

The figure is the admitted rate over the limit (1.00 is exact; the bucket's first
second of burst is counted in the limit). Beside it, the cost of one decision, against
the raw limit of the alternative, a bucket shared in NATS KV: one read and one
compare-and-set to the broker per query, measured on the same broker; and what an audit
record costs the worker after each reply. Target: shared
within 1.10 x the limit at 4 replicas. Medians of ``--rounds`` rounds.

    python -m benchmarks.rate_limits [--limit 100] [--offered 400] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import nats
from nats.js.api import KeyValueConfig, StorageType

from benchmarks._common import arguments, broker, exit_code, median, record
from memstream.consumers.audit import Auditor
from memstream.consumers.limits import QueryLimits
from memstream.schemas.tenancy import TenantLimits


async def _offer(replicas: list[QueryLimits], offered: float, seconds: float) -> int:
    """Offer queries at ``offered`` a second, to each replica in turn; how many were
    admitted."""
    admitted = n = 0
    started = time.monotonic()
    while (now := time.monotonic() - started) < seconds:
        due = n / offered
        if due > now:
            await asyncio.sleep(due - now)
        admitted += replicas[n % len(replicas)].admit("acme", "agent") == 0
        n += 1
    return admitted


async def _round(url: str, n: int, shared: bool, args: argparse.Namespace) -> float:
    """The admitted rate over the limit, for ``n`` replicas."""
    limits = TenantLimits(queries_per_second=args.limit)
    replicas = [QueryLimits(limits) for _ in range(n)]
    conns = [await nats.connect(url) for _ in range(n)]
    try:
        if shared:
            for replica, nc in zip(replicas, conns, strict=True):
                await replica.start(nc)
        admitted = await _offer(replicas, args.offered, args.seconds)
    finally:
        for replica in replicas:
            await replica.stop()
        for nc in conns:
            await nc.close()
    # The limit over the run: its rate, plus the burst the bucket starts with.
    return admitted / (args.limit * args.seconds + args.limit)


async def _decision_cost(url: str, k: int) -> tuple[float, float]:
    """Microseconds per admit here, and per read + compare-and-set of a KV key."""
    limits = QueryLimits(TenantLimits(queries_per_second=1e9))
    started = time.perf_counter()
    for _ in range(k):
        limits.admit("acme", "agent")
    local = (time.perf_counter() - started) / k * 1e6
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().create_key_value(
            KeyValueConfig(bucket="BENCH_BUCKETS", storage=StorageType.MEMORY)
        )
        await kv.put("acme", b"0")
        started = time.perf_counter()
        for _ in range(k):
            entry = await kv.get("acme")
            await kv.update("acme", str(int(entry.value or b"0") + 1).encode(), entry.revision)
        remote = (time.perf_counter() - started) / k * 1e6
    finally:
        await nc.close()
    return local, remote


async def _audit_cost(url: str, k: int) -> float:
    """Microseconds the query worker spends on one audit record after a reply (digest,
    encode, publish): what the audit adds to each query."""
    nc = await nats.connect(url)
    try:
        auditor = Auditor(nc)
        body = b'{"query": "how do we retry a failed payment", "limit": 5}'
        started = time.perf_counter()
        for _ in range(k):
            await auditor.record(
                tenant="acme", user="research", agent="planner", kind="query", op="search",
                body=body, results=5, seconds=0.002, outcome="ok",
            )  # fmt: skip
        await nc.flush()
        return (time.perf_counter() - started) / k * 1e6
    finally:
        await nc.close()


async def main(args: argparse.Namespace) -> bool:
    with broker() as server:
        print(
            f"rate_limits: {args.limit:g}/s limit, {args.offered:g}/s offered for "
            f"{args.seconds:g} s, {args.rounds} rounds (medians)"
        )
        ok = True
        for n in (1, 2, 4):
            found: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.rounds):
                for shared in (True, False):
                    found[shared].append(await _round(server.url, n, shared, args))
            mine, raw = median(found[True]), median(found[False])
            record("rate_limits", f"admitted x limit, {n} replicas", mine, raw, "x")
            on = mine <= 1.10 if n == 4 else True
            ok = ok and on
            print(
                f"  {n} replica(s): shared {mine:.2f} x the limit vs independent {raw:.2f} x"
                + ("" if n != 4 else f" (target <= 1.10) {'OK' if on else 'ABOVE TARGET'}")
            )
        costs = [await _decision_cost(server.url, args.decisions) for _ in range(args.rounds)]
        local = statistics.median(c[0] for c in costs)
        remote = statistics.median(c[1] for c in costs)
        record("rate_limits", "decision", local, remote, "us")
        print(
            f"  a decision: {local:.1f} us here vs {remote:,.0f} us for a KV read and "
            "compare-and-set (raw limit of a bucket shared in KV)"
        )
        audit = statistics.median(
            [await _audit_cost(server.url, args.decisions) for _ in range(args.rounds)]
        )
        record("rate_limits", "audit record", audit, None, "us")
        print(f"  an audit record: {audit:.1f} us after each reply")
        return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=100)
    parser.add_argument("--offered", type=float, default=400)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=2000)
    args = arguments(parser, smoke=dict(seconds=0.5, rounds=1, decisions=50))
    sys.exit(exit_code(asyncio.run(main(args)), args))

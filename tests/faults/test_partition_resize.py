"""Changing the number of partitions from 2 to 3 while events arrive and queries run.

The three new partitions are built from the stream beside the two serving ones, join
the queries once caught up, and the two old ones are stopped. Nothing acknowledged is
lost or applied twice, every answer holds what its request asked to see (min_seq), and
each new partition holds its tenants and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path

import duckdb
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.nats_server import NatsServer
from memstream.producers import MemoryClient
from memstream.schemas import events as ev
from memstream.schemas.errors import MemstreamError
from memstream.schemas.partitions import Partition
from tests.integration.test_query_worker import running
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TENANTS = ("gamma", "acme", "omega", "delta", "kappa", "zeta", "sigma", "tau", "rho")


def event_ids(data_dir: Path) -> list[tuple[str, str]]:
    (path,) = (data_dir / "history").glob("*.duckdb")
    with duckdb.connect(str(path), read_only=True) as db:
        return [(str(i), str(t)) for i, t in db.execute("SELECT id, tenant FROM events").fetchall()]


async def test_two_partitions_become_three_under_load(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    acked: dict[str, str] = {}  # event id -> tenant
    counts = dict.fromkeys(TENANTS, 0)
    last_seq = dict.fromkeys(TENANTS, 0)
    stop = asyncio.Event()
    phase = ["two partitions"]
    outcomes: dict[str, dict[str, int]] = {}
    wrong: list[str] = []

    async def publish() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            tenant = TENANTS[i % len(TENANTS)]
            mem = MemoryClient(nc, tenant=tenant, agent="p")
            event = mem.new_event(
                ev.KnowledgeStored, memory_id=f"m{i}", domain="d", content=f"fact {i}"
            )
            ack = await mem.publish(event)
            acked[event.id] = tenant
            counts[tenant] += 1
            last_seq[tenant] = ack.seq
            await asyncio.sleep(0.002)

    async def query() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            tenant = TENANTS[i % len(TENANTS)]
            seen, seq = counts[tenant], last_seq[tenant]
            mem = MemoryClient(nc, tenant=tenant, agent="q")
            mem.query_timeout = 10
            tally = outcomes.setdefault(phase[0], {"answered": 0, "failed": 0, "slow": 0})
            started = time.monotonic()
            try:
                stats = await mem.query("stats", dict, min_seq=seq or None)
            except MemstreamError:
                tally["failed"] += 1
                continue
            tally["answered"] += 1
            if time.monotonic() - started > 1:
                tally["slow"] += 1
            if stats["events_by_type"].get("knowledge.stored", 0) < seen:
                wrong.append(f"{tenant}: {stats['events_by_type']} after {seen} acked")
            await asyncio.sleep(0.01)

    env2, env3 = {"MEMSTREAM_PARTITIONS": "2"}, {"MEMSTREAM_PARTITIONS": "3"}
    async with contextlib.AsyncExitStack() as old:
        for k in range(2):
            await old.enter_async_context(
                running(nats_server, tmp_path / f"two-p{k}", partition=k, **env2)
            )
        tasks = [asyncio.create_task(publish()), asyncio.create_task(query())]
        try:
            await wait_for(lambda: len(acked) >= 1500, 60, "events under two partitions")
            async with contextlib.AsyncExitStack() as new:
                phase[0] = "three partitions building beside two"
                for k in range(3):  # each answers once it holds its share
                    await new.enter_async_context(
                        running(nats_server, tmp_path / f"three-p{k}", partition=k, **env3)
                    )
                phase[0] = "the two old partitions stopping"
                await old.aclose()
                phase[0] = "three partitions alone"
                target = len(acked) + 1500
                await wait_for(lambda: len(acked) >= target, 60, "events under three")
                stop.set()
                await asyncio.gather(*tasks)
                # every worker has applied everything acknowledged
                for tenant in TENANTS:
                    mem = MemoryClient(nc, tenant=tenant, agent="q")
                    stats = await mem.query("stats", dict, consistency="latest")
                    assert counts[tenant] == stats["events_by_type"]["knowledge.stored"]
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    report = "; ".join(f"{p}: {o}" for p, o in outcomes.items())
    assert not wrong, f"answers that missed what their min_seq asked for: {wrong[:3]}"
    for name in (
        "two partitions",
        "three partitions building beside two",
        "three partitions alone",
    ):
        assert outcomes.get(name, {}).get("answered"), f"no query answered while {name}: {report}"
    for k in range(3):
        part = Partition(k, 3)
        rows = event_ids(tmp_path / f"three-p{k}")
        ids = [i for i, _ in rows]
        assert len(ids) == len(set(ids)), f"partition {k} of 3 applied an event twice"
        assert {i for i, t in acked.items() if part.owns(t)} == set(ids)
        assert all(part.owns(t) for _, t in rows)
    print(f"\nresize 2 -> 3: {len(acked)} events acknowledged; queries: {report}")

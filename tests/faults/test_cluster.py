"""A partitioned deployment on a 3-node JetStream cluster, through node and worker deaths.

Real processes on loopback: three nats-server nodes (stream replicas 3), two partitions
with two workers each (``memstream up --partition k``), two publishers publishing
continuously and a client querying throughout. The stream leader is killed, then a node
leading consumers, then one worker of each partition, then everything is restarted.
Afterwards every acknowledged event is in each worker of its partition exactly once, in
no other partition, and each worker's history equals a clean replay of its partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.cluster import LocalCluster, cluster_status
from memstream.consumers.service import rebuild_offline
from memstream.consumers.storage import HistoryStorage
from memstream.producers import MemoryClient
from memstream.producers.connection import connect_nats
from memstream.schemas import events as ev
from memstream.schemas.errors import MemstreamError
from memstream.schemas.ids import new_id
from memstream.schemas.partitions import Partition
from memstream.schemas.subjects import EVENT_STREAM
from tests.conftest import pid_alive
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Partition 0 of 2: gamma, omega, kappa; partition 1: acme, delta, zeta.
TENANTS = ("gamma", "acme", "omega", "delta", "kappa", "zeta")
SLOW_S = 1.0


@dataclass
class Phase:
    name: str
    answered: int = 0
    failed: int = 0
    slow: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class Traffic:
    """Publishers that publish until stopped, retrying each event with its id until it
    is acknowledged, and a client that queries throughout, counting per phase."""

    seeds: str
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (tenant, seq)
    phases: list[Phase] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    publish_retries: int = 0

    def phase(self, name: str) -> None:
        self.phases.append(Phase(name))

    async def publisher(self, number: int) -> None:
        nc = await connect_nats(self.seeds, name=f"publisher-{number}")
        try:
            clients = {t: MemoryClient(nc, tenant=t, agent=f"p{number}") for t in TENANTS}
            for i in itertools.count():
                if self.stop.is_set():
                    return
                tenant = TENANTS[(i + number) % len(TENANTS)]
                event = ev.KnowledgeStored(
                    id=new_id(),
                    tenant=tenant,
                    agent=f"p{number}",
                    ts=ev.utc_now(),
                    memory_id=f"m{number}-{i}",
                    domain="faults",
                    content=f"fact {i} of publisher {number}",
                )
                while True:  # the same event, with the same id, until it is stored
                    try:
                        ack = await clients[tenant].publish(event)
                        break
                    except MemstreamError:
                        self.publish_retries += 1
                        await asyncio.sleep(0.1)
                self.acked[event.id] = (tenant, ack.seq)
                await asyncio.sleep(0.01)
        finally:
            await nc.close()

    async def querier(self) -> None:
        nc = await connect_nats(self.seeds, name="querier")
        try:
            for i in itertools.count():
                if self.stop.is_set():
                    return
                mem = MemoryClient(nc, tenant=TENANTS[i % len(TENANTS)], agent="q")
                mem.query_timeout = 5
                phase = self.phases[-1]
                started = time.monotonic()
                try:
                    await mem.history(limit=5)
                    phase.answered += 1
                    if time.monotonic() - started > SLOW_S:
                        phase.slow += 1
                except MemstreamError as err:
                    phase.failed += 1
                    reason = str(err)[:80]
                    phase.reasons[reason] = phase.reasons.get(reason, 0) + 1
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    def report(self) -> str:
        return "; ".join(
            f"{p.name}: {p.answered} answered, {p.failed} failed, {p.slow} slower than "
            f"{SLOW_S:.0f} s" + (f" {p.reasons}" if p.reasons else "")
            for p in self.phases
        )


@contextlib.asynccontextmanager
async def running_cluster(root: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(
        root,
        nodes=3,
        partitions=2,
        replicas=2,
        env={"MEMSTREAM_EMBEDDER": "hash", "MEMSTREAM_BATCH_WAIT_MS": "20"},
    )
    await asyncio.to_thread(cluster.start)
    started: set[int] = set()
    try:
        yield cluster
    finally:
        started |= {n.pid for n in cluster.layout.nodes} | {w.pid for w in cluster.layout.workers}
        started |= {p.pid for p in cluster.processes.values()}
        await asyncio.to_thread(cluster.stop)
    assert not [pid for pid in started if pid and pid_alive(pid)], "a process outlived the test"


async def leader_of_stream(nc: NatsClient) -> str:
    info = await nc.jetstream().stream_info(EVENT_STREAM)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


async def has_new_stream_leader(nc: NatsClient, old: str) -> bool:
    with contextlib.suppress(Exception):
        return await leader_of_stream(nc) != old
    return False


async def all_caught_up(cluster: LocalCluster, last_seq: int) -> bool:
    try:
        status = await cluster_status(cluster.layout, {})
    except Exception:
        return False
    return status.last_seq >= last_seq and all(
        w.answering and w.pending and not any(w.pending.values()) for w in status.workers
    )


def history_rows(data_dir: Path, table: str, columns: str) -> list[tuple[object, ...]]:
    (path,) = (data_dir / "history").glob("*.duckdb")
    with duckdb.connect(str(path), read_only=True) as db:
        return db.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()


async def test_a_partitioned_cluster_loses_and_doubles_nothing(tmp_path: Path) -> None:
    async with running_cluster(tmp_path / "cluster") as cluster:
        watcher = await connect_nats(cluster.seeds, name="watcher")
        traffic = Traffic(cluster.seeds)
        traffic.phase("steady")
        tasks = [
            asyncio.create_task(traffic.publisher(1)),
            asyncio.create_task(traffic.publisher(2)),
            asyncio.create_task(traffic.querier()),
        ]

        async def acked_more(than: int) -> bool:
            return len(traffic.acked) >= than

        async def publishing_on() -> None:
            """Until 100 more events are acknowledged and 20 queries were tried, in the
            phase at hand."""
            target = len(traffic.acked) + 100
            phase = traffic.phases[-1]
            await wait_for(lambda: acked_more(target), 60, "publishing to go on")
            await wait_for(lambda: phase.answered + phase.failed >= 20, 60, "queries")

        try:
            await wait_for(lambda: acked_more(100), 60, "the publishers to get going")

            # 1. the stream leader dies
            traffic.phase("stream leader killed")
            leader = await leader_of_stream(watcher)
            cluster.kill_node(leader)
            await wait_for(lambda: has_new_stream_leader(watcher, leader), 60, "a new leader")
            await publishing_on()
            await asyncio.to_thread(cluster.start_node, leader)

            # 2. the node leading the most consumers dies
            traffic.phase("consumer leaders' node killed")
            status = await cluster_status(cluster.layout, {})
            leaders = list(status.consumer_leaders.values())
            busiest = max(set(leaders), key=leaders.count)
            cluster.kill_node(busiest)
            await publishing_on()
            await asyncio.to_thread(cluster.start_node, busiest)

            # 3. one worker of each partition dies
            traffic.phase("a worker of each partition killed")
            cluster.kill_worker(0, 0)
            cluster.kill_worker(1, 1)
            await publishing_on()
            cluster.start_worker(0, 0)
            cluster.start_worker(1, 1)

            # 4. everything stops and starts again
            traffic.phase("everything restarted")
            for key in list(cluster.processes):
                cluster.stop_worker(*key)
            for node in cluster.layout.nodes:
                cluster.stop_node(node.name)
            for node in cluster.layout.nodes:
                await asyncio.to_thread(cluster.start_node, node.name)
            await asyncio.to_thread(cluster.wait_jetstream)
            for w in cluster.layout.workers:
                cluster.start_worker(w.partition, w.replica)
            await asyncio.to_thread(cluster.wait_workers)
            await publishing_on()
        finally:
            traffic.stop.set()
            await asyncio.gather(*tasks)
        last = max(seq for _, seq in traffic.acked.values())
        await wait_for(lambda: all_caught_up(cluster, last), 120, "every worker caught up")
        for key in list(cluster.processes):
            assert 0 == cluster.stop_worker(*key)

        # A clean replay of each partition, from the stream the cluster kept.
        replays = {}
        for k in range(2):
            storage = HistoryStorage(tmp_path / f"replay{k}")
            await rebuild_offline(watcher, storage, partition=Partition(k, 2))
            replays[k] = tmp_path / f"replay{k}"
        await watcher.close()

    report = traffic.report()
    for phase in traffic.phases:
        assert phase.answered > 0, f"no query answered while {phase.name}: {report}"
    for w in cluster.layout.workers:
        part = Partition(w.partition, 2)
        mine = {i for i, (t, _) in traffic.acked.items() if part.owns(t)}
        rows = history_rows(Path(w.data_dir), "events", "id, seq, tenant")
        ids = [i for i, _, _ in rows]
        assert len(ids) == len(set(ids)), f"p{w.partition}r{w.replica} applied an event twice"
        assert mine == set(ids), f"p{w.partition}r{w.replica} differs from what was acknowledged"
        assert all(part.owns(str(t)) for _, _, t in rows), "an event in the wrong partition"
        replay = replays[w.partition]
        for table, columns in (
            ("events", "id, seq, type, tenant"),
            ("knowledge", "tenant, memory_id, content"),
        ):
            assert history_rows(replay, table, columns) == history_rows(
                Path(w.data_dir), table, columns
            ), f"p{w.partition}r{w.replica} {table} differs from a clean replay"
    print(
        f"\ncluster faults: {len(traffic.acked)} events acknowledged, "
        f"{traffic.publish_retries} publishes retried; queries: {report}"
    )

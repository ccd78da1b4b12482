"""Partitions: tenants spread over workers by the server's own partition() mapping."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import duckdb
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers import ops
from memstream.consumers.app import UpInfo
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.settings import load_settings
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient
from memstream.schemas import events as ev
from memstream.schemas.errors import ConfigError, UsageError
from memstream.schemas.partitions import SLOTS, Partition, slot_of
from memstream.schemas.subjects import EVENT_STREAM
from tests.integration.test_query_worker import running
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Of two partitions: gamma, omega and kappa are in partition 0; acme, delta and zeta in 1.
EVEN, ODD = ("gamma", "omega", "kappa"), ("acme", "delta", "zeta")
TWO = {"MEMSTREAM_PARTITIONS": "2"}


@contextlib.asynccontextmanager
async def partitions(
    nats_server: NatsServer, root: Path, count: int = 2, replicas: int = 1
) -> AsyncIterator[dict[tuple[int, int], UpInfo]]:
    """Every partition of ``count``, ``replicas`` workers each, in data dirs of their own."""
    env = {"MEMSTREAM_PARTITIONS": str(count)}
    async with contextlib.AsyncExitStack() as stack:
        infos = {}
        for k in range(count):
            for r in range(replicas):
                infos[(k, r)] = await stack.enter_async_context(
                    running(nats_server, root / f"n{count}p{k}r{r}", partition=k, **env)
                )
        yield infos


def tenants_in(data_dir: Path) -> set[str]:
    (path,) = (data_dir / "history").glob("*.duckdb")
    with duckdb.connect(str(path), read_only=True) as db:
        return {t for (t,) in db.execute("SELECT DISTINCT tenant FROM events").fetchall()}


def test_the_tenants_above_are_where_they_are_said_to_be() -> None:
    assert all(Partition(0, 2).owns(t) for t in EVEN)
    assert not any(Partition(0, 2).owns(t) for t in ODD)


async def test_the_server_computes_the_slot_memstream_computes(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """Events are stored with their tenant's slot, and queries delivered with it, by the
    server's partition(); memstream's own hash (used only for events stored before
    slots) agrees on 300 tenants."""
    tenants = [f"t{i}-x" for i in range(300)]
    js = nc.jetstream()
    for t in tenants:
        await js.publish(f"mem.{t}.knowledge.stored", b"{}")
    info = await js.stream_info(EVENT_STREAM, subjects_filter=">")
    stored = {s.split(".")[1]: int(s.split(".")[4]) for s in info.state.subjects or {}}
    assert {t: slot_of(t) for t in tenants} == stored
    assert len(set(stored.values())) > SLOTS // 2  # spread, not one slot

    delivered: list[str] = []

    async def on_msg(msg: object) -> None:
        delivered.append(msg.subject)  # type: ignore[attr-defined]

    sub = await nc.subscribe("memq.*.*.*", cb=on_msg)
    await nc.flush()
    for t in tenants[:20]:
        await nc.publish(f"memq.{t}.stats", b"{}")
    await nc.flush()
    await sub.drain()
    assert [f"memq.{t}.stats.{slot_of(t)}" for t in tenants[:20]] == delivered


async def test_two_partitions_split_the_tenants_and_answer_for_their_own(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Each partition holds only its tenants; every tenant's queries are answered, by
    its partition, read-your-writes by min_seq."""
    async with partitions(nats_server, tmp_path) as infos:
        acks = {}
        for t in EVEN + ODD:
            mem = MemoryClient(nc, tenant=t, agent="a1")
            for i in range(3):
                acks[t] = await mem.store_knowledge(f"{t} fact {i}", domain="d")
        for t in EVEN + ODD:
            mem = MemoryClient(nc, tenant=t, agent="a1")
            stats = await mem.query("stats", dict, min_seq=acks[t].seq)
            assert {"knowledge.stored": 3} == stats["events_by_type"]
            hits = await mem.search(f"{t} fact 2", min_seq=acks[t].seq)
            assert hits and hits[0].text.startswith(t)
        for t in EVEN + ODD:  # the lag is of the tenant's partition, 0 once all applied
            mem = MemoryClient(nc, tenant=t, agent="a1")
            stats = await mem.query("stats", dict, consistency="latest")
            assert {"history": 0, "vectors": 0} == stats["lag"]
        dirs = {k: info.data_dir for (k, _), info in infos.items()}
    assert set(EVEN) == tenants_in(dirs[0])
    assert set(ODD) == tenants_in(dirs[1])


async def test_latest_is_answered_when_the_last_event_is_another_partitions(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """consistency "latest" on a partition whose own last event is older than the
    stream's: answered once its share is applied, not after wait_ms."""
    async with partitions(nats_server, tmp_path):
        await MemoryClient(nc, tenant="gamma", agent="a1").store_knowledge("mine", domain="d")
        for i in range(50):
            await MemoryClient(nc, tenant="acme", agent="a1").store_knowledge(f"{i}", domain="d")
        gamma = MemoryClient(nc, tenant="gamma", agent="a1")
        started = asyncio.get_running_loop().time()
        stats = await gamma.query("stats", dict, consistency="latest", wait_ms=10_000)
        assert {"knowledge.stored": 1} == stats["events_by_type"]
        assert asyncio.get_running_loop().time() - started < 5


async def test_replicas_of_a_partition_both_answer_and_one_is_enough(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Two workers of a partition share its queries; stopping one leaves the other
    answering, with read-your-writes across them."""
    env = TWO
    root = tmp_path
    async with running(nats_server, root / "p1r0", partition=1, **env):
        async with running(nats_server, root / "p1r1", partition=1, **env):
            mem = MemoryClient(nc, tenant="acme", agent="a1")
            ack = await mem.store_knowledge("replicated", domain="d")
            for _ in range(10):  # whichever replica answers, it has the write
                stats = await mem.query("stats", dict, min_seq=ack.seq)
                assert {"knowledge.stored": 1} == stats["events_by_type"]
        later = await mem.store_knowledge("after one stopped", domain="d")
        stats = await mem.query("stats", dict, min_seq=later.seq)
        assert {"knowledge.stored": 2} == stats["events_by_type"]
    # each replica is a full copy of the partition
    assert {"acme"} == tenants_in(root / "p1r0") == tenants_in(root / "p1r1")


async def test_a_data_dir_serves_one_partition_for_life(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running(nats_server, tmp_path / "d", partition=0, **TWO):
        pass
    with pytest.raises(UsageError, match="holds the tenants of partition 0/2, not 1/2"):
        async with running(nats_server, tmp_path / "d", partition=1, **TWO):
            pass
    with pytest.raises(ConfigError, match="--partition"):
        async with running(nats_server, tmp_path / "e", **TWO):
            pass


async def test_a_partition_refuses_a_server_that_does_not_map_queries(
    tmp_path: Path,
) -> None:
    """Without the server's mapping no query would reach a partition: said at start."""
    with (
        NatsServer(tmp_path / "nats", port=0, query_mapping=False) as bare,
        pytest.raises(ConfigError, match="does not deliver queries to partitions"),
    ):
        async with running(bare, tmp_path / "d", partition=0, **TWO):
            pass


async def test_a_new_replica_answers_only_once_it_holds_its_share(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A worker added to a serving partition joins its queries once it has applied the
    partition's events as the stream held them at its start, not from an empty file."""
    async with running(nats_server, tmp_path / "p0r0", partition=0, **TWO):
        gamma = MemoryClient(nc, tenant="gamma", agent="a1")
        acks = await gamma.publish_many(
            gamma.new_event(ev.KnowledgeStored, memory_id=f"m{i}", domain="d", content=f"fact {i}")
            for i in range(3000)
        )
        await MemoryClient(nc, tenant="acme", agent="a1").store_knowledge("other", domain="d")
        async with running(nats_server, tmp_path / "p0r1", partition=0, **TWO) as added:
            assert acks[-1].seq == added.projections["history"]
            assert acks[-1].seq == added.projections["vectors"]


async def test_sql_on_every_partition_and_a_purge_where_the_tenant_lives(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Operator SQL merges one worker's rows per partition; a purge reaches every
    replica of the tenant's partition and leaves the other partition alone."""
    settings = load_settings({}, nats_url=nats_server.url, data_dir=str(tmp_path / "none"))
    async with contextlib.AsyncExitStack() as stack:
        for k, r in ((0, 0), (1, 0), (1, 1)):
            await stack.enter_async_context(
                running(nats_server, tmp_path / f"p{k}r{r}", partition=k, **TWO)
            )
        last = 0
        for t in ("gamma", "acme", "delta"):
            mem = MemoryClient(nc, tenant=t, agent="a1")
            for i in range(2):
                last = (await mem.store_knowledge(f"{t} {i}", domain="d")).seq
        for t in ("gamma", "acme", "delta"):
            await MemoryClient(nc, tenant=t, agent="a").query("stats", dict, min_seq=last)
        count = "SELECT tenant, count(*) FROM events GROUP BY tenant ORDER BY tenant"
        result = await ops.sql_all(settings, count, 100)
        assert ["partition", "tenant", "count_star()"] == result.columns
        assert [(1, "acme", 2), (1, "delta", 2), (0, "gamma", 2)] == sorted(
            result.rows, key=lambda r: str(r[1])
        )

        report = await ops.purge_tenant(settings, "acme", url_given=True)
        assert sorted([str(tmp_path / "p1r0"), str(tmp_path / "p1r1")]) == sorted(report.data_dirs)
        assert 2 == report.stream_messages
        assert 4 == report.history_rows["events"]  # two in each replica
        left = await ops.sql_all(settings, count, 100)
        assert {"gamma", "delta"} == {row[1] for row in left.rows}
    assert {"delta"} == tenants_in(tmp_path / "p1r0") == tenants_in(tmp_path / "p1r1")


async def test_events_stored_before_slots_reach_their_partition_alone(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A stream written by an earlier memstream holds events without a slot: each
    partition applies its own tenants' among them, and no other's."""
    js = nc.jetstream()
    info = await js.stream_info(EVENT_STREAM)
    await js.update_stream(dataclasses.replace(info.config, subject_transform=None))
    for t in ("gamma", "acme"):
        await MemoryClient(nc, tenant=t, agent="old").store_knowledge(f"{t} old", domain="d")
    await ensure_streams(js)  # as this version starts: the transform is back
    subjects = (await js.stream_info(EVENT_STREAM, subjects_filter=">")).state.subjects or {}
    assert {"mem.gamma.knowledge.stored", "mem.acme.knowledge.stored"} == set(subjects)
    for t in ("gamma", "acme"):
        await MemoryClient(nc, tenant=t, agent="new").store_knowledge(f"{t} new", domain="d")
    async with partitions(nats_server, tmp_path) as infos:
        for t in ("gamma", "acme"):
            stats = await MemoryClient(nc, tenant=t, agent="a").query(
                "stats", dict, consistency="latest"
            )
            assert {"old": 1, "new": 1} == stats["events_by_agent"]
        dirs = {k: info.data_dir for (k, _), info in infos.items()}
    assert ({"gamma"}, {"acme"}) == (tenants_in(dirs[0]), tenants_in(dirs[1]))


async def test_malformed_and_misplaced_events_become_one_dead_letter_each(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A subject no partition's slots cover is partition 0's to dead-letter (once, not
    once per partition); an event published with another tenant's slot is a dead letter
    of the partition that slot belongs to."""
    js = nc.jetstream()
    async with partitions(nats_server, tmp_path):
        await js.publish("mem.acme.knowledge", b"{}")
        mem = MemoryClient(nc, tenant="acme", agent="a")
        _, body = mem.encode(
            mem.new_event(ev.KnowledgeStored, memory_id="m", domain="d", content="x")
        )
        wrong = (slot_of("acme") + 1) % SLOTS
        await js.publish(f"mem.acme.knowledge.stored.{wrong}", body)
        ack = await mem.store_knowledge("fine", domain="d")
        await mem.query("stats", dict, min_seq=ack.seq)
        await MemoryClient(nc, tenant="gamma", agent="a").query("stats", dict, consistency="latest")

        async def letters() -> dict[str, int]:
            state = (await js.stream_info("MEMORY_DLQ", subjects_filter=">")).state
            return dict(state.subjects or {})

        # each is filed by both projections of the one partition that read it
        await wait_for(lambda: _total(letters(), 4), 10, "the dead letters")
        assert {"memdlq.history.acme": 2, "memdlq.vectors.acme": 2} == await letters()


async def _total(found: Awaitable[dict[str, int]], n: int) -> bool:
    return sum((await found).values()) >= n

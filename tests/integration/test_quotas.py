"""Tenants' quotas with memstream running on a real server: the stores past a hard
limit are not applied by either projection, a replay decides the same, the soft limit
warns, and raising the quota then reapplying brings the refused stores in without
publishing them again."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from memstream import KnowledgeStored, QuotaExceeded
from memstream.consumers import ops
from memstream.consumers.cli.tenants import _quota, _reapply
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.replay import replay
from memstream.consumers.settings import Settings, load_settings
from memstream.producers import MemoryClient, PublishAck
from memstream.projections.history import HistoryProjection
from tests.integration.test_metrics import samples, value
from tests.integration.test_query_worker import Stack, running

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def stack(nc: NatsClient, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    """memstream with the server's default quota of 3 memories a tenant, and metrics."""
    env = {"MEMSTREAM_QUOTA_MEMORIES": "3", "MEMSTREAM_METRICS_PORT": "0"}
    async with running(nats_server, tmp_path / "data", **env) as info:
        yield Stack(nc, info)


def operator(stack: Stack, nats_server: NatsServer) -> Settings:
    """The settings an operator's command runs with, against this deployment."""
    return load_settings(nats_url=nats_server.url, data_dir=str(stack.info.data_dir))


async def ask(stack: Stack, op: str, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
    reply = await stack.ask(f"memq.{tenant}.{op}", msgspec.json.encode(fields))
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


async def in_vectors(stack: Stack, tenant: str, word: str, min_seq: int) -> list[str]:
    """The memories of ``tenant`` the vectors hold with ``word`` in their text."""
    found = await ask(
        stack, "search", tenant, query=word, mode="keyword", top_k=1000, min_seq=min_seq,
        kinds=["knowledge"],
    )  # fmt: skip
    return sorted(h["memory_id"] for h in found["hits"])


def decisions(history: HistoryProjection, tenant: str) -> list[tuple[int, str]]:
    rows: list[tuple[int, str]] = history.con.execute(
        "SELECT seq, outcome FROM outcomes WHERE tenant = ? ORDER BY seq", [tenant]
    ).fetchall()
    return rows


async def live_decisions(settings: Settings) -> list[tuple[int, str]]:
    """The outcomes the running history decided for acme."""
    found = await ops.sql(
        settings, "SELECT seq, outcome FROM outcomes WHERE tenant = 'acme' ORDER BY seq",
        True, 10_000,
    )  # fmt: skip
    return [(int(seq), str(outcome)) for seq, outcome in found.rows]


async def rebuilt(stack: Stack, path: Path) -> list[tuple[int, str]]:
    """The outcomes a history rebuilt from the stream decides for acme."""
    history = HistoryProjection(path)
    try:
        await replay(stack.nc, history)
        return decisions(history, "acme")
    finally:
        history.close()


async def test_a_hard_quota_refuses_the_stores_past_it_until_raised_and_reapplied(
    stack: Stack, nats_server: NatsServer, tmp_path: Path
) -> None:
    """120 stores against a hard limit of 100: exactly 100 memories are live in the
    history and in the vectors, 20 outcomes are quota_exceeded, the stores past 80 are
    applied with a warning, and a confirmed store past the limit raises QuotaExceeded.
    A rebuild decides the same. Raised to 200 and reapplied, the 21 refused come in
    (in both projections, and in a rebuild), and nothing was published again but the
    operator's two events."""
    settings = operator(stack, nats_server)
    usage, _ = await _quota(settings, True, "acme", 100, None, None)
    assert (0, 100) == (usage.memories, usage.memories_limit)

    mem: MemoryClient = stack.client()
    acks: list[PublishAck] = []
    for i in range(120):
        acks.append(
            await mem.store_knowledge(f"note word{i} of the plan", domain="d", memory_id=f"m{i}")
        )
    outcomes = [await ask(stack, "outcome", seq=a.seq, min_seq=acks[-1].seq) for a in acks]
    assert ["applied"] * 100 + ["quota_exceeded"] * 20 == [o["outcome"] for o in outcomes]
    assert (
        "tenant acme is at its quota of 100 memories, so memory 'm100' was not stored"
        in (outcomes[100]["message"])
    )
    assert "message" not in outcomes[79]  # 80 of 100: not past the soft limit
    assert "holds 81 of its 100 memories (past 80%)" in outcomes[80]["message"]

    with pytest.raises(QuotaExceeded, match="at its quota of 100 memories") as refused:
        await mem.store_knowledge("note word120 late", domain="d", memory_id="m120", confirm=True)
    assert "m120" == refused.value.memory_id
    stats = await ask(stack, "stats", consistency="latest")
    assert {"knowledge": 100} == {"knowledge": stats["memories_by_kind"]["knowledge"]}
    assert (100, 100) == (stats["quota"]["memories"], stats["quota"]["memories_limit"])
    assert "is at its quota of 100 memories" in stats["quota"]["warning"]
    found = await samples(stack.info.metrics_url or "")
    assert 21 == value(found, "memstream_quota_refused_total", tenant="acme")
    assert 20 == value(found, "memstream_quota_warnings_total", tenant="acme")

    last = (await stack.nc.jetstream().stream_info("MEMORY")).state.last_seq
    live = await in_vectors(stack, "acme", "note", last)
    assert sorted(f"m{i}" for i in range(100)) == live

    before = await rebuilt(stack, tmp_path / "before.duckdb")
    assert await live_decisions(settings) == before
    assert 21 == sum(1 for _, o in before if o == "quota_exceeded")

    stored = (await stack.nc.jetstream().stream_info("MEMORY")).state.messages
    usage, _ = await _quota(settings, True, "acme", 200, None, None)
    assert 200 == usage.memories_limit and usage.warning is None
    decided = await _reapply(settings, True, False, "acme")
    assert {"applied": 21} == decided
    # Two events more in the log (the quota.set and the quota.reapplied), nothing else.
    assert stored + 2 == (await stack.nc.jetstream().stream_info("MEMORY")).state.messages

    stats = await ask(stack, "stats", consistency="latest")
    assert 121 == stats["quota"]["memories"]
    reapplied = await ask(stack, "outcome", seq=acks[110].seq)
    assert ("applied", 1) == (reapplied["outcome"], reapplied["revision"])
    last = (await stack.nc.jetstream().stream_info("MEMORY")).state.last_seq
    assert sorted(f"m{i}" for i in range(121)) == await in_vectors(stack, "acme", "note", last)
    assert "note word110 of the plan" == (await mem.get("m110")).content

    after = await rebuilt(stack, tmp_path / "after.duckdb")
    assert await live_decisions(settings) == after
    assert 0 == sum(1 for _, o in after if o == "quota_exceeded")
    assert 121 == sum(1 for _, o in after if o == "applied")
    # A second reapply finds nothing left to bring in.
    assert {} == await _reapply(settings, True, False, "acme")


async def test_a_storage_quota_counts_the_text_and_spares_what_does_not_grow_it(
    stack: Stack, nats_server: NatsServer
) -> None:
    """1 KB of text for tenant 'small' (and no memory limit, over the server's default
    of 3): three stores of 300 bytes fit, a fourth does not; a revise that grows a
    memory past the limit is refused, one that shrinks it is applied, and so is storing
    a memory again at its size. Another tenant is held to the server's default."""
    settings = operator(stack, nats_server)
    usage, _ = await _quota(settings, True, "small", 0, 0.001, None)  # 0: no memory limit
    assert (0, 1000) == (usage.memories_limit, usage.storage_limit_bytes)
    mem = stack.client("small")
    text = "x" * 300
    for i in range(3):
        await mem.store_knowledge(text, domain="d", memory_id=f"k{i}", confirm=True)
    with pytest.raises(QuotaExceeded, match=r"its quota of 0\.0 MB of memory text"):
        await mem.store_knowledge(text, domain="d", memory_id="k3", confirm=True)
    with pytest.raises(QuotaExceeded, match="so memory 'k0' was not revised"):
        await mem.revise("k0", content="y" * 500, confirm=True)
    shrunk = await mem.revise("k0", content="y" * 100, confirm=True)
    assert shrunk.outcome is not None and 2 == shrunk.outcome.revision
    again = await mem.store_knowledge("z" * 300, domain="d", memory_id="k1", confirm=True)
    assert again.outcome is not None and "applied" == again.outcome.outcome
    stats = await ask(stack, "stats", "small", consistency="latest")
    assert (3, 700, 1000) == (
        stats["quota"]["memories"],
        stats["quota"]["storage_bytes"],
        stats["quota"]["storage_limit_bytes"],
    )
    # Another tenant has the server's default, 3 memories, and no storage limit.
    other = stack.client("roomy")
    for i in range(3):
        await other.store_knowledge(text * 10, domain="d", memory_id=f"k{i}", confirm=True)
    with pytest.raises(QuotaExceeded, match="tenant roomy is at its quota of 3 memories"):
        await other.store_knowledge(text, domain="d", memory_id="k3", confirm=True)


async def test_forgetting_makes_room_and_expired_memories_do_not_count(
    stack: Stack, nats_server: NatsServer
) -> None:
    """At a limit of 2, forgetting one lets the next store in; a memory that expired by
    a store's time does not count against it."""
    settings = operator(stack, nats_server)
    await _quota(settings, True, "tidy", 2, None, None)
    mem = stack.client("tidy")
    await mem.store_knowledge("a", domain="d", memory_id="a", confirm=True)
    await mem.store_knowledge("b", domain="d", memory_id="b", ttl_s=1, confirm=True)
    with pytest.raises(QuotaExceeded):
        await mem.store_knowledge("c", domain="d", memory_id="c", confirm=True)
    await mem.forget("a", confirm=True)
    await mem.store_knowledge("c", domain="d", memory_id="c", confirm=True)
    # 'b' expires a second after it was stored: a store two seconds later finds room.
    stored_c = (await mem.get("c")).created_at
    late = await mem.publish(
        mem.new_event(KnowledgeStored, memory_id="d", domain="d", content="d",
                      ts=stored_c + dt.timedelta(seconds=2))
    )  # fmt: skip
    found = await ask(stack, "outcome", "tidy", seq=late.seq, min_seq=late.seq)
    assert "applied" == found["outcome"], found

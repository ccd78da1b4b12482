"""The vector engine in its own process, under ``memstream up``: either process killed
(SIGKILL) in the middle of the vectors' ingest loses nothing and doubles nothing, and
what the vectors hold afterwards is what a clean replay of the stream makes."""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.nats_server import NatsServer
from memstream.consumers.ops import ping_all
from memstream.consumers.replay import replay
from memstream.consumers.settings import load_settings
from memstream.consumers.storage import vector_storage_from_settings
from memstream.producers import MemoryClient
from memstream.projections.embedders import HashEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.point_store import EdgeStores, from_payload
from memstream.projections.priority import SEARCH_PRIORITY_VAR
from memstream.projections.vectors import VectorProjection
from memstream.schemas.errors import MemstreamError
from tests.e2e.conftest import Up, start_up
from tests.integration.test_history_crash import _acked
from tests.integration.test_history_runner import last_seq, publish_mixed
from tests.waiting import wait_for

TOTAL = 12_000
ENV = {"MEMSTREAM_BATCH_SIZE": "250", "MEMSTREAM_EMBEDDER": "hash"}


def child_pids(parent: int, module: bytes = b"memstream.consumers.engine") -> list[int]:
    """The pids of the engine processes (one a generation open), or of another
    ``module``, that ``parent`` started and that run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == parent and state != "Z" and module + b"\x00" in cmdline + b"\x00":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def acked(nc: NatsClient, data_dir: Path, projection: str) -> int:
    return await _acked(nc, data_dir, projection)


async def dead_letters(nc: NatsClient) -> int:
    try:
        return (await nc.jetstream().stream_info("MEMORY_DLQ")).state.messages
    except nats.js.errors.NotFoundError:
        return 0


def points(projection: VectorProjection) -> list[dict[str, Any]]:
    return sorted(
        (from_payload(p) for p in projection.store.payloads()),
        key=lambda p: (p["tenant"], p["kind"], p["ref"]),
    )


async def assert_as_a_clean_replay(
    nc: NatsClient, data_dir: Path, tmp_path: Path, end: int
) -> None:
    """The vectors under ``data_dir`` (memstream stopped) hold exactly what a replay of
    the whole stream into a new projection makes."""
    settings = load_settings({"MEMSTREAM_EMBEDDER": "hash"}, data_dir=str(data_dir))
    vectors = vector_storage_from_settings(settings)
    try:
        projection = vectors.open_current()
        assert end == projection.checkpoint
        found = points(projection)
    finally:
        vectors.close()
    clean_stores = EdgeStores(tmp_path / "clean")
    cache = EmbeddingCache(tmp_path / "clean-cache.sqlite3")
    try:
        clean = VectorProjection(clean_stores, CachedEmbedder(HashEmbedder(384), cache))
        await replay(nc, clean)
        expected = points(clean)
    finally:
        clean_stores.close()
        cache.close()
    assert len(expected) == len(found)
    assert expected == found


async def _published(nc: NatsClient) -> tuple[int, int]:
    await publish_mixed(nc, TOTAL // 2, tenant="acme")
    await publish_mixed(nc, TOTAL // 2, tenant="beta")
    first = (await nc.jetstream().stream_info("MEMORY")).state.first_seq
    return first, await last_seq(nc)


async def _mid_vectors(nc: NatsClient, running: Up, first: int, end: int) -> None:
    async def mid() -> bool:
        return first + 500 < await acked(nc, running.data_dir, "vectors") < end - 2000

    await wait_for(mid, timeout=120, what="the vectors' ingest under way")


async def test_the_engine_killed_mid_batch_is_restarted_and_loses_nothing(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    first, end = await _published(nc)
    running = start_up(tmp_path / "data", "--nats-url", nats_server.url, env=ENV)
    try:
        await _mid_vectors(nc, running, first, end)
        killed = child_pids(running.process.pid)
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        at_kill = await acked(nc, running.data_dir, "vectors")

        async def caught_up() -> bool:
            return await acked(nc, running.data_dir, "vectors") >= end

        await wait_for(caught_up, timeout=240, what="the vectors caught up after the kill")
        assert at_kill < end, "the kill came after the vectors' ingest had finished"
        restarted = child_pids(running.process.pid)
        assert restarted and not set(restarted) & set(killed)
        # The query worker searches through a new engine process, and says it restarted.
        mem = MemoryClient(nc, tenant="acme", agent="reader")
        assert await mem.search("fact", min_seq=end, top_k=3)
        pings = await ping_all(nc)
        engines = [p.engine for p in pings if p.engine is not None]
        assert 1 == len(engines) and engines[0].up and engines[0].pid in restarted
        assert engines[0].restarts >= 1
    finally:
        assert 0 == running.stop(signal.SIGTERM, timeout=120)
    assert 0 == await dead_letters(nc)
    await assert_as_a_clean_replay(nc, running.data_dir, tmp_path, end)


async def test_memstream_killed_mid_batch_takes_its_engine_and_loses_nothing(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    first, end = await _published(nc)
    data_dir = tmp_path / "data"
    running = start_up(data_dir, "--nats-url", nats_server.url, env=ENV)
    try:
        await _mid_vectors(nc, running, first, end)
        engines = child_pids(running.process.pid)
        assert engines
    finally:
        assert -signal.SIGKILL == running.stop(signal.SIGKILL)
    # The engines end with their parent (and let go of the shards for the next one).
    await wait_for(
        lambda: not any(map(alive, engines)), timeout=30, what="the engines gone with memstream"
    )
    assert await acked(nc, data_dir, "vectors") < end

    again = start_up(data_dir, "--nats-url", nats_server.url, env=ENV)
    try:

        async def caught_up() -> bool:
            return await acked(nc, data_dir, "vectors") >= end

        await wait_for(caught_up, timeout=240, what="the vectors caught up after the restart")
    finally:
        assert 0 == again.stop(signal.SIGTERM, timeout=120)
    assert 0 == await dead_letters(nc)
    await assert_as_a_clean_replay(nc, data_dir, tmp_path, end)


async def test_the_searcher_killed_is_restarted_and_answers(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Searches are answered by the searcher process; killed, it is started again, and
    a search asked meanwhile is answered once it is back (the SDK's wait covers it)."""
    running = start_up(tmp_path / "data", "--nats-url", nats_server.url, env=ENV)
    try:
        mem = MemoryClient(nc, tenant="acme", agent="writer")
        ack = await mem.store_knowledge("the gateway times out after 30 s", domain="ops")
        [killed] = child_pids(running.process.pid, b"memstream.consumers.searcher")
        os.kill(killed, signal.SIGKILL)
        found: list[Any] = []
        await wait_for(
            lambda: _answered(mem, ack.seq, found), timeout=30, what="a search answered again"
        )
        assert ["the gateway times out after 30 s"] == [h.text for h in found[-1]]
        [restarted] = child_pids(running.process.pid, b"memstream.consumers.searcher")
        assert restarted != killed
    finally:
        assert 0 == running.stop(signal.SIGTERM, timeout=60)


@pytest.mark.skipif(
    os.geteuid() != 0
    and resource.getrlimit(resource.RLIMIT_NICE)[0]
    < 20 - (os.getpriority(os.PRIO_PROCESS, 0) - 10),
    reason="raising a priority needs root or a nice limit (RLIMIT_NICE) of 30",
)
async def test_high_search_priority_raises_the_searcher_and_the_engine_alone(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """``MEMSTREAM_SEARCH_PRIORITY=high``: the searcher's and the engine's processes run
    at nice 10 below memstream's, the process that applies the events at memstream's,
    and searches are answered."""
    env = {**ENV, SEARCH_PRIORITY_VAR: "high"}
    running = start_up(tmp_path / "data", "--nats-url", nats_server.url, env=env)
    try:
        mem = MemoryClient(nc, tenant="acme", agent="writer")
        ack = await mem.store_knowledge("the gateway times out after 30 s", domain="ops")
        found: list[Any] = []
        await wait_for(lambda: _answered(mem, ack.seq, found), timeout=30, what="a search")
        assert ["the gateway times out after 30 s"] == [h.text for h in found[-1]]
        usual = os.getpriority(os.PRIO_PROCESS, 0)
        [searcher] = child_pids(running.process.pid, b"memstream.consumers.searcher")
        engines = child_pids(running.process.pid)
        assert engines
        raised = {pid: os.getpriority(os.PRIO_PROCESS, pid) for pid in [searcher, *engines]}
        assert raised == {pid: max(usual - 10, -20) for pid in raised}
        assert usual == os.getpriority(os.PRIO_PROCESS, running.process.pid)
    finally:
        assert 0 == running.stop(signal.SIGTERM, timeout=60)


async def _answered(mem: MemoryClient, seq: int, found: list[Any]) -> bool:
    """Whether a search is answered (its hits kept in ``found``): not while no searcher
    answers (it is being restarted)."""
    try:
        found.append(await mem.search("gateway timeout", min_seq=seq))
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, MemstreamError):
        return False
    return True

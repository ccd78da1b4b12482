"""Exactly once across a stop: memstream killed (SIGKILL) or stopped (SIGTERM) mid-ingest,
then started again."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import nats.js.errors
from nats.aio.client import Client as NatsClient

from memstream.consumers.nats_server import NatsServer
from memstream.consumers.replay import replay
from memstream.consumers.settings import load_settings
from memstream.consumers.storage import HistoryStorage, vector_storage_from_settings
from memstream.producers import MemoryClient
from memstream.projections.history import HistoryProjection
from memstream.projections.memory import MEMORY_KINDS
from memstream.projections.point_store import from_payload
from memstream.schemas.subjects import durable_name
from tests.e2e.conftest import start_up
from tests.integration.test_history_runner import dump, last_seq, publish_mixed
from tests.waiting import wait_for


async def _acked(nc: NatsClient, data_dir: Path, projection: str = "history") -> int:
    """The ack floor of the durable the data dir's instance owns (history-<id>); 0 while
    it is being recreated at the projection's checkpoint (see sync_position)."""
    instance = json.loads((data_dir / "deployment.json").read_text())["id"]
    try:
        info = await nc.jetstream().consumer_info("MEMORY", durable_name(projection, instance))
    except nats.js.errors.NotFoundError:
        return 0
    return info.ack_floor.stream_seq if info.ack_floor else 0


async def test_sigkill_mid_ingest_then_restart_applies_each_event_once(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Killed between commits and acks, the restarted projection holds every event once."""
    total = 20_000
    await publish_mixed(nc, total)
    first_seq = (await nc.jetstream().stream_info("MEMORY")).state.first_seq
    end = await last_seq(nc)
    data_dir = tmp_path / "data"
    env = {"MEMSTREAM_BATCH_SIZE": "250"}
    running = start_up(data_dir, "--nats-url", nats_server.url, env=env)
    try:
        await wait_for(
            lambda: _mid(nc, data_dir, first_seq, end), timeout=60, what="ingest under way"
        )
    finally:
        killed_with = running.stop(signal.SIGKILL)
    assert -signal.SIGKILL == killed_with
    acked_at_kill = await _acked(nc, data_dir)
    assert acked_at_kill < end, "the kill came after ingest had finished"

    restarted = start_up(data_dir, "--nats-url", nats_server.url, env=env)
    try:
        # The vector projection is the slower one.
        await wait_for(
            lambda: _caught_up(nc, data_dir, end), timeout=240, what="caught up after restart"
        )
    finally:
        assert 0 == restarted.stop(signal.SIGTERM, timeout=120)

    path = HistoryStorage(data_dir).files.current()
    assert path is not None
    history = HistoryProjection(path, read_only=True)
    assert (total, total, total, end) == history.con.execute(
        "SELECT count(*), count(DISTINCT id), count(DISTINCT seq), max(seq) FROM events"
    ).fetchone()
    # The typed tables too: equal to a clean replay of the same stream.
    clean = HistoryProjection(tmp_path / "clean.duckdb")
    await replay(nc, clean)
    assert dump(clean) == dump(history)
    # And the vectors hold exactly the memories the history holds.
    memories = {
        (kind, tenant, ref)
        for kind, table in (("knowledge", "knowledge"), ("solutions", "solutions"))
        for tenant, ref in history.con.execute(f"SELECT tenant, memory_id FROM {table}").fetchall()
    }
    settings = load_settings({"MEMSTREAM_EMBEDDER": "hash"}, data_dir=str(data_dir))
    vectors = vector_storage_from_settings(settings)
    projection = vectors.open_current()
    assert end == projection.checkpoint
    records = [from_payload(p) for p in projection.store.payloads()]
    points = {(r["kind"], r["tenant"], r["ref"]) for r in records if r["kind"] in MEMORY_KINDS}
    vectors.close()
    assert memories == points


async def _mid(nc: NatsClient, data_dir: Path, first: int, end: int) -> bool:
    return first < await _acked(nc, data_dir) < end - 2000


async def _caught_up(nc: NatsClient, data_dir: Path, end: int) -> bool:
    return await _acked(nc, data_dir) >= end and await _acked(nc, data_dir, "vectors") >= end


async def test_sigterm_mid_ingest_finishes_and_acks_the_batch_in_flight(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A graceful stop commits the batch in flight and acks exactly what it committed;
    started again, memstream answers queries over every event exactly once."""
    total = 20_000
    await publish_mixed(nc, total)
    first_seq = (await nc.jetstream().stream_info("MEMORY")).state.first_seq
    end = await last_seq(nc)
    data_dir = tmp_path / "data"
    running = start_up(data_dir, "--nats-url", nats_server.url, env={"MEMSTREAM_BATCH_SIZE": "250"})
    try:
        await wait_for(
            lambda: _mid(nc, data_dir, first_seq, end), timeout=60, what="ingest under way"
        )
    finally:
        assert 0 == running.stop(signal.SIGTERM, timeout=120)
    acked = await _acked(nc, data_dir)
    path = HistoryStorage(data_dir).files.current()
    assert path is not None
    history = HistoryProjection(path, read_only=True)
    assert acked == history.checkpoint
    assert acked < end, "the stop came after ingest had finished"
    (count,) = history.con.execute(
        "SELECT count(*) FROM events WHERE seq >= ?", [first_seq]
    ).fetchone()  # type: ignore[misc]
    assert acked - first_seq + 1 == count
    history.close()

    restarted = start_up(data_dir, "--nats-url", nats_server.url)
    try:
        await wait_for(
            lambda: _caught_up(nc, data_dir, end), timeout=240, what="caught up after restart"
        )
        mem = MemoryClient(nc, tenant="acme", agent="reader")
        stats = await mem.stats(min_seq=end)
        assert total == sum(stats.events_by_type.values())
        assert {"history": end, "vectors": end} == stats.last_applied_seq
        seqs: list[int] = []
        after = 0
        while True:
            page = await mem.history(after_seq=after, limit=2000)
            seqs += [e["seq"] for e in page.events]
            if page.next_after_seq is None:
                break
            after = page.next_after_seq
        assert list(range(first_seq, end + 1)) == seqs
    finally:
        assert 0 == restarted.stop(signal.SIGTERM, timeout=120)

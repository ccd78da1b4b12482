"""Erasure: a tenant purged, a memory erased, and nothing of them left anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from memstream.consumers import ops
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.service import rebuild_offline
from memstream.consumers.settings import load_settings
from memstream.consumers.storage import HistoryStorage, vector_storage_from_settings
from memstream.producers import MemoryClient
from memstream.projections._tables import TABLES
from memstream.projections.embedding_cache import text_key
from memstream.projections.history import HistoryProjection
from memstream.projections.point_store import from_payload
from memstream.schemas.errors import InvalidTenant
from memstream.schemas.partitions import slot_of
from tests.integration.test_query_worker import running, write_session


async def stream_contents(nc: NatsClient, stream: str) -> list[tuple[str, bytes]]:
    """Every message of a stream: (subject, body)."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(
        "", stream=stream, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE
        ),
    )  # fmt: skip
    found: list[tuple[str, bytes]] = []
    while len(found) < info.state.messages:
        found += [(m.subject, m.data) for m in await sub.fetch(1000, timeout=5)]
    await sub.unsubscribe()
    return found


def history_rows(data_dir: Path, tenant: str) -> dict[str, int]:
    path = HistoryStorage(data_dir).files.current()
    assert path is not None
    history = HistoryProjection(path, read_only=True)
    try:
        return {
            t: history.con.execute(
                f"SELECT count(*) FROM {t} WHERE tenant = ?", [tenant]
            ).fetchone()[0]  # type: ignore[index]
            for t in TABLES
        }
    finally:
        history.close()


def history_text(data_dir: Path) -> str:
    """Every table of the history, dumped as text."""
    path = HistoryStorage(data_dir).files.current()
    assert path is not None
    history = HistoryProjection(path, read_only=True)
    try:
        return repr({t: history.con.execute(f"SELECT * FROM {t}").fetchall() for t in TABLES})
    finally:
        history.close()


def vector_payloads(data_dir: Path) -> list[dict[str, Any]]:
    storage = vector_storage_from_settings(
        load_settings({"MEMSTREAM_EMBEDDER": "hash"}, data_dir=str(data_dir))
    )
    try:
        return [from_payload(p) for p in storage.open_current().store.payloads()]
    finally:
        storage.close()


def cached(data_dir: Path, tenant: str) -> int:
    storage = vector_storage_from_settings(
        load_settings({"MEMSTREAM_EMBEDDER": "hash"}, data_dir=str(data_dir))
    )
    try:
        return storage.cache.count(tenant)
    finally:
        storage.close()


async def test_a_purged_tenant_is_nowhere_and_the_others_untouched(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """After a purge, the stream, the DLQ, every table, every collection and the cache
    hold nothing of acme; beta's data is exactly as before."""
    data = tmp_path / "data"
    async with running(nats_server, data):
        await write_session(MemoryClient(nc, tenant="acme", agent="planner"))
        beta = await write_session(MemoryClient(nc, tenant="beta", agent="planner"))
        js = nc.jetstream()
        for tenant in ("acme", "beta"):
            await js.publish(f"mem.{tenant}.knowledge.stored", b"{not json")
        last = (await js.stream_info("MEMORY")).state.last_seq
        await MemoryClient(nc, tenant="acme", agent="x").stats(min_seq=last)
        await MemoryClient(nc, tenant="acme", agent="x").search("x", min_seq=last)
        before = await stream_contents(nc, "MEMORY")

        settings = load_settings({}, data_dir=str(data), nats_url=nats_server.url)
        report = await ops.purge_tenant(settings, "acme", url_given=True, data_dir_given=True)
        assert ([str(data.resolve())], nats_server.url) == (report.data_dirs, report.nats_url)

        assert (len(beta) + 1, 2) == (report.stream_messages, report.dlq_messages)
        assert len(beta) == report.history_rows["events"]
        # a knowledge, a solution, a collaboration, a task, three turns
        assert 7 == report.vector_points
        assert report.cached_embeddings >= 3
        after = await stream_contents(nc, "MEMORY")
        assert [m for m in before if not m[0].startswith("mem.acme.")] == after
        dlq = await stream_contents(nc, "MEMORY_DLQ")
        assert ["memdlq.history.beta", "memdlq.vectors.beta"] == sorted(s for s, _ in dlq)
        # memstream goes on: acme may start afresh, and is projected again.
        ack = await MemoryClient(nc, tenant="acme", agent="x").store_knowledge(
            "a new start", domain="d", memory_id="k-gather"
        )
        hits = await MemoryClient(nc, tenant="acme", agent="x").search("new start", min_seq=ack.seq)
        assert ["a new start"] == [h.text for h in hits]
        await ops.purge_tenant(settings, "acme", url_given=True, data_dir_given=True)

    assert {t: 0 for t in TABLES} == history_rows(data, "acme")
    assert 0 < history_rows(data, "beta")["events"]
    text = history_text(data)
    payloads = vector_payloads(data)
    assert {"beta"} == {p["tenant"] for p in payloads}
    assert 7 == len(payloads)  # beta's session: the same seven points
    assert 0 == cached(data, "acme") and 0 < cached(data, "beta")
    assert "'acme'" not in text


async def test_an_erased_memory_is_gone_even_after_a_full_replay(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """memory.forgotten with erase deletes the memory's earlier events from the stream;
    rebuilding both projections from the stream does not bring it back."""
    data = tmp_path / "data"
    secret, revised = "the vault code is 4711", "the vault code is 4712 now"
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    async with running(nats_server, data):
        await mem.store_knowledge(secret, domain="ops", memory_id="k-secret")
        await mem.store_knowledge("the wiki lives at /docs", domain="ops", memory_id="k-keep")
        await mem.revise("k-secret", content=revised)
        await mem.link("k-secret", "k-keep", "see_also")
        gone = await mem.forget("k-secret", reason="leaked", erase=True)
        hits = await mem.search("vault code", top_k=10, min_seq=gone.seq)
        assert ["k-keep"] == [h.memory_id for h in hits]
        page = await mem.history(min_seq=gone.seq)
        shown = msgspec.json.encode(page.events)
        assert b"4711" not in shown and b"4712" not in shown
    bodies = b"".join(body for _, body in await stream_contents(nc, "MEMORY"))
    assert b"4711" not in bodies and b"4712" not in bodies
    assert b"k-keep" in bodies

    settings = load_settings({"MEMSTREAM_EMBEDDER": "hash"}, data_dir=str(data))
    await rebuild_offline(nc, HistoryStorage(data))
    await rebuild_offline(nc, vector_storage_from_settings(settings))
    text = history_text(data)
    assert "4711" not in text and "4712" not in text and "wiki" in text
    payloads = vector_payloads(data)
    assert ["k-keep"] == [p["ref"] for p in payloads]
    storage = vector_storage_from_settings(settings)
    try:
        found = storage.cache.get_many(
            "acme", storage.embedder.model, 384, [text_key(secret), text_key(revised)]
        )
    finally:
        storage.close()
    assert {} == found


async def test_purging_needs_a_valid_tenant(tmp_path: Path) -> None:
    """A bad tenant id is refused before anything is touched (here: before connecting)."""
    settings = load_settings({}, data_dir=str(tmp_path), nats_url="nats://127.0.0.1:1")
    with pytest.raises(InvalidTenant, match="not a valid tenant id"):
        await ops.purge_tenant(settings, "Acme Corp", url_given=True)


async def test_a_purge_with_nothing_running_works_on_the_files(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """With memstream stopped, purge empties the stream by subject and edits the history
    file, the Qdrant directory and the cache itself."""
    data = tmp_path / "data"
    async with running(nats_server, data):
        await write_session(MemoryClient(nc, tenant="acme", agent="planner"))
        ack = await MemoryClient(nc, tenant="beta", agent="b").store_knowledge("b", domain="d")
        await MemoryClient(nc, tenant="acme", agent="x").stats(min_seq=ack.seq)
        await MemoryClient(nc, tenant="acme", agent="x").search("x", min_seq=ack.seq)
    settings = load_settings(
        {"MEMSTREAM_EMBEDDER": "hash"}, data_dir=str(data), nats_url=nats_server.url
    )
    report = await ops.purge_tenant(settings, "acme", url_given=True)
    assert (13, 13, 7) == (
        report.stream_messages,
        report.history_rows["events"],
        report.vector_points,
    )
    assert {t: 0 for t in TABLES} == history_rows(data, "acme")
    assert 1 == history_rows(data, "beta")["events"]
    assert ["beta"] == [p["tenant"] for p in vector_payloads(data)]
    assert 0 == cached(data, "acme")
    subjects = [s for s, _ in await stream_contents(nc, "MEMORY")]
    assert [f"mem.beta.knowledge.stored.{slot_of('beta')}"] == subjects

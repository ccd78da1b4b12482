"""An event published again past JetStream's duplicate window (same id, new sequence)
applies once in both projections: a revision is not undone, a forgotten memory stays
forgotten, in the live projections and in a rebuild."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from memstream.consumers.service import rebuild_offline
from memstream.consumers.storage import HistoryStorage
from memstream.producers import MemoryClient, PublishAck
from memstream.schemas import events as ev
from tests.integration.test_history_runner import run_live
from tests.integration.test_vectors_runner import storage as vector_storage


async def _republish_past_the_window(mem: MemoryClient, event: ev.Event) -> PublishAck:
    """Publish ``event`` again once JetStream no longer knows its id (a short window)."""
    for _ in range(500):
        ack = await mem.publish(event)
        if not ack.duplicate:
            return ack
        await asyncio.sleep(0.02)
    raise AssertionError("JetStream kept the id past its duplicate window")


def _search(projection: Any) -> list[str]:
    return [h.text for h in projection.search("acme", "retry budget", top_k=10)]


async def test_a_republished_event_applies_once_in_both_projections(
    nc: NatsClient, tmp_path: Path
) -> None:
    """store A, revise to B, republish the store: both still say B; forget, republish the
    store: both say nothing, live and after a rebuild."""
    js = nc.jetstream()
    config = (await js.stream_info("MEMORY")).config
    await js.update_stream(config.evolve(duplicate_window=0.2))
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    stored = mem.new_event(
        ev.KnowledgeStored, memory_id="k", domain="d", content="the retry budget is A"
    )
    await mem.publish(stored)
    await mem.revise("k", content="the retry budget is B")
    history = HistoryStorage(tmp_path / "h").open_current()
    vectors_store = vector_storage(tmp_path / "v")
    vectors = vectors_store.open_current()
    try:
        await run_live(nc, history)
        await run_live(nc, vectors)  # type: ignore[arg-type]
        await _republish_past_the_window(mem, stored)
        await run_live(nc, history)
        await run_live(nc, vectors)  # type: ignore[arg-type]
        content = "SELECT content FROM knowledge"
        assert [("the retry budget is B",)] == history.con.execute(content).fetchall()
        assert ["the retry budget is B"] == _search(vectors)

        await mem.forget("k")
        await _republish_past_the_window(mem, stored)
        await run_live(nc, history)
        await run_live(nc, vectors)  # type: ignore[arg-type]
        assert [] == history.con.execute(content).fetchall()
        assert [] == _search(vectors)
    finally:
        history.close()
    await rebuild_offline(nc, vector_storage(tmp_path / "v2"))  # closes what it opened
    again = vector_storage(tmp_path / "v2")
    try:
        assert [] == _search(again.open_current())
    finally:
        again.close()
        vectors_store.close()

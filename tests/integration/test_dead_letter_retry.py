"""Retrying a dead letter re-applies it to the projection that dead-lettered it, and to
no other: a still-bad event comes back once, not once per projection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers import dead_letters
from memstream.consumers.runner import LiveRunner
from memstream.consumers.storage import HistoryStorage
from memstream.producers import MemoryClient
from memstream.projections.history import HistoryProjection
from memstream.schemas.errors import UsageError
from memstream.schemas.events import EventDecoder
from tests.integration.test_history_runner import run_live
from tests.integration.test_vectors_runner import storage as vector_storage


async def _letters(nc: NatsClient) -> Counter[tuple[str, int]]:
    return Counter((d.projection, d.source_seq) for d in await dead_letters.list_dead_letters(nc))


async def test_a_retry_goes_to_the_projection_that_dead_lettered(
    nc: NatsClient, tmp_path: Path
) -> None:
    """Both projections dead-letter a bad event; retrying the history's letter brings it
    back to the history alone: the vectors keep their one letter, and no more."""
    await nc.jetstream().publish("mem.acme.knowledge.stored", b"{broken")
    vectors_store = vector_storage(tmp_path / "v")
    vectors = vectors_store.open_current()
    history = HistoryStorage(tmp_path / "h").open_current()
    await run_live(nc, history)
    await run_live(nc, vectors)  # type: ignore[arg-type]
    assert Counter({("history", 1): 1, ("vectors", 1): 1}) == await _letters(nc)
    (history_letter,) = [
        d for d in await dead_letters.list_dead_letters(nc) if d.projection == "history"
    ]
    await dead_letters.retry_dead_letters(nc, {history_letter.seq})
    await run_live(nc, history)
    await run_live(nc, vectors)  # type: ignore[arg-type]
    letters = await _letters(nc)
    assert (1, 1) == (
        sum(n for (p, _), n in letters.items() if p == "history"),
        sum(n for (p, _), n in letters.items() if p == "vectors"),
    ), letters
    history.close()
    vectors_store.close()


async def test_a_fixed_cause_applies_the_retry_where_it_failed_only(
    nc: NatsClient, tmp_path: Path
) -> None:
    """An event only the history refused (a stricter size limit) is applied by the
    history after the retry; the vectors, which applied it, do not see it again."""
    client = MemoryClient(nc, tenant="acme", agent="a1")
    await client.store_knowledge("y" * 10_000, domain="d", memory_id="big")
    vectors_store = vector_storage(tmp_path / "v")
    vectors = vectors_store.open_current()
    history = HistoryProjection(tmp_path / "h.duckdb")
    await run_live(nc, history, decoder=EventDecoder(max_bytes=4096))
    await run_live(nc, vectors)  # type: ignore[arg-type]
    await dead_letters.retry_dead_letters(nc)
    await run_live(nc, history)
    seen: list[int] = []
    original = vectors.apply

    def counting(batch, upto=0, bodies=None):  # type: ignore[no-untyped-def]
        seen.extend(s for s, _ in batch)
        return original(batch, upto, bodies)

    vectors.apply = counting  # type: ignore[method-assign]
    runner: LiveRunner = await run_live(nc, vectors)  # type: ignore[arg-type]
    assert [] == seen  # the copy was passed by
    assert 0 == runner.stats.dead_letters
    assert [("big",)] == history.con.execute("SELECT memory_id FROM knowledge").fetchall()
    history.close()
    vectors_store.close()


async def test_retrying_a_letter_that_does_not_exist_is_an_error(nc: NatsClient) -> None:
    """--seq of a letter that is not there says so, and retries nothing."""
    await nc.jetstream().publish("mem.acme.knowledge.stored", b"{broken")
    with pytest.raises(UsageError, match="no dead letter at DLQ seq 999"):
        await dead_letters.retry_dead_letters(nc, {999})

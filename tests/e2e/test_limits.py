"""MEMSTREAM_MAX_EVENT_BYTES is one limit: the SDK, the broker, the stream and the
workers all hold to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from memstream.producers import MemoryClient
from tests.e2e.conftest import start_up


async def _publish_and_stats(url: str, size: int, limit: int) -> tuple[int, dict[str, int], int]:
    async with await MemoryClient.connect(
        url, tenant="acme", agent="a1", max_event_bytes=limit
    ) as mem:
        ack = await mem.store_knowledge("x" * size, domain="limits")
        done = await mem.store_knowledge("a small one after it", domain="limits")
        stats = await mem.stats(min_seq=done.seq, wait_ms=30_000)
        return ack.seq, stats.events_by_type, stats.dlq_count


@pytest.mark.parametrize(
    ("limit", "size", "applied", "dead"),
    [
        (4096, 8000, 1, 2),  # over a lowered limit: a dead letter of each projection
        (3 * 1024 * 1024, 2 * 1024 * 1024, 2, 0),  # under a raised limit: applied
    ],
)
def test_the_workers_hold_to_the_configured_event_size(
    tmp_path: Path, limit: int, size: int, applied: int, dead: int
) -> None:
    """An event over the configured limit is dead-lettered by the workers; one under a
    limit raised past the default is applied, not dead-lettered."""
    up = start_up(tmp_path / "data", env={"MEMSTREAM_MAX_EVENT_BYTES": str(limit)})
    try:
        # The publisher is told a bigger limit, as a misconfigured agent would be.
        _, by_type, dlq = asyncio.run(_publish_and_stats(up.url, size, 8 * 1024 * 1024))
    finally:
        up.stop()
    assert (applied, dead) == (by_type.get("knowledge.stored", 0), dlq)

"""The data dir's filesystem fills up while memories arrive, then space comes back.

What a user cares about afterwards: nothing in the dead-letter stream, every
acknowledged memory in the history exactly once, and every one found by search. While
the disk is full, both projections say they are not advancing, and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstream.consumers.nats_server import NatsServer
from memstream.producers import MemoryClient
from tests.disks import SmallDisk, small_disk
from tests.e2e.conftest import run_cli, start_up
from tests.faults.findable import every_memory_is_found, publish_memories
from tests.waiting import wait_for


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A real 256 MB filesystem (tmpfs) under the data dir."""
    with small_disk(tmp_path / "small", "256M") as disk:
        yield disk


async def test_a_full_disk_loses_nothing_acknowledged(
    nats_server: NatsServer, nc: object, disk: SmallDisk
) -> None:
    data = disk.path / "data"
    up = start_up(data, "--nats-url", nats_server.url)
    try:
        async with await MemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as mem:
            seq = await publish_memories(mem, range(300))
            await mem.search("fact", min_seq=seq, wait_ms=60_000)
            disk.fill()
            last = await publish_memories(mem, range(300, 2000))

            async def both_stalled() -> bool:
                health = (await mem.stats(wait_ms=0)).health
                return "ok" not in (health.get("history"), health.get("vectors"))

            # Before the fix the vectors never said so: they dead-lettered instead.
            await wait_for(both_stalled, timeout=60, what="both projections to stall")
            health = (await mem.stats(wait_ms=0)).health
            disk.free()
            for reason in health.values():  # the disk's own words, passed on
                assert any(w in reason for w in ("space", "full", "free")), health
            await every_memory_is_found(mem, range(2000), last)

            async def healthy() -> bool:
                health = (await mem.stats(wait_ms=0)).health
                return {"history": "ok", "vectors": "ok"} == health

            await wait_for(healthy, timeout=60, what="both projections to say ok again")
            assert 0 == (await mem.stats(min_seq=last, wait_ms=60_000)).dlq_count
    finally:
        assert 0 == up.stop(timeout=120)
    counted = run_cli(
        "sql", "--data-dir", str(data), "--format", "json",
        "SELECT count(*) AS n, count(DISTINCT memory_id) AS d FROM knowledge",
    )  # fmt: skip
    assert 0 == counted.returncode, counted.stderr
    assert [{"n": 2000, "d": 2000}] == json.loads(counted.stdout)
    letters = run_cli("dlq", "list", "--nats-url", nats_server.url, "--json")
    assert [] == json.loads(letters.stdout)

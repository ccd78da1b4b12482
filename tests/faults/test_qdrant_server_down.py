"""The Qdrant server stops answering while memories arrive under `memstream up`, then
comes back: nothing is dead-lettered and every memory is found. Needs a Docker engine
for the server; skipped, saying why, where none runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memstream.consumers.nats_server import NatsServer
from memstream.producers import MemoryClient
from tests.docker import docker_unavailable
from tests.e2e.conftest import start_up
from tests.faults.findable import every_memory_is_found, publish_memories
from tests.waiting import wait_for

_REASON = docker_unavailable()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture
def qdrant() -> Iterator[tuple[str, Any]]:
    from testcontainers.community.qdrant import QdrantContainer

    with QdrantContainer() as container:
        host = container.get_container_host_ip()
        yield f"http://{host}:{container.get_exposed_port(6333)}", container


async def test_a_stopped_qdrant_server_loses_nothing(
    nats_server: NatsServer, nc: object, qdrant: tuple[str, Any], tmp_path: Path
) -> None:
    url, container = qdrant
    up = start_up(tmp_path / "data", "--nats-url", nats_server.url,
                  env={"MEMSTREAM_QDRANT_URL": url})  # fmt: skip
    wrapped = container.get_wrapped_container()
    try:
        async with await MemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as mem:
            seq = await publish_memories(mem, range(100))
            await every_memory_is_found(mem, range(100), seq)
            wrapped.pause()
            try:
                last = await publish_memories(mem, range(100, 600))

                async def vectors_stalled() -> bool:
                    return "Qdrant" in (await mem.stats(wait_ms=0)).health.get("vectors", "")

                await wait_for(vectors_stalled, timeout=60, what="the vectors to stall")
            finally:
                wrapped.unpause()
            await every_memory_is_found(mem, range(600), last)
            assert 0 == (await mem.stats(min_seq=last, wait_ms=60_000)).dlq_count
    finally:
        assert 0 == up.stop(timeout=120)

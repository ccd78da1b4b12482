"""The vector projection against a Qdrant server in a container (needs Docker).

The same code as the embedded engine, through MEMSTREAM_QDRANT_URL. Without a Docker engine
(as on this project's CI machine) the module is skipped, saying why.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstream.consumers.nats_server import NatsServer
from memstream.consumers.settings import load_settings
from memstream.consumers.storage import vector_storage_from_settings
from memstream.projections.embedders import HashEmbedder
from memstream.schemas import events as ev
from tests.docker import docker_unavailable
from tests.e2e.conftest import run_cli, spawn_ready
from tests.samples import TS

_REASON = docker_unavailable()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture(scope="module")
def qdrant_url() -> Iterator[str]:
    from testcontainers.community.qdrant import QdrantContainer

    with QdrantContainer() as container:
        host = container.get_container_host_ip()
        yield f"http://{host}:{container.get_exposed_port(6333)}"


def _event(cls: type[ev.Event], n: int, tenant: str = "acme", **fields: object) -> ev.Event:
    return cls(id=f"srv-{tenant}-{n}", tenant=tenant, agent="a1", ts=TS, **fields)  # type: ignore[arg-type]


def test_server_mode_projects_searches_and_swaps(qdrant_url: str, tmp_path: Path) -> None:
    """Upsert, tenant isolation, forget and a generation swap work on a real server."""
    settings = load_settings({}, data_dir=str(tmp_path), qdrant_url=qdrant_url)
    storage = vector_storage_from_settings(settings, HashEmbedder(64))
    events = [
        (1, _event(ev.KnowledgeStored, 1, memory_id="m", domain="d", content="vault key")),
        (2, _event(ev.KnowledgeStored, 2, tenant="beta", memory_id="m", domain="d",
                   content="vault key")),
        (3, _event(ev.KnowledgeStored, 3, memory_id="gone", domain="d", content="old news")),
        (4, _event(ev.MemoryForgotten, 4, memory_id="gone")),
    ]  # fmt: skip
    try:
        live = storage.open_current()
        live.apply(events)
        assert ["acme"] == [h.payload["tenant"] for h in live.search("acme", "vault key")]
        assert ["beta"] == [h.payload["tenant"] for h in live.search("beta", "vault key")]
        assert [] == [h for h in live.search("acme", "old news") if h.ref == "gone"]
        calls = storage.embedder.stats.embedding_calls
        rebuilt = storage.open_new()
        rebuilt.apply(events)
        storage.make_current(rebuilt)
        assert calls == storage.embedder.stats.embedding_calls
        assert rebuilt.generation == storage.stores.current()
        assert [rebuilt.generation] == storage.stores.generations()
    finally:
        storage.close()


def test_roles_over_a_qdrant_server(
    qdrant_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    """history, vectors and query roles in three processes: the query role answers search
    and recall from the server, asking the history role for the turns."""
    env = {"MEMSTREAM_NATS_URL": nats_server.url, "MEMSTREAM_QDRANT_URL": qdrant_url}
    processes = [
        spawn_ready(["serve", "--role", role, "--data-dir", str(tmp_path / role)], env)[0]
        for role in ("history", "vectors", "query")
    ]
    try:
        q = ("--nats-url", nats_server.url, "--tenant", "srv")
        seq = json.loads(
            run_cli(
                "remember", *q, "-a", "a1", "--domain", "d", "server mode works", "--json"
            ).stdout
        )["seq"]
        run_cli("publish", "conversation.turn", *q, "-a", "a1", "--data",
                '{"session_id": "s", "role": "user", "content": "hello"}')  # fmt: skip
        rw = ("--min-seq", str(seq + 1), "--json")
        hits = json.loads(run_cli("search", *q, *rw, "server mode").stdout)
        assert ["server mode works"] == [h["text"] for h in hits]
        recall = json.loads(run_cli("recall", *q, *rw, "server", "--session-id", "s").stdout)
        assert {"knowledge", "turn"} == {s["kind"] for s in recall["sources"]}
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        assert [0, 0, 0] == [p.wait(60) for p in processes]

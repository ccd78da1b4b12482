"""The projection contract (tests/projection_contract.py), proven for every backend: the
history on DuckDB, the vectors on the embedded engine, the vectors on a Qdrant server.

Each storage failure is caused for real: a tmpfs filled to its last block, an
OpenAI-compatible server on loopback that rejects its key, fails or stops listening, a
Qdrant server container stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from memstream.consumers.engine_process import EngineProcesses
from memstream.projections.applied_ids import AppliedIds
from memstream.projections.base import Projection
from memstream.projections.embedders import OpenAIEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.history import HistoryProjection
from memstream.projections.point_store import EdgeStores, PointStores, ServerStores, from_payload
from memstream.projections.point_store.remote import RemoteStores
from memstream.projections.vectors import VectorProjection
from tests.disks import SmallDisk
from tests.docker import docker_unavailable
from tests.embedding_server import API_KEY, EmbeddingServer
from tests.projection_contract import Backend, ProjectionContract, pytest_generate_tests

__all__ = ["pytest_generate_tests"]


class HistoryBackend(Backend):
    """DuckDB files on a small disk of their own."""

    faults = ("disk full",)

    def __init__(self, tmp_path: Path) -> None:
        self.disk = SmallDisk(tmp_path / "disk", "64M")
        self.opened: list[HistoryProjection] = []
        self.others = 0

    def _open(self, path: Path) -> HistoryProjection:
        projection = HistoryProjection(path)
        self.opened.append(projection)
        return projection

    def open(self) -> Projection:
        return self._open(self.disk.path / "history.duckdb")

    def other(self) -> Projection:
        self.others += 1
        return self._open(self.disk.path.parent / f"other-{self.others}.duckdb")

    def state(self, projection: Projection) -> Any:
        assert isinstance(projection, HistoryProjection)
        tables = [
            name
            for (name,) in projection.con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' ORDER BY 1"
            ).fetchall()
            # Not what a reader sees: the checkpoint and when it was written, and the ids
            # of erased events (a rebuild never reads them: they left the stream).
            if name not in ("projection_state", "erased_ids")
        ]
        return {
            t: projection.con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables
        }

    def turns(self, projection: Projection) -> list[tuple[str, str]]:
        assert isinstance(projection, HistoryProjection)
        rows = projection.con.execute(
            "SELECT session_id, content FROM conversations ORDER BY seq"
        ).fetchall()
        return [(session, content) for session, content in rows]

    def memories(self, projection: Projection) -> Any:
        tables = self.state(projection)
        return {t: tables[t] for t in ("knowledge", "solutions", "memory_links")}

    def cause(self, fault: str) -> contextlib.AbstractContextManager[None]:
        assert "disk full" == fault
        return self.disk.full()

    def midway(self) -> contextlib.AbstractContextManager[None]:
        # The batch is staged and folded in its transaction; the commit cannot be written.
        return self.disk.full()

    def close(self) -> None:
        for projection in self.opened:
            projection.close()
        self.disk.unmount()


class VectorsBackend(Backend):
    """The vector projection with each part of its storage apart, so each can fail alone:
    the engine's files on one small disk, the SQLite files (embedding cache, applied ids)
    on another, and the embedder a real HTTP server on loopback."""

    faults: ClassVar[tuple[str, ...]] = (
        "embedder rejects its key",
        "embedder failing",
        "embedder down",
        "sqlite disk full",
    )

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.server = EmbeddingServer(dimensions=32)
        self.sqlite_disk = SmallDisk(tmp_path / "sqlite", "16M")
        self.others = 0
        self.opened: list[Any] = []
        self.main_parts: list[Any] = []

    def stores(self, name: str) -> PointStores:
        raise NotImplementedError

    def _embedder(self) -> OpenAIEmbedder:
        # Few and short retries: each fault is an outage for the whole test.
        return OpenAIEmbedder(api_key=API_KEY, model="test-embedding", dimensions=32,
                              base_url=self.server.url, timeout=5.0, max_attempts=2,
                              base_delay=0.01, max_delay=0.02)  # fmt: skip

    def _open(self, name: str, sqlite_dir: Path) -> VectorProjection:
        sqlite_dir.mkdir(exist_ok=True)
        cache = EmbeddingCache(sqlite_dir / f"{name}-cache.sqlite3")
        applied = AppliedIds(sqlite_dir / f"{name}-applied.sqlite3")
        stores = self.stores(name)
        self.opened += [cache, applied, stores]
        return VectorProjection(stores, CachedEmbedder(self._embedder(), cache), applied=applied)

    def open(self) -> Projection:
        # One process opens a shard once: what an earlier open holds is let go first.
        for part in reversed(self.main_parts):
            part.close()
        before = len(self.opened)
        projection = self._open("main", self.sqlite_disk.path)
        self.main_parts = self.opened[before:]
        self.opened = self.opened[:before]
        return projection

    def other(self) -> Projection:
        self.others += 1
        return self._open(f"other{self.others}", self.tmp_path / "other-sqlite")

    def state(self, projection: Projection) -> Any:
        assert isinstance(projection, VectorProjection)
        points = sorted(
            (from_payload(p) for p in projection.store.payloads()),
            key=lambda p: (p["tenant"], p["kind"], p["ref"]),
        )
        return projection.store.points(), points

    def turns(self, projection: Projection) -> list[tuple[str, str]]:
        assert isinstance(projection, VectorProjection)
        turns = (from_payload(p) for p in projection.store.payloads(where={"kind": "turns"}))
        return [(t["session_id"], t["content"]) for t in sorted(turns, key=lambda t: t["seq"])]

    def cause(self, fault: str) -> contextlib.AbstractContextManager[None]:
        if fault == "embedder rejects its key":
            return self.server.failing(401)
        if fault == "embedder failing":
            return self.server.failing(500)
        if fault == "embedder down":
            return self.server.failing("down")
        assert "sqlite disk full" == fault
        return self.sqlite_disk.full()

    @contextlib.contextmanager
    def midway(self) -> Iterator[None]:
        # The batch's first tenant is embedded (and cached); the second is refused.
        self.server.fail_after = 1
        try:
            yield
        finally:
            self.server.fail_after = None

    def close(self) -> None:
        for part in reversed([*self.opened, *self.main_parts]):
            part.close()
        self.sqlite_disk.unmount()
        self.server.close()


class EdgeVectorsBackend(VectorsBackend):
    faults = (*VectorsBackend.faults, "engine disk full")

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        # Room for a shard (which takes tens of MB at once) above the engine's 64 MB
        # free-space guard; filling it trips the guard.
        self.engine_disk = SmallDisk(tmp_path / "engine", "384M")

    def stores(self, name: str) -> PointStores:
        root = self.engine_disk.path if name == "main" else self.tmp_path / "other-engine"
        return EdgeStores(root / name)

    def cause(self, fault: str) -> contextlib.AbstractContextManager[None]:
        if fault == "engine disk full":
            return self.engine_disk.full()
        return super().cause(fault)

    def close(self) -> None:
        super().close()
        self.engine_disk.unmount()


class EngineVectorsBackend(EdgeVectorsBackend):
    """Edge in a process of its own (as ``memstream up`` runs it), reached over its
    socket; and that process killed (SIGKILL), then started again as its supervisor
    does."""

    faults = (*EdgeVectorsBackend.faults, "engine process killed")

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.engines: dict[str, EngineProcesses] = {}

    def stores(self, name: str) -> PointStores:
        shards = super().stores(name).files.dir  # type: ignore[attr-defined]
        engines = self.engines.get(name)
        if engines is None:
            engines = self.engines[name] = EngineProcesses(shards)
        return RemoteStores(shards, engines)

    @contextlib.contextmanager
    def _killed(self) -> Iterator[None]:
        engines = self.engines["main"]
        pids = engines.pids()
        assert pids, "no engine process to kill"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for child in engines._children.values():
            assert child.proc is not None
            child.proc.wait()
        try:
            yield
        finally:
            assert engines.exited() is not None
            engines.restart()

    def cause(self, fault: str) -> contextlib.AbstractContextManager[None]:
        if fault == "engine process killed":
            return self._killed()
        return super().cause(fault)

    def close(self) -> None:
        for part in reversed([*self.opened, *self.main_parts]):
            part.close()
        self.opened, self.main_parts = [], []
        for engine in self.engines.values():
            assert engine.stop() in (0, None)
        super().close()


class ServerVectorsBackend(VectorsBackend):
    faults = (*VectorsBackend.faults, "qdrant server stopped")
    url: ClassVar[str] = ""
    container: ClassVar[Any] = None

    def stores(self, name: str) -> PointStores:
        from qdrant_client import QdrantClient

        namespace = f"{self.tmp_path.name}-{name}".replace("_", "-").lower()
        return ServerStores(QdrantClient(url=self.url, timeout=5), namespace)

    @contextlib.contextmanager
    def _stopped(self) -> Iterator[None]:
        wrapped = self.container.get_wrapped_container()
        wrapped.pause()
        try:
            yield
        finally:
            wrapped.unpause()

    def cause(self, fault: str) -> contextlib.AbstractContextManager[None]:
        if fault == "qdrant server stopped":
            return self._stopped()
        return super().cause(fault)


class TestHistoryContract(ProjectionContract):
    backend_class = HistoryBackend

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        backend = HistoryBackend(tmp_path)
        try:
            yield backend
        finally:
            backend.close()


class TestEdgeVectorsContract(ProjectionContract):
    backend_class = EdgeVectorsBackend

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        backend = EdgeVectorsBackend(tmp_path)
        try:
            yield backend
        finally:
            backend.close()


class TestEngineVectorsContract(ProjectionContract):
    backend_class = EngineVectorsBackend

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        backend = EngineVectorsBackend(tmp_path)
        try:
            yield backend
        finally:
            backend.close()


_NO_DOCKER = docker_unavailable()


@pytest.mark.docker
@pytest.mark.skipif(_NO_DOCKER is not None, reason=_NO_DOCKER or "")
class TestServerVectorsContract(ProjectionContract):
    backend_class = ServerVectorsBackend

    @pytest.fixture(scope="class")
    def qdrant(self) -> Iterator[None]:
        from testcontainers.community.qdrant import QdrantContainer

        with QdrantContainer() as container:
            host = container.get_container_host_ip()
            ServerVectorsBackend.url = f"http://{host}:{container.get_exposed_port(6333)}"
            ServerVectorsBackend.container = container
            yield

    @pytest.fixture
    def backend(self, qdrant: None, tmp_path: Path) -> Iterator[Backend]:
        backend = ServerVectorsBackend(tmp_path)
        try:
            yield backend
        finally:
            backend.close()

"""The vector projection on Qdrant Edge: ingest and search, beside the engine's own calls.

- ingest: memories/s through VectorProjection.apply (hash embedder, 384 dimensions,
  cached embeddings, BM25 vectors, payloads, checkpoint) beside the engine's upsert of
  the same points built beforehand. Target: >= 10,000/s and >= 0.7 x raw.
- search: latency of a hybrid VectorProjection.search for one tenant (query embedding
  cached) at ``--tenants`` x ``--per-tenant`` memories, beside the engine's query for
  the same search. Target: p99 <= 5 ms, p50 within 1 ms of the engine's query.

With ``--engine process`` (the default, as ``memstream up`` runs it) the engine is in a
process of its own, reached over its socket: the projection and the engine then run on
two cores at once. ``--engine inline``: in this process, as before.

    python -m benchmarks.ingest_vectors [--tenants 10] [--per-tenant 10000] [--queries 500]
                                        [--engine process|inline]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import qdrant_edge as edge

from benchmarks._common import arguments, exit_code, percentile, report
from memstream.consumers._runtime import tune_for_throughput
from memstream.consumers.engine_process import EngineProcesses
from memstream.projections.embedders import HashEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.point_store import (
    DENSE,
    SPARSE,
    Condition,
    EdgeStore,
    EdgeStores,
    PointStores,
    Search,
    bm25_document,
    bm25_query,
    from_payload,
    new_generation,
    point_id,
)
from memstream.projections.point_store.remote import RemoteStores
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev

WORDS = (  # noqa: SIM905 - a sentence reads better than a list of 31 strings
    "asyncio gather task retry backoff duckdb arrow insert qdrant vector search tenant "
    "agent memory planner coder reviewer patch test flaky timeout cache embedding "
    "stream replay checkpoint batch commit index query latency"
).split()


def memory_text(i: int) -> str:
    return " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 7, 11, 13, 17)) + f" #{i}"


def events_for(tenant: str, n: int, start_seq: int) -> list[tuple[int, ev.Event]]:
    ts = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    return [
        (start_seq + i, ev.KnowledgeStored(id=f"{tenant}-{i}", tenant=tenant, agent="bench",
                                           ts=ts, memory_id=f"m{i}", domain="bench",
                                           content=memory_text(i)))
        for i in range(n)
    ]  # fmt: skip


def main(tenants: int, per_tenant: int, queries: int, engine: str = "process") -> bool:
    tune_for_throughput()
    ok = True
    with tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        process: EngineProcesses | None = None
        stores: PointStores
        if engine == "process":
            process = EngineProcesses(Path(tmp) / "vectors", log_level="warning")
            stores = RemoteStores(Path(tmp) / "vectors", process)
        else:
            stores = EdgeStores(Path(tmp) / "vectors")
        cached = CachedEmbedder(HashEmbedder(384), EmbeddingCache(Path(tmp) / "cache.sqlite3"))
        # Warm the cache with every text: the figure is the projection's, not the hash's.
        for t in range(tenants):
            cached.embed(f"t{t}", [memory_text(i) for i in range(per_tenant)])
        projection = VectorProjection(stores, cached)
        # ingest: through the projection, in batches as the runner would apply them
        seq, start = 1, time.perf_counter()
        for t in range(tenants):
            batch = events_for(f"t{t}", per_tenant, seq)
            for i in range(0, len(batch), 2000):
                projection.apply(batch[i : i + 2000])
            seq += per_tenant
        ours = tenants * per_tenant / (time.perf_counter() - start)
        # raw: the same points (dense, BM25, payload), built beforehand, written to a fresh
        # shard with the engine's own upsert
        points = [
            edge.Point(
                point_id(r["tenant"], r["kind"], r["ref"]),
                {DENSE: cached.embed(r["tenant"], [r["text"]])[0].tolist(),
                 SPARSE: edge.SparseVector(*_sparse(r["text"]))},
                p,
            )
            for p in projection.store.payloads()
            for r in [from_payload(p)]
        ]  # fmt: skip
        raw_store = EdgeStores(Path(tmp) / "raw").open(new_generation(), 384)
        assert isinstance(raw_store, EdgeStore)
        start = time.perf_counter()
        for i in range(0, len(points), 2000):
            raw_store.shard.update(edge.UpdateOperation.upsert_points(points[i : i + 2000]))
        raw = len(points) / (time.perf_counter() - start)
        print(f"ingest-vectors: {tenants} tenants x {per_tenant} memories, hash embedder 384d, "
              f"cached embeddings, Qdrant Edge ({engine})")  # fmt: skip
        ok &= report("ingest-vectors", ours, raw, 0.7, unit="memories/s")
        ok &= ours >= 10_000
        # search: one tenant, hybrid, query embedding cached (warm it first), beside the
        # engine's query for the same search, built beforehand
        probe = f"t{tenants // 2}"
        texts = [memory_text(i * 37 + 5) for i in range(queries)]
        for text in texts:
            projection.search(probe, text, kinds=["knowledge"], top_k=5)
        ours_ms, raw_ms = [], []
        for text in texts:
            start = time.perf_counter()
            projection.search(probe, text, kinds=["knowledge"], top_k=5)
            ours_ms.append((time.perf_counter() - start) * 1000)
            search = Search(
                tenant=probe,
                dense=cached.embed(probe, [text])[0].tolist(),
                sparse=bm25_query(text),
                limit=5,
                must=(Condition("kind", any_of=("knowledge",)),),
            )
            start = time.perf_counter()
            projection.store.search(search)
            raw_ms.append((time.perf_counter() - start) * 1000)
        p50, p99 = statistics.median(ours_ms), percentile(ours_ms, 0.99)
        raw50, raw99 = statistics.median(raw_ms), percentile(raw_ms, 0.99)
        within = p50 - raw50 <= 1.0 and p99 <= 5
        ok &= within
        print(
            f"search ({tenants * per_tenant} memories, one tenant's {per_tenant}), hybrid: "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms vs the engine's query p50 {raw50:.2f} ms, "
            f"p99 {raw99:.2f} ms (target p99 <= 5 ms, p50 within 1 ms of it) "
            f"{'OK' if within else 'BELOW TARGET'}"
        )
        stores.close()
        if process is not None:
            process.stop()
    return ok


def _sparse(text: str) -> tuple[list[int], list[float]]:
    sparse = bm25_document(text)
    return sparse.indices, sparse.values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--per-tenant", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--engine", choices=("process", "inline"), default="process",
        help="the engine in a process of its own (as memstream up runs it), or in this one",
    )  # fmt: skip
    args = arguments(parser, smoke=dict(tenants=2, per_tenant=500, queries=20))
    sys.exit(exit_code(main(args.tenants, args.per_tenant, args.queries, args.engine), args))

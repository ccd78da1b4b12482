"""The vector projection in Qdrant's local mode: ingest and search, beside raw Qdrant.

- ingest: memories/s through VectorProjection.apply (hash embedder, 384 dimensions,
  cache, payloads, checkpoint) beside a raw upload of the same vectors and payloads to
  the same kind of collection.
- search: latency of VectorProjection.search for one tenant (query embedding cached) at
  ``--tenants`` x ``--per-tenant`` memories, beside an in-process Qdrant query_points on
  the same collection with the same vector. Target (README, "Benchmarks"): p99 <= 20 ms, p50 within
  1.5 ms of the raw query.

    python -m benchmarks.ingest_vectors [--tenants 10] [--per-tenant 10000] [--queries 500]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from qdrant_client import QdrantClient, models

from benchmarks._common import percentile, report
from consumers._runtime import tune_for_throughput
from projections.embedders import HashEmbedder
from projections.embedding_cache import CachedEmbedder, EmbeddingCache
from projections.vectors import VectorProjection
from schemas import events as ev

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


def main(tenants: int, per_tenant: int, queries: int) -> bool:
    tune_for_throughput()
    ok = True
    with tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        client = QdrantClient(path=str(Path(tmp) / "qdrant"))
        cached = CachedEmbedder(HashEmbedder(384), EmbeddingCache(Path(tmp) / "cache.sqlite3"))
        projection = VectorProjection(client, cached)
        # ingest: through the projection, in batches as the runner would apply them
        seq, start = 1, time.perf_counter()
        for t in range(tenants):
            batch = events_for(f"t{t}", per_tenant, seq)
            for i in range(0, len(batch), 2000):
                projection.apply(batch[i : i + 2000])
            seq += per_tenant
        ours = tenants * per_tenant / (time.perf_counter() - start)
        # raw: the same vectors and payloads uploaded straight to a fresh collection
        name = projection._physical("knowledge", "t0")
        points = client.scroll(name, limit=per_tenant, with_payload=True, with_vectors=True)[0]
        client.create_collection(
            "raw", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
        )
        start = time.perf_counter()
        for i in range(0, len(points), 2000):
            client.upsert("raw", points=[
                models.PointStruct(id=p.id, vector=p.vector, payload=p.payload)  # type: ignore[arg-type]
                for p in points[i : i + 2000]
            ])  # fmt: skip
        raw = len(points) / (time.perf_counter() - start)
        print(f"ingest-vectors: {tenants} tenants x {per_tenant} memories, hash embedder 384d")
        ok &= report("ingest-vectors", ours, raw, 0.0, unit="memories/s")
        # search: one tenant's collection, query embedding cached (warm it first)
        probe = f"t{tenants // 2}"
        texts = [memory_text(i * 37 + 5) for i in range(queries)]
        for text in texts:
            projection.search(probe, text, kinds=["knowledge"], top_k=5)
        ours_ms, raw_ms = [], []
        name = projection._physical("knowledge", probe)
        for text in texts:
            start = time.perf_counter()
            projection.search(probe, text, kinds=["knowledge"], top_k=5)
            ours_ms.append((time.perf_counter() - start) * 1000)
            vector = cached.embed(probe, [text])[0].tolist()
            start = time.perf_counter()
            client.query_points(name, query=vector, limit=5, with_payload=True)
            raw_ms.append((time.perf_counter() - start) * 1000)
        p50, p99 = statistics.median(ours_ms), percentile(ours_ms, 0.99)
        raw50, raw99 = statistics.median(raw_ms), percentile(raw_ms, 0.99)
        within = p50 - raw50 <= 1.5 and p99 <= 20
        ok &= within
        print(
            f"search ({tenants * per_tenant} memories, one tenant's {per_tenant}): "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms vs raw query_points p50 {raw50:.2f} ms, "
            f"p99 {raw99:.2f} ms (target p99 <= 20 ms, p50 within 1.5 ms of raw) "
            f"{'OK' if within else 'BELOW TARGET'}"
        )
        client.close()
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--per-tenant", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    sys.exit(0 if main(args.tenants, args.per_tenant, args.queries) else 1)

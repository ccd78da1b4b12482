"""Where tenants live in the vector engine: one shard with a tenant index, or a shard each.

For each scenario (``10x100000``: 10 tenants of 100,000 memories; ``1000x100``: 1,000
tenants of 100 memories) and each layout, in this process, with Qdrant Edge:

- ingest: points written a second as a projection writes them (batches of 1,000 in
  arrival order, the tenants interleaved; with a shard each, a batch is split by tenant);
  vectors (hash embedder, 384 dimensions) and BM25 are made beforehand and not timed;
- index: the seconds ``optimize()`` takes to build the indexes (over all shards;
  ``--no-index`` skips it, and the search is then exact);
- open files and memory maps with every shard open; resident memory added; disk used;
- a layout that fails (the engine maps its files into memory: a shard takes ~95 maps, and
  Linux allows a process 65,530 by default) or writes for longer than
  ``--max-ingest-s`` is measured as far as it got, and says so;
- search: a tenant-filtered query of one tenant after indexing, in each mode (hybrid,
  dense, keyword: each side's cost apart), p50 / p99 over
  ``--queries`` questions, asked ``--rounds`` times (the median round).

    python -m benchmarks.layout [--scenarios 10x100000,1000x100] [--queries 300]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import arguments, median_round, time_searches
from benchmarks.ingest_vectors import memory_text
from memstream.consumers._runtime import tune_for_throughput
from memstream.projections.embedders import HashEmbedder
from memstream.projections.point_store import (
    Condition,
    EdgeStore,
    Mode,
    Search,
    Sparse,
    StorePoint,
    bm25_document,
    bm25_query,
    point_id,
)

DIMS = 384
BATCH = 1000
MODES: tuple[Mode, ...] = ("hybrid", "dense", "keyword")
KINDS = Condition("kind", any_of=("knowledge", "solutions", "collaborations"))


@dataclass
class Figures:
    written: int
    failure: str | None
    ingest: float
    index_s: float
    files: int
    maps: int
    rss_mb: float
    disk_mb: float
    search: dict[str, tuple[float, float]]
    """p50 and p99 in ms, by mode."""


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _maps() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def _disk_mb(path: Path) -> float:
    """Blocks in use (the engine preallocates files sparsely: their sizes say more)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


class Corpus:
    """One tenant's texts, vectors and BM25 (every tenant gets the same texts)."""

    def __init__(self, per_tenant: int) -> None:
        texts = [memory_text(i) for i in range(per_tenant)]
        self.vectors = HashEmbedder(DIMS).embed(texts)
        self.sparse: list[Sparse] = [bm25_document(t) for t in texts]

    def batches(self, tenants: int, per_tenant: int) -> Iterator[list[StorePoint]]:
        """Arrival order: the tenants interleaved, ``BATCH`` points at a time."""
        batch: list[StorePoint] = []
        for i in range(per_tenant):
            dense = self.vectors[i].tolist()
            for t in range(tenants):
                tenant = f"t{t}"
                doc = json.dumps({"text": memory_text(i)})
                payload = {"tenant": tenant, "kind": "knowledge", "ts_epoch": float(i),
                           "doc": doc, "agent": "bench"}  # fmt: skip
                batch.append(
                    StorePoint(point_id(tenant, "knowledge", f"m{i}"), dense, self.sparse[i],
                               payload)
                )  # fmt: skip
                if len(batch) == BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch


def _measure(
    layout: str,
    tenants: int,
    per_tenant: int,
    corpus: Corpus,
    queries: int,
    rounds: int,
    max_ingest_s: float,
    index: bool,
) -> Figures:
    gc.collect()
    before = _rss_mb()
    files_before = len(os.listdir("/proc/self/fd"))
    maps_before = _maps()
    root = Path(tempfile.mkdtemp(prefix="memstream-layout-"))
    stores: dict[str, EdgeStore] = {}

    def store_of(tenant: str) -> EdgeStore:
        name = "all" if layout == "one shard" else tenant
        if name not in stores:
            stores[name] = EdgeStore(root / name, name, DIMS)
        return stores[name]

    try:
        took = 0.0
        written = 0
        failure = None
        for batch in corpus.batches(tenants, per_tenant):
            if took > max_ingest_s:
                failure = f"stopped after {max_ingest_s:.0f} s of writing"
                break
            by_store: dict[str, list[StorePoint]] = {}
            for p in batch:
                by_store.setdefault(p.payload["tenant"], []).append(p)
            start = time.perf_counter()
            try:
                if layout == "one shard":
                    store_of("t0").upsert(batch)
                else:
                    for tenant, points in by_store.items():
                        store_of(tenant).upsert(points)
            except Exception as e:  # what failed is the finding
                failure = f"failed with {len(stores):,} shards open: {str(e)[:160]}"
                break
            took += time.perf_counter() - start
            written += len(batch)
            print(f"  {layout}: {written:,} points", file=sys.stderr, end="\r")
        if not written:  # nothing to index or search
            return Figures(0, failure, 0.0, float("nan"), len(os.listdir("/proc/self/fd"))
                           - files_before, _maps() - maps_before, _rss_mb() - before,
                           _disk_mb(root), {})  # fmt: skip
        start = time.perf_counter()
        for store in stores.values():
            if index:
                store.shard.optimize()
        index_s = time.perf_counter() - start if index else float("nan")
        probe = f"t{tenants // 2}"
        texts = [memory_text(i * 37 + 5) for i in range(queries)]
        vectors = HashEmbedder(DIMS).embed(texts)
        target = store_of(probe)
        search: dict[str, tuple[float, float]] = {}
        for mode in MODES:
            searches = [
                Search(tenant=probe, dense=v.tolist(), sparse=bm25_query(t), limit=5,
                       must=(KINDS,), mode=mode)
                for t, v in zip(texts, vectors, strict=True)
            ]  # fmt: skip
            search[mode] = median_round(time_searches(target, searches, rounds))
        figures = Figures(
            written=written, failure=failure, ingest=written / took, index_s=index_s,
            files=len(os.listdir("/proc/self/fd")) - files_before, maps=_maps() - maps_before,
            rss_mb=_rss_mb() - before, disk_mb=_disk_mb(root), search=search,
        )  # fmt: skip
    finally:
        for store in stores.values():
            store.close()
        shutil.rmtree(root, ignore_errors=True)
    return figures


def main(scenarios: list[str], queries: int, rounds: int, max_ingest_s: float, index: bool) -> None:
    tune_for_throughput()
    for scenario in scenarios:
        tenants, per_tenant = (int(x) for x in scenario.split("x"))
        corpus = Corpus(per_tenant)
        for layout in ("one shard", "a shard each"):
            f = _measure(layout, tenants, per_tenant, corpus, queries, rounds, max_ingest_s, index)
            if f.failure:
                print(
                    f"layout: {tenants:,} tenants x {per_tenant:,} memories, {layout}: "
                    f"{f.written:,} points written, then {f.failure}"
                )
            if not f.written:
                continue
            print(
                f"layout: {tenants:,} tenants x {per_tenant:,} memories, {layout}: ingest "
                f"{f.ingest:,.0f} points/s, index {f.index_s:,.1f} s, {f.files:,} open files, "
                f"{f.maps:,} memory maps, +{f.rss_mb:,.0f} MB resident, {f.disk_mb:,.0f} MB "
                f"on disk; search p50 / p99: "
                + ", ".join(f"{m} {p50:.2f} / {p99:.2f} ms" for m, (p50, p99) in f.search.items())
            )
            sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="10x100000,1000x100")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--max-ingest-s", type=float, default=600,
        help="stop writing a layout after this many seconds (and measure what it has)",
    )  # fmt: skip
    parser.add_argument(
        "--no-index", action="store_true",
        help="skip building the indexes (an hour and more at 1,000,000 points on 2 cores): "
        "search is then exact",
    )  # fmt: skip
    args = arguments(parser, smoke=dict(scenarios="2x500", queries=20, rounds=1, max_ingest_s=20))
    main(args.scenarios.split(","), args.queries, args.rounds, args.max_ingest_s,
         not args.no_index)  # fmt: skip

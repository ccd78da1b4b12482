"""What a tenant's quota costs the projections that decide it.

    python -m benchmarks.quotas [--memories 20000] [--rounds 3]

Each round applies the same stores of one tenant, in batches of 2,000 as the runner
would, to a fresh projection twice: without a quota (the raw limit, this run's), and
under a quota it stays below (every store counted, none refused). Both projections:
the history (DuckDB) and the vectors (Qdrant Edge in this process, hash embedder, its
embeddings cached beforehand). It also times loading the tenant's ledger from storage
(the first store under a quota after a start), and measures the ledger's memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import arguments, median, record
from benchmarks.ingest_vectors import memory_text
from memstream.consumers._runtime import tune_for_throughput
from memstream.consumers.log import configure_logging
from memstream.projections.embedders import HashEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.history import HistoryProjection
from memstream.projections.point_store import EdgeStores
from memstream.projections.quotas import Usage
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev

_TS = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
_BATCH = 2000


def _stores(n: int, start: int = 0) -> list[ev.Event]:
    return [
        ev.KnowledgeStored(id=f"e{i}", tenant="acme", agent="bench", ts=_TS,
                           memory_id=f"m{i}", domain="bench", content=memory_text(i))
        for i in range(start, start + n)
    ]  # fmt: skip


def _quota(limit: int) -> ev.Event:
    return ev.QuotaSet(id=f"q{limit}", tenant="acme", agent="op", ts=_TS, memories=limit)


def _apply(projection: Any, events: list[ev.Event], first_seq: int = 1) -> float:
    """Apply in batches; seconds taken."""
    numbered = list(enumerate(events, first_seq))
    start = time.perf_counter()
    for i in range(0, len(numbered), _BATCH):
        projection.apply(numbered[i : i + _BATCH])
    return time.perf_counter() - start


Opener = Callable[[Path], Any]


def _round(
    open_: Opener, tmp: Path, n: int, name: str, quota_first: bool
) -> tuple[float, float, float]:
    """(memories/s without a quota, with one, ms to load the ledger at the next start);
    ``quota_first``: which goes first (rounds alternate, so warming up favours neither)."""
    stores = _stores(n)
    tmp.mkdir(parents=True, exist_ok=True)
    unlimited = open_(tmp / f"{name}-raw")
    limited_path = tmp / f"{name}-quota"
    limited = open_(limited_path)
    limited.apply([(1, _quota(n + 10))])
    if quota_first:
        counted = n / _apply(limited, stores, first_seq=2)
        bare = n / _apply(unlimited, stores)
    else:
        bare = n / _apply(unlimited, stores)
        counted = n / _apply(limited, stores, first_seq=2)
    unlimited.close()
    limited.close()
    # A start: a new projection object on the same storage; its first store loads the
    # tenant's ledger. Beside it, the same one store where no quota is kept.
    later = _stores(1, start=n)
    again = open_(limited_path)
    start = time.perf_counter()
    again.apply([(n + 2, later[0])])
    loading = time.perf_counter() - start
    again_bare = open_(tmp / f"{name}-raw")
    start = time.perf_counter()
    again_bare.apply([(n + 2, later[0])])
    one = time.perf_counter() - start
    again.close()
    again_bare.close()
    return bare, counted, max(0.0, loading - one) * 1000


def main(memories: int, rounds: int) -> bool:
    configure_logging("console", "warning")
    tune_for_throughput()
    with tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        cached = CachedEmbedder(HashEmbedder(384), EmbeddingCache(tmp / "cache.sqlite3"))
        cached.embed("acme", [memory_text(i) for i in range(memories + 1)])
        shards: dict[Path, EdgeStores] = {}

        def vectors(path: Path) -> VectorProjection:
            stores = shards.get(path) or shards.setdefault(path, EdgeStores(path))
            return VectorProjection(stores, cached)

        openers: dict[str, Opener] = {"history": lambda p: HistoryProjection(p), "vectors": vectors}
        for name, open_ in openers.items():
            bare, counted, loads = [], [], []
            for r in range(rounds):
                b, c, load = _round(open_, tmp / f"r{r}", memories, name, r % 2 == 1)
                bare.append(b)
                counted.append(c)
                loads.append(load)
                print(f"  round {r + 1}: {name} {b:,.0f}/s bare, {c:,.0f}/s under a quota, "
                      f"ledger load {load:.0f} ms", file=sys.stderr)  # fmt: skip
            ratio = median([c / b for c, b in zip(counted, bare, strict=True)])
            print(
                f"quotas {name}: {median(counted):,.0f} memories/s under a quota vs "
                f"{median(bare):,.0f} without (raw, this run); {ratio:.2f}x; a start "
                f"loads the ledger of {memories:,} memories in {median(loads):.0f} ms"
            )
            record("quotas", f"{name}_ingest", median(counted), median(bare), "memories/s", ratio)
            record("quotas", f"{name}_ledger_load", median(loads), None, "ms")
        for store in shards.values():
            store.close()
    tracemalloc.start()
    usage = Usage((f"m{i}", 100, None) for i in range(memories))
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"quotas ledger: {size / memories:.0f} bytes a memory ({usage.count:,} held)")
    record("quotas", "ledger_bytes_per_memory", size / memories, None, "bytes")
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = arguments(parser, {"memories": 500, "rounds": 1})
    sys.exit(0 if main(args.memories, args.rounds) else 1)

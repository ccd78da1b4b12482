"""Qdrant Edge (``qdrant-edge-py``) in this process: a shard per generation under
``<data dir>/vectors``, with ``CURRENT`` naming the one in use (the same atomic pointer
swap as the history's files)."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import qdrant_edge as edge

from memstream.projections.files import ProjectionFiles
from memstream.projections.filter_payload import (
    EXPIRES,
    MAX_NUMBER_INDEXES,
    META_NUM,
    compile_must,
    live,
    numeric_paths,
)
from memstream.projections.point_store.contract import (
    DENSE,
    FLOAT_FIELDS,
    FULL_SCAN_KB,
    KEYWORD_FIELDS,
    SPARSE,
    SPARSE_FULL_SCAN,
    STATE_ID,
    STATE_TENANT,
    TENANT_GRAPH_M,
    Condition,
    Found,
    Search,
    StorePoint,
    found_points,
)
from memstream.projections.point_store.plan import (
    RRF_K,
    final_filter,
    keyword_side,
    query_plan,
)
from memstream.projections.point_store.sparse import TENANT_TERMS, tenant_terms, terms_of

__all__ = [
    "EDGE_MIN_FREE_BYTES",
    "OVERSAMPLING",
    "QUANTILE",
    "SCAN_KB",
    "UPSERT_CHUNK",
    "EdgeStore",
    "EdgeStores",
    "Lending",
    "shard_generations",
]

# Edge maps its files into memory and grows them by touching pages: on a full disk
# that is a SIGBUS, which kills the process rather than failing a write. So it is not
# written to (or opened) with less than this free: the vectors wait as for any storage
# failure, and go on when there is room. A new segment takes tens of MB at once.
EDGE_MIN_FREE_BYTES: Final = 64 << 20
# How often a shard's segments are flushed (its write-ahead log holds what is between).
# A flush holds the engine, and the interpreter, for its whole run: measured here (10
# tenants, 50,000 points), 55-70 ms with 50 to 1,000 points written since the last one,
# 95 ms with 3,000, 215 ms with 10,000, 320 ms with 30,000. So the engine process
# flushes only once no search has come for ``QUIET_S`` ...
_FLUSH_EVERY_S: Final = 30.0
QUIET_S: Final = 1.0
# ... or, with searches that never pause, once this many points wait in the log: what
# a restart replays at the next open (~75 us a point measured here: ~4 s at 50,000).
FLUSH_BOUND: Final = 50_000
# The engine searches a shard's segments in a pool of threads, by default as many as
# there are cores. Measured here (2 cores, hybrid search of one tenant of 10 x 10,000):
# one thread costs 2.0 ms of CPU a query and answers in 2.0 ms p50 / 3.0 ms p99; the
# default pool, 3.4 ms of CPU for 2.9 / 8.1 ms. The pool's hand-offs cost more than the
# parallelism gives, and the cores it takes are the projections' and the other queries'.
SEARCH_THREADS: Final = 1
# How an index build treats the segments it finds. The engine's default keeps as few
# segments as there are cores (2 here), so every build merged the new points into the
# old ones and indexed the whole shard again: 5-8 s per 10,000 new points at 50,000 to
# 100,000 (measured here, 10 tenants). Keeping up to 4 segments, a build indexes the new
# points into a segment of their own and merges only the smallest: ~2 s per 5,000 at the
# same sizes. New points are indexed (given their int8 copies, and a graph where a
# tenant's pass SCAN_KB) as soon as their segment passes 1,000 KB (not the default
# 10,000 KB, which left a build's 5,000 new points to the float search until the next).
SEGMENTS: Final = 4
INDEXING_KB: Final = FULL_SCAN_KB
# Points a single engine call writes (see EdgeStore.upsert_calls). Measured here
# (benchmarks.engine_channel, 20,000 points of 384 dimensions): a call of 32 points takes
# 1.5 ms p50 / 2.1 ms p99, about one hybrid search (1.5 / 2.6 ms); of 64, 2.9 ms with
# outliers past 20 ms; of 1,024, 40 ms. A search waits for one call at most.
UPSERT_CHUNK: Final = 32
# The dense vectors are also kept as one byte a dimension (int8, scaled to the middle
# 99% of values) in memory, once a build has indexed their segment, and a tenant whose
# vectors in a segment come to less than ``SCAN_KB`` is searched by reading all of its
# int8 vectors there, not through a graph; the best twice as many as asked are scored
# again by their stored vectors, so scores and thresholds are exact. Measured here (one
# process, idle, the dense side of a search for 20, against an exact search):
#
#   10 tenants x 15,000 (4 segments)  graph, float    1.37 ms p50  recall@5 0.91
#                                     graph, int8     0.71 ms      0.91
#                                     scan, int8      0.47 ms      1.00
#   1 tenant x 60,000                 graph, int8     0.29 ms      0.42
#                                     scan, int8      1.43 ms      1.00
#
# and an index build of 50,000 new points took 3 s, not 8-11 (no graph for tenants
# below it). With all-MiniLM-L6-v2 (benchmarks.retrieval --indexed), the graph lost up
# to a fifth of the answers an exact search finds; the scan loses none. One tenant of
# 10 x 10,000 asked again and again is where the graph does best: the whole query 0.20
# ms through it, 0.49 ms read in full (benchmarks.search); the read costs the same
# whichever tenant comes. 30,000 KB is ~20,000 memories of 384 dimensions in a segment
# (~5,000 of 1,536), ~0.5 ms to read.
QUANTILE: Final = 0.99
OVERSAMPLING: Final = 2.0
SCAN_KB: Final = 30_000


# A search's dense side through the int8 vectors, its candidates scored again by the
# stored ones. Where a segment has no int8 vectors (not yet indexed), the engine ignores
# it. The keyword side has no int8 vectors either: the same holds.
_RESCORED: Final = edge.SearchParams(
    quantization=edge.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
)


def _edge_match(values: tuple[Any, ...]) -> Any:
    return edge.MatchValue(values[0]) if len(values) == 1 else edge.MatchAny(list(values))


class _EdgeFilters:
    """Builds Qdrant Edge's conditions for the filter language."""

    @staticmethod
    def match(key: str, value: str) -> Any:
        return edge.FieldCondition(key=key, match=edge.MatchValue(value))

    @staticmethod
    def match_any(key: str, values: list[str]) -> Any:
        return edge.FieldCondition(key=key, match=edge.MatchAny(values))

    @staticmethod
    def number(key: str, **bounds: float) -> Any:
        return edge.FieldCondition(key=key, range=edge.RangeFloat(**bounds))

    @staticmethod
    def instant(key: str, **bounds: str) -> Any:
        return edge.FieldCondition(key=key, range=edge.RangeDateTime(**bounds))

    @staticmethod
    def empty(key: str) -> Any:
        return edge.IsEmptyCondition(key=key)

    @staticmethod
    def group(
        *, must: list[Any] | None = None, should: list[Any] | None = None,
        must_not: list[Any] | None = None,
    ) -> Any:  # fmt: skip
        return edge.Filter(must=must, should=should, must_not=must_not)


def _edge_filter(
    tenant: str, must: tuple[Condition, ...], search: Search | None = None
) -> edge.Filter:
    conditions: list[Any] = [edge.FieldCondition(key="tenant", match=edge.MatchValue(tenant))]
    if search is not None:
        conditions.append(live(_EdgeFilters, search.now))
        if search.filter is not None:
            conditions += compile_must(search.filter, _EdgeFilters)
    for c in must:
        if c.any_of:
            conditions.append(edge.FieldCondition(key=c.key, match=_edge_match(c.any_of)))
        if c.gte is not None or c.lt is not None:
            conditions.append(
                edge.FieldCondition(key=c.key, range=edge.RangeFloat(gte=c.gte, lt=c.lt))
            )
    return edge.Filter(must=conditions)


class _EdgeKit:
    """Builds Qdrant Edge's query objects for :func:`_plan`."""

    @staticmethod
    def prefetch(limit: int, query: Any, flt: Any, threshold: float | None) -> Any:
        return edge.Prefetch(
            limit=limit, query=query, filter=flt, score_threshold=threshold, params=_RESCORED
        )

    @staticmethod
    def fuse(limit: int, sides: list[Any], flt: Any) -> Any:
        return edge.Prefetch(limit=limit, prefetches=sides, query=_EdgeKit.rrf())

    @staticmethod
    def rescore(limit: int, inner: Any, query: Any, flt: Any, threshold: float) -> Any:
        return edge.Prefetch(
            limit=limit, prefetches=[inner], query=query, filter=flt, score_threshold=threshold
        )

    @staticmethod
    def rrf() -> Any:
        return edge.Fusion.Rrf(k=RRF_K)

    @staticmethod
    def recency(search: Search) -> Any:
        """Score times 2^(-age / half-life): a memory one half-life old weighs half."""
        e = edge.Expression
        decay = e.Decay(
            edge.DecayKind.Exp,
            e.Variable("ts_epoch"),
            target=e.Constant(search.now.timestamp()),
            scale=search.recency_half_life_s,
            midpoint=0.5,
        )
        return edge.Formula(e.Mult([e.Variable("$score"), decay]), defaults={"ts_epoch": 0.0})


class EdgeStore:
    """One generation: a Qdrant Edge shard in a directory of its own."""

    def __init__(self, path: Path, generation: str, dimensions: int) -> None:
        self.path = path
        self.generation = generation
        self._flushed = time.monotonic()
        # Points (and other changes) written since the last flush: the log's tail.
        self.unflushed = 0
        # Whether a state written flushes the segments when due (see flush_if_due).
        self.flush_with_state = True
        # The metadata paths with a float index (read from the shard at first need).
        self._numbers: set[str] | None = None
        self._room()
        if path.exists() and any(path.iterdir()):
            self.shard = _load(path)
            self.terms = terms_of(self.read_state())
            return
        self.terms = TENANT_TERMS
        self.shard = edge.EdgeShard.create(str(path), _edge_config(dimensions))
        # The tenant's graph is the one searched; the other fields filter within it.
        indexes: list[tuple[str, Any]] = [
            ("tenant", edge.KeywordIndexParams(is_tenant=True)),
            *((name, edge.KeywordIndexParams(enable_hnsw=False)) for name in KEYWORD_FIELDS),
            *((name, edge.FloatIndexParams(enable_hnsw=False)) for name in FLOAT_FIELDS),
        ]
        for name, schema in indexes:
            self.shard.update(edge.UpdateOperation.create_field_index(name, schema))
        self.write_state({"dimensions": dimensions, "checkpoint": 0})

    def check(self) -> None:
        self._room()
        self.read_state()

    def _room(self) -> None:
        """Refuse a write the engine would crash on: with its disk full or read-only, the
        engine's memory-mapped files take the process down (SIGBUS), not the call."""
        if not os.access(self.path.parent, os.W_OK):
            raise OSError(
                errno.EROFS, f"{self.path.parent} is not writable: the vector engine waits"
            )
        free = shutil.disk_usage(self.path.parent).free
        if free < EDGE_MIN_FREE_BYTES:
            raise OSError(
                errno.ENOSPC,
                f"only {free >> 20} MB free under {self.path.parent}: the vector engine "
                f"waits for {EDGE_MIN_FREE_BYTES >> 20} MB",
            )

    def _index_numbers(self, points: Sequence[StorePoint]) -> None:
        """A float index for each numeric metadata path new to this shard (up to a cap)."""
        if self._numbers is None:
            schema = self.shard.info().payload_schema or {}
            self._numbers = {k for k in schema if k.startswith(f"{META_NUM}.")}
        for path in sorted(numeric_paths(p.payload for p in points)):
            key = f"{META_NUM}.{path}"
            if key in self._numbers or len(self._numbers) >= MAX_NUMBER_INDEXES:
                continue
            self.shard.update(
                edge.UpdateOperation.create_field_index(
                    key, edge.FloatIndexParams(enable_hnsw=False)
                )
            )
            self._numbers.add(key)
            self.unflushed += 1

    def upsert(self, points: Sequence[StorePoint]) -> None:
        for _ in self.upsert_calls(points):
            pass

    def upsert_calls(self, points: Sequence[StorePoint]) -> Iterator[None]:
        """The upsert as engine calls, each followed by a yield: the engine holds the
        interpreter for a whole call (~45 us a point), so a search that comes meanwhile
        (from another thread, or between the calls in the engine process) waits for one
        call of ``UPSERT_CHUNK`` points at most, not for a batch of thousands."""
        if points:
            self._room()
            self._index_numbers(points)
        own = self.terms == TENANT_TERMS
        for at in range(0, len(points), UPSERT_CHUNK):
            made = []
            for p in points[at : at + UPSERT_CHUNK]:
                sparse = tenant_terms(p.sparse, p.payload["tenant"]) if own else p.sparse
                vectors: dict[str, Any] = {
                    DENSE: list(p.dense),
                    SPARSE: edge.SparseVector(*sparse.pair()),
                }
                made.append(edge.Point(p.id, vectors, p.payload))
            self.shard.update(edge.UpdateOperation.upsert_points(made))
            self.unflushed += len(made)
            yield

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._room()
            self.shard.update(edge.UpdateOperation.delete_points(list(ids)))
            self.unflushed += len(ids)

    def retrieve(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        return [dict(r.payload or {}) for r in self.shard.retrieve(list(ids), True, False)]

    @staticmethod
    def _tenant(tenant: str) -> edge.Filter:
        return edge.Filter(must=[edge.FieldCondition(key="tenant", match=edge.MatchValue(tenant))])

    def delete_tenant(self, tenant: str) -> int:
        found = self.count(tenant)
        if found:
            self._room()
            self.shard.update(edge.UpdateOperation.delete_points_by_filter(self._tenant(tenant)))
            self.unflushed += found
        return found

    def delete_expired(self, now: dt.datetime) -> int:
        flt = edge.Filter(must=[_EdgeFilters.number(EXPIRES, lte=now.timestamp())])
        found = int(self.shard.count(edge.CountRequest(filter=flt, exact=True)))
        if found:
            self._room()
            self.shard.update(edge.UpdateOperation.delete_points_by_filter(flt))
            self.unflushed += found
        return found

    def count(self, tenant: str) -> int:
        return int(self.shard.count(edge.CountRequest(filter=self._tenant(tenant), exact=True)))

    def points(self) -> int:
        return int(self.shard.info().points_count)

    def payloads(
        self, tenant: str | None = None, *, where: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        offset: Any = None
        while True:
            page, offset = self.payload_page(tenant, where, offset)
            yield from page
            if offset is None:
                return

    def payload_page(
        self, tenant: str | None, where: Mapping[str, str] | None, offset: Any, limit: int = 1000
    ) -> tuple[list[dict[str, Any]], Any]:
        """Up to ``limit`` payloads of :meth:`payloads` from ``offset`` (None: the first),
        and the offset of the next page (None after the last)."""
        must = [_EdgeFilters.match(k, v) for k, v in (where or {}).items()]
        if tenant is not None:
            flt = edge.Filter(must=[_EdgeFilters.match("tenant", tenant), *must])
        else:
            not_state = edge.FieldCondition(key="tenant", match=edge.MatchValue(STATE_TENANT))
            flt = edge.Filter(must=must or None, must_not=[not_state])
        request = edge.ScrollRequest(offset=offset, limit=limit, filter=flt, with_payload=True)
        records, offset = self.shard.scroll(request)
        return [dict(r.payload or {}) for r in records], offset

    def search(self, search: Search) -> list[Found]:
        flt = _edge_filter(search.tenant, search.must, search)
        dense = sparse = None
        if search.dense is not None and search.mode != "keyword":
            dense = edge.Query.Nearest(list(search.dense), using=DENSE)
        words = keyword_side(search, self.terms)
        if words is not None:
            sparse = edge.Query.Nearest(edge.SparseVector(*words.pair()), using=SPARSE)
        plan = query_plan(search, dense, sparse, flt, _EdgeKit)
        if plan is None:
            return []
        request = edge.QueryRequest(
            limit=search.limit,
            query=plan["query"],
            prefetches=plan.get("prefetch"),
            filter=final_filter(plan, flt),
            score_threshold=plan.get("threshold"),
            with_payload=True,
            params=_RESCORED,
        )
        return found_points(self.shard.query(request))

    def read_state(self) -> dict[str, Any]:
        records = self.shard.retrieve([STATE_ID], True, False)
        state = dict(records[0].payload or {}) if records else {}
        state.pop("tenant", None)
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        """In the write-ahead log after the points it follows, so no crash can keep the
        state without them. (A crash of the machine may lose the log's tail, state with
        it: the projection then resumes from the older checkpoint, which the runner
        handles.) Flushed now and then, to bound the log replayed at the next open."""
        self._room()
        point = edge.Point(STATE_ID, {}, {**state, "terms": self.terms, "tenant": STATE_TENANT})
        self.shard.update(edge.UpdateOperation.upsert_points([point]))
        self.unflushed += 1
        if self.flush_with_state:
            self.flush_if_due()

    def flush_if_due(self, quiet: bool = True) -> bool:
        """Flush the segments if anything was written since the last flush, and either
        that flush is ``_FLUSH_EVERY_S`` old and the engine is ``quiet`` (no search
        waits for it), or ``FLUSH_BOUND`` points wait in the log; whether it did."""
        if not self.unflushed:
            return False
        overdue = time.monotonic() - self._flushed > _FLUSH_EVERY_S
        if self.unflushed < FLUSH_BOUND and not (overdue and quiet):
            return False
        self.shard.flush()
        self._flushed = time.monotonic()
        self.unflushed = 0
        return True

    def copy_to(self, target: Path) -> None:
        """A copy of the shard as it is now (the caller holds its writes back)."""
        self.copy_files(target)

    def copy_files(self, target: Path) -> None:
        """The shard's files, copied to ``target`` while the caller holds its writes back.
        Unflushed: the copy is what a kill of the engine at this moment would leave, and
        its first open replays the log's tail, as after a kill (the index build opens it,
        in its own process). A flush first would hold the engine, searches with it, for
        up to a third of a second. The log's spare segments, which the engine makes
        ahead of need in a thread of its own, are left out: an open makes them again."""
        self._room()
        shutil.copytree(self.path, target, ignore=shutil.ignore_patterns("tmp-open-*"))

    def close(self) -> None:
        self.shard.flush()
        self.shard.close()


def _edge_config(
    dimensions: int, sparse_full_scan: int | None = SPARSE_FULL_SCAN
) -> edge.EdgeConfig:
    """A new generation's settings; ``sparse_full_scan`` None is the engine's default."""
    sparse = edge.EdgeSparseVectorParams(
        modifier=edge.Modifier.Idf, full_scan_threshold=sparse_full_scan
    )
    quantized = edge.ScalarQuantizationConfig(
        edge.ScalarType.Int8, quantile=QUANTILE, always_ram=True
    )
    dense = edge.EdgeVectorParams(
        size=dimensions, distance=edge.Distance.Cosine, quantization_config=quantized
    )
    return edge.EdgeConfig(
        vectors={DENSE: dense},
        sparse_vectors={SPARSE: sparse},
        hnsw_config=edge.HnswIndexConfig(
            m=0, payload_m=TENANT_GRAPH_M, ef_construct=100, full_scan_threshold=SCAN_KB
        ),
        optimizers=edge.EdgeOptimizersConfig(
            default_segment_number=SEGMENTS, indexing_threshold=INDEXING_KB
        ),
        max_search_threads=SEARCH_THREADS,
    )


def _load(path: Path) -> edge.EdgeShard:
    """The shard at ``path``. One made by an earlier memstream gets today's settings
    (kept in the shard's ``edge_config.json``; a copy built aside keeps them too): its
    search threads at once, its graphs at the next index build. Its keyword side keeps the
    full scan it was made with (see SPARSE_FULL_SCAN): in a generation made before
    tenants had term ids of their own, the index would read every tenant's postings."""
    try:
        made = json.loads((path / "edge_config.json").read_text())
        size = int(made["vectors"][DENSE]["size"])
        sparse_full_scan = (
            (made.get("sparse_vectors") or {}).get(SPARSE, {}).get("full_scan_threshold")
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return edge.EdgeShard.load(str(path))  # what is wrong is the engine's to say
    graph = made.get("hnsw_config") or {}
    optimizers = made.get("optimizers") or {}
    if (
        made.get("max_search_threads") == SEARCH_THREADS
        and optimizers.get("default_segment_number") == SEGMENTS
        and optimizers.get("indexing_threshold") == INDEXING_KB
        and graph.get("m") == 0
        and graph.get("payload_m") == TENANT_GRAPH_M
        and graph.get("full_scan_threshold") == SCAN_KB
        and _quantized(made)
    ):
        return edge.EdgeShard.load(str(path))
    return edge.EdgeShard.load(str(path), _edge_config(size, sparse_full_scan))


def _quantized(made: dict[str, Any]) -> bool:
    """Whether a shard's settings keep its dense vectors as int8 (see QUANTILE)."""
    config = made["vectors"][DENSE].get("quantization_config")
    scalar = config.get("scalar") if isinstance(config, dict) else None
    if not isinstance(scalar, dict):
        return False
    return scalar.get("type") == "int8" and scalar.get("quantile") == QUANTILE


def shard_generations(directory: Path) -> list[str]:
    """The generations whose shards are under ``directory``."""
    if not directory.exists():
        return []
    return sorted(
        p.name.removeprefix("shard-")
        for p in directory.glob("shard-*")
        if ".damaged-" not in p.name  # set aside for a post-mortem: not ours to drop
    )


class Lending:
    """Generations lent to another process (an indexing one), and the tenants purged
    while they were away."""

    def __init__(self) -> None:
        self._lent: dict[str, list[str]] = {}

    def lend(self, generation: str) -> None:
        """``generation`` goes to another process (which opens it alone) until
        :meth:`take_back`."""
        self._lent[generation] = []

    def take_back(self, generation: str) -> list[str]:
        """``generation`` is back from the other process: the tenants purged while it was
        away, whose points it still holds."""
        return self._lent.pop(generation, [])

    def owe_purge(self, generation: str, tenant: str) -> bool:
        owed = self._lent.get(generation)
        if owed is None:
            return False
        owed.append(tenant)
        return True


class EdgeStores(Lending):
    """Shards under ``<data dir>/vectors``, one directory per generation."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.files = ProjectionFiles(directory, "shard", "")
        self._open: dict[str, EdgeStore] = {}

    def path(self, generation: str) -> Path:
        return self.files.dir / f"shard-{generation}"

    def current(self) -> str | None:
        path = self.files.current()
        return path.name.removeprefix("shard-") if path is not None else None

    def generations(self) -> list[str]:
        return shard_generations(self.files.dir)

    def open(self, generation: str, dimensions: int) -> EdgeStore:
        if generation in self._lent:
            raise RuntimeError(f"shard {generation} is in another process's hands")
        store = self._open.get(generation)
        if store is None:
            path = self.path(generation)
            path.parent.mkdir(parents=True, exist_ok=True)
            store = self._open[generation] = EdgeStore(path, generation, dimensions)
        return store

    def make_current(self, generation: str) -> str | None:
        old = self.files.make_current(self.path(generation))
        return old.name.removeprefix("shard-") if old is not None else None

    def drop(self, generation: str) -> None:
        self.close_for_drop(generation)
        shutil.rmtree(self.path(generation), ignore_errors=True)

    def close_for_drop(self, generation: str) -> None:
        """Close ``generation``'s shard unflushed (its files are about to go)."""
        store = self._open.pop(generation, None)
        if store is not None:
            store.shard.close()

    def close(self) -> None:
        for store in self._open.values():
            store.close()
        self._open.clear()

"""The vector engine under the vector projection: one owner of its naming and layout.

Every memory is one point with two vectors, ``dense`` (the embedder's, cosine) and
``bm25`` (BM25 term weights, scored with the engine's IDF), and a payload that carries
``tenant``, ``kind`` and the fields searches filter on. All tenants of a generation share
one shard (or, on a server, one collection) with ``tenant`` indexed as the tenant key;
the choice, measured, is in the README's Performance section.

Two engines, one contract (``PointStore``):

- :class:`EdgeStores`, the default: Qdrant Edge (``qdrant-edge-py``) in this process, a
  shard per generation under ``<data dir>/vectors``, with ``CURRENT`` naming the one in
  use (the same atomic pointer swap as the history's files).
- :class:`ServerStores`, with ``MEMSTREAM_QDRANT_URL``: a Qdrant server through
  qdrant-client, a collection per generation behind the alias ``ms_points``.

A generation's state (its checkpoint, the embedder that made its vectors) is a point of
its own, without vectors, so it is written in the same log as the points it describes.
BM25 vectors are made here with Edge's tokenizer (stemming, stop words), for both
engines, so a query is tokenised as its memories were.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

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
from memstream.schemas.filters import Node

__all__ = [
    "DENSE",
    "EDGE_MIN_FREE_BYTES",
    "SHARED_TERMS",
    "SPARSE",
    "STATE_ID",
    "STATE_TENANT",
    "TENANT_TERMS",
    "Condition",
    "EdgeStore",
    "EdgeStores",
    "Found",
    "Mode",
    "PointStore",
    "PointStores",
    "Search",
    "ServerStore",
    "ServerStores",
    "Sparse",
    "StorePoint",
    "bm25_document",
    "bm25_query",
    "new_generation",
    "point_id",
    "tenant_terms",
]

DENSE: Final = "dense"
SPARSE: Final = "bm25"
# The state point's tenant: no tenant id can be it (tenant ids start with a letter or
# digit), so no search, count or purge of a tenant ever reaches it.
STATE_TENANT: Final = "_memstream"
STATE_ID: Final = "00000000-0000-0000-0000-000000000001"
_NAMESPACE_BYTES: Final = uuid.UUID("6f1d0c4e-3b7a-5d2e-9a41-8c0f2b7e5d13").bytes
# The payload fields searches (and the read API) filter on, and how they are indexed.
KEYWORD_FIELDS: Final = (
    "kind", "agent", "domain", "tags", "session_id", "task_id", "user_id", "run_id", "project",
    "meta_kv",
)  # fmt: skip
FLOAT_FIELDS: Final = ("ts_epoch", "created_epoch", "expires_epoch")
# How many candidates each side of a hybrid search brings to the fusion, per hit asked.
_PREFETCH_FACTOR: Final = 4
_PREFETCH_MIN: Final = 20
# Reciprocal rank fusion: score = sum of 1 / (k + rank) over the lists. The usual k of
# 60 flattens the ranks so much that a memory fair on both sides beats one that is first
# on one side; with two sides and a top 5, that loses both the exact name and the close
# paraphrase. Measured (benchmarks/retrieval.py, 55 planted facts, all-MiniLM-L6-v2),
# recall@1/@5/@10: k=60 47/65/75%, k=10 51/76/80%; dense alone 67/71/76%, BM25 alone
# 44/49/53%.
_RRF_K: Final = 10
# Edge maps its files into memory and grows them by touching pages: on a full disk
# that is a SIGBUS, which kills the process rather than failing a write. So it is not
# written to (or opened) with less than this free: the vectors wait as for any storage
# failure, and go on when there is room. A new segment takes tens of MB at once.
EDGE_MIN_FREE_BYTES: Final = 64 << 20
# How often a shard's segments are flushed (its write-ahead log holds what is between).
_FLUSH_EVERY_S: Final = 30.0
# The engine searches a shard's segments in a pool of threads, by default as many as
# there are cores. Measured here (2 cores, hybrid search of one tenant of 10 x 10,000):
# one thread costs 2.0 ms of CPU a query and answers in 2.0 ms p50 / 3.0 ms p99; the
# default pool, 3.4 ms of CPU for 2.9 / 8.1 ms. The pool's hand-offs cost more than the
# parallelism gives, and the cores it takes are the projections' and the other queries'.
SEARCH_THREADS: Final = 1
# One HNSW graph per tenant (links of this many neighbours), none over all tenants, and
# no extra links for the other indexed fields: every search is of one tenant, and the
# other fields filter inside its graph. Measured here (10 x 10,000, 2 cores): the index
# builds in 26 s, not 101 s, and a hybrid query of one tenant answers in 1.3 ms p50,
# not 4.1 ms (dense 0.37 ms, not 0.68 ms).
TENANT_GRAPH_M: Final = 16
# A tenant's points are searched through its graph once their dense vectors pass this
# many KB (1,000 KB: ~670 points at 384 dimensions, ~170 at 1,536), exactly below. The
# engine's default, 10,000 KB, left tenants of up to ~6,700 memories to the exact
# search: measured here at 10 x 5,000, a hybrid query of one tenant took 2.7 ms p50
# (dense 1.8) exactly, and 1.3 ms (dense 0.8) through the graph.
FULL_SCAN_KB: Final = 1_000
# How an index build treats the segments it finds. The engine's default keeps as few
# segments as there are cores (2 here), so every build merged the new points into the
# old ones and indexed the whole shard again: 5-8 s per 10,000 new points at 50,000 to
# 100,000 (measured here, 10 tenants). Keeping up to 4 segments, a build indexes the new
# points into a segment of their own and merges only the smallest: ~2 s per 5,000 at the
# same sizes. New points are given a graph as soon as their segment passes the same
# 1,000 KB as the tenants' (not the default 10,000 KB, which left a build's 5,000 new
# points to the exact search until the next).
SEGMENTS: Final = 4
INDEXING_KB: Final = FULL_SCAN_KB
# Points a single engine call writes (see EdgeStore.upsert).
_UPSERT_CHUNK: Final = 64

Mode = Literal["hybrid", "dense", "keyword"]


def point_id(tenant: str, kind: str, ref: str) -> str:
    """The point of a (tenant, kind, ref): upserts and deletes repeat safely, and the same
    memory id in two tenants is two points. It is uuid5 of the three, made here without
    the uuid module's objects (a tenth of the apply's time otherwise)."""
    name = f"{tenant}\x00{kind}\x00{ref}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Sparse:
    indices: list[int]
    values: list[float]

    def pair(self) -> tuple[list[int], list[float]]:
        return self.indices, self.values


_BM25 = edge.Bm25(edge.Bm25Config(language="english"))


def bm25_document(text: str) -> Sparse:
    """A memory's BM25 term weights (term frequency, saturated and length-normalised)."""
    vector = _BM25.embed_document(text)
    return Sparse(list(vector.indices), list(vector.values))


def bm25_query(text: str) -> Sparse:
    """A query's terms, each weighted 1 (the engine applies IDF)."""
    vector = _BM25.embed_query(text)
    return Sparse(list(vector.indices), list(vector.values))


# Each tenant's words have term ids of their own. BM25 gives a word the same id (a hash
# of the word) in every tenant, so a keyword search read the postings of every tenant's
# memories holding its words and checked each against the tenant filter: its cost grew
# with all tenants' memories, and a word's weight (IDF) was counted over other tenants'
# memories too. A generation made since mixes the tenant into the id (one-to-one for
# one tenant): a search reads its tenant's postings only, and a word common in another
# tenant keeps its weight here. Measured here (10 tenants x 10,000, indexed): keyword
# 3.18 -> 0.23 ms p50, hybrid 3.92 -> 0.67 ms (p99 8.46 -> 1.04 ms). A generation made
# before keeps the shared ids (its state says so) until it is rebuilt.
TENANT_TERMS: Final = "tenant"
SHARED_TERMS: Final = "shared"
_salts: dict[str, int] = {}


def tenant_terms(sparse: Sparse, tenant: str) -> Sparse:
    """``sparse`` with the term ids of ``tenant``."""
    salt = _salts.get(tenant)
    if salt is None:
        if len(_salts) > 100_000:
            _salts.clear()
        digest = hashlib.blake2b(tenant.encode(), digest_size=4).digest()
        salt = _salts[tenant] = int.from_bytes(digest, "little")
    # xor, then times an odd constant modulo 2^32: a bijection of the 32-bit ids.
    return Sparse([((i ^ salt) * 0x9E3779B1) & 0xFFFFFFFF for i in sparse.indices], sparse.values)


def _terms_of(state: dict[str, Any]) -> str:
    """The term ids a generation was made with: a state without them is from before. No
    state at all is a generation stopped between its creation and its first state (every
    memstream writes it before any point): nothing in it, so it takes the tenant's."""
    if not state:
        return TENANT_TERMS
    return str(state.get("terms", SHARED_TERMS))


@dataclass(frozen=True)
class StorePoint:
    id: str
    dense: Sequence[float]
    sparse: Sparse
    payload: dict[str, Any]


@dataclass(frozen=True)
class Condition:
    """One condition on a payload field: ``any_of`` (the field, or one of a list field's
    values, is one of them), or a range on a number (``gte`` / ``lt``)."""

    key: str
    any_of: tuple[Any, ...] = ()
    gte: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class Search:
    """One search of one tenant's points: ``must`` all hold, and ``filter`` (the filter
    language's tree); a point past its expiry at ``now`` is never found; ``min_score``
    is the least dense similarity a hit may have (in every mode that has a dense side)."""

    tenant: str
    dense: Sequence[float] | None
    sparse: Sparse | None
    limit: int
    mode: Mode = "hybrid"
    must: tuple[Condition, ...] = ()
    min_score: float | None = None
    recency_half_life_s: float | None = None
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    filter: Node | None = None


@dataclass(frozen=True)
class Found:
    id: str
    score: float
    payload: dict[str, Any]


class PointStore(Protocol):
    """One generation's points."""

    generation: str

    def upsert(self, points: Sequence[StorePoint]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def retrieve(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The payloads of the points among ``ids`` that exist."""
        ...

    def delete_tenant(self, tenant: str) -> int:
        """Delete every point of ``tenant``; how many there were."""
        ...

    def delete_expired(self, now: dt.datetime) -> int:
        """Delete every point whose expiry passed by ``now``; how many there were."""
        ...

    def count(self, tenant: str) -> int: ...

    def points(self) -> int:
        """How many points the store holds, every tenant's (the state's too)."""
        ...

    def payloads(self, tenant: str | None = None) -> Iterator[dict[str, Any]]:
        """Every point's payload (of ``tenant``, or of all), the state's excepted."""
        ...

    def search(self, search: Search) -> list[Found]: ...

    def read_state(self) -> dict[str, Any]: ...

    def check(self) -> None:
        """Raise when the store cannot take a write now (its disk, its server)."""
        ...

    def write_state(self, state: dict[str, Any]) -> None:
        """Durable once it returns, with every point written before it."""
        ...

    def close(self) -> None: ...


class PointStores(Protocol):
    """The generations of one engine, and which one is in use."""

    def current(self) -> str | None: ...

    def generations(self) -> list[str]: ...

    def open(self, generation: str, dimensions: int) -> PointStore:
        """The generation's store, made (for vectors of ``dimensions``) if new."""
        ...

    def make_current(self, generation: str) -> str | None:
        """Put ``generation`` in use atomically; the one in use before, if any."""
        ...

    def drop(self, generation: str) -> None: ...

    def owe_purge(self, generation: str, tenant: str) -> bool:
        """Whether ``generation`` is in another process's hands (its indexes being built
        there): then it is not opened here, and the tenant's purge is kept for its return
        (:meth:`EdgeStores.take_back`)."""
        ...

    def close(self) -> None: ...


def new_generation() -> str:
    return uuid.uuid4().hex[:12]


# --- Qdrant Edge --------------------------------------------------------------------


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


def _words(search: Search, terms: str) -> Sparse | None:
    """The keyword side of a search, in the term ids of the generation searched."""
    if search.sparse is None or not search.sparse.indices or search.mode == "dense":
        return None
    return tenant_terms(search.sparse, search.tenant) if terms == TENANT_TERMS else search.sparse


def _plan(search: Search, dense: Any, sparse: Any, flt: Any, kit: Any) -> dict[str, Any] | None:
    """The query of a search, for either engine (``kit`` builds its objects): each side
    brings candidates, hybrid fuses them by reciprocal rank, and a half-life scales the
    result by recency. None when there is nothing to search with."""
    wide = max(search.limit * _PREFETCH_FACTOR, _PREFETCH_MIN)
    sides = []
    if dense is not None:
        sides.append(kit.prefetch(wide, dense, flt, search.min_score))
    if sparse is not None:
        words = kit.prefetch(wide, sparse, flt, None)
        if dense is not None and search.min_score is not None:
            # Sharing a word is not enough: the keyword side's candidates must also be
            # at least min_score alike in meaning (re-scored by the dense vector).
            words = kit.rescore(wide, words, dense, flt, search.min_score)
        sides.append(words)
    if not sides:
        return None
    if search.recency_half_life_s:
        base = kit.fuse(wide, sides, flt) if len(sides) == 2 else sides[0]
        return {"prefetch": [base], "query": kit.recency(search)}
    if len(sides) == 2:
        return {"prefetch": sides, "query": kit.rrf()}
    only = dense if dense is not None else sparse
    return {"query": only, "threshold": search.min_score if dense is not None else None}


def _outer(plan: dict[str, Any], flt: Any) -> Any:
    """The filter of a plan's last stage. Where it fuses or re-scores candidates that
    filtered prefetches brought, none: asked again there, the engine filters again, which
    cost a hybrid query 1.1 ms of its 3.3 here (10 tenants, 19,000 points each)."""
    return None if plan.get("prefetch") else flt


class _EdgeKit:
    """Builds Qdrant Edge's query objects for :func:`_plan`."""

    @staticmethod
    def prefetch(limit: int, query: Any, flt: Any, threshold: float | None) -> Any:
        return edge.Prefetch(limit=limit, query=query, filter=flt, score_threshold=threshold)

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
        return edge.Fusion.Rrf(k=_RRF_K)

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
        # The metadata paths with a float index (read from the shard at first need).
        self._numbers: set[str] | None = None
        self._room()
        if path.exists() and any(path.iterdir()):
            self.shard = _load(path)
            self.terms = _terms_of(self.read_state())
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

    def upsert(self, points: Sequence[StorePoint]) -> None:
        if points:
            self._room()
            self._index_numbers(points)
        # The engine holds the GIL for a whole call (~60 us a point): in chunks, a search
        # from another thread waits for one chunk at most, not for a batch of thousands.
        own = self.terms == TENANT_TERMS
        for at in range(0, len(points), _UPSERT_CHUNK):
            made = []
            for p in points[at : at + _UPSERT_CHUNK]:
                sparse = tenant_terms(p.sparse, p.payload["tenant"]) if own else p.sparse
                vectors: dict[str, Any] = {
                    DENSE: list(p.dense),
                    SPARSE: edge.SparseVector(*sparse.pair()),
                }
                made.append(edge.Point(p.id, vectors, p.payload))
            self.shard.update(edge.UpdateOperation.upsert_points(made))

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._room()
            self.shard.update(edge.UpdateOperation.delete_points(list(ids)))

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
        return found

    def delete_expired(self, now: dt.datetime) -> int:
        flt = edge.Filter(must=[_EdgeFilters.number(EXPIRES, lte=now.timestamp())])
        found = int(self.shard.count(edge.CountRequest(filter=flt, exact=True)))
        if found:
            self._room()
            self.shard.update(edge.UpdateOperation.delete_points_by_filter(flt))
        return found

    def count(self, tenant: str) -> int:
        return int(self.shard.count(edge.CountRequest(filter=self._tenant(tenant), exact=True)))

    def points(self) -> int:
        return int(self.shard.info().points_count)

    def payloads(self, tenant: str | None = None) -> Iterator[dict[str, Any]]:
        if tenant is not None:
            flt = self._tenant(tenant)
        else:
            not_state = edge.FieldCondition(key="tenant", match=edge.MatchValue(STATE_TENANT))
            flt = edge.Filter(must_not=[not_state])
        offset: Any = None
        while True:
            request = edge.ScrollRequest(offset=offset, limit=1000, filter=flt, with_payload=True)
            records, offset = self.shard.scroll(request)
            yield from (dict(r.payload or {}) for r in records)
            if offset is None:
                return

    def search(self, search: Search) -> list[Found]:
        flt = _edge_filter(search.tenant, search.must, search)
        dense = sparse = None
        if search.dense is not None and search.mode != "keyword":
            dense = edge.Query.Nearest(list(search.dense), using=DENSE)
        words = _words(search, self.terms)
        if words is not None:
            sparse = edge.Query.Nearest(edge.SparseVector(*words.pair()), using=SPARSE)
        plan = _plan(search, dense, sparse, flt, _EdgeKit)
        if plan is None:
            return []
        request = edge.QueryRequest(
            limit=search.limit,
            query=plan["query"],
            prefetches=plan.get("prefetch"),
            filter=_outer(plan, flt),
            score_threshold=plan.get("threshold"),
            with_payload=True,
        )
        return _found(self.shard.query(request))

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
        if time.monotonic() - self._flushed > _FLUSH_EVERY_S:
            self.shard.flush()
            self._flushed = time.monotonic()

    def copy_to(self, target: Path) -> None:
        """A copy of the shard as it is now (the caller holds its writes back)."""
        self._room()
        self.shard.flush()
        self._flushed = time.monotonic()
        shutil.copytree(self.path, target)

    def close(self) -> None:
        self.shard.flush()
        self.shard.close()


def _found(points: Sequence[Any]) -> list[Found]:
    return [Found(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


def _edge_config(dimensions: int) -> edge.EdgeConfig:
    return edge.EdgeConfig(
        vectors={DENSE: edge.EdgeVectorParams(size=dimensions, distance=edge.Distance.Cosine)},
        sparse_vectors={SPARSE: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
        hnsw_config=edge.HnswIndexConfig(
            m=0, payload_m=TENANT_GRAPH_M, ef_construct=100, full_scan_threshold=FULL_SCAN_KB
        ),
        optimizers=edge.EdgeOptimizersConfig(
            default_segment_number=SEGMENTS, indexing_threshold=INDEXING_KB
        ),
        max_search_threads=SEARCH_THREADS,
    )


def _load(path: Path) -> edge.EdgeShard:
    """The shard at ``path``. One made by an earlier memstream gets today's settings
    (kept in the shard's ``edge_config.json``; a copy built aside keeps them too): its
    search threads at once, its graphs at the next index build."""
    try:
        made = json.loads((path / "edge_config.json").read_text())
        size = int(made["vectors"][DENSE]["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return edge.EdgeShard.load(str(path))  # what is wrong is the engine's to say
    graph = made.get("hnsw_config") or {}
    optimizers = made.get("optimizers") or {}
    if (
        made.get("max_search_threads") == SEARCH_THREADS
        and optimizers.get("default_segment_number") == SEGMENTS
        and optimizers.get("indexing_threshold") == INDEXING_KB
        and graph.get("m") == 0
        and graph.get("payload_m") == TENANT_GRAPH_M
        and graph.get("full_scan_threshold") == FULL_SCAN_KB
    ):
        return edge.EdgeShard.load(str(path))
    return edge.EdgeShard.load(str(path), _edge_config(size))


class EdgeStores:
    """Shards under ``<data dir>/vectors``, one directory per generation."""

    def __init__(self, directory: Path) -> None:
        self.files = ProjectionFiles(directory, "shard", "")
        self._open: dict[str, EdgeStore] = {}
        # Generations lent to another process, and the tenants purged meanwhile.
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

    def path(self, generation: str) -> Path:
        return self.files.dir / f"shard-{generation}"

    def current(self) -> str | None:
        path = self.files.current()
        return path.name.removeprefix("shard-") if path is not None else None

    def generations(self) -> list[str]:
        if not self.files.dir.exists():
            return []
        return sorted(
            p.name.removeprefix("shard-")
            for p in self.files.dir.glob("shard-*")
            if ".damaged-" not in p.name  # set aside for a post-mortem: not ours to drop
        )

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
        store = self._open.pop(generation, None)
        if store is not None:
            store.close()
        shutil.rmtree(self.path(generation), ignore_errors=True)

    def close(self) -> None:
        for store in self._open.values():
            store.close()
        self._open.clear()


# --- Qdrant server --------------------------------------------------------------------


_ALIAS: Final = "ms_points"
_COLLECTION_PREFIX: Final = "ms_points__"


class _ServerFilters:
    """Builds qdrant-client's conditions for the filter language."""

    @staticmethod
    def match(key: str, value: str) -> Any:
        from qdrant_client import models as m

        return m.FieldCondition(key=key, match=m.MatchValue(value=value))

    @staticmethod
    def match_any(key: str, values: list[str]) -> Any:
        from qdrant_client import models as m

        return m.FieldCondition(key=key, match=m.MatchAny(any=values))

    @staticmethod
    def number(key: str, **bounds: float) -> Any:
        from qdrant_client import models as m

        return m.FieldCondition(key=key, range=m.Range(**bounds))

    @staticmethod
    def instant(key: str, **bounds: str) -> Any:
        from qdrant_client import models as m

        instants = {k: dt.datetime.fromisoformat(v) for k, v in bounds.items()}
        return m.FieldCondition(key=key, range=m.DatetimeRange(**instants))

    @staticmethod
    def empty(key: str) -> Any:
        from qdrant_client import models as m

        return m.IsEmptyCondition(is_empty=m.PayloadField(key=key))

    @staticmethod
    def group(
        *, must: list[Any] | None = None, should: list[Any] | None = None,
        must_not: list[Any] | None = None,
    ) -> Any:  # fmt: skip
        from qdrant_client import models as m

        return m.Filter(must=must, should=should, must_not=must_not)


def _server_filter(tenant: str, must: tuple[Condition, ...], search: Search | None = None) -> Any:
    from qdrant_client import models as m

    conditions: list[Any] = [m.FieldCondition(key="tenant", match=m.MatchValue(value=tenant))]
    if search is not None:
        conditions.append(live(_ServerFilters, search.now))
        if search.filter is not None:
            conditions += compile_must(search.filter, _ServerFilters)
    for c in must:
        if c.any_of:
            match: Any = (
                m.MatchValue(value=c.any_of[0])
                if len(c.any_of) == 1
                else m.MatchAny(any=list(c.any_of))
            )
            conditions.append(m.FieldCondition(key=c.key, match=match))
        if c.gte is not None or c.lt is not None:
            conditions.append(m.FieldCondition(key=c.key, range=m.Range(gte=c.gte, lt=c.lt)))
    return m.Filter(must=conditions)


class _ServerKit:
    """Builds qdrant-client's query objects for :func:`_plan`."""

    @staticmethod
    def prefetch(limit: int, query: Any, flt: Any, threshold: float | None) -> Any:
        from qdrant_client import models as m

        vector, using = query
        return m.Prefetch(
            query=vector, using=using, limit=limit, filter=flt, score_threshold=threshold
        )

    @staticmethod
    def fuse(limit: int, sides: list[Any], flt: Any) -> Any:
        from qdrant_client import models as m

        return m.Prefetch(
            prefetch=sides, query=m.RrfQuery(rrf=m.Rrf(k=_RRF_K)), limit=limit, filter=flt
        )

    @staticmethod
    def rescore(limit: int, inner: Any, query: Any, flt: Any, threshold: float) -> Any:
        from qdrant_client import models as m

        vector, using = query
        return m.Prefetch(
            prefetch=[inner],
            query=vector,
            using=using,
            limit=limit,
            filter=flt,
            score_threshold=threshold,
        )

    @staticmethod
    def rrf() -> Any:
        from qdrant_client import models as m

        return m.RrfQuery(rrf=m.Rrf(k=_RRF_K))

    @staticmethod
    def recency(search: Search) -> Any:
        from qdrant_client import models as m

        decay = m.ExpDecayExpression(
            exp_decay=m.DecayParamsExpression(
                x="ts_epoch",
                target=search.now.timestamp(),
                scale=search.recency_half_life_s,
                midpoint=0.5,
            )
        )
        return m.FormulaQuery(
            formula=m.MultExpression(mult=["$score", decay]), defaults={"ts_epoch": 0.0}
        )


class ServerStore:
    """One generation: a collection on a Qdrant server."""

    def __init__(self, client: Any, generation: str, dimensions: int, prefix: str = "") -> None:
        from qdrant_client import models as m
        from qdrant_client.http.exceptions import UnexpectedResponse

        self.client = client
        self.generation = generation
        self.name = (prefix or _COLLECTION_PREFIX) + generation
        if client.collection_exists(self.name):
            self.terms = _terms_of(self.read_state())
            return
        self.terms = TENANT_TERMS
        client.create_collection(
            self.name,
            vectors_config={DENSE: m.VectorParams(size=dimensions, distance=m.Distance.COSINE)},
            sparse_vectors_config={SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)},
            hnsw_config=m.HnswConfigDiff(  # as on Edge
                m=0, payload_m=TENANT_GRAPH_M, full_scan_threshold=FULL_SCAN_KB
            ),
        )
        client.create_payload_index(
            self.name,
            "tenant",
            m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True),
        )
        fields = [
            *(
                (name, m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, enable_hnsw=False),
                 m.PayloadSchemaType.KEYWORD)
                for name in KEYWORD_FIELDS
            ),
            *(
                (name, m.FloatIndexParams(type=m.FloatIndexType.FLOAT, enable_hnsw=False),
                 m.PayloadSchemaType.FLOAT)
                for name in FLOAT_FIELDS
            ),
        ]  # fmt: skip
        for name, without_links, plain in fields:
            try:
                client.create_payload_index(self.name, name, without_links)
            except UnexpectedResponse:
                # A server from before enable_hnsw: the field gets graph links too (the
                # index builds slower; searches find the same).
                client.create_payload_index(self.name, name, plain)
        self.write_state({"dimensions": dimensions, "checkpoint": 0})

    def upsert(self, points: Sequence[StorePoint]) -> None:
        from qdrant_client import models as m

        if points:
            self.client.upsert(
                self.name,
                points=[
                    m.PointStruct(
                        id=p.id,
                        vector={DENSE: list(p.dense), SPARSE: self._sparse(p, m)},
                        payload=p.payload,
                    )
                    for p in points
                ],
                wait=True,
            )

    def _sparse(self, point: StorePoint, m: Any) -> Any:
        sparse = point.sparse
        if self.terms == TENANT_TERMS:
            sparse = tenant_terms(sparse, point.payload["tenant"])
        return m.SparseVector(indices=sparse.indices, values=sparse.values)

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models as m

        if ids:
            self.client.delete(self.name, points_selector=m.PointIdsList(points=list(ids)))

    def retrieve(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        return [dict(r.payload or {}) for r in self.client.retrieve(self.name, ids=list(ids))]

    def delete_tenant(self, tenant: str) -> int:
        from qdrant_client import models as m

        found = self.count(tenant)
        if found:
            self.client.delete(
                self.name, points_selector=m.FilterSelector(filter=_server_filter(tenant, ()))
            )
        return found

    def delete_expired(self, now: dt.datetime) -> int:
        from qdrant_client import models as m

        flt = m.Filter(must=[_ServerFilters.number(EXPIRES, lte=now.timestamp())])
        found = int(self.client.count(self.name, count_filter=flt, exact=True).count)
        if found:
            self.client.delete(self.name, points_selector=m.FilterSelector(filter=flt))
        return found

    def count(self, tenant: str) -> int:
        result = self.client.count(self.name, count_filter=_server_filter(tenant, ()), exact=True)
        return int(result.count)

    def points(self) -> int:
        return int(self.client.count(self.name, exact=True).count)

    def payloads(self, tenant: str | None = None) -> Iterator[dict[str, Any]]:
        from qdrant_client import models as m

        if tenant is not None:
            flt = _server_filter(tenant, ())
        else:
            state = m.FieldCondition(key="tenant", match=m.MatchValue(value=STATE_TENANT))
            flt = m.Filter(must_not=[state])
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.name, scroll_filter=flt, limit=1000, offset=offset, with_payload=True
            )
            yield from (dict(r.payload or {}) for r in records)
            if offset is None:
                return

    def search(self, search: Search) -> list[Found]:
        from qdrant_client import models as m

        flt = _server_filter(search.tenant, search.must, search)
        dense = sparse = None
        if search.dense is not None and search.mode != "keyword":
            dense = (list(search.dense), DENSE)
        words = _words(search, self.terms)
        if words is not None:
            sparse = (m.SparseVector(indices=words.indices, values=words.values), SPARSE)
        plan = _plan(search, dense, sparse, flt, _ServerKit)
        if plan is None:
            return []
        query, using = plan["query"], None
        if isinstance(query, tuple):
            query, using = query
        result = self.client.query_points(
            self.name,
            query=query,
            using=using,
            prefetch=plan.get("prefetch"),
            query_filter=_outer(plan, flt),
            score_threshold=plan.get("threshold"),
            limit=search.limit,
            with_payload=True,
        )
        return _found(result.points)

    def check(self) -> None:
        self.read_state()  # a round trip to the server

    def read_state(self) -> dict[str, Any]:
        records = self.client.retrieve(self.name, ids=[STATE_ID])
        state = dict(records[0].payload or {}) if records else {}
        state.pop("tenant", None)
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        from qdrant_client import models as m

        payload = {**state, "terms": self.terms, "tenant": STATE_TENANT}
        point = m.PointStruct(id=STATE_ID, vector={}, payload=payload)
        self.client.upsert(self.name, points=[point], wait=True)

    def close(self) -> None:
        pass  # the client is the stores' own


class ServerStores:
    """Collections on a Qdrant server, ``ms_points__<generation>``, with the alias
    ``ms_points`` on the one in use (switched in one atomic alias change). A partition
    of a partitioned deployment has its own: ``ms_points_p<k>of<n>`` and its collections,
    so that each keeps its own generations and checkpoint."""

    def __init__(self, client: Any, namespace: str = "") -> None:
        """``namespace``: ``""`` for every tenant, else ``_p<k>of<n>``."""
        self.client = client
        self.alias = _ALIAS + namespace
        self.prefix = f"{_ALIAS}{namespace}__"

    def current(self) -> str | None:
        for found in self.client.get_aliases().aliases:
            if found.alias_name == self.alias:
                return str(found.collection_name).removeprefix(self.prefix)
        return None

    def generations(self) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n.removeprefix(self.prefix) for n in names if n.startswith(self.prefix))

    def open(self, generation: str, dimensions: int) -> ServerStore:
        return ServerStore(self.client, generation, dimensions, self.prefix)

    def make_current(self, generation: str) -> str | None:
        from qdrant_client import models as m

        old = self.current()
        ops: list[Any] = []
        if old is not None:
            ops.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self.alias)))
        create = m.CreateAlias(collection_name=self.prefix + generation, alias_name=self.alias)
        ops.append(m.CreateAliasOperation(create_alias=create))
        self.client.update_collection_aliases(change_aliases_operations=ops)
        return old

    def drop(self, generation: str) -> None:
        self.client.delete_collection(self.prefix + generation)

    def owe_purge(self, generation: str, tenant: str) -> bool:
        return False  # the server builds its indexes itself: nothing is lent out

    def close(self) -> None:
        self.client.close()

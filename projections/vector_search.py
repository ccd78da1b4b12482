"""Searching the vectors, one way from a request to the engine: the search a request asks
for (:class:`SearchSpec`, made from the contract's ``SearchRequest`` or ``RecallRequest``),
a query's embedding (:func:`embed_queries`), and the engine's plan (:func:`search_store`).
Shared by the writer of the vectors and by a process that only reads them (``serve --role
query`` against a Qdrant server)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from memstream.projections.embedders import Vectors
from memstream.projections.embedding_cache import CachedEmbedder
from memstream.projections.point_store import (
    Condition,
    Found,
    Mode,
    PointStore,
    PointStores,
    Search,
    bm25_query,
    from_payload,
)
from memstream.projections.point_store.remote import RemoteStores
from memstream.schemas.filters import Node, kinds_of, parse_filter, with_fields
from memstream.schemas.queries import RecallRequest, SearchRequest

__all__ = [
    "KINDS",
    "RECALL_KINDS",
    "Hit",
    "SearchSpec",
    "VectorReader",
    "embed_queries",
    "request",
    "search_store",
]

# What a search looks in unless told: the memories and the collaborations. The vectors
# also hold ``turns`` (conversation turns) and ``tasks`` (a task's title and outcome).
KINDS: Final = ("knowledge", "solutions", "collaborations")
# What recall draws on: past tasks and turns of other conversations too.
RECALL_KINDS: Final = ("knowledge", "solutions", "tasks", "turns")


@dataclass(frozen=True)
class Hit:
    kind: str
    ref: str
    score: float
    text: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchSpec:
    """What one search asks of the engine, whatever asked it: the kinds a filter leaves,
    the filter tree (the filter language with the older search fields folded in), and
    how to rank. ``threshold``: the least dense similarity a hit may have."""

    kinds: tuple[str, ...] = KINDS
    top_k: int = 5
    threshold: float | None = None
    mode: Mode = "hybrid"
    recency_half_life_days: float | None = None
    session_id: str | None = None
    task_id: str | None = None
    filter: Node | None = None

    @classmethod
    def of(cls, req: SearchRequest) -> SearchSpec:
        node = parse_filter(req.filter) if req.filter is not None else None
        node = with_fields(
            node, agent=req.agent, domain=req.domain, tags=req.tags, since=req.since,
            until=req.until,
        )  # fmt: skip
        return cls(
            kinds=kinds_of(node, tuple(req.kinds)), top_k=req.top_k, threshold=req.threshold,
            mode=req.mode, recency_half_life_days=req.recency_half_life_days,
            session_id=req.session_id, task_id=req.task_id, filter=node,
        )  # fmt: skip

    @classmethod
    def of_recall(cls, req: RecallRequest, top_k: int) -> SearchSpec:
        """Nothing unrelated enters a prompt: a memory's meaning must be at least
        ``min_score`` like the query's (or share its words, on the keyword side)."""
        node = parse_filter(req.filter) if req.filter is not None else None
        return cls(
            kinds=kinds_of(node, RECALL_KINDS), top_k=top_k, threshold=req.min_score,
            filter=node,
        )  # fmt: skip


def embed_queries(
    embedder: CachedEmbedder, tenant: str, queries: Sequence[str], within: float | None = None
) -> Vectors:
    """The queries' vectors: from the recent queries' cache, else the persistent one,
    else the embedder (kept among the recent, not in the persistent cache, which is the
    memories'). ``within``: seconds the embedder may take."""
    return embedder.embed(tenant, list(queries), within, keep=False)


def _searches(
    tenant: str, queries: Sequence[str], vectors: Vectors, spec: SearchSpec
) -> list[Search]:
    """The engine's search of each query (a text and its row of ``vectors``)."""
    must = [Condition("kind", any_of=spec.kinds)]
    if spec.session_id:
        must.append(Condition("session_id", any_of=(spec.session_id,)))
    if spec.task_id:
        must.append(Condition("task_id", any_of=(spec.task_id,)))
    days = spec.recency_half_life_days
    half_life = days * 86_400 if days else None
    searches = []
    for text, vector in zip(queries, vectors, strict=True):
        search = Search(
            tenant=tenant, dense=vector.tolist(), sparse=bm25_query(text), limit=spec.top_k,
            mode=spec.mode, must=tuple(must), min_score=spec.threshold,
            recency_half_life_s=half_life, filter=spec.filter,
        )  # fmt: skip
        searches.append(search)
    return searches


def _hits(found: Sequence[Found]) -> list[Hit]:
    """The engine's points as hits, best first; equal scores in one order, whatever the
    engine's."""
    hits = []
    for f in found:
        p = from_payload(f.payload)
        hits.append(Hit(p["kind"], p["ref"], f.score, p["text"], p))
    hits.sort(key=lambda h: (-h.score, h.kind, h.ref))
    return hits


def search_store(
    store: PointStore, tenant: str, queries: Sequence[str], vectors: Vectors, spec: SearchSpec
) -> list[list[Hit]]:
    """One list of the best ``spec.top_k`` hits per query (a text and its row of
    ``vectors``), best first; equal scores in one order, whatever the engine's."""
    if not spec.kinds:
        return [[] for _ in queries]  # the filter rules out every kind asked for
    return [_hits(store.search(s)) for s in _searches(tenant, queries, vectors, spec)]


def request(query: str | Sequence[str], **fields: Any) -> SearchRequest:
    """A SearchRequest for one query or several (in-process callers: tests, benchmarks)."""
    if isinstance(query, str):
        return SearchRequest(query=query, **fields)
    return SearchRequest(queries=list(query), **fields)


class VectorReader:
    """Searches the generation in use, from a process that does not write the vectors
    (``serve --role query`` against a Qdrant server, the searcher beside the engine
    process): it follows a swap at its next search."""

    name = "vectors"

    def __init__(self, stores: PointStores, embedder: CachedEmbedder) -> None:
        self.stores = stores
        self.embedder = embedder
        self._opened: tuple[str, PointStore] | None = None

    def _store(self) -> PointStore | None:
        current_store = getattr(self.stores, "current_store", None)
        if current_store is not None:
            # The engine process resolves the generation in use at each call itself.
            found: PointStore = current_store()
            return found
        current = self.stores.current()
        if current is None:
            return None
        if self._opened is None or self._opened[0] != current:
            self._opened = (current, self.stores.open(current, self.embedder.dimensions))
        return self._opened[1]

    @property
    def checkpoint(self) -> int:
        """The checkpoint of the generation in use, as its writer last saved it."""
        store = self._store()
        return int(store.read_state().get("checkpoint", 0)) if store is not None else 0

    def search_many(self, tenant: str, queries: Sequence[str], **fields: Any) -> list[list[Hit]]:
        vectors = embed_queries(self.embedder, tenant, queries)
        return self.search_vectors(
            tenant, queries, vectors, SearchSpec.of(request(queries, **fields))
        )

    def search_vectors(
        self, tenant: str, queries: Sequence[str], vectors: Vectors, spec: SearchSpec
    ) -> list[list[Hit]]:
        store = self._store()
        if store is None:
            return [[] for _ in queries]
        return search_store(store, tenant, queries, vectors, spec)

    async def search_vectors_async(
        self, tenant: str, queries: Sequence[str], vectors: Vectors, spec: SearchSpec
    ) -> list[list[Hit]]:
        """:meth:`search_vectors` from an event loop: the engine process's searches are
        awaited on the loop (no thread waits for them), several at once; any other
        engine's in a thread."""
        stores = self.stores
        if not isinstance(stores, RemoteStores):
            return await asyncio.to_thread(self.search_vectors, tenant, queries, vectors, spec)
        generation = stores.current()
        if generation is None or not spec.kinds:
            return [[] for _ in queries]
        searches = _searches(tenant, queries, vectors, spec)
        found = await asyncio.gather(*(stores.search(s, generation) for s in searches))
        return [_hits(f) for f in found]

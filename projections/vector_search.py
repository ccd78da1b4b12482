"""Searching the vectors: the query shared by the writer of the vectors and by a process
that only reads them (``serve --role query`` against a Qdrant server)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from memstream.projections.embedders import Vectors
from memstream.projections.embedding_cache import CachedEmbedder
from memstream.projections.point_store import (
    Condition,
    Mode,
    PointStore,
    PointStores,
    Search,
    bm25_query,
    from_payload,
)
from memstream.schemas.filters import Node

__all__ = ["KINDS", "Hit", "VectorReader", "search_store"]

# What a search looks in unless told: the memories and the collaborations. The vectors
# also hold ``turns`` (conversation turns) and ``tasks`` (a task's title and outcome).
KINDS: Final = ("knowledge", "solutions", "collaborations")


@dataclass(frozen=True)
class Hit:
    kind: str
    ref: str
    score: float
    text: str
    payload: dict[str, Any]


def search_store(
    store: PointStore,
    tenant: str,
    queries: Sequence[str],
    vectors: Vectors,
    *,
    kinds: Sequence[str] = KINDS,
    top_k: int = 5,
    threshold: float | None = None,
    mode: Mode = "hybrid",
    recency_half_life_days: float | None = None,
    agent: str | None = None,
    domain: str | None = None,
    tags: Sequence[str] = (),
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    session_id: str | None = None,
    task_id: str | None = None,
    filter: Node | None = None,
) -> list[list[Hit]]:
    """One list of the best ``top_k`` hits per query (a text and its row of
    ``vectors``). ``threshold``: the least dense similarity a hit may have; ``tags``: a
    hit has all of them."""
    if not kinds:
        return [[] for _ in queries]  # the filter rules out every kind asked for
    must = [Condition("kind", any_of=tuple(kinds))]
    if agent:
        must.append(Condition("agent", any_of=(agent,)))
    if domain:
        must.append(Condition("domain", any_of=(domain,)))
    if session_id:
        must.append(Condition("session_id", any_of=(session_id,)))
    if task_id:
        must.append(Condition("task_id", any_of=(task_id,)))
    must += [Condition("tags", any_of=(tag,)) for tag in tags]
    if since or until:
        must.append(
            Condition(
                "ts_epoch",
                gte=since.timestamp() if since else None,
                lt=until.timestamp() if until else None,
            )
        )
    half_life = recency_half_life_days * 86_400 if recency_half_life_days else None
    found = []
    for text, vector in zip(queries, vectors, strict=True):
        search = Search(
            tenant=tenant,
            dense=vector.tolist(),
            sparse=bm25_query(text),
            limit=top_k,
            mode=mode,
            must=tuple(must),
            min_score=threshold,
            recency_half_life_s=half_life,
            filter=filter,
        )
        hits = []
        for f in store.search(search):
            p = from_payload(f.payload)
            hits.append(Hit(p["kind"], p["ref"], f.score, p["text"], p))
        # Equal scores (frequent when ranks are fused) in one order, whatever the engine's.
        hits.sort(key=lambda h: (-h.score, h.kind, h.ref))
        found.append(hits)
    return found


class VectorReader:
    """Searches the generation in use, from a process that does not write the vectors
    (``serve --role query`` against a Qdrant server): it follows a swap at its next
    search."""

    name = "vectors"

    def __init__(self, stores: PointStores, embedder: CachedEmbedder) -> None:
        self.stores = stores
        self.embedder = embedder

    def _store(self) -> PointStore | None:
        current = self.stores.current()
        return self.stores.open(current, self.embedder.dimensions) if current else None

    @property
    def checkpoint(self) -> int:
        """The checkpoint of the generation in use, as its writer last saved it."""
        store = self._store()
        return int(store.read_state().get("checkpoint", 0)) if store is not None else 0

    def search_many(self, tenant: str, queries: Sequence[str], **filters: Any) -> list[list[Hit]]:
        vectors = self.embedder.embed(tenant, list(queries), keep=False)
        return self.search_vectors(tenant, queries, vectors, **filters)

    def search_vectors(
        self, tenant: str, queries: Sequence[str], vectors: Vectors, **filters: Any
    ) -> list[list[Hit]]:
        store = self._store()
        if store is None:
            return [[] for _ in queries]
        return search_store(store, tenant, queries, vectors, **filters)

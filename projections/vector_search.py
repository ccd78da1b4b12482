"""Searching the vector collections: the query shared by the writer of the vectors and
by a process that only reads them (``serve --role query`` against a Qdrant server)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import QdrantClient, models

from projections.embedders import Vectors
from projections.embedding_cache import CachedEmbedder
from projections.vector_layout import KINDS, STATE_ALIAS, STATE_POINT, alias

__all__ = ["Hit", "VectorReader", "search_points"]


@dataclass(frozen=True)
class Hit:
    kind: str
    ref: str
    score: float
    text: str
    payload: dict[str, Any]


class VectorReader:
    """Searches the generation in use through its aliases, from a process that does not
    write the vectors (``serve --role query`` against a Qdrant server)."""

    name = "vectors"

    def __init__(self, client: QdrantClient, embedder: CachedEmbedder) -> None:
        self.client = client
        self.embedder = embedder

    @property
    def checkpoint(self) -> int:
        """The checkpoint of the generation in use, as its writer last saved it."""
        if not self.client.collection_exists(STATE_ALIAS):
            return 0
        points = self.client.retrieve(STATE_ALIAS, ids=[STATE_POINT], with_payload=True)
        return int(points[0].payload["checkpoint"]) if points and points[0].payload else 0

    def search_many(self, tenant: str, queries: Sequence[str], **filters: Any) -> list[list[Hit]]:
        return self.search_vectors(tenant, self.embedder.embed(tenant, list(queries)), **filters)

    def search_vectors(self, tenant: str, vectors: Vectors, **filters: Any) -> list[list[Hit]]:
        existing = {
            kind: name
            for kind in KINDS
            if self.client.collection_exists(name := alias(kind, tenant))
        }
        return [search_points(self.client, existing, v.tolist(), **filters) for v in vectors]


def search_points(
    client: QdrantClient,
    collections: dict[str, str],
    vector: list[float],
    *,
    kinds: Sequence[str] = KINDS,
    top_k: int = 5,
    threshold: float | None = None,
    agent: str | None = None,
    domain: str | None = None,
    tags: Sequence[str] = (),
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[Hit]:
    """The best ``top_k`` points of ``kinds`` (kind -> collection, those that exist)."""
    must: list[Any] = []
    if agent:
        must.append(models.FieldCondition(key="agent", match=models.MatchValue(value=agent)))
    if domain:
        must.append(models.FieldCondition(key="domain", match=models.MatchValue(value=domain)))
    for tag in tags:
        must.append(models.FieldCondition(key="tags", match=models.MatchValue(value=tag)))
    if since or until:
        must.append(
            models.FieldCondition(
                key="ts_epoch",
                range=models.Range(
                    gte=since.timestamp() if since else None,
                    lt=until.timestamp() if until else None,
                ),
            )
        )
    query_filter = models.Filter(must=must) if must else None
    hits: list[Hit] = []
    for kind in kinds:
        name = collections.get(kind)
        if name is None:
            continue
        result = client.query_points(
            name,
            query=vector,
            limit=top_k,
            query_filter=query_filter,
            score_threshold=threshold,
            with_payload=True,
        )
        for p in result.points:
            payload = dict(p.payload or {})
            hits.append(
                Hit(kind, payload.get("ref", ""), float(p.score), payload.get("text", ""), payload)
            )
    hits.sort(key=lambda h: h.score, reverse=True)
    return hits[:top_k]

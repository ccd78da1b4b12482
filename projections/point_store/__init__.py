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

from memstream.projections.point_store.contract import (
    DENSE,
    FULL_SCAN_KB,
    SPARSE,
    SPARSE_FULL_SCAN,
    STATE_ID,
    STATE_TENANT,
    TENANT_GRAPH_M,
    Condition,
    Found,
    Mode,
    PointStore,
    PointStores,
    Search,
    StorePoint,
    new_generation,
    point_id,
)
from memstream.projections.point_store.edge import (
    EDGE_MIN_FREE_BYTES,
    INDEXING_KB,
    SEARCH_THREADS,
    SEGMENTS,
    EdgeStore,
    EdgeStores,
)
from memstream.projections.point_store.payload import from_payload, to_payload
from memstream.projections.point_store.server import ServerStore, ServerStores
from memstream.projections.point_store.sparse import (
    SHARED_TERMS,
    TENANT_TERMS,
    Sparse,
    bm25_document,
    bm25_query,
    tenant_terms,
)

__all__ = [
    "DENSE",
    "EDGE_MIN_FREE_BYTES",
    "FULL_SCAN_KB",
    "INDEXING_KB",
    "SEARCH_THREADS",
    "SEGMENTS",
    "SHARED_TERMS",
    "SPARSE",
    "SPARSE_FULL_SCAN",
    "STATE_ID",
    "STATE_TENANT",
    "TENANT_GRAPH_M",
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
    "from_payload",
    "new_generation",
    "point_id",
    "tenant_terms",
    "to_payload",
]

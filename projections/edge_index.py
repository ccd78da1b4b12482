"""Build a Qdrant Edge shard's indexes (HNSW, sparse).

``EdgeShard.optimize()`` holds the interpreter for its whole run (43 s at 100,000 points
here), so the process that serves never calls it: the vectors service copies its shard,
and a process of its own (:mod:`consumers.index_aside`) builds the copy's indexes with
this function while the service keeps ingesting and answering.
"""

from __future__ import annotations

import qdrant_edge as edge

__all__ = ["build_index"]


def build_index(path: str) -> bool:
    """Optimize the shard at ``path`` (closed by everyone else); whether it changed."""
    shard = edge.EdgeShard.load(path)
    try:
        changed = shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return bool(changed)

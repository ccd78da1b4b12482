"""Build a Qdrant Edge shard's indexes (HNSW, sparse) in a process of its own.

``EdgeShard.optimize()`` holds the interpreter for its whole run (43 s at 100,000 points
here), so the projection never calls it: it copies its shard, and this module, run as
``python -m projections.edge_index SHARD_DIR``, optimizes the copy at a lower priority
while the projection keeps ingesting and answering. Exit status 0 when done; otherwise
one line on stderr.
"""

from __future__ import annotations

import os
import sys

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


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m projections.edge_index SHARD_DIR\n")
        return 2
    os.nice(10)  # the serving process comes first on a busy machine
    try:
        build_index(argv[0])
    except Exception as err:  # the engine raises what its files make it raise
        sys.stderr.write(f"building the index of {argv[0]} failed: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

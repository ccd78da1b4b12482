"""Index a copy of the vectors shard, then catch it up, in a process of its own.

Run by the vectors service (:mod:`consumers.indexer`) as::

    python -m memstream.consumers.index_aside SHARD_DIR --consumer NAME --model M --dims N
        --cache FILE --applied FILE

with the NATS URL and credentials in ``MEMSTREAM_NATS_*``. It builds the copy's indexes
(``EdgeShard.optimize()``, which holds this process's interpreter, not the serving
one's), then applies to the copy what the service applied meanwhile (up to its durable
consumer's ack floor), so that the service, to switch to the copy, catches up only on
the last few events rather than applying again all that arrived during the build.

The catch-up embeds nothing: the service embedded those texts already, and their
vectors are in the shared cache. A text missing from it (the cache was cleared meanwhile)
ends the catch-up early, and the service applies the rest, as it would without this
step. Prints one JSON line on stdout: the copy's checkpoint and the points it wrote that
the indexes do not cover. Exit status 0 when the indexes are built; otherwise one line
on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
from nats.aio.client import Client as NatsClient

from memstream.consumers.log import configure_logging
from memstream.consumers.replay import replay
from memstream.producers.connection import connect_nats
from memstream.projections.applied_ids import AppliedIds
from memstream.projections.edge_index import build_index
from memstream.projections.embedders import EmbedderError, Vectors
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.point_store import EdgeStores
from memstream.projections.priority import lower_priority
from memstream.projections.vectors import VectorProjection
from memstream.schemas.subjects import EVENT_STREAM

__all__ = ["CachedOnly", "catch_up", "main"]

# The copy is caught up in rounds until it is this close to the service (in events).
CLOSE_ENOUGH: Final = 2_000


class CachedOnly:
    """An embedder that has nothing to embed with: every text must be in the cache."""

    remote = False

    def __init__(self, model: str, dimensions: int) -> None:
        self.model = model
        self.dimensions = dimensions

    def embed(self, texts: Sequence[str], within: float | None = None) -> Vectors:
        if texts:
            raise EmbedderError(f"{len(texts)} texts are not in the embedding cache")
        return np.zeros((0, self.dimensions), dtype=np.float32)


async def catch_up(
    nc: NatsClient, consumer: str, projection: VectorProjection, close_enough: int = CLOSE_ENOUGH
) -> None:
    """Apply to ``projection`` what the service applied (its durable ``consumer``'s ack
    floor), in rounds: the service goes on applying meanwhile, so each round aims at
    where it is then. Ends after a round of at most ``close_enough`` events, or when a
    round gained nothing on it (the service outpaces this process: it applies the rest)."""
    js = nc.jetstream()
    behind: int | None = None
    while True:
        info = await js.consumer_info(EVENT_STREAM, consumer)
        mark = info.ack_floor.stream_seq if info.ack_floor else 0
        left = mark - projection.checkpoint
        if left <= 0 or (behind is not None and left >= behind):
            return

        async def reached(checkpoint: int, mark: int = mark) -> bool:
            return checkpoint >= mark

        # Up to the service's mark, not the stream's end: what it has not applied yet it
        # will apply itself, into the shard it serves.
        await replay(nc, projection, batch_size=5_000, until=reached, eager=True)
        if left <= close_enough:
            return  # a short round: the service applied little meanwhile
        behind = left


async def _catch_up(consumer: str, projection: VectorProjection) -> None:
    nc = await connect_nats(name="memstream:index-aside")
    try:
        await catch_up(nc, consumer, projection)
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> dict[str, int]:
    path = Path(args.shard)
    build_index(str(path))
    stores = EdgeStores(path.parent)
    cache = EmbeddingCache(args.cache)
    applied = AppliedIds(args.applied)
    try:
        embedder = CachedEmbedder(CachedOnly(args.model, args.dims), cache)
        generation = path.name.removeprefix("shard-")
        projection = VectorProjection(stores, embedder, generation=generation, applied=applied)
        projection.indexed()
        try:
            asyncio.run(_catch_up(args.consumer, projection))
        except Exception as err:  # the service applies what this did not
            sys.stderr.write(f"the copy was indexed but not caught up: {err}\n")
        return {"checkpoint": projection.checkpoint, "unindexed": projection.unindexed}
    finally:
        stores.close()
        cache.close()
        applied.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m memstream.consumers.index_aside")
    parser.add_argument("shard")
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dims", type=int, required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--applied", required=True)
    args = parser.parse_args(argv)
    configure_logging("json", os.environ.get("MEMSTREAM_LOG_LEVEL", "warning"))  # stderr
    # Below the serving processes, but not in the idle class with ingest: a build is what
    # keeps searches fast (they search the points written since the last one exactly,
    # slower with every point), so it must progress under load (measured: in the idle
    # class at 5,000 events/s, builds fell behind and searches slowed).
    lower_priority("low")
    try:
        result = run(args)
    except Exception as err:  # the engine raises what its files make it raise
        sys.stderr.write(f"building the index of {args.shard} failed: {err}\n")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

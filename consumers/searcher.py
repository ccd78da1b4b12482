"""The searcher: ``search`` and ``recall`` answered in a process that applies no events.

Started and watched by ``memstream up`` and ``serve --role vectors`` beside the vector
engine's process (:mod:`consumers.engine_process`), as::

    python -m memstream.consumers.searcher --shards SHARDS_DIR --subject S [...]

with every setting in ``MEMSTREAM_*`` (its parent's). It embeds the query, asks the
engine process, and replies. The process that applies events keeps every other op: its
interpreter is busy with the events (decoding, folding, embedding, DuckDB), and a search
that has to take turns with that work waits for it (measured: p99 of seconds under
1,000 events/s), while here it waits for one engine call at most.

A request's ``min_seq`` is waited for on the checkpoint the engine holds (asked every
2 ms while one waits). Recall reads the history over its query ops. Each answered
op's seconds go to the parent on stdout (``op seconds`` lines, once a second), and its
embedder's counters (``embedded calls hits misses``), for its metrics.
Prints ``started`` once connected, answers once ``serve`` is written to its stdin, then
prints ``ready``; SIGTERM, or its parent's death, finishes the requests in flight and
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Final

from memstream.consumers.log import configure_logging, get_logger
from memstream.consumers.query_worker import QUEUE, QueryWorker
from memstream.consumers.settings import load_settings
from memstream.consumers.sources import ReaderSource, RemoteHistory
from memstream.consumers.storage import embedder_from_settings
from memstream.producers.connection import connect_nats
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.point_store.remote import RemoteStores
from memstream.projections.priority import raise_search_priority
from memstream.projections.vector_search import VectorReader
from memstream.schemas.errors import MemstreamError

__all__ = ["EMBEDDED", "SEARCHER_OPS", "main"]

log = get_logger("memstream.searcher")

# The ops that read the vectors first (schemas.serving.SERVED_BY): the searcher's.
SEARCHER_OPS = frozenset({"search", "recall"})
# The line that reports the embedder's counters (calls, cache hits, cache misses).
EMBEDDED = "embedded"
# How long its end may take once it stops, before it ends regardless.
_EXIT_WITHIN_S: Final = 10.0


class _Reports:
    """Each answered op's seconds, and the embedder's counters, for the parent: kept, and
    written once a second (a line a search woke the parent for every search)."""

    def __init__(self, embedder: CachedEmbedder) -> None:
        self.embedder = embedder
        self.lines: list[str] = []

    def observe(self, op: str, seconds: float, outcome: str) -> None:
        self.lines.append(f"{op} {seconds:.6f} {outcome}\n")

    def flush(self) -> None:
        if not self.lines:
            return
        stats = self.embedder.stats
        self.lines.append(f"{EMBEDDED} {stats.embedding_calls} {stats.hits} {stats.misses}\n")
        sys.stdout.write("".join(self.lines))
        sys.stdout.flush()
        self.lines.clear()


async def _serve(shards: Path, subjects: list[str]) -> None:
    settings = load_settings()
    parent = os.getppid()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect_nats(settings.nats_url, name="memstream-searcher", **settings.nats_auth)
    # The engine process of the generation in use, followed across swaps.
    stores = RemoteStores(shards)
    cache = EmbeddingCache(settings.data_path / "embeddings.sqlite3")
    try:
        embedder = CachedEmbedder(embedder_from_settings(settings), cache)
        reader = VectorReader(stores, embedder)
        worker = QueryWorker(
            nc,
            vectors=ReaderSource(reader, poll_s=0.002),
            remote_history=RemoteHistory(nc),
            answers_unknown=False,
            queue=f"{QUEUE}-vectors",
            # The engine is another process: a search is awaited on its socket, and the
            # event loop takes the next request meanwhile, so the searcher and the engine
            # work at once (inline, each waited for the other: half the searches a
            # second, measured). Awaited on the loop rather than in a thread: 1,536
            # searches a second in a closed loop against 1,319 (benchmarks.search_load).
            search_inline=False,
            subjects=subjects,
            limits=settings.tenant_limits,
        )
        reports = _Reports(embedder)
        worker.observe = reports.observe
        # Started: answer once the parent says so (see SearcherProcess.serve).
        print("started", flush=True)
        told = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([told, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not told.done() or told.result().strip() != "serve":
            return  # stopped, or the parent is gone (its end of the pipe closed)
        await worker.start()
        print("ready", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            reports.flush()
            if os.getppid() != parent:
                log.warning("searcher_parent_gone", parent=parent)
                break
        await worker.stop()
        reports.flush()
    finally:
        # Whatever happens next, this process ends: with its server gone (its parent
        # killed with it), the NATS client's tasks may never finish being cancelled, and
        # asyncio.run would wait for them for ever (seen: searchers left running).
        watchdog = threading.Timer(_EXIT_WITHIN_S, os._exit, (0,))
        watchdog.daemon = True
        watchdog.start()
        with contextlib.suppress(Exception):
            await nc.drain()
        stores.close()
        cache.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memstream.consumers.searcher")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--subject", action="append", required=True)
    args = parser.parse_args(argv)
    not_raised = raise_search_priority()  # before any thread: they take it from this one
    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        if not_raised is not None:
            log.warning("search_priority_not_raised", reason=not_raised)
        asyncio.run(_serve(args.shards, args.subject))
    except MemstreamError as err:
        print(f"memstream searcher: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""search and recall: the vectors, and for recall the history's task and turns."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, Final, cast

import msgspec

from memstream.consumers.endpoints._serving import Worker
from memstream.projections.recall import Part, compose, memory_part, task_part, turn_part
from memstream.projections.vector_search import Hit, SearchSpec, embed_queries
from memstream.schemas.errors import QueryError
from memstream.schemas.queries import (
    Link,
    RecallRequest,
    RecallResult,
    RecallSource,
    SearchBatchResult,
    SearchHit,
    SearchRequest,
    SearchResult,
)

__all__ = ["HIT_TEXT_CHARS", "QUERY_EMBEDDING_WITHIN_S", "recall", "search"]

# Memories recall considers before the budget picks among them.
_RECALL_MEMORIES: Final = 12
# How long a query's embedding may take, retries included: well inside the 10 s an SDK
# request waits, so that an embedder that is down comes back as `unavailable` with its
# cause, not as a timeout.
QUERY_EMBEDDING_WITHIN_S: Final = 5.0
# The most characters of a memory's text a search hit carries.
HIT_TEXT_CHARS: Final = 65_536


def hit(h: Hit) -> SearchHit:
    p = h.payload
    return SearchHit(
        kind=cast(Any, h.kind),
        memory_id=h.ref,
        score=h.score,
        # A hit is a pointer with a preview: five near-1 MB memories would not fit in a
        # reply. The history holds the whole text.
        text=h.text[:HIT_TEXT_CHARS],
        text_truncated=len(h.text) > HIT_TEXT_CHARS,
        agent=p.get("agent", ""),
        ts=dt.datetime.fromisoformat(p["ts"]),
        tags=tuple(p.get("tags") or ()),
        metadata=p.get("metadata") or {},
        seq=p.get("seq", 0),
        user_id=p.get("user_id"),
        run_id=p.get("run_id"),
        project=p.get("project"),
        task_id=p.get("task_id"),
        expires_at=(
            dt.datetime.fromtimestamp(p["expires_epoch"], dt.UTC) if "expires_epoch" in p else None
        ),
    )


async def vector_search(
    w: Worker, tenant: str, queries: list[str], spec: SearchSpec
) -> list[list[Hit]]:
    """Qdrant Edge searches in this process and holds the GIL while it does, so a
    worker thread would buy no parallelism, only a GIL hand-off with the event loop
    (measured with the pure-Python engine before it: p99 14-18 ms in a thread against
    9-10 ms inline). A Qdrant server is asked over the network: a thread."""
    async with w.sources["vectors"].reading() as vectors:
        embedder = vectors.embedder
        # An embedder that answers over the network (or runs a model) is waited for
        # off the loop, and only as long as the asker waits for its answer: past
        # that, the cause goes back as `unavailable` rather than a timeout.
        if embedder.remote:
            matrix = await asyncio.to_thread(
                embed_queries, embedder, tenant, queries, QUERY_EMBEDDING_WITHIN_S
            )
        else:
            matrix = embed_queries(embedder, tenant, queries)
        if w.search_inline:
            found: list[list[Hit]] = vectors.search_vectors(tenant, queries, matrix, spec)
            return found
        awaiting = getattr(vectors, "search_vectors_async", None)
        if awaiting is not None:
            # A reader of the engine's process awaits it on this loop: no thread hand-off.
            awaited: list[list[Hit]] = await awaiting(tenant, queries, matrix, spec)
            return awaited
        return await asyncio.to_thread(vectors.search_vectors, tenant, queries, matrix, spec)


# --- ops: each returns the contract's result Struct ------------------------------


async def search(w: Worker, tenant: str, req: SearchRequest) -> SearchResult | SearchBatchResult:
    if (req.query is None) == (req.queries is None):
        raise QueryError("bad_request", "search takes either query or queries (a list)")
    queries = [req.query] if req.query is not None else list(req.queries or ())
    found = await vector_search(w, tenant, queries, SearchSpec.of(req))
    lists = [[hit(h) for h in hits] for hits in found]
    if req.with_links:
        lists = await with_links(w, tenant, lists)
    if req.query is not None:
        return SearchResult(hits=lists[0])
    return SearchBatchResult(hits=lists)


async def with_links(w: Worker, tenant: str, lists: list[list[SearchHit]]) -> list[list[SearchHit]]:
    if w.history_reads is None:
        raise QueryError("unavailable", "with_links needs the history, and none answers here")
    ids = sorted({h.memory_id for hits in lists for h in hits})
    by_id: dict[str, list[Link]] = {i: [] for i in ids}
    for link in await w.history_reads.edges(tenant, ids):
        for end in {link.from_id, link.to_id}:
            if end in by_id:
                by_id[end].append(link)
    return [[msgspec.structs.replace(h, links=by_id[h.memory_id]) for h in hits] for hits in lists]


async def recall(w: Worker, tenant: str, req: RecallRequest) -> RecallResult:
    if req.query is None and req.session_id is None and req.task_id is None:
        raise QueryError(
            "bad_request", "recall needs at least one of query, session_id and task_id"
        )
    history = w.history_reads
    parts: list[Part] = []
    if req.task_id is not None and history is not None:
        found = await history.task(tenant, req.task_id, req.min_seq, req.wait_ms)
        if found is not None:
            parts.append(task_part(found))
    if req.session_id is not None and history is not None:
        turns = await history.turns(tenant, req.session_id, req.min_seq, req.wait_ms)
        parts += [turn_part(t, req.session_id) for t in turns]
    if req.query is not None:
        spec = SearchSpec.of_recall(req, _RECALL_MEMORIES)
        (hits,) = await vector_search(w, tenant, [req.query], spec)
        # The task and the conversation asked for are in the bundle already.
        hits = [
            h
            for h in hits
            if not (h.kind == "tasks" and h.ref == req.task_id)
            and not (h.kind == "turns" and h.payload.get("session_id") == req.session_id)
        ]
        for h in hits:
            ts = h.payload.get("ts")
            parts.append(
                memory_part(
                    h.kind,
                    h.ref,
                    h.text,
                    h.score,
                    h.payload.get("seq", 0),
                    dt.datetime.fromisoformat(ts) if ts else None,
                )
            )
    text, used = compose(parts, req.budget_chars, req.strategy)
    return RecallResult(
        text=text,
        chars=len(text),
        strategy=req.strategy,
        sources=[RecallSource(kind=p.kind, ref=p.ref, seq=p.seq, score=p.score) for p in used],
    )

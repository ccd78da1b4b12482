"""get, list, links and revisions: one memory, a page of them, their graph, their past."""

from __future__ import annotations

import datetime as dt

from memstream.consumers.endpoints._serving import Worker, parsed_filter
from memstream.projections import memories
from memstream.schemas.errors import QueryError
from memstream.schemas.filters import kinds_of
from memstream.schemas.queries import (
    GetRequest,
    LinksRequest,
    LinksResult,
    ListRequest,
    ListResult,
    Memory,
    RevisionsRequest,
    RevisionsResult,
)

__all__ = ["get", "links", "list_memories", "revisions"]


async def get(w: Worker, tenant: str, req: GetRequest) -> Memory:
    found: Memory | None = await w.read(
        memories.get_memory, tenant, req.memory_id, dt.datetime.now(dt.UTC)
    )
    if found is None:
        raise QueryError(
            "not_found",
            f"tenant {tenant} has no memory {req.memory_id!r} (never stored, forgotten or expired)",
        )
    return found


async def list_memories(w: Worker, tenant: str, req: ListRequest) -> ListResult:
    page, cursor = await w.read(
        memories.list_memories,
        tenant,
        dt.datetime.now(dt.UTC),
        kinds=kinds_of(node := parsed_filter(req), req.kinds),
        filter=node,
        order_by=req.order_by,
        descending=req.descending,
        limit=req.limit,
        cursor=req.cursor,
        id_suffix=req.id_suffix,
    )
    return ListResult(memories=page, next_cursor=cursor)


async def links(w: Worker, tenant: str, req: LinksRequest) -> LinksResult:
    found: LinksResult = await w.read(
        memories.links, tenant, req.memory_id, dt.datetime.now(dt.UTC),
        direction=req.direction, relation=req.relation, depth=req.depth, limit=req.limit,
    )  # fmt: skip
    if found.nodes[0].missing and not found.edges:
        raise QueryError(
            "not_found",
            f"tenant {tenant} has no memory {req.memory_id!r} and no link to or from it",
        )
    return found


async def revisions(w: Worker, tenant: str, req: RevisionsRequest) -> RevisionsResult:
    found = await w.read(memories.revisions, tenant, req.memory_id)
    if not found:
        raise QueryError("not_found", f"tenant {tenant} has no event of a memory {req.memory_id!r}")
    return RevisionsResult(memory_id=req.memory_id, revisions=found)

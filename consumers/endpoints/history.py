"""history, task, context and conversation: the history's log and state tables."""

from __future__ import annotations

import datetime as dt

from memstream.consumers.endpoints._serving import Worker, known_types
from memstream.projections import reads
from memstream.schemas.errors import QueryError
from memstream.schemas.queries import (
    ContextRequest,
    ContextResult,
    ConversationRequest,
    ConversationResult,
    HistoryRequest,
    HistoryResult,
    TaskRequest,
    TaskResult,
)

__all__ = ["context", "conversation", "history", "task"]


async def history(w: Worker, tenant: str, req: HistoryRequest) -> HistoryResult:
    known_types(req.types)
    page = await w.read(
        reads.history,
        tenant,
        types=req.types,
        agent=req.agent,
        task_id=req.task_id,
        since=req.since,
        until=req.until,
        after_seq=req.after_seq,
        limit=req.limit,
    )
    # msgspec.Raw events: the producer's bytes, encoded into the reply as they are.
    return HistoryResult(events=page.events, next_after_seq=page.next_after_seq)


async def task(w: Worker, tenant: str, req: TaskRequest) -> TaskResult:
    found: TaskResult | None = await w.read(reads.task, tenant, req.task_id)
    if found is None:
        raise QueryError("not_found", f"tenant {tenant} has no task {req.task_id!r}")
    return found


async def context(w: Worker, tenant: str, req: ContextRequest) -> ContextResult:
    found: ContextResult | None = await w.read(
        reads.context, tenant, req.key, dt.datetime.now(dt.UTC)
    )
    if found is None:
        raise QueryError(
            "not_found", f"context key {req.key!r} is not set (never set, cleared or expired)"
        )
    return found


async def conversation(w: Worker, tenant: str, req: ConversationRequest) -> ConversationResult:
    turns = await w.read(reads.conversation, tenant, req.session_id, req.last_n)
    return ConversationResult(session_id=req.session_id, turns=turns)

"""The query half of the SDK: request-reply on ``memq.<tenant>.<op>``, typed results.

Every method accepts ``min_seq`` (a stream sequence, e.g. ``ack.seq`` of an event just
published) and ``wait_ms``: the worker answers once the projection serving the op has
applied that sequence, so an agent reads its own writes. A reply's error is raised as
:class:`QueryError` with the reply's code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal, TypedDict, TypeVar, Unpack

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from memstream.producers._watch import Change, follow
from memstream.producers.connection import or_denied
from memstream.schemas.errors import Forbidden, QueryError
from memstream.schemas.queries import (
    OPS,
    AnalyticsResult,
    ContextResult,
    ConversationResult,
    HistoryResult,
    LinksResult,
    ListResult,
    Memory,
    OutcomeResult,
    RecallResult,
    RevisionsResult,
    SearchBatchResult,
    SearchHit,
    SearchResult,
    StatsResult,
    TaskResult,
    WatchResult,
)
from memstream.schemas.replies import TypedReply
from memstream.schemas.subjects import query_subject
from memstream.schemas.tenancy import AGENT_HEADER

# The longest wait a query over its tenant's rate is asked again after, once.
_RETRY_RATE_LIMITED_MS = 1000
# How long a query keeps asking while no worker answers at all, before it says so.
_NO_WORKER_GRACE_S = 0.8

__all__ = ["QueryMethods", "SearchFilters", "no_events_hint"]


def no_events_hint(tenant: str) -> str:
    """What to tell whoever asked about a tenant that has never stored anything."""
    return f"tenant {tenant!r} has no events yet: check --tenant (or MEMSTREAM_TENANT)"


R = TypeVar("R")
_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def _decoder(result: type[R]) -> msgspec.json.Decoder[TypedReply[R]]:
    decoder = _decoders.get(result)
    if decoder is None:
        decoder = _decoders[result] = msgspec.json.Decoder(TypedReply[result])  # type: ignore[valid-type]
    return decoder


class SearchFilters(TypedDict, total=False):
    kinds: Sequence[str]  # knowledge, solutions, collaborations (the default); turns, tasks
    top_k: int  # default 5
    threshold: float  # the least similarity of meaning (dense cosine) a hit may have
    mode: Literal["hybrid", "dense", "keyword"]  # default hybrid: meaning and words fused
    recency_half_life_days: float  # weigh recent memories more: this old counts half
    session_id: str  # turns of this conversation (kinds=["turns"])
    task_id: str  # this task (kinds=["tasks"]), or what carried its id
    agent: str
    domain: str
    tags: Sequence[str]  # every tag must be present
    since: dt.datetime
    until: dt.datetime
    # The filter language: {"metadata.priority": {"$gte": 2}, "tags": {"$in": [...]}}...
    filter: dict[str, Any]
    with_links: bool  # each hit with the links to and from it
    min_seq: int
    wait_ms: int
    consistency: Literal["any", "latest"]


class QueryMethods:
    """Mixed into the clients: needs ``nc`` and ``tenant``."""

    nc: NatsClient
    tenant: str
    agent: str
    # How long a reply may take beyond the request's own wait_ms.
    query_timeout: float = 10.0
    # Whether the last reply said this tenant has never stored anything (a mistyped
    # tenant, most often): set by each query.
    tenant_has_no_events: bool = False

    async def query(self, op: str, result: type[R], **fields: Any) -> R:
        """Send one query as the contract's request Struct for ``op``; fields left as
        None take the request's default. (An op this SDK does not know goes as its
        fields: the worker says whether it knows it.)"""
        given = {k: v for k, v in fields.items() if v is not None}
        kind = OPS.get(op)
        body = _encoder.encode(kind(**given) if kind is not None else given)
        subject = query_subject(self.tenant, op)
        wait_ms = fields.get("wait_ms") or 2000
        reply = await self._ask(op, subject, body, self.query_timeout + wait_ms / 1000, result)
        if reply.error is not None and reply.error.code == "rate_limited":
            # Over the tenant's query rate: asked once more when the wait is short.
            after = reply.error.retry_after_ms
            if isinstance(after, int) and after <= _RETRY_RATE_LIMITED_MS:
                await asyncio.sleep(after / 1000)
                reply = await self._ask(
                    op, subject, body, self.query_timeout + wait_ms / 1000, result
                )
        self.tenant_has_no_events = reply.tenant_has_no_events
        if reply.error is not None:
            raise QueryError(
                reply.error.code,
                reply.error.message,
                reply.error.correlation_id,
                after_ms if isinstance(after_ms := reply.error.retry_after_ms, int) else None,
            )
        if reply.result is None:
            raise QueryError("internal", f"the reply to {op} carries no result")
        return reply.result

    async def _ask(
        self,
        op: str,
        subject: str,
        body: bytes,
        timeout: float,  # noqa: ASYNC109
        result: type[R],
    ) -> TypedReply[R]:
        """One request of ``op``, its reply decoded; no reply is a QueryError."""
        try:
            msg = await self._request(subject, body, timeout)
        except Forbidden as err:
            raise QueryError(
                "forbidden", f"these credentials may not query {subject} ({err})"
            ) from None
        except nats.errors.NoRespondersError:
            raise QueryError(
                "unavailable",
                f"no query worker serves {subject}: is `memstream up` (or `serve`) running?",
            ) from None
        except nats.errors.TimeoutError:
            raise QueryError(
                "unavailable", f"no reply on {subject} within {self.query_timeout:g} s"
            ) from None
        try:
            return _decoder(result).decode(msg.data)
        except msgspec.DecodeError as err:
            raise QueryError(
                "internal", f"the reply to {op} is not what it should be: {err}"
            ) from None

    async def _request(self, subject: str, body: bytes, timeout: float) -> Msg:  # noqa: ASYNC109
        """One request; "no responders" is asked again a few times within
        ``_NO_WORKER_GRACE_S`` before it stands. Workers come and go (a restart, a node
        failing over), and nats-server has been seen answering "no responders" for a
        moment on a connection that reached earlier workers of a mapped subject, with the
        new ones subscribed."""
        delay = 0.05
        waited = 0.0
        headers = {AGENT_HEADER: self.agent}
        while True:
            try:
                reply: Msg = await or_denied(
                    self.nc,
                    subject,
                    self.nc.request(subject, body, timeout=timeout, headers=headers),
                )
                return reply
            except nats.errors.NoRespondersError:
                if waited + delay > _NO_WORKER_GRACE_S:
                    raise
            await asyncio.sleep(delay)
            waited += delay
            delay *= 2

    async def search(self, query: str, **filters: Unpack[SearchFilters]) -> list[SearchHit]:
        """The tenant's memories and collaborations most like ``query``, best first."""
        found = await self.query("search", SearchResult, query=query, **_listed(filters))
        return found.hits

    async def search_many(
        self, queries: Sequence[str], **filters: Unpack[SearchFilters]
    ) -> list[list[SearchHit]]:
        """One list of hits per query, in one request."""
        found = await self.query(
            "search", SearchBatchResult, queries=list(queries), **_listed(filters)
        )
        return found.hits

    async def history(
        self,
        *,
        types: Sequence[str] | None = None,
        agent: str | None = None,
        task_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> HistoryResult:
        """A page of events in stream order; pass ``next_after_seq`` on for the next."""
        return await self.query(
            "history", HistoryResult, types=list(types) if types else None, agent=agent,
            task_id=task_id, since=since, until=until, after_seq=after_seq, limit=limit,
            min_seq=min_seq, wait_ms=wait_ms, consistency=consistency,
        )  # fmt: skip

    async def task(
        self,
        task_id: str,
        *,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> TaskResult:
        """The task's state, timeline, output and every event carrying its id."""
        return await self.query(
            "task", TaskResult, task_id=task_id, min_seq=min_seq, wait_ms=wait_ms,
            consistency=consistency,
        )  # fmt: skip

    async def context(
        self,
        key: str,
        *,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> ContextResult:
        """The value under ``key``; QueryError ``not_found`` once expired or cleared."""
        return await self.query(
            "context", ContextResult, key=key, min_seq=min_seq, wait_ms=wait_ms,
            consistency=consistency,
        )  # fmt: skip

    async def conversation(
        self,
        session_id: str,
        *,
        last_n: int | None = None,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> ConversationResult:
        """The session's last turns, oldest first."""
        return await self.query(
            "conversation", ConversationResult, session_id=session_id, last_n=last_n,
            min_seq=min_seq, wait_ms=wait_ms, consistency=consistency,
        )  # fmt: skip

    async def recall(
        self,
        query: str | None = None,
        *,
        session_id: str | None = None,
        task_id: str | None = None,
        budget_chars: int | None = None,
        strategy: str | None = None,
        min_score: float | None = None,
        filter: dict[str, Any] | None = None,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> RecallResult:
        """One context bundle for a prompt, within ``budget_chars``, with its sources;
        a memory enters only when it scores above ``min_score`` (default 0.15) and
        matches ``filter``."""
        return await self.query(
            "recall", RecallResult, query=query, session_id=session_id, task_id=task_id,
            budget_chars=budget_chars, strategy=strategy, min_score=min_score, filter=filter,
            min_seq=min_seq, wait_ms=wait_ms, consistency=consistency,
        )  # fmt: skip

    async def outcome(
        self,
        event_id: str | None = None,
        *,
        seq: int | None = None,
        min_seq: int | None = None,
        wait_ms: int | None = None,
    ) -> OutcomeResult:
        """What became of one event (by its id, or its stream ``seq``): applied,
        conflict, not_found or dead_lettered; see :class:`OutcomeResult`."""
        return await self.query(
            "outcome", OutcomeResult, event_id=event_id, seq=seq, min_seq=min_seq,
            wait_ms=wait_ms,
        )  # fmt: skip

    async def get(
        self,
        memory_id: str,
        *,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> Memory:
        """The memory as it is now; QueryError ``not_found`` when there is none, it was
        forgotten, or it expired."""
        return await self.query(
            "get", Memory, memory_id=memory_id, min_seq=min_seq, wait_ms=wait_ms,
            consistency=consistency,
        )  # fmt: skip

    async def list_memories(
        self,
        *,
        kinds: Sequence[Literal["knowledge", "solutions"]] | None = None,
        filter: dict[str, Any] | None = None,
        order_by: Literal["created_at", "updated_at"] | None = None,
        descending: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        id_suffix: str | None = None,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> ListResult:
        """A page of the memories there are now (newest first by default) that match
        ``filter``; pass ``next_cursor`` as ``cursor`` for the next page. ``id_suffix``
        keeps the memories whose id ends with it (at least 4 characters)."""
        return await self.query(
            "list", ListResult, kinds=list(kinds) if kinds else None, filter=filter,
            order_by=order_by, descending=descending, limit=limit, cursor=cursor,
            id_suffix=id_suffix, min_seq=min_seq, wait_ms=wait_ms, consistency=consistency,
        )  # fmt: skip

    async def revisions(
        self,
        memory_id: str,
        *,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> RevisionsResult:
        """Every stored, revised and forgotten event of the memory, oldest first, with
        the fields each set."""
        return await self.query(
            "revisions", RevisionsResult, memory_id=memory_id, min_seq=min_seq,
            wait_ms=wait_ms, consistency=consistency,
        )  # fmt: skip

    async def links(
        self,
        memory_id: str,
        *,
        relation: str | None = None,
        direction: Literal["out", "in", "both"] | None = None,
        depth: int | None = None,
        limit: int | None = None,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> LinksResult:
        """The memories linked to and from ``memory_id`` to ``depth`` steps (1 to 3), with
        the links; a linked id no memory has now comes back ``missing``."""
        return await self.query(
            "links", LinksResult, memory_id=memory_id, relation=relation, direction=direction,
            depth=depth, limit=limit, min_seq=min_seq, wait_ms=wait_ms, consistency=consistency,
        )  # fmt: skip

    def watch(
        self,
        *,
        types: Sequence[str] = (),
        from_seq: int | None = None,
        heartbeat_s: float = 5.0,
    ) -> AsyncGenerator[Change, None]:
        """The tenant's own events in stream order, as they are published (from
        ``from_seq`` on, or from now): ``async for change in mem.watch(): ...``, each a
        ``Change(seq, event)``. Only ``types`` when given."""

        async def ask(**fields: Any) -> WatchResult:
            return await self.query("watch", WatchResult, **fields)

        return follow(
            self.nc, self.tenant, ask, types=types, from_seq=from_seq, heartbeat_s=heartbeat_s
        )

    async def stats(
        self,
        *,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> StatsResult:
        """Counts by type and agent, each projection's progress and lag, dead letters."""
        return await self.query(
            "stats", StatsResult, min_seq=min_seq, wait_ms=wait_ms, consistency=consistency
        )

    async def analytics(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        *,
        min_seq: int | None = None,
        wait_ms: int | None = None,
        consistency: Literal["any", "latest"] | None = None,
    ) -> AnalyticsResult:
        """Rows of a named analytics query (agent_activity, task_outcomes, tool_usage,
        collaboration_graph, memory_growth); params: since, until, limit, bucket."""
        return await self.query(
            "analytics", AnalyticsResult, name=name, params=params, min_seq=min_seq,
            wait_ms=wait_ms, consistency=consistency,
        )  # fmt: skip


def _listed(filters: SearchFilters) -> dict[str, Any]:
    """Sequences as lists, so any sequence (a tuple, a generator's list) encodes."""
    listed: dict[str, Any] = dict(filters)
    for key in ("kinds", "tags"):
        if key in listed:
            listed[key] = list(listed[key])
    return listed

"""Query requests and replies of the wire contract (``memq.<tenant>.<op>``).

Requests reject unknown fields, so a misspelt filter is a ``bad_request`` naming it
rather than a silently broader query. The tenant is never a request field: it is the
subject's tenant token and nothing else.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

from memstream.schemas.errors import QueryError
from memstream.schemas.ids import AgentId, EventId, RefId
from memstream.schemas.results import (
    AnalyticsResult,
    ContextResult,
    ConversationResult,
    HistoryResult,
    Kind,
    Link,
    LinkNode,
    LinksResult,
    ListResult,
    Memory,
    MemoryKind,
    Outcome,
    OutcomeResult,
    QuotaUsage,
    RecallResult,
    RecallSource,
    Revision,
    RevisionsResult,
    SearchBatchResult,
    SearchHit,
    SearchResult,
    StatsResult,
    Strategy,
    TaskResult,
    Turn,
    WatchResult,
)
from memstream.schemas.serving import PROJECTIONS, SERVED_BY, ops_served

__all__ = [
    "ANALYTICS_NAMES",
    "OPS",
    "PROJECTIONS",
    "SERVED_BY",
    "AnalyticsRequest",
    "AnalyticsResult",
    "Bounds",
    "ContextRequest",
    "ContextResult",
    "ConversationRequest",
    "ConversationResult",
    "GetRequest",
    "HistoryRequest",
    "HistoryResult",
    "Link",
    "LinkNode",
    "LinksRequest",
    "LinksResult",
    "ListRequest",
    "ListResult",
    "Memory",
    "Outcome",
    "OutcomeRequest",
    "OutcomeResult",
    "QuotaUsage",
    "RecallRequest",
    "RecallResult",
    "RecallSource",
    "Request",
    "Revision",
    "RevisionsRequest",
    "RevisionsResult",
    "SearchBatchResult",
    "SearchHit",
    "SearchRequest",
    "SearchResult",
    "StatsRequest",
    "StatsResult",
    "TaskRequest",
    "TaskResult",
    "Turn",
    "WatchRequest",
    "WatchResult",
    "bounds",
    "decode_request",
    "ops_served",
]

SearchMode: TypeAlias = Literal["hybrid", "dense", "keyword"]
AnalyticsName: TypeAlias = Literal[
    "agent_activity", "task_outcomes", "tool_usage", "collaboration_graph", "memory_growth"
]
ANALYTICS_NAMES: Final = frozenset(AnalyticsName.__args__)  # type: ignore[attr-defined]
Timestamp = Annotated[dt.datetime, msgspec.Meta(tz=True)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
QueryText = Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
# The filter language (schemas.filters): checked by the worker, which names what is wrong.
Filter = dict[str, Any]
OrderBy: TypeAlias = Literal["created_at", "updated_at"]
Consistency: TypeAlias = Literal["any", "latest"]


class Request(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Fields every request accepts: read-your-writes by stream sequence.

    Encoded without the fields left at their defaults: a newer client sends what it was
    given, never a field an older worker (which refuses unknown fields) does not know."""

    # Wait until the serving projection has applied this stream sequence...
    min_seq: Seq | None = None
    # ...for at most this long, else answer not_caught_up.
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 2000
    # "latest": first wait (within wait_ms) until the projection has applied the
    # stream's last sequence as of the request: the strongest read, on any replica.
    consistency: Consistency = "any"


class SearchRequest(Request, frozen=True):
    query: QueryText | None = None
    queries: Annotated[list[QueryText], msgspec.Meta(min_length=1, max_length=256)] | None = None
    kinds: tuple[Kind, ...] = ("knowledge", "solutions", "collaborations")
    top_k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    # The least similarity of meaning (dense cosine) a hit may have; no effect in keyword.
    threshold: float | None = None
    # Each hit with the links to and from it (one step).
    with_links: bool = False
    # hybrid: meaning (dense) and words (BM25) fused by reciprocal rank; or either alone.
    mode: SearchMode = "hybrid"
    # Recent memories weigh more: a memory this many days old weighs half as much.
    recency_half_life_days: Annotated[float, msgspec.Meta(gt=0, le=36_500)] | None = None
    # Turns of this conversation, a task's points and what carried its id.
    session_id: RefId | None = None
    task_id: RefId | None = None
    agent: AgentId | None = None
    domain: str | None = None
    tags: tuple[str, ...] = ()
    since: Timestamp | None = None
    until: Timestamp | None = None
    filter: Filter | None = None


class HistoryRequest(Request, frozen=True):
    types: tuple[str, ...] = ()
    agent: AgentId | None = None
    task_id: RefId | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    after_seq: Seq = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


class TaskRequest(Request, frozen=True):
    task_id: RefId


class ContextRequest(Request, frozen=True):
    key: RefId


class ConversationRequest(Request, frozen=True):
    session_id: RefId
    last_n: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20


class RecallRequest(Request, frozen=True):
    query: QueryText | None = None
    session_id: RefId | None = None
    task_id: RefId | None = None
    budget_chars: Annotated[int, msgspec.Meta(ge=100, le=1_000_000)] = 4000
    strategy: Strategy = "balanced"
    # A memory enters the bundle only when it scores above this. Unrelated texts score
    # a little above 0 with every embedder (measured here: up to 0.08 with the hash
    # embedder), so the default keeps them out of a prompt.
    min_score: Annotated[float, msgspec.Meta(ge=-1, le=1)] = 0.15
    # Which memories may enter the bundle (the filter language of search and list).
    filter: Filter | None = None


class StatsRequest(Request, frozen=True):
    pass


class GetRequest(Request, frozen=True):
    memory_id: RefId


class ListRequest(Request, frozen=True):
    kinds: Annotated[tuple[MemoryKind, ...], msgspec.Meta(min_length=1)] = (
        "knowledge",
        "solutions",
    )
    filter: Filter | None = None
    order_by: OrderBy = "created_at"
    descending: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    # Only memories whose id ends with this: how a short id (the last characters a table
    # shows) is turned back into the whole one.
    id_suffix: Annotated[str, msgspec.Meta(min_length=4, max_length=128)] | None = None
    # next_cursor of the page before: where this page starts.
    cursor: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


class RevisionsRequest(Request, frozen=True):
    memory_id: RefId


class WatchRequest(Request, frozen=True):
    """Start a feed of the tenant's events to ``deliver_to`` (a subject under the
    tenant's own reply inbox prefix, ``_INBOX_<tenant>.``), in stream order."""

    deliver_to: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    # Only these event types; all when empty.
    types: Annotated[tuple[str, ...], msgspec.Meta(max_length=64)] = ()
    # From this stream sequence on; without it, the events published from now on.
    from_seq: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # An empty message at least this often while no event comes, so a feed that went
    # silent is told from a quiet one.
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=500, le=60_000)] = 5000


class LinksRequest(Request, frozen=True):
    memory_id: RefId
    # Only links of this relation.
    relation: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    # out: what it links to; in: what links to it; both.
    direction: Literal["out", "in", "both"] = "both"
    depth: Annotated[int, msgspec.Meta(ge=1, le=3)] = 1
    # The most links returned (the nearest first).
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class AnalyticsRequest(Request, frozen=True):
    name: AnalyticsName
    # Bound as query parameters, never formatted into SQL.
    params: dict[str, str | int | float | bool | None] = {}


class OutcomeRequest(Request, frozen=True):
    """What became of one event: by its ``event_id``, or by its stream ``seq`` (then
    answered once the history has applied it, within ``wait_ms``)."""

    event_id: EventId | None = None
    seq: Seq | None = None


OPS: Final[dict[str, type[Request]]] = {
    "search": SearchRequest,
    "history": HistoryRequest,
    "task": TaskRequest,
    "context": ContextRequest,
    "conversation": ConversationRequest,
    "recall": RecallRequest,
    "stats": StatsRequest,
    "analytics": AnalyticsRequest,
    "get": GetRequest,
    "list": ListRequest,
    "revisions": RevisionsRequest,
    "links": LinksRequest,
    "watch": WatchRequest,
    "outcome": OutcomeRequest,
}


class Bounds(msgspec.Struct, frozen=True):
    """An integer request field's default and its inclusive range."""

    default: int
    ge: int | None
    le: int | None


def bounds(request: type[Request], field: str) -> Bounds:
    """The default and range of ``request``'s ``field``, as the decoder enforces them:
    the one source the CLI's options and the MCP tools take theirs from."""
    info = msgspec.inspect.type_info(request)
    assert isinstance(info, msgspec.inspect.StructType)
    found = next(f for f in info.fields if f.name == field)
    kind = found.type
    if isinstance(kind, msgspec.inspect.UnionType):  # an optional field: int | None
        kind = next(t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType))
    assert isinstance(kind, msgspec.inspect.IntType)
    return Bounds(found.default, kind.ge, kind.le)


_request_decoders = {op: msgspec.json.Decoder(cls) for op, cls in OPS.items()}


def decode_request(op: str, body: bytes) -> Request:
    """Decode the request body of ``op``; raises QueryError('bad_request', ...)."""
    decoder = _request_decoders.get(op)
    if decoder is None:
        raise QueryError(
            "bad_request", f"unknown query op {op!r}: use one of {', '.join(sorted(OPS))}"
        )
    try:
        return decoder.decode(body or b"{}")
    except msgspec.ValidationError as err:
        raise QueryError("bad_request", f"{op} request: {err}") from None
    except msgspec.DecodeError as err:
        raise QueryError("bad_request", f"{op} request is not valid JSON: {err}") from None

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
from memstream.schemas.serving import PROJECTIONS, SERVED_BY, ops_served

__all__ = [
    "ANALYTICS_NAMES",
    "OPS",
    "PROJECTIONS",
    "SERVED_BY",
    "AnalyticsRequest",
    "AnalyticsResult",
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
    "decode_request",
    "ops_served",
]

Kind: TypeAlias = Literal["knowledge", "solutions", "collaborations", "turns", "tasks"]
Strategy: TypeAlias = Literal["relevance", "recency", "balanced"]
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
MemoryKind: TypeAlias = Literal["knowledge", "solutions"]
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

# --- results ------------------------------------------------------------------------


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """One memory.linked event: ``from_id`` is ``relation`` to ``to_id``."""

    from_id: str
    to_id: str
    relation: str
    seq: int


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    kind: Kind
    memory_id: str
    score: float
    text: str
    agent: str
    ts: dt.datetime
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = {}
    seq: int
    # The text is cut at 65,536 characters in a hit; this says it was.
    text_truncated: bool = False
    user_id: str | None = None
    run_id: str | None = None
    project: str | None = None
    task_id: str | None = None
    expires_at: dt.datetime | None = None
    # With with_links: the links to and from this memory.
    links: list[Link] | None = None


class SearchResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to a ``query``: its hits, best first."""

    hits: list[SearchHit]


class SearchBatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to ``queries``: one list of hits per query, in the order asked."""

    hits: list[list[SearchHit]]


class HistoryResult(msgspec.Struct, frozen=True, kw_only=True):
    events: list[dict[str, Any]]  # envelopes, each with its stream ``seq``
    next_after_seq: int | None


class TaskResult(msgspec.Struct, frozen=True, kw_only=True):
    task: dict[str, Any]
    timeline: list[dict[str, Any]]
    output: Any = None
    bundle: list[dict[str, Any]] = []
    # The bundle holds the newest events only, when the task has very many.
    bundle_truncated: bool = False


class ContextResult(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    data: dict[str, Any]
    set_at: dt.datetime
    expires_at: dt.datetime | None = None
    agent: str | None = None
    seq: int | None = None


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    role: str
    content: str
    agent: str
    ts: dt.datetime


class ConversationResult(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    turns: list[Turn]


class RecallSource(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    ref: str
    seq: int | None = None
    score: float | None = None


class RecallResult(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    chars: int
    sources: list[RecallSource]
    strategy: Strategy = "balanced"


class StatsResult(msgspec.Struct, frozen=True, kw_only=True):
    events_by_type: dict[str, int]
    events_by_agent: dict[str, int]
    last_applied_seq: dict[str, int]
    lag: dict[str, int]
    dlq_count: int
    # Per projection answering here: "ok", or why it is not advancing (its storage
    # failing: the disk full, the embedder down...), until that passes.
    health: dict[str, str] = {}
    # The memories that are there now (not forgotten, not expired), by kind.
    memories_by_kind: dict[str, int] = {}


class _MemoryFields(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a memory may have: its text, its place and scope, when it expires."""

    content: str | None = None
    domain: str | None = None
    problem: str | None = None
    solution: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = {}
    task_id: str | None = None
    user_id: str | None = None
    run_id: str | None = None
    project: str | None = None
    expires_at: dt.datetime | None = None


class Memory(_MemoryFields, frozen=True, kw_only=True, omit_defaults=True):
    """A memory as it is now. Its text is ``content`` (knowledge) or ``problem`` and
    ``solution`` (solutions); ``revision`` 1 means never revised; ``seq`` is the stream
    sequence of the event that last changed it."""

    kind: MemoryKind
    memory_id: str
    agent: str
    created_at: dt.datetime
    updated_at: dt.datetime
    revision: int
    seq: int


class ListResult(msgspec.Struct, frozen=True, kw_only=True):
    memories: list[Memory]
    # Give it as the next request's ``cursor`` for the next page; None at the end.
    next_cursor: str | None = None


class Revision(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a memory's life: what it set (for a revision, only the fields it
    changed)."""

    seq: int
    ts: dt.datetime
    agent: str
    type: str
    fields: dict[str, Any]


class RevisionsResult(msgspec.Struct, frozen=True, kw_only=True):
    memory_id: str
    revisions: list[Revision]


class LinkNode(_MemoryFields, frozen=True, kw_only=True, omit_defaults=True):
    """A memory a link reaches: as ``get`` returns it, or only its id and
    ``missing: true`` where no memory has that id now (never stored, forgotten, expired)."""

    memory_id: str
    missing: bool = False
    kind: MemoryKind | None = None
    agent: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    revision: int | None = None
    seq: int | None = None


class WatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """The feed started: its JetStream consumer (deleted by the server once nobody
    listens on ``deliver_to`` for a while)."""

    consumer: str
    # The first stream sequence the feed delivers (what "from now" was).
    from_seq: int


class LinksResult(msgspec.Struct, frozen=True, kw_only=True):
    """The neighbourhood of a memory: the memories reached (itself first) and the links
    between them, nearest first; ``truncated`` when ``limit`` cut the links short."""

    nodes: list[LinkNode]
    edges: list[Link]
    truncated: bool = False


Outcome: TypeAlias = Literal["applied", "conflict", "not_found", "dead_lettered"]


class OutcomeResult(msgspec.Struct, frozen=True, kw_only=True):
    """``applied``; ``conflict`` (its expected_revision was not the memory's: read
    ``current_revision`` and try again); ``not_found`` (a revise or forget of a memory
    that is not live); ``dead_lettered`` (it could not be applied: see the DLQ).
    ``revision``: the memory's after the event, where it changed one."""

    seq: int
    type: str
    memory_id: str | None = None
    outcome: Outcome
    revision: int | None = None
    current_revision: int | None = None


class AnalyticsResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    columns: list[str]
    rows: list[list[Any]]


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

"""The typed results of the query ops, as the ``result`` of a reply carries them."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, TypeAlias

import msgspec

__all__ = [
    "AnalyticsResult",
    "ContextResult",
    "ConversationResult",
    "HistoryResult",
    "Kind",
    "Link",
    "LinkNode",
    "LinksResult",
    "ListResult",
    "Memory",
    "MemoryKind",
    "Outcome",
    "OutcomeResult",
    "QuotaUsage",
    "RecallResult",
    "RecallSource",
    "Revision",
    "RevisionsResult",
    "SearchBatchResult",
    "SearchHit",
    "SearchResult",
    "StatsResult",
    "Strategy",
    "TaskResult",
    "Turn",
    "WatchResult",
]

Kind: TypeAlias = Literal["knowledge", "solutions", "collaborations", "turns", "tasks"]
MemoryKind: TypeAlias = Literal["knowledge", "solutions"]
Strategy: TypeAlias = Literal["relevance", "recency", "balanced"]


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


class QuotaUsage(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's live memories against its hard quotas (0: none). ``warning``: the soft
    limit (80% of a hard one) it is past, or the hard one it is at, in words."""

    memories: int
    memories_limit: int = 0
    storage_bytes: int
    storage_limit_bytes: int = 0
    warning: str | None = None


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
    # Those memories against the tenant's quotas (None from a worker without the history).
    quota: QuotaUsage | None = None


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


Outcome: TypeAlias = Literal["applied", "conflict", "not_found", "quota_exceeded", "dead_lettered"]


class OutcomeResult(msgspec.Struct, frozen=True, kw_only=True):
    """``applied``; ``conflict`` (its expected_revision was not the memory's: read
    ``current_revision`` and try again); ``not_found`` (a revise or forget of a memory
    that is not live); ``quota_exceeded`` (a store or revise past the tenant's hard
    quota: ``message`` says which); ``dead_lettered`` (it could not be applied: see the
    DLQ). ``revision``: the memory's after the event, where it changed one.
    ``message``: why a write was refused its quota, or the soft limit an applied one
    passed (absent otherwise)."""

    seq: int
    type: str
    memory_id: str | None = None
    outcome: Outcome
    revision: int | None = None
    current_revision: int | None = None
    message: str | msgspec.UnsetType = msgspec.UNSET


class AnalyticsResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    columns: list[str]
    rows: list[list[Any]]

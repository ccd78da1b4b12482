"""The query ops as a table of endpoints, one module per family (in the manner of nats.py's
``micro``): each endpoint takes the worker, the tenant and the op's request Struct, and
returns the op's result Struct. The transport, the envelope and the consistency waits
are the worker's (``consumers.query_worker``), once for all of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from memstream.consumers.endpoints import history, memories, outcome, search, stats, watch
from memstream.consumers.endpoints._serving import Worker

__all__ = ["ENDPOINTS", "Endpoint", "Worker"]

Endpoint = Callable[[Worker, str, Any], Awaitable[Any]]

ENDPOINTS: Final[dict[str, Endpoint]] = {
    "search": search.search,
    "recall": search.recall,
    "history": history.history,
    "task": history.task,
    "context": history.context,
    "conversation": history.conversation,
    "stats": stats.stats,
    "analytics": stats.analytics,
    "get": memories.get,
    "list": memories.list_memories,
    "revisions": memories.revisions,
    "links": memories.links,
    "watch": watch.watch,
    "outcome": outcome.outcome,
}

"""What an endpoint is handed: the worker it runs in, seen through what endpoints use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient

from memstream.consumers.sources import HistoryReads, Source
from memstream.projections.quotas import Limits
from memstream.schemas.errors import QueryError
from memstream.schemas.events import EVENT_TYPES
from memstream.schemas.filters import Node, parse_filter
from memstream.schemas.queries import ListRequest, RecallRequest, SearchRequest

__all__ = ["Worker", "known_types", "parsed_filter"]


class Worker(Protocol):
    """The query worker as its endpoints see it."""

    nc: NatsClient
    sources: dict[str, Source]
    history_reads: HistoryReads | None
    search_inline: bool
    # The hard quotas of a tenant that has set none (stats reports them).
    quota_defaults: Limits

    async def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(cursor, *args, **kwargs)`` against the history."""
        ...


def known_types(types: tuple[str, ...]) -> None:
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise QueryError(
            "bad_request",
            f"unknown event type {', '.join(map(repr, unknown))} in types: use "
            f"{', '.join(sorted(EVENT_TYPES))}",
        )


def parsed_filter(req: SearchRequest | RecallRequest | ListRequest) -> Node | None:
    return parse_filter(req.filter) if req.filter is not None else None

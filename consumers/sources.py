"""What the query worker reads: a projection in this process, or one another process
serves (the vectors on a Qdrant server, the history over its own query ops)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Protocol, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient

from memstream.projections import memories, reads
from memstream.projections.history import HistoryProjection
from memstream.projections.vector_search import VectorReader
from memstream.schemas.errors import QueryError
from memstream.schemas.queries import ConversationResult, Link, LinksResult, TaskResult, Turn
from memstream.schemas.replies import TypedReply
from memstream.schemas.subjects import query_subject

__all__ = [
    "RECALL_TURNS",
    "HistoryReads",
    "LocalHistory",
    "ReaderSource",
    "RemoteHistory",
    "Source",
    "read_history",
]

# The turns of a session recall considers before the budget picks among them.
RECALL_TURNS: Final = 50
T = TypeVar("T")


class Source(Protocol):
    """A projection a query reads: its progress, and the projection held for a read."""

    @property
    def checkpoint(self) -> int: ...

    async def wait_applied(self, seq: int, within: float) -> bool: ...

    def reading(self) -> contextlib.AbstractAsyncContextManager[Any]: ...


async def read_history(source: Source, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(cursor, *args, **kwargs)`` on a worker thread against the history."""
    async with source.reading() as projection:
        return await asyncio.to_thread(_with_cursor, projection, fn, *args, **kwargs)


def _with_cursor(
    projection: HistoryProjection, fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    cursor = projection.cursor()
    try:
        return fn(cursor, *args, **kwargs)
    finally:
        cursor.close()


class ReaderSource:
    """Vectors written by another process, read through a Qdrant server's aliases."""

    def __init__(self, reader: VectorReader, poll_s: float = 0.01) -> None:
        self.reader = reader
        self.poll_s = poll_s

    @property
    def checkpoint(self) -> int:
        return self.reader.checkpoint

    async def wait_applied(self, seq: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while await asyncio.to_thread(lambda: self.reader.checkpoint) < seq:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_s)
        return True

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[VectorReader]:
        yield self.reader


class HistoryReads(Protocol):
    """What recall needs from the history, wherever the history runs."""

    async def task(
        self, tenant: str, task_id: str, min_seq: int | None, wait_ms: int
    ) -> TaskResult | None: ...

    async def turns(
        self, tenant: str, session_id: str, min_seq: int | None, wait_ms: int
    ) -> list[Turn]: ...

    async def edges(self, tenant: str, ids: list[str]) -> list[Link]:
        """The links to and from the memories ``ids`` (for search's with_links)."""
        ...


class LocalHistory:
    """The history projection of this process."""

    def __init__(self, source: Source) -> None:
        self.source = source

    async def task(
        self, tenant: str, task_id: str, min_seq: int | None, wait_ms: int
    ) -> TaskResult | None:
        return await read_history(self.source, reads.task, tenant, task_id)

    async def turns(
        self, tenant: str, session_id: str, min_seq: int | None, wait_ms: int
    ) -> list[Turn]:
        return await read_history(self.source, reads.conversation, tenant, session_id, RECALL_TURNS)

    async def edges(self, tenant: str, ids: list[str]) -> list[Link]:
        return await read_history(self.source, memories.edges, tenant, ids)


class RemoteHistory:
    """The history of another process, asked over its own query ops."""

    def __init__(self, nc: NatsClient, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._task = msgspec.json.Decoder(TypedReply[TaskResult])
        self._conversation = msgspec.json.Decoder(TypedReply[ConversationResult])
        self._links = msgspec.json.Decoder(TypedReply[LinksResult])

    async def _ask(
        self, tenant: str, op: str, body: dict[str, Any], decoder: msgspec.json.Decoder[Any]
    ) -> Any:
        wait_ms = body["wait_ms"]
        try:
            msg = await self.nc.request(
                query_subject(tenant, op),
                msgspec.json.encode(body),
                timeout=self.timeout + wait_ms / 1000,
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            raise QueryError("unavailable", f"no history worker answered {op}") from None
        try:
            reply = decoder.decode(msg.data)
        except msgspec.DecodeError as err:
            raise QueryError(
                "internal", f"the history's reply to {op} is malformed: {err}"
            ) from None
        if reply.error is not None:
            if reply.error.code == "not_found":
                return None
            raise QueryError(reply.error.code, reply.error.message)
        return reply.result

    async def task(
        self, tenant: str, task_id: str, min_seq: int | None, wait_ms: int
    ) -> TaskResult | None:
        body = {"task_id": task_id, "min_seq": min_seq, "wait_ms": wait_ms}
        found: TaskResult | None = await self._ask(tenant, "task", body, self._task)
        return found

    async def turns(
        self, tenant: str, session_id: str, min_seq: int | None, wait_ms: int
    ) -> list[Turn]:
        body = {
            "session_id": session_id, "last_n": RECALL_TURNS,
            "min_seq": min_seq, "wait_ms": wait_ms,
        }  # fmt: skip
        found: ConversationResult | None = await self._ask(
            tenant, "conversation", body, self._conversation
        )
        return found.turns if found is not None else []

    async def edges(self, tenant: str, ids: list[str]) -> list[Link]:
        seen: dict[int, Link] = {}
        for memory_id in ids:
            body = {"memory_id": memory_id, "limit": 1000, "wait_ms": 0}
            found: LinksResult | None = await self._ask(tenant, "links", body, self._links)
            seen.update((e.seq, e) for e in (found.edges if found else []))
        return [seen[seq] for seq in sorted(seen)]

"""The SDK's memory writes: store, revise, forget, link, each with compare-and-set
(``expected_revision``) and ``confirm``, and ``edit``, the read-modify-write loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Unpack

from memstream.producers._events import EventMethods, PublishAck, Scope, Trace, dedupe_id
from memstream.schemas import events as ev
from memstream.schemas.errors import MemoryNotFound, QueryError, RevisionConflict
from memstream.schemas.ids import new_id
from memstream.schemas.queries import Memory

__all__ = ["MemoryWrites"]


class MemoryWrites(EventMethods):
    """Mixed into MemoryClient: the writes of a memory."""

    async def store_knowledge(
        self,
        content: str,
        *,
        domain: str,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        memory_id: str | None = None,
        dedupe: bool = False,
        expected_revision: int | None = None,
        confirm: bool = False,
        **scope: Unpack[Scope],
    ) -> PublishAck:
        """Store a piece of knowledge; ``memory_id`` is generated when omitted, or with
        ``dedupe=True`` derived from the content, so the same content stored twice is
        one memory (revised), not two."""
        if dedupe and memory_id is None:
            memory_id = dedupe_id(self.tenant, "knowledge", content)
        event = self.new_event(
            ev.KnowledgeStored,
            memory_id=memory_id or new_id(),
            domain=domain,
            content=content,
            tags=tuple(tags),
            metadata=metadata or {},
            expected_revision=expected_revision,
            **scope,
        )
        ack = await self.publish(event)
        return await self._confirmed(ack, event.memory_id, confirm)

    async def store_solution(
        self,
        problem: str,
        solution: str,
        *,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        memory_id: str | None = None,
        dedupe: bool = False,
        expected_revision: int | None = None,
        confirm: bool = False,
        **scope: Unpack[Scope],
    ) -> PublishAck:
        """Store how a problem was solved (``dedupe``: as for :meth:`store_knowledge`,
        from the problem and the solution)."""
        if dedupe and memory_id is None:
            memory_id = dedupe_id(self.tenant, "solutions", problem, solution)
        event = self.new_event(
            ev.SolutionStored,
            memory_id=memory_id or new_id(),
            problem=problem,
            solution=solution,
            tags=tuple(tags),
            metadata=metadata or {},
            expected_revision=expected_revision,
            **scope,
        )
        ack = await self.publish(event)
        return await self._confirmed(ack, event.memory_id, confirm)

    async def revise(
        self,
        memory_id: str,
        *,
        content: str | None = None,
        problem: str | None = None,
        solution: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        ttl_s: int | None = None,
        expires_at: dt.datetime | None = None,
        expected_revision: int | None = None,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Change a stored memory; fields left as None stay as they were (``ttl_s`` or
        ``expires_at``: a new expiry). ``expected_revision``: applied only if the memory
        is still at it. ``confirm``: wait for the outcome; RevisionConflict or
        MemoryNotFound when it was not applied."""
        ack = await self.publish(
            self.new_event(
                ev.MemoryRevised,
                memory_id=memory_id,
                content=content,
                problem=problem,
                solution=solution,
                tags=None if tags is None else tuple(tags),
                metadata=metadata,
                ttl_s=ttl_s,
                expires_at=expires_at,
                expected_revision=expected_revision,
                **trace,
            )
        )
        return await self._confirmed(ack, memory_id, confirm)

    async def forget(
        self,
        memory_id: str,
        *,
        reason: str | None = None,
        erase: bool = False,
        expected_revision: int | None = None,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Forget a memory; ``erase=True`` also removes its earlier events from the
        stream. ``expected_revision`` and ``confirm`` as for :meth:`revise`."""
        ack = await self.publish(
            self.new_event(
                ev.MemoryForgotten,
                memory_id=memory_id,
                reason=reason,
                erase=erase,
                expected_revision=expected_revision,
                **trace,
            )
        )
        return await self._confirmed(ack, memory_id, confirm)

    async def link(
        self,
        from_id: str,
        to_id: str,
        relation: str,
        *,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Record a relation between two memories (e.g. ``refines``, ``contradicts``).
        ``confirm``: wait until the history has applied it."""
        ack = await self.publish(
            self.new_event(
                ev.MemoryLinked, from_id=from_id, to_id=to_id, relation=relation, **trace
            )
        )
        return await self._confirmed(ack, from_id, confirm)

    async def edit(
        self,
        memory_id: str,
        change: Callable[[Memory], Mapping[str, Any] | Awaitable[Mapping[str, Any]]],
        *,
        attempts: int = 10,
    ) -> PublishAck:
        """Read-modify-write with compare-and-set: read the memory, ask ``change`` (sync
        or async) for the fields to revise given what was read, revise expecting that
        revision; on a conflict, read again and ask again, at most ``attempts`` times.
        Returns the applied revise's ack (its ``outcome.revision`` is the new one)."""
        for attempt in range(1, attempts + 1):
            try:
                memory = await self.get(memory_id, consistency="latest")
            except QueryError as err:
                if err.code != "not_found":
                    raise
                raise MemoryNotFound(
                    f"no memory {memory_id!r} in tenant {self.tenant} (never stored, "
                    "forgotten or expired): search or list first",
                    memory_id,
                ) from None
            fields = change(memory)
            if inspect.isawaitable(fields):
                fields = await fields
            try:
                return await self.revise(
                    memory_id, **dict(fields), expected_revision=memory.revision, confirm=True
                )
            except RevisionConflict:
                if attempt == attempts:
                    raise
                # Writers that lost together do not retry together.
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))
        raise AssertionError("unreachable")

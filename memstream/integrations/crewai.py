"""CrewAI on memstream: ``MemstreamStorage``, a ``StorageBackend`` of CrewAI's unified
``Memory``, and ``memstream_embedder()``, the embedder to give that Memory with it.

    from crewai import Memory
    memory = Memory(storage=MemstreamStorage(mem), embedder=memstream_embedder())

Each ``MemoryRecord`` is a knowledge memory of ``domain`` ("crewai" by default) with the
record's id as its memory id, its content as the memory's text, its categories as tags,
and the whole record (scope, metadata, importance, source, private, times) under
``metadata.crewai``: crews in other processes, and agents in other frameworks, share it.

CrewAI's storage interface searches by a vector its embedder made. memstream searches by
text, with its own embedder and words (hybrid search), so the embedder this module gives
remembers which text each vector came from, and the storage searches memstream with that
text. Its vectors are small word hashes: CrewAI uses them only to drop near-duplicates
within one batch it saves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

try:
    from crewai.events import BaseEventListener
    from crewai.events.event_bus import CrewAIEventsBus
    from crewai.events.types.task_events import (
        TaskCompletedEvent,
        TaskFailedEvent,
        TaskStartedEvent,
    )
    from crewai.events.types.tool_usage_events import (
        ToolUsageErrorEvent,
        ToolUsageFinishedEvent,
    )
    from crewai.memory.types import MemoryRecord, ScopeInfo
    from crewai.rag.embeddings.providers.custom.embedding_callable import (
        CustomEmbeddingFunction,
    )
except ImportError as err:  # the extra is not installed
    raise ImportError(
        f"memstream.integrations.crewai needs CrewAI ({err}): pip install 'memstream[crewai]'"
    ) from err

from memstream.integrations._common import OwnWrites, jsonable, stamp
from memstream.producers import MemoryClient, SyncMemoryClient
from memstream.schemas import events as ev
from memstream.schemas.errors import QueryError
from memstream.schemas.ids import new_id
from memstream.schemas.queries import Memory

__all__ = ["MemstreamCrewListener", "MemstreamEmbedding", "MemstreamStorage", "memstream_embedder"]

# Dimensions of the word-hash vectors: enough for CrewAI's in-batch near-duplicate check.
DIMENSIONS: Final = 256
# The texts of the vectors made lately (a search follows its embedding at once).
_REMEMBERED: Final = 4096
_MOST: Final = 1000
_WORD = re.compile(r"\w+")
_log = logging.getLogger(__name__)


class _Texts:
    """Vector -> the text it was made from, for the most recent vectors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._texts: OrderedDict[bytes, str] = OrderedDict()

    def remember(self, vector: Sequence[float], text: str) -> None:
        with self._lock:
            self._texts[_key(vector)] = text
            self._texts.move_to_end(_key(vector))
            while len(self._texts) > _REMEMBERED:
                self._texts.popitem(last=False)

    def text_of(self, vector: Sequence[float]) -> str | None:
        with self._lock:
            return self._texts.get(_key(vector))


_TEXTS: Final = _Texts()


def _key(vector: Sequence[float]) -> bytes:
    return hashlib.sha256(repr([round(float(x), 6) for x in vector]).encode()).digest()


def word_vector(text: str) -> list[float]:
    """A unit vector of the text's words, hashed into DIMENSIONS buckets."""
    counts = [0.0] * DIMENSIONS
    for word in _WORD.findall(text.lower()):
        bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
        counts[bucket % DIMENSIONS] += 1.0
    norm = sum(c * c for c in counts) ** 0.5
    if norm == 0:
        counts[0], norm = 1.0, 1.0  # a text without words still has a vector
    return [c / norm for c in counts]


class MemstreamEmbedding(CustomEmbeddingFunction):
    """CrewAI's embedding function for ``MemstreamStorage``: word-hash vectors whose
    texts the storage searches memstream with."""

    def __call__(self, input: Sequence[str]) -> list[list[float]]:  # type: ignore[override]
        vectors = []
        for text in input:
            vector = word_vector(text)
            _TEXTS.remember(vector, text)
            vectors.append(vector)
        return vectors


def memstream_embedder() -> dict[str, Any]:
    """The ``embedder`` to give CrewAI's ``Memory`` with ``MemstreamStorage``."""
    return {"provider": "custom", "config": {"embedding_callable": MemstreamEmbedding}}


def _scope(path: str | None) -> str:
    """A scope path as CrewAI writes it: ``/`` first, no ``/`` last."""
    if not path or path == "/":
        return "/"
    return "/" + "/".join(part for part in path.split("/") if part)


def _prefixes(scope: str) -> list[str]:
    parts = [p for p in scope.split("/") if p]
    return ["/", *("/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1))]


def _utc(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


class MemstreamStorage(OwnWrites):
    """CrewAI's ``StorageBackend`` over memstream; ``client`` a
    :class:`~memstream.SyncMemoryClient` (safe from CrewAI's save threads)."""

    def __init__(self, client: SyncMemoryClient, *, domain: str = "crewai") -> None:
        self.client = client
        self.domain = domain
        self._lock = threading.Lock()

    def _wrote(self, seq: int) -> None:
        with self._lock:  # CrewAI saves from a thread of its own
            super()._wrote(seq)

    # --- writes --------------------------------------------------------------------------

    def save(self, records: list[MemoryRecord]) -> None:
        """Store each record as a memory (a record saved again is revised)."""
        self.client.run(lambda mem: self._save(mem, records))

    async def asave(self, records: list[MemoryRecord]) -> None:
        await self.client.arun(lambda mem: self._save(mem, records))

    def update(self, record: MemoryRecord) -> None:
        """Replace the record of the same id."""
        self.save([record])

    async def _save(self, mem: MemoryClient, records: list[MemoryRecord]) -> None:
        for record in records:
            scope = _scope(record.scope)
            own = {
                "record": record.model_dump(mode="json", exclude={"embedding"}),
                "prefixes": _prefixes(scope),
                "created_at": _utc(record.created_at).isoformat(),
            }
            ack = await mem.store_knowledge(
                record.content, domain=self.domain, memory_id=record.id,
                tags=list(dict.fromkeys(record.categories)), metadata={"crewai": own},
            )  # fmt: skip
            self._wrote(ack.seq)

    def delete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: dt.datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> int:
        """Forget the records that match every criterion given; how many were."""
        return self.client.run(
            lambda mem: self._delete(
                mem, scope_prefix, categories, record_ids, older_than, metadata_filter
            )
        )

    async def adelete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: dt.datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> int:
        return await self.client.arun(
            lambda mem: self._delete(
                mem, scope_prefix, categories, record_ids, older_than, metadata_filter
            )
        )

    async def _delete(
        self,
        mem: MemoryClient,
        scope_prefix: str | None,
        categories: list[str] | None,
        record_ids: list[str] | None,
        older_than: dt.datetime | None,
        metadata_filter: dict[str, Any] | None,
    ) -> int:
        where = self._filter(scope_prefix, categories, metadata_filter, older_than)
        matching = [m.memory_id for m in await self._all(mem, where)]
        if record_ids is not None:
            wanted = set(record_ids)
            matching = [i for i in matching if i in wanted]
        for memory_id in matching:
            ack = await mem.forget(memory_id, reason="deleted from CrewAI's memory")
            self._wrote(ack.seq)
        return len(matching)

    def reset(self, scope_prefix: str | None = None) -> None:
        """Forget every record in the scope (all of the domain's without one)."""
        self.delete(scope_prefix=scope_prefix)

    # --- reads ---------------------------------------------------------------------------

    def search(
        self,
        query_embedding: list[float],
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        limit: int = 10,
        min_score: float = 0.0,
    ) -> list[tuple[MemoryRecord, float]]:
        """The records best matching the text ``query_embedding`` was made from."""
        return self.client.run(
            lambda mem: self._search(
                mem, query_embedding, scope_prefix, categories, metadata_filter, limit, min_score
            )
        )

    async def asearch(
        self,
        query_embedding: list[float],
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        limit: int = 10,
        min_score: float = 0.0,
    ) -> list[tuple[MemoryRecord, float]]:
        return await self.client.arun(
            lambda mem: self._search(
                mem, query_embedding, scope_prefix, categories, metadata_filter, limit, min_score
            )
        )

    async def _search(
        self,
        mem: MemoryClient,
        query_embedding: list[float],
        scope_prefix: str | None,
        categories: list[str] | None,
        metadata_filter: dict[str, Any] | None,
        limit: int,
        min_score: float,
    ) -> list[tuple[MemoryRecord, float]]:
        text = _TEXTS.text_of(query_embedding)
        if text is None:
            raise ValueError(
                "MemstreamStorage searches by the text a vector was made from, and this "
                "vector was not made by its embedder: give the Memory "
                "embedder=memstream_embedder()"
            )
        where = self._filter(scope_prefix, categories, metadata_filter, None)
        hits = await mem.search(
            text, kinds=["knowledge"], filter=where, top_k=min(limit, _MOST), **self._reads()
        )
        found = []
        for hit in hits:
            record = _record(hit.metadata)
            if record is not None and hit.score >= min_score:
                found.append((record, hit.score))
        return found

    def get_record(self, record_id: str) -> MemoryRecord | None:
        """The record of this id, or None."""

        async def get(mem: MemoryClient) -> MemoryRecord | None:
            try:
                memory = await mem.get(record_id, **self._reads())
            except QueryError as err:
                if err.code == "not_found":
                    return None
                raise
            return _record(memory.metadata) if memory.domain == self.domain else None

        return self.client.run(get)

    def list_records(
        self, scope_prefix: str | None = None, limit: int = 200, offset: int = 0
    ) -> list[MemoryRecord]:
        """The records of the scope, newest first."""
        records = self._records(scope_prefix)
        records.sort(key=lambda r: _utc(r.created_at), reverse=True)
        return records[offset : offset + limit]

    def get_scope_info(self, scope: str) -> ScopeInfo:
        """How many records the scope holds (its subscopes' too), their categories,
        the oldest and newest, and the scope's immediate children."""
        path = _scope(scope)
        records = self._records(path)
        times = [_utc(r.created_at) for r in records]
        return ScopeInfo(
            path=path,
            record_count=len(records),
            categories=sorted({c for r in records for c in r.categories}),
            oldest_record=min(times, default=None),
            newest_record=max(times, default=None),
            child_scopes=_children(path, records),
        )

    def list_scopes(self, parent: str = "/") -> list[str]:
        """The immediate child scopes of ``parent`` that hold records."""
        path = _scope(parent)
        return _children(path, self._records(path))

    def list_categories(self, scope_prefix: str | None = None) -> dict[str, int]:
        """How many records of the scope carry each category."""
        counts: dict[str, int] = {}
        for record in self._records(scope_prefix):
            for category in set(record.categories):
                counts[category] = counts.get(category, 0) + 1
        return dict(sorted(counts.items()))

    def count(self, scope_prefix: str | None = None) -> int:
        """How many records the scope (and its subscopes) holds."""
        return len(self._records(scope_prefix))

    def close(self) -> None:
        """Nothing to release: the client belongs to whoever gave it."""

    # --- helpers -------------------------------------------------------------------------

    def _filter(
        self,
        scope_prefix: str | None,
        categories: list[str] | None,
        metadata_filter: dict[str, Any] | None,
        older_than: dt.datetime | None,
    ) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"domain": self.domain}]
        if scope_prefix and _scope(scope_prefix) != "/":
            parts.append({"metadata.crewai.prefixes": _scope(scope_prefix)})
        if categories:
            parts.append({"tags": {"$in": list(categories)}})
        for key, value in (metadata_filter or {}).items():
            parts.append({f"metadata.crewai.record.metadata.{key}": value})
        if older_than is not None:
            parts.append({"metadata.crewai.created_at": {"$lt": _utc(older_than).isoformat()}})
        return {"$and": parts}

    def _records(self, scope_prefix: str | None) -> list[MemoryRecord]:
        where = self._filter(scope_prefix, None, None, None)

        async def records(mem: MemoryClient) -> list[MemoryRecord]:
            found = (_record(m.metadata) for m in await self._all(mem, where))
            return [r for r in found if r is not None]

        return self.client.run(records)

    async def _all(self, mem: MemoryClient, where: dict[str, Any]) -> list[Memory]:
        """Every live memory that matches ``where``, page by page."""
        found: list[Memory] = []
        cursor: str | None = None
        while True:
            page = await mem.list_memories(
                kinds=["knowledge"], filter=where, limit=_MOST, cursor=cursor, **self._reads()
            )
            found += page.memories
            cursor = page.next_cursor
            if cursor is None:
                return found


def _record(metadata: dict[str, Any]) -> MemoryRecord | None:
    own = metadata.get("crewai")
    if not isinstance(own, dict) or "record" not in own:
        return None
    return MemoryRecord.model_validate(own["record"])


def _children(path: str, records: list[MemoryRecord]) -> list[str]:
    depth = 0 if path == "/" else len([p for p in path.split("/") if p])
    children = set()
    for record in records:
        parts = [p for p in _scope(record.scope).split("/") if p]
        if len(parts) > depth:
            children.add("/" + "/".join(parts[: depth + 1]))
    return sorted(children)


class MemstreamCrewListener(BaseEventListener):  # type: ignore[misc]
    """Records what a crew does, from CrewAI's event bus, under each agent's role: each
    task's ``task.created``, ``task.started``, and ``task.completed`` (its raw output) or
    ``task.failed``; each tool call's ``tool.used`` with its arguments, output, duration
    and whether it failed. Create it once, before ``crew.kickoff()``; it stays
    registered on the bus for the life of the process."""

    def __init__(self, client: SyncMemoryClient) -> None:
        self.client = client
        super().__init__()

    def setup_listeners(self, crewai_event_bus: CrewAIEventsBus) -> None:
        bus = crewai_event_bus

        @bus.on(TaskStartedEvent)  # type: ignore[untyped-decorator]
        def started(source: Any, event: Any) -> None:
            task_id, agent = _task_id(event), _role(event, self.client.agent)
            title = (event.task_name or "a CrewAI task")[:4096]
            self._publish(
                ev.TaskCreated(
                    task_id=task_id, title=title, assignee=agent, **stamp(self.client, agent)
                ),
                ev.TaskStarted(task_id=task_id, **stamp(self.client, agent)),
            )

        @bus.on(TaskCompletedEvent)  # type: ignore[untyped-decorator]
        def completed(source: Any, event: Any) -> None:
            agent = _role(event, self.client.agent)
            output = getattr(event.output, "raw", None)
            self._publish(ev.TaskCompleted(task_id=_task_id(event), output=output,
                                           **stamp(self.client, agent)))  # fmt: skip

        @bus.on(TaskFailedEvent)  # type: ignore[untyped-decorator]
        def failed(source: Any, event: Any) -> None:
            agent = _role(event, self.client.agent)
            self._publish(ev.TaskFailed(task_id=_task_id(event), error=event.error or "failed",
                                        **stamp(self.client, agent)))  # fmt: skip

        @bus.on(ToolUsageFinishedEvent)  # type: ignore[untyped-decorator]
        def tool_used(source: Any, event: Any) -> None:
            took = (event.finished_at - event.started_at).total_seconds() * 1000
            self._tool(event, jsonable(event.output), max(0, round(took)), event.failure is None)

        @bus.on(ToolUsageErrorEvent)  # type: ignore[untyped-decorator]
        def tool_failed(source: Any, event: Any) -> None:
            self._tool(event, str(event.error), None, False)

    def _tool(self, event: Any, result: Any, duration_ms: int | None, ok: bool) -> None:
        agent = _role(event, self.client.agent)
        self._publish(
            ev.ToolUsed(
                tool=event.tool_name[:128],
                args=jsonable(event.tool_args),
                result=result,
                duration_ms=duration_ms,
                ok=ok,
                task_id=event.task_id,
                **stamp(self.client, agent),
            )
        )

    def _publish(self, *events: ev.Event) -> None:
        # The bus runs handlers on its own threads; a lost record is better than a
        # crew that stops because its memory is down, so failures are logged, not raised.
        try:
            self.client.publish_many(events)
        except Exception:
            _log.warning("memstream could not record a CrewAI event", exc_info=True)


def _task_id(event: Any) -> str:
    return str(event.task_id or getattr(getattr(event, "task", None), "id", None) or new_id())


def _role(event: Any, default: str) -> str:
    role = event.agent_role or getattr(getattr(getattr(event, "task", None), "agent", None),
                                       "role", None)  # fmt: skip
    return str(role or default)[:128]

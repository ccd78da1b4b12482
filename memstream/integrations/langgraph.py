"""LangGraph's long-term memory on memstream: ``MemstreamStore``, a ``BaseStore``.

Give it to a graph (``graph.compile(store=MemstreamStore(mem))``) and every node's
``store.put``/``get``/``search`` reads and writes memstream: graphs in other processes,
and agents in other frameworks, share what they store, and the log keeps every change.

How a LangGraph item becomes a memory (a knowledge memory of ``domain``, "langgraph" by
default):

- the tenant is the client's; namespace positions named in ``scopes`` also set that
  scope (``scopes={"user_id": 0}``: the namespace's first label is the ``user_id``);
- the whole namespace and the key are kept in ``metadata.langgraph``, with the value
  under ``metadata.langgraph.value``, where the ``filter`` of a search looks;
- the memory id is derived from the namespace and the key, so a put over an existing key
  revises the same memory and a delete forgets it (the log keeps both);
- the memory's text, which is embedded and searched, is what the index names (the whole
  value by default, or the fields of ``index=[...]``); with ``index=False`` only the key
  is embedded, never the value.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        Item,
        ListNamespacesOp,
        MatchCondition,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
    )
    from langgraph.store.base.embed import get_text_at_path
except ImportError as err:  # the extra is not installed
    raise ImportError(
        f"memstream.integrations.langgraph needs LangGraph ({err}): "
        "pip install 'memstream[langgraph]'"
    ) from err

from memstream.integrations._common import OwnWrites, jsonable, stamp
from memstream.producers import MemoryClient, SyncMemoryClient
from memstream.schemas import events as ev
from memstream.schemas.errors import QueryError
from memstream.schemas.queries import Memory, SearchHit

__all__ = ["MemstreamCallbackHandler", "MemstreamStore"]

# A search of one query or one page of a listing: the most the query worker returns.
_MOST: Final = 1000
# A namespace path longer than this is filtered by its digest: the vector engine's
# filter tokens hold strings of up to 256 characters.
_LONGEST_PATH: Final = 200
_SCOPES: Final = ("user_id", "project", "run_id")


def namespace_path(namespace: Sequence[str]) -> str:
    """The namespace as one string: labels cannot hold a period, so it joins them."""
    path = ".".join(namespace)
    if len(path) <= _LONGEST_PATH:
        return path
    return "sha256:" + hashlib.sha256(path.encode()).hexdigest()


def memory_id_of(namespace: Sequence[str], key: str) -> str:
    """The memory id of an item: the same namespace and key, the same memory."""
    digest = hashlib.sha256(json.dumps([list(namespace), key]).encode()).hexdigest()
    return f"lg-{digest[:40]}"


class MemstreamStore(BaseStore, OwnWrites):
    """A LangGraph ``BaseStore`` whose items are memstream memories.

    ``client``: a :class:`~memstream.SyncMemoryClient` (its tenant and agent write).
    ``domain``: the domain of the memories. ``scopes``: scope names (``user_id``,
    ``project``, ``run_id``) to the namespace position that sets them. ``index``:
    ``{"fields": [...]}`` as LangGraph's ``IndexConfig`` names what is embedded (the
    whole value when left out; the embedder is memstream's). ``ttl``: LangGraph's
    ``TTLConfig``; a TTL in minutes becomes the memory's expiry, and a read refreshes
    it unless ``refresh_on_read`` is False.

    Reads through this store see its own writes (each carries the sequence of the last
    one); reads of what other processes wrote see them once memstream has applied them.
    """

    supports_ttl = True

    def __init__(
        self,
        client: SyncMemoryClient,
        *,
        domain: str = "langgraph",
        scopes: dict[str, int] | None = None,
        index: dict[str, Any] | None = None,
        ttl: TTLConfig | None = None,
    ) -> None:
        unknown = set(scopes or {}) - set(_SCOPES)
        if unknown:
            raise ValueError(
                f"scopes names {sorted(unknown)}: a namespace position can set {', '.join(_SCOPES)}"
            )
        self.client = client
        self.domain = domain
        self.scopes = dict(scopes or {})
        self.index_fields: list[str] = list((index or {}).get("fields") or ["$"])
        self.ttl_config = ttl

    # --- the two entry points LangGraph calls ----------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` in order; a read sees the writes before it."""
        listed = list(ops)
        return self.client.run(lambda mem: self._run(mem, listed))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` in order, from any event loop."""
        listed = list(ops)
        return await self.client.arun(lambda mem: self._run(mem, listed))

    # --- the operations ----------------------------------------------------------------

    async def _run(self, mem: MemoryClient, ops: list[Op]) -> list[Result]:
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(await self._get(mem, op))
            elif isinstance(op, SearchOp):
                results.append(await self._search(mem, op))
            elif isinstance(op, PutOp):
                await self._put(mem, op)
                results.append(None)
            elif isinstance(op, ListNamespacesOp):
                results.append(await self._list_namespaces(mem, op))
            else:
                raise TypeError(f"MemstreamStore does not know the operation {op!r}")
        return results

    async def _get(self, mem: MemoryClient, op: GetOp) -> Item | None:
        try:
            memory = await mem.get(memory_id_of(op.namespace, op.key), **self._reads())
        except QueryError as err:
            if err.code == "not_found":
                return None
            raise
        item = _item(memory)
        if item is None:
            return None
        if op.refresh_ttl:
            await self._refresh(mem, [memory.metadata])
        return item

    async def _put(self, mem: MemoryClient, op: PutOp) -> None:
        memory_id = memory_id_of(op.namespace, op.key)
        if op.value is None:
            ack = await mem.forget(memory_id, reason="deleted from the LangGraph store")
            self._wrote(ack.seq)
            return
        own: dict[str, Any] = {
            "namespace": list(op.namespace),
            "key": op.key,
            "value": op.value,
            "prefixes": [namespace_path(op.namespace[:n]) for n in range(1, len(op.namespace) + 1)],
        }
        scope: dict[str, Any] = {
            name: op.namespace[at] for name, at in self.scopes.items() if at < len(op.namespace)
        }
        if op.ttl is not None:
            own["ttl_minutes"] = op.ttl
            scope["ttl_s"] = _seconds(op.ttl)
        ack = await mem.store_knowledge(
            self._text(op),
            domain=self.domain,
            memory_id=memory_id,
            metadata={"langgraph": own},
            **scope,
        )
        self._wrote(ack.seq)

    def _text(self, op: PutOp) -> str:
        """What is embedded: the fields the index names, or the key alone."""
        if op.index is False:
            return op.key
        fields = self.index_fields if op.index is None else list(op.index)
        texts = [t for path in fields for t in get_text_at_path(op.value, path) if t.strip()]
        return "\n".join(texts) or op.key

    async def _search(self, mem: MemoryClient, op: SearchOp) -> list[SearchItem]:
        wanted = op.offset + op.limit
        if wanted > _MOST:
            raise ValueError(f"offset + limit is {wanted}: a search returns at most {_MOST}")
        where = self._filter(op.namespace_prefix, op.filter)
        if op.query:
            hits = await mem.search(
                op.query, kinds=["knowledge"], domain=self.domain, filter=where,
                top_k=wanted, **self._reads(),
            )  # fmt: skip
            found = [_search_item(hit) for hit in hits[op.offset :]]
            metadata = [hit.metadata for hit in hits[op.offset :]]
        else:
            page = await mem.list_memories(
                kinds=["knowledge"], filter=where, limit=wanted, **self._reads()
            )
            memories = page.memories[op.offset :]
            found = [_search_item(m) for m in memories]
            metadata = [m.metadata for m in memories]
        if op.refresh_ttl:
            await self._refresh(mem, metadata)
        return [item for item in found if item is not None]

    def _filter(self, prefix: Sequence[str], given: dict[str, Any] | None) -> dict[str, Any]:
        """The memstream filter of a search: the domain, the namespace prefix, and the
        value's fields (LangGraph's operators are a subset of memstream's)."""
        parts: list[dict[str, Any]] = [{"domain": self.domain}]
        if prefix:
            parts.append({"metadata.langgraph.prefixes": namespace_path(prefix)})
        for field, condition in (given or {}).items():
            parts.append({f"metadata.langgraph.value.{field}": condition})
        return {"$and": parts}

    async def _refresh(self, mem: MemoryClient, metadata: list[dict[str, Any]]) -> None:
        """Restart the TTL of what was read, as LangGraph's ``refresh_on_read`` asks."""
        for meta in metadata:
            own = meta.get("langgraph") or {}
            minutes = own.get("ttl_minutes")
            if minutes is None:
                continue
            memory_id = memory_id_of(own["namespace"], own["key"])
            ack = await mem.revise(memory_id, ttl_s=_seconds(minutes))
            self._wrote(ack.seq)

    async def _list_namespaces(
        self, mem: MemoryClient, op: ListNamespacesOp
    ) -> list[tuple[str, ...]]:
        """The distinct namespaces (cut at ``max_depth``) of the live items that match
        the conditions, sorted; read page by page from the history."""
        prefix: tuple[str, ...] = ()
        for condition in op.match_conditions or ():
            if condition.match_type == "prefix" and "*" not in condition.path:
                prefix = tuple(condition.path)
        where = self._filter(prefix, None)
        found: set[tuple[str, ...]] = set()
        cursor: str | None = None
        while True:
            page = await mem.list_memories(
                kinds=["knowledge"], filter=where, limit=_MOST, cursor=cursor, **self._reads()
            )
            for memory in page.memories:
                own = memory.metadata.get("langgraph") or {}
                namespace = tuple(own.get("namespace") or ())
                if namespace and all(_matches(namespace, c) for c in op.match_conditions or ()):
                    found.add(namespace[: op.max_depth] if op.max_depth else namespace)
            cursor = page.next_cursor
            if cursor is None:
                break
        return sorted(found)[op.offset : op.offset + op.limit]

    # --- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client this store was given."""
        self.client.close()

    async def aclose(self) -> None:
        """Close the client from an event loop without blocking it."""
        await asyncio.to_thread(self.client.close)


def _seconds(minutes: float) -> int:
    return max(1, math.ceil(minutes * 60))


def _matches(namespace: tuple[str, ...], condition: MatchCondition) -> bool:
    path = tuple(condition.path)
    if len(path) > len(namespace):
        return False
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    return all(want in ("*", have) for want, have in zip(path, part, strict=True))


def _item(memory: Memory) -> Item | None:
    own = memory.metadata.get("langgraph")
    if not isinstance(own, dict) or "value" not in own:
        return None  # a memory of the domain that this store did not write
    return Item(
        value=own["value"],
        key=own["key"],
        namespace=tuple(own["namespace"]),
        created_at=memory.created_at,
        updated_at=memory.updated_at,
    )


def _search_item(found: SearchHit | Memory) -> SearchItem | None:
    own = found.metadata.get("langgraph")
    if not isinstance(own, dict) or "value" not in own:
        return None
    if isinstance(found, SearchHit):
        # A hit carries when its memory last changed, not when it was first stored.
        created: dt.datetime = found.ts
        updated, score = found.ts, found.score
    else:
        created, updated, score = found.created_at, found.updated_at, None
    return SearchItem(
        namespace=tuple(own["namespace"]),
        key=own["key"],
        value=own["value"],
        created_at=created,
        updated_at=updated,
        score=score,
    )


_log = logging.getLogger(__name__)


class MemstreamCallbackHandler(BaseCallbackHandler):
    """Records what a graph does: each invocation is a task (``task.created`` and
    ``task.started`` when it starts, ``task.completed`` with its output or
    ``task.failed``), and each tool call a ``tool.used`` of that task, with its input,
    output, duration and whether it failed, under the name of the graph node that made
    it (the agent, in a graph of agents; ``agent`` when a call has no node).

    Pass it in the config: ``graph.invoke(state, {"callbacks": [handler]})``."""

    def __init__(self, client: SyncMemoryClient, *, agent: str | None = None) -> None:
        self.client = client
        self.agent = agent or client.agent
        self._lock = threading.Lock()
        self._roots: dict[uuid.UUID, uuid.UUID] = {}  # run -> the invocation it is part of
        self._tools: dict[uuid.UUID, tuple[float, str, Any, str]] = {}

    def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: uuid.UUID,
        parent_run_id: uuid.UUID | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        root = self._enter(run_id, parent_run_id)
        if root == run_id:
            name = kwargs.get("name") or (serialized or {}).get("name") or "graph"
            task_id = str(run_id)
            self._publish(
                ev.TaskCreated(task_id=task_id, title=f"run of {name}"[:4096],
                               assignee=self.agent, **stamp(self.client, self.agent)),
                ev.TaskStarted(task_id=task_id, **stamp(self.client, self.agent)),
            )  # fmt: skip

    def on_chain_end(self, outputs: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        if self._leave(run_id):
            self._publish(ev.TaskCompleted(task_id=str(run_id), output=jsonable(outputs),
                                           **stamp(self.client, self.agent)))  # fmt: skip

    def on_chain_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        if self._leave(run_id):
            self._publish(ev.TaskFailed(task_id=str(run_id), error=str(error) or repr(error),
                                        **stamp(self.client, self.agent)))  # fmt: skip

    def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: str, *, run_id: uuid.UUID,
        parent_run_id: uuid.UUID | None = None, metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        self._enter(run_id, parent_run_id)
        name = kwargs.get("name") or (serialized or {}).get("name") or "tool"
        agent = str((metadata or {}).get("langgraph_node") or self.agent)
        with self._lock:
            self._tools[run_id] = (time.monotonic(), name, inputs or input_str, agent)

    def on_tool_end(self, output: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._tool(run_id, jsonable(getattr(output, "content", output)), ok=True)

    def on_tool_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._tool(run_id, str(error) or repr(error), ok=False)

    def _tool(self, run_id: uuid.UUID, result: Any, *, ok: bool) -> None:
        with self._lock:
            started = self._tools.pop(run_id, None)
            root = self._roots.pop(run_id, None)
        if started is None:
            return
        began, name, arguments, agent = started
        self._publish(
            ev.ToolUsed(
                tool=name[:128],
                args=jsonable(arguments),
                result=result,
                ok=ok,
                duration_ms=round((time.monotonic() - began) * 1000),
                task_id=None if root is None else str(root),
                **stamp(self.client, agent),
            )
        )

    def _enter(self, run_id: uuid.UUID, parent: uuid.UUID | None) -> uuid.UUID:
        with self._lock:
            root = self._roots.get(parent, run_id) if parent is not None else run_id
            self._roots[run_id] = root
            return root

    def _leave(self, run_id: uuid.UUID) -> bool:
        """Forget the run; whether it was an invocation (a task)."""
        with self._lock:
            root = self._roots.pop(run_id, None)
            if root == run_id:
                self._roots = {r: t for r, t in self._roots.items() if t != run_id}
            return root == run_id

    def _publish(self, *events: ev.Event) -> None:
        # A graph whose memory is down still runs: the record is lost, and logged.
        try:
            self.client.publish_many(events)
        except Exception:
            _log.warning("memstream could not record a LangGraph run", exc_info=True)

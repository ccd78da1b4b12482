"""``memstream mcp``: memstream's memory as Model Context Protocol tools.

Built on the official ``mcp`` SDK. It connects to memstream as one tenant and agent (an
MCP client is one agent), and offers the tools an agent needs to remember, find and
tend its memories. Every tool publishes or queries through ``MemoryClient``; what this
server published, its later queries wait for (read-your-writes), so a memory remembered
is found by the next search. A memstream error reaches the agent as a tool error with
the contract's message; over stdio nothing but the protocol is written to stdout.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from memstream.consumers.metrics import ProcessMetrics
from memstream.producers import MemoryClient, PublishAck
from memstream.producers._queries import no_events_hint
from memstream.schemas.errors import MemstreamError, PublishError
from memstream.schemas.ids import new_id
from memstream.schemas.queries import (
    LinksRequest,
    ListRequest,
    RecallRequest,
    Request,
    SearchRequest,
    bounds,
)

__all__ = ["TOOLS", "build_server"]

TOOLS = (
    "remember",
    "search_memory",
    "recall",
    "get_memory",
    "list_memories",
    "revise_memory",
    "forget_memory",
    "link_memories",
    "related_memories",
    "set_context",
    "get_context",
)

# How long a query waits for what this server published before it to be applied.
_WAIT_MS = 10_000

Kind = Literal["knowledge", "solutions", "collaborations", "turns", "tasks"]
Filter = Annotated[
    dict[str, Any] | None,
    Field(
        description='memstream filter: {"field": value} for equality, {"field": {"$gt": 3}} with '
        "$eq $ne $gt $gte $lt $lte $in $nin $contains, and $and/$or/$not. Fields: kind, agent, "
        "domain, tags, user_id, run_id, project, task_id, created_at, updated_at, "
        "metadata.<key>."
    ),
]


def _range(request: type[Request], field: str) -> Any:
    """The range the request's decoder enforces: the SDK's, the CLI's and these tools'."""
    b = bounds(request, field)
    return Field(ge=b.ge, le=b.le)


_TOP_K = bounds(SearchRequest, "top_k").default
_BUDGET = bounds(RecallRequest, "budget_chars").default
_LIMIT = bounds(ListRequest, "limit").default
_DEPTH = bounds(LinksRequest, "depth").default


def _revision(ack: PublishAck) -> dict[str, Any]:
    """A confirmed write's new revision, for the agent's next compare-and-set."""
    found = ack.outcome
    return {"revision": found.revision} if found is not None and found.revision else {}


def _plain(value: Any) -> Any:
    """A result Struct as plain JSON values."""
    return msgspec.to_builtins(value)


class _Memory:
    """The tools' shared state: the client, and the last sequence it published."""

    def __init__(self, client: MemoryClient) -> None:
        self.client = client
        self.last_seq = 0

    def published(self, seq: int) -> dict[str, Any]:
        self.last_seq = max(self.last_seq, seq)
        return {"seq": seq}

    @property
    def fresh(self) -> dict[str, Any]:
        """Query fields that make a query see what this server published."""
        return {"min_seq": self.last_seq, "wait_ms": _WAIT_MS} if self.last_seq else {}


def build_server(
    client: MemoryClient, name: str = "memstream", metrics: ProcessMetrics | None = None
) -> MCPServer:
    """The MCP server of one tenant's agent, its tools calling ``client``; ``metrics``:
    where the SDK calls' times (``memstream_query_duration_seconds{op="sdk:<call>"}``)
    and failed publishes are counted."""
    memory = _Memory(client)
    server: MCPServer = MCPServer(
        name,
        instructions=(
            "Shared long-term memory of a team of agents. Before working on a task, "
            "search_memory or recall what was learned before; after learning something or "
            "solving a problem, remember it. Memories have ids: get, revise, forget and link "
            "them by id."
        ),
    )

    async def call(fn: Any) -> Any:
        started = time.perf_counter()
        name = getattr(fn, "__qualname__", "call").split(".")[-1]
        try:
            return await fn
        except PublishError as err:
            if metrics is not None:
                metrics.publish_errors.inc()
            raise ToolError(str(err)) from None
        except MemstreamError as err:
            if client.tenant_has_no_events:
                raise ToolError(f"{err}; {no_events_hint(client.tenant)}") from None
            raise ToolError(str(err)) from None
        finally:
            if metrics is not None:
                metrics.observe_query(f"sdk:{name}", time.perf_counter() - started)

    def hint() -> dict[str, str]:
        """The hint for an answer about a tenant that has never stored anything."""
        unseen = client.tenant_has_no_events
        return {"hint": no_events_hint(client.tenant)} if unseen else {}

    @server.tool(
        description="Store a memory for the team: a piece of knowledge (content and domain), "
        "or a problem with its solution (problem and solution). Returns its memory_id."
    )
    async def remember(
        content: Annotated[str | None, Field(description="What was learned.")] = None,
        domain: Annotated[
            str | None, Field(description="Its subject area, e.g. python (knowledge needs one).")
        ] = None,
        problem: Annotated[str | None, Field(description="A problem that was solved.")] = None,
        solution: Annotated[str | None, Field(description="How it was solved.")] = None,
        tags: Annotated[list[str] | None, Field(description="Short labels.")] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="Any JSON object.")] = None,
        memory_id: Annotated[str | None, Field(description="An id of your own.")] = None,
    ) -> dict[str, Any]:
        memory_id = memory_id or new_id()
        extra: dict[str, Any] = {"tags": tags or (), "metadata": metadata, "memory_id": memory_id}
        if problem is not None or solution is not None:
            if not (problem and solution):
                raise ToolError("a solution memory needs both problem and solution")
            if content is not None:
                raise ToolError("give content (knowledge) or problem and solution, not both")
            ack = await call(client.store_solution(problem, solution, **extra, confirm=True))
            kind = "solutions"
        elif content:
            if not domain:
                raise ToolError("a knowledge memory needs a domain, its subject area, e.g. python")
            ack = await call(client.store_knowledge(content, domain=domain, **extra, confirm=True))
            kind = "knowledge"
        else:
            raise ToolError("nothing to remember: give content, or problem and solution")
        return {"memory_id": memory_id, "kind": kind, **_revision(ack), **memory.published(ack.seq)}

    @server.tool(
        description="Search the team's memories by meaning and keywords; the best matches "
        "first, each with its memory_id, text and score."
    )
    async def search_memory(
        query: Annotated[str, Field(description="What to look for, in words.")],
        kinds: Annotated[list[Kind] | None, Field(description="Kinds to search.")] = None,
        top_k: Annotated[int, _range(SearchRequest, "top_k")] = _TOP_K,
        filter: Filter = None,
        mode: Literal["hybrid", "dense", "keyword"] = "hybrid",
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"top_k": top_k, "mode": mode, **memory.fresh}
        if kinds:
            fields["kinds"] = tuple(kinds)
        if filter is not None:
            fields["filter"] = filter
        hits = await call(client.search(query, **fields))
        return {"hits": [_plain(h) for h in hits], **hint()}

    @server.tool(
        description="One prompt-ready bundle of what is relevant: memories like the query, "
        "a task's state and a conversation's recent turns, within a character budget."
    )
    async def recall(
        query: str | None = None,
        session_id: str | None = None,
        task_id: str | None = None,
        budget_chars: Annotated[int, _range(RecallRequest, "budget_chars")] = _BUDGET,
        filter: Filter = None,
    ) -> dict[str, Any]:
        result = await call(
            client.recall(
                query,
                session_id=session_id,
                task_id=task_id,
                budget_chars=budget_chars,
                filter=filter,
                **memory.fresh,
            )
        )
        return {**_plain(result), **hint()}

    @server.tool(description="A memory as it is now, by its memory_id.")
    async def get_memory(memory_id: str) -> dict[str, Any]:
        return _plain(await call(client.get(memory_id, **memory.fresh)))  # type: ignore[no-any-return]

    @server.tool(
        description="The team's memories, newest first, a page at a time; pass next_cursor "
        "back as cursor for the next page."
    )
    async def list_memories(
        kinds: list[Literal["knowledge", "solutions"]] | None = None,
        filter: Filter = None,
        limit: Annotated[int, _range(ListRequest, "limit")] = _LIMIT,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        result = await call(
            client.list_memories(
                kinds=tuple(kinds) if kinds else None,
                filter=filter,
                limit=limit,
                cursor=cursor,
                **memory.fresh,
            )
        )
        return {**_plain(result), **hint()}

    @server.tool(
        description="Change a memory: its content (knowledge) or problem/solution, its tags "
        "or metadata. Earlier versions stay in its history."
    )
    async def revise_memory(
        memory_id: str,
        content: str | None = None,
        problem: str | None = None,
        solution: str | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        expected_revision: Annotated[
            int | None,
            Field(description="Change it only if it is still at this revision (get shows it)."),
        ] = None,
    ) -> dict[str, Any]:
        if all(v is None for v in (content, problem, solution, tags, metadata)):
            raise ToolError("nothing to revise: give content, problem, solution, tags or metadata")
        ack = await call(
            client.revise(
                memory_id,
                content=content,
                problem=problem,
                solution=solution,
                tags=tags,
                metadata=metadata,
                expected_revision=expected_revision,
                confirm=True,
            )
        )
        return {"memory_id": memory_id, **_revision(ack), **memory.published(ack.seq)}

    @server.tool(
        description="Forget a memory: searches and reads no longer return it. erase=true also "
        "removes its earlier events for good."
    )
    async def forget_memory(
        memory_id: str,
        reason: str | None = None,
        erase: bool = False,
        expected_revision: int | None = None,
    ) -> dict[str, Any]:
        ack = await call(
            client.forget(
                memory_id, reason=reason, erase=erase, expected_revision=expected_revision,
                confirm=True,
            )
        )  # fmt: skip
        return {"memory_id": memory_id, "forgotten": True, **memory.published(ack.seq)}

    @server.tool(
        description="Link two memories with a relation, e.g. 'supersedes', 'explains', 'caused_by'."
    )
    async def link_memories(from_id: str, to_id: str, relation: str) -> dict[str, Any]:
        ack = await call(client.link(from_id, to_id, relation, confirm=True))
        return {
            "from_id": from_id,
            "to_id": to_id,
            "relation": relation,
            **memory.published(ack.seq),
        }

    @server.tool(
        description="The memories linked to a memory, up to depth 3, with the links between them."
    )
    async def related_memories(
        memory_id: str,
        relation: str | None = None,
        direction: Literal["out", "in", "both"] = "both",
        depth: Annotated[int, _range(LinksRequest, "depth")] = _DEPTH,
    ) -> dict[str, Any]:
        result = await call(
            client.links(
                memory_id, relation=relation, direction=direction, depth=depth, **memory.fresh
            )
        )
        return _plain(result)  # type: ignore[no-any-return]

    @server.tool(
        description="Set a named piece of working context (a JSON object) for the team, "
        "optionally expiring after ttl_s seconds."
    )
    async def set_context(
        key: str,
        data: dict[str, Any],
        ttl_s: Annotated[float | None, Field(gt=0)] = None,
    ) -> dict[str, Any]:
        ack = await call(client.set_context(key, data, ttl_s=ttl_s))
        return {"key": key, **memory.published(ack.seq)}

    @server.tool(description="A named piece of working context, as last set.")
    async def get_context(key: str) -> dict[str, Any]:
        body: dict[str, Any] = _plain(await call(client.context(key, **memory.fresh)))
        return body

    return server

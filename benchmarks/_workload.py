"""A realistic event mix for the benchmarks, published once into a fresh stream."""

from __future__ import annotations

from collections.abc import Callable

from memstream.producers import MemoryClient
from memstream.schemas import events as ev

CHUNK = 20_000


def mixed_events(client: MemoryClient, n: int, offset: int = 0) -> list[ev.Event]:
    """Mostly conversation turns and tool calls, with memories, tasks and context."""
    text = "the agent notes what it learned while working on the task, in a sentence or two"
    kinds: list[Callable[[int], ev.Event]] = [
        lambda i: client.new_event(ev.ConversationTurn, session_id=f"s{i % 500}",
                                   role="assistant", content=f"{i}: {text}"),
        lambda i: client.new_event(ev.ConversationTurn, session_id=f"s{i % 500}",
                                   role="user", content=f"{i}: {text}"),
        lambda i: client.new_event(ev.ToolUsed, tool=f"tool{i % 20}", args={"q": i},
                                   result={"lines": i % 17}, duration_ms=i % 900, ok=i % 9 > 0),
        lambda i: client.new_event(ev.KnowledgeStored, memory_id=f"m{i}", domain="python",
                                   content=f"{i}: {text}", tags=("bench",)),
        lambda i: client.new_event(ev.TaskCreated, task_id=f"t{i // 10}", title=f"task {i}"),
        lambda i: client.new_event(ev.TaskCompleted, task_id=f"t{i // 10}", output={"i": i}),
        lambda i: client.new_event(ev.CollabMessage, interaction_id=f"i{i % 100}",
                                   sender="planner", recipients=("coder",), content=text),
        lambda i: client.new_event(ev.ContextSet, key=f"k{i % 50}", data={"i": i}, ttl_s=600),
    ]  # fmt: skip
    return [kinds[(i + offset) % len(kinds)](i + offset) for i in range(n)]


async def fill(client: MemoryClient, n: int) -> None:
    for start in range(0, n, CHUNK):
        await client.publish_many(mixed_events(client, min(CHUNK, n - start), start))

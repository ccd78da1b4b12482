"""The OpenAI Agents SDK on memstream: ``MemstreamSession``, a ``Session`` whose items are
``conversation.turn`` events, and ``MemstreamHooks``, run hooks that record each agent's
runs as tasks and its tool calls as ``tool.used``.

    with SyncMemoryClient.connect(tenant="acme", agent="support") as mem:
        session = MemstreamSession("customer-42", mem)
        result = await Runner.run(agent, "hello", session=session, hooks=MemstreamHooks(mem))

Each item is one turn of the session: its role is the item's ``role`` (or its ``type``,
for tool calls and their outputs) and its content the item as JSON, so
``get_items`` returns exactly the dicts that were added. ``pop_item`` and
``clear_session`` are ``conversation.turns_removed`` events: the turns stay in the log,
and no read (the session, ``conversation``, ``recall``, a search of turns) shows them.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

try:
    from agents import Agent, RunContextWrapper, RunHooks, Tool
    from agents.items import TResponseInputItem
    from agents.memory.session_settings import SessionSettings
    from agents.tool_context import ToolContext
except ImportError as err:  # the extra is not installed
    raise ImportError(
        f"memstream.integrations.openai_agents needs the OpenAI Agents SDK ({err}): "
        "pip install 'memstream[openai-agents]'"
    ) from err

from memstream.integrations._common import OwnWrites, jsonable, stamp
from memstream.producers import MemoryClient, SyncMemoryClient
from memstream.schemas import events as ev
from memstream.schemas.ids import new_id

__all__ = ["MemstreamHooks", "MemstreamSession"]

# The most turns one conversation read returns.
_MOST_TURNS: Final = 10_000
_encode = msgspec.json.Encoder().encode


class MemstreamSession(OwnWrites):
    """A ``Session`` of the OpenAI Agents SDK kept in memstream, one per ``session_id``;
    sessions of other ids (other agents, other users) never see each other's items."""

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        client: SyncMemoryClient,
        *,
        session_settings: SessionSettings | None = None,
    ) -> None:
        self.session_id = session_id
        self.client = client
        self.session_settings = session_settings

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The session's items, oldest first; with ``limit``, the latest ``limit`` of them."""
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        if limit is not None and limit <= 0:
            return []
        last_n = _MOST_TURNS if limit is None else min(limit, _MOST_TURNS)
        return [item for _, item in await self.client.arun(lambda m: self._visible(m, last_n))]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items``, in order, as turns of the session."""
        if not items:
            return

        async def add(mem: MemoryClient) -> None:
            events = [
                mem.new_event(
                    ev.ConversationTurn,
                    session_id=self.session_id,
                    role=_role(item),
                    content=_encode(item).decode(),
                )
                for item in items
            ]
            acks = await mem.publish_many(events)
            self._wrote(max(ack.seq for ack in acks))

        await self.client.arun(add)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove the latest item and return it; None when the session is empty."""

        async def pop(mem: MemoryClient) -> TResponseInputItem | None:
            visible = await self._visible(mem, 1)
            if not visible:
                return None
            seq, item = visible[-1]
            self._wrote((await mem.remove_turns(self.session_id, seqs=[seq])).seq)
            return item

        return await self.client.arun(pop)

    async def clear_session(self) -> None:
        """Remove every item there is now; items added later are the session's again."""

        async def clear(mem: MemoryClient) -> None:
            self._wrote((await mem.remove_turns(self.session_id, clear=True)).seq)

        await self.client.arun(clear)

    async def _visible(
        self, mem: MemoryClient, last_n: int = _MOST_TURNS
    ) -> list[tuple[int, TResponseInputItem]]:
        turns = await mem.conversation(self.session_id, last_n=last_n, **self._reads())
        return [(turn.seq, msgspec.json.decode(turn.content)) for turn in turns.turns]


def _role(item: TResponseInputItem) -> str:
    role = item.get("role") or item.get("type") or "item"
    return str(role)[:32]


class MemstreamHooks(RunHooks[Any]):
    """Run hooks that record what the agents do, under each agent's own name: a run of
    an agent is a task (``task.created`` and ``task.started`` when it starts,
    ``task.completed`` with its output when it ends), and each tool call a
    ``tool.used`` of that task, with its arguments, result and duration.

    A run that raises ends no task: call :meth:`failed` with the error to record it."""

    def __init__(self, client: SyncMemoryClient, *, title: str = "run of {agent}") -> None:
        self.client = client
        self.title = title
        # agent name -> the task of its current run
        self.tasks: dict[str, str] = {}
        self._tool_started: dict[str, float] = {}

    async def on_agent_start(self, context: RunContextWrapper[Any], agent: Agent[Any]) -> None:
        task_id = self.tasks[agent.name] = new_id()
        name = _agent(agent)
        await self._publish(
            ev.TaskCreated(
                task_id=task_id,
                title=self.title.format(agent=agent.name),
                assignee=name,
                **stamp(self.client, name),
            ),
            ev.TaskStarted(task_id=task_id, **stamp(self.client, name)),
        )

    async def on_agent_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], output: Any
    ) -> None:
        task_id = self.tasks.pop(agent.name, None)
        if task_id is not None:
            await self._publish(
                ev.TaskCompleted(
                    task_id=task_id, output=jsonable(output), **stamp(self.client, _agent(agent))
                )
            )

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        self._tool_started[_call_id(context, tool)] = time.monotonic()

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        started = self._tool_started.pop(_call_id(context, tool), None)
        arguments = context.tool_arguments if isinstance(context, ToolContext) else None
        await self._publish(
            ev.ToolUsed(
                tool=tool.name[:128],
                args=_arguments(arguments),
                result=jsonable(result),
                duration_ms=None if started is None else round((time.monotonic() - started) * 1000),
                ok=True,
                task_id=self.tasks.get(agent.name),
                **stamp(self.client, _agent(agent)),
            )
        )

    async def failed(self, agent: Agent[Any], error: BaseException | str) -> None:
        """Record that ``agent``'s current run failed (``task.failed``)."""
        task_id = self.tasks.pop(agent.name, None)
        if task_id is not None:
            await self._publish(
                ev.TaskFailed(
                    task_id=task_id,
                    error=str(error) or type(error).__name__,
                    **stamp(self.client, _agent(agent)),
                )
            )

    async def _publish(self, *events: ev.Event) -> None:
        async def send(mem: MemoryClient) -> None:
            await mem.publish_many(events)

        await self.client.arun(send)


def _agent(agent: Agent[Any]) -> str:
    return agent.name[:128] or "agent"


def _call_id(context: RunContextWrapper[Any], tool: Tool) -> str:
    if isinstance(context, ToolContext):
        return context.tool_call_id
    return tool.name


def _arguments(arguments: str | None) -> Any:
    if not arguments:
        return None
    try:
        return msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return arguments

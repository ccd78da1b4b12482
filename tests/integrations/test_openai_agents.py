"""MemstreamSession and MemstreamHooks with the OpenAI Agents SDK's own Runner, driven by
a scripted model (no network)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from agents import Agent, ModelSettings, Runner, function_tool, set_tracing_disabled
from agents.items import ModelResponse, TResponseInputItem
from agents.memory import Session
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from memstream import SyncMemoryClient
from memstream.integrations.openai_agents import MemstreamHooks, MemstreamSession
from tests.waiting import wait_for

# Traces go to OpenAI, which these tests never reach.
set_tracing_disabled(True)


class ScriptedModel(Model):
    """Answers each call with the next of ``script``: a text, or a tool call (name, args)."""

    def __init__(self, script: list[str | tuple[str, str]]) -> None:
        self.script = list(script)
        self.inputs: list[Any] = []

    async def get_response(self, system_instructions: Any, input: Any, *args: Any,
                           **kwargs: Any) -> ModelResponse:  # fmt: skip
        self.inputs.append(input)
        step = self.script.pop(0)
        if isinstance(step, tuple):
            name, arguments = step
            output: Any = ResponseFunctionToolCall(
                id=f"fc-{len(self.script)}", call_id=f"call-{len(self.script)}", name=name,
                arguments=arguments, type="function_call", status="completed",
            )  # fmt: skip
        else:
            output = ResponseOutputMessage(
                id=f"msg-{len(self.script)}", role="assistant", status="completed",
                type="message",
                content=[ResponseOutputText(text=step, type="output_text", annotations=[])],
            )  # fmt: skip
        return ModelResponse(output=[output], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the tests run without streaming")


def session(mem: SyncMemoryClient, session_id: str = "s1") -> MemstreamSession:
    return MemstreamSession(session_id, mem)


def test_it_is_a_session_of_the_sdk(mem: SyncMemoryClient) -> None:
    """The SDK's runtime-checkable Session protocol accepts it."""
    assert isinstance(session(mem), Session)


async def test_items_round_trip_as_the_sdks_own_dicts(mem: SyncMemoryClient) -> None:
    """get_items returns exactly the dicts added, in order; limit gives the latest."""
    items: list[TResponseInputItem] = [
        {"role": "user", "content": "What is the capital of France? — ünïcode"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "Paris"},
        {
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Paris", "annotations": []}],
        },
    ]
    s = session(mem)
    await s.add_items(items[:2])
    await s.add_items(items[2:])
    assert items == await s.get_items()
    assert items[-2:] == await s.get_items(limit=2)
    turns = await asyncio.to_thread(mem.conversation, "s1")
    assert ["user", "function_call", "function_call_output", "assistant"] == [
        t.role for t in turns.turns
    ]


async def test_pop_and_clear_hide_items_and_the_log_keeps_them(mem: SyncMemoryClient) -> None:
    """pop_item removes the latest; clear_session removes all; no read shows them, and
    the log keeps them."""
    s = session(mem)
    await s.add_items([{"role": "user", "content": f"m{n}"} for n in range(3)])
    assert {"role": "user", "content": "m2"} == await s.pop_item()
    assert [{"role": "user", "content": "m0"}, {"role": "user", "content": "m1"}] == (
        await s.get_items()
    )
    await s.clear_session()
    assert [] == await s.get_items()
    assert await s.pop_item() is None
    await s.add_items([{"role": "user", "content": "after"}])
    assert [{"role": "user", "content": "after"}] == await s.get_items()
    shown = await asyncio.to_thread(mem.conversation, "s1", last_n=10)
    assert ["after"] == [json.loads(t.content)["content"] for t in shown.turns]
    log = await asyncio.to_thread(
        mem.history, types=["conversation.turn", "conversation.turns_removed"]
    )
    assert ["m0", "m1", "m2", "removed", "removed", "after"] == [
        json.loads(e["content"])["content"] if e["type"] == "conversation.turn" else "removed"
        for e in log.events
    ]


async def test_sessions_are_isolated_and_run_side_by_side(mem: SyncMemoryClient) -> None:
    """Eight sessions written at once each read only their own items."""

    async def talk(n: int) -> list[TResponseInputItem]:
        s = session(mem, f"agent-{n}")
        for turn in range(5):
            await s.add_items([{"role": "user", "content": f"{n}:{turn}"}])
        return await s.get_items()

    read = await asyncio.gather(*(talk(n) for n in range(8)))
    for n, items in enumerate(read):
        assert [{"role": "user", "content": f"{n}:{t}"} for t in range(5)] == items


async def test_a_runner_keeps_its_conversation_in_the_session(mem: SyncMemoryClient) -> None:
    """Two runs with the session: the second run's model sees the first run's turns, and
    the hooks record the runs as tasks and the tool call as tool.used."""

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    model = ScriptedModel([("weather", '{"city": "Paris"}'), "It is sunny.", "You asked twice."])
    agent = Agent(name="forecaster", instructions="Be brief.", model=model, tools=[weather],
                  model_settings=ModelSettings())  # fmt: skip
    s = session(mem, "chat")
    hooks = MemstreamHooks(mem)
    first = await Runner.run(agent, "Weather in Paris?", session=s, hooks=hooks)
    assert "It is sunny." == first.final_output
    second = await Runner.run(agent, "And again?", session=s, hooks=hooks)
    assert "You asked twice." == second.final_output
    seen = model.inputs[-1]
    assert "Weather in Paris?" == seen[0]["content"]
    assert any(i.get("type") == "function_call_output" for i in seen)
    items = await s.get_items()
    assert "And again?" == items[-2]["content"]
    assert 6 == len(items)  # question, call, output, answer; question, answer

    def recorded() -> list[dict[str, Any]]:
        return mem.history(agent="forecaster", types=["task.completed", "tool.used"]).events

    await wait_for(lambda: len(recorded()) == 3, timeout=15)
    events = recorded()
    assert ["tool.used", "task.completed", "task.completed"] == [e["type"] for e in events]
    tool = events[0]
    assert ("weather", {"city": "Paris"}, "sunny in Paris") == (
        tool["tool"],
        tool["args"],
        tool["result"],
    )
    task = mem.task(tool["task_id"])
    assert "completed" == task.task["status"]
    assert "It is sunny." == task.output

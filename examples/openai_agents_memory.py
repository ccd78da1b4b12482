"""An OpenAI Agents SDK agent with memory from memstream, two ways.

1. ``MemstreamSession``: the agent's conversation is kept in memstream, so a second run
   (in this process or any other) continues where the first stopped, and
   ``MemstreamHooks`` record the runs as tasks and the tool calls as ``tool.used``.
2. ``memstream mcp``: the same agent is given memstream's tools (remember, search_memory,
   recall, ...) through the Model Context Protocol, and decides itself what to keep.

With ``OPENAI_API_KEY`` set it uses OpenAI's model; without it a scripted model stands in,
so the example runs offline.

    make up                                  # in one terminal
    .venv/bin/python examples/openai_agents_memory.py
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from agents import Agent, Runner, set_tracing_disabled
from agents.items import ModelResponse
from agents.mcp import MCPServerStdio
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from memstream import SyncMemoryClient
from memstream.integrations.openai_agents import MemstreamHooks, MemstreamSession

TENANT = os.environ.get("MEMSTREAM_TENANT", "demo")


class ScriptedModel(Model):
    """Stands in for an LLM without a key: each call answers with the next step, a text
    or a tool call ``(name, arguments)``."""

    def __init__(self, *steps: str | tuple[str, dict[str, Any]]) -> None:
        self.steps = list(steps)

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        step = self.steps.pop(0)
        if isinstance(step, tuple):
            out: Any = ResponseFunctionToolCall(
                type="function_call", call_id=f"call-{len(self.steps)}", name=step[0],
                arguments=json.dumps(step[1]),
            )  # fmt: skip
        else:
            text = ResponseOutputText(type="output_text", text=step, annotations=[])
            out = ResponseOutputMessage(
                id="msg", type="message", role="assistant", status="completed", content=[text]
            )
        return ModelResponse(output=[out], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("this example does not stream")


def model(*steps: str | tuple[str, dict[str, Any]]) -> Any:
    if os.environ.get("OPENAI_API_KEY"):
        return None  # the SDK's default model
    set_tracing_disabled(True)  # traces go to OpenAI, which needs the key too
    return ScriptedModel(*steps)


async def with_a_session(mem: SyncMemoryClient) -> None:
    session = MemstreamSession("support-42", mem)
    await session.clear_session()  # a fresh conversation each time the example runs
    hooks = MemstreamHooks(mem)
    agent = Agent(
        name="support",
        instructions="You help with deployments. Be brief.",
        model=model("Noted: deploys freeze on Fridays.", "You said deploys freeze on Fridays."),
    )
    await Runner.run(agent, "Remember: deploys freeze on Fridays.", session=session, hooks=hooks)
    second = await Runner.run(agent, "When do deploys freeze?", session=session, hooks=hooks)
    print(f"session: {second.final_output}")
    print(f"session: memstream keeps {len(await session.get_items())} items of support-42")


async def through_mcp() -> None:
    command = [sys.executable, "-m", "memstream", "mcp", "--tenant", TENANT, "--agent", "mcp-agent"]
    async with MCPServerStdio(
        params={"command": command[0], "args": command[1:], "env": dict(os.environ)},
        name="memstream",
        client_session_timeout_seconds=30,
    ) as server:
        agent = Agent(
            name="mcp-agent",
            instructions="Keep what the team learns with remember; look it up with search_memory.",
            mcp_servers=[server],
            model=model(
                ("remember", {"content": "the staging cluster is reset nightly", "domain": "ops"}),
                "Remembered.",
                ("search_memory", {"query": "when is staging reset"}),
                "Staging is reset nightly.",
            ),
        )
        await Runner.run(agent, "The staging cluster is reset nightly: keep that.")
        answer = await Runner.run(agent, "When is staging reset?")
        found = [i.output for i in answer.new_items if i.type == "tool_call_output_item"]
        print(f"mcp: {answer.final_output}")
        print(f"mcp: search_memory found {json.loads(found[0]['text'])['hits'][0]['text']!r}")


async def main() -> None:
    with SyncMemoryClient.connect(tenant=TENANT, agent="support") as mem:
        await with_a_session(mem)
    await through_mcp()


if __name__ == "__main__":
    asyncio.run(main())

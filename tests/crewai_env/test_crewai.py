"""MemstreamStorage under CrewAI's own unified Memory (crewai 1.15).

This suite runs in an environment of its own, with `memstream[crewai]` and no server
extra (crewai 1.15 needs mcp < 2; the server extra needs mcp >= 2.3):
tests/integrations/test_crewai.py builds that environment, starts a memstream, and runs
this file there with MEMSTREAM_NATS_URL pointing at it."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from crewai import Agent, Crew, Memory, Task
from crewai.llms.base_llm import BaseLLM
from crewai.memory.storage.backend import StorageBackend
from crewai.memory.types import MemoryRecord
from crewai.tools import tool

from memstream import SyncMemoryClient
from memstream.integrations.crewai import (
    MemstreamCrewListener,
    MemstreamStorage,
    memstream_embedder,
    word_vector,
)


@pytest.fixture
def mem() -> Iterator[SyncMemoryClient]:
    """A client on a tenant of the test's own (the URL from MEMSTREAM_NATS_URL)."""
    with SyncMemoryClient.connect(tenant=f"t-{uuid.uuid4().hex[:12]}", agent="crew") as client:
        yield client


@pytest.fixture
def storage(mem: SyncMemoryClient) -> MemstreamStorage:
    return MemstreamStorage(mem)


@pytest.fixture
def memory(storage: MemstreamStorage) -> Iterator[Memory]:
    """CrewAI's Memory on memstream; every remember() names its fields, so no LLM is asked."""
    memory = Memory(storage=storage, embedder=memstream_embedder(), llm="gpt-4o-mini")
    yield memory
    memory.close()


def remember(memory: Memory, content: str, scope: str, *categories: str, **metadata: str) -> None:
    memory.remember(content, scope=scope, categories=list(categories), importance=0.5,
                    metadata=dict(metadata))  # fmt: skip
    memory.drain_writes()


def test_it_is_a_storage_backend(storage: MemstreamStorage) -> None:
    """CrewAI's runtime-checkable protocol accepts it."""
    assert isinstance(storage, StorageBackend)


def test_what_a_crew_remembers_it_recalls(memory: Memory) -> None:
    """remember() stores through the backend; recall() finds it by its words, best first."""
    remember(memory, "the staging database is reset every night", "/ops/db", "ops", team="infra")
    remember(memory, "lunch is on thursdays", "/social", "social")
    matches = memory.recall("when is the staging database reset", depth="shallow", limit=2)
    assert "the staging database is reset every night" == matches[0].record.content
    assert ["ops"] == matches[0].record.categories
    assert {"team": "infra"} == matches[0].record.metadata
    assert "/ops/db" == matches[0].record.scope
    in_scope = memory.recall("database", scope="/social", depth="shallow")
    assert ["lunch is on thursdays"] == [m.record.content for m in in_scope]


def test_records_round_trip_and_are_revised_by_id(storage: MemstreamStorage) -> None:
    """get_record returns the record saved; update replaces it; delete by id forgets it."""
    record = MemoryRecord(
        content="deploys freeze on fridays", scope="/ops", categories=["rules"],
        metadata={"owner": "sre"}, importance=0.9, source="u1", private=True,
    )  # fmt: skip
    storage.save([record])
    assert record.model_dump(exclude={"embedding"}) == storage.get_record(record.id).model_dump(
        exclude={"embedding"}
    )  # type: ignore[union-attr]
    storage.update(record.model_copy(update={"content": "deploys freeze on thursdays"}))
    got = storage.get_record(record.id)
    assert got is not None and "deploys freeze on thursdays" == got.content
    assert 1 == storage.delete(record_ids=[record.id])
    assert storage.get_record(record.id) is None
    assert storage.get_record("no-such-record") is None


def test_scopes_categories_and_counts(storage: MemstreamStorage) -> None:
    """Scope prefixes, child scopes, category counts and counts, as CrewAI reads them."""
    storage.save([
        MemoryRecord(content="a", scope="/co/eng/api", categories=["x"]),
        MemoryRecord(content="b", scope="/co/eng/web", categories=["x", "y"]),
        MemoryRecord(content="c", scope="/co/sales", categories=["y"]),
        MemoryRecord(content="d", scope="/other"),
    ])  # fmt: skip
    assert 4 == storage.count()
    assert 3 == storage.count("/co")
    assert ["/co", "/other"] == storage.list_scopes("/")
    assert ["/co/eng", "/co/sales"] == storage.list_scopes("/co")
    info = storage.get_scope_info("/co/eng")
    assert (2, ["x", "y"], ["/co/eng/api", "/co/eng/web"]) == (
        info.record_count,
        info.categories,
        info.child_scopes,
    )
    assert {"x": 2, "y": 2} == storage.list_categories("/co")
    assert ["d", "c", "b", "a"] == [r.content for r in storage.list_records()]  # newest first
    assert 2 == len(storage.list_records("/co", limit=2))
    assert 1 == len(storage.list_records("/co", limit=2, offset=2))


def test_delete_by_each_criterion(storage: MemstreamStorage) -> None:
    """delete by scope, category, metadata and age forgets exactly what matches."""
    old = dt.datetime(2020, 1, 1)
    storage.save([
        MemoryRecord(content="old note", scope="/n", created_at=old),
        MemoryRecord(content="tagged", scope="/n", categories=["tmp"]),
        MemoryRecord(content="owned", scope="/n", metadata={"owner": "bob"}),
        MemoryRecord(content="kept", scope="/n"),
        MemoryRecord(content="elsewhere", scope="/m"),
    ])  # fmt: skip
    assert 1 == storage.delete(older_than=dt.datetime(2021, 1, 1))
    assert 1 == storage.delete(categories=["tmp"])
    assert 1 == storage.delete(metadata_filter={"owner": "bob"})
    assert ["kept"] == [r.content for r in storage.list_records("/n")]
    storage.reset("/m")
    assert 1 == storage.count()
    storage.reset()
    assert 0 == storage.count()


def test_forget_and_reset_through_crewais_memory(memory: Memory, storage: MemstreamStorage) -> None:
    """Memory.forget and Memory.reset reach the backend; the log keeps what was forgotten."""
    remember(memory, "a passing thought", "/tmp")
    remember(memory, "a lasting lesson", "/keep")
    assert 1 == memory.forget(scope="/tmp")
    assert ["a lasting lesson"] == [r.content for r in storage.list_records()]
    memory.reset()
    assert 0 == storage.count()


def test_a_vector_from_another_embedder_is_refused_with_the_fix(storage: MemstreamStorage) -> None:
    """The backend searches by text; a foreign vector gets an error naming the embedder."""
    with pytest.raises(ValueError, match="memstream_embedder"):
        storage.search([0.5] * 8)
    assert 1.0 == pytest.approx(sum(x * x for x in word_vector("some words")))


async def test_the_async_methods(storage: MemstreamStorage) -> None:
    """asave, asearch and adelete, from the caller's event loop."""
    record = MemoryRecord(content="async saved words", scope="/a")
    await storage.asave([record])
    vector = memstream_embedder()["config"]["embedding_callable"]()(["async words"])[0]
    found = await storage.asearch(vector, scope_prefix="/a")
    assert [record.id] == [r.id for r, _ in found]
    assert 1 == await storage.adelete(scope_prefix="/a")


class ScriptedLLM(BaseLLM):
    """Stands in for a model: each call answers with the next of ``steps`` (ReAct text)."""

    def __init__(self, steps: list[str]) -> None:
        super().__init__(model="scripted")
        self._steps = list(steps)

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        return self._steps.pop(0)

    def supports_function_calling(self) -> bool:
        return False


@tool("lookup")
def lookup(city: str) -> str:
    """Look up the weather of a city."""
    return f"sunny in {city}"


def test_the_listener_records_a_crews_task_and_tool_call(mem: SyncMemoryClient) -> None:
    """A real kickoff: the task's lifecycle and the tool call, under the agent's role."""
    MemstreamCrewListener(mem)
    llm = ScriptedLLM([
        'Thought: look it up\nAction: lookup\nAction Input: {"city": "Paris"}',
        "Thought: I know\nFinal Answer: It is sunny in Paris.",
    ])  # fmt: skip
    agent = Agent(role="forecaster", goal="tell the weather", backstory="a meteorologist",
                  llm=llm, tools=[lookup])  # fmt: skip
    task = Task(description="What is the weather in Paris?", expected_output="a sentence",
                agent=agent)  # fmt: skip
    assert "It is sunny in Paris." == Crew(agents=[agent], tasks=[task]).kickoff().raw

    deadline = time.monotonic() + 30
    while len(events := mem.history().events) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ["task.created", "task.started", "tool.used", "task.completed"] == [
        e["type"] for e in events
    ]
    assert {"forecaster"} == {e["agent"] for e in events}
    assert {str(task.id)} == {e["task_id"] for e in events}
    tool_used = events[2]
    assert ("lookup", {"city": "Paris"}, "sunny in Paris", True) == (
        tool_used["tool"],
        tool_used["args"],
        tool_used["result"],
        tool_used["ok"],
    )
    assert "It is sunny in Paris." == mem.task(str(task.id)).output

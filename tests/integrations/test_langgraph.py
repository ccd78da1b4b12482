"""MemstreamStore against LangGraph's own package: every BaseStore operation's meaning,
and graphs that share memory through memstream."""

from __future__ import annotations

import datetime as dt
import operator
import subprocess
import sys
import textwrap
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.store.base import BaseStore, GetOp, Item, PutOp, SearchOp

from memstream import SyncMemoryClient
from memstream.integrations.langgraph import (
    MemstreamCallbackHandler,
    MemstreamStore,
    memory_id_of,
)
from memstream.testing import RunningMemstream
from tests.waiting import wait_for_sync


@pytest.fixture
def store(mem: SyncMemoryClient) -> MemstreamStore:
    return MemstreamStore(mem)


def test_a_put_item_is_got_back_with_its_value_and_times(store: MemstreamStore) -> None:
    """get returns the value put, under its namespace and key, with when it was made."""
    store.put(("users", "ada"), "prefs", {"theme": "dark", "langs": ["en", "fr"]})
    item = store.get(("users", "ada"), "prefs")
    assert isinstance(item, Item)
    assert {"theme": "dark", "langs": ["en", "fr"]} == item.value
    assert (("users", "ada"), "prefs") == (item.namespace, item.key)
    assert item.created_at <= item.updated_at
    assert dt.datetime.now(dt.UTC) - item.created_at < dt.timedelta(minutes=1)
    assert store.get(("users", "ada"), "missing") is None
    assert store.get(("users", "bob"), "prefs") is None


def test_a_put_over_a_key_revises_its_memory(store: MemstreamStore, mem: SyncMemoryClient) -> None:
    """The second put replaces the value; the memory is the same one, at revision 2."""
    store.put(("notes",), "n1", {"text": "first"})
    first = store.get(("notes",), "n1")
    store.put(("notes",), "n1", {"text": "second"})
    item = store.get(("notes",), "n1")
    assert item is not None and first is not None
    assert {"text": "second"} == item.value
    assert first.created_at == item.created_at
    memory = mem.get(memory_id_of(("notes",), "n1"))
    assert 2 == memory.revision
    assert '{"text": "second"}' == memory.content  # the whole value, by default


def test_delete_forgets_the_item_and_the_log_keeps_it(
    store: MemstreamStore, mem: SyncMemoryClient
) -> None:
    """After delete, get and search no longer find it; the memory's revisions remain."""
    store.put(("notes",), "gone", {"text": "to be deleted"})
    store.delete(("notes",), "gone")
    assert store.get(("notes",), "gone") is None
    assert [] == store.search(("notes",))
    kinds = [r.type for r in mem.revisions(memory_id_of(("notes",), "gone")).revisions]
    assert ["knowledge.stored", "memory.forgotten"] == kinds
    store.put(("notes",), "gone", {"text": "back again"})
    again = store.get(("notes",), "gone")
    assert again is not None and {"text": "back again"} == again.value


def test_search_by_query_finds_by_text_within_the_prefix(store: MemstreamStore) -> None:
    """A query search ranks by the memory's text, only under the namespace prefix."""
    store.put(("docs", "ops"), "a", {"text": "the gateway times out after 30 s"})
    store.put(("docs", "ops"), "b", {"text": "lunch is served at noon"})
    store.put(("docs", "dev"), "c", {"text": "the gateway is written in Go"})
    store.put(("other",), "d", {"text": "the gateway timeout is in the other namespace"})
    hits = store.search(("docs",), query="gateway timeout", limit=10)
    assert {"a", "c"} <= {h.key for h in hits}
    assert "d" not in {h.key for h in hits}
    assert "a" == hits[0].key
    assert all(h.score is not None for h in hits)
    assert ["a"] == [h.key for h in store.search(("docs", "ops"), query="gateway", limit=1)]


def test_search_by_filter_uses_the_operators(store: MemstreamStore) -> None:
    """LangGraph's filter operators select on the value's fields, nested ones too."""
    for n in range(5):
        store.put(("tasks",), f"k{n}", {"n": n, "state": "open" if n % 2 else "done",
                                         "meta": {"owner": f"o{n}"}})  # fmt: skip

    def keys(**filters: Any) -> set[str]:
        return {i.key for i in store.search(("tasks",), filter=filters["f"], limit=10)}

    assert {"k1", "k3"} == keys(f={"state": "open"})
    assert {"k0", "k2", "k4"} == keys(f={"state": {"$ne": "open"}})
    assert {"k3", "k4"} == keys(f={"n": {"$gt": 2}})
    assert {"k2", "k3", "k4"} == keys(f={"n": {"$gte": 2}})
    assert {"k0"} == keys(f={"n": {"$lt": 1}})
    assert {"k0", "k1"} == keys(f={"n": {"$lte": 1}})
    assert {"k2"} == keys(f={"n": {"$eq": 2}, "state": "done"})
    assert {"k4"} == keys(f={"meta.owner": "o4"})


def test_search_pages_with_limit_and_offset(store: MemstreamStore) -> None:
    """limit and offset page through the matches without repeating one."""
    for n in range(7):
        store.put(("pages",), f"p{n}", {"text": f"page {n}"})
    pages = [store.search(("pages",), limit=3, offset=o) for o in (0, 3, 6)]
    assert [3, 3, 1] == [len(p) for p in pages]
    assert {f"p{n}" for n in range(7)} == {i.key for p in pages for i in p}
    by_query = [store.search(("pages",), query="page", limit=4, offset=o) for o in (0, 4)]
    assert {f"p{n}" for n in range(7)} == {i.key for p in by_query for i in p}


def test_list_namespaces_with_prefix_suffix_and_depth(store: MemstreamStore) -> None:
    """The example of LangGraph's own docstring, and suffix and wildcard matching."""
    for ns in [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"),
               ("a", "c", "f")]:  # fmt: skip
        store.put(ns, "k", {"x": 1})
    assert [("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")] == store.list_namespaces(
        prefix=("a", "b"), max_depth=3
    )
    assert [("a", "b", "f"), ("a", "c", "f")] == store.list_namespaces(suffix=("f",))
    assert [("a", "b", "d", "e"), ("a", "b", "d", "i")] == store.list_namespaces(
        prefix=("a", "*", "d")
    )
    assert 5 == len(store.list_namespaces())
    assert [("a", "b", "d", "i")] == store.list_namespaces(limit=1, offset=2)


def test_batch_runs_in_order_and_reads_see_earlier_writes(store: MemstreamStore) -> None:
    """One batch of puts, gets and a search: each read sees the puts before it."""
    results = store.batch([
        PutOp(("b",), "x", {"text": "one"}),
        GetOp(("b",), "x"),
        PutOp(("b",), "x", {"text": "two"}),
        GetOp(("b",), "x"),
        SearchOp(("b",), limit=5),
        PutOp(("b",), "x", None),
        GetOp(("b",), "x"),
    ])  # fmt: skip
    assert isinstance(results[1], Item) and {"text": "one"} == results[1].value
    assert isinstance(results[3], Item) and {"text": "two"} == results[3].value
    assert ["x"] == [i.key for i in results[4]]  # type: ignore[union-attr]
    assert results[6] is None


async def test_the_async_methods_from_another_event_loop(store: MemstreamStore) -> None:
    """aput, aget, asearch, adelete and alist_namespaces work from the caller's loop."""
    await store.aput(("async",), "k", {"text": "asynchronous note"})
    item = await store.aget(("async",), "k")
    assert item is not None and {"text": "asynchronous note"} == item.value
    assert ["k"] == [i.key for i in await store.asearch(("async",), query="note")]
    assert [("async",)] == await store.alist_namespaces()
    await store.adelete(("async",), "k")
    assert await store.aget(("async",), "k") is None


def test_index_names_what_is_embedded(store: MemstreamStore, mem: SyncMemoryClient) -> None:
    """The memory's text is the indexed fields; index=False embeds the key, never the value."""
    store.put(("i",), "fields", {"title": "Gateway", "body": "times out", "secret": "s3"},
              index=["title", "body"])  # fmt: skip
    store.put(("i",), "hidden", {"text": "private words never embedded"}, index=False)
    assert (
        "Gateway\ntimes out"
        == mem.get(memory_id_of(("i",), "fields"), consistency="latest").content
    )
    assert "hidden" == mem.get(memory_id_of(("i",), "hidden"), consistency="latest").content
    hits = store.search(("i",), query="private words never embedded", limit=5)
    assert "hidden" not in {h.key for h in hits if h.score and h.score > 0.5}
    item = store.get(("i",), "hidden")
    assert item is not None and "private words never embedded" == item.value["text"]


def test_a_store_default_index_embeds_its_fields(mem: SyncMemoryClient) -> None:
    """index={"fields": [...]} on the store is the default of every put."""
    store = MemstreamStore(mem, index={"fields": ["summary"]})
    store.put(("s",), "k", {"summary": "short", "details": "long text"})
    assert "short" == mem.get(memory_id_of(("s",), "k"), consistency="latest").content


def test_ttl_expires_an_item_and_a_read_refreshes_it(mem: SyncMemoryClient) -> None:
    """An item put with a TTL is gone once it passes; refresh_on_read restarts it."""
    store = MemstreamStore(mem, ttl={"refresh_on_read": True})
    store.put(("ttl",), "short", {"text": "expires"}, ttl=2 / 60)  # two seconds
    store.put(("ttl",), "kept", {"text": "refreshed"}, ttl=3 / 60)
    memory_id = memory_id_of(("ttl",), "kept")
    before = mem.get(memory_id, consistency="latest").expires_at
    assert store.get(("ttl",), "kept") is not None
    after = mem.get(memory_id, consistency="latest").expires_at
    assert before is not None and after is not None and after > before
    wait_for_sync(lambda: store.get(("ttl",), "short", refresh_ttl=False) is None, timeout=15)
    assert [] == store.search(("ttl",), filter={"text": "expires"})
    no_refresh = MemstreamStore(mem, ttl={"refresh_on_read": False})
    no_refresh.get(("ttl",), "kept")
    assert after == mem.get(memory_id, consistency="latest").expires_at


def test_scopes_come_from_named_namespace_positions(mem: SyncMemoryClient) -> None:
    """scopes={"user_id": 1} sets each memory's user_id from the namespace's second label."""
    store = MemstreamStore(mem, scopes={"user_id": 1, "project": 2})
    store.put(("memories", "ada", "apollo"), "k", {"text": "moon"})
    memory = mem.get(memory_id_of(("memories", "ada", "apollo"), "k"), consistency="latest")
    assert ("ada", "apollo") == (memory.user_id, memory.project)
    with pytest.raises(ValueError, match="tenant"):
        MemstreamStore(mem, scopes={"tenant": 0})


class Notes(TypedDict):
    topic: str
    found: Annotated[list[str], operator.add]


def test_two_nodes_of_a_graph_share_memory(store: MemstreamStore) -> None:
    """One node's put is found by the next node's search, through the graph's store."""

    def research(state: Notes, *, store: BaseStore) -> dict[str, Any]:
        store.put(("research",), "fact-1", {"text": f"{state['topic']} uses port 4222"})
        return {"found": []}

    def write(state: Notes, *, store: BaseStore) -> dict[str, Any]:
        hits = store.search(("research",), query=state["topic"], limit=3)
        return {"found": [h.value["text"] for h in hits]}

    builder = StateGraph(Notes)
    builder.add_node("research", research)
    builder.add_node("write", write)
    builder.add_edge(START, "research")
    builder.add_edge("research", "write")
    builder.add_edge("write", END)
    graph = builder.compile(store=store)
    assert ["NATS uses port 4222"] == graph.invoke({"topic": "NATS", "found": []})["found"]


def test_graphs_in_two_processes_share_memory(
    memstream_server: RunningMemstream, store: MemstreamStore, tenant: str
) -> None:
    """What a graph in another process puts, a graph here finds."""
    other = textwrap.dedent(f"""
        from memstream import SyncMemoryClient
        from memstream.integrations.langgraph import MemstreamStore
        with SyncMemoryClient.connect({memstream_server.url!r}, tenant={tenant!r},
                                      agent="other") as mem:
            MemstreamStore(mem).put(("shared",), "plan", {{"text": "ship on friday"}})
    """)
    subprocess.run([sys.executable, "-c", other], check=True, timeout=60)
    found: list[Any] = []
    wait_for_sync(lambda: bool(found.extend(store.search(("shared",), query="ship")) or found))
    assert {"text": "ship on friday"} == found[0].value


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


@tool
def lookup(city: str) -> str:
    """The weather of a city."""
    if city == "Atlantis":
        raise ValueError("no such city")
    return f"sunny in {city}"


def graph_with_a_tool(city: str) -> Any:
    """A planner node that asks for the tool (as a model would), then LangGraph's ToolNode."""

    def planner(state: Chat) -> dict[str, Any]:
        call = {"name": "lookup", "args": {"city": city}, "id": "call-1", "type": "tool_call"}
        return {"messages": [AIMessage(content="", tool_calls=[call])]}

    builder = StateGraph(Chat)
    builder.add_node("planner", planner)
    builder.add_node("tools", ToolNode([lookup], handle_tool_errors=False))
    builder.add_edge(START, "planner")
    builder.add_edge("planner", "tools")
    builder.add_edge("tools", END)
    return builder.compile()


def recorded(mem: SyncMemoryClient, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    def enough() -> bool:
        events[:] = mem.history().events
        return len(events) >= count

    wait_for_sync(enough, timeout=15)
    return events


def test_the_callback_handler_records_the_run_and_its_tool_call(mem: SyncMemoryClient) -> None:
    """An invocation is a task; the tool call is tool.used under the node's name."""
    handler = MemstreamCallbackHandler(mem, agent="weather-graph")
    state = graph_with_a_tool("Paris").invoke(
        {"messages": [HumanMessage("weather?")]}, {"callbacks": [handler]}
    )
    assert "sunny in Paris" == state["messages"][-1].content
    events = recorded(mem, 4)
    assert ["task.created", "task.started", "tool.used", "task.completed"] == [
        e["type"] for e in events
    ]
    tool_used = events[2]
    assert ("lookup", {"city": "Paris"}, "sunny in Paris", True, "tools") == (
        tool_used["tool"], tool_used["args"], tool_used["result"], tool_used["ok"],
        tool_used["agent"],
    )  # fmt: skip
    assert {events[0]["task_id"]} == {e["task_id"] for e in events}
    assert "weather-graph" == events[0]["agent"]


def test_a_failing_tool_and_run_are_recorded_as_failures(mem: SyncMemoryClient) -> None:
    """A tool that raises is tool.used with ok false; the invocation is task.failed."""
    handler = MemstreamCallbackHandler(mem)
    with pytest.raises(ValueError, match="no such city"):
        graph_with_a_tool("Atlantis").invoke(
            {"messages": [HumanMessage("weather?")]}, {"callbacks": [handler]}
        )
    events = recorded(mem, 4)
    assert ["task.created", "task.started", "tool.used", "task.failed"] == [
        e["type"] for e in events
    ]
    assert (False, "no such city") == (events[2]["ok"], events[2]["result"])
    assert "no such city" in events[3]["error"]

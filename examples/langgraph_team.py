"""Two LangGraph agents, a researcher and a writer, sharing memory through memstream.

The researcher's graph stores what it finds with ``store.put``; the writer's graph, a
different agent with a client of its own (it could run in another process, or on another
machine), finds those notes with ``store.search`` and drafts from them. No model is
needed: the nodes are plain functions, so the example shows the memory, not an LLM.

    make up                                  # in one terminal
    .venv/bin/python examples/langgraph_team.py
"""

from __future__ import annotations

import os
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore

from memstream import SyncMemoryClient
from memstream.integrations.langgraph import MemstreamStore

TENANT = os.environ.get("MEMSTREAM_TENANT", "demo")
FINDINGS = [
    "NATS JetStream keeps every event in a stream, so any view can be rebuilt by replay",
    "DuckDB answers SQL over the whole history without a server",
    "Qdrant ranks memories by meaning; hybrid search adds the words",
]


class Topic(TypedDict):
    topic: str
    draft: str


def research(state: Topic, *, store: BaseStore) -> dict[str, Any]:
    """Store each finding under the topic's namespace."""
    for n, finding in enumerate(FINDINGS):
        store.put(("research", state["topic"]), f"finding-{n}", {"text": finding})
    return {}


def write(state: Topic, *, store: BaseStore) -> dict[str, Any]:
    """Draft from what the researcher found that bears on the question."""
    notes = store.search(("research", state["topic"]), query="rebuild history by replay", limit=2)
    return {"draft": " / ".join(note.value["text"] for note in notes)}


def graph(node: Any, store: MemstreamStore) -> Any:
    builder = StateGraph(Topic)
    builder.add_node(node.__name__, node)
    builder.add_edge(START, node.__name__)
    builder.add_edge(node.__name__, END)
    return builder.compile(store=store)


def main() -> None:
    with SyncMemoryClient.connect(tenant=TENANT, agent="researcher") as researcher:
        findings = MemstreamStore(researcher)
        graph(research, findings).invoke({"topic": "memstream", "draft": ""})
        print(f"researcher stored {len(FINDINGS)} findings")
    with SyncMemoryClient.connect(tenant=TENANT, agent="writer") as writer:
        store = MemstreamStore(writer)
        # The writer reads at least as far as the researcher wrote (without it, another
        # agent's writes are read once memstream has applied them, a moment later).
        store.reads_after(findings.last_seq)
        result = graph(write, store).invoke({"topic": "memstream", "draft": ""})
        print(f"writer's draft: {result['draft']}")
        print(f"namespaces: {store.list_namespaces(prefix=('research',))}")


if __name__ == "__main__":
    main()

"""Every query op over NATS, against both projections and the query worker running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
import structlog
from nats.aio.client import Client as NatsClient

from memstream.consumers.app import UpInfo, run_up
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.query_worker import QueryWorker
from memstream.consumers.settings import load_settings
from memstream.producers import MemoryClient, PublishAck
from memstream.schemas import events as ev
from memstream.schemas.errors import QueryError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass
class Stack:
    nc: NatsClient
    info: UpInfo

    def client(self, tenant: str = "acme", agent: str = "planner") -> MemoryClient:
        return MemoryClient(self.nc, tenant=tenant, agent=agent)

    async def ask(self, subject: str, body: bytes) -> dict[str, Any]:
        # As the SDK does: "no responders" for a moment, from a server that answered this
        # connection's earlier requests through workers now gone, is asked again.
        for delay in (0.05, 0.1, 0.2, 0.4, 0):
            try:
                msg = await self.nc.request(subject, body, timeout=10)
                break
            except nats.errors.NoRespondersError:
                if not delay:
                    raise
                await asyncio.sleep(delay)
        reply: dict[str, Any] = msgspec.json.decode(msg.data)
        return reply


@contextlib.asynccontextmanager
async def running(
    nats_server: NatsServer, data_dir: Path, partition: int | None = None, **env: str
) -> AsyncIterator[UpInfo]:
    """memstream's whole stack (both projections, the query worker) on the test server;
    of one ``partition`` (of MEMSTREAM_PARTITIONS in ``env``) when given."""
    settings = load_settings(
        {"MEMSTREAM_EMBEDDER": "hash", "MEMSTREAM_BATCH_WAIT_MS": "20", **env},
        nats_url=nats_server.url,
        data_dir=str(data_dir),
    )
    stop = asyncio.Event()
    ready: asyncio.Future[UpInfo] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_up(
            settings,
            external_nats=True,
            stop=stop,
            on_ready=ready.set_result,
            partition=partition,
        )
    )
    done, _ = await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises what stopped it
    try:
        yield ready.result()
    finally:
        stop.set()
        await task


@pytest.fixture
async def stack(nc: NatsClient, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running(nats_server, tmp_path / "data") as info:
        yield Stack(nc, info)


async def write_session(mem: MemoryClient) -> dict[str, PublishAck]:
    """A small multi-agent session: every kind of event the queries read."""
    acks = {
        "knowledge": await mem.store_knowledge(
            "asyncio.gather runs awaitables concurrently and returns results in order",
            domain="python",
            tags=["asyncio"],
            memory_id="k-gather",
        ),
        "solution": await mem.store_solution(
            "tests flaky because they sleep a fixed time",
            "wait for the condition with a deadline instead of sleeping",
            memory_id="s-flaky",
        ),
        "collab": await mem.record_collaboration(
            "review the retry patch",
            participants=["planner", "reviewer"],
            outcome="approved",
            interaction_id="i1",
        ),
        "message": await mem.send_message(
            "i1", "looks good", recipients=["planner"], sender="reviewer"
        ),
        "created": await mem.task_created("fix the flaky test", task_id="t1", assignee="coder"),
        "started": await mem.task_started("t1"),
        "tool": await mem.record_tool_use("pytest", duration_ms=1200, ok=True, task_id="t1"),
        "completed": await mem.task_completed("t1", output={"passed": 42}),
        "context": await mem.set_context("plan", {"step": 2}, ttl_s=3600),
        "turn1": await mem.add_turn("s1", "user", "why is the test flaky?"),
        "turn2": await mem.add_turn("s1", "assistant", "it sleeps instead of waiting"),
        "turn3": await mem.add_turn("s1", "user", "fix it please"),
        "flow": await mem.record_flow_run("ci", "succeeded", duration_ms=5300),
    }
    return acks


async def test_every_op_end_to_end(stack: Stack) -> None:
    """Each op answers from what was just published, read-your-writes by min_seq."""
    mem = stack.client()
    acks = await write_session(mem)
    last = max(a.seq for a in acks.values())

    hits = await mem.search("gather awaitables concurrently", min_seq=last)
    assert "k-gather" == hits[0].memory_id
    assert ("knowledge", "planner", ("asyncio",)) == (hits[0].kind, hits[0].agent, hits[0].tags)
    assert acks["knowledge"].seq == hits[0].seq
    only_solutions = await mem.search("flaky sleep", kinds=["solutions"], top_k=3)
    assert ["s-flaky"] == [h.memory_id for h in only_solutions]
    batch = await mem.search_many(["gather concurrently", "retry patch review"], top_k=1)
    assert [["k-gather"], ["i1"]] == [[h.memory_id for h in hits] for hits in batch]

    page = await mem.history(limit=5, min_seq=last)
    seen = [e["seq"] for e in page.events]
    while page.next_after_seq is not None:
        page = await mem.history(limit=5, after_seq=page.next_after_seq)
        seen += [e["seq"] for e in page.events]
    assert sorted(a.seq for a in acks.values()) == seen
    turns_only = await mem.history(types=["conversation.turn"])
    assert ["turn1", "turn2", "turn3"] == [
        k for k, a in acks.items() if a.seq in {e["seq"] for e in turns_only.events}
    ]
    assert {"s1"} == {e["session_id"] for e in turns_only.events}

    task = await mem.task("t1", min_seq=last)
    assert ("completed", "coder") == (task.task["status"], task.task["assignee"])
    assert {"passed": 42} == task.output
    assert ["task.created", "task.started", "task.completed"] == [t["type"] for t in task.timeline]
    assert [acks[k].id for k in ("created", "started", "tool", "completed")] == [
        e["id"] for e in task.bundle
    ]

    ctx = await mem.context("plan")
    assert ({"step": 2}, acks["context"].seq) == (ctx.data, ctx.seq)
    assert ctx.expires_at is not None and ctx.expires_at > ctx.set_at

    convo = await mem.conversation("s1", last_n=2)
    assert ["it sleeps instead of waiting", "fix it please"] == [t.content for t in convo.turns]

    recall = await mem.recall(
        "flaky test sleeping", session_id="s1", task_id="t1", budget_chars=400
    )
    assert recall.chars == len(recall.text) <= 400
    assert recall.text.startswith("## Task\nfix the flaky test [completed]")
    kinds = {s.kind for s in recall.sources}
    assert {"task", "turn", "solutions"} <= kinds

    stats = await mem.stats(min_seq=last)
    assert 3 == stats.events_by_type["conversation.turn"]
    assert {"planner": len(acks)} == stats.events_by_agent
    assert last <= min(stats.last_applied_seq.values())
    assert {"history", "vectors"} == set(stats.lag)
    assert 0 == stats.dlq_count

    tools = await mem.analytics("tool_usage")
    row = dict(zip(tools.columns, tools.rows[0], strict=True))
    assert ("pytest", 1, 1) == (row["tool"], row["calls"], row["ok"])
    graph = await mem.analytics("collaboration_graph", {"limit": 10})
    assert {("planner", "reviewer"), ("reviewer", "planner")} == {(r[0], r[1]) for r in graph.rows}


async def test_a_tenant_never_reads_another(stack: Stack) -> None:
    """beta asks every op about what acme stored, with the same text: it finds nothing."""
    acks = await write_session(stack.client("acme"))
    beta = stack.client("beta", agent="spy")
    own = await beta.store_knowledge("beta keeps its own notes", domain="notes", memory_id="b1")
    last = max(own.seq, *(a.seq for a in acks.values()))

    hits = await beta.search("gather awaitables concurrently", top_k=50, min_seq=last)
    assert [own.seq] == [h.seq for h in hits]
    history = await beta.history(limit=1000, min_seq=last)
    assert [own.seq] == [e["seq"] for e in history.events]
    for call in (beta.task("t1"), beta.context("plan")):
        with pytest.raises(QueryError) as info:
            await call
        assert "not_found" == info.value.code
    assert [] == (await beta.conversation("s1")).turns
    recall = await beta.recall("flaky test", session_id="s1", task_id="t1")
    assert {("knowledge", "b1")} >= {(s.kind, s.ref) for s in recall.sources}
    assert "flaky" not in recall.text
    stats = await beta.stats()
    assert ({"knowledge.stored": 1}, {"spy": 1}) == (stats.events_by_type, stats.events_by_agent)
    assert [] == (await beta.analytics("tool_usage")).rows


async def test_read_your_writes_and_not_caught_up(stack: Stack) -> None:
    """A search with min_seq=ack.seq always sees the write; an unreachable seq times out."""
    mem = stack.client()
    for i in range(20):
        ack = await mem.store_knowledge(f"fact number {i} about zebra{i}", domain="d")
        hits = await mem.search(f"fact number {i} about zebra{i}", top_k=1, min_seq=ack.seq)
        assert ack.seq == hits[0].seq
        turn = await mem.add_turn("s", "user", f"turn {i}")
        convo = await mem.conversation("s", last_n=1, min_seq=turn.seq)
        assert f"turn {i}" == convo.turns[-1].content
    with pytest.raises(QueryError) as info:
        await mem.search("x", min_seq=ack.seq + 1000, wait_ms=200)
    assert "not_caught_up" == info.value.code
    assert f"min_seq {ack.seq + 1000}" in info.value.message


async def test_a_waiting_query_holds_up_no_other(stack: Stack) -> None:
    """While one request waits for a sequence not yet written, others are answered."""
    mem = stack.client()
    ack = await mem.store_knowledge("first", domain="d")
    waiting = asyncio.create_task(mem.history(min_seq=ack.seq + 1, wait_ms=30_000))
    stats = await mem.stats(min_seq=ack.seq)
    assert not waiting.done()
    assert 1 == stats.events_by_type["knowledge.stored"]
    second = await mem.store_knowledge("second", domain="d")
    page = await waiting
    assert [ack.seq, second.seq] == [e["seq"] for e in page.events]


@pytest.mark.parametrize(
    ("subject", "body", "expected"),
    [
        ("memq.acme.search", b'{"query": "x", "topk": 3}', "unknown field `topk`"),
        ("memq.acme.search", b'{"top_k": 3}', "search takes either query or queries"),
        ("memq.acme.search", b"not json", "search request is not valid JSON"),
        ("memq.acme.history", b'{"limit": 0}', "at `$.limit`"),
        ("memq.acme.nope", b"{}", "unknown query op 'nope'"),
        ("memq.Acme.stats", b"{}", "tenant 'Acme' is not a valid tenant id"),
        ("memq.acme.stats.extra", b"{}", "expected 'memq.<tenant>.<op>'"),
        ("memq.acme.analytics", b'{"name": "tool_usage", "params": {"x": 1}}', "not x"),
        ("memq.acme.analytics", b'{"name": "agent_activity", "sql": "DROP"}', "field `sql`"),
        ("memq.acme.recall", b"{}", "recall needs at least one of"),
        ("memq.acme.history", b'{"types": ["nope.type"]}', "unknown event type 'nope.type'"),
    ],
)
async def test_bad_requests_get_bad_request(
    stack: Stack, subject: str, body: bytes, expected: str
) -> None:
    """Each malformed request is answered bad_request naming the problem; the worker
    goes on answering."""
    reply = await stack.ask(subject, body)
    assert (False, "bad_request") == (reply["ok"], reply["error"]["code"])
    assert expected in reply["error"]["message"]
    assert (await stack.ask("memq.acme.stats", b"{}"))["ok"]


async def test_a_reply_too_large_for_nats_is_refused_clearly(stack: Stack) -> None:
    """A page that would not fit in one NATS message asks for a smaller one instead."""
    mem = stack.client()
    acks = await mem.publish_many(
        [
            mem.new_event(
                ev.KnowledgeStored, memory_id=f"big{i}", content="x" * 300_000, domain="d"
            )
            for i in range(stack.nc.max_payload // 300_000 + 2)
        ]
    )
    with pytest.raises(QueryError) as info:
        # (on a busy machine, applying 1.2 MB of events may take past the default 2 s)
        await mem.history(min_seq=acks[-1].seq, wait_ms=30_000)
    assert "bad_request" == info.value.code
    assert "ask for less" in info.value.message
    assert 2 == len((await mem.history(limit=2)).events)


class _BrokenHistory:
    """A history source whose reads fail the way a corrupt file would."""

    checkpoint = 0

    async def wait_applied(self, seq: int, within: float) -> bool:
        return True

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Any]:
        raise RuntimeError("secret detail: /var/lib/history.duckdb is corrupt")
        yield


async def test_an_internal_failure_is_logged_under_the_id_its_reply_carries(
    nc: NatsClient,
) -> None:
    """An internal error replies `internal` with a correlation id and no detail or stack;
    the log has the detail under the same id."""
    worker = QueryWorker(nc, history=_BrokenHistory(), queue="broken")
    await worker.start()
    try:
        with structlog.testing.capture_logs() as logs:
            reply = msgspec.json.decode(
                (await nc.request("memq.acme.history", b"{}", timeout=5)).data
            )
    finally:
        await worker.stop()
    error = reply["error"]
    assert "internal" == error["code"]
    assert error["correlation_id"] in error["message"]
    assert "secret" not in error["message"] and "Traceback" not in error["message"]
    (logged,) = [e for e in logs if e["event"] == "query_failed"]
    assert (error["correlation_id"], "history") == (logged["correlation_id"], logged["op"])


async def test_a_hit_carries_a_preview_of_a_long_memory(stack: Stack) -> None:
    """A memory longer than 65,536 characters comes back cut, saying so; the history
    holds all of it."""
    mem = stack.client()
    text = "needle " + "x" * 70_000
    ack = await mem.store_knowledge(text, domain="d")
    (hit,) = await mem.search("needle", top_k=1, min_seq=ack.seq)
    assert (65_536, True) == (len(hit.text), hit.text_truncated)
    assert text.startswith(hit.text)
    (event,) = (await mem.history(min_seq=ack.seq)).events
    assert text == event["content"]


async def test_nothing_unrelated_enters_a_recall(stack: Stack) -> None:
    """A query that matches no memory recalls none of them (min_score defaults to 0.15);
    a lower min_score lets the weakest matches in."""
    mem = MemoryClient(stack.nc, tenant="acme", agent="coder")
    last = max(a.seq for a in (await write_session(mem)).values())
    unrelated = await mem.recall("zebra xylophone quasar", min_seq=last)
    assert [] == [s for s in unrelated.sources if s.kind in ("knowledge", "solutions")]
    everything = await mem.recall("zebra xylophone quasar", min_score=-1.0, min_seq=last)
    assert {"knowledge", "solutions"} <= {s.kind for s in everything.sources}


async def test_recall_draws_on_past_tasks_and_other_conversations(stack: Stack) -> None:
    """What was done before enters a recall: a finished task like the query, and a turn
    of another conversation; the task and conversation asked for come once, as such."""
    mem = MemoryClient(stack.nc, tenant="acme", agent="coder")
    await mem.task_created("migrate the billing database to postgres 17", task_id="old")
    await mem.task_completed("old", output={"downtime_s": 42})
    await mem.add_turn(
        "earlier", "user", "the billing database migration needs a maintenance window"
    )
    await mem.task_created("migrate the billing database again", task_id="now")
    ack = await mem.add_turn("current", "user", "how did the last migration go?")
    bundle = await mem.recall(
        "billing database migration", session_id="current", task_id="now", min_seq=ack.seq
    )
    sources = {(s.kind, s.ref) for s in bundle.sources}
    assert ("tasks", "old") in sources
    assert "earlier turn" in bundle.text and "maintenance window" in bundle.text
    assert ("tasks", "now") not in sources  # it is the task part, once
    assert 1 == bundle.text.count("how did the last migration go?")

"""The read API over the wire: get, list, revisions, filters, scopes, expiry,
consistency, and live counts; requests from a plain NATS client and from the SDK."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.nats_server import NatsServer
from memstream.consumers.service import ProjectionService
from memstream.consumers.storage import HistoryStorage
from memstream.producers import MemoryClient
from memstream.schemas.errors import MemoryNotFound, QueryError
from tests.integration.test_query_worker import Stack, running
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def stack(nc: NatsClient, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running(nats_server, tmp_path / "data") as info:
        yield Stack(nc, info)


async def ask(stack: Stack, op: str, **request: Any) -> dict[str, Any]:
    """A request as any NATS client in any language sends it: JSON on memq.acme.<op>."""
    return await stack.ask(f"memq.acme.{op}", msgspec.json.encode(request))


async def test_get_list_and_revisions_from_a_plain_nats_client(stack: Stack) -> None:
    """A memory's life over the wire: stored with a scope, revised, listed with a
    filter, its revisions in order, and not_found once forgotten."""
    mem = MemoryClient(stack.nc, tenant="acme", agent="planner", user_id="u7", project="atlas")
    await mem.store_knowledge(
        "retries need jitter", domain="ops", tags=["retry"], memory_id="k1",
        metadata={"priority": 3, "team": {"name": "sre"}},
    )  # fmt: skip
    await mem.store_solution("deploy hangs", "raise the probe timeout", memory_id="s1",
                             metadata={"priority": 1}, user_id="u8")  # fmt: skip
    ack = await mem.revise("k1", content="retries need jitter and a cap", tags=["retry", "ops"])

    got = await ask(stack, "get", memory_id="k1", min_seq=ack.seq)
    assert got["ok"] is True
    memory = got["result"]
    assert ("knowledge", "k1", "ops") == (memory["kind"], memory["memory_id"], memory["domain"])
    assert "retries need jitter and a cap" == memory["content"]
    assert ["retry", "ops"] == memory["tags"]
    assert (2, ack.seq) == (memory["revision"], memory["seq"])
    assert ("u7", "atlas") == (memory["user_id"], memory["project"])
    assert memory["created_at"] < memory["updated_at"]

    listed = await ask(stack, "list", filter={"metadata.priority": {"$gte": 2}})
    assert ["k1"] == [m["memory_id"] for m in listed["result"]["memories"]]
    listed = await ask(stack, "list", filter={"metadata.team.name": "sre", "user_id": "u7"})
    assert ["k1"] == [m["memory_id"] for m in listed["result"]["memories"]]
    listed = await ask(stack, "list", filter={"user_id": "u8"}, kinds=["solutions"])
    assert ["s1"] == [m["memory_id"] for m in listed["result"]["memories"]]

    history = await ask(stack, "revisions", memory_id="k1")
    revisions = history["result"]["revisions"]
    assert ["knowledge.stored", "memory.revised"] == [r["type"] for r in revisions]
    assert {"content": "retries need jitter and a cap", "tags": ["retry", "ops"]} == {
        k: v for k, v in revisions[1]["fields"].items() if v is not None
    }

    gone = await mem.forget("k1", reason="outdated")
    missing = await ask(stack, "get", memory_id="k1", min_seq=gone.seq)
    assert (False, "not_found") == (missing["ok"], missing["error"]["code"])
    revisions = (await ask(stack, "revisions", memory_id="k1"))["result"]["revisions"]
    assert "memory.forgotten" == revisions[-1]["type"]
    nothing = await ask(stack, "revisions", memory_id="never")
    assert "not_found" == nothing["error"]["code"]


async def test_a_bad_filter_or_cursor_is_a_bad_request_naming_it(stack: Stack) -> None:
    """An unknown field, an unknown operator and a forged cursor each say what is wrong."""
    reply = await ask(stack, "list", filter={"colour": "red"})
    assert "bad_request" == reply["error"]["code"]
    assert "unknown field 'colour'" in reply["error"]["message"]
    reply = await ask(stack, "search", query="x", filter={"tags": {"$regex": "a"}})
    assert "unknown operator '$regex'" in reply["error"]["message"]
    reply = await ask(stack, "list", cursor="not-a-cursor")
    assert "cursor" in reply["error"]["message"]


async def test_list_pages_cover_every_memory_once_while_more_arrive(stack: Stack) -> None:
    """Walking list page by page while new memories are stored returns each memory that
    existed at the start exactly once (keyset paging, not offsets)."""
    mem = stack.client()
    acks = [
        await mem.store_knowledge(f"fact {i}", domain="d", memory_id=f"m{i:03}") for i in range(45)
    ]
    seen: list[str] = []
    cursor = None
    page_no = 0
    while True:
        page = await mem.list_memories(limit=7, cursor=cursor, min_seq=acks[-1].seq)
        seen += [m.memory_id for m in page.memories]
        # Newer memories arrive between the pages (they sort before the cursor).
        await mem.store_knowledge(f"late {page_no}", domain="d", memory_id=f"late{page_no}")
        page_no += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    existing = [f"m{i:03}" for i in range(45)]
    assert sorted(existing) == sorted(s for s in seen if s.startswith("m"))
    assert len(seen) == len(set(seen))


async def test_expired_memories_leave_every_read_at_once(stack: Stack) -> None:
    """A memory with ttl_s=4 is found, then is absent from get, list, search and recall
    once its time has passed; the log still has its event. (Four seconds, not one: on a
    loaded machine the reads before the expiry took over a second.)"""
    mem = stack.client()
    ack = await mem.store_knowledge("the staging password rotates hourly", domain="ops",
                                    memory_id="short", ttl_s=4)  # fmt: skip
    await mem.store_knowledge("the staging password lives in the vault", domain="ops",
                              memory_id="kept")  # fmt: skip
    found = await mem.get("short", min_seq=ack.seq + 1)
    assert found.expires_at is not None
    hits = await mem.search("staging password", mode="keyword", min_seq=ack.seq + 1)
    assert {"short", "kept"} == {h.memory_id for h in hits}
    # Until the expiry has passed, by the clock the reads use.
    await asyncio.sleep(max(0.0, (found.expires_at - dt.datetime.now(dt.UTC)).total_seconds()))
    with pytest.raises(QueryError) as caught:
        await mem.get("short")
    assert "not_found" == caught.value.code
    assert ["kept"] == [m.memory_id for m in (await mem.list_memories()).memories]
    assert ["kept"] == [h.memory_id for h in await mem.search("staging password", mode="keyword")]
    bundle = await mem.recall("staging password", min_score=-1)
    assert "short" not in {s.ref for s in bundle.sources}
    events = (await mem.history(types=["knowledge.stored"])).events
    assert "short" in {e["memory_id"] for e in events}


async def test_expired_memories_are_swept_from_the_table(nc: NatsClient, tmp_path: Path) -> None:
    """The sweep deletes a memory's row once it has expired; the others stay."""
    url = nc.connected_url.geturl()  # type: ignore[union-attr]
    async with await MemoryClient.connect(url, tenant="acme", agent="a1") as mem:
        await mem.store_knowledge("brief", domain="d", memory_id="brief", ttl_s=1)
        await mem.store_solution("p", "s", memory_id="lasting")
    service = ProjectionService(nc, HistoryStorage(tmp_path), max_wait=0.05, sweep_every=0.1)
    await service.start()
    try:

        def ids() -> list[str]:
            rows = service.projection.con.cursor().execute(
                "SELECT memory_id FROM knowledge UNION ALL SELECT memory_id FROM solutions"
            )
            return sorted(i for (i,) in rows.fetchall())

        await wait_for(lambda: "lasting" in ids(), what="both applied")
        await wait_for(lambda: "brief" not in ids(), what="the expired row swept")
        assert ["lasting"] == ids()
    finally:
        await service.stop()


async def test_consistency_latest_reads_what_the_stream_holds(stack: Stack) -> None:
    """Without min_seq, consistency: latest answers only once the projection has what
    the stream held when the request came."""
    mem = stack.client()
    await mem.store_knowledge("just written", domain="d", memory_id="fresh")
    reply = await ask(stack, "get", memory_id="fresh", consistency="latest")
    assert "just written" == reply["result"]["content"]


async def test_stats_count_live_memories_by_kind(stack: Stack) -> None:
    """stats counts memories there are now, not the events that made them."""
    mem = stack.client()
    await mem.store_knowledge("a", domain="d", memory_id="a")
    await mem.store_knowledge("a again", domain="d", memory_id="a")
    await mem.store_solution("p", "s", memory_id="b")
    await mem.store_solution("q", "t", memory_id="c")
    ack = await mem.forget("c")
    stats = await mem.stats(min_seq=ack.seq)
    assert {"knowledge": 1, "solutions": 1, "collaborations": 0} == stats.memories_by_kind
    assert 2 == stats.events_by_type["knowledge.stored"]


async def test_dedupe_stores_the_same_text_as_one_memory(stack: Stack) -> None:
    """dedupe=True derives the id from the text: the same text twice is one memory,
    revised, and another tenant's same text is its own."""
    mem = stack.client()
    first = await mem.store_knowledge("Use  exponential backoff", domain="ops", dedupe=True)
    again = await mem.store_knowledge("use exponential BACKOFF", domain="ops", dedupe=True)
    other = await mem.store_knowledge("use linear backoff", domain="ops", dedupe=True)
    page = await mem.list_memories(min_seq=other.seq)
    assert 2 == len(page.memories)
    [twice] = [m for m in page.memories if m.content == "use exponential BACKOFF"]
    assert 2 == twice.revision
    assert first.seq != again.seq


async def test_filtered_search_over_the_wire(stack: Stack) -> None:
    """search takes the filter language, and hits carry the scope fields."""
    mem = stack.client()
    await mem.store_knowledge("cache warming job", domain="ops", user_id="u1", memory_id="x1",
                              metadata={"env": "prod", "cost": 12.5})  # fmt: skip
    ack = await mem.store_knowledge("cache warming script", domain="ops", user_id="u2",
                                    memory_id="x2", metadata={"env": "dev", "cost": 3})  # fmt: skip
    hits = await mem.search("cache warming", filter={"metadata.cost": {"$gt": 5}},
                            min_seq=ack.seq)  # fmt: skip
    assert [("x1", "u1")] == [(h.memory_id, h.user_id) for h in hits]
    hits = await mem.search("cache warming", filter={"$not": {"user_id": "u1"}})
    assert ["x2"] == [h.memory_id for h in hits]


async def test_links_walk_the_neighbourhood_and_name_missing_ends(stack: Stack) -> None:
    """links returns the memories reached to a depth, with the links between them; a
    link to an id no memory has (yet), or from one forgotten since, is returned with
    that end missing; a link from a memory that is not live is not applied; search can
    return each hit's direct links."""
    mem = stack.client()
    for memory_id, text in (("a", "alpha fact"), ("b", "beta fact"), ("c", "gamma fact"),
                            ("z", "zeta fact")):  # fmt: skip
        await mem.store_knowledge(text, domain="d", memory_id=memory_id)
    await mem.link("a", "b", "refines")
    await mem.link("b", "c", "depends_on")
    await mem.link("c", "ghost", "cites")
    await mem.link("z", "a", "contradicts")
    await mem.forget("z")
    with pytest.raises(MemoryNotFound):
        await mem.link("nobody", "a", "cites", confirm=True)
    last = await mem.link("c", "a", "cites", confirm=True)

    one = await ask(stack, "links", memory_id="a", direction="out", min_seq=last.seq)
    assert [("a", "b", "refines")] == [
        (e["from_id"], e["to_id"], e["relation"]) for e in one["result"]["edges"]
    ]
    deep = await mem.links("a", direction="out", depth=3)
    assert ["a", "b", "c", "ghost"] == [n.memory_id for n in deep.nodes]
    assert [False, False, False, True] == [n.missing for n in deep.nodes]
    assert "gamma fact" == deep.nodes[2].content
    both = await mem.links("a")
    assert {("a", "b"), ("z", "a"), ("c", "a")} == {(e.from_id, e.to_id) for e in both.edges}
    assert ["z"] == [n.memory_id for n in both.nodes if n.missing]
    only = await mem.links("b", relation="depends_on")
    assert [("b", "c")] == [(e.from_id, e.to_id) for e in only.edges]
    capped = await mem.links("a", direction="out", depth=3, limit=2)
    assert (2, True) == (len(capped.edges), capped.truncated)
    nothing = await ask(stack, "links", memory_id="nowhere")
    assert "not_found" == nothing["error"]["code"]

    hits = await mem.search("beta fact", mode="keyword", with_links=True)
    [beta] = [h for h in hits if h.memory_id == "b"]
    assert {("a", "b"), ("b", "c")} == {(e.from_id, e.to_id) for e in beta.links or []}

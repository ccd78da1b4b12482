"""Compare-and-set over the wire, as a client in any language does it: raw NATS, the
event as JSON with expected_revision, then the outcome op and get."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from memstream import Memory, MemoryNotFound, RevisionConflict, SyncMemoryClient
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.replay import replay
from memstream.projections.history import HistoryProjection
from tests.integration.test_query_worker import Stack, stack

__all__ = ["stack"]  # the fixture: memstream's whole stack on this module's server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def publish(nc: NatsClient, type_: str, **fields: Any) -> tuple[str, int]:
    """One event as a foreign client publishes it; its id and stream sequence."""
    event_id = str(uuid.uuid4())
    body = {"type": type_, "id": event_id, "tenant": "acme", "agent": "raw",
            "ts": dt.datetime.now(dt.UTC).isoformat(), **fields}  # fmt: skip
    ack = await nc.jetstream().publish(
        f"mem.acme.{type_}", msgspec.json.encode(body), headers={"Nats-Msg-Id": event_id}
    )
    return event_id, ack.seq


async def ask(stack: Stack, op: str, **fields: Any) -> dict[str, Any]:
    reply = await stack.ask(f"memq.acme.{op}", msgspec.json.encode(fields))
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


async def test_a_stale_revision_is_a_conflict_and_changes_nothing(stack: Stack) -> None:
    """Two writers read revision 1; the first revise applies (revision 2), the second,
    still expecting 1, is a conflict naming revision 2, and get shows the first's text."""
    _, seq = await publish(stack.nc, "knowledge.stored", memory_id="plan", domain="d",
                           content="v1")  # fmt: skip
    assert 1 == (await ask(stack, "get", memory_id="plan", min_seq=seq))["revision"]
    first, _ = await publish(stack.nc, "memory.revised", memory_id="plan", content="first",
                             expected_revision=1)  # fmt: skip
    second, seq = await publish(stack.nc, "memory.revised", memory_id="plan",
                                content="second", expected_revision=1)  # fmt: skip
    won = await ask(stack, "outcome", event_id=first, min_seq=seq)
    lost = await ask(stack, "outcome", seq=seq)
    assert ("applied", 2) == (won["outcome"], won["revision"])
    assert ("conflict", None, 2) == (lost["outcome"], lost["revision"], lost["current_revision"])
    assert second != first
    memory = await ask(stack, "get", memory_id="plan")
    assert ("first", 2) == (memory["content"], memory["revision"])


async def test_a_revise_of_a_memory_that_does_not_exist_is_not_found(stack: Stack) -> None:
    event_id, seq = await publish(stack.nc, "memory.revised", memory_id="made-up", content="x")
    found = await ask(stack, "outcome", event_id=event_id, min_seq=seq)
    assert ("not_found", "memory.revised", "made-up") == (
        found["outcome"],
        found["type"],
        found["memory_id"],
    )


async def test_create_if_absent_twice_creates_once(stack: Stack) -> None:
    """expected_revision 0 on a store: only if no live memory has the id."""
    _, first = await publish(stack.nc, "knowledge.stored", memory_id="lock-file", domain="d",
                             content="mine", expected_revision=0)  # fmt: skip
    _, second = await publish(stack.nc, "knowledge.stored", memory_id="lock-file",
                              domain="d", content="theirs", expected_revision=0)  # fmt: skip
    assert "applied" == (await ask(stack, "outcome", seq=first))["outcome"]
    lost = await ask(stack, "outcome", seq=second)
    assert ("conflict", 1) == (lost["outcome"], lost["current_revision"])
    assert "mine" == (await ask(stack, "get", memory_id="lock-file"))["content"]


async def test_an_unknown_event_is_not_found(stack: Stack) -> None:
    reply = await stack.ask("memq.acme.outcome", msgspec.json.encode({"event_id": "nope"}))
    assert "not_found" == reply["error"]["code"]


async def _increment(stack: Stack, conflicts: list[int]) -> None:
    """Read the counter, write it plus one expecting what was read; again on conflict."""
    while True:
        memory = await ask(stack, "get", memory_id="counter", consistency="latest")
        _, seq = await publish(stack.nc, "memory.revised", memory_id="counter",
                               content=str(int(memory["content"]) + 1),
                               expected_revision=memory["revision"])  # fmt: skip
        if (await ask(stack, "outcome", seq=seq))["outcome"] == "applied":
            return
        conflicts.append(seq)


async def test_eight_writers_lose_no_increment(stack: Stack, tmp_path: Path) -> None:
    """8 clients, 25 increments each, read-modify-write with expected_revision and a
    retry on conflict: the counter ends at 200, revision 201, with conflicts on the way.
    A rebuild of the history from the stream decides every event the same."""
    _, seq = await publish(stack.nc, "knowledge.stored", memory_id="counter", domain="d",
                           content="0")  # fmt: skip
    await ask(stack, "get", memory_id="counter", min_seq=seq)
    conflicts: list[int] = []

    async def writer() -> None:
        for _ in range(25):
            await _increment(stack, conflicts)

    await asyncio.gather(*(writer() for _ in range(8)))
    memory = await ask(stack, "get", memory_id="counter", consistency="latest")
    assert ("200", 201) == (memory["content"], memory["revision"])
    assert conflicts, "eight writers at once never conflicted"
    rebuilt = HistoryProjection(tmp_path / "rebuilt.duckdb")
    try:
        await replay(stack.nc, rebuilt)
        decided = rebuilt.con.execute(
            "SELECT seq, outcome FROM outcomes WHERE memory_id = 'counter'"
        ).fetchall()
    finally:
        rebuilt.close()
    assert 201 == sum(1 for _, o in decided if o == "applied")
    assert sorted(conflicts) == sorted(s for s, o in decided if o == "conflict")


async def test_a_confirmed_write_says_what_happened(stack: Stack) -> None:
    """confirm=True returns the ack with its outcome, or raises what says why it was not
    applied: RevisionConflict with the revision to read, MemoryNotFound."""
    mem = stack.client()
    stored = await mem.store_knowledge("v1", domain="d", memory_id="doc", confirm=True)
    assert stored.outcome is not None
    assert ("applied", 1) == (stored.outcome.outcome, stored.outcome.revision)
    revised = await mem.revise("doc", content="v2", expected_revision=1, confirm=True)
    assert revised.outcome is not None and 2 == revised.outcome.revision
    with pytest.raises(RevisionConflict) as conflict:
        await mem.revise("doc", content="stale", expected_revision=1, confirm=True)
    assert (2, "doc") == (conflict.value.current_revision, conflict.value.memory_id)
    with pytest.raises(MemoryNotFound, match="no memory 'ghost' in tenant acme"):
        await mem.revise("ghost", content="x", confirm=True)
    with pytest.raises(MemoryNotFound):
        await mem.forget("ghost", confirm=True)
    with pytest.raises(RevisionConflict):
        await mem.store_knowledge("again", domain="d", memory_id="doc", expected_revision=0,
                                  confirm=True)  # fmt: skip
    assert "v2" == (await mem.get("doc")).content
    # A write that is not a memory's waits until the history has applied it.
    turn = await mem.add_turn("s1", "user", "hello", confirm=True)
    assert turn.outcome is not None
    assert ("applied", "conversation.turn") == (turn.outcome.outcome, turn.outcome.type)
    assert ["hello"] == [t.content for t in (await mem.conversation("s1")).turns]


async def test_edit_retries_until_its_change_applies(stack: Stack) -> None:
    """Eight agents, each through edit(), append their name to one list memory at once:
    every name is there once, and the revision counts every applied change."""
    mem = stack.client()
    await mem.store_knowledge("roster:", domain="d", memory_id="roster", confirm=True)

    async def join(name: str) -> None:
        def add(memory: Memory) -> dict[str, str]:
            return {"content": " ".join([*memory.content.split(), name])}

        await stack.client(agent=name).edit("roster", add)

    names = [f"agent{i}" for i in range(8)]
    await asyncio.gather(*(join(n) for n in names))
    memory = await mem.get("roster", consistency="latest")
    assert (sorted(names), 9) == (sorted(memory.content.split()[1:]), memory.revision)
    with pytest.raises(MemoryNotFound):
        await mem.edit("nobody", lambda m: {"content": "x"})


async def test_the_blocking_client_confirms_and_edits(
    nats_server: NatsServer, stack: Stack
) -> None:
    """The same from SyncMemoryClient, with a plain function as the change (in a thread
    of its own, as a blocking agent runs beside this test's memstream)."""

    def agent() -> tuple[int | None, str, str]:
        with SyncMemoryClient.connect(nats_server.url, tenant="acme", agent="sync") as mem:
            mem.store_knowledge("1", domain="d", memory_id="n", confirm=True)
            ack = mem.edit("n", lambda m: {"content": str(int(m.content) + 1)})
            assert ack.outcome is not None
            return ack.outcome.revision, mem.get("n").content, mem.outcome(ack.id).outcome

    assert (2, "2", "applied") == await asyncio.to_thread(agent)


async def test_a_reply_about_a_tenant_with_no_events_carries_the_flag(stack: Stack) -> None:
    """The envelope says so, for an empty answer or a not_found; never for a tenant
    that has events."""
    await publish(stack.nc, "knowledge.stored", memory_id="m", domain="d", content="x")
    unknown = await stack.ask("memq.nobody.search", msgspec.json.encode({"query": "x"}))
    assert (True, []) == (unknown["tenant_has_no_events"], unknown["result"]["hits"])
    missing = await stack.ask("memq.nobody.get", msgspec.json.encode({"memory_id": "m"}))
    assert ("not_found", True) == (missing["error"]["code"], missing["tenant_has_no_events"])
    known = await stack.ask(
        "memq.acme.search", msgspec.json.encode({"query": "zzzqqq", "consistency": "latest"})
    )
    assert "tenant_has_no_events" not in known

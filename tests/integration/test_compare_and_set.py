"""Compare-and-set over the wire, as a client in any language does it: raw NATS, the
event as JSON with expected_revision, then the outcome op and get."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.nats_server import NatsServer
from memstream.consumers.replay import replay
from memstream.projections.history import HistoryProjection
from tests.integration.test_query_worker import Stack, running

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def stack(nc: NatsClient, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running(nats_server, tmp_path / "data") as info:
        yield Stack(nc, info)


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

"""The broker goes down under publish and publish_many: an event reported "not stored"
is not in the stream, an acknowledged one is, and one whose outcome was unknown is there
exactly once after it is published again."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from pathlib import Path

import msgspec

from memstream.consumers.nats_server import NatsServer
from memstream.consumers.streams import ensure_streams
from memstream.producers import MemoryClient
from memstream.producers.connection import connect_nats
from memstream.schemas import events as ev
from memstream.schemas.errors import PublishError
from tests.waiting import wait_for

Outcomes = dict[str, str]  # event id -> stored | not_stored | unknown


def _turn(mem: MemoryClient, i: int) -> ev.Event:
    return mem.new_event(ev.ConversationTurn, session_id="s", role="user", content=f"turn {i}")


async def _single(mem: MemoryClient, outcomes: Outcomes, sent: dict[str, ev.Event],
                  stop: asyncio.Event) -> None:  # fmt: skip
    i = 0
    while not stop.is_set():
        event = _turn(mem, i)
        sent[event.id] = event
        i += 1
        try:
            await mem.publish(event)
            outcomes[event.id] = "stored"
        except PublishError as err:
            outcomes[event.id] = "unknown" if err.unknown else "not_stored"
            await asyncio.sleep(0.05)


async def _batches(mem: MemoryClient, outcomes: Outcomes, sent: dict[str, ev.Event],
                   stop: asyncio.Event) -> None:  # fmt: skip
    i = 0
    while not stop.is_set():
        batch = [_turn(mem, 100_000 + i + k) for k in range(20)]
        i += 20
        sent.update((e.id, e) for e in batch)
        try:
            await mem.publish_many(batch)
            outcomes.update((e.id, "stored") for e in batch)
        except PublishError as err:
            for k, e in enumerate(batch):
                if err.acks[k] is not None:
                    outcomes[e.id] = "stored"
                else:
                    outcomes[e.id] = "unknown" if k in err.unknown else "not_stored"
            await asyncio.sleep(0.05)


async def _stored_ids(url: str) -> Counter[str]:
    nc = await connect_nats(url, name="check")
    try:
        js = nc.jetstream()
        info = await js.stream_info("MEMORY")
        found: Counter[str] = Counter()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            with contextlib.suppress(Exception):
                msg = await js.get_msg("MEMORY", seq)
                found[msgspec.json.decode(msg.data or b"{}")["id"]] += 1
        return found
    finally:
        await nc.close()


async def test_what_a_publish_reports_is_what_the_stream_holds(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", port=0).start()
    port = server.port
    try:
        nc = await connect_nats(server.url, name="setup")
        await ensure_streams(nc.jetstream())
        await nc.close()
        mem = await MemoryClient.connect(server.url, tenant="acme", agent="a1", ack_timeout=1.0)
        outcomes: Outcomes = {}
        sent: dict[str, ev.Event] = {}
        stop = asyncio.Event()
        publishers = [
            asyncio.create_task(_single(mem, outcomes, sent, stop)),
            asyncio.create_task(_batches(mem, outcomes, sent, stop)),
        ]
        await wait_for(lambda: len(outcomes) >= 200, what="publishing under way")
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        server.stop()
        await asyncio.sleep(6)  # the outage itself: nothing to wait for but time
        server = NatsServer(tmp_path / "nats", port=port or 0).start()
        mark = len(outcomes)
        await wait_for(lambda: len(outcomes) >= mark + 200, what="publishing again")
        stop.set()
        await asyncio.gather(*publishers)
        unknown = [sent[i] for i, o in outcomes.items() if o == "unknown"]
        assert unknown, "the outage left no publish in doubt; nothing was tested"
        await mem.publish_many(unknown)  # same ids: stored once, whatever happened before
        await mem.close()
        found = await _stored_ids(server.url)
    finally:
        server.stop()
    by_outcome: dict[str, list[int]] = {"stored": [], "not_stored": [], "unknown": []}
    for event_id, outcome in outcomes.items():
        by_outcome[outcome].append(found[event_id])
    assert {1} == set(by_outcome["stored"])
    assert set(by_outcome["not_stored"]) <= {0}
    assert {1} == set(by_outcome["unknown"])

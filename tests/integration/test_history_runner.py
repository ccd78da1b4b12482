"""The history projection fed by JetStream: dead letters, replay, rebuild, repositioning."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from memstream.consumers import dead_letters
from memstream.consumers.replay import replay
from memstream.consumers.runner import LiveRunner
from memstream.consumers.service import ProjectionService, rebuild_offline
from memstream.consumers.storage import HistoryStorage
from memstream.producers import MemoryClient
from memstream.projections._tables import TABLES
from memstream.projections.history import HistoryProjection
from memstream.schemas import events as ev
from memstream.schemas.events import EventDecoder
from tests.samples import sample_events
from tests.waiting import wait_for


async def last_seq(nc: NatsClient) -> int:
    return (await nc.jetstream().stream_info("MEMORY")).state.last_seq


async def run_live(nc: NatsClient, projection: HistoryProjection, **kw: Any) -> LiveRunner:
    """Run the live runner until the projection has applied the whole stream."""
    runner = LiveRunner(nc, projection, batch_size=kw.pop("batch_size", 500), max_wait=0.1, **kw)
    task = asyncio.create_task(runner.run())
    target = await last_seq(nc)
    try:
        await wait_for(lambda: projection.checkpoint >= target, what="live caught up")
    finally:
        runner.stop()
        await task
    return runner


async def publish_mixed(nc: NatsClient, n: int, tenant: str = "acme") -> None:
    client = MemoryClient(nc, tenant=tenant, agent="writer")
    kinds = [
        lambda i: client.new_event(ev.KnowledgeStored, memory_id=f"m{i % 50}", domain="d",
                                   content=f"fact {i}"),
        lambda i: client.new_event(ev.MemoryRevised, memory_id=f"m{i % 50}", content=f"v{i}"),
        lambda i: client.new_event(ev.TaskCreated, task_id=f"t{i % 30}", title=f"task {i}"),
        lambda i: client.new_event(ev.TaskStarted, task_id=f"t{i % 30}"),
        lambda i: client.new_event(ev.TaskCompleted, task_id=f"t{i % 30}", output=i),
        lambda i: client.new_event(ev.ContextSet, key=f"k{i % 7}", data={"i": i}, ttl_s=60),
        lambda i: client.new_event(ev.ConversationTurn, session_id="s", role="user",
                                   content=f"turn {i}"),
        lambda i: client.new_event(ev.MemoryForgotten, memory_id=f"m{(i * 7) % 50}"),
        lambda i: client.new_event(ev.ToolUsed, tool="grep", duration_ms=i, ok=i % 3 > 0),
    ]  # fmt: skip
    await client.publish_many([kinds[i % len(kinds)](i) for i in range(n)])


def dump(projection: HistoryProjection) -> dict[str, list[tuple[Any, ...]]]:
    return {t: projection.con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}


async def test_poison_messages_go_to_the_dlq(nc: NatsClient, tmp_path: Path) -> None:
    """Each kind of bad message is dead-lettered with its reason; every good one lands."""
    js = nc.jetstream()
    client = MemoryClient(nc, tenant="acme", agent="a1")
    good = sample_events()
    await client.publish_many(good[:8])
    envelope = {"id": "x1", "tenant": "acme", "agent": "a", "ts": "2026-11-21T12:00:00Z"}
    bad = [
        ("mem.acme.knowledge.stored", b"\xff not json at all", "event is not valid JSON"),
        ("mem.beta.task.started",
         msgspec.json.encode({**envelope, "type": "task.started", "task_id": "t"}),
         "event tenant 'acme' disagrees with subject 'mem.beta.task.started'"),
        ("mem.acme.knowledge.stored",
         msgspec.json.encode({**envelope, "id": "x2", "type": "knowledge.stored",
                              "domain": "d", "content": "c"}),
         "missing required field `memory_id`"),
        ("mem.acme.knowledge.stored",
         msgspec.json.encode({**envelope, "id": "x3", "type": "knowledge.stored",
                              "memory_id": "m", "domain": "d", "content": "x" * (1 << 20)}),
         "over the limit of 1048576 bytes"),
        ("mem.acme.a", b"{}", "is not an event subject"),
    ]  # fmt: skip
    for subject, body, _ in bad:
        await js.publish(subject, body)
    unknown = msgspec.json.encode({**envelope, "id": "x4", "type": "plan.drafted", "steps": 2})
    await js.publish("mem.acme.plan.drafted", unknown)
    await client.publish_many(good[8:])
    projection = HistoryProjection(tmp_path / "h.duckdb")
    runner = await run_live(nc, projection)

    ids = {r[0] for r in projection.con.execute("SELECT id FROM events").fetchall()}
    assert {e.id for e in good} | {"x4"} == ids
    assert len(bad) == runner.stats.dead_letters
    letters = await dead_letters.list_dead_letters(nc)
    assert [s for s, _, _ in bad] == [d.source_subject for d in letters]
    for letter, (_, _, reason) in zip(letters, bad, strict=True):
        assert reason in letter.error
        assert letter.subject.startswith("memdlq.history.")
    assert "memdlq.history.beta" == letters[1].subject
    source = await js.get_msg("MEMORY", letters[0].source_seq)
    assert b"\xff not json at all" == source.data


async def test_live_and_replay_agree_row_for_row(nc: NatsClient, tmp_path: Path) -> None:
    """A full replay produces tables identical to the live projection's."""
    client = MemoryClient(nc, tenant="acme", agent="a1")
    await client.publish_many(sample_events("acme") + sample_events("beta", "b1"))
    await publish_mixed(nc, 3000)
    await publish_mixed(nc, 500, tenant="beta")
    live = HistoryProjection(tmp_path / "live.duckdb")
    await run_live(nc, live, batch_size=700)
    rebuilt = HistoryProjection(tmp_path / "replayed.duckdb")
    stats = await replay(nc, rebuilt, batch_size=1000)
    published = 3500 + 2 * len(sample_events())
    assert (published, live.checkpoint) == (stats.applied, rebuilt.checkpoint)
    expected, actual = dump(live), dump(rebuilt)
    for table in TABLES:
        assert expected[table] == actual[table], table
    assert published == len(expected["events"])


async def test_a_catch_up_ends_once_it_reaches_its_mark_though_events_keep_coming(
    nc: NatsClient, tmp_path: Path
) -> None:
    """A rebuild pauses live ingest when its replay has caught up, then waits for the
    replay to reach the paused checkpoint: that must not wait for the stream to stop
    growing, or publishers that keep ahead of the replay keep live ingest paused."""
    await publish_mixed(nc, 300)
    marks: list[int] = []

    async def until(checkpoint: int) -> bool:
        if not marks:  # caught up: the mark is set here, and events keep coming
            marks.append(await last_seq(nc) + 5)
            await publish_mixed(nc, 400, tenant="beta")
        return checkpoint >= marks[0]

    projection = HistoryProjection(tmp_path / "caught-up.duckdb")
    await replay(nc, projection, batch_size=50, until=until)
    assert marks[0] <= projection.checkpoint < marks[0] + 100
    assert projection.checkpoint < await last_seq(nc)  # the rest is for live ingest


async def test_an_eager_catch_up_stops_at_its_mark_short_of_the_streams_end(
    nc: NatsClient, tmp_path: Path
) -> None:
    """A copy caught up to what the live projection applied stops there, though the
    stream holds more: the rest is for live ingest, which would apply it anyway."""
    await publish_mixed(nc, 500)
    mark = await last_seq(nc) - 400
    asked: list[int] = []

    async def until(checkpoint: int) -> bool:
        asked.append(checkpoint)
        return checkpoint >= mark

    projection = HistoryProjection(tmp_path / "copy.duckdb")
    await replay(nc, projection, batch_size=50, until=until, eager=True)
    assert mark <= projection.checkpoint < mark + 50
    assert asked[0] < mark  # asked from the first batch, not once the stream was read


async def test_rebuild_while_ingesting_swaps_without_loss(nc: NatsClient, tmp_path: Path) -> None:
    """A rebuild under live load swaps in a database holding every event exactly once."""
    await publish_mixed(nc, 4000)
    service = ProjectionService(nc, HistoryStorage(tmp_path), batch_size=400, max_wait=0.05)
    await service.start()
    assert service.projection is not None
    old_path = service.projection.path
    writer = asyncio.create_task(publish_mixed(nc, 3000, tenant="beta"))
    try:
        result = await service.rebuild()
        await writer
        await publish_mixed(nc, 200, tenant="gamma")
        target = await last_seq(nc)
        await wait_for(lambda: service.projection.checkpoint >= target, what="caught up")  # type: ignore[union-attr]
        async with service.reading() as history:
            counts = history.con.execute(
                "SELECT count(*), count(DISTINCT id), count(DISTINCT seq) FROM events"
            ).fetchone()
            by_tenant = dict(history.con.execute(
                "SELECT tenant, count(*) FROM events GROUP BY tenant"
            ).fetchall())  # fmt: skip
    finally:
        await service.stop()
    assert (7200, 7200, 7200) == counts
    assert {"acme": 4000, "beta": 3000, "gamma": 200} == by_tenant
    assert result.events >= 4000
    assert service.projection.path != old_path
    assert not old_path.exists()
    assert [service.projection.path] == sorted(tmp_path.glob("history/*.duckdb"))


async def test_offline_rebuild_replaces_the_file(nc: NatsClient, tmp_path: Path) -> None:
    """With nothing running, a rebuild writes a new file and points CURRENT at it."""
    await publish_mixed(nc, 900)
    storage = HistoryStorage(tmp_path)
    first = storage.open_current()
    await run_live(nc, first)
    before = dump(first)
    first.close()
    result = await rebuild_offline(nc, storage)
    assert 900 == result.events
    current = storage.files.current()
    assert current is not None and current != first.path and not first.path.exists()
    after = HistoryProjection(current)
    assert before == dump(after)


async def test_dead_letters_retried_once_the_cause_is_fixed(nc: NatsClient, tmp_path: Path) -> None:
    """An event refused under a small size limit is projected after retry with a larger one."""
    client = MemoryClient(nc, tenant="acme", agent="a1")
    big = await client.store_knowledge("y" * 10_000, domain="d", memory_id="big")
    await client.task_started("after")
    projection = HistoryProjection(tmp_path / "h.duckdb")
    strict = await run_live(nc, projection, decoder=EventDecoder(max_bytes=4096))
    assert 1 == strict.stats.dead_letters
    assert [] == projection.con.execute("SELECT * FROM knowledge").fetchall()
    retried = await dead_letters.retry_dead_letters(nc)
    assert [big.seq] == [letter.source_seq for letter, _ in retried]
    assert [] == await dead_letters.list_dead_letters(nc)
    await run_live(nc, projection)
    assert [("big", 10_000)] == projection.con.execute(
        "SELECT memory_id, length(content) FROM knowledge"
    ).fetchall()


async def test_consumer_follows_the_projection_checkpoint(nc: NatsClient, tmp_path: Path) -> None:
    """A projection behind the consumer (a lost database) gets every event again."""
    await publish_mixed(nc, 600)
    await run_live(nc, HistoryProjection(tmp_path / "first.duckdb"))
    info = await nc.jetstream().consumer_info("MEMORY", "history")
    assert info.ack_floor.stream_seq == await last_seq(nc)
    fresh = HistoryProjection(tmp_path / "fresh.duckdb")
    await run_live(nc, fresh)
    assert (600,) == fresh.con.execute("SELECT count(*) FROM events").fetchone()


async def test_runner_recovers_when_its_consumer_is_deleted(nc: NatsClient, tmp_path: Path) -> None:
    """An operator deleting the durable consumer stalls nothing: it is made again."""
    projection = HistoryProjection(tmp_path / "h.duckdb")
    runner = LiveRunner(nc, projection, batch_size=200, max_wait=0.1)
    task = asyncio.create_task(runner.run())
    try:
        await publish_mixed(nc, 300)
        target = await last_seq(nc)
        await wait_for(lambda: projection.checkpoint >= target, what="first events")
        await nc.jetstream().delete_consumer("MEMORY", "history")
        await publish_mixed(nc, 300, tenant="beta")
        target = await last_seq(nc)
        await wait_for(lambda: projection.checkpoint >= target, what="events after deletion")
    finally:
        runner.stop()
        await task
    assert (600,) == projection.con.execute("SELECT count(DISTINCT id) FROM events").fetchone()


async def test_expired_context_is_swept_from_the_table(nc: NatsClient, tmp_path: Path) -> None:
    """A context value past its ttl is hidden by reads at once, and its row leaves the
    table at the next sweep; values without a ttl, or not yet expired, stay."""
    url = nc.connected_url.geturl()  # type: ignore[union-attr]
    async with await MemoryClient.connect(url, tenant="acme", agent="a1") as mem:
        await mem.set_context("short", {"v": 1}, ttl_s=0.5)
        await mem.set_context("long", {"v": 2}, ttl_s=3600)
        await mem.set_context("forever", {"v": 3})
    service = ProjectionService(nc, HistoryStorage(tmp_path), max_wait=0.05, sweep_every=0.1)
    await service.start()
    try:
        target = await last_seq(nc)
        await wait_for(lambda: service.checkpoint >= target, what="caught up")

        def keys() -> list[str]:
            rows = service.projection.con.cursor().execute("SELECT key FROM context ORDER BY key")
            return [k for (k,) in rows.fetchall()]

        await wait_for(lambda: "short" not in keys(), what="the expired row swept")
        assert ["forever", "long"] == keys()
    finally:
        await service.stop()


async def test_a_delivery_lost_in_flight_is_not_acked_past(nc: NatsClient, tmp_path: Path) -> None:
    """A delivery that never reaches the runner (as when a node dies with it in flight;
    here another reader takes it) leaves a gap in the consumer's delivery sequence.
    Acking the next batch would ack the lost one too (AckPolicy.ALL) and it would never
    be applied: the runner applies up to the gap and reads again from its checkpoint."""
    projection = HistoryProjection(tmp_path / "gap.duckdb")
    runner = LiveRunner(nc, projection, batch_size=100, max_wait=0.05, consumer="history-gap")
    task = asyncio.create_task(runner.run())
    mem = MemoryClient(nc, tenant="acme", agent="a")
    try:
        first = await mem.store_knowledge("before", domain="d")
        await wait_for(lambda: projection.checkpoint >= first.seq, what="the first event")
        # Another reader asks the runner's consumer for one message and never acks it.
        taken: list[int] = []

        async def take(msg: Any) -> None:
            if msg.data:
                taken.append(int(msg.reply.split(".")[5]))

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=take)
        await nc.publish(
            "$JS.API.CONSUMER.MSG.NEXT.MEMORY.history-gap",
            msgspec.json.encode({"batch": 1, "expires": 30_000_000_000}),
            reply=inbox,
        )
        await nc.flush()
        acks = [await mem.store_knowledge(f"after {i}", domain="d") for i in range(6)]
        await wait_for(lambda: bool(taken), what="the other reader to take one")
        await wait_for(
            lambda: projection.checkpoint >= acks[-1].seq, what="the runner past the gap"
        )
        stored = {
            seq for (seq,) in projection.cursor().execute("SELECT seq FROM events").fetchall()
        }
        assert taken[0] in stored  # the one taken elsewhere was applied all the same
        assert {first.seq, *(a.seq for a in acks)} == stored
        await sub.unsubscribe()
    finally:
        runner.stop()
        await task
        projection.close()


async def test_a_replay_reads_again_past_a_lost_delivery(nc: NatsClient, tmp_path: Path) -> None:
    """A replay's consumer acks nothing, so a delivery lost in flight would never come
    back: the replay notices the gap in the delivery sequence and reads again from
    what it applied."""
    await publish_mixed(nc, 300)
    projection = HistoryProjection(tmp_path / "replayed.duckdb")
    js = nc.jetstream()
    state = (await js.stream_info("MEMORY")).state
    before = {c.name for c in await js.consumers_info("MEMORY")}
    inbox = nc.new_inbox()
    taken: list[int] = []

    async def take(msg: Any) -> None:
        if msg.data:
            taken.append(int(msg.reply.split(".")[5]))

    sub = await nc.subscribe(inbox, cb=take)
    stealing: list[asyncio.Task[None]] = []

    async def steal() -> None:
        (name,) = [
            c.name
            for c in await js.consumers_info("MEMORY")
            if c.name.startswith("replay-") and c.name not in before
        ]
        body = msgspec.json.encode({"batch": 1, "expires": 5_000_000_000})
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.MEMORY.{name}", body, reply=inbox)

    def on_progress(_: object) -> None:
        if not stealing:
            stealing.append(asyncio.get_running_loop().create_task(steal()))

    await replay(nc, projection, batch_size=10, on_progress=on_progress)
    await sub.unsubscribe()
    assert taken, "the other reader took nothing: the test did not cause a loss"
    stored = [seq for (seq,) in projection.cursor().execute("SELECT seq FROM events").fetchall()]
    assert list(range(state.first_seq, state.last_seq + 1)) == sorted(stored)
    assert 300 == len(stored)
    projection.close()


async def test_a_replay_whose_consumer_the_server_removed_reads_on(
    nc: NatsClient, tmp_path: Path
) -> None:
    """The server removes a replay's consumer that stays idle past its inactive
    threshold (a long batch, a long pause of live ingest): the replay makes a new one
    from what it applied, rather than waiting for nothing."""
    await publish_mixed(nc, 300)
    projection = HistoryProjection(tmp_path / "replayed.duckdb")
    js = nc.jetstream()
    state = (await js.stream_info("MEMORY")).state
    before = {c.name for c in await js.consumers_info("MEMORY")}
    removed: list[str] = []

    async def remove() -> None:
        (name,) = [
            c.name
            for c in await js.consumers_info("MEMORY")
            if c.name.startswith("replay-") and c.name not in before
        ]
        await js.delete_consumer("MEMORY", name)
        removed.append(name)

    async def until(checkpoint: int) -> bool:
        if not removed:
            await remove()  # as the server does while the replay waits here
        return checkpoint >= state.last_seq

    await asyncio.wait_for(
        replay(nc, projection, batch_size=50, until=until, eager=True), timeout=60
    )
    assert removed, "the test removed no consumer"
    stored = [seq for (seq,) in projection.cursor().execute("SELECT seq FROM events").fetchall()]
    assert list(range(state.first_seq, state.last_seq + 1)) == sorted(stored)
    projection.close()

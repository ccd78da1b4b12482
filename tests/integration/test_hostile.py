"""Hostile input against the running stack: nothing crashes, stalls or is lost.

Hypothesis draws the messages (random bytes, random JSON, envelopes with wrong field
types, very long strings, deeply nested metadata, unicode edge cases, SQL-looking text,
and good events among them) and the queries; they are then published with a raw client
straight to ``mem.<tenant>.<type>`` and ``memq.<tenant>.<op>``. Drawing first and sending
after keeps one memstream running for the whole lot (the draws are derandomized, so CI
sends the same ones every run).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient

from memstream.consumers.nats_server import NatsServer
from memstream.producers import MemoryClient
from memstream.projections.base import Applied
from memstream.projections.history import HistoryProjection
from memstream.schemas import events as ev
from memstream.schemas.queries import OPS
from tests.integration.test_history_runner import run_live
from tests.integration.test_query_worker import running

SQLISH = ["'; DROP TABLE events; --", "1 OR 1=1", "$tenant", "x\"); COPY events TO '/tmp/x'"]
WEIRD_TEXT = st.one_of(
    st.text(min_size=1, max_size=200),
    st.sampled_from(["\u0000", "\u202e", "\ufeff", "\U0001f600" * 50, "e\u0301", *SQLISH]),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
TS = "2026-11-21T12:00:00Z"


def envelope(type_: str, tenant: str, n: int) -> dict[str, Any]:
    base: dict[str, Any] = {"type": type_, "id": f"h{n}", "tenant": tenant, "agent": "fuzz",
                            "ts": TS}  # fmt: skip
    own = {
        "knowledge.stored": {"memory_id": f"m{n}", "domain": "d", "content": "c"},
        "solution.stored": {"memory_id": f"m{n}", "problem": "p", "solution": "s"},
        "task.created": {"task_id": f"t{n}", "title": "t"},
        "tool.used": {"tool": "grep"},
        "conversation.turn": {"session_id": "s", "role": "user", "content": "hi"},
        "context.set": {"key": "k", "data": {}},
    }
    return {**base, **own.get(type_, own["knowledge.stored"])}


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, bytes, str]:
    tenant = draw(st.sampled_from(["acme", "beta"]))
    type_ = draw(st.sampled_from(["knowledge.stored", "solution.stored", "task.created",
                                  "tool.used", "conversation.turn", "context.set"]))  # fmt: skip
    subject = f"mem.{tenant}.{type_}"
    kind = draw(st.sampled_from(["bytes", "json", "wrong_type", "long", "nested", "text", "good"]))
    event = envelope(type_, tenant, draw(st.integers(0, 10**9)))
    if kind == "bytes":
        return subject, draw(st.binary(max_size=300)), kind
    if kind == "json":
        return subject, msgspec.json.encode(draw(JSON)), kind
    if kind == "wrong_type":
        field = draw(st.sampled_from(sorted(event)))
        event[field] = draw(st.sampled_from([None, 42, [1], {"a": 1}, 1.5, True, ""]))
    elif kind == "long":
        text_field = next(f for f in ("content", "title", "problem", "tool", "key") if f in event)
        event[text_field] = "x" * draw(st.integers(10_000, 900_000))
    elif kind == "nested":
        depth = draw(st.integers(70, 3000))  # beyond MAX_DEPTH (64)
        event["data" if type_ == "context.set" else "metadata"] = "__NEST__"
        nested = b'{"a":' * depth + b"{}" + b"}" * depth  # too deep to build as objects
        return subject, msgspec.json.encode(event).replace(b'"__NEST__"', nested), kind
    elif kind == "text":
        for field in ("agent", "content", "domain", "title", "role", "tool"):
            if field in event:
                event[field] = draw(WEIRD_TEXT)
    body = msgspec.json.encode(event)
    if kind == "text" and draw(st.booleans()):
        body = body.replace(b'"agent":"', b'"agent":"\\ud800', 1)  # a lone surrogate
    return subject, body, kind


@st.composite
def query(draw: st.DrawFn) -> tuple[str, bytes]:
    op = draw(st.sampled_from([*OPS, "nope", "sql", "drop"]))
    body = draw(
        st.one_of(
            st.binary(max_size=100),
            JSON.map(msgspec.json.encode),
            st.fixed_dictionaries(
                {},
                optional={
                    "query": WEIRD_TEXT, "task_id": WEIRD_TEXT, "key": WEIRD_TEXT,
                    "session_id": WEIRD_TEXT, "name": st.sampled_from(["tool_usage", "x"]),
                    "params": st.dictionaries(st.sampled_from(["since", "limit", "x"]), JSON),
                    "limit": st.integers(-5, 20_000), "min_seq": st.integers(-1, 5),
                    "types": st.lists(WEIRD_TEXT, max_size=3), "top_k": st.integers(-1, 2000),
                    "sql": st.sampled_from(SQLISH),
                },
            ).map(msgspec.json.encode),
        )
    )  # fmt: skip
    return f"memq.acme.{op}", body


def draw_all(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` draws, derandomized: the same messages on every run."""
    drawn: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn[:count]


async def test_hostile_events_go_to_the_dlq_and_good_ones_are_projected(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Any
) -> None:
    """Every message ends up exactly once: projected into the history, or in the DLQ
    with a reason; the good ones are all projected; both projections catch up."""
    # Ids made unique: a repeated id is the same event, skipped by design.
    messages = [
        (subject, re.sub(rb'"id":"h\d+"', f'"id":"h-{i}"'.encode(), body, count=1), kind)
        for i, (subject, body, kind) in enumerate(draw_all(hostile(), 150))
    ]
    async with running(nats_server, tmp_path / "data"):
        js = nc.jetstream()
        sent: dict[int, str] = {}
        for subject, body, kind in messages:
            ack = await js.publish(subject, body, timeout=10)
            sent[ack.seq] = kind
        last = max(sent)
        mem = MemoryClient(nc, tenant="acme", agent="check")
        # Nothing stalls: both projections reach the last message.
        await mem.stats(min_seq=last, wait_ms=60_000)
        await mem.search("anything", min_seq=last, wait_ms=60_000)
        projected: set[int] = set()
        for tenant in ("acme", "beta"):
            reader, after = MemoryClient(nc, tenant=tenant, agent="check"), 0
            while True:  # small pages: some events are nearly 1 MB
                page = await reader.history(limit=1, after_seq=after)
                projected |= {e["seq"] for e in page.events}
                if page.next_after_seq is None:
                    break
                after = page.next_after_seq
        dead = {
            int(m.headers["Memstream-Source-Seq"]): m.headers["Memstream-Error"]
            for m in await _dlq(nc)
            if m.subject.startswith("memdlq.history.")
        }
    assert set() == projected & set(dead), "a message both projected and dead-lettered"
    assert set(sent) == projected | set(dead), "a message neither projected nor dead-lettered"
    assert all(reason.strip() for reason in dead.values())
    good = {seq for seq, kind in sent.items() if kind == "good"}
    assert good <= projected
    broken = {seq for seq, kind in sent.items() if kind in ("bytes", "nested")}
    assert broken <= set(dead)
    assert projected and dead  # the draw had both kinds


async def _dlq(nc: NatsClient) -> list[Any]:
    js = nc.jetstream()
    info = await js.stream_info("MEMORY_DLQ")
    if not info.state.messages:
        return []
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        found.append(await js.get_msg("MEMORY_DLQ", seq))
    return found


async def test_hostile_queries_get_an_answer_and_never_internal(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Any
) -> None:
    """Every drawn query is answered: a result, or bad_request / not_found; never an
    internal error, never silence."""
    requests = draw_all(query(), 200)
    async with running(nats_server, tmp_path / "data"):
        await MemoryClient(nc, tenant="acme", agent="a").store_knowledge("seed", domain="d")
        codes: dict[str, int] = {}
        for subject, body in requests:
            reply = msgspec.json.decode((await nc.request(subject, body, timeout=30)).data)
            code = "ok" if reply["ok"] else reply["error"]["code"]
            codes[code] = codes.get(code, 0) + 1
            assert code in {"ok", "bad_request", "not_found", "not_caught_up"}, (
                subject,
                body,
                reply,
            )
    assert codes.get("bad_request", 0) > 0 and codes.get("ok", 0) > 0


class _Choking(HistoryProjection):
    """The real history, unable to store one particular event (as a bug would be)."""

    def apply(
        self, batch: Any, upto: int = 0, bodies: Any = None, reapplied: Any = None
    ) -> Applied:
        if any(e.id == "poison" for _, e in batch):
            raise RuntimeError("this event breaks the projection")
        return super().apply(batch, upto, bodies, reapplied)


async def test_an_event_the_projection_cannot_apply_is_isolated_not_a_stall(
    nc: NatsClient, tmp_path: Any
) -> None:
    """A batch that keeps failing is applied event by event: the one event that fails on
    its own goes to the DLQ with the reason, every other event is applied."""
    mem = MemoryClient(nc, tenant="acme", agent="a1")
    good = [mem.new_event(ev.ToolUsed, tool=f"t{i}") for i in range(20)]
    poison = mem.new_event(ev.ToolUsed, id="poison", tool="boom")
    acks = await mem.publish_many([*good[:10], poison, *good[10:]])
    projection = _Choking(tmp_path / "h.duckdb")
    runner = await run_live(nc, projection, batch_size=100)
    assert acks[-1].seq == projection.checkpoint
    stored = {r[0] for r in projection.con.execute("SELECT id FROM events").fetchall()}
    assert {e.id for e in good} == stored
    (letter,) = [m for m in await _dlq(nc) if m.subject == "memdlq.history.acme"]
    assert str(acks[10].seq) == letter.headers["Memstream-Source-Seq"]
    assert "this event breaks the projection" in letter.headers["Memstream-Error"]
    assert 1 == runner.stats.dead_letters

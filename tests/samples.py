"""One sample event of every type, with the optional fields filled in."""

from __future__ import annotations

import datetime as dt
import secrets

from memstream.schemas import events as ev
from memstream.schemas.events import Event

TS = dt.datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=dt.UTC)


def sample_events(tenant: str = "acme", agent: str = "a1") -> list[Event]:
    """Every event type once; each call makes new ids (a stream dedupes repeated ones)."""
    n = iter(range(1000))
    call = secrets.token_hex(4)

    def common() -> dict[str, object]:
        return {
            "id": f"{tenant}-{agent}-{call}-{next(n)}",
            "tenant": tenant,
            "agent": agent,
            "ts": TS,
        }

    return [
        ev.KnowledgeStored(
            **common(),
            memory_id="m1",
            domain="python",
            content="asyncio.gather runs awaitables concurrently",
            tags=("asyncio",),
            metadata={"source": "docs", "n": 1},
        ),
        ev.SolutionStored(
            **common(),
            memory_id="s1",
            problem="flaky test",
            solution="wait for the condition, not a fixed sleep",
            tags=("testing",),
            task_id="t1",
        ),
        ev.MemoryRevised(
            **common(),
            memory_id="m1",
            content="gather runs them concurrently",
            tags=("asyncio", "concurrency"),
        ),
        ev.MemoryForgotten(**common(), memory_id="s1", reason="superseded"),
        ev.MemoryLinked(**common(), from_id="m1", to_id="s1", relation="supports"),
        ev.CollabRecorded(
            **common(),
            interaction_id="i1",
            initiator=agent,
            participants=(agent, "reviewer"),
            task_description="review a PR",
            outcome="approved",
            metadata={"pr": 42},
        ),
        ev.CollabMessage(
            **common(),
            interaction_id="i1",
            sender=agent,
            recipients=("reviewer",),
            content="please look at line 10",
        ),
        ev.TaskCreated(
            **common(),
            task_id="t1",
            title="fix the flaky test",
            assignee=agent,
            parent_id="t0",
            flow_id="f1",
            metadata={"prio": "high"},
        ),
        ev.TaskStarted(**common(), task_id="t1", correlation_id="c1", causation_id="x0"),
        ev.TaskCompleted(**common(), task_id="t1", output={"patch": "diff", "lines": [1, 2]}),
        ev.TaskFailed(**common(), task_id="t2", error="timeout after 30s"),
        ev.FlowRunRecorded(
            **common(), flow_id="f1", run_id="r1", status="ok", duration_ms=1200, data={"steps": 3}
        ),
        ev.ContextSet(**common(), key="k1", data={"branch": "main"}, ttl_s=60.0),
        ev.ContextCleared(**common(), key="k1"),
        ev.ConversationTurn(**common(), session_id="sess1", role="user", content="hello"),
        ev.ConversationTurnsRemoved(**common(), session_id="sess0", seqs=(1,)),
        ev.ToolUsed(
            **common(),
            tool="grep",
            args={"pattern": "TODO"},
            result=["a.py:1"],
            duration_ms=12,
            ok=True,
        ),
        # Limits no sample comes near; seq 1 is never a store these samples refused.
        ev.QuotaSet(**common(), memories=1_000_000, storage_mb=10_000.0),
        ev.QuotaReapplied(**common(), seqs=(1,)),
    ]

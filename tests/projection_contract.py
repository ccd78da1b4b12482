"""The contract every projection keeps, written once and proven per backend.

A backend's test module subclasses :class:`ProjectionContract` and gives it a ``backend``
fixture: how to open the projection on its storage, how to read its whole state (rows,
points), and how to cause each failure of its storage for real (a full disk, an embedder
that refuses its key, ...). The rules:

- a batch at or below the checkpoint changes nothing;
- an event id applied twice, in one batch or long after, applies once;
- a failure midway through a batch leaves no effect and no checkpoint move;
- each failure of the storage raises StorageFailure with the checkpoint unchanged, is
  seen by ``check_storage``, and once it is gone the same batch applies once;
- a live projection and a rebuild from the stream are equal, row for row, point for point.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.replay import replay
from memstream.consumers.runner import LiveRunner
from memstream.producers import MemoryClient
from memstream.projections.base import Applied, Projection, StorageFailure
from memstream.schemas import events as ev
from memstream.schemas.subjects import EVENT_STREAM
from tests.samples import sample_events
from tests.waiting import wait_for

__all__ = ["Backend", "ProjectionContract", "contract_events"]

Numbered = list[tuple[int, Any]]


def contract_events(tenant: str) -> list[ev.Event]:
    """Every event type, then more of what changes a memory: stores, revisions, a
    store-again, a forget with erase, links, turns."""
    events: list[ev.Event] = list(sample_events(tenant))
    base = events[0]
    n = itertools.count()

    def common() -> dict[str, Any]:
        return {"id": f"{base.id}-more-{next(n)}", "tenant": tenant, "agent": "a2", "ts": base.ts}

    events += [
        ev.KnowledgeStored(**common(), memory_id="m2", domain="ops",
                           content="the gateway gives up after 30 s", tags=("gateway",)),
        ev.SolutionStored(**common(), memory_id="s2", problem="gateway 504",
                          solution="raise the upstream timeout to 60 s"),
        ev.MemoryRevised(**common(), memory_id="m2", content="the gateway gives up after 45 s"),
        ev.MemoryRevised(**common(), memory_id="s2", solution="raise it to 90 s", tags=("x",)),
        ev.KnowledgeStored(**common(), memory_id="m2", domain="ops",
                           content="the gateway gives up after 60 s"),
        ev.KnowledgeStored(**common(), memory_id="gone", domain="ops", content="a secret"),
        ev.MemoryRevised(**common(), memory_id="gone", content="a second secret"),
        ev.MemoryForgotten(**common(), memory_id="gone", erase=True),
        ev.MemoryLinked(**common(), from_id="m2", to_id="s2", relation="explains"),
        ev.ConversationTurn(**common(), session_id="sess1", role="assistant",
                            content="the gateway gives up after 60 s now"),
        ev.TaskCreated(**common(), task_id="t9", title="tune the gateway"),
        ev.TaskCompleted(**common(), task_id="t9", output="done"),
    ]  # fmt: skip
    return events


def numbered(events: Sequence[Any], start: int = 1, step: int = 1) -> Numbered:
    return [(start + i * step, e) for i, e in enumerate(events)]


class Backend:
    """One projection backend's storage, for the contract. Subclasses fill it in."""

    # The failures of the storage this backend can cause, by name.
    faults: ClassVar[tuple[str, ...]] = ()

    def open(self) -> Projection:
        """The projection on this backend's storage (the same storage every time)."""
        raise NotImplementedError

    def other(self) -> Projection:
        """Another, empty projection on storage of its own (a reference to compare with)."""
        raise NotImplementedError

    def state(self, projection: Projection) -> Any:
        """Everything a reader could see: every row, or every point, in a fixed order."""
        raise NotImplementedError

    def memories(self, projection: Projection) -> Any:
        """What a reader sees of the memories alone (a log of every event aside)."""
        return self.state(projection)

    def turns(self, projection: Projection) -> list[tuple[str, str]]:
        """The (session, content) of every conversation turn a reader can see, by seq."""
        raise NotImplementedError

    def cause(self, fault: str) -> contextlib.AbstractContextManager[None]:
        """The storage failing in this way while inside."""
        raise NotImplementedError

    def midway(self) -> contextlib.AbstractContextManager[None]:
        """The storage failing after part of the next batch's work is done."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend opened."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each contract test that takes ``fault`` runs once per fault of its backend."""
    if "fault" in metafunc.fixturenames and metafunc.cls is not None:
        faults = metafunc.cls.backend_class.faults
        metafunc.parametrize("fault", faults, ids=[f.replace(" ", "-") for f in faults])


class ProjectionContract:
    """The rules above, for the backend the subclass's ``backend`` fixture gives."""

    backend_class: ClassVar[type[Backend]]

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        raise NotImplementedError

    def test_a_batch_at_or_below_the_checkpoint_changes_nothing(self, backend: Backend) -> None:
        """Applied again whole, or in part, an applied batch changes no row or point."""
        projection = backend.open()
        batch = numbered(contract_events("acme") + contract_events("beta"))
        assert 0 < projection.apply(batch).events
        before = backend.state(projection)
        assert batch[-1][0] == projection.checkpoint
        assert Applied() == projection.apply(batch)
        assert Applied() == projection.apply(batch[:5], upto=batch[4][0])
        assert before == backend.state(projection)
        assert batch[-1][0] == projection.checkpoint

    def test_an_event_id_applied_twice_applies_once(self, backend: Backend) -> None:
        """Repeated in one batch (inside the duplicate window), and republished long
        after at new sequences, before and after a reopen, each event applies once."""
        events = contract_events("acme")
        reference = backend.other()
        once = numbered(events, start=2, step=2)
        first_time = reference.apply(once).events
        projection = backend.open()
        # Each event, and a copy of it at the next sequence.
        twice: Numbered = [item for seq, e in once for item in ((seq, e), (seq + 1, e))]
        applied = projection.apply(twice)
        assert (first_time, first_time) == (applied.events, applied.duplicates)
        assert 0 == projection.apply(numbered(events, start=1000)).events
        assert backend.state(reference) == backend.state(projection)
        projection.close()
        again = backend.open()
        assert 0 == again.apply(numbered(events, start=2000)).events
        assert 2000 + len(events) - 1 == again.checkpoint
        assert backend.state(reference) == backend.state(again)

    def test_a_failure_midway_through_a_batch_leaves_no_effect(self, backend: Backend) -> None:
        """The storage fails after part of a batch's work: nothing of the batch is seen,
        the checkpoint stays; applied again once it is back, it applies once."""
        first = numbered(contract_events("acme"))
        second = numbered(contract_events("beta") + contract_events("gamma"), start=100)
        projection = backend.open()
        projection.apply(first)
        before = backend.state(projection)
        with backend.midway(), pytest.raises(StorageFailure):
            projection.apply(second)
        assert first[-1][0] == projection.checkpoint
        assert before == backend.state(projection)
        projection.apply(second)
        reference = backend.other()
        reference.apply(first)
        reference.apply(second)
        assert backend.state(reference) == backend.state(projection)
        assert second[-1][0] == projection.checkpoint

    def test_a_failing_storage_is_a_storage_failure_and_loses_nothing(
        self, backend: Backend, fault: str
    ) -> None:
        """While the storage fails, ``apply`` raises StorageFailure (never another error,
        which the runner would take for a bad event), the checkpoint stays, and
        ``check_storage`` says so. Once it is back, the same batch applies once."""
        first = numbered(contract_events("acme"))
        second = numbered(contract_events("beta"), start=100)
        projection = backend.open()
        projection.apply(first)
        projection.check_storage()
        with backend.cause(fault):
            with pytest.raises(StorageFailure) as failed:
                projection.apply(second)
            assert first[-1][0] == projection.checkpoint
            with pytest.raises(StorageFailure):
                projection.check_storage()
        assert str(failed.value)
        projection.check_storage()
        reference = backend.other()
        reference.apply(first)
        assert reference.apply(second).events == projection.apply(second).events
        assert Applied() == projection.apply(second)
        assert backend.state(reference) == backend.state(projection)

    def test_a_write_that_is_not_applied_changes_nothing(self, backend: Backend) -> None:
        """Compare-and-set, the same in every backend: a stale expected_revision, a
        second create-if-absent and a revise or forget of a memory that does not exist
        (or had expired by the revise's time, swept or not) leave the memories as if they
        had never been published (the log keeps them)."""
        base = contract_events("acme")[0]

        def event(cls: type[ev.Event], n: int, s: float = 0, **fields: Any) -> ev.Event:
            return cls(id=f"{base.id}-cas-{n}", tenant="acme", agent="a3",
                       ts=base.ts + dt.timedelta(seconds=s), **fields)  # type: ignore[arg-type]  # fmt: skip

        applied = [
            (1, event(ev.KnowledgeStored, 1, memory_id="plan", domain="d", content="v1",
                      expected_revision=0)),
            (2, event(ev.MemoryRevised, 2, memory_id="plan", content="v2", expected_revision=1)),
            (3, event(ev.KnowledgeStored, 3, memory_id="brief", domain="d", content="soon gone",
                      expires_at=base.ts + dt.timedelta(seconds=1))),
        ]  # fmt: skip
        refused = [
            (4, event(ev.MemoryRevised, 4, memory_id="plan", content="stale",
                      expected_revision=1)),
            (5, event(ev.KnowledgeStored, 5, memory_id="plan", domain="d", content="again",
                      expected_revision=0)),
            (6, event(ev.MemoryForgotten, 6, memory_id="plan", expected_revision=1)),
            (7, event(ev.MemoryRevised, 7, memory_id="ghost", content="x")),
            (8, event(ev.MemoryForgotten, 8, memory_id="ghost")),
            # 'brief' expired a second after it was stored; nothing has swept it yet.
            (9, event(ev.MemoryRevised, 9, 2, memory_id="brief", content="too late")),
        ]  # fmt: skip
        projection = backend.open()
        projection.apply([*applied, *refused])
        reference = backend.other()
        reference.apply(applied, upto=9)
        assert backend.memories(reference) == backend.memories(projection)
        assert 9 == projection.checkpoint

    @pytest.mark.parametrize("batching", ["one batch", "one event a batch"])
    def test_a_store_past_the_quota_is_not_applied_until_reapplied(
        self, backend: Backend, batching: str
    ) -> None:
        """Quotas, the same in every backend and however the events are batched: at a
        limit of 2 live memories a third store is refused, a memory expired by a store's
        time does not count, and a reapply after the limit is raised decides the refused
        stores again at its own place (one comes in, one is still over)."""
        base = contract_events("acme")[0]
        at = base.ts

        def event(cls: type[ev.Event], n: int, s: float = 0, **fields: Any) -> ev.Event:
            return cls(id=f"{base.id}-quota-{n}", tenant="acme", agent="a4",
                       ts=at + dt.timedelta(seconds=s), **fields)  # type: ignore[arg-type]  # fmt: skip

        def store(n: int, memory_id: str, s: float = 0, **fields: Any) -> tuple[int, ev.Event]:
            return n, event(ev.KnowledgeStored, n, s, memory_id=memory_id, domain="d",
                            content=f"the {memory_id} memory", **fields)  # fmt: skip

        expires = {"expires_at": at + dt.timedelta(seconds=10)}
        refused = {4: store(4, "c")[1], 6: store(6, "e", 20)[1]}
        batch = [
            (1, event(ev.QuotaSet, 1, memories=2)),
            store(2, "a"),
            store(3, "b", **expires),
            store(4, "c"),  # a and b live: refused
            store(5, "d", 20),  # b expired by then: applied
            store(6, "e", 20),  # a and d live: refused
            (7, event(ev.QuotaSet, 7, memories=3)),
            (8, event(ev.QuotaReapplied, 8, 30, seqs=(4, 6))),  # c comes in; e is a fourth
        ]
        projection = backend.open()
        if batching == "one batch":
            projection.apply(batch, reapplied=refused)
        else:
            for item in batch:
                projection.apply([item], reapplied=refused)
        reference = backend.other()
        reference.apply([store(2, "a"), store(3, "b", **expires), store(4, "c"),
                         store(5, "d", 20)], upto=8)  # fmt: skip
        assert backend.memories(reference) == backend.memories(projection)
        assert 8 == projection.checkpoint

    def test_removed_turns_leave_every_read(self, backend: Backend) -> None:
        """A removal by seq and a clear of the session take its turns out of the reads,
        whether they came in the removal's batch or earlier, and never a later turn or
        another session's; all in one batch, the same."""
        base = contract_events("acme")[0]

        def event(cls: type[ev.Event], n: int, **fields: Any) -> tuple[int, ev.Event]:
            return n, cls(id=f"{base.id}-turns-{n}", tenant="acme", agent="a1", ts=base.ts,
                          **fields)  # type: ignore[arg-type]  # fmt: skip

        def turn(n: int, session: str = "s") -> tuple[int, ev.Event]:
            return event(ev.ConversationTurn, n, session_id=session, role="user",
                         content=f"{session}{n}")  # fmt: skip

        first = [turn(1), turn(2), turn(3), turn(4, "other"),
                 event(ev.ConversationTurnsRemoved, 5, session_id="s", seqs=(3,))]  # fmt: skip
        removed = ev.ConversationTurnsRemoved
        second = [turn(6), event(removed, 7, session_id="s", seqs=(1,)),
                  event(removed, 8, session_id="s", clear=True), turn(9),
                  event(removed, 10, session_id="none", clear=True)]  # fmt: skip
        projection = backend.open()
        projection.apply(first)
        assert [("s", "s1"), ("s", "s2"), ("other", "other4")] == backend.turns(projection)
        projection.apply(second)
        assert [("other", "other4"), ("s", "s9")] == backend.turns(projection)
        at_once = backend.other()
        at_once.apply([*first, *second])
        assert backend.turns(projection) == backend.turns(at_once)

    async def test_a_live_projection_equals_a_rebuild(
        self, backend: Backend, nc: NatsClient
    ) -> None:
        """Fed live from its durable consumer in small batches, or replayed from the
        stream in one, the projection comes out the same, erasures included."""
        for tenant in ("acme", "beta"):
            mem = MemoryClient(nc, tenant=tenant, agent="a1")
            for e in contract_events(tenant):
                await mem.publish(e)
        last = (await nc.jetstream().stream_info(EVENT_STREAM)).state.last_seq
        live = backend.open()
        runner = LiveRunner(nc, live, batch_size=7, max_wait=0.05, consumer="contract")
        task = asyncio.create_task(runner.run())
        try:
            await wait_for(lambda: live.checkpoint >= last, what="the live projection")
        finally:
            runner.stop()
            await task
        assert 0 == runner.stats.dead_letters
        rebuilt = backend.other()
        await replay(nc, rebuilt)
        assert live.checkpoint == rebuilt.checkpoint
        assert backend.state(live) == backend.state(rebuilt)

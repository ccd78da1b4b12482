"""outcome: what became of one event (compare-and-set's answer to its writer)."""

from __future__ import annotations

from typing import Final

import msgspec
import nats.js.errors

from memstream.consumers.endpoints._serving import Worker
from memstream.projections import outcomes
from memstream.schemas.dead_letters import read_dead_letter
from memstream.schemas.errors import QueryError
from memstream.schemas.queries import OutcomeRequest, OutcomeResult
from memstream.schemas.subjects import DLQ_STREAM, dlq_subject

__all__ = ["outcome"]

# The most of a tenant's dead letters looked through for the event.
_DLQ_SCAN: Final = 10_000
_id_only = msgspec.json.Decoder(dict[str, object])


async def outcome(w: Worker, tenant: str, req: OutcomeRequest) -> OutcomeResult:
    if (req.event_id is None) == (req.seq is None):
        raise QueryError("bad_request", "outcome takes either event_id or seq")
    history = w.sources["history"]
    waiting = req.seq is not None and history.checkpoint < req.seq
    if waiting and not await history.wait_applied(req.seq or 0, req.wait_ms / 1000):
        raise QueryError(
            "not_caught_up",
            f"the history has applied up to seq {history.checkpoint}, not yet seq "
            f"{req.seq}, after waiting {req.wait_ms} ms: retry, or wait longer",
        )
    found: OutcomeResult | None = await w.read(
        outcomes.outcome, tenant, event_id=req.event_id, seq=req.seq
    )
    if found is None:
        found = await _dead_lettered(w, tenant, req)
    if found is None:
        what = f"event {req.event_id!r}" if req.event_id is not None else f"seq {req.seq}"
        raise QueryError(
            "not_found",
            f"tenant {tenant} has no {what} the history has applied: check the id, or "
            "ask with min_seq (or by seq) to wait for it",
        )
    return found


async def _dead_lettered(w: Worker, tenant: str, req: OutcomeRequest) -> OutcomeResult | None:
    """The event's dead letter, if the history filed one."""
    js = w.nc.jetstream()
    subject = dlq_subject("history", tenant)
    seq = 1
    for _ in range(_DLQ_SCAN):
        try:
            msg = await js.get_msg(DLQ_STREAM, seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return None
        letter = read_dead_letter(msg.seq or 0, msg.subject or "", msg.headers, 0)
        if req.seq is not None:
            hit = letter.source_seq == req.seq
        else:
            try:
                hit = _id_only.decode(msg.data or b"{}").get("id") == req.event_id
            except msgspec.DecodeError:
                hit = False
        if hit:
            kind = letter.source_subject.split(".")
            return OutcomeResult(
                seq=letter.source_seq,
                type=".".join(kind[2:4]) if len(kind) >= 4 else "",
                outcome="dead_lettered",
            )
        seq = (msg.seq or seq) + 1
    return None

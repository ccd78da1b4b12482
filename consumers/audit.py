"""The audit trail: a record of every query and admin operation, on ``memaudit.<tenant>``
in the stream ``MEMORY_AUDIT`` (kept 90 days). Writes need none: the event log is theirs.

A worker sends each record after its reply, as a plain publish the stream stores: the
asker waits for nothing more. Reading goes through the admin op ``audit``
(``memadm.audit.<tenant>``), which a tenant's admin users may ask for their own tenant:
no tenant may read the stream itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from typing import Any, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig, DeliverPolicy

from memstream.schemas.admin import AuditRequest, AuditResult
from memstream.schemas.errors import QueryError
from memstream.schemas.subjects import AUDIT_PREFIX, AUDIT_STREAM
from memstream.schemas.tenancy import AuditRecord

__all__ = ["Auditor", "count_results", "read_audit"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AuditRecord)
# How long a read waits for the next record the stream said it has.
_READ_WAIT_S = 5.0


def count_results(result: Any) -> int | None:
    """How many things an answer holds (hits, events, memories...); None for one that
    is not a list of things."""
    for name in ("hits", "events", "memories", "turns", "sources", "revisions", "records"):
        found = getattr(result, name, None)
        if isinstance(found, list):
            if name == "hits" and found and isinstance(found[0], list):
                return sum(len(h) for h in found)  # a batch of searches
            return len(found)
    return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Auditor:
    """Sends the audit records of one worker's connection."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc

    async def record(
        self,
        *,
        tenant: str,
        user: str,
        agent: str,
        kind: Literal["query", "admin"],
        op: str,
        body: bytes,
        results: int | None,
        seconds: float,
        outcome: str,
    ) -> None:
        record = AuditRecord(
            ts=_now(),
            tenant=tenant,
            user=user,
            agent=agent,
            kind=kind,
            op=op,
            digest=hashlib.sha256(body).hexdigest()[:32],
            results=results,
            ms=round(seconds * 1000, 3),
            outcome=outcome,
        )
        # The broker gone: the reply could not have gone either.
        with contextlib.suppress(nats.errors.Error, OSError):
            await self.nc.publish(f"{AUDIT_PREFIX}.{tenant}", _encoder.encode(record))


def _when(value: str | None, name: str, default: dt.datetime) -> dt.datetime:
    if value is None:
        return default
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            "bad_request",
            f"audit: {name} {value!r} is not a time: use RFC 3339, e.g. 2026-12-07T08:00:00Z",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


async def read_audit(nc: NatsClient, tenant: str, req: AuditRequest) -> AuditResult:
    """The tenant's records from ``since`` (default: an hour ago) to ``until``, oldest
    first, at most ``limit``."""
    now = dt.datetime.now(dt.UTC)
    since = _when(req.since, "since", now - dt.timedelta(hours=1))
    until = _when(req.until, "until", now)
    subject = f"{AUDIT_PREFIX}.{tenant}"
    js = nc.jetstream()
    try:
        info = await js.stream_info(AUDIT_STREAM, subjects_filter=subject)
    except nats.js.errors.NotFoundError:
        raise QueryError(
            "unavailable",
            f"there is no {AUDIT_STREAM} stream: memstream creates it at start "
            "(memstream up, or memstream streams ensure)",
        ) from None
    if not (info.state.subjects or {}).get(subject):
        return AuditResult(records=[])
    last = await js.get_last_msg(AUDIT_STREAM, subject)
    with contextlib.suppress(msgspec.DecodeError):
        if _when(_decoder.decode(last.data or b"").ts, "ts", now) < since:
            return AuditResult(records=[])  # nothing since: no consumer to wait on
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since,
    )
    sub = await js.subscribe(subject, ordered_consumer=True, config=config)
    records: list[AuditRecord] = []
    truncated = False
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=_READ_WAIT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                break  # nothing since `since`
            with contextlib.suppress(msgspec.DecodeError):
                record = _decoder.decode(msg.data)
                if _when(record.ts, "ts", now) > until:
                    break
                if (req.user is None or record.user == req.user) and (
                    req.op is None or record.op == req.op
                ):
                    if len(records) == req.limit:
                        truncated = True
                        break
                    records.append(record)
            if msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(nats.errors.Error, asyncio.CancelledError):
            await sub.unsubscribe()
    return AuditResult(records=records, truncated=truncated)

"""The audit trail as a table of the history, so ``memstream sql`` reads it beside the
events, memories and tasks it concerns.

The stream ``MEMORY_AUDIT`` is the truth and the ``audit`` table follows it: each batch
of records goes in with the stream sequence of its last one (``audit_state``) in one
transaction, so a restart resumes where the table stands and inserts nothing twice. The
table lives in the history's current file: a rebuild's new file starts without it and is
filled again from the stream (the 90 days the stream keeps). A tenant purge leaves the
trail, as it leaves the stream's; records go when the stream's retention takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import Any, Final

import duckdb
import msgspec
import nats.errors
import nats.js.errors
import pyarrow as pa
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig, DeliverPolicy

from memstream.consumers.decoding import stream_seq
from memstream.consumers.log import get_logger
from memstream.consumers.runner import applying
from memstream.consumers.service import ProjectionService
from memstream.consumers.streams import AUDIT_RETENTION_S
from memstream.projections.history import HistoryProjection
from memstream.schemas.partitions import WHOLE, Partition
from memstream.schemas.subjects import AUDIT_PREFIX, AUDIT_STREAM
from memstream.schemas.tenancy import AUDIT_ADMIN, AuditRecord

__all__ = ["AuditTable", "audit_checkpoint"]

log = get_logger("memstream.audit")
_decoder = msgspec.json.Decoder(AuditRecord)
_SCHEMA: Final = pa.schema(
    [
        ("seq", pa.int64()), ("ts", pa.timestamp("us")), ("tenant", pa.string()),
        ("user", pa.string()), ("agent", pa.string()), ("kind", pa.string()),
        ("op", pa.string()), ("digest", pa.string()), ("results", pa.int64()),
        ("ms", pa.float64()), ("outcome", pa.string()),
    ]
)  # fmt: skip
# How often records past the stream's retention are deleted from the table.
_PRUNE_EVERY_S: Final = 3600.0


def audit_checkpoint(con: duckdb.DuckDBPyConnection) -> int:
    """The stream sequence of the last audit record in the table (0: none)."""
    row = con.execute("SELECT max(last_seq) FROM audit_state").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _utc(ts: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return when.astimezone(dt.UTC).replace(tzinfo=None)


def _insert(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]], last_seq: int) -> None:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(_SCHEMA)
    table = pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, _SCHEMA, strict=True)], schema=_SCHEMA
    )
    con.execute("BEGIN TRANSACTION")
    try:
        if rows:
            con.from_arrow(table).insert_into("audit")
        con.execute("DELETE FROM audit_state")
        con.execute("INSERT INTO audit_state VALUES (?)", [last_seq])
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _prune(con: duckdb.DuckDBPyConnection, now: dt.datetime) -> None:
    before = (now - dt.timedelta(seconds=AUDIT_RETENTION_S)).replace(tzinfo=None)
    con.execute("DELETE FROM audit WHERE ts < ?", [before])


class AuditTable:
    """Keeps the history's ``audit`` table in step with the audit stream."""

    def __init__(
        self,
        nc: NatsClient,
        service: ProjectionService[HistoryProjection],
        partition: Partition = WHOLE,
        *,
        batch_size: int = 2000,
        max_wait: float = 0.2,
    ) -> None:
        """``partition``: the tenants whose records this history keeps (the records
        about no one tenant go to partition 0's)."""
        self.nc = nc
        self.service = service
        self.partition = partition
        self.batch_size = batch_size
        self.max_wait = max_wait
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._pruned = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-table")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _ours(self, tenant: str) -> bool:
        if tenant == AUDIT_ADMIN:
            return self.partition.index == 0
        return self.partition.owns(tenant)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._follow()
            except (nats.errors.Error, duckdb.Error, OSError) as err:
                # The broker away, the disk full: the table waits, the stream keeps all.
                log.warning("audit_table_behind", error=repr(err))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 2.0)

    async def _follow(self) -> None:
        """Follow the stream into the current history until that history is swapped."""
        history = self.service.projection
        cursor = history.cursor()
        try:
            last = await asyncio.to_thread(audit_checkpoint, cursor)
            js = self.nc.jetstream()
            config = (
                ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1
                )
                if last
                else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
            )
            try:
                sub = await js.subscribe(
                    f"{AUDIT_PREFIX}.>", stream=AUDIT_STREAM, ordered_consumer=True, config=config
                )
            except nats.js.errors.NotFoundError:
                raise nats.errors.Error(f"no {AUDIT_STREAM} stream yet") from None
            try:
                while not self._stopping.is_set() and self.service.projection is history:
                    rows, seq = await self._batch(sub)
                    if seq:
                        async with self.service.reading() as current:
                            if current is not history:
                                return  # swapped meanwhile: the new file starts over
                            # At ingest's priority: the searches it records come first.
                            await applying(_insert, cursor, rows, seq)
                    if time.monotonic() - self._pruned > _PRUNE_EVERY_S:
                        await asyncio.to_thread(_prune, cursor, dt.datetime.now(dt.UTC))
                        self._pruned = time.monotonic()
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.close()  # a swapped history's file may be closed already

    async def _batch(self, sub: Any) -> tuple[list[tuple[Any, ...]], int]:
        """Up to a batch of records: those of this partition's tenants as rows, and the
        stream sequence of the last record read (0: none came)."""
        rows: list[tuple[Any, ...]] = []
        seq = 0
        deadline = time.monotonic() + 1.0  # a first record may take a while: stop checks
        while len(rows) < self.batch_size:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=wait)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            seq = stream_seq(msg.reply)[0]  # not msg.metadata: objects for every record
            # Once one came, the rest of the batch is what follows at once.
            deadline = min(deadline, time.monotonic() + self.max_wait)
            try:
                r = _decoder.decode(msg.data)
                if not self._ours(r.tenant):
                    continue
                rows.append((seq, _utc(r.ts), r.tenant, r.user, r.agent, r.kind, r.op,
                             r.digest, r.results, r.ms, r.outcome))  # fmt: skip
            except (msgspec.DecodeError, ValueError):
                continue  # not a record of this version: the stream keeps it
        return rows, seq

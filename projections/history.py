"""The history projection: every event into DuckDB, exactly once, in stream order.

``apply(batch)`` writes a batch's rows and the projection's checkpoint in one transaction,
so a batch is either wholly applied or not at all; a redelivered event at or below the
checkpoint is skipped, and so is an event id already applied (JetStream drops duplicate
ids only within its window). Rows go in as Arrow tables, never row by row.

Most tables are filled by SQL from a staged batch (:mod:`projections._history_sql`);
``events.body`` keeps the bytes exactly as published. Memories (knowledge, solutions)
fold in Python with the fold both projections share (:mod:`projections.memory`),
starting from their stored rows, and are written back by key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from memstream.projections._history_fold import Item, RowFold, outcome_rows
from memstream.projections._history_sql import EVENTS_SQL, LOG_SQL, PARSE_SQL, STAGING, STATE_SQL
from memstream.projections._idindex import Hashes, IdIndex
from memstream.projections._tables import ARROW_SCHEMAS, DDL, KEYS, TABLES
from memstream.projections.base import Applied, Batch, check_writable, storage_guard
from memstream.projections.memory import MEMORY_KINDS, Key
from memstream.projections.priority import opened_below_reads
from memstream.projections.quotas import NO_LIMITS, Limits, Quotas
from memstream.schemas import events as ev
from memstream.schemas.events import AnyEvent, UnknownEvent

__all__ = ["HistoryProjection"]

_json = msgspec.json.Encoder()
# The events that carry a memory's text: an erase deletes them.
_ERASED_TYPES: Final = ("knowledge.stored", "solution.stored", "memory.revised")
_UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_US = dt.timedelta(microseconds=1)

# What DuckDB raises when the file, not an event, is the problem: I/O (a full or read-only
# disk, a corrupt file), a commit that could not be written, an invalidated database.
_STORAGE_ERRORS: Final = (
    OSError,
    duckdb.IOException,
    duckdb.TransactionException,
    duckdb.FatalException,
    duckdb.InternalException,
    duckdb.OutOfMemoryException,
    duckdb.PermissionException,
    duckdb.ConnectionException,
)


def _body(event: ev.AnyEvent | UnknownEvent) -> bytes:
    return event.raw if isinstance(event, UnknownEvent) else _json.encode(event)


def _naive(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(_UTC).replace(tzinfo=None)


class HistoryProjection:
    """The DuckDB history of every event. Not thread-safe: one writer at a time."""

    name = "history"

    def __init__(
        self, path: str | Path, *, read_only: bool = False, quota_defaults: Limits = NO_LIMITS
    ) -> None:
        """``quota_defaults``: the hard limits of a tenant that has set none."""
        self.path = Path(path)
        self.read_only = read_only
        # No file access from SQL: `memstream sql` must not become a way to read the disk.
        connect = functools.partial(
            duckdb.connect, str(self.path), read_only=read_only,
            config={"enable_external_access": False},
        )  # fmt: skip
        # The writer's database workers run the statements of each batch: ingest's work,
        # below the searches' (projections.priority). A reader's keep the usual priority.
        self.con = connect() if read_only else opened_below_reads(connect)
        # Times are UTC throughout; a filter's timestamp without a zone is read as UTC
        # whatever the host's zone, in this connection and every cursor of it.
        self.con.execute("SET GLOBAL TimeZone = 'UTC'")
        if not read_only:
            self.con.execute(DDL)
            # Checkpoint the WAL into the file less often than the 16 MB default: each
            # checkpoint costs more as the database grows, and ingest stalls meanwhile.
            self.con.execute("SET wal_autocheckpoint = '256MB'")
        row = self.con.execute(
            "SELECT last_seq FROM projection_state WHERE name = ?", [self.name]
        ).fetchone()
        self._checkpoint = int(row[0]) if row else 0
        self.quotas = Quotas(quota_defaults, self._own_limits())
        # Since this process opened it, per tenant: stores refused their quota, and
        # stores applied past a soft limit (for /metrics).
        self.quota_refused: Counter[str] = Counter()
        self.quota_warned: Counter[str] = Counter()
        self._ids: IdIndex | None = None
        # Per current-state table, the keys it may hold: a key not in here is new, so a
        # batch needs neither to read nor to delete its row (the common case).
        self._keys: dict[str, IdIndex] | None = None

    def _own_limits(self) -> dict[str, Limits]:
        try:
            rows = self.con.execute("SELECT tenant, memories, storage_bytes FROM quotas").fetchall()
        except duckdb.CatalogException:
            return {}  # a database from before quotas, opened to read
        return {t: Limits(int(m or 0), int(b or 0)) for t, m, b in rows}

    @property
    def checkpoint(self) -> int:
        return self._checkpoint

    def close(self) -> None:
        """Close the database; safe to call twice. A WAL is folded into the file first."""
        with contextlib.suppress(duckdb.ConnectionException):
            if not self.read_only:
                self.con.execute("CHECKPOINT")
            self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for another thread (queries) on the same database."""
        return self.con.cursor()

    # --- apply ------------------------------------------------------------------

    def _id_index(self) -> IdIndex:
        # Built on first use, so opening a database to read it costs nothing.
        if self._ids is None:
            # DuckDB's hash(), not one of ours: the index is rebuilt from the table by the
            # same DuckDB that hashes new batches, so the two always agree.
            hashes = self.con.execute(
                "SELECT (hash(tenant, id) & 9223372036854775807)::BIGINT AS h FROM "
                "(SELECT tenant, id FROM events UNION ALL SELECT tenant, id FROM erased_ids)"
            ).fetchnumpy()
            self._ids = IdIndex(hashes["h"])
        return self._ids

    def _key_indexes(self) -> dict[str, IdIndex]:
        if self._keys is None:
            self._keys = {}
            for table in MEMORY_KINDS:
                a, b = KEYS[table]
                pairs = self.con.execute(f"SELECT {a}, {b} FROM {table}").fetchall()
                # hash(), not a stable hash: this index lives and dies with the process.
                self._keys[table] = IdIndex(hash(p) for p in pairs)
        return self._keys

    def apply(
        self,
        batch: Batch,
        upto: int = 0,
        bodies: Sequence[bytes] | None = None,
        reapplied: Mapping[int, AnyEvent | UnknownEvent] | None = None,
    ) -> Applied:
        """Apply a batch in stream order; effect and checkpoint commit together.

        ``bodies`` are the events as published, aligned with ``batch``; without them
        each event is encoded again (same fields, unknown ones lost). ``reapplied``: the
        events the batch's quota.reapplied events name, by sequence, as the stream holds
        them. A failure of the database file itself is a StorageFailure; nothing of the
        batch is committed.
        """
        limits = dict(self.quotas.own)
        try:
            with storage_guard(self.name, self._part_of):
                return self._apply(batch, upto, bodies, reapplied or {})
        except BaseException:
            # The quotas as committed: the ledgers are read again from the database.
            self.quotas.own = limits
            self.quotas.forget_usage()
            raise

    def _part_of(self, err: BaseException) -> str | None:
        """The part of the storage ``err`` belongs to (the database file), or None."""
        return f"database {self.path}" if isinstance(err, _STORAGE_ERRORS) else None

    def check_storage(self) -> None:
        with storage_guard(self.name, self._part_of):
            check_writable("history database", self.path.parent)
            self.con.execute("SELECT last_seq FROM projection_state").fetchall()

    def _apply(
        self,
        batch: Batch,
        upto: int,
        bodies: Sequence[bytes] | None,
        reapplied: Mapping[int, AnyEvent | UnknownEvent],
    ) -> Applied:
        if bodies is None:
            bodies = [_body(e) for _, e in batch]
        if batch and batch[0][0] > self._checkpoint:
            fresh: list[Item] = [(s, e, b) for (s, e), b in zip(batch, bodies, strict=True)]
        else:
            fresh = [
                (s, e, b) for (s, e), b in zip(batch, bodies, strict=True) if s > self._checkpoint
            ]
        last_seq = max(fresh[-1][0] if fresh else 0, upto)
        if last_seq <= self._checkpoint:
            return Applied()
        with self._transaction():
            items, hashes = self._stage(fresh) if fresh else ([], None)
            fold = RowFold(items, self._key_indexes(), self.con, self.quotas, reapplied)
            if items:
                self._insert_logs(items)
            for table, (stale, rows) in fold.replacements().items():
                self._replace(table, stale, rows)
            self._insert("outcomes", outcome_rows(items, fold))
            self._save_quotas(fold)
            # A link from a memory that is not live is not applied: its row goes.
            unlinked = [
                seq for seq, e, _ in items
                if e.type == "memory.linked" and fold.decisions[seq].outcome != "applied"
            ]  # fmt: skip
            if unlinked:
                self.con.execute("DELETE FROM memory_links WHERE list_contains(?, seq)", [unlinked])
            erased = self._erase(items)
            self.con.execute(
                "INSERT OR REPLACE INTO projection_state VALUES (?, ?, ?)",
                [self.name, last_seq, _naive(dt.datetime.now(_UTC))],
            )
        self._checkpoint = last_seq
        self.quota_refused.update(fold.quota_refused)
        self.quota_warned.update(fold.quota_warned)
        if hashes is not None:
            self._id_index().add(hashes)
        for table, keys in fold.new_keys.items():
            self._key_indexes()[table].add(keys)
        return Applied(events=len(items), duplicates=len(fresh) - len(items), erased=tuple(erased))

    def _save_quotas(self, fold: RowFold) -> None:
        """The limits the batch set; the new decisions on the events it brought back."""
        for tenant, seq in sorted(fold.quota_set.items()):
            limits = self.quotas.limits(tenant)
            self.con.execute("DELETE FROM quotas WHERE tenant = ?", [tenant])
            self.con.execute(
                "INSERT INTO quotas VALUES (?, ?, ?, ?)",
                [tenant, limits.memories, limits.storage_bytes, seq],
            )
        if fold.reapplied:
            self.con.executemany(
                "UPDATE outcomes SET outcome = ?, revision = ?, current_revision = ?, "
                "message = ? WHERE seq = ?",
                [
                    [d.outcome, d.revision, d.current, d.message, seq]
                    for seq, d in fold.reapplied.items()
                ],
            )

    def _erase(self, items: list[Item]) -> list[int]:
        """Remove the earlier events of each memory forgotten with ``erase: true``: the
        bodies in ``events`` hold its text. Returns their stream sequences."""
        erased: list[int] = []
        for seq, e, _ in items:
            if isinstance(e, ev.MemoryForgotten) and e.erase:
                rows = self.con.execute(
                    """DELETE FROM events
                       WHERE tenant = ? AND seq < ? AND type IN (?, ?, ?) AND memory_id = ?
                       RETURNING tenant, id, seq""",
                    [e.tenant, seq, *_ERASED_TYPES, e.memory_id],
                ).fetchall()
                if rows:
                    self.con.executemany("INSERT INTO erased_ids VALUES (?, ?, ?)", rows)
                    # Their outcomes go with them, as from a rebuild, which never reads
                    # them (the ids stay, in erased_ids).
                    self.con.execute(
                        "DELETE FROM outcomes WHERE tenant = ? AND list_contains(?, seq)",
                        [e.tenant, [r[2] for r in rows]],
                    )
                erased += sorted(r[2] for r in rows)
        return erased

    def sweep(self, now: dt.datetime) -> int:
        """Delete the context values and memories whose time ran out by ``now`` (every
        read hides them from that moment already; their events stay in the log)."""
        swept = 0
        with self._transaction():
            for table in ("context", *MEMORY_KINDS):
                row = self.con.execute(
                    f"DELETE FROM {table} WHERE expires_at <= ?",
                    [now.astimezone(dt.UTC).replace(tzinfo=None)],
                ).fetchone()
                swept += int(row[0]) if row else 0
        return swept

    def purge_tenant(self, tenant: str) -> dict[str, int]:
        """Delete every row of ``tenant`` from every table, in one transaction; returns
        the rows removed per table."""
        removed: dict[str, int] = {}
        with self._transaction():
            self.con.execute("DELETE FROM erased_ids WHERE tenant = ?", [tenant])
            for table in TABLES:
                (n,) = self.con.execute(
                    f"SELECT count(*) FROM {table} WHERE tenant = ?", [tenant]
                ).fetchone()  # type: ignore[misc]
                if n:
                    self.con.execute(f"DELETE FROM {table} WHERE tenant = ?", [tenant])
                    removed[table] = int(n)
        self.quotas.drop(tenant)
        # The id and key indexes may hold the tenant's hashes: rebuild them when needed.
        self._ids = None
        self._keys = None
        return removed

    def _stage(self, fresh: list[Item]) -> tuple[list[Item], Hashes]:
        """Register the batch as ``_staging``, without ids applied before; their hashes."""
        events = [i[1] for i in fresh]
        staging = pa.Table.from_arrays(
            [
                pa.array([i[0] for i in fresh], pa.int64()),
                pa.array([e.id for e in events], pa.string()),
                pa.array([e.type for e in events], pa.string()),
                pa.array([(e.ts - _EPOCH) // _US for e in events], pa.int64()),
                pa.array([i[2] for i in fresh], pa.binary()),
                pa.array([e.tenant for e in events], pa.string()),
            ],
            schema=STAGING,
        )
        self.con.register("_staging", staging)
        hashes = self.con.execute(
            "SELECT (hash(tenant, id) & 9223372036854775807)::BIGINT AS h FROM _staging"
        ).fetchnumpy()["h"]
        maybe = self._id_index().contains(hashes)
        repeated = len(np.unique(hashes)) != len(hashes)
        if not maybe.any() and not repeated:
            return fresh, hashes
        # Rare: an id seen before (past JetStream's window) or twice in this batch. Ids
        # are a tenant's own: another tenant using the same id is another event.
        candidates = [e.id for e, m in zip(events, maybe, strict=True) if m]
        known = (
            {
                (r[0], r[1])
                for r in self.con.execute(
                    "SELECT tenant, id FROM events WHERE list_contains($1, id) UNION ALL "
                    "SELECT tenant, id FROM erased_ids WHERE list_contains($1, id)",
                    [candidates],
                ).fetchall()
            }
            if candidates
            else set()
        )
        keep: list[bool] = []
        seen: set[tuple[str, str]] = set()
        for e in events:
            key = (e.tenant, e.id)
            ok = key not in known and key not in seen
            seen.add(key)
            keep.append(ok)
        mask = np.array(keep, dtype=bool)
        self.con.unregister("_staging")
        self.con.register("_staging", staging.filter(pa.array(mask)))
        return [i for i, k in zip(fresh, keep, strict=True) if k], hashes[mask]

    def _insert_logs(self, items: list[Item]) -> None:
        types = {i[1].type for i in items}
        try:
            self.con.execute(PARSE_SQL)
            self.con.execute(EVENTS_SQL)
            for type_, sql in LOG_SQL.items():
                if type_ in types:
                    self.con.execute(sql)
            for folded, statements in STATE_SQL:
                if types & folded:
                    for sql in statements:
                        self.con.execute(sql)
        finally:
            self.con.unregister("_staging")
            self.con.execute("DROP TABLE IF EXISTS _batch")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _arrow(self, table: str, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
        schema = ARROW_SCHEMAS[table]
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema)
        arrays = []
        for values, field in zip(columns, schema, strict=True):
            if pa.types.is_timestamp(field.type):
                # Aware datetimes in, UTC instants out, tz dropped: one vectorised cast.
                arr = pa.array(values, pa.timestamp("us", tz="UTC")).cast(field.type)
            else:
                arr = pa.array(values, field.type)
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=schema)

    def _insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            # A relation insert costs less per statement than register + INSERT ... SELECT.
            self.con.from_arrow(self._arrow(table, rows)).insert_into(table)

    def _replace(self, table: str, stale: list[Key], rows: list[tuple[Any, ...]]) -> None:
        """Delete the rows of ``stale`` keys, then insert the batch's final rows."""
        if stale:
            a, b = KEYS[table]
            keys = pa.table({a: [k[0] for k in stale], b: [k[1] for k in stale]})
            self.con.register("_keys", keys)
            try:
                self.con.execute(
                    f"DELETE FROM {table} USING _keys "
                    f"WHERE {table}.{a} = _keys.{a} AND {table}.{b} = _keys.{b}"
                )
            finally:
                self.con.unregister("_keys")
        self._insert(table, rows)

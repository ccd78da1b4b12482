"""The read API over the history's memory tables: ``get``, ``list``, ``revisions`` and
the count of live memories.

A memory is live until it is forgotten or its ``expires_at`` passes; the moment it
passes, every read here stops returning it (the sweep deletes the row later). ``list``
pages by keyset, not offset: the cursor holds the last memory's (time, sequence), so a
page starts right after it however many memories arrived meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any, Final

import duckdb
import msgspec

from memstream.projections.filter_sql import compile_sql
from memstream.projections.quotas import Limits
from memstream.schemas.errors import QueryError
from memstream.schemas.filters import Node
from memstream.schemas.queries import Link, LinkNode, LinksResult, Memory, QuotaUsage, Revision

__all__ = [
    "MEMORY_COLUMNS",
    "edges",
    "get_memory",
    "links",
    "list_memories",
    "live_counts",
    "revisions",
]

# The memory tables as one relation of the columns a filter and a Memory read.
_COMMON: Final = (
    "memory_id, agent, tags, metadata, task_id, user_id, run_id, project, created_at, "
    "updated_at, created_seq, updated_seq, expires_at, revision"
)
_BRANCHES: Final = {
    "knowledge": f"SELECT 'knowledge' AS kind, domain, content, NULL::VARCHAR AS problem, "
    f"NULL::VARCHAR AS solution, {_COMMON} FROM knowledge WHERE tenant = $tenant",
    "solutions": f"SELECT 'solutions' AS kind, NULL::VARCHAR AS domain, NULL::VARCHAR AS "
    f"content, problem, solution, {_COMMON} FROM solutions WHERE tenant = $tenant",
}
MEMORY_COLUMNS: Final = ("kind", "domain", "content", "problem", "solution", *_COMMON.split(", "))
_LIVE: Final = "(expires_at IS NULL OR expires_at > $now)"
# How many stream sequences a page looks among first for its bound (see _page_bound).
_FIRST_SPAN: Final = 20_000
_SEQ_OF: Final = {"created_at": "created_seq", "updated_at": "updated_seq"}
_REVISION_TYPES: Final = (
    "knowledge.stored",
    "solution.stored",
    "memory.revised",
    "memory.forgotten",
)
# Envelope members: a revision's ``fields`` are what the event set besides them.
_ENVELOPE: Final = frozenset(
    {"type", "id", "tenant", "agent", "ts", "v", "memory_id", "correlation_id", "causation_id"}
)
_json = msgspec.json.Decoder()


class _Cursor(msgspec.Struct, frozen=True, array_like=True):
    order_by: str
    descending: bool
    at_us: int
    seq: int


_cursor_json = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(_Cursor)
_EPOCH: Final = dt.datetime(1970, 1, 1)


def _naive(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.UTC).replace(tzinfo=None)


def _utc(ts: dt.datetime | None) -> dt.datetime | None:
    return ts.replace(tzinfo=dt.UTC) if ts is not None else None


def _memories(kinds: tuple[str, ...]) -> str:
    return " UNION ALL ".join(_BRANCHES[k] for k in kinds)


def _memory(row: tuple[Any, ...]) -> Memory:
    r = dict(zip(MEMORY_COLUMNS, row, strict=True))
    return Memory(
        kind=r["kind"],
        memory_id=r["memory_id"],
        agent=r["agent"],
        created_at=_utc(r["created_at"]),  # type: ignore[arg-type]  # never null
        updated_at=_utc(r["updated_at"]),  # type: ignore[arg-type]
        revision=r["revision"] or 1,
        seq=r["updated_seq"],
        content=r["content"],
        domain=r["domain"],
        problem=r["problem"],
        solution=r["solution"],
        tags=tuple(r["tags"] or ()),
        metadata=_json.decode(r["metadata"]) if r["metadata"] else {},
        task_id=r["task_id"],
        user_id=r["user_id"],
        run_id=r["run_id"],
        project=r["project"],
        expires_at=_utc(r["expires_at"]),
    )


def get_memory(
    con: duckdb.DuckDBPyConnection, tenant: str, memory_id: str, now: dt.datetime
) -> Memory | None:
    """The memory now; None when there is none, it was forgotten, or it expired."""
    row = con.execute(
        f"SELECT {', '.join(MEMORY_COLUMNS)} FROM ({_memories(('knowledge', 'solutions'))}) "
        f"WHERE memory_id = $id AND {_LIVE}",
        {"tenant": tenant, "id": memory_id, "now": _naive(now)},
    ).fetchone()
    return _memory(row) if row else None


def _encode_cursor(cursor: _Cursor) -> str:
    return base64.urlsafe_b64encode(_cursor_json.encode(cursor)).decode().rstrip("=")


def _decode_cursor(text: str, order_by: str, descending: bool) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise QueryError(
            "bad_request", "list: cursor is not one this service gave: pass next_cursor as is"
        ) from None
    if cursor.order_by != order_by or cursor.descending != descending:
        raise QueryError(
            "bad_request",
            "list: the cursor belongs to a listing in another order: keep order_by and "
            "descending as they were for the first page",
        )
    return cursor


def list_memories(
    con: duckdb.DuckDBPyConnection,
    tenant: str,
    now: dt.datetime,
    *,
    kinds: tuple[str, ...] = ("knowledge", "solutions"),
    filter: Node | None = None,
    order_by: str = "created_at",
    descending: bool = True,
    limit: int = 100,
    cursor: str | None = None,
    id_suffix: str | None = None,
) -> tuple[list[Memory], str | None]:
    """A page of the live memories of ``kinds`` that match ``filter`` (and whose id ends
    with ``id_suffix``), and the cursor of the next page (None when this is the last)."""
    if not kinds:
        return [], None  # the filter rules out every kind asked for
    seq_col = _SEQ_OF[order_by]
    where = [_LIVE]
    params: dict[str, Any] = {"tenant": tenant, "now": _naive(now), "limit": limit + 1}
    if filter is not None:
        sql, values = compile_sql(filter)
        where.append(sql)
        params.update(values)
    if id_suffix is not None:
        where.append("ends_with(memory_id, $id_suffix)")
        params["id_suffix"] = id_suffix
    if cursor is not None:
        after = _decode_cursor(cursor, order_by, descending)
        cmp = "<" if descending else ">"
        where.append(f"({order_by} {cmp} $at OR ({order_by} = $at AND {seq_col} {cmp} $seq))")
        params["at"] = _EPOCH + dt.timedelta(microseconds=after.at_us)
        params["seq"] = after.seq
    direction = "DESC" if descending else "ASC"
    order = f"ORDER BY {order_by} {direction}, {seq_col} {direction} LIMIT $limit"
    bound = _page_bound(con, where, params, kinds, order_by, seq_col, descending, cursor)
    if bound is not None:
        # Every row of the page sorts at or before this one: the engine skips the row
        # groups beyond it by their min/max (the tables grow in stream order).
        cmp = ">" if descending else "<"
        where.append(
            f"({order_by} {cmp} $bound_at "
            f"OR ({order_by} = $bound_at AND {seq_col} {cmp}= $bound_seq))"
        )
        params["bound_at"], params["bound_seq"] = bound
    rows = con.execute(
        f"SELECT {', '.join(MEMORY_COLUMNS)} FROM ({_memories(kinds)}) "
        f"WHERE {' AND '.join(where)} {order}",
        params,
    ).fetchall()
    page = [_memory(r) for r in rows[:limit]]
    if len(rows) <= limit:
        return page, None
    last = dict(zip(MEMORY_COLUMNS, rows[limit - 1], strict=True))
    at_us = (last[order_by] - _EPOCH) // dt.timedelta(microseconds=1)
    return page, _encode_cursor(_Cursor(order_by, descending, at_us, last[seq_col]))


def _page_bound(
    con: duckdb.DuckDBPyConnection,
    where: list[str],
    params: dict[str, Any],
    kinds: tuple[str, ...],
    order_by: str,
    seq_col: str,
    descending: bool,
    cursor: str | None,
) -> tuple[dt.datetime, int] | None:
    """The (time, seq) of the last row a page can hold, found among the memories whose
    sequence is near where the page starts; None when those are too few to tell (the
    page is then read without a bound).

    A page sorts a tenant's memories; sorting them all took 105 ms at 1,000,000. Its
    rows are almost always among the memories written last (or next after the cursor),
    and the (limit + 1)-th of those bounds the page exactly: at least that many rows
    sort at or before it, so no row of the page sorts after it."""
    last = con.execute("SELECT max(last_seq) FROM projection_state").fetchone()
    top = int(last[0]) if last and last[0] is not None else 0
    anchor = params["seq"] if cursor is not None else (top if descending else 0)
    direction = "DESC" if descending else "ASC"
    span = max(_FIRST_SPAN, params["limit"] * 20)
    while span < top:
        window = f"{seq_col} > {anchor - span}" if descending else f"{seq_col} < {anchor + span}"
        found = con.execute(
            f"SELECT {order_by}, {seq_col} FROM ({_memories(kinds)}) "
            f"WHERE {' AND '.join(where)} AND {window} "
            f"ORDER BY {order_by} {direction}, {seq_col} {direction} LIMIT $limit",
            params,
        ).fetchall()
        if len(found) == params["limit"]:
            at, seq = found[-1]
            return at, int(seq)
        span *= 8
    return None


def revisions(con: duckdb.DuckDBPyConnection, tenant: str, memory_id: str) -> list[Revision]:
    """Every stored, revised and forgotten event of the memory, oldest first (an erased
    memory's earlier events are gone from the log, and so from here)."""
    rows = con.execute(
        """SELECT seq, ts, agent, type, body FROM events
           WHERE tenant = $tenant AND memory_id = $id AND list_contains($types, type)
           ORDER BY seq""",
        {"tenant": tenant, "types": list(_REVISION_TYPES), "id": memory_id},
    ).fetchall()
    out = []
    for seq, ts, agent, type_, body in rows:
        fields = {k: v for k, v in _json.decode(body).items() if k not in _ENVELOPE}
        out.append(Revision(seq=seq, ts=_utc(ts), agent=agent, type=type_, fields=fields))  # type: ignore[arg-type]
    return out


def _memories_by_id(
    con: duckdb.DuckDBPyConnection, tenant: str, ids: list[str], now: dt.datetime
) -> dict[str, Memory]:
    if not ids:
        return {}
    rows = con.execute(
        f"SELECT {', '.join(MEMORY_COLUMNS)} FROM ({_memories(('knowledge', 'solutions'))}) "
        f"WHERE list_contains($ids, memory_id) AND {_LIVE}",
        {"tenant": tenant, "ids": ids, "now": _naive(now)},
    ).fetchall()
    return {m.memory_id: m for m in map(_memory, rows)}


def edges(
    con: duckdb.DuckDBPyConnection,
    tenant: str,
    ids: list[str],
    *,
    direction: str = "both",
    relation: str | None = None,
    limit: int = 1000,
) -> list[Link]:
    """The links from (``out``), to (``in``) or both of the memories ``ids``, oldest
    first."""
    sides = {"out": ["from_id"], "in": ["to_id"], "both": ["from_id", "to_id"]}[direction]
    touches = " OR ".join(f"list_contains($ids, {side})" for side in sides)
    where = f"tenant = $tenant AND ({touches})"
    params: dict[str, Any] = {"tenant": tenant, "ids": ids, "limit": limit}
    if relation is not None:
        where += " AND relation = $relation"
        params["relation"] = relation
    rows = con.execute(
        f"SELECT from_id, to_id, relation, seq FROM memory_links WHERE {where} "
        "ORDER BY seq LIMIT $limit",
        params,
    ).fetchall()
    return [Link(from_id=f, to_id=t, relation=r, seq=q) for f, t, r, q in rows]


def links(
    con: duckdb.DuckDBPyConnection,
    tenant: str,
    memory_id: str,
    now: dt.datetime,
    *,
    direction: str = "both",
    relation: str | None = None,
    depth: int = 1,
    limit: int = 100,
) -> LinksResult:
    """The neighbourhood of ``memory_id`` to ``depth`` steps: a breadth-first walk over
    the links, nearest first, at most ``limit`` links. A link whose end no memory has
    now (never stored, forgotten, expired) is returned with that end ``missing``."""
    seen = {memory_id}
    order = [memory_id]
    found: list[Link] = []
    frontier = [memory_id]
    known_seqs: set[int] = set()
    truncated = False
    for _ in range(depth):
        step = edges(con, tenant, frontier, direction=direction, relation=relation, limit=limit + 1)
        frontier = []
        for link in step:
            if link.seq in known_seqs:
                continue
            if len(found) == limit:
                truncated = True
                break
            known_seqs.add(link.seq)
            found.append(link)
            for end in (link.from_id, link.to_id):
                if end not in seen:
                    seen.add(end)
                    order.append(end)
                    frontier.append(end)
        if truncated or not frontier:
            break
    by_id = _memories_by_id(con, tenant, order, now)
    nodes = [
        LinkNode(**msgspec.structs.asdict(by_id[i])) if i in by_id
        else LinkNode(memory_id=i, missing=True)
        for i in order
    ]  # fmt: skip
    return LinksResult(nodes=nodes, edges=found, truncated=truncated)


def live_counts(con: duckdb.DuckDBPyConnection, tenant: str, now: dt.datetime) -> dict[str, int]:
    """The tenant's live memories by kind (collaborations too)."""
    params = {"tenant": tenant, "now": _naive(now)}
    rows = con.execute(
        f"SELECT kind, count(*) FROM ({_memories(('knowledge', 'solutions'))}) "
        f"WHERE {_LIVE} GROUP BY kind",
        params,
    ).fetchall()
    counts = {kind: 0 for kind in ("knowledge", "solutions")} | dict(rows)
    (collabs,) = con.execute(
        "SELECT count(*) FROM collaborations WHERE tenant = ?", [tenant]
    ).fetchone()  # type: ignore[misc]
    counts["collaborations"] = int(collabs)
    return counts


def quota_usage(
    con: duckdb.DuckDBPyConnection, tenant: str, now: dt.datetime, defaults: Limits
) -> QuotaUsage:
    """The tenant's live memories and their text's bytes against its hard quotas (its
    own, else ``defaults``), as the projections count them (projections.quotas)."""
    (count, size) = con.execute(
        "SELECT count(*), coalesce(sum(n), 0)::BIGINT FROM ("
        "SELECT coalesce(strlen(content), 0) AS n FROM knowledge "
        f"WHERE tenant = $tenant AND {_LIVE} UNION ALL "
        "SELECT coalesce(strlen(problem), 0) + coalesce(strlen(solution), 0) FROM solutions "
        f"WHERE tenant = $tenant AND {_LIVE})",
        {"tenant": tenant, "now": _naive(now)},
    ).fetchone()  # type: ignore[misc]
    try:
        own = con.execute(
            "SELECT memories, storage_bytes FROM quotas WHERE tenant = ?", [tenant]
        ).fetchone()
    except duckdb.CatalogException:
        own = None  # a database from before quotas
    limits = defaults if own is None else Limits(int(own[0] or 0), int(own[1] or 0))
    return QuotaUsage(
        memories=int(count),
        memories_limit=limits.memories,
        storage_bytes=int(size),
        storage_limit_bytes=limits.storage_bytes,
        warning=limits.status(tenant, int(count), int(size)),
    )

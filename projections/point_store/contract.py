"""The point store's contract: what a point, a search and a store are, and the names of
the fields and vectors every engine keeps."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from memstream.projections.point_store.sparse import Sparse
from memstream.schemas.filters import Node

__all__ = [
    "DENSE",
    "FLOAT_FIELDS",
    "FULL_SCAN_KB",
    "KEYWORD_FIELDS",
    "SPARSE",
    "SPARSE_FULL_SCAN",
    "STATE_ID",
    "STATE_TENANT",
    "TENANT_GRAPH_M",
    "Condition",
    "Found",
    "Mode",
    "PointStore",
    "PointStores",
    "Search",
    "StorePoint",
    "found_points",
    "new_generation",
    "point_id",
]

DENSE: Final = "dense"
SPARSE: Final = "bm25"
# The state point's tenant: no tenant id can be it (tenant ids start with a letter or
# digit), so no search, count or purge of a tenant ever reaches it.
STATE_TENANT: Final = "_memstream"
STATE_ID: Final = "00000000-0000-0000-0000-000000000001"
_NAMESPACE_BYTES: Final = uuid.UUID("6f1d0c4e-3b7a-5d2e-9a41-8c0f2b7e5d13").bytes
# The payload fields searches (and the read API) filter on, and how they are indexed.
KEYWORD_FIELDS: Final = (
    "kind", "agent", "domain", "tags", "session_id", "task_id", "user_id", "run_id", "project",
    "meta_kv",
)  # fmt: skip
FLOAT_FIELDS: Final = ("ts_epoch", "created_epoch", "expires_epoch")

# One HNSW graph per tenant (links of this many neighbours), none over all tenants, and
# no extra links for the other indexed fields: every search is of one tenant, and the
# other fields filter inside its graph. Measured here (10 x 10,000, 2 cores): the index
# builds in 26 s, not 101 s, and a hybrid query of one tenant answers in 1.3 ms p50,
# not 4.1 ms (dense 0.37 ms, not 0.68 ms).
TENANT_GRAPH_M: Final = 16
# On a Qdrant server, a tenant's points are searched through its graph once their dense
# vectors pass this many KB (1,000 KB: ~670 points at 384 dimensions, ~170 at 1,536),
# exactly below. The engine's default, 10,000 KB, left tenants of up to ~6,700 memories
# to the exact search: measured here at 10 x 5,000, a hybrid query of one tenant took
# 2.7 ms p50 (dense 1.8) exactly, and 1.3 ms (dense 0.8) through the graph. Qdrant Edge
# reads int8 copies of the vectors instead, up to far larger tenants (edge.SCAN_KB).
FULL_SCAN_KB: Final = 1_000
# The keyword side of a search reads the inverted index once a segment holds this many
# points of the tenant, and scores each of them below. The engine's default, 5,000,
# left every segment of a tenant of up to 5,000 memories a segment to the full scan: 0.5
# ms of a hybrid query's 0.8 (10 x 5,650 points, 3 segments, in one process, idle). Since
# term ids are the tenant's own (sparse.TENANT_TERMS), the index reads only the tenant's
# postings of the query's words, never more than the scan reads: keyword 0.51 -> 0.04
# ms p50, hybrid 0.82 -> 0.22 ms (p99 1.13 -> 0.52), the same hits and scores. Set when a
# generation is made: one made before keeps the engine's default until rebuilt.
SPARSE_FULL_SCAN: Final = 100

Mode = Literal["hybrid", "dense", "keyword"]


def point_id(tenant: str, kind: str, ref: str) -> str:
    """The point of a (tenant, kind, ref): upserts and deletes repeat safely, and the same
    memory id in two tenants is two points. It is uuid5 of the three, made here without
    the uuid module's objects (a tenth of the apply's time otherwise)."""
    name = f"{tenant}\x00{kind}\x00{ref}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class StorePoint:
    id: str
    dense: Sequence[float]
    sparse: Sparse
    payload: dict[str, Any]


@dataclass(frozen=True)
class Condition:
    """One condition on a payload field: ``any_of`` (the field, or one of a list field's
    values, is one of them), or a range on a number (``gte`` / ``lt``)."""

    key: str
    any_of: tuple[Any, ...] = ()
    gte: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class Search:
    """One search of one tenant's points: ``must`` all hold, and ``filter`` (the filter
    language's tree); a point past its expiry at ``now`` is never found; ``min_score``
    is the least dense similarity a hit may have (in every mode that has a dense side)."""

    tenant: str
    dense: Sequence[float] | None
    sparse: Sparse | None
    limit: int
    mode: Mode = "hybrid"
    must: tuple[Condition, ...] = ()
    min_score: float | None = None
    recency_half_life_s: float | None = None
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    filter: Node | None = None


@dataclass(frozen=True)
class Found:
    id: str
    score: float
    payload: dict[str, Any]


class PointStore(Protocol):
    """One generation's points."""

    generation: str

    def upsert(self, points: Sequence[StorePoint]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def retrieve(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The payloads of the points among ``ids`` that exist."""
        ...

    def delete_tenant(self, tenant: str) -> int:
        """Delete every point of ``tenant``; how many there were."""
        ...

    def delete_expired(self, now: dt.datetime) -> int:
        """Delete every point whose expiry passed by ``now``; how many there were."""
        ...

    def count(self, tenant: str) -> int: ...

    def points(self) -> int:
        """How many points the store holds, every tenant's (the state's too)."""
        ...

    def payloads(
        self, tenant: str | None = None, *, where: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every point's payload (of ``tenant``, or of all), the state's excepted; with
        ``where``, only those whose filtered fields hold these values."""
        ...

    def search(self, search: Search) -> list[Found]: ...

    def read_state(self) -> dict[str, Any]: ...

    def check(self) -> None:
        """Raise when the store cannot take a write now (its disk, its server)."""
        ...

    def write_state(self, state: dict[str, Any]) -> None:
        """Durable once it returns, with every point written before it."""
        ...

    def close(self) -> None: ...


class PointStores(Protocol):
    """The generations of one engine, and which one is in use."""

    def current(self) -> str | None: ...

    def generations(self) -> list[str]: ...

    def open(self, generation: str, dimensions: int) -> PointStore:
        """The generation's store, made (for vectors of ``dimensions``) if new."""
        ...

    def make_current(self, generation: str) -> str | None:
        """Put ``generation`` in use atomically; the one in use before, if any."""
        ...

    def drop(self, generation: str) -> None: ...

    def owe_purge(self, generation: str, tenant: str) -> bool:
        """Whether ``generation`` is in another process's hands (its indexes being built
        there): then it is not opened here, and the tenant's purge is kept for its return
        (:meth:`EdgeStores.take_back`)."""
        ...

    def close(self) -> None: ...


def new_generation() -> str:
    return uuid.uuid4().hex[:12]


def found_points(points: Sequence[Any]) -> list[Found]:
    return [Found(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

"""A Qdrant server through qdrant-client (``MEMSTREAM_QDRANT_URL``): a collection per
generation behind the alias ``ms_points``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from memstream.projections.filter_payload import EXPIRES, compile_must, live
from memstream.projections.point_store.contract import (
    DENSE,
    FLOAT_FIELDS,
    FULL_SCAN_KB,
    KEYWORD_FIELDS,
    SPARSE,
    SPARSE_FULL_SCAN,
    STATE_ID,
    STATE_TENANT,
    TENANT_GRAPH_M,
    Condition,
    Found,
    Search,
    StorePoint,
    found_points,
)
from memstream.projections.point_store.plan import (
    RRF_K,
    final_filter,
    keyword_side,
    query_plan,
)
from memstream.projections.point_store.sparse import TENANT_TERMS, tenant_terms, terms_of

__all__ = ["ServerStore", "ServerStores"]

_ALIAS: Final = "ms_points"
_COLLECTION_PREFIX: Final = "ms_points__"


class _ServerFilters:
    """Builds qdrant-client's conditions for the filter language."""

    @staticmethod
    def match(key: str, value: str) -> Any:
        from qdrant_client import models as m

        return m.FieldCondition(key=key, match=m.MatchValue(value=value))

    @staticmethod
    def match_any(key: str, values: list[str]) -> Any:
        from qdrant_client import models as m

        return m.FieldCondition(key=key, match=m.MatchAny(any=values))

    @staticmethod
    def number(key: str, **bounds: float) -> Any:
        from qdrant_client import models as m

        return m.FieldCondition(key=key, range=m.Range(**bounds))

    @staticmethod
    def instant(key: str, **bounds: str) -> Any:
        from qdrant_client import models as m

        instants = {k: dt.datetime.fromisoformat(v) for k, v in bounds.items()}
        return m.FieldCondition(key=key, range=m.DatetimeRange(**instants))

    @staticmethod
    def empty(key: str) -> Any:
        from qdrant_client import models as m

        return m.IsEmptyCondition(is_empty=m.PayloadField(key=key))

    @staticmethod
    def group(
        *, must: list[Any] | None = None, should: list[Any] | None = None,
        must_not: list[Any] | None = None,
    ) -> Any:  # fmt: skip
        from qdrant_client import models as m

        return m.Filter(must=must, should=should, must_not=must_not)


def _server_filter(tenant: str, must: tuple[Condition, ...], search: Search | None = None) -> Any:
    from qdrant_client import models as m

    conditions: list[Any] = [m.FieldCondition(key="tenant", match=m.MatchValue(value=tenant))]
    if search is not None:
        conditions.append(live(_ServerFilters, search.now))
        if search.filter is not None:
            conditions += compile_must(search.filter, _ServerFilters)
    for c in must:
        if c.any_of:
            match: Any = (
                m.MatchValue(value=c.any_of[0])
                if len(c.any_of) == 1
                else m.MatchAny(any=list(c.any_of))
            )
            conditions.append(m.FieldCondition(key=c.key, match=match))
        if c.gte is not None or c.lt is not None:
            conditions.append(m.FieldCondition(key=c.key, range=m.Range(gte=c.gte, lt=c.lt)))
    return m.Filter(must=conditions)


class _ServerKit:
    """Builds qdrant-client's query objects for :func:`_plan`."""

    @staticmethod
    def prefetch(limit: int, query: Any, flt: Any, threshold: float | None) -> Any:
        from qdrant_client import models as m

        vector, using = query
        return m.Prefetch(
            query=vector, using=using, limit=limit, filter=flt, score_threshold=threshold
        )

    @staticmethod
    def fuse(limit: int, sides: list[Any], flt: Any) -> Any:
        from qdrant_client import models as m

        return m.Prefetch(
            prefetch=sides, query=m.RrfQuery(rrf=m.Rrf(k=RRF_K)), limit=limit, filter=flt
        )

    @staticmethod
    def rescore(limit: int, inner: Any, query: Any, flt: Any, threshold: float) -> Any:
        from qdrant_client import models as m

        vector, using = query
        return m.Prefetch(
            prefetch=[inner],
            query=vector,
            using=using,
            limit=limit,
            filter=flt,
            score_threshold=threshold,
        )

    @staticmethod
    def rrf() -> Any:
        from qdrant_client import models as m

        return m.RrfQuery(rrf=m.Rrf(k=RRF_K))

    @staticmethod
    def recency(search: Search) -> Any:
        from qdrant_client import models as m

        decay = m.ExpDecayExpression(
            exp_decay=m.DecayParamsExpression(
                x="ts_epoch",
                target=search.now.timestamp(),
                scale=search.recency_half_life_s,
                midpoint=0.5,
            )
        )
        return m.FormulaQuery(
            formula=m.MultExpression(mult=["$score", decay]), defaults={"ts_epoch": 0.0}
        )


class ServerStore:
    """One generation: a collection on a Qdrant server."""

    def __init__(self, client: Any, generation: str, dimensions: int, prefix: str = "") -> None:
        from qdrant_client import models as m
        from qdrant_client.http.exceptions import UnexpectedResponse

        self.client = client
        self.generation = generation
        self.name = (prefix or _COLLECTION_PREFIX) + generation
        if client.collection_exists(self.name):
            self.terms = terms_of(self.read_state())
            return
        self.terms = TENANT_TERMS
        client.create_collection(
            self.name,
            vectors_config={DENSE: m.VectorParams(size=dimensions, distance=m.Distance.COSINE)},
            sparse_vectors_config={
                SPARSE: m.SparseVectorParams(
                    modifier=m.Modifier.IDF,
                    index=m.SparseIndexParams(full_scan_threshold=SPARSE_FULL_SCAN),
                )
            },
            hnsw_config=m.HnswConfigDiff(  # as on Edge
                m=0, payload_m=TENANT_GRAPH_M, full_scan_threshold=FULL_SCAN_KB
            ),
        )
        client.create_payload_index(
            self.name,
            "tenant",
            m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True),
        )
        fields = [
            *(
                (name, m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, enable_hnsw=False),
                 m.PayloadSchemaType.KEYWORD)
                for name in KEYWORD_FIELDS
            ),
            *(
                (name, m.FloatIndexParams(type=m.FloatIndexType.FLOAT, enable_hnsw=False),
                 m.PayloadSchemaType.FLOAT)
                for name in FLOAT_FIELDS
            ),
        ]  # fmt: skip
        for name, without_links, plain in fields:
            try:
                client.create_payload_index(self.name, name, without_links)
            except UnexpectedResponse:
                # A server from before enable_hnsw: the field gets graph links too (the
                # index builds slower; searches find the same).
                client.create_payload_index(self.name, name, plain)
        self.write_state({"dimensions": dimensions, "checkpoint": 0})

    def upsert(self, points: Sequence[StorePoint]) -> None:
        from qdrant_client import models as m

        if points:
            self.client.upsert(
                self.name,
                points=[
                    m.PointStruct(
                        id=p.id,
                        vector={DENSE: list(p.dense), SPARSE: self._sparse(p, m)},
                        payload=p.payload,
                    )
                    for p in points
                ],
                wait=True,
            )

    def _sparse(self, point: StorePoint, m: Any) -> Any:
        sparse = point.sparse
        if self.terms == TENANT_TERMS:
            sparse = tenant_terms(sparse, point.payload["tenant"])
        return m.SparseVector(indices=sparse.indices, values=sparse.values)

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models as m

        if ids:
            self.client.delete(self.name, points_selector=m.PointIdsList(points=list(ids)))

    def retrieve(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        return [dict(r.payload or {}) for r in self.client.retrieve(self.name, ids=list(ids))]

    def delete_tenant(self, tenant: str) -> int:
        from qdrant_client import models as m

        found = self.count(tenant)
        if found:
            self.client.delete(
                self.name, points_selector=m.FilterSelector(filter=_server_filter(tenant, ()))
            )
        return found

    def delete_expired(self, now: dt.datetime) -> int:
        from qdrant_client import models as m

        flt = m.Filter(must=[_ServerFilters.number(EXPIRES, lte=now.timestamp())])
        found = int(self.client.count(self.name, count_filter=flt, exact=True).count)
        if found:
            self.client.delete(self.name, points_selector=m.FilterSelector(filter=flt))
        return found

    def count(self, tenant: str) -> int:
        result = self.client.count(self.name, count_filter=_server_filter(tenant, ()), exact=True)
        return int(result.count)

    def points(self) -> int:
        return int(self.client.count(self.name, exact=True).count)

    def payloads(
        self, tenant: str | None = None, *, where: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        from qdrant_client import models as m

        must: list[Any] = [
            m.FieldCondition(key=k, match=m.MatchValue(value=v)) for k, v in (where or {}).items()
        ]
        if tenant is not None:
            flt = _server_filter(tenant, ())
            flt.must = [*(flt.must or []), *must]
        else:
            state = m.FieldCondition(key="tenant", match=m.MatchValue(value=STATE_TENANT))
            flt = m.Filter(must=must or None, must_not=[state])
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.name, scroll_filter=flt, limit=1000, offset=offset, with_payload=True
            )
            yield from (dict(r.payload or {}) for r in records)
            if offset is None:
                return

    def search(self, search: Search) -> list[Found]:
        from qdrant_client import models as m

        flt = _server_filter(search.tenant, search.must, search)
        dense = sparse = None
        if search.dense is not None and search.mode != "keyword":
            dense = (list(search.dense), DENSE)
        words = keyword_side(search, self.terms)
        if words is not None:
            sparse = (m.SparseVector(indices=words.indices, values=words.values), SPARSE)
        plan = query_plan(search, dense, sparse, flt, _ServerKit)
        if plan is None:
            return []
        query, using = plan["query"], None
        if isinstance(query, tuple):
            query, using = query
        result = self.client.query_points(
            self.name,
            query=query,
            using=using,
            prefetch=plan.get("prefetch"),
            query_filter=final_filter(plan, flt),
            score_threshold=plan.get("threshold"),
            limit=search.limit,
            with_payload=True,
        )
        return found_points(result.points)

    def check(self) -> None:
        self.read_state()  # a round trip to the server

    def read_state(self) -> dict[str, Any]:
        records = self.client.retrieve(self.name, ids=[STATE_ID])
        state = dict(records[0].payload or {}) if records else {}
        state.pop("tenant", None)
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        from qdrant_client import models as m

        payload = {**state, "terms": self.terms, "tenant": STATE_TENANT}
        point = m.PointStruct(id=STATE_ID, vector={}, payload=payload)
        self.client.upsert(self.name, points=[point], wait=True)

    def close(self) -> None:
        pass  # the client is the stores' own


class ServerStores:
    """Collections on a Qdrant server, ``ms_points__<generation>``, with the alias
    ``ms_points`` on the one in use (switched in one atomic alias change). A partition
    of a partitioned deployment has its own: ``ms_points_p<k>of<n>`` and its collections,
    so that each keeps its own generations and checkpoint."""

    def __init__(self, client: Any, namespace: str = "") -> None:
        """``namespace``: ``""`` for every tenant, else ``_p<k>of<n>``."""
        self.client = client
        self.alias = _ALIAS + namespace
        self.prefix = f"{_ALIAS}{namespace}__"

    def current(self) -> str | None:
        for found in self.client.get_aliases().aliases:
            if found.alias_name == self.alias:
                return str(found.collection_name).removeprefix(self.prefix)
        return None

    def generations(self) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n.removeprefix(self.prefix) for n in names if n.startswith(self.prefix))

    def open(self, generation: str, dimensions: int) -> ServerStore:
        return ServerStore(self.client, generation, dimensions, self.prefix)

    def make_current(self, generation: str) -> str | None:
        from qdrant_client import models as m

        old = self.current()
        ops: list[Any] = []
        if old is not None:
            ops.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self.alias)))
        create = m.CreateAlias(collection_name=self.prefix + generation, alias_name=self.alias)
        ops.append(m.CreateAliasOperation(create_alias=create))
        self.client.update_collection_aliases(change_aliases_operations=ops)
        return old

    def drop(self, generation: str) -> None:
        self.client.delete_collection(self.prefix + generation)

    def owe_purge(self, generation: str, tenant: str) -> bool:
        return False  # the server builds its indexes itself: nothing is lent out

    def close(self) -> None:
        self.client.close()

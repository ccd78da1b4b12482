"""The filter language, property-tested: ``list`` (DuckDB) and filtered search (Qdrant
Edge) return exactly the memories a small reference evaluator written here accepts."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstream.projections.embedders import HashEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.history import HistoryProjection
from memstream.projections.memories import list_memories
from memstream.projections.point_store import EdgeStores
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev
from memstream.schemas.errors import QueryError
from memstream.schemas.filters import parse_filter

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
AGENTS = ("ana", "bo", "cy")
WORDS = ("red", "green", "blue", "ops", "db")
NUMBERS = (-3, 0, 1, 2.5, 7, 1e6)
STAMPS = ("2026-01-01T00:00:00Z", "2026-06-01T12:00:00+02:00", "2027-03-01T00:00:00-05:00")
N = 120


def _metadata(rng: random.Random) -> dict[str, Any]:
    pool: list[Any] = [*WORDS, *NUMBERS, True, False, *STAMPS]
    meta: dict[str, Any] = {}
    for key in ("a", "b", "c"):
        roll = rng.random()
        if roll < 0.25:
            continue  # missing
        if roll < 0.75:
            meta[key] = rng.choice(pool)
        elif roll < 0.9:
            meta[key] = rng.sample(pool, rng.randint(0, 3))
        else:
            meta[key] = {"x": rng.choice(pool), "y": {"z": rng.choice(pool)}}
    return meta


def _corpus() -> list[ev.KnowledgeStored | ev.SolutionStored]:
    rng = random.Random(20261204)
    memories: list[ev.KnowledgeStored | ev.SolutionStored] = []
    for i in range(N):
        common: dict[str, Any] = {
            "id": f"e{i}",
            "tenant": "acme",
            "agent": rng.choice(AGENTS),
            "ts": T0 + dt.timedelta(hours=i),
            "memory_id": f"m{i}",
            "tags": tuple(rng.sample(WORDS, rng.randint(0, 3))),
            "metadata": _metadata(rng),
        }
        for name in ("user_id", "run_id", "project"):
            if rng.random() < 0.6:
                common[name] = rng.choice(("u1", "u2", "p")) if name != "run_id" else "r1"
        if rng.random() < 0.5:
            memories.append(
                ev.KnowledgeStored(**common, domain=rng.choice(WORDS), content=f"fact {i}")
            )
        else:
            memories.append(ev.SolutionStored(**common, problem=f"problem {i}", solution="fix"))
    return memories


CORPUS = _corpus()


# --- the reference evaluator -------------------------------------------------------


def _instant(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


def _equal(v: Any, x: Any) -> bool:
    if isinstance(x, dt.datetime):
        return v == x
    if isinstance(x, bool) or isinstance(v, bool):
        return isinstance(x, bool) and isinstance(v, bool) and v == x
    if isinstance(x, int | float):
        return isinstance(v, int | float) and float(v) == float(x)
    return isinstance(v, str) and v == x


def _compare(v: Any, op: str, x: Any) -> bool:
    if isinstance(x, dt.datetime):
        left = v if isinstance(v, dt.datetime) else _instant(v)
    elif isinstance(v, int | float) and not isinstance(v, bool):
        left = float(v)
        x = float(x)
    else:
        return False
    if left is None:
        return False
    return {"$gt": left > x, "$gte": left >= x, "$lt": left < x, "$lte": left <= x}[op]


def _record(e: ev.KnowledgeStored | ev.SolutionStored) -> dict[str, Any]:
    return {
        "kind": "knowledge" if isinstance(e, ev.KnowledgeStored) else "solutions",
        "agent": e.agent,
        "domain": getattr(e, "domain", None),
        "tags": list(e.tags),
        "user_id": e.user_id,
        "run_id": e.run_id,
        "project": e.project,
        "task_id": e.task_id,
        "created_at": e.ts,
        "updated_at": e.ts,
        "metadata": e.metadata,
    }


def _lookup(record: dict[str, Any], key: str) -> list[Any]:
    """The values a condition looks at: the field's, or each element of a list."""
    if key.startswith("metadata."):
        value: Any = record["metadata"]
        for part in key.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
    else:
        value = record[key]
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _time(key: str, x: Any) -> Any:
    return _instant(x) if key in ("created_at", "updated_at") else x


def accepts(record: dict[str, Any], flt: dict[str, Any]) -> bool:
    for key, cond in flt.items():
        if key == "$and" and not all(accepts(record, f) for f in cond):
            return False
        if key == "$or" and not any(accepts(record, f) for f in cond):
            return False
        if key == "$not" and accepts(record, cond):
            return False
        if key.startswith("$"):
            continue
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        values = _lookup(record, key)
        for op, x in ops.items():
            if op in ("$eq", "$contains"):
                ok = any(_equal(v, _time(key, x)) for v in values)
            elif op == "$ne":
                ok = not any(_equal(v, _time(key, x)) for v in values)
            elif op == "$in":
                ok = any(_equal(v, _time(key, y)) for v in values for y in x)
            elif op == "$nin":
                ok = not any(_equal(v, _time(key, y)) for v in values for y in x)
            else:
                bound = _instant(x) if isinstance(x, str) else x
                ok = any(_compare(v, op, bound) for v in values)
            if not ok:
                return False
    return True


# --- filters drawn by hypothesis ---------------------------------------------------

_TEXT = {
    "kind": st.sampled_from(["knowledge", "solutions"]),
    "agent": st.sampled_from(AGENTS),
    "domain": st.sampled_from(WORDS),
    "tags": st.sampled_from(WORDS),
    "user_id": st.sampled_from(["u1", "u2", "p"]),
    "run_id": st.just("r1"),
    "project": st.sampled_from(["u1", "p"]),
}
_META_KEYS = st.sampled_from(["metadata.a", "metadata.b", "metadata.c", "metadata.a.x",
                              "metadata.b.y.z", "metadata.missing"])  # fmt: skip
_SCALAR = st.sampled_from([*WORDS, *NUMBERS, True, False, *STAMPS])
_NUMERIC = st.sampled_from([*NUMBERS, *STAMPS])
_TIMES = st.sampled_from([(T0 + dt.timedelta(hours=h)).isoformat() for h in (0, 30, 60, 119)])


def _text_condition() -> st.SearchStrategy[dict[str, Any]]:
    def one(field: str) -> st.SearchStrategy[dict[str, Any]]:
        value = _TEXT[field]
        ops = st.one_of(
            value,
            st.fixed_dictionaries({"$ne": value}),
            st.fixed_dictionaries({"$in": st.lists(value, min_size=1, max_size=3)}),
            st.fixed_dictionaries({"$nin": st.lists(value, min_size=1, max_size=3)}),
        )
        if field == "tags":
            ops = st.one_of(ops, st.fixed_dictionaries({"$contains": value}))
        return ops.map(lambda cond: {field: cond})

    return st.sampled_from(sorted(_TEXT)).flatmap(one)


def _meta_condition() -> st.SearchStrategy[dict[str, Any]]:
    op = st.sampled_from(["$eq", "$ne", "$contains"]).flatmap(
        lambda o: _SCALAR.map(lambda v: {o: v})
    )
    many = st.sampled_from(["$in", "$nin"]).flatmap(
        lambda o: st.lists(_SCALAR, min_size=1, max_size=3).map(lambda v: {o: v})
    )
    ranged = st.sampled_from(["$gt", "$gte", "$lt", "$lte"]).flatmap(
        lambda o: _NUMERIC.map(lambda v: {o: v})
    )
    return st.tuples(_META_KEYS, st.one_of(_SCALAR, op, many, ranged)).map(
        lambda kv: {kv[0]: kv[1]}
    )


def _time_condition() -> st.SearchStrategy[dict[str, Any]]:
    return st.tuples(
        st.sampled_from(["created_at", "updated_at"]),
        st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$eq", "$ne"]),
        _TIMES,
    ).map(lambda t: {t[0]: {t[1]: t[2]}})


_LEAF = st.one_of(_text_condition(), _meta_condition(), _time_condition())
FILTERS = st.recursive(
    _LEAF,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
        inner.map(lambda f: {"$not": f}),
        st.tuples(inner, inner).map(lambda ab: {**ab[0], **ab[1]}),
    ),
    max_leaves=5,
)


def expected(flt: dict[str, Any]) -> set[str]:
    return {e.memory_id for e in CORPUS if accepts(_record(e), flt)}


# --- the stores under test -----------------------------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HistoryProjection]:
    p = HistoryProjection(tmp_path_factory.mktemp("history") / "history.duckdb")
    p.apply([(i + 1, e) for i, e in enumerate(CORPUS)])
    yield p
    p.close()


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorProjection]:
    root = tmp_path_factory.mktemp("vectors")
    stores = EdgeStores(root / "vectors")
    cached = CachedEmbedder(HashEmbedder(32), EmbeddingCache(root / "cache.sqlite3"))
    projection = VectorProjection(stores, cached)
    projection.apply([(i + 1, e) for i, e in enumerate(CORPUS)])
    yield projection
    stores.close()


def listed(history: HistoryProjection, flt: dict[str, Any]) -> set[str]:
    found, cursor = list_memories(
        history.cursor(), "acme", NOW, filter=parse_filter(flt), limit=1000
    )
    assert cursor is None
    return {m.memory_id for m in found}


def searched(vectors: VectorProjection, flt: dict[str, Any]) -> set[str]:
    (hits,) = vectors.search_many(
        "acme", ["fact"], kinds=("knowledge", "solutions"), top_k=1000, mode="dense", filter=flt
    )
    return {h.ref for h in hits}


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flt=FILTERS)
def test_list_returns_exactly_what_the_filter_accepts(
    history: HistoryProjection, flt: dict[str, Any]
) -> None:
    """A list with any filter returns the memories the reference evaluator accepts."""
    assert expected(flt) == listed(history, flt)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flt=FILTERS)
def test_search_returns_exactly_what_the_filter_accepts(
    vectors: VectorProjection, flt: dict[str, Any]
) -> None:
    """A filtered search (all hits asked for) finds the memories the evaluator accepts."""
    assert expected(flt) == searched(vectors, flt)


def test_the_corpus_exercises_every_kind_of_value() -> None:
    """The filters have something to tell apart: matches and misses of each sort."""
    assert 0 < len(expected({"metadata.a": {"$gt": 1}})) < N
    assert 0 < len(expected({"metadata.a": True})) < N
    assert 0 < len(expected({"metadata.b.y.z": {"$lt": "2026-12-01T00:00:00Z"}})) < N
    assert 0 < len(expected({"tags": {"$nin": ["ops"]}})) < N


@pytest.mark.parametrize(
    ("flt", "words"),
    [
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"agent": {"$like": "a%"}}, "unknown operator '$like'"),
        ({"$xor": []}, "unknown operator '$xor'"),
        ({"agent": {"$gt": "a"}}, "agent holds text"),
        ({"created_at": "yesterday"}, "created_at is a time"),
        ({"created_at": {"$gt": "2026-01-01T00:00:00"}}, "has no zone"),
        ({"metadata.n": {"$gt": "soon"}}, "compares numbers or RFC 3339 timestamps"),
        ({"metadata.n": {"$in": []}}, "takes a list of 1 to 1024 values"),
        ({"metadata.n": None}, "not None"),
        ({"metadata.a b": 1}, "not 'a b'"),
        ({"metadata.a": {"b": 1}}, "name it: metadata.a.b"),
        ({"domain": {"$contains": "x"}}, "$contains applies to a list field"),
        ({"kind": "memos"}, "kind 'memos' is not one of"),
        ({}, "an empty object"),
    ],
)
def test_a_bad_filter_is_a_bad_request_naming_the_problem(flt: Any, words: str) -> None:
    """Each mistake is a bad_request whose message names what is wrong."""
    with pytest.raises(QueryError) as caught:
        parse_filter(flt)
    assert "bad_request" == caught.value.code
    assert words in caught.value.message

"""A conversation turn is found by the words of the turn before it (its keyword side),
returns itself, and is indexed the same however its events were batched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memstream.projections.embedders import HashEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache
from memstream.projections.point_store import EdgeStores
from memstream.projections.turn_context import DEFAULT_SIDE, Side
from memstream.projections.vector_search import SearchSpec
from memstream.projections.vectors import VectorProjection
from memstream.schemas import events as ev
from tests.unit.test_vectors import make

QUESTION = "When does the billing migration to Postgres 16 start?"
ANSWER = "Friday, right after the load test."


def turn(session: str, role: str, content: str, ref: str) -> ev.ConversationTurn:
    e: ev.ConversationTurn = make(ev.ConversationTurn, session_id=session, role=role,
                                  content=content)  # fmt: skip
    return ev.ConversationTurn(id=ref, tenant=e.tenant, agent=e.agent, ts=e.ts,
                               session_id=session, role=role, content=content)  # fmt: skip


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[list[EdgeStores]]:
    stores: list[EdgeStores] = []
    yield stores
    for s in stores:
        s.close()


def projection(tmp_path: Path, name: str, side: Side, opened: list[EdgeStores]) -> VectorProjection:
    stores = EdgeStores(tmp_path / name)
    opened.append(stores)
    cached = CachedEmbedder(HashEmbedder(64), EmbeddingCache(tmp_path / f"{name}.sqlite3"))
    return VectorProjection(stores, cached, turn_context=side)


def keyword(vectors: VectorProjection, query: str) -> list[tuple[str, str, float]]:
    spec = {"kinds": ["turns"], "mode": "keyword", "top_k": 10}
    return [(h.ref, h.text, round(h.score, 6)) for h in vectors.search("acme", query, **spec)]


def conversation() -> list[tuple[int, ev.Event]]:
    return [
        (1, turn("s1", "user", QUESTION, "q1")),
        (2, turn("s1", "assistant", ANSWER, "a1")),
        (3, turn("s2", "user", "How was the offsite?", "q2")),
        (4, turn("s2", "assistant", ANSWER, "a2")),
    ]


def test_a_terse_answer_is_found_by_the_question_before_it(
    tmp_path: Path, opened: list[EdgeStores]
) -> None:
    vectors = projection(tmp_path, "default", DEFAULT_SIDE, opened)
    vectors.apply(conversation())
    hits = keyword(vectors, "billing migration Postgres")
    refs = [ref for ref, _, _ in hits]
    assert {"q1", "a1"} == set(refs[:2]), hits
    assert "a2" not in refs  # the same words answering another question
    # The hit is the turn itself, not the turn with its context.
    assert f"assistant: {ANSWER}" == next(text for ref, text, _ in hits if ref == "a1")
    alone = projection(tmp_path, "none", "none", opened)
    alone.apply(conversation())
    assert ["q1"] == [ref for ref, _, _ in keyword(alone, "billing migration Postgres")]


def test_indexed_the_same_however_batched_or_reopened(
    tmp_path: Path, opened: list[EdgeStores]
) -> None:
    """A rebuild applies the same events in other batches, in a new process: the turn
    before comes from the batch, what the projection kept, or the stored turns."""
    events = conversation()
    whole = projection(tmp_path, "whole", DEFAULT_SIDE, opened)
    whole.apply(events)
    one_by_one = projection(tmp_path, "single", DEFAULT_SIDE, opened)
    for event in events:
        one_by_one.apply([event])
    first = projection(tmp_path, "reopened", DEFAULT_SIDE, opened)
    first.apply(events[:3])
    opened.pop().close()
    reopened = projection(tmp_path, "reopened", DEFAULT_SIDE, opened)
    reopened.apply(events[3:])
    for query in ("billing migration Postgres", "offsite", "load test"):
        expected = keyword(whole, query)
        assert expected == keyword(one_by_one, query) == keyword(reopened, query), query


def test_a_removed_turn_is_not_the_context_of_the_next(
    tmp_path: Path, opened: list[EdgeStores]
) -> None:
    vectors = projection(tmp_path, "removed", DEFAULT_SIDE, opened)
    vectors.apply([(1, turn("s1", "user", QUESTION, "q1")),
                   (2, turn("s1", "user", "And the search cluster upgrade?", "q2"))])  # fmt: skip
    vectors.apply([
        (3, make(ev.ConversationTurnsRemoved, session_id="s1", seqs=(2,))),
        (4, turn("s1", "assistant", ANSWER, "a1")),
    ])  # fmt: skip
    assert "a1" in [ref for ref, _, _ in keyword(vectors, "billing migration")]
    assert [] == keyword(vectors, "search cluster upgrade")


def nearest(vectors: VectorProjection, query: str) -> tuple[str, str, float]:
    spec = SearchSpec(mode="dense", top_k=1, kinds=("turns",))
    matrix = vectors.embedder.embed("acme", [query])
    (hits,) = vectors.search_vectors("acme", [query], matrix, spec)
    return hits[0].ref, hits[0].text, round(hits[0].score, 4)


def test_a_short_turns_meaning_takes_the_turn_before_a_long_ones_does_not(
    tmp_path: Path, opened: list[EdgeStores]
) -> None:
    """By default the meaning vector of a turn under 12 words is made from the turn
    before and the turn (alone it cannot say what it answers); a longer turn's is its
    own, so the turn before does not dilute what it says."""
    long_answer = "The billing migration starts on Friday, right after the load test is done."
    vectors = projection(tmp_path, "short", DEFAULT_SIDE, opened)
    vectors.apply([*conversation()[:2], (5, turn("s1", "assistant", long_answer, "a3"))])
    joined = f"user: {QUESTION}\nassistant: {ANSWER}"
    assert ("a1", f"assistant: {ANSWER}", 1.0) == nearest(vectors, joined)
    assert ("a3", f"assistant: {long_answer}", 1.0) == nearest(vectors, f"assistant: {long_answer}")

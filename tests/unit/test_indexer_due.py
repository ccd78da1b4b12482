"""When the vectors service builds the engine's indexes again."""

from __future__ import annotations

from memstream.consumers.indexer import INDEX_AFTER, due


def test_a_small_shard_is_indexed_after_a_fixed_count() -> None:
    assert not due(INDEX_AFTER - 1, INDEX_AFTER - 1)
    assert due(INDEX_AFTER, INDEX_AFTER)
    assert due(INDEX_AFTER, 10_000 + INDEX_AFTER)


def test_a_large_shard_waits_for_a_quarter_of_its_indexed_points() -> None:
    indexed = 200_000
    assert not due(INDEX_AFTER, indexed + INDEX_AFTER)
    assert not due(49_999, indexed + 49_999)
    assert due(50_000, indexed + 50_000)

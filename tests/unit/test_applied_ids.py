"""The vectors' record of applied event ids: keyed by generation, tenant and id."""

from __future__ import annotations

from pathlib import Path

from memstream.projections.applied_ids import AppliedIds


def test_an_id_is_known_only_for_its_tenant_and_generation(tmp_path: Path) -> None:
    ids = AppliedIds(tmp_path / "applied.db")
    ids.add("g1", [("acme", "e1"), ("acme", "e2"), ("globex", "e3")])
    asked = [("acme", "e1"), ("globex", "e1"), ("globex", "e3"), ("acme", "e3"), ("acme", "x")]
    assert ids.known("g1", asked) == {("acme", "e1"), ("globex", "e3")}
    assert ids.known("g2", asked) == set()


def test_a_batch_larger_than_one_statement_is_asked_whole(tmp_path: Path) -> None:
    ids = AppliedIds(tmp_path / "applied.db")
    applied = [(f"t{i % 3}", f"e{i}") for i in range(5000)]
    ids.add("g1", applied)
    asked = applied[::2] + [(f"t{i % 3}", f"e{i}") for i in range(5000, 7000)]
    assert ids.known("g1", asked) == set(applied[::2])


def test_generations_are_copied_kept_and_purged_by_tenant(tmp_path: Path) -> None:
    ids = AppliedIds(tmp_path / "applied.db")
    ids.add("old", [("acme", "e1"), ("globex", "e2")])
    ids.copy("old", "new")
    ids.keep_only("new")
    both = [("acme", "e1"), ("globex", "e2")]
    assert ids.known("old", both) == set()
    assert ids.known("new", both) == set(both)
    assert ids.purge_tenant("acme") == 1
    assert ids.known("new", both) == {("globex", "e2")}

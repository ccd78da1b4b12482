"""The CURRENT pointer of file-backed projections, and the id index."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memstream.projections._idindex import IdIndex
from memstream.projections.files import ProjectionFiles


def test_first_use_creates_and_points(tmp_path: Path) -> None:
    """With no CURRENT, current_or_new names a new file and records it."""
    files = ProjectionFiles(tmp_path, "history", ".duckdb")
    assert files.current() is None
    path = files.current_or_new()
    assert path == files.current()
    assert path.name.startswith("history-") and path.suffix == ".duckdb"


def test_swap_returns_the_old_and_removes_only_it(tmp_path: Path) -> None:
    """make_current is atomic and reports the previous file; remove takes its WAL too."""
    files = ProjectionFiles(tmp_path, "history", ".duckdb")
    old = files.current_or_new()
    old.write_text("old")
    Path(f"{old}.wal").write_text("wal")
    new = files.new_path()
    new.write_text("new")
    assert old == files.make_current(new)
    assert new == files.current()
    assert [old] == files.leftovers()
    files.remove(old)
    assert not old.exists() and not Path(f"{old}.wal").exists()
    assert [] == files.leftovers()
    assert not (tmp_path / "CURRENT.tmp").exists()


def test_refuses_to_remove_the_current_file(tmp_path: Path) -> None:
    """The file in use cannot be deleted by mistake."""
    files = ProjectionFiles(tmp_path, "history", ".duckdb")
    current = files.current_or_new()
    try:
        files.remove(current)
    except ValueError as err:
        assert "is the current history file" in str(err)
    else:
        raise AssertionError("removing the current file was allowed")


def test_id_index_membership_across_merges() -> None:
    """Added hashes are found however the runs were merged; others are not."""
    index = IdIndex()
    first = [hash(("t", f"a{i}")) for i in range(70_000)]
    index.add(first[:10])
    assert [True] * 10 + [False] * 5 == list(index.contains(first[:15]))
    for start in range(10, 70_000, 700):  # many small batches: runs merge as they grow
        index.add(first[start : start + 700])
    assert len(index._runs) <= 6
    assert all(index.contains(first))
    assert not any(index.contains([hash(("t", f"b{i}")) for i in range(1000)]))
    assert 70_000 == len(index)
    reloaded = IdIndex(np.array(first, dtype=np.int64))
    assert all(reloaded.contains(first[::1000]))

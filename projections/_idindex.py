"""A compact in-memory index of 64-bit hashes: event ids applied, keys present.

The hashes are the caller's (DuckDB's ``hash()`` for ids, Python's for keys); the index
is rebuilt from the tables whenever a process opens them, so they need not be stable
across processes.

JetStream drops a duplicate id only within its duplicate window; past it, the projection
must. Asking DuckDB per batch means scanning every id ever stored (27 ms a batch at a
million events, growing with history). This keeps the hashes (8 bytes each) in a few
sorted numpy runs, merged as they accumulate, so a batch is checked with vectorised
binary searches and no Python per event. A hit is only a candidate: the caller confirms
it against the table, since two values may share a hash.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["Hashes", "IdIndex"]

Hashes = npt.NDArray[np.int64]
_MAX_RUNS = 6


def _array(values: Iterable[int] | Hashes) -> Hashes:
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False)
    return np.fromiter(values, dtype=np.int64)


class IdIndex:
    def __init__(self, hashes: Iterable[int] | Hashes = ()) -> None:
        self._runs: list[Hashes] = [np.sort(_array(hashes))]

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def contains(self, hashes: Iterable[int] | Hashes) -> npt.NDArray[np.bool_]:
        """For each hash, whether it may have been added before."""
        probe = _array(hashes)
        found = np.zeros(len(probe), dtype=bool)
        for run in self._runs:
            if len(run):
                pos = np.searchsorted(run, probe)
                pos[pos == len(run)] = 0
                found |= run[pos] == probe
        return found

    def add(self, hashes: Iterable[int] | Hashes) -> None:
        new = np.sort(_array(hashes))
        if not len(new):
            return
        self._runs.append(new)
        # Merge small runs into their neighbours, keeping few runs to search; the big
        # run is rewritten only when the others add up to a sizeable part of it.
        while len(self._runs) > _MAX_RUNS or (
            len(self._runs) > 1 and len(self._runs[-1]) * 4 >= len(self._runs[-2])
        ):
            last = self._runs.pop()
            merged = np.concatenate([self._runs.pop(), last])
            merged.sort(kind="stable")
            self._runs.append(merged)

"""A compact in-memory index of the event ids a projection has applied.

JetStream drops a duplicate id only within its duplicate window; past it, the projection
must. Asking DuckDB per batch means scanning every id ever stored (27 ms a batch at a
million events, growing with history). This keeps 64-bit hashes in a sorted numpy array
(8 bytes an event) plus a small unsorted tail, so a membership test is a binary search.
A hit is only a candidate: the caller confirms it against the table, since two ids may
share a hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["IdIndex", "id_hash"]

_MERGE_AT = 65_536


def id_hash(event_id: str) -> int:
    """A stable signed 64-bit hash of an event id (the same in every process)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class IdIndex:
    def __init__(self, hashes: Iterable[int] | npt.NDArray[np.int64] = ()) -> None:
        self._sorted: npt.NDArray[np.int64] = np.sort(np.fromiter(hashes, dtype=np.int64))
        self._tail: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._tail)

    def contains(self, hashes: Sequence[int]) -> list[bool]:
        """For each hash, whether it may have been added before."""
        if not len(self._sorted):
            return [h in self._tail for h in hashes]
        probe = np.asarray(hashes, dtype=np.int64)
        pos = np.searchsorted(self._sorted, probe)
        pos[pos == len(self._sorted)] = 0
        found = self._sorted[pos] == probe
        tail = self._tail
        return [bool(f) or h in tail for f, h in zip(found, hashes, strict=True)]

    def add(self, hashes: Iterable[int]) -> None:
        self._tail.update(hashes)
        if len(self._tail) >= _MERGE_AT:
            merged = np.concatenate([self._sorted, np.fromiter(self._tail, dtype=np.int64)])
            merged.sort(kind="stable")
            self._sorted = merged
            self._tail = set()

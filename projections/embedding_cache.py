"""A persistent embedding cache, so that no text is paid for twice.

Keyed by (tenant, model, dimensions, sha256 of the text): a replay, or the same text
stored again, costs no embedding call. SQLite (the standard library's) rather than
DuckDB: the cache is looked up by key in batches, which a B-tree serves best. Entries
are per tenant so that erasing a tenant erases its cached texts' vectors too.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memstream.projections.base import check_writable
from memstream.projections.embedders import Embedder, Vectors

__all__ = ["CacheStats", "CachedEmbedder", "EmbeddingCache", "text_key"]


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    # Calls made to the embedder (each may be several requests to a server).
    embedding_calls: int = 0
    texts_embedded: int = 0


class EmbeddingCache:
    """Vectors by (tenant, model, dimensions, sha256(text)), in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " tenant TEXT NOT NULL, model TEXT NOT NULL, dims INTEGER NOT NULL,"
                " text_hash BLOB NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (tenant, model, dims, text_hash)) WITHOUT ROWID"
            )

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def check(self) -> None:
        """Raise when the file cannot be read or take a write now."""
        if self.path != ":memory:":
            check_writable("embedding cache", Path(self.path).parent)
        with self._lock:
            self._con.execute("SELECT 1").fetchall()

    def get_many(
        self, tenant: str, model: str, dims: int, keys: Sequence[bytes]
    ) -> dict[bytes, Vectors]:
        found: dict[bytes, Vectors] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._con.execute(
                    "SELECT text_hash, vector FROM embeddings WHERE tenant = ? AND model = ?"
                    f" AND dims = ? AND text_hash IN ({marks})",
                    [tenant, model, dims, *chunk],
                ).fetchall()
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(
        self, tenant: str, model: str, dims: int, items: Sequence[tuple[bytes, Vectors]]
    ) -> None:
        with self._lock:
            self._con.execute("BEGIN")
            self._con.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)",
                [
                    (tenant, model, dims, key, vec.astype(np.float32).tobytes())
                    for key, vec in items
                ],
            )
            self._con.execute("COMMIT")

    def delete_tenant(self, tenant: str) -> int:
        """Forget every vector cached for ``tenant``; returns how many."""
        with self._lock:
            cur = self._con.execute("DELETE FROM embeddings WHERE tenant = ?", [tenant])
            return cur.rowcount

    def delete_keys(self, tenant: str, keys: Sequence[bytes]) -> int:
        """Forget the vectors of these texts (by :func:`text_key`), for every model."""
        removed = 0
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                cur = self._con.execute(
                    f"DELETE FROM embeddings WHERE tenant = ? AND text_hash IN ({marks})",
                    [tenant, *chunk],
                )
                removed += cur.rowcount
        return removed

    def count(self, tenant: str | None = None) -> int:
        with self._lock:
            if tenant is None:
                row = self._con.execute("SELECT count(*) FROM embeddings").fetchone()
            else:
                row = self._con.execute(
                    "SELECT count(*) FROM embeddings WHERE tenant = ?", [tenant]
                ).fetchone()
        return int(row[0])


class CachedEmbedder:
    """An embedder in front of a cache: only texts never embedded before are sent."""

    def __init__(
        self, embedder: Embedder, cache: EmbeddingCache, recent_size: int = 10_000
    ) -> None:
        """``recent_size``: how many query vectors the in-memory cache keeps (10,000 of
        384 dimensions: 15 MB), the least recently used going first."""
        self.embedder = embedder
        self.cache = cache
        self.stats = CacheStats()
        self.recent_size = recent_size
        self._recent: OrderedDict[tuple[str, str, int, bytes], Vectors] = OrderedDict()
        self._recent_lock = threading.Lock()

    def _recent_get(
        self, tenant: str, model: str, dims: int, keys: Sequence[bytes]
    ) -> dict[bytes, Vectors]:
        found: dict[bytes, Vectors] = {}
        with self._recent_lock:
            for key in keys:
                vector = self._recent.get((tenant, model, dims, key))
                if vector is not None:
                    self._recent.move_to_end((tenant, model, dims, key))
                    found[key] = vector
        return found

    def _recent_put(
        self, tenant: str, model: str, dims: int, items: Sequence[tuple[bytes, Vectors]]
    ) -> None:
        with self._recent_lock:
            for key, vector in items:
                self._recent[(tenant, model, dims, key)] = vector
            while len(self._recent) > self.recent_size:
                self._recent.popitem(last=False)

    def forget_recent(self, tenant: str) -> None:
        """Drop a tenant's query vectors (it was purged)."""
        with self._recent_lock:
            for entry in [k for k in self._recent if k[0] == tenant]:
                del self._recent[entry]

    @property
    def model(self) -> str:
        return self.embedder.model

    @property
    def dimensions(self) -> int:
        return self.embedder.dimensions

    @property
    def remote(self) -> bool:
        """Whether an embedding may take long enough to keep it off an event loop."""
        return bool(getattr(self.embedder, "remote", True))

    @property
    def failing(self) -> str | None:
        """Why the embedder is failing right now (its retries under way), or None."""
        failing = getattr(self.embedder, "failing", None)
        return str(failing) if failing else None

    def interrupt(self) -> None:
        """End the embedder's retries at once (when the process stops)."""
        interrupt = getattr(self.embedder, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def embed(
        self,
        tenant: str,
        texts: Sequence[str],
        within: float | None = None,
        *,
        keep: bool = True,
    ) -> Vectors:
        """``within``: seconds an embedding call may take (see ``Embedder.embed``).
        ``keep``: new vectors go to the persistent cache (a memory's text, embedded again
        at every rebuild); without it (a query's text, asked once or a few times) they go
        to a bounded in-memory cache of the most recent only."""
        model, dims = self.embedder.model, self.embedder.dimensions
        keys = [text_key(t) for t in texts]
        found: dict[bytes, Vectors] = {}
        if not keep:
            # A query's vector from memory first: the persistent cache is shared with the
            # projection, whose writes of a batch's vectors a query would wait behind.
            found = self._recent_get(tenant, model, dims, keys)
        if len(found) < len(keys):
            unseen = [k for k in keys if k not in found]
            stored = self.cache.get_many(tenant, model, dims, unseen)
            if not keep and stored:  # asked again, it is answered from memory
                self._recent_put(tenant, model, dims, list(stored.items()))
            found.update(stored)
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in found:
                missing.setdefault(key, text)
        # A hit is a text served without embedding it (a repeat within the batch too).
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        if missing:
            vectors = self.embedder.embed(list(missing.values()), within)
            self.stats.embedding_calls += 1
            self.stats.texts_embedded += len(missing)
            new = list(zip(missing, vectors, strict=True))
            # dimensions may be learnt from the first response (an unknown model's size)
            dims = self.embedder.dimensions
            if keep:
                self.cache.put_many(tenant, model, dims, new)
            else:
                self._recent_put(tenant, model, dims, new)
            found.update(new)
        if not keys:
            return np.zeros((0, self.embedder.dimensions), dtype=np.float32)
        return np.stack([found[k] for k in keys])

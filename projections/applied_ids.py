"""The event ids a vector generation has applied, so a republished event (the same id
past JetStream's duplicate window) never applies twice.

The history keeps its ids in DuckDB, in the same transaction as its rows. The vectors'
writes are not transactional, so the order makes them safe: points first, then the ids,
then the checkpoint. A crash after the points re-applies the batch to the same final
state; a crash after the ids skips events whose effect is already written.

SQLite (the standard library's), keyed by (generation, tenant, id): a rebuild's new
generation starts with none, and the generation it replaces is dropped with it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from memstream.projections.base import check_writable

__all__ = ["AppliedIds"]

Key = tuple[str, str]
"""(tenant, event id)."""
# Ids per statement, under SQLite's smallest limit of variables (999).
_CHUNK = 900


class AppliedIds:
    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if str(path) != ":memory:":
                self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS applied ("
                " generation TEXT NOT NULL, tenant TEXT NOT NULL, id TEXT NOT NULL,"
                " PRIMARY KEY (generation, tenant, id)) WITHOUT ROWID"
            )

    def check(self) -> None:
        """Raise when the file cannot be read or take a write now."""
        if self.path != ":memory:":
            check_writable("applied event ids", Path(self.path).parent)
        with self._lock:
            self._con.execute("SELECT 1").fetchall()

    def known(self, generation: str, keys: Sequence[Key]) -> set[Key]:
        """Those of ``keys`` the generation has applied."""
        by_tenant: dict[str, list[str]] = {}
        for tenant, id_ in keys:
            by_tenant.setdefault(tenant, []).append(id_)
        found: set[Key] = set()
        with self._lock:
            for tenant, ids in by_tenant.items():
                for start in range(0, len(ids), _CHUNK):
                    chunk = ids[start : start + _CHUNK]
                    # Equality on the key's first two columns and IN on the third: a
                    # lookup a key. (A row-value IN over (tenant, id) is not: SQLite
                    # scans the generation's ids for it, a batch slower as they grow.)
                    rows = self._con.execute(
                        f"SELECT id FROM applied WHERE generation = ? AND tenant = ? "
                        f"AND id IN ({','.join('?' * len(chunk))})",
                        [generation, tenant, *chunk],
                    ).fetchall()
                    found.update((tenant, i) for (i,) in rows)
        return found

    def add(self, generation: str, keys: Iterable[Key]) -> None:
        with self._lock:
            self._con.execute("BEGIN")
            self._con.executemany(
                "INSERT OR IGNORE INTO applied VALUES (?, ?, ?)",
                ((generation, tenant, id_) for tenant, id_ in keys),
            )
            self._con.execute("COMMIT")

    def copy(self, source: str, target: str) -> None:
        """Give ``target`` (a copy of ``source``'s points) the ids ``source`` applied."""
        with self._lock:
            self._con.execute(
                "INSERT OR IGNORE INTO applied SELECT ?, tenant, id FROM applied "
                "WHERE generation = ?",
                [target, source],
            )

    def keep_only(self, generation: str) -> None:
        """Forget every other generation's ids (they were replaced, or never finished)."""
        with self._lock:
            self._con.execute("DELETE FROM applied WHERE generation <> ?", [generation])

    def drop(self, generation: str) -> None:
        with self._lock:
            self._con.execute("DELETE FROM applied WHERE generation = ?", [generation])

    def purge_tenant(self, tenant: str) -> int:
        with self._lock:
            return self._con.execute("DELETE FROM applied WHERE tenant = ?", [tenant]).rowcount

    def close(self) -> None:
        with self._lock:
            self._con.close()

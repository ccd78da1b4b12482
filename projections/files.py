"""Which database file a file-backed projection is using, and an atomic swap to another.

A directory per projection holds its database files and a ``CURRENT`` file naming the
one in use. A rebuild writes a new file beside it; the swap is one ``os.replace`` of
``CURRENT``, so a crash at any moment leaves either the old or the new file in use.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

__all__ = ["ProjectionFiles"]


class ProjectionFiles:
    def __init__(self, directory: str | os.PathLike[str], name: str, suffix: str) -> None:
        self.dir = Path(directory)
        self.name = name
        self.suffix = suffix

    @property
    def pointer(self) -> Path:
        return self.dir / "CURRENT"

    def current(self) -> Path | None:
        """The file in use, or None when the projection was never built."""
        try:
            name = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return self.dir / name if name else None

    def current_or_new(self) -> Path:
        """The file in use; on first use, a new file made current."""
        path = self.current()
        if path is None:
            path = self.new_path()
            self.make_current(path)
        return path

    def new_path(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        return self.dir / f"{self.name}-{stamp}-{secrets.token_hex(3)}{self.suffix}"

    def make_current(self, path: Path) -> Path | None:
        """Point CURRENT at ``path`` atomically; returns the file it pointed at before."""
        old = self.current()
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.pointer.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(path.name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.pointer)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return old

    def remove(self, path: Path) -> None:
        """Delete a database file that is no longer current (and its WAL)."""
        if path == self.current():
            raise ValueError(f"{path} is the current {self.name} file")
        for candidate in (path, path.with_name(path.name + ".wal")):
            candidate.unlink(missing_ok=True)

    def leftovers(self) -> list[Path]:
        """Files of unfinished rebuilds (not current), for cleaning up at start."""
        current = self.current()
        return sorted(p for p in self.dir.glob(f"{self.name}-*{self.suffix}") if p != current)

"""A small real filesystem (tmpfs) a test fills up, as a disk fills."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class SmallDisk:
    """A tmpfs of ``size`` mounted at ``path`` for one test."""

    def __init__(self, path: Path, size: str = "64M") -> None:
        self.path = path
        self._filler = path / ".filler"
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a small filesystem needs root")
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def fill(self) -> None:
        """Take every byte left, down to the last 4 KB block."""
        with open(self._filler, "ab", buffering=0) as f:
            for size in (1 << 20, 1 << 16, 1 << 12):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * size)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        self.fill()
        try:
            yield
        finally:
            self.free()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "64M") -> Iterator[SmallDisk]:
    disk = SmallDisk(path, size)
    try:
        yield disk
    finally:
        disk.unmount()

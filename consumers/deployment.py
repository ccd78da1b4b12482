"""A data dir is a deployment: an identity of its own, and at most one process on it.

``deployment.json`` holds the deployment's id, made on the first start. ``running.json``
is held under an exclusive lock (``flock``) by the one memstream process that runs on the
data dir, and says where it is: its pid, its NATS URL and its roles. The operating system
drops the lock when the process ends, however it ends, so a lock that can be taken means
nothing runs here, whatever the file still says.

Operator commands find the memstream of a data dir through this file rather than by
trying the default URL, so ``--data-dir`` always means that deployment and no other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from memstream.schemas.errors import UsageError
from memstream.schemas.partitions import Partition

__all__ = [
    "AlreadyRunning",
    "Running",
    "claim_partition",
    "deployment_id",
    "hold",
    "partition_of",
    "running",
]

_IDENTITY = "deployment.json"
_RUNNING = "running.json"
_PARTITION = "partition.json"


class AlreadyRunning(UsageError):
    """Another memstream process runs on this data dir."""


@dataclass(frozen=True)
class Running:
    """What the process running on a data dir says of itself."""

    pid: int
    nats_url: str
    roles: list[str]
    deployment: str


def deployment_id(data_dir: Path, *, create: bool = False) -> str | None:
    """The data dir's deployment id; made (once, atomically) when ``create``."""
    path = data_dir / _IDENTITY
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        return str(json.loads(path.read_text())["id"])
    if not create:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    body = {"id": str(uuid.uuid4()), "created_at": dt.datetime.now(dt.UTC).isoformat()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body) + "\n")
    try:
        os.link(tmp, path)  # fails if another process made it first: theirs stands
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return str(json.loads(path.read_text())["id"])


def partition_of(data_dir: Path) -> Partition:
    """The partition whose tenants the data dir holds (every tenant, for one made before
    partitions, or by a whole deployment)."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        body = json.loads((data_dir / _PARTITION).read_text())
        return Partition(int(body["index"]), int(body["count"]))
    return Partition()


def claim_partition(data_dir: Path, partition: Partition) -> None:
    """Record the partition a data dir holds, at its first start; refuse (one line) to
    run it as another, since it holds another partition's tenants."""
    path = data_dir / _PARTITION
    if not path.exists():
        # Projections written before partitions existed hold every tenant.
        made_before = any((data_dir / p).exists() for p in ("history", "vectors"))
        have = Partition() if made_before else partition
        path.write_text(json.dumps({"index": have.index, "count": have.count}) + "\n")
    have = partition_of(data_dir)
    if have != partition:
        raise UsageError(
            f"{data_dir} holds the tenants of partition {have.label()}, not "
            f"{partition.label()}: run it with "
            + (
                "MEMSTREAM_PARTITIONS=1 and no --partition"
                if have.whole
                else f"MEMSTREAM_PARTITIONS={have.count} --partition {have.index}"
            )
            + ", or give this partition a --data-dir of its own"
        )


def _describe(data_dir: Path, info: dict[str, Any] | None) -> str:
    if not info:
        return f"another memstream process runs on {data_dir}"
    url = f", NATS {info['nats_url']}" if info.get("nats_url") else ""
    roles = "+".join(info.get("roles") or []) or "memstream"
    return f"memstream ({roles}) is already running on {data_dir} (pid {info.get('pid')}{url})"


def _read(handle: IO[str]) -> dict[str, Any] | None:
    handle.seek(0)
    with contextlib.suppress(ValueError):
        found = json.loads(handle.read() or "null")
        return found if isinstance(found, dict) else None
    return None


class Hold:
    """This process's hold on a data dir; :meth:`announce` says where it serves."""

    def __init__(self, data_dir: Path, handle: IO[str], roles: list[str], deployment: str):
        self.data_dir = data_dir
        self.deployment = deployment
        # The tenants this process serves (set once the data dir's partition is checked).
        self.partition = Partition()
        # Where this process serves /metrics, /healthz and /readyz, if it does.
        self.metrics_url: str | None = None
        self._handle = handle
        self._roles = roles

    def announce(self, nats_url: str) -> None:
        body = {
            "pid": os.getpid(),
            "nats_url": nats_url,
            "roles": self._roles,
            "deployment": self.deployment,
        }
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps(body) + "\n")
        self._handle.flush()


@contextlib.contextmanager
def hold(data_dir: Path, roles: list[str]) -> Iterator[Hold]:
    """Hold the data dir for this process, before anything in it is touched; raises
    AlreadyRunning (one line naming the running process) when another holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    deployment = deployment_id(data_dir, create=True) or ""
    path = data_dir / _RUNNING
    handle = open(path, "a+")  # noqa: SIM115 - held open for the process's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(
                f"{_describe(data_dir, _read(handle))}: stop it first, or give this one "
                "another --data-dir"
            ) from None
        held = Hold(data_dir, handle, roles, deployment)
        held.announce("")
        try:
            yield held
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def running(data_dir: Path) -> Running | None:
    """The memstream process running on ``data_dir``, if one does."""
    path = data_dir / _RUNNING
    try:
        handle = open(path)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read(handle) or {}
            return Running(
                pid=int(info.get("pid") or 0),
                nats_url=str(info.get("nats_url") or ""),
                roles=list(info.get("roles") or []),
                deployment=str(info.get("deployment") or ""),
            )
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None

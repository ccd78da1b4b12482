"""The processes beside the one whose projection writes the vectors (``memstream up``,
``serve --role vectors``), started and watched by it:

- the vector engine's (:mod:`consumers.engine`), one for each generation of Qdrant
  Edge's shards that is open (:class:`EngineProcesses`);
- the searcher (:mod:`consumers.searcher`), which answers ``search`` and ``recall``
  through the engine, in an interpreter that applies no events.

Each is a child that dies with its parent (the kernel sends it SIGTERM), is stopped by
its pid, and is restarted when it dies. While the engine is down the projection's batch
fails as a storage failure (retried, never dead-lettered) and a search is answered
``unavailable``; while the searcher is down, searches wait for its return.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from memstream.consumers.engine import LOCK_WAIT_S, lock_path
from memstream.consumers.log import get_logger
from memstream.consumers.nats_server import die_with_parent, terminate
from memstream.projections.files import ProjectionFiles
from memstream.projections.point_store.remote import engine_socket
from memstream.schemas.errors import MemstreamError

__all__ = [
    "Child",
    "EngineFailed",
    "EngineProcess",
    "EngineProcesses",
    "SearcherProcess",
    "Supervised",
]

log = get_logger("memstream.engine")

# Starting takes an interpreter and the engine's import (~0.5 s here), and the wait for
# an engine before it (killed with its parent) to let go of the shards.
_START_WITHIN_S: Final = LOCK_WAIT_S + 30.0
# The engine flushes its shards when stopped: seconds, for a large shard.
_STOP_WITHIN_S: Final = 60.0


class Supervised(Protocol):
    """What is watched and restarted: a child process, or the engine processes."""

    what: str

    @property
    def pid(self) -> int | None: ...

    def exited(self) -> int | None: ...

    def restart(self) -> None: ...


class EngineFailed(MemstreamError):
    """The engine process (or the searcher) cannot be started."""

    code = "unavailable"


class Child:
    """A child process that prints ``ready`` on stdout once it serves; after that, each
    line it prints is handed to ``on_line`` (from a thread of its own)."""

    what = "child process"
    # The line it prints once started (the searcher's comes before it answers: see serve).
    started_line = b"ready"

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at: float | None = None
        self.on_line: Callable[[bytes], None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start it, and return once it serves."""
        proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            preexec_fn=die_with_parent,
        )
        self.proc = proc
        assert proc.stdout is not None
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + _START_WITHIN_S
            while not line.endswith(b"\n") and time.monotonic() < deadline:
                if sel.select(min(1.0, max(0.0, deadline - time.monotonic()))):
                    got = os.read(proc.stdout.fileno(), 1)
                    if not got:
                        break
                    line += got
        if line.strip() != self.started_line:
            status = terminate(proc, 5.0)
            self.proc = None
            raise EngineFailed(
                f"the {self.what} did not start (exit {status}): its log lines above say why"
            )
        self.started_at = time.time()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        log.info("child_started", process=self.what, pid=proc.pid)

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for line in proc.stdout:
                if self.on_line is not None:
                    self.on_line(line)

    def exited(self) -> int | None:
        """Its exit status once it has ended; None while it runs."""
        return self.proc.poll() if self.proc is not None else None

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> int | None:
        """SIGTERM (it flushes its shards), SIGKILL if it has not ended in a minute."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        # Its stdin closed first: a searcher still waiting to be told to serve ends too.
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        status = terminate(proc, _STOP_WITHIN_S)
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        return status


class EngineProcess(Child):
    """The engine process of ``generation`` of the shards under ``shards``."""

    what = "vector engine process"

    def __init__(self, shards: Path, generation: str, *, log_level: str = "info") -> None:
        self.shards = shards
        self.generation = generation
        self.socket = engine_socket(shards, generation)
        super().__init__([
            sys.executable, "-m", "memstream.consumers.engine", str(shards),
            "--generation", generation, "--socket", str(self.socket), "--log-level", log_level,
        ])  # fmt: skip

    def kill(self) -> None:
        """Its end without a flush (its shard is being removed), if it runs, and what it
        left."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                with contextlib.suppress(OSError):
                    proc.stdout.close()
        for left in (self.socket, lock_path(self.shards, self.generation)):
            with contextlib.suppress(FileNotFoundError):
                left.unlink()


class EngineProcesses:
    """The engine processes of the shards under ``shards``: one for each generation
    open, started when it is first asked for (:meth:`socket`, the
    :class:`~projections.point_store.remote.Engines` of the projection's stores) and
    ended with the generation (:meth:`retire`). Watched as one child: when one dies,
    :meth:`exited` says so and :meth:`restart` starts it again."""

    what = "vector engine process"

    def __init__(self, shards: Path, *, log_level: str = "info") -> None:
        self.shards = shards
        self.log_level = log_level
        shards.mkdir(parents=True, exist_ok=True)
        self.files = ProjectionFiles(shards, "shard", "")
        self._children: dict[str, EngineProcess] = {}
        self._lock = threading.Lock()
        self.restarts = 0

    def start_current(self) -> None:
        """The engine process of the generation in use, if there is one, started now (so
        that one that cannot start stops memstream at once, with the reason)."""
        path = self.files.current()
        if path is not None and path.exists():
            self.socket(path.name.removeprefix("shard-"))

    def socket(self, generation: str) -> Path:
        with self._lock:
            child = self._children.get(generation)
            if child is None:
                child = EngineProcess(self.shards, generation, log_level=self.log_level)
                child.start()
                self._children[generation] = child
            return child.socket

    def retire(self, generation: str) -> None:
        """Its process killed (if it runs), and its socket and lock removed (a run before
        this one may have left them)."""
        with self._lock:
            child = self._children.pop(generation, None)
        if child is None:
            child = EngineProcess(self.shards, generation, log_level=self.log_level)
        child.kill()

    def current(self) -> EngineProcess | None:
        """The engine process of the generation in use."""
        path = self.files.current()
        if path is None:
            return None
        return self._children.get(path.name.removeprefix("shard-"))

    @property
    def pid(self) -> int | None:
        child = self.current()
        return child.pid if child is not None else None

    def pids(self) -> list[int]:
        with self._lock:
            return [c.pid for c in self._children.values() if c.pid is not None]

    def exited(self) -> int | None:
        """The exit status of one that has ended; None while all run."""
        with self._lock:
            for child in self._children.values():
                status = child.exited()
                if status is not None:
                    return status
        return None

    def restart(self) -> None:
        """Start again each one that ended."""
        with self._lock:
            for child in self._children.values():
                if child.exited() is not None:
                    child.restart()
                    self.restarts += 1

    def stop(self) -> int | None:
        """SIGTERM to each (it flushes its shard); the first exit status that is not 0,
        or 0 (None when none ran)."""
        with self._lock:
            children, self._children = list(self._children.values()), {}
        statuses = [child.stop() for child in children]
        return next((s for s in statuses if s), statuses[0] if statuses else None)


class SearcherProcess(Child):
    """The searcher: ``search`` and ``recall`` answered through the engine processes of
    the shards under ``shards``, on ``subjects``, with the settings of ``env`` (its NATS,
    its embedder).

    Started early (its interpreter, its embedder and its connection take a second or
    more, while the projections catch up), it answers only once told to
    (:meth:`serve`): a new replica of a partition answers once it holds its share."""

    what = "searcher process"
    started_line = b"started"

    def __init__(self, shards: Path, subjects: list[str], env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "memstream.consumers.searcher", "--shards", str(shards)]
        for subject in subjects:
            command += ["--subject", subject]
        super().__init__(command, env)
        self.serving = False
        # Its embedder's calls, hits and misses: this run's, and the runs' before it.
        self.embedding = self._before = (0, 0, 0)
        self._answering = threading.Event()
        self._relay: Callable[[bytes], None] | None = None
        self.on_line = self._line

    def observe(self, relay: Callable[[bytes], None]) -> None:
        """Hand each ``op seconds outcome`` line it prints to ``relay`` (the metrics)."""
        self._relay = relay

    def _line(self, line: bytes) -> None:
        if line.strip() == b"ready":
            self._answering.set()
        elif line.startswith(b"embedded "):
            with contextlib.suppress(ValueError):
                calls, hits, misses = map(int, line.split()[1:4])
                # Counters of this run of it, added to those of the runs before.
                self.embedding = (calls, hits, misses)
        elif self._relay is not None:
            self._relay(line)

    def embedding_counts(self) -> tuple[int, int, int]:
        """Its embedder's calls, cache hits and cache misses, over all its runs."""
        now, before = self.embedding, self._before
        return (now[0] + before[0], now[1] + before[1], now[2] + before[2])

    def start(self) -> None:
        self._answering.clear()
        # A new run counts from 0: what the runs before counted is kept.
        self._before, self.embedding = self.embedding_counts(), (0, 0, 0)
        super().start()
        if self.serving:
            self.serve()

    def serve(self) -> None:
        """Tell it to answer; returns once it does."""
        self.serving = True
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write(b"serve\n")
            proc.stdin.flush()
        except OSError as err:
            raise EngineFailed(f"the {self.what} ended before it answered ({err})") from None
        if not self._answering.wait(_START_WITHIN_S):
            raise EngineFailed(f"the {self.what} did not answer within {_START_WITHIN_S:.0f} s")

"""The vector engine's process: it owns one generation of Qdrant Edge's shards and does
only engine calls.

Started and supervised by ``memstream up`` and ``serve --role vectors``
(:mod:`consumers.engine_process`), one for each generation open, as::

    python -m memstream.consumers.engine SHARDS_DIR --generation G [--socket PATH]

It listens on a unix socket (see :mod:`projections.point_store.remote` for the frames)
and answers from one thread, one engine call at a time, in this order:

1. every search (and every other read) waiting, in the order they came;
2. then one call of the oldest write: an upsert is split into calls of
   ``UPSERT_CHUNK`` points, and the socket is read again after each call, so a search
   that comes during a write waits for that one call at most.

A client's calls are answered in its order (each waits for its reply before the next),
so the checkpoint a projection writes after its points is applied after them: a crash of
either process loses nothing and doubles nothing (the batch is applied again from the
older checkpoint, and points are idempotent).

Prints ``ready`` on stdout once it listens, with its shard loaded if there is one. It
takes ``engine-G.lock`` beside the shards first, so a second engine of the same
generation waits for the first to end (its lock goes with it, even killed). SIGTERM, or
its parent's death, flushes the shard and exits 0.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime as dt
import fcntl
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Final

import msgspec

from memstream.consumers.log import configure_logging, get_logger
from memstream.projections.point_store.edge import QUIET_S, EdgeStore, EdgeStores
from memstream.projections.point_store.remote import (
    HEADER,
    READS,
    engine_socket,
    error_reply,
    points_from_wire,
    search_from_wire,
)
from memstream.projections.priority import (
    ingests_turn,
    lower_priority,
    raise_search_priority,
)

__all__ = ["EngineServer", "main"]

log = get_logger("memstream.engine")

# A write call that holds the engine longer than this is logged (searches wait for it).
SLOW_CALL_S: Final = 0.05
# How long a new engine waits for the one before it (its lock) to let go of the shards.
LOCK_WAIT_S: Final = 30.0
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

# A write in progress yields None after each engine call, or a future it waits for (a
# copy of a shard's files, made off this thread); it returns its reply's result.
_Write = Generator[concurrent.futures.Future[Any] | None, None, Any]


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()


class EngineServer:
    """Answers the calls of every connection on ``listener`` against ``generation`` of
    ``stores``."""

    def __init__(self, stores: EdgeStores, listener: socket.socket, generation: str) -> None:
        self.stores = stores
        self.generation = generation
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, None)
        self.reads: collections.deque[tuple[_Conn, list[Any], float]] = collections.deque()
        self.writes: collections.deque[tuple[_Conn, list[Any]]] = collections.deque()
        self.job: tuple[_Conn, _Write] | None = None
        self.job_op = ""
        self.waiting: concurrent.futures.Future[Any] | None = None
        # A shard's copy for an index build (hundreds of MB through the page cache: a
        # core for seconds) is the build's work, at its priority: searches go first.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="engine-copy", initializer=lower_priority, initargs=("low",)
        )
        self.stopping = False
        self.started = time.time()
        self.counts = {"searches": 0, "reads": 0, "write_calls": 0, "connections": 0}
        self.search_wait_s = 0.0
        self.search_wait_max_s = 0.0
        self.last_search = 0.0

    # --- the loop --------------------------------------------------------------------

    def serve(self, stop_fd: int | None = None, parent: int | None = None) -> None:
        if stop_fd is not None:
            self.sel.register(stop_fd, selectors.EVENT_READ, "stop")
        while not self.stopping:
            if self.reads or self.writes or (self.job is not None and self._runnable()):
                timeout: float | None = 0
            elif self.waiting is not None:
                timeout = 0.005
            else:
                timeout = 1.0
            for key, _ in self.sel.select(timeout):
                if key.data == "stop":
                    self.stopping = True
                elif key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            if parent is not None and os.getppid() != parent:
                log.warning("engine_parent_gone", parent=parent)
                self.stopping = True
            if not (self.reads or self.writes or self.job):
                with ingests_turn():
                    self._flush_when_idle()
            if self.reads:
                self._answer_read()
            elif self.job is not None and self._runnable():
                with ingests_turn():
                    self._step()
            elif self.job is None and self.writes:
                conn, call = self.writes.popleft()
                self.job = (conn, self._write(call))
                self.job_op = call[0]
                with ingests_turn():
                    self._step()

    def _flush_when_idle(self) -> None:
        """With no call waiting, flush a shard that is due (a flush holds the engine for
        tens to hundreds of ms: see ``EdgeStore.flush_if_due``), once no search has come
        for ``QUIET_S``. One shard at a time, then the socket is read again."""
        quiet = time.monotonic() - self.last_search >= QUIET_S
        for store in self.stores._open.values():
            started = time.perf_counter()
            if store.flush_if_due(quiet):
                log.debug("engine_flushed", generation=store.generation,
                          ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip
                return

    def _runnable(self) -> bool:
        return self.waiting is None or self.waiting.done()

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        sock.setblocking(True)
        self.counts["connections"] += 1
        self.sel.register(sock, selectors.EVENT_READ, _Conn(sock))

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.buf += data
        now = time.perf_counter()
        while len(conn.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(conn.buf)
            if len(conn.buf) < HEADER.size + n:
                break
            call = _decode(bytes(conn.buf[HEADER.size : HEADER.size + n]))
            del conn.buf[: HEADER.size + n]
            if call[0] in READS:
                self.reads.append((conn, call, now))
            else:
                self.writes.append((conn, call))

    def _close(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()

    def _reply(self, conn: _Conn, body: bytes) -> None:
        try:
            conn.sock.sendall(HEADER.pack(len(body)) + body)
        except OSError:
            self._close(conn)  # the caller is gone (its process died): nobody to tell

    def _answer_read(self) -> None:
        conn, call, came = self.reads.popleft()
        started = time.perf_counter()
        if call[0] == "search":
            waited = started - came
            self.counts["searches"] += 1
            self.search_wait_s += waited
            self.search_wait_max_s = max(self.search_wait_max_s, waited)
            self.last_search = time.monotonic()
        self.counts["reads"] += 1
        try:
            body = _encode([0, self._read_call(call)])
        except Exception as err:
            body = error_reply(err)
        self._reply(conn, body)

    def _step(self) -> None:
        assert self.job is not None
        conn, job = self.job
        self.waiting = None
        self.counts["write_calls"] += 1
        started = time.perf_counter()
        try:
            self.waiting = next(job)
        except StopIteration as done:
            self.job = None
            self._reply(conn, _encode([0, done.value]))
        except Exception as err:
            self.job = None
            self._reply(conn, error_reply(err))
        finally:
            took = time.perf_counter() - started
            if took > SLOW_CALL_S:
                # A search that came meanwhile waited this long: worth knowing.
                log.warning("engine_slow_write_call", op=self.job_op, ms=round(took * 1000, 1))

    # --- the calls -------------------------------------------------------------------

    def store(self, generation: str | None) -> EdgeStore:
        """This engine's generation (a call that names none means it), opened if it is
        not yet (after a restart, the projection does not open it again); never made
        anew here."""
        generation = generation or self.generation
        if generation != self.generation:
            raise RuntimeError(
                f"the vector engine of shard {self.generation} has no shard {generation}"
            )
        store = self.stores._open.get(generation)
        if store is not None:
            return store
        path = self.stores.path(generation)
        if not path.exists() or not any(path.iterdir()):
            raise RuntimeError(f"the vector engine has no shard {generation}")
        store = self.stores.open(generation, 0)
        store.flush_with_state = False  # when idle instead (see serve)
        return store

    def _read_call(self, call: list[Any]) -> Any:
        op, generation, *args = call
        if op == "status":
            return self.status()
        store = self.store(generation)
        if op == "search":
            return [[f.id, f.score, f.payload] for f in store.search(search_from_wire(args[0]))]
        if op == "retrieve":
            return store.retrieve(args[0])
        if op == "count":
            return store.count(args[0])
        if op == "points":
            return store.points()
        if op == "payloads":
            return list(store.payload_page(args[0], args[1] or None, args[2]))
        if op == "read_state":
            return store.read_state()
        if op == "check":
            store.check()
            return None
        raise ValueError(f"the vector engine has no read {op!r}")

    def _write(self, call: list[Any]) -> _Write:
        op, generation, *args = call
        if op == "upsert":
            return (yield from self.store(generation).upsert_calls(points_from_wire(args[0])))
        if op == "copy_to":
            store = self.store(generation)
            return (yield from _copy(store, Path(args[0]), self.pool))
        if op == "open":
            if generation != self.generation:
                raise RuntimeError(
                    f"the vector engine of shard {self.generation} cannot open {generation}"
                )
            self.stores.open(generation, args[0]).flush_with_state = False
            return None
        calls: dict[str, Callable[[], Any]] = {
            "delete": lambda: self.store(generation).delete(args[0]),
            "delete_tenant": lambda: self.store(generation).delete_tenant(args[0]),
            "delete_expired": lambda: self.store(generation).delete_expired(
                dt.datetime.fromtimestamp(args[0], dt.UTC)
            ),
            "write_state": lambda: self.store(generation).write_state(args[0]),
        }
        if op not in calls:
            raise ValueError(f"the vector engine has no write {op!r}")
        return calls[op]()
        yield  # type: ignore[unreachable]  # a generator: its one call is its first step

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started": self.started,
            "rss_bytes": _rss_bytes(),
            "reads_waiting": len(self.reads),
            "writes_waiting": len(self.writes) + (self.job is not None),
            "search_wait_s": self.search_wait_s,
            "search_wait_max_s": self.search_wait_max_s,
            "generation": self.generation,
            **self.counts,
        }

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.stores.close()
        self.sel.close()


def _copy(store: EdgeStore, target: Path, pool: concurrent.futures.ThreadPoolExecutor) -> _Write:
    """The shard's files copied off this thread (searches go on; writes wait)."""
    future = pool.submit(store.copy_files, target)
    yield future
    future.result()


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def lock_path(shards: Path, generation: str) -> Path:
    return shards / f"engine-{generation}.lock"


def _lock(shards: Path, generation: str) -> int:
    """Hold ``engine-G.lock`` beside the shards (waiting for an engine of the generation
    before this one to end); the descriptor, held until this process ends."""
    path = lock_path(shards, generation)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"memstream engine: another engine process holds shard {generation} "
                    f"of {shards} ({path.name}) after {LOCK_WAIT_S:.0f} s: stop it first"
                ) from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memstream.consumers.engine")
    parser.add_argument("shards", type=Path)
    parser.add_argument("--generation", required=True)
    parser.add_argument("--socket", type=Path)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    not_raised = raise_search_priority()  # before any thread: they take it from this one
    configure_logging(level=args.log_level)
    if not_raised is not None:
        log.warning("search_priority_not_raised", reason=not_raised)
    parent = os.getppid()
    shards: Path = args.shards
    shards.mkdir(parents=True, exist_ok=True)
    generation: str = args.generation
    _lock(shards, generation)
    path = args.socket or engine_socket(shards, generation)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # an engine before this one that was killed left it
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.setblocking(False)
    # A signal wakes the loop through this pipe: it stops between two engine calls.
    stop_r, stop_w = os.pipe()
    os.set_blocking(stop_w, False)
    signal.set_wakeup_fd(stop_w)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server = EngineServer(EdgeStores(shards), listener, generation)
    if any(server.stores.path(generation).glob("*")):
        # Loaded before ready: meanwhile, the engine of the generation before answers.
        # A shard that cannot be opened (damaged, held) is said by the first call that
        # needs it, as the engine's error, for the caller to name the way out.
        with contextlib.suppress(Exception):
            server.store(generation)
    log.info("engine_started", pid=os.getpid(), generation=generation, socket=str(path))
    print("ready", flush=True)
    try:
        server.serve(stop_r, parent)
    finally:
        server.close()
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("engine_stopped", pid=os.getpid(), **server.counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

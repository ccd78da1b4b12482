"""The vector engine in a process of its own (:mod:`consumers.engine`), reached over a
unix socket: the same contract as :class:`EdgeStores`, so the projection and the
searches do not know where the engine runs.

Qdrant Edge holds the interpreter lock for every call. In the process that decodes,
folds and embeds events, a search waits behind that work; in a process that does only
engine calls, it waits for one engine call at most (the engine process puts searches
first). The channel costs ~0.2 ms a round trip (``benchmarks.engine_channel``).

The frames: a 4-byte length, then msgpack. A call is ``[op, generation, *args]``; a
reply ``[0, result]`` or ``[1, kind, message, errno]``, the engine's error raised here as
the same kind (an ``OSError`` with its errno for a full disk, a plain ``Exception`` for
the engine's own failures), so the projection tells the storage's failures from an
event's as it does in-process. Each thread has a connection of its own and waits for
each reply before its next call, so one thread's calls are applied in its order. The
searcher's event loop has one more, for searches only, on which several are asked at
once and awaited without a thread (:meth:`RemoteStores.search`).
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from memstream.projections.files import ProjectionFiles
from memstream.projections.point_store.contract import (
    Condition,
    Found,
    PointStore,
    Search,
    StorePoint,
)
from memstream.projections.point_store.edge import Lending, shard_generations
from memstream.projections.point_store.sparse import Sparse
from memstream.schemas.errors import MemstreamError
from memstream.schemas.filters import And, Cond, Node, Not, Or

__all__ = [
    "READS",
    "EngineUnavailable",
    "Engines",
    "Listening",
    "RemoteStore",
    "RemoteStores",
    "engine_socket",
    "error_reply",
    "points_from_wire",
    "read_frame",
    "search_from_wire",
]

HEADER: Final = struct.Struct("!I")
# The calls the engine process answers before any write (searches, and what reads).
READS: Final = frozenset({
    "search", "retrieve", "count", "points", "payloads", "read_state", "check", "status",
})  # fmt: skip
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
# A unix socket's path has room for 107 bytes.
_SOCKET_PATH_MAX: Final = 100


class EngineUnavailable(ConnectionError, MemstreamError):
    """The engine process does not answer (it died, or is being restarted): a failure of
    the storage, never an event's; a query gets ``unavailable``."""

    code = "unavailable"


def engine_socket(shards: Path, generation: str) -> Path:
    """Where the engine process of ``generation`` of ``shards`` listens: beside the
    shards, or (a path too long for a unix socket) under the temporary directory, named
    after them."""
    path = shards / f"engine-{generation}.sock"
    if len(str(path)) <= _SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha1(f"{shards.resolve()}/{generation}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"memstream-engine-{digest}.sock"


class Engines(Protocol):
    """Where each generation's engine process listens, and its end."""

    def socket(self, generation: str) -> Path:
        """The socket of ``generation``'s engine process (started first, where the
        caller is the one that starts them)."""
        ...

    def retire(self, generation: str) -> None:
        """``generation``'s engine process ended, its files about to be removed."""
        ...


class Listening:
    """Engine processes another process started (the searcher's view, and a test's)."""

    def __init__(self, shards: Path) -> None:
        self.shards = shards

    def socket(self, generation: str) -> Path:
        return engine_socket(self.shards, generation)

    def retire(self, generation: str) -> None:
        """Not this process's to end."""


# --- what goes over the socket -----------------------------------------------------


def _node_out(node: Node) -> list[Any]:
    if isinstance(node, Cond):
        value = list(node.value) if isinstance(node.value, tuple) else node.value
        return ["c", node.field, node.op, value, list(node.path)]
    if isinstance(node, And | Or):
        return ["a" if isinstance(node, And) else "o", [_node_out(n) for n in node.items]]
    return ["n", _node_out(node.item)]


def _node_in(wire: list[Any]) -> Node:
    tag = wire[0]
    if tag == "c":
        value = tuple(wire[3]) if isinstance(wire[3], list) else wire[3]
        return Cond(wire[1], wire[2], value, tuple(wire[4]))
    if tag == "n":
        return Not(_node_in(wire[1]))
    items = tuple(_node_in(n) for n in wire[1])
    return And(items) if tag == "a" else Or(items)


def _floats(values: Sequence[float]) -> bytes:
    # float32, as the engine keeps them: 1.5 KB for 384 dimensions, not 3.5 KB.
    return array.array("f", values).tobytes()


def _unfloats(data: bytes) -> list[float]:
    return array.array("f", data).tolist()


def search_to_wire(s: Search) -> list[Any]:
    return [
        s.tenant,
        _floats(s.dense) if s.dense is not None else None,
        [s.sparse.indices, s.sparse.values] if s.sparse is not None else None,
        s.limit,
        s.mode,
        [[c.key, list(c.any_of), c.gte, c.lt] for c in s.must],
        s.min_score,
        s.recency_half_life_s,
        s.now.timestamp(),
        _node_out(s.filter) if s.filter is not None else None,
    ]


def search_from_wire(w: list[Any]) -> Search:
    return Search(
        tenant=w[0],
        dense=_unfloats(w[1]) if w[1] is not None else None,
        sparse=Sparse(w[2][0], w[2][1]) if w[2] is not None else None,
        limit=w[3],
        mode=w[4],
        must=tuple(Condition(k, tuple(a), gte, lt) for k, a, gte, lt in w[5]),
        min_score=w[6],
        recency_half_life_s=w[7],
        now=dt.datetime.fromtimestamp(w[8], dt.UTC),
        filter=_node_in(w[9]) if w[9] is not None else None,
    )


def points_to_wire(points: Sequence[StorePoint]) -> list[Any]:
    return [[p.id, _floats(p.dense), p.sparse.indices, p.sparse.values, p.payload] for p in points]


def points_from_wire(wire: list[Any]) -> list[StorePoint]:
    return [StorePoint(i, _unfloats(d), Sparse(si, sv), pl) for i, d, si, sv, pl in wire]


def error_reply(err: BaseException) -> bytes:
    """``err`` as a reply the client raises again as the same kind."""
    if isinstance(err, OSError):
        kind = "os"
    elif isinstance(err, ValueError | TypeError | KeyError):
        kind = "value"
    elif type(err) is Exception:
        kind = "engine"  # Qdrant Edge's own failures are plain Exceptions
    else:
        kind = "runtime"
    errno = err.errno if isinstance(err, OSError) else None
    message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return _encode([1, kind, message or type(err).__name__, errno])


def _raise(kind: str, message: str, errno: int | None) -> None:
    if kind == "os":
        raise OSError(errno or 0, message)
    if kind == "value":
        raise ValueError(message)
    if kind == "engine":
        raise Exception(message)
    raise RuntimeError(message)


def _result(body: bytes) -> Any:
    """A reply's result, or its error raised again."""
    reply = _decode(body)
    if reply[0] != 0:
        _raise(*reply[1:])
    return reply[1]


def read_frame(sock: socket.socket) -> bytes | None:
    """One frame's body, or None at the end of the stream."""
    head = _read_exactly(sock, HEADER.size)
    if head is None:
        return None
    body = _read_exactly(sock, HEADER.unpack(head)[0])
    if body is None:
        return None
    return body


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    view = memoryview(bytearray(n))
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(view)


# --- the client ----------------------------------------------------------------------


class _Client:
    """A connection per thread to the engine process; a call waits for its reply."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[socket.socket] = []
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError as err:
            sock.close()
            raise EngineUnavailable(
                f"the vector engine process does not answer at {self.path} "
                f"({err.strerror or err}): it is starting or being restarted"
            ) from None
        with self._lock:
            self._all.append(sock)
        self._local.sock = sock
        return sock

    def _drop(self, sock: socket.socket) -> None:
        self._local.sock = None
        with self._lock, contextlib.suppress(ValueError):
            self._all.remove(sock)
        sock.close()

    def call(self, op: str, *args: Any) -> Any:
        frame = _encode([op, *args])
        frame = HEADER.pack(len(frame)) + frame
        sock: socket.socket | None = getattr(self._local, "sock", None)
        # A connection made before the engine was restarted fails at its first use: then
        # once more on a new one (every call is safe to repeat: writes are idempotent).
        for reused in (sock is not None, False):
            if sock is None:
                sock = self._connect()
            try:
                sock.sendall(frame)
                body = read_frame(sock)
            except OSError as err:
                body, failure = None, err.strerror or str(err)
            else:
                failure = "it closed the connection"
            if body is not None:
                break
            self._drop(sock)
            sock = None
            if not reused:
                raise EngineUnavailable(
                    f"the vector engine process stopped answering ({failure}): it is "
                    "restarted by memstream; the call is repeated then"
                )
        assert body is not None
        return _result(body)

    def close(self) -> None:
        with self._lock:
            for sock in self._all:
                sock.close()
            self._all.clear()


class _Connection:
    """One connection of an :class:`_AsyncClient`, and the calls waiting for a reply
    on it, oldest first."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.waiting: collections.deque[asyncio.Future[bytes | None]] = collections.deque()
        self.closed = False

    def end(self) -> None:
        """Closed: every call still waiting on it learns that the engine is gone."""
        self.closed = True
        self.writer.close()
        while self.waiting:
            reply = self.waiting.popleft()
            if not reply.done():
                reply.set_result(None)


class _AsyncClient:
    """A connection to the engine process from an event loop, for reads only (the
    searcher's searches): a call is sent as it comes and awaits its reply, which comes
    back in the order the calls were sent (the engine answers a connection's reads in
    order). No thread waits on the socket, so a reply reaches the loop without a hand-off
    between threads (each a wake-up, and a wait for the interpreter lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connection(self) -> _Connection:
        async with self._connecting:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path))
            except OSError as err:
                raise EngineUnavailable(
                    f"the vector engine process does not answer at {self.path} "
                    f"({err.strerror or err}): it is starting or being restarted"
                ) from None
            conn = self._conn = _Connection(writer)
            self._loop = asyncio.get_running_loop()
            task = asyncio.create_task(self._replies(reader, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return conn

    @staticmethod
    async def _replies(reader: asyncio.StreamReader, conn: _Connection) -> None:
        """Each reply to the call on ``conn`` waiting longest, until the stream ends."""
        try:
            while True:
                head = await reader.readexactly(HEADER.size)
                body = await reader.readexactly(HEADER.unpack(head)[0])
                if conn.waiting:
                    reply = conn.waiting.popleft()
                    if not reply.done():  # its asker gave up (cancelled)
                        reply.set_result(body)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.end()

    async def call(self, op: str, *args: Any) -> Any:
        frame = _encode([op, *args])
        frame = HEADER.pack(len(frame)) + frame
        # A connection made before the engine was restarted fails at its first use: then
        # once more on a new one (a read is safe to repeat).
        for reused in (self._conn is not None and not self._conn.closed, False):
            conn = await self._connection()
            body: bytes | None = None
            if not conn.closed:  # (it may have ended while this call waited for it)
                reply: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
                conn.waiting.append(reply)
                conn.writer.write(frame)
                body = await reply
            if body is not None:
                break
            if not reused:
                raise EngineUnavailable(
                    "the vector engine process stopped answering: it is restarted by "
                    "memstream; ask again then"
                )
        assert body is not None
        return _result(body)

    def close(self) -> None:
        """Closed on its loop's thread, whichever thread asks (the generation it serves
        may be let go of by a call in a worker thread)."""
        loop = self._loop
        with contextlib.suppress(RuntimeError):
            if loop is not None and asyncio.get_running_loop() is loop:
                loop = None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._close_now)
            return
        with contextlib.suppress(RuntimeError):  # its loop closed: nothing left to end
            self._close_now()

    def _close_now(self) -> None:
        if self._conn is not None:
            self._conn.end()
            self._conn = None
        for task in list(self._tasks):
            task.cancel()


class RemoteStore:
    """One generation, in its engine process."""

    def __init__(self, stores: RemoteStores, generation: str | None) -> None:
        """``generation`` None: the one in use at each call."""
        self._stores = stores
        self._generation = generation

    @property
    def generation(self) -> str:
        return self._generation or self._stores.current() or ""

    @generation.setter
    def generation(self, generation: str) -> None:
        self._generation = generation or None

    def _call(self, op: str, *args: Any) -> Any:
        if self._generation is not None:
            return self._stores.client(self._generation).call(op, self._generation, *args)
        # Following the generation in use: one swapped out meanwhile (its engine ended,
        # or no longer holds it) is asked once more, as the one in use now.
        generation = self._stores.current()
        if generation is None:
            raise RuntimeError("the vector engine has no generation in use yet")
        try:
            return self._stores.client(generation).call(op, generation, *args)
        except (EngineUnavailable, RuntimeError):
            now = self._stores.swapped_from(generation)
            if now is None:
                raise
            return self._stores.client(now).call(op, now, *args)

    def upsert(self, points: Sequence[StorePoint]) -> None:
        if points:
            self._call("upsert", points_to_wire(points))

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._call("delete", list(ids))

    def retrieve(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        found: list[dict[str, Any]] = self._call("retrieve", list(ids))
        return found

    def delete_tenant(self, tenant: str) -> int:
        return int(self._call("delete_tenant", tenant))

    def delete_expired(self, now: dt.datetime) -> int:
        return int(self._call("delete_expired", now.timestamp()))

    def count(self, tenant: str) -> int:
        return int(self._call("count", tenant))

    def points(self) -> int:
        return int(self._call("points"))

    def payloads(
        self, tenant: str | None = None, *, where: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        offset: Any = None
        while True:
            page, offset = self._call("payloads", tenant, dict(where or {}), offset)
            yield from page
            if offset is None:
                return

    def search(self, search: Search) -> list[Found]:
        found = self._call("search", search_to_wire(search))
        return [Found(i, s, p) for i, s, p in found]

    def read_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._call("read_state")
        return state

    def check(self) -> None:
        self._call("check")

    def write_state(self, state: dict[str, Any]) -> None:
        self._call("write_state", state)

    def copy_to(self, target: Path) -> None:
        """A copy of the shard as it is now (the caller holds its writes back), made by
        its engine process (the shard's files are its own)."""
        self._call("copy_to", str(target))

    def close(self) -> None:
        """Nothing to release here: the engine process keeps the shard open."""


class RemoteStores(Lending):
    """The shards under ``shards``, each held by an engine process of its own, found
    (or started) through ``engines``.

    One process per generation: a generation swapped in is loaded by its own process
    while the one in use goes on answering (a load holds an engine for 0.3-0.5 s), and
    the one swapped out ends with its process (a close held it for 0.1-0.2 s). What is
    lent to an indexing process is kept here, by the process that lends it (see
    :meth:`EdgeStores.lend`), so a restart of an engine forgets nothing of it."""

    def __init__(self, shards: Path, engines: Engines | None = None) -> None:
        super().__init__()
        self.shards = shards
        self.engines: Engines = engines or Listening(shards)
        self.files = ProjectionFiles(shards, "shard", "")
        self._clients: dict[str, _Client] = {}
        # The event loop's connections (searches from the searcher's loop).
        self._async_clients: dict[str, _AsyncClient] = {}
        self._lock = threading.Lock()
        # The generation in use, as last read, and the pointer file it was read from.
        self._current: tuple[tuple[int, int] | None, str | None] = (None, None)

    def client(self, generation: str) -> _Client:
        found = self._clients.get(generation)
        if found is not None:
            return found
        path = self.engines.socket(generation)  # outside the lock: it may start one
        with self._lock:
            return self._clients.setdefault(generation, _Client(path))

    def forget(self, generation: str) -> None:
        """Let go of ``generation``'s engine (swapped out by the process that owns it)."""
        with self._lock:
            client = self._clients.pop(generation, None)
            async_client = self._async_clients.pop(generation, None)
        if client is not None:
            client.close()
        if async_client is not None:
            async_client.close()

    def swapped_from(self, generation: str) -> str | None:
        """After a call to ``generation`` failed: the generation in use now, to ask once
        more, with ``generation``'s engine let go of; None if the pointer has not moved
        (the failure is the answer)."""
        now = self.current(fresh=True)
        if now is None or now == generation:
            return None
        self.forget(generation)
        return now

    async def search(self, search: Search, generation: str) -> list[Found]:
        """``search`` of ``generation`` (the one in use, as :meth:`current` said), from an
        event loop (the searcher's): awaited without a thread. One swapped out meanwhile
        (its engine ended) is asked once more, as the one in use now."""
        wire = search_to_wire(search)
        try:
            found = await self._async_client(generation).call("search", generation, wire)
        except (EngineUnavailable, RuntimeError):
            now = self.swapped_from(generation)
            if now is None:
                raise
            found = await self._async_client(now).call("search", now, wire)
        return [Found(i, s, p) for i, s, p in found]

    def _async_client(self, generation: str) -> _AsyncClient:
        found = self._async_clients.get(generation)
        if found is None:
            found = _AsyncClient(self.engines.socket(generation))
            with self._lock:
                self._async_clients[generation] = found
        return found

    def path(self, generation: str) -> Path:
        return self.shards / f"shard-{generation}"

    def current(self, fresh: bool = False) -> str | None:
        """The generation in use (its pointer is read again only once it changed: a
        search asks this every time)."""
        try:
            st = self.files.pointer.stat()
            mark: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            mark = None
        seen, generation = self._current
        if fresh or mark is None or mark != seen:
            path = self.files.current()
            generation = path.name.removeprefix("shard-") if path is not None else None
            self._current = (mark, generation)
        return generation

    def generations(self) -> list[str]:
        return shard_generations(self.shards)

    def open(self, generation: str, dimensions: int) -> PointStore:
        if generation in self._lent:
            raise RuntimeError(f"shard {generation} is in another process's hands")
        self.client(generation).call("open", generation, dimensions)
        return RemoteStore(self, generation)

    def current_store(self) -> RemoteStore:
        """The generation in use at each call, whichever it is then (for a reader that
        follows swaps without asking which one first). A call made while no generation
        is in use fails (``RuntimeError``)."""
        return RemoteStore(self, None)

    def make_current(self, generation: str) -> str | None:
        """Its engine has acknowledged every write before this: the pointer moves here."""
        old = self.files.make_current(self.path(generation))
        return old.name.removeprefix("shard-") if old is not None else None

    def drop(self, generation: str) -> None:
        """Its engine process ends (killed: nothing of it is worth a flush), then its
        files go, off every engine's thread."""
        self.forget(generation)
        self.engines.retire(generation)
        shutil.rmtree(self.path(generation), ignore_errors=True)

    def status(self, within: float = 2.0) -> dict[str, Any]:
        """What the engine process of the generation in use reports of itself (its pid,
        its queues, its calls), on a connection of its own that waits ``within`` seconds
        at most."""
        generation = self.current()
        if generation is None:
            raise EngineUnavailable("no vector engine process yet: no generation is in use")
        path = engine_socket(self.shards, generation)  # asked, never started, here
        frame = _encode(["status", generation])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(within)
            try:
                sock.connect(str(path))
                sock.sendall(HEADER.pack(len(frame)) + frame)
                body = read_frame(sock)
            except OSError as err:
                raise EngineUnavailable(
                    f"the vector engine process does not answer ({err.strerror or err})"
                ) from None
        if body is None:
            raise EngineUnavailable("the vector engine process closed the connection")
        status: dict[str, Any] = _decode(body)[1]
        return status

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            async_clients, self._async_clients = list(self._async_clients.values()), {}
        for client in clients:
            client.close()
        for async_client in async_clients:
            async_client.close()

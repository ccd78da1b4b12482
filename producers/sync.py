"""``SyncMemoryClient``: the blocking twin of MemoryClient, for agents that are not async.

It runs one private event loop on a daemon thread and hands every call to it, so it can
be used from any thread (and from code that has its own event loop on another thread).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from memstream.producers._events import PublishAck
from memstream.producers._queries import R
from memstream.producers._watch import Change
from memstream.producers.client import MemoryClient
from memstream.producers.locks import Lock, LockHolder
from memstream.schemas.events import Event

__all__ = ["SyncLock", "SyncMemoryClient"]

T = TypeVar("T")
E = TypeVar("E", bound=Event)
P = ParamSpec("P")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="memstream-sync-client", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


def _blocking(
    async_method: Callable[Concatenate[MemoryClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncMemoryClient, P], T]:
    """The blocking twin of a MemoryClient method, with its parameters and result type
    (``ParamSpec``): a type checker sees each twin's exact signature."""
    name = async_method.__name__

    @functools.wraps(async_method)
    def method(self: SyncMemoryClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound: Callable[P, Coroutine[Any, Any, T]] = getattr(self._client, name)
        return self._runner.run(bound(*args, **kwargs))

    return method


class SyncLock:
    """A lock of SyncMemoryClient: ``with mem.lock("deploy") as lock:``."""

    def __init__(self, lock: Lock, runner: _LoopThread) -> None:
        self._lock = lock
        self._runner = runner

    @property
    def token(self) -> int:
        """The fencing token: the KV revision at acquisition."""
        return self._lock.token

    def acquire(self) -> SyncLock:
        self._runner.run(self._lock.acquire())
        return self

    def holder(self) -> LockHolder | None:
        """Who holds the lock now; None when nobody does."""
        return self._runner.run(self._lock.holder())

    def renew(self) -> None:
        self._runner.run(self._lock.renew())

    def release(self) -> bool:
        return self._runner.run(self._lock.release())

    def __enter__(self) -> SyncLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._runner.run(self._lock.__aexit__(exc_type, exc, tb))


class SyncMemoryClient:
    """Blocking MemoryClient: the same methods, each returning when JetStream has acked
    (a publish) or the reply has come (a query)."""

    def __init__(self, client: MemoryClient, runner: _LoopThread) -> None:
        self._client = client
        self._runner = runner

    @classmethod
    def connect(cls, url: str | None = None, **options: Any) -> SyncMemoryClient:
        """Connect; takes the same arguments as :meth:`MemoryClient.connect`."""
        runner = _LoopThread()
        try:
            client = runner.run(MemoryClient.connect(url, **options))
        except BaseException:
            runner.stop()
            raise
        return cls(client, runner)

    @property
    def tenant(self) -> str:
        return self._client.tenant

    @property
    def agent(self) -> str:
        return self._client.agent

    def new_event(self, cls: type[E], **fields: Any) -> E:
        """An event of ``cls`` from this client's tenant and agent, with a new id and ts."""
        return self._client.new_event(cls, **fields)

    def encode(self, event: Event) -> tuple[str, bytes]:
        """Subject and body for ``event``; raises InvalidEvent or EventTooLarge."""
        return self._client.encode(event)

    def query(self, op: str, result: type[R], **fields: Any) -> R:
        """Send one query; fields left as None are not sent (the worker's default holds)."""
        return self._runner.run(self._client.query(op, result, **fields))

    def run(self, work: Callable[[MemoryClient], Coroutine[Any, Any, T]]) -> T:
        """Block on ``work(client)``, run on this client's own loop with the async
        client: for several calls that belong together, or a method with no twin."""
        return self._runner.run(work(self._client))

    async def arun(self, work: Callable[[MemoryClient], Coroutine[Any, Any, T]]) -> T:
        """Await ``work(client)`` from any event loop: it runs on this client's own loop,
        so one client serves code that calls ``asyncio.run`` many times (as some agent
        frameworks do), where an async client would be tied to the loop it connected in."""
        future = asyncio.run_coroutine_threadsafe(work(self._client), self._runner.loop)
        return await asyncio.wrap_future(future)

    def lock(self, name: str, *, ttl_s: float = 30.0, wait_s: float = 0.0) -> SyncLock:
        """The tenant's lock ``name``, for ``with``; see :meth:`MemoryClient.lock`."""
        return SyncLock(self._client.lock(name, ttl_s=ttl_s, wait_s=wait_s), self._runner)

    def watch(
        self,
        *,
        types: Sequence[str] = (),
        from_seq: int | None = None,
        heartbeat_s: float = 5.0,
    ) -> Iterator[Change]:
        """The tenant's own events as they are published; see :meth:`MemoryClient.watch`."""
        feed = self._client.watch(types=types, from_seq=from_seq, heartbeat_s=heartbeat_s)

        async def step() -> Change:
            return await anext(feed)

        try:
            while True:
                try:
                    yield self._runner.run(step())
                except StopAsyncIteration:
                    return
        finally:
            self._runner.run(feed.aclose())

    def close(self) -> None:
        try:
            self._runner.run(self._client.close(), timeout=30)
        finally:
            self._runner.stop()

    def __enter__(self) -> SyncMemoryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def publish_many(self, events: Iterable[Event]) -> list[PublishAck]:
        # Materialise here: the iterable may not be safe to read from the loop's thread.
        return self._runner.run(self._client.publish_many(list(events)))

    publish = _blocking(MemoryClient.publish)
    store_knowledge = _blocking(MemoryClient.store_knowledge)
    store_solution = _blocking(MemoryClient.store_solution)
    revise = _blocking(MemoryClient.revise)
    forget = _blocking(MemoryClient.forget)
    link = _blocking(MemoryClient.link)
    edit = _blocking(MemoryClient.edit)
    outcome = _blocking(MemoryClient.outcome)
    record_collaboration = _blocking(MemoryClient.record_collaboration)
    send_message = _blocking(MemoryClient.send_message)
    task_created = _blocking(MemoryClient.task_created)
    task_started = _blocking(MemoryClient.task_started)
    task_completed = _blocking(MemoryClient.task_completed)
    task_failed = _blocking(MemoryClient.task_failed)
    record_flow_run = _blocking(MemoryClient.record_flow_run)
    set_context = _blocking(MemoryClient.set_context)
    clear_context = _blocking(MemoryClient.clear_context)
    add_turn = _blocking(MemoryClient.add_turn)
    remove_turns = _blocking(MemoryClient.remove_turns)
    record_tool_use = _blocking(MemoryClient.record_tool_use)
    search = _blocking(MemoryClient.search)
    search_many = _blocking(MemoryClient.search_many)
    history = _blocking(MemoryClient.history)
    task = _blocking(MemoryClient.task)
    context = _blocking(MemoryClient.context)
    conversation = _blocking(MemoryClient.conversation)
    recall = _blocking(MemoryClient.recall)
    stats = _blocking(MemoryClient.stats)
    get = _blocking(MemoryClient.get)
    list_memories = _blocking(MemoryClient.list_memories)
    revisions = _blocking(MemoryClient.revisions)
    links = _blocking(MemoryClient.links)
    analytics = _blocking(MemoryClient.analytics)

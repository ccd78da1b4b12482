"""``SyncMemoryClient``: the blocking twin of MemoryClient, for agents that are not async.

It runs one private event loop on a daemon thread and hands every call to it, so it can
be used from any thread (and from code that has its own event loop on another thread).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from producers.client import MemoryClient, PublishAck
from schemas.events import Event

__all__ = ["SyncMemoryClient"]

T = TypeVar("T")


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


def _blocking(name: str) -> Callable[..., Any]:
    async_method = getattr(MemoryClient, name)

    @functools.wraps(async_method)
    def method(self: SyncMemoryClient, *args: Any, **kwargs: Any) -> Any:
        return self._runner.run(getattr(self._client, name)(*args, **kwargs))

    return method


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

    def new_event(self, cls: type[Event], **fields: Any) -> Event:
        return self._client.new_event(cls, **fields)

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

    publish = _blocking("publish")
    store_knowledge = _blocking("store_knowledge")
    store_solution = _blocking("store_solution")
    revise = _blocking("revise")
    forget = _blocking("forget")
    link = _blocking("link")
    record_collaboration = _blocking("record_collaboration")
    send_message = _blocking("send_message")
    task_created = _blocking("task_created")
    task_started = _blocking("task_started")
    task_completed = _blocking("task_completed")
    task_failed = _blocking("task_failed")
    record_flow_run = _blocking("record_flow_run")
    set_context = _blocking("set_context")
    clear_context = _blocking("clear_context")
    add_turn = _blocking("add_turn")
    record_tool_use = _blocking("record_tool_use")
    search = _blocking("search")
    search_many = _blocking("search_many")
    history = _blocking("history")
    task = _blocking("task")
    context = _blocking("context")
    conversation = _blocking("conversation")
    recall = _blocking("recall")
    stats = _blocking("stats")
    analytics = _blocking("analytics")
    query = _blocking("query")

"""Batch pulls from a JetStream consumer, without a task per message, with prefetch.

nats-py's ``PullSubscription.fetch`` takes each message of a batch with ``next_msg``
under ``wait_for``: a task and five event-loop turns per message, which is most of the
cost of catching up on a stream. This sends the same pull request (the documented
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` with ``batch`` and ``expires``) and
collects deliveries in one callback subscription. The next request goes out as soon as
a batch is handed over, so the server streams the next batch while this one is applied.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["BatchPuller"]

# Statuses that end a pull request early: no messages (404), expired (408), the server
# cancelling it (409: leadership change, consumer deleted, max waiting...), and nobody
# to answer it (503: the consumer does not exist, or JetStream is unavailable).
_END = frozenset({"404", "408", "409", "503"})
_TROUBLE = frozenset({"409", "503"})


class BatchPuller:
    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        consumer: str,
        *,
        linger: float = 0.005,
        spacing: float = 0.0,
    ) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        # A batch is handed over this long after its last message when fewer than asked
        # for came: a lone event is applied in milliseconds, not after the whole expiry.
        self.linger = linger
        # ... and, unless full, no sooner than ``spacing`` after the batch before it: a
        # steady flow is handed over in batches of that many seconds of it, not one per
        # publish, while the first event after a quiet spell still waits only ``linger``.
        self.spacing = spacing
        self._handed = -spacing
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._ids = itertools.count()
        self._msgs: list[Msg] = []
        # The request in flight: its reply subject and how many messages it may still
        # deliver (0: none in flight).
        self._reply = ""
        self._owed = 0
        self._wanted = 0
        self._wake: asyncio.Future[None] | None = None
        self._last = 0.0
        self._linger_handle: asyncio.TimerHandle | None = None
        # The last status that ended a request early ("409 Consumer Deleted", ...).
        self.last_status: str | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> None:
        if self._linger_handle is not None:
            self._linger_handle.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    def _set_wake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.data and msg.headers and "Status" in msg.headers:
            # A status comes on its request's reply subject; one for an earlier request
            # must not end the current one.
            if msg.headers["Status"] in _END and msg.subject == self._reply:
                self._owed = 0
                status = msg.headers["Status"]
                if status in _TROUBLE:
                    words = msg.headers.get("Description", "").strip().splitlines()[:1]
                    self.last_status = " ".join([status, *words])
                self._set_wake()
            return  # 100: an idle heartbeat
        # Deliveries carry their stream subject, not the reply subject; they come in the
        # consumer's order whichever request they answer, so all of them are kept.
        self._msgs.append(msg)
        if self._owed:
            self._owed -= 1
        if len(self._msgs) >= self._wanted or not self._owed:
            self._set_wake()
        elif self.linger and self._wake is not None:
            loop = asyncio.get_running_loop()
            self._last = loop.time()
            if self._linger_handle is None:
                self._linger_handle = loop.call_at(self._last + self.linger, self._linger_check)

    def _linger_check(self) -> None:
        # One timer per quiet period, not one per message: re-arm while messages flow.
        self._linger_handle = None
        if self._wake is None or self._wake.done():
            return
        loop = asyncio.get_running_loop()
        quiet_until = max(self._last + self.linger, self._handed + self.spacing)
        if loop.time() >= quiet_until:
            self._set_wake()
        else:
            self._linger_handle = loop.call_at(quiet_until, self._linger_check)

    async def _request(self, batch: int, timeout: float) -> None:  # noqa: ASYNC109
        self._reply = f"{self._inbox}.{next(self._ids)}"
        self._owed = batch
        request: dict[str, Any] = {"batch": batch, "expires": int(timeout * 1e9)}
        await self.nc.publish(self.subject, msgspec.json.encode(request), reply=self._reply)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109
        """Up to ``batch`` messages: as soon as there are ``batch``, or ``linger`` after
        the last one (and ``spacing`` after the last batch), or (none arriving) once a
        request of ``timeout`` seconds expires."""
        if self._sub is None:
            raise RuntimeError("BatchPuller.start() was not called")
        loop = asyncio.get_running_loop()
        if self._msgs:
            self._last = loop.time()  # what came before this call lingers from now
        while len(self._msgs) < batch:
            if not self._owed:
                await self._request(batch - len(self._msgs), timeout)
            self._wanted = batch
            self._wake = loop.create_future()
            if self._msgs and self.linger:
                self._linger_check()
            try:
                # The server answers 408 at expiry; the margin covers a lost status.
                await asyncio.wait_for(asyncio.shield(self._wake), timeout + 2.0)
            except TimeoutError:
                self._owed = 0  # that request is over, answered or not: ask again next time
            self._wake = None
            if self._linger_handle is not None:
                self._linger_handle.cancel()
                self._linger_handle = None
            # A request that expired (or delivered all it asked) before the spacing is
            # up: ask again and go on gathering, unless the server is in trouble.
            spaced = loop.time() >= self._handed + self.spacing
            if not self._msgs or spaced or self.last_status is not None:
                break
        msgs, self._msgs = self._msgs[:batch], self._msgs[batch:]
        if msgs:
            self._handed = loop.time()
        if not self._owed:
            # Prefetch: the next batch streams in while the caller works on this one.
            await self._request(batch, timeout)
        return msgs

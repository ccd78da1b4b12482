"""``MemoryClient``: what an agent imports to publish and query its memory (asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from types import TracebackType

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import PubAck

from memstream.producers._events import PublishAck
from memstream.producers._memory_writes import MemoryWrites
from memstream.producers._queries import QueryMethods
from memstream.producers.connection import USER_VAR, connect_nats, denied, or_denied, same_loop
from memstream.producers.locks import Lock
from memstream.schemas import events as ev
from memstream.schemas.errors import Forbidden, InvalidEvent, PublishError
from memstream.schemas.events import DEFAULT_MAX_EVENT_BYTES, Event
from memstream.schemas.ids import validate_agent, validate_ref_id, validate_tenant
from memstream.schemas.subjects import event_subject, reply_inbox_prefix, split_nats_user

__all__ = ["MemoryClient"]

# One decoder per event class, to validate an event against the contract before it is
# sent (a Struct's constructor checks types statically only).
_validators = {tag: msgspec.json.Decoder(cls) for tag, cls in ev.EVENT_TYPES.items()}


class MemoryClient(MemoryWrites, QueryMethods):
    """Publishes one tenant's events as one agent. Create it with :meth:`connect`.

    Every typed method builds a contract-conforming event (id as UUIDv7, timestamp now),
    validates it, and publishes it with ``Nats-Msg-Id`` set to the event id, so a retry
    within JetStream's duplicate window is stored once. The query methods (``search``,
    ``history``, ``task``, ``context``, ``conversation``, ``recall``, ``stats``,
    ``analytics``) read the tenant's memory; pass ``min_seq=ack.seq`` to read a write.
    """

    def __init__(
        self,
        nc: NatsClient,
        *,
        tenant: str,
        agent: str,
        window: int = 512,
        ack_timeout: float = 5.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        owns_connection: bool = False,
        user_id: str | None = None,
        run_id: str | None = None,
        project: str | None = None,
    ) -> None:
        """``user_id``, ``run_id``, ``project``: the scope every memory this client
        stores carries unless the call names another."""
        self.tenant = validate_tenant(tenant)
        self.agent = validate_agent(agent)
        given = {"user_id": user_id, "run_id": run_id, "project": project}
        self.scope = {k: validate_ref_id(k, v) for k, v in given.items() if v is not None}
        if window < 1:
            raise ValueError("window must be at least 1")
        self.nc = nc
        self.window = window
        self.ack_timeout = ack_timeout
        self.max_event_bytes = max_event_bytes
        self._owns_connection = owns_connection
        self._js = nc.jetstream(timeout=ack_timeout, publish_async_max_pending=window)
        # (tenant, type) -> subject: building one validates the tokens, which is not free
        # per event on the hot path of publish_many.
        self._subjects: dict[tuple[str, str], str] = {}

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        tenant: str,
        agent: str,
        user: str | None = None,
        password: str | None = None,
        creds: str | None = None,
        window: int = 512,
        ack_timeout: float = 5.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        user_id: str | None = None,
        run_id: str | None = None,
        project: str | None = None,
    ) -> MemoryClient:
        """Connect to NATS (``url`` defaults to ``$MEMSTREAM_NATS_URL``). ``user_id``,
        ``run_id`` and ``project`` scope every memory this client stores."""
        validate_tenant(tenant)
        validate_agent(agent)
        scope = {"user_id": user_id, "run_id": run_id, "project": project}
        for name, value in scope.items():
            if value is not None:
                validate_ref_id(name, value)
        nc = await connect_nats(
            url,
            name=f"memstream:{tenant}:{agent}",
            user=user,
            password=password,
            creds=creds,
            # Replies come back under the tenant's own inbox prefix, the only place a
            # tenant's credentials may subscribe (see `memstream up --auth`); a user within
            # the tenant (<user>@<tenant>) has its own under it.
            inbox_prefix=inbox_for(tenant, user),
        )
        return cls(
            nc,
            tenant=tenant,
            agent=agent,
            window=window,
            ack_timeout=ack_timeout,
            max_event_bytes=max_event_bytes,
            owns_connection=True,
            **scope,
        )

    def lock(self, name: str, *, ttl_s: float = 30.0, wait_s: float = 0.0) -> Lock:
        """The tenant's lock ``name``, for ``async with``: held for at most ``ttl_s``
        unless renewed (``await lock.renew()``), with ``lock.token`` the fencing token;
        waits up to ``wait_s`` for another holder, else raises LockHeld."""
        return Lock(self.nc.jetstream(), self.tenant, name, self.agent, ttl_s, wait_s)

    async def close(self) -> None:
        """Wait for in-flight publishes, then close the connection if this client opened it.

        Never raises: with the broker gone (the connection reconnecting), there is nothing
        to drain, and the connection is closed as it is.
        """
        if not self._owns_connection or self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except (nats.errors.Error, TimeoutError, OSError):
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                await self.nc.close()

    async def __aenter__(self) -> MemoryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- building and publishing --------------------------------------------------

    def encode(self, event: Event) -> tuple[str, bytes]:
        """Subject and body for ``event``; raises InvalidEvent or EventTooLarge."""
        validator = _validators.get(event.type)
        if validator is None:
            raise InvalidEvent(f"unknown event type {event.type!r}")
        body = ev.encode_event(event, self.max_event_bytes)
        try:
            validator.decode(body)
        except msgspec.ValidationError as err:
            raise InvalidEvent(f"{event.type} event does not match the contract: {err}") from None
        key = (event.tenant, event.type)
        subject = self._subjects.get(key)
        if subject is None:
            if len(self._subjects) > 4096:
                self._subjects.clear()
            subject = self._subjects[key] = event_subject(*key)
        return subject, body

    async def _publish_one(self, subject: str, body: bytes, event_id: str) -> PubAck:
        """One publish; while no stream answers (JetStream electing a stream leader, the
        stream being created) it is tried again with backoff for up to ``ack_timeout``,
        rather than failing at once: the same id is stored once, however often sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        delay = 0.05
        while True:
            try:
                ack: PubAck = await or_denied(
                    self.nc,
                    subject,
                    self._js.publish(
                        subject,
                        body,
                        timeout=max(0.1, deadline - loop.time()),
                        headers={"Nats-Msg-Id": event_id},
                    ),
                )
                return ack
            except _NO_STREAM:
                if loop.time() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def publish(self, event: Event) -> PublishAck:
        """Publish one event and wait for JetStream to store it."""
        subject, body = self.encode(event)
        try:
            ack = await self._publish_one(subject, body, event.id)
        except Forbidden as err:
            raise PublishError(
                f"event {event.id} was not stored: these credentials may not publish to "
                f"{subject} ({err})",
                {0: err},
                [None],
            ) from None
        except (nats.errors.Error, TimeoutError) as err:
            if _outcome_unknown(err):
                raise PublishError(
                    f"event {event.id} may or may not have been stored ({_reason(err)}): "
                    "publishing the same event again is safe, its id is stored once",
                    {0: err},
                    [None],
                    frozenset({0}),
                ) from err
            raise PublishError(
                f"event {event.id} was not stored: {_reason(err)}", {0: err}, [None]
            ) from err
        return _to_ack(ack, event.id)

    async def publish_many(self, events: Iterable[Event]) -> list[PublishAck]:
        """Publish a batch with up to ``window`` publishes in flight; acks in input order.

        Every event is validated before the first is sent, so an invalid event sends
        nothing. While no stream answers (a stream-leader election), the events it did
        not take are sent again with backoff for up to ``ack_timeout``. If JetStream does
        not store some of them, PublishError carries the acks of the rest and says which
        may have been stored; publishing the whole batch again is safe (ids deduplicate).
        """
        batch = list(events)
        encoded = [self.encode(e) for e in batch]
        results = await self._send_window(batch, encoded, range(len(batch)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        delay = 0.05
        while True:
            waiting = [i for i, r in results.items() if _no_stream(r)]
            if not waiting or loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            results.update(await self._send_window(batch, encoded, waiting))
        acks: list[PublishAck | None] = [None] * len(batch)
        failures: dict[int, BaseException] = {}
        for i, result in results.items():
            if isinstance(result, BaseException):
                failures[i] = result
            else:
                acks[i] = _to_ack(result, batch[i].id)
        if failures:
            first = min(failures)
            reason = _forbidden(self.nc, encoded[first][0]) or _reason(failures[first])
            unknown = frozenset(i for i, err in failures.items() if _outcome_unknown(err))
            maybe = f", {len(unknown)} of them may have been stored" if unknown else ""
            raise PublishError(
                f"{len(failures)} of {len(batch)} events were not acknowledged{maybe} "
                f"(first: {reason}); publishing the batch again is safe: each id is stored "
                "once",
                failures,
                list(acks),
                unknown,
            )
        return acks  # type: ignore[return-value]

    async def _send_window(
        self, batch: list[Event], encoded: list[tuple[str, bytes]], indices: Iterable[int]
    ) -> dict[int, PubAck | BaseException]:
        """Send the events at ``indices`` with up to ``window`` in flight; each one's ack,
        or the error it met (``NotSent`` for those never sent)."""
        same_loop(self.nc)
        order = list(indices)
        futures: list[asyncio.Future[PubAck]] = []
        results: dict[int, PubAck | BaseException] = {}
        publish_async = self._js.publish_async
        loop = asyncio.get_running_loop()
        try:
            # Sending blocks only while the window is full; if no ack frees a slot for
            # ack_timeout, JetStream has stalled. The deadline moves every 64 sends
            # rather than every send: a timer per message would cost more than encoding.
            async with asyncio.timeout(self.ack_timeout) as deadline:
                for n, i in enumerate(order):
                    if not n & 63:
                        deadline.reschedule(loop.time() + self.ack_timeout)
                    subject, body = encoded[i]
                    futures.append(
                        await publish_async(subject, body, headers={"Nats-Msg-Id": batch[i].id})
                    )
        except (nats.errors.Error, TimeoutError) as err:
            if isinstance(err, TimeoutError):
                err = TimeoutError("JetStream stopped acknowledging while the window was full")
            results.update(dict.fromkeys(order[len(futures) :], NotSent(err)))
        try:
            done = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), self.ack_timeout
            )
        except TimeoutError:
            for fut in futures:
                fut.cancel()
            done = [
                f.result()
                if f.done() and not f.cancelled() and f.exception() is None
                else TimeoutError("no acknowledgement from JetStream in time")
                for f in futures
            ]
        results.update(zip(order, done, strict=False))
        return results


class NotSent(Exception):
    """An event of a batch that was never sent: ``cause`` stopped the sending."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _to_ack(ack: PubAck, event_id: str) -> PublishAck:
    return PublishAck(seq=ack.seq, id=event_id, duplicate=bool(ack.duplicate), stream=ack.stream)


def _forbidden(nc: NatsClient, subject: str) -> str | None:
    message = denied(nc, subject)
    return f"these credentials may not publish to {subject} ({message})" if message else None


# What a publish meets while no stream takes its subject (yet).
_NO_STREAM = (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)


def _no_stream(result: PubAck | BaseException) -> bool:
    return isinstance(result, _NO_STREAM)


def _outcome_unknown(err: BaseException) -> bool:
    """Whether an event that failed so may have been stored all the same: its publish
    went out (or sits in the buffer nats-py sends after a reconnect), and only the
    acknowledgement is missing. A refusal, no stream, a closed connection, or never
    sent is certain: not stored."""
    if _no_stream(err) or isinstance(err, NotSent):
        return False
    if isinstance(
        err,
        nats.js.errors.APIError
        | Forbidden
        | nats.errors.ConnectionClosedError
        | nats.errors.OutboundBufferLimitError,
    ):
        return False
    return isinstance(err, TimeoutError | nats.errors.Error | OSError)


def _reason(err: BaseException) -> str:
    if isinstance(err, NotSent):
        return f"not sent: {_reason(err.cause)}"
    if _no_stream(err):
        return (
            "no stream answered, tried again for the whole acknowledgement timeout: JetStream "
            "may be electing a stream leader (try again), or no stream takes this subject "
            "(run 'memstream up', which creates the streams)"
        )
    if isinstance(err, TimeoutError | nats.errors.TimeoutError):
        return "no acknowledgement from JetStream in time"
    if isinstance(err, nats.js.errors.APIError):
        return f"JetStream refused it: {err.description or err}"
    return repr(err)


def inbox_for(tenant: str, user: str | None) -> str:
    """The reply inbox prefix a connection of ``tenant`` as NATS user ``user`` (None:
    ``$MEMSTREAM_NATS_USER``) receives under."""
    named = split_nats_user(user if user is not None else os.environ.get(USER_VAR))
    return reply_inbox_prefix(tenant, named[1] if named and named[0] == tenant else None)

"""Connecting to NATS with clear failures and lasting reconnects.

The one NATS connection module: the SDK and every memstream process connect through it.
It logs through the standard library's ``logging`` (logger ``memstream.nats``) and never
configures logging itself, so an agent's program decides what it shows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Awaitable
from typing import Any, Final, TypedDict, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from memstream.schemas.errors import ConnectError, Forbidden

__all__ = [
    "CREDS_VAR",
    "DEFAULT_URL",
    "PASSWORD_VAR",
    "URL_VAR",
    "USER_VAR",
    "NatsAuth",
    "NoCredentials",
    "connect_nats",
    "default_url",
    "denied",
    "or_denied",
    "subscriptions_held",
]

T = TypeVar("T")

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
# The environment variables a connection reads when not told otherwise.
URL_VAR: Final = "MEMSTREAM_NATS_URL"
USER_VAR: Final = "MEMSTREAM_NATS_USER"
PASSWORD_VAR: Final = "MEMSTREAM_NATS_PASSWORD"
CREDS_VAR: Final = "MEMSTREAM_NATS_CREDS"
log = logging.getLogger("memstream.nats")
# The server's refusals, which the call refused also raises as Forbidden.
denials = logging.getLogger("memstream.nats.denied")


class NatsAuth(TypedDict):
    user: str | None
    password: str | None
    creds: str | None


# Per connection, the permission violations the server reported (the newest few): a
# denied publish or request just goes unanswered, and this says why.
_violations: weakref.WeakKeyDictionary[NatsClient, list[str]] = weakref.WeakKeyDictionary()


def denied(nc: NatsClient, subject: str) -> str | None:
    """The server's permissions-violation message about ``subject``, if it sent one."""
    for message in reversed(_violations.get(nc, ())):
        if subject in message:
            return message
    return None


async def when_denied(nc: NatsClient, subject: str, seen: int, poll: float = 0.02) -> str:
    """Wait for a permissions violation about ``subject`` after the first ``seen``: the
    server answers a refused publish with one at once, while the request would only
    time out."""
    while True:
        found = _violations.get(nc, [])
        # Fewer than seen: the list was trimmed meanwhile, so all of it is new.
        for message in found[seen:] if len(found) >= seen else found:
            if subject in message:
                return message
        seen = len(found)
        await asyncio.sleep(poll)


class OtherEventLoop(RuntimeError):
    """A client used in an event loop other than the one its connection was made in."""


def same_loop(nc: NatsClient) -> None:
    """A connection lives in the event loop it was made in (its reader, pinger and
    flusher are that loop's tasks). Used from another (a second ``asyncio.run``, as some
    frameworks do per call), a request would wait its whole timeout for a reply that
    nothing reads: say so at once instead."""
    reader = getattr(nc, "_reading_task", None)
    if reader is not None and reader.get_loop() is not asyncio.get_running_loop():
        raise OtherEventLoop(
            "this client's NATS connection was made in another event loop (one that "
            "asyncio.run ended, or another thread's): connect the client inside the loop "
            "that uses it, or use SyncMemoryClient, which keeps a loop of its own"
        )


async def or_denied(nc: NatsClient, subject: str, call: Awaitable[T]) -> T:
    """Await ``call``, unless the server refuses ``subject`` first: then Forbidden."""
    try:
        same_loop(nc)
    except OtherEventLoop:
        if asyncio.iscoroutine(call):
            call.close()  # never started: nothing to await
        raise
    if not (nc.options.get("user") or nc.options.get("user_credentials")):
        return await call  # no credentials, no permissions to violate: no watcher
    seen = len(_violations.get(nc, ()))  # before the call can send anything
    task = asyncio.ensure_future(call)
    watch = asyncio.ensure_future(when_denied(nc, subject, seen))
    try:
        await asyncio.wait([task, watch], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        raise Forbidden(watch.result())
    return task.result()


async def subscriptions_held(nc: NatsClient, tries: int = 20) -> None:
    """Return once the server holds every subscription ``nc`` has made so far.

    ``nc.flush()`` alone does not promise it: nats-py writes its PING to the socket at
    once, ahead of what still waits for its flusher task (a SUB among them), so the
    server can answer the PING before it has read the SUB. Seen under load: a query sent
    as soon as its worker said it was ready reached no member of that worker's queue
    group, and went unanswered. A flush hands what waits to the flusher; once nothing
    waits, every SUB is on the socket, and the next PING follows them."""
    await nc.flush()
    for _ in range(tries):
        if not nc.pending_data_size:
            break
        await nc.flush()
    await nc.flush()


def default_url() -> str:
    return os.environ.get(URL_VAR) or DEFAULT_URL


class NoCredentials(ConnectError):
    """The server admits only users with credentials, and none were given."""


async def connect_nats(
    url: str | None = None,
    *,
    name: str = "memstream",
    user: str | None = None,
    password: str | None = None,
    creds: str | None = None,
    connect_attempts: int = 3,
    **options: Any,
) -> NatsClient:
    """Connect, trying ``connect_attempts`` times, then reconnect forever once connected.

    ``url`` may be a comma-separated list of seeds: a cluster is reached through any of
    them, and a connection moves to another when its server goes away. A server that is
    down at start is a ConnectError naming the URL; a server that goes away later is
    waited for, so a worker rides out a broker restart.
    """
    url = url or default_url()
    user = user if user is not None else os.environ.get(USER_VAR) or None
    if password is None:
        password = os.environ.get(PASSWORD_VAR) or None
    creds = creds if creds is not None else os.environ.get(CREDS_VAR) or None
    if creds and not os.path.isfile(creds):  # noqa: ASYNC240 - one stat, at connect
        raise ConnectError(f"NATS credentials file {creds!r} does not exist")
    errors: list[BaseException] = []
    client: list[NatsClient] = []

    async def on_error(err: BaseException) -> None:
        errors.append(err)
        if client and "permissions violation" in str(err).lower():
            seen = _violations.setdefault(client[0], [])
            seen.append(str(err))
            if len(seen) > 256:
                del seen[:128]
            denials.warning("nats_permission_denied url=%s error=%s", url, err)
            return
        log.debug("nats_error url=%s error=%r", url, err)

    async def on_disconnect() -> None:
        # A disconnect we asked for (close, drain) is no news.
        if client and not (client[0].is_closed or client[0].is_draining):
            log.warning("nats_disconnected url=%s", url)

    async def on_reconnect() -> None:
        log.info("nats_reconnected url=%s", url)

    # A comma-separated list is the seeds of a cluster: any one of them will do.
    servers = [u.strip() for u in url.split(",") if u.strip()]
    kwargs: dict[str, Any] = dict(
        servers=servers,
        name=name,
        connect_timeout=2,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=connect_attempts,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    if user is not None:
        kwargs["user"] = user
        kwargs["password"] = password or ""
    if creds:
        kwargs["user_credentials"] = creds
    kwargs.update(options)
    try:
        nc = await nats.connect(**kwargs)
    except (nats.errors.Error, OSError, TimeoutError) as err:
        cause = errors[-1] if errors else err
        # The server says "Authorization Violation", then drops the connection: any
        # such refusal among the attempts is the cause, not the reset that followed.
        if any(
            isinstance(e, nats.errors.AuthorizationError) or "authorization" in str(e).lower()
            for e in [*errors, err]
        ):
            if user is None and not creds:
                raise NoCredentials(
                    f"NATS at {url} admits only users with credentials, and none were "
                    f"given: set {USER_VAR}/{PASSWORD_VAR} or {CREDS_VAR}"
                ) from None
            raise ConnectError(
                f"NATS at {url} refused the credentials: check {USER_VAR}/{PASSWORD_VAR} "
                f"or {CREDS_VAR}"
            ) from None
        detail = (
            cause.strerror.lower()
            if isinstance(cause, OSError) and cause.strerror
            else str(cause) or type(cause).__name__
        )
        raise ConnectError(
            f"cannot reach NATS at {url} ({detail}): is 'memstream up' running? "
            f"Set --nats-url or {URL_VAR} to point elsewhere"
        ) from None
    client.append(nc)
    # From here on, outages are ridden out rather than fatal.
    nc.options["max_reconnect_attempts"] = -1
    return nc

"""Connecting to NATS with clear failures and lasting reconnects."""

from __future__ import annotations

import os
import weakref
from typing import Any, TypedDict

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient

from schemas.errors import ConnectError

__all__ = ["DEFAULT_URL", "NatsAuth", "connect_nats", "default_url", "denied"]

DEFAULT_URL = "nats://127.0.0.1:4222"
log = structlog.get_logger("memstream.nats")


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
        if f'"{subject}"' in message or f"'{subject}'" in message or subject in message:
            return message
    return None


def default_url() -> str:
    return os.environ.get("MEMSTREAM_NATS_URL") or DEFAULT_URL


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

    A server that is down at start is a ConnectError naming the URL; a server that goes
    away later is waited for, so a worker rides out a broker restart.
    """
    url = url or default_url()
    user = user if user is not None else os.environ.get("MEMSTREAM_NATS_USER") or None
    if password is None:
        password = os.environ.get("MEMSTREAM_NATS_PASSWORD") or None
    creds = creds if creds is not None else os.environ.get("MEMSTREAM_NATS_CREDS") or None
    if creds and not os.path.isfile(creds):  # noqa: ASYNC240 - one stat, at connect
        raise ConnectError(f"NATS credentials file {creds!r} does not exist")
    errors: list[BaseException] = []
    client: list[NatsClient] = []

    async def on_error(err: BaseException) -> None:
        errors.append(err)
        if client and "permissions violation" in str(err).lower():
            seen = _violations.setdefault(client[0], [])
            seen.append(str(err))
            del seen[:-32]
            log.warning("nats_permission_denied", url=url, error=str(err))
            return
        log.debug("nats_error", url=url, error=repr(err))

    async def on_disconnect() -> None:
        # A disconnect we asked for (close, drain) is no news.
        if client and not (client[0].is_closed or client[0].is_draining):
            log.warning("nats_disconnected", url=url)

    async def on_reconnect() -> None:
        log.info("nats_reconnected", url=url)

    kwargs: dict[str, Any] = dict(
        servers=[url],
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
            raise ConnectError(
                f"NATS at {url} refused the credentials: check MEMSTREAM_NATS_USER/"
                "MEMSTREAM_NATS_PASSWORD or MEMSTREAM_NATS_CREDS"
            ) from None
        detail = (
            cause.strerror.lower()
            if isinstance(cause, OSError) and cause.strerror
            else str(cause) or type(cause).__name__
        )
        raise ConnectError(
            f"cannot reach NATS at {url} ({detail}): is 'memstream up' running? "
            "Set --nats-url or MEMSTREAM_NATS_URL to point elsewhere"
        ) from None
    client.append(nc)
    # From here on, outages are ridden out rather than fatal.
    nc.options["max_reconnect_attempts"] = -1
    return nc
